"""Chaos soak: a storm of faults at random moments across three `vigil up` instances.

Fault kinds (`--faults`, default all), drawn in a seeded random order, one at a time, with random
pauses between them; after every fault the bench keeps three real-clock instances running (as a
service manager would) and waits for an active to answer again:

    kill      SIGKILL the active
    stop      SIGSTOP the active until a standby kills it (resumed with SIGCONT after 3 s if not)
    disk      fill the state directory's tmpfs with a filler file for 3-5 s, then remove it
    lock      an outside sqlite3 connection holds BEGIN IMMEDIATE on vigil.db for 5.5-7.5 s
    clock     an instance under libfaketime (wall clock shifted by +-`--clock-offset` s) is made
              the active for 2-4 s, then killed: the ledger sees the clock jump one way and back
    shim      SIGKILL a live shim (from runs/N/shim; the `long` job's when one runs)
    launcher  SIGKILL the active's launcher (engine/exec/launcher.py), which forks the supervisors
    lockfile  unlink state/leader.lock

Ten seconds after the storm (`--settle`; longer after a late forward clock jump), read-only from the ledger and the jobs' own launch
journal: duplicates, lost fires (missed/skipped rows counted apart, reasons tallied), runs still
open, job processes left without a live shim or open run (orphans), unknown outcomes, instances
that exited by themselves, takeovers slower than 10 s, the longest silence of the 1 s `tick` job,
and PRAGMA integrity_check; per fault kind and in total. See bench/README.md.

    python bench/chaos.py [--faults kill,stop,...] [--kills 70] [--seed 1]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from _cluster import Cluster, machine, now

FAULT_KINDS = ("kill", "stop", "disk", "lock", "clock", "shim", "lockfile", "launcher")
OPEN_STATES = ("pending", "waiting", "launching", "running")
INSTANCES = 3
RECOVERY_TIMEOUT_S = 10.0
STOP_MAX_S = 3.0
LIBFAKETIME = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
SETTINGS = """[scheduler]
heartbeat_interval = "100ms"
heartbeat_timeout = "1s"
kill_grace = "1s"
log_cap = "1MB"
"""


def job_files(journal: Path, tag: str) -> dict[str, str]:
    """The job folder. Every job first appends one line to the launch journal (outside the state
    directory): real uptime (read from /proc, so libfaketime does not shift it), run id, job,
    scheduled_for, attempt. Two lines for one fire are a duplicate launch, whatever the ledger says."""
    record = f'read up _ < /proc/uptime; echo "$up $VIGIL_RUN_ID $VIGIL_JOB $VIGIL_SCHEDULED_FOR $VIGIL_ATTEMPT" >> {journal}; '

    def job(lines: str, command: str) -> str:
        return f"{lines}command = '''{record}{command}'''\n"

    return {
        # The tag reaches every job even if a scheduler stops passing its own environment on.
        "_folder": f'[env]\nVIGIL_BENCH_TAG = "{tag}"\n',
        "tick": job('every = "1s"\ncatchup = "all"\n', "true"),
        "work": job('every = "1s"\ncatchup = "all"\n', "sleep 0.4"),
        "slow": job('every = "2s"\noverlap = "allow"\ncatchup = "latest"\n', "sleep 1.5; exit 3"),
        # Always ends by its timeout: a job still alive at the end had nobody enforcing it.
        "long": job('every = "3s"\noverlap = "allow"\ncatchup = "latest"\ntimeout = "2s"\n', "exec sleep 3600"),
        # 200 KB of output per run: the logs are what fills a disk first.
        "chatty": job('every = "2s"\ncatchup = "latest"\n', "head -c 200000 /dev/zero | tr '\\0' x"),
    }


@dataclass
class Fault:
    kind: str
    t0: float  #: real wall time it was injected
    t1: float = 0.0  #: real wall time it was lifted
    injected: bool = True
    note: str = ""
    recover_s: float | None = None  #: from lifting it until an active answered; None = stall
    resume_s: float | None = None  #: from lifting it until the 1 s `tick` job launched again; None = stall
    run_id: int | None = None  #: the run it hit (shim)
    shifted_wait_s: float | None = None  #: clock: from the shifted active's takeover to its first `tick`
    offset: int = 0  #: clock: the shifted instance's offset (s)


@dataclass
class Exit:
    pid: int
    at: float
    code: int | None
    message: str
    shifted: bool


@dataclass
class Bucket:
    faults: int = 0
    injected: int = 0
    duplicates: int = 0
    lost: int = 0
    missed: int = 0
    skipped: int = 0
    stuck: int = 0
    orphans: int = 0
    unknown: int = 0
    exits: int = 0
    stalls: int = 0
    recover_max_s: float = 0.0
    resume_max_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


class BenchError(Exception):
    """A bench precondition failed: printed as one line."""


class Storm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tag = uuid.uuid4().hex
        self.cluster = Cluster({}, SETTINGS)
        self.root = self.cluster.root
        self.state = self.cluster.state
        self.journal = self.root / "journal"
        for name, body in job_files(self.journal, self.tag).items():
            (self.cluster.jobs / f"{name}.toml").write_text(body)
        self.env = {**os.environ, "VIGIL_BENCH_TAG": self.tag}
        self.libfaketime: str | None = None
        self.mounted = False
        self.logs: dict[int, Path] = {}
        self.bench_killed: set[int] = set()
        self.stopped: set[int] = set()
        self.hung: set[int] = set()  #: actives SIGSTOPped by the stop fault: a standby is to kill them
        self.shifted: dict[int, int] = {}  #: pid -> clock offset (s) of libfaketime instances
        self.shifted_epochs: dict[int, int] = {}  #: epoch -> clock offset while it was active
        self.seen_exit: set[int] = set()
        self.exits: list[Exit] = []
        self.faults: list[Fault] = []
        self.restarts_paused = False
        self.last_start = 0.0
        self.last_active_seen = time.monotonic()
        self.wedged: str | None = None
        self.lock_conn: sqlite3.Connection | None = None
        self.filler = self.state / "chaos-filler"
        self.journal_offset = 0
        self.settle = args.settle
        self.boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)  #: wall time of uptime 0
        self.tick_times: list[float] = []  #: real launch times of `tick`, from the journal

    # ------------------------------------------------------------------ set-up and tear-down

    def setup(self, kinds: list[str]) -> None:
        self.state.mkdir()
        if "disk" in kinds:
            if os.geteuid() != 0:
                raise BenchError("the disk fault mounts a tmpfs: run as root, or leave `disk` out of --faults")
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.args.tmpfs_size},mode=0700", "tmpfs", str(self.state)],
                check=True,
            )
            self.mounted = True
        if "clock" in kinds:
            self.libfaketime = next((p for p in LIBFAKETIME if os.path.exists(p)), None)
            if self.libfaketime is None:
                raise BenchError(
                    "the clock fault needs libfaketime (apt-get install faketime), or leave `clock` out of --faults"
                )
        for _ in range(INSTANCES):
            self.start()
        if self.await_active(set(), 30.0) is None:
            raise BenchError(f"no active scheduler within 30 s; see {self.root}/up-*.log")

    def teardown(self) -> None:
        """Ends everything this bench started, whatever state the storm left: never raises."""
        for proc in self.cluster.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        deadline = time.monotonic() + 5.0
        for proc in self.cluster.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.01, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if self.lock_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.lock_conn.close()
            self.lock_conn = None
        for _ in range(5):
            victims = [p for p, _ in self.bench_processes()]
            if not victims:
                break
            for p in victims:
                with contextlib.suppress(OSError):
                    if os.getpgid(p.pid) == p.pid:
                        os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            self.filler.unlink()
        if self.mounted:
            for _ in range(10):
                if subprocess.run(["umount", str(self.state)], capture_output=True).returncode == 0:
                    self.mounted = False
                    break
                time.sleep(0.3)
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.state)], capture_output=True)
                print(f"chaos: {self.state} was busy; detached it (umount -l)", file=sys.stderr)
                self.mounted = False
        if self.args.keep:
            print(f"chaos: kept {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def bench_processes(self) -> list[tuple[psutil.Process, dict[str, str]]]:
        """Every process carrying this run's tag, or a shim of this state directory."""
        found = []
        state = str(self.state)
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                env = proc.environ()
                if env.get("VIGIL_BENCH_TAG") == self.tag or any(state in part for part in proc.cmdline()):
                    found.append((proc, env))
            except psutil.Error:
                continue
        return found

    # ------------------------------------------------------------------ the instances

    def start(self, offset: int | None = None) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if offset is not None:
            assert self.libfaketime is not None
            # A fixed offset only: FAKETIME_DONT_FAKE_MONOTONIC makes time.sleep fail (EINVAL) in
            # libfaketime 0.9.10, so the shifted process's monotonic clock moves with its wall clock.
            env.update(LD_PRELOAD=self.libfaketime, FAKETIME=f"{offset:+d}s")
        log = self.root / f"up-{len(self.cluster.procs)}.log"
        proc = self.cluster.start(env)
        self.logs[proc.pid] = log
        self.trace(f"started pid {proc.pid}" + ("" if offset is None else f" at {offset:+d} s"))
        if offset is not None:
            self.shifted[proc.pid] = offset
        self.last_start = time.monotonic()
        return proc

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.cluster.procs if p.poll() is None]

    def supervise(self) -> None:
        """Note instances that ended by themselves; keep three real-clock ones running."""
        for proc in self.cluster.procs:
            if proc.pid in self.seen_exit or proc.poll() is None:
                continue
            self.seen_exit.add(proc.pid)
            if proc.pid in self.hung and proc.returncode == -signal.SIGKILL:
                self.trace(f"pid {proc.pid} (stopped) killed by a standby")
            elif proc.pid not in self.bench_killed:
                self.exits.append(
                    Exit(proc.pid, now(), proc.returncode, self.last_log_line(proc.pid), proc.pid in self.shifted)
                )
                self.trace(f"pid {proc.pid} ended by itself, rc {proc.returncode}: {self.exits[-1].message[:120]}")
        real = [p for p in self.live() if p.pid not in self.shifted]
        if not self.restarts_paused and len(real) < INSTANCES and time.monotonic() - self.last_start > 0.3:
            self.start()

    def trace(self, text: str) -> None:
        if self.args.verbose:
            t = now() - getattr(self, "t_start", now())
            print(f"  {t:7.2f}  {text}", file=sys.stderr, flush=True)

    def last_log_line(self, pid: int) -> str:
        try:
            lines = [ln for ln in self.logs[pid].read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        # Shims write their own complaints to the same log (they inherit its stderr): prefer ours.
        # The CLI's one-line error, else the first logged error (the cause, before its fallout),
        # else the last exception.
        for pattern, pick in ((r"^vigil: ", -1), (r" vigil\[[0-9]+\] (ERROR|CRITICAL) ", 0), (r"Error|Exception", -1)):
            ours = [ln for ln in lines if re.search(pattern, ln)]
            if ours:
                return ours[pick][:200]
        return lines[-1][:200] if lines else ""

    def hold(self, seconds: float, during: Any = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervise()
            if during is not None:
                during()
            time.sleep(0.05)

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.bench_killed.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def alive(self, pid: int) -> bool:
        return any(p.pid == pid and p.poll() is None for p in self.cluster.procs)

    def status(self, timeout: float = 0.5) -> dict[str, Any] | None:
        """The active's own status answer over control.sock; None when nobody answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.state / "control.sock"))
            sock.sendall(b'{"op":"status","user":"chaos"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            reply = json.loads(buf)
        except (OSError, ValueError):
            return None
        finally:
            sock.close()
        return reply if isinstance(reply, dict) and isinstance(reply.get("active"), dict) else None

    def active(self) -> tuple[int, int | None] | None:
        reply = self.status()
        if reply is None:
            return None
        pid, epoch = reply["active"].get("pid"), reply["active"].get("epoch")
        if not isinstance(pid, int) or not self.alive(pid) or pid in self.stopped:
            return None
        self.last_active_seen = time.monotonic()
        return pid, epoch

    def await_active(self, exclude: set[int], timeout: float = RECOVERY_TIMEOUT_S) -> float | None:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            self.supervise()
            found = self.active()
            if found and found[0] not in exclude:
                return time.monotonic() - t
            time.sleep(0.05)
        return None

    def ro(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.state / 'vigil.db'}?mode=ro", uri=True, timeout=5)

    # ------------------------------------------------------------------ the faults

    def inject(self, kind: str) -> Fault:
        fault = Fault(kind, now())
        victims: set[int] = set()
        found = self.active()
        if found is None and kind in ("kill", "stop", "clock", "launcher"):
            fault.injected, fault.note = False, "no active to hit"
        elif kind == "kill":
            fault.note = f"pid {found[0]}"
            self.kill(found[0])
            victims.add(found[0])
        elif kind == "stop":
            victims.add(found[0])
            self.fault_stop(found[0], fault)
        elif kind == "disk":
            self.fault_disk(fault)
        elif kind == "lock":
            self.fault_lock(fault)
        elif kind == "clock":
            victims.add(found[0])
            victims |= self.fault_clock(found[0], fault)
        elif kind == "shim":
            self.fault_shim(fault)
        elif kind == "launcher":
            self.fault_launcher(found[0], fault)
        elif kind == "lockfile":
            try:
                (self.state / "leader.lock").unlink()
            except FileNotFoundError:
                fault.injected, fault.note = False, "leader.lock was already gone"
            # The active checks its lock file every second; whatever follows is its doing.
            self.hold(2.5)
        fault.t1 = now()
        fault.recover_s = self.await_active(victims)
        # The next fault waits for the schedule to be back, so that each one's effect is its own.
        fault.resume_s = self.await_tick(fault.t1) if fault.recover_s is not None else None
        if fault.resume_s is not None and fault.shifted_wait_s is not None:
            fault.resume_s = max(fault.resume_s, fault.shifted_wait_s)
        return fault

    def read_journal(self) -> None:
        try:
            with open(self.journal, "rb") as fh:
                fh.seek(self.journal_offset)
                data = fh.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.journal_offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[2] == "tick":
                with contextlib.suppress(ValueError):
                    self.tick_times.append(self.boot + float(parts[0]))

    def await_tick(self, after: float, timeout: float = RECOVERY_TIMEOUT_S) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_journal()
            later = [t for t in self.tick_times[-20:] if t > after]
            if later:
                return max(0.0, min(later) - after)
            self.supervise()
            time.sleep(0.05)
        return None

    def fault_stop(self, pid: int, fault: Fault) -> None:
        self.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)
        self.hung.add(pid)
        t = time.monotonic()
        while time.monotonic() - t < STOP_MAX_S and self.alive(pid):
            self.supervise()
            time.sleep(0.02)
        if self.alive(pid):
            self.kill(pid, signal.SIGCONT)
            fault.note = f"pid {pid} not killed by a standby within {STOP_MAX_S:g} s: resumed"
        else:
            fault.note = f"pid {pid} killed by a standby after {time.monotonic() - t:.2f} s"
        self.stopped.discard(pid)

    def fault_disk(self, fault: Fault) -> None:
        written = 0
        chunk = b"\0" * (1 << 20)

        def top_up() -> None:
            # Space freed meanwhile (a log cap, a removed file) is taken again: the disk stays full.
            nonlocal written
            try:
                with open(self.filler, "ab", buffering=0) as fh:
                    for size in (1 << 20, 4096):
                        while True:
                            written += fh.write(chunk[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise

        top_up()
        hold = self.rng.uniform(3.0, 5.0)
        self.hold(hold, during=top_up)
        self.filler.unlink()
        fault.note = f"disk full for {hold:.1f} s ({written >> 20} MB of filler)"

    def fault_lock(self, fault: Fault) -> None:
        conn = sqlite3.connect(self.state / "vigil.db", timeout=10, isolation_level=None)
        self.lock_conn = conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            fault.injected, fault.note = False, f"could not take the write lock: {exc}"
            return
        finally:
            if not fault.injected:
                conn.close()
                self.lock_conn = None
        hold = self.rng.uniform(5.5, 7.5)  # longer than the engine's busy_timeout (5 s)
        self.hold(hold)
        conn.execute("ROLLBACK")
        conn.close()
        self.lock_conn = None
        fault.note = f"write lock held {hold:.1f} s"

    def fault_clock(self, active: int, fault: Fault) -> set[int]:
        offset = self.rng.choice((-1, 1)) * self.args.clock_offset
        fault.offset = offset
        shifted = self.start(offset)
        # Wait for it to be a standby, so that it is queued on the lock when the active goes.
        t = time.monotonic()
        while time.monotonic() - t < 10.0:
            reply = self.status()
            if reply and any(s.get("pid") == shifted.pid for s in reply.get("standbys", [])):
                break
            self.supervise()
            time.sleep(0.05)
        # The other standbys are frozen (not killed) for the handover, so the lock goes to the shifted one.
        self.restarts_paused = True
        others = [p.pid for p in self.live() if p.pid not in (active, shifted.pid)]
        for pid in others:
            self.kill(pid, signal.SIGSTOP)
            self.stopped.add(pid)
        self.kill(active)
        took: tuple[int, int | None] | None = None
        t = time.monotonic()
        while time.monotonic() - t < 10.0 and shifted.poll() is None:
            found = self.active()
            if found and found[0] == shifted.pid:
                took = found
                break
            time.sleep(0.05)
        for pid in others:
            self.kill(pid, signal.SIGCONT)
            self.stopped.discard(pid)
        self.restarts_paused = False
        if took is None:
            fault.injected, fault.note = False, f"the instance at {offset:+d} s did not become active"
        else:
            if took[1] is not None:
                self.shifted_epochs[took[1]] = offset
            t_took = now()
            hold = self.rng.uniform(2.0, 4.0)
            self.hold(hold)
            self.read_journal()
            first = min((t for t in self.tick_times[-20:] if t > t_took), default=None)
            # No launch at all under the shifted clock counts as a wait of the whole hold.
            fault.shifted_wait_s = (now() - t_took) if first is None else first - t_took
            fault.note = f"active at {offset:+d} s for {hold:.1f} s" + (
                ", no tick launched meanwhile" if first is None else ""
            )
        self.kill(shifted.pid)
        return {shifted.pid}

    def fault_launcher(self, active: int, fault: Fault) -> None:
        try:
            launchers = [
                child
                for child in psutil.Process(active).children()
                if child.cmdline() and child.cmdline()[-1].endswith("launcher.py")
            ]
        except psutil.Error:
            launchers = []
        if not launchers:
            fault.injected, fault.note = False, "the active has no launcher now"
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(launchers[0].pid, signal.SIGKILL)
        fault.note = f"launcher {launchers[0].pid} of pid {active}"

    def fault_shim(self, fault: Fault) -> None:
        # The `long` job's shim when one runs (it does two thirds of the time): its job outlives
        # the storm unless someone still enforces its timeout.
        deadline = time.monotonic() + 3.0
        live: list[tuple[int, str, int]] = []
        while time.monotonic() < deadline:
            live = self.live_shims()
            if any(job == "long" for _, job, _ in live):
                break
            self.supervise()
            time.sleep(0.05)
        preferred = [c for c in live if c[1] == "long"] or live
        if not preferred:
            fault.injected, fault.note = False, "no live shim"
            return
        run_id, job, pid = self.rng.choice(preferred)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        fault.run_id = run_id
        fault.note = f"shim of run {run_id} ({job})"

    def live_shims(self) -> list[tuple[int, str, int]]:
        """(run id, job, shim pid) of the running runs whose shim is alive."""
        try:
            conn = self.ro()
            rows = conn.execute("SELECT id, job FROM runs WHERE state = 'running'").fetchall()
            conn.close()
        except sqlite3.Error:
            return []
        live = []
        for run_id, job in rows:
            run_dir = self.state / "runs" / str(run_id)
            try:
                pid = int((run_dir / "shim").read_text())
                if is_supervisor(psutil.Process(pid), str(run_dir)):
                    live.append((run_id, job, pid))
            except (OSError, ValueError, psutil.Error):
                continue
        return live

    # ------------------------------------------------------------------ the storm

    def run(self, plan: list[str]) -> dict[str, Any]:
        self.t_start = now()
        deadline = time.monotonic() + self.args.max_time
        for kind in plan:
            if time.monotonic() > deadline:
                print(f"chaos: --max-time {self.args.max_time:g} s reached; storm cut short", file=sys.stderr)
                break
            self.hold(self.rng.uniform(0.05, self.args.max_pause))
            self.trace(f"fault {len(self.faults) + 1}: {kind}")
            fault = self.inject(kind)
            self.faults.append(fault)
            self.trace(
                f"  {kind}: {'injected' if fault.injected else 'NOT injected'} {fault.note}; "
                + ("no active within 10 s" if fault.recover_s is None else f"active after {fault.recover_s:.2f} s")
                + ("; no tick within 10 s" if fault.resume_s is None else f", tick after {fault.resume_s:.2f} s")
            )
            silent = time.monotonic() - self.last_active_seen
            if silent > self.args.wedge_after:
                # Nothing would recover it but an operator: the remaining faults would measure nothing.
                self.wedged = f"no active for {silent:.0f} s after fault {len(self.faults)} ({kind}): storm ended"
                print(f"chaos: {self.wedged}", file=sys.stderr)
                break
        self.t_end = now()
        try:
            conn = self.ro()
            self.max_id_at_end = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            self.max_id_at_end = 1 << 62
        # A run launched by a forward-shifted active carries its deadline up to the offset late.
        late = [f.t1 + f.offset for f in self.faults if f.offset > 0 and f.injected]
        self.settle = self.args.settle + max(0.0, max(late, default=0.0) - self.t_end)
        self.hold(self.settle)
        return self.measure()

    # ------------------------------------------------------------------ the figures

    def measure(self) -> dict[str, Any]:
        kinds = sorted({f.kind for f in self.faults}, key=FAULT_KINDS.index)
        buckets: dict[str, Bucket] = {k: Bucket() for k in ("none", *kinds)}
        # Faults that hit nothing (no active to kill, no live shim) changed nothing: not boundaries.
        hits = [f for f in self.faults if f.injected]
        starts = [f.t0 for f in hits]

        def kind_at(t: float) -> str:
            i = bisect.bisect_right(starts, t) - 1
            return hits[i].kind if i >= 0 else "none"

        def bucket(t: float) -> Bucket:
            return buckets[kind_at(t)]

        for f in self.faults:
            b = buckets[f.kind]
            b.faults += 1
            b.injected += f.injected
            if f.injected and (f.recover_s is None or f.resume_s is None):
                b.stalls += 1
            if f.recover_s is not None:
                b.recover_max_s = max(b.recover_max_s, round(f.recover_s, 2))
            b.resume_max_s = max(b.resume_max_s, round(RECOVERY_TIMEOUT_S if f.resume_s is None else f.resume_s, 2))
            if f.note and (not f.injected or "resumed" in f.note or "did not" in f.note or "no tick" in f.note):
                b.notes.append(f.note)

        try:
            conn = self.ro()
            integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
            rows = conn.execute(
                "SELECT id, job, scheduled_for, attempt, state, reason, epoch, created_at, exit_code FROM runs"
            ).fetchall()
            ledger_dupes = conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM runs GROUP BY job, scheduled_for, attempt HAVING COUNT(*) > 1)"
            ).fetchone()[0]
            conn.close()
        except sqlite3.Error as exc:
            integrity, rows, ledger_dupes = f"unreadable ({exc})", [], 0
        by_id = {r[0]: r for r in rows}

        hit_runs = {f.run_id: buckets[f.kind] for f in self.faults if f.run_id is not None}

        def run_bucket(row: tuple) -> Bucket:
            return hit_runs.get(row[0]) or bucket(real_time(row))

        def real_time(row: tuple) -> float:
            # A shifted active stamped its rows with its own clock: take its offset back out.
            return datetime.fromisoformat(row[7]).timestamp() - self.shifted_epochs.get(row[6], 0)

        # Duplicates and launches the ledger does not know, from the jobs' own journal.
        boot = self.boot
        launches: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        without_row = 0
        tick_launches: list[float] = []
        for line in self.journal.read_text().splitlines() if self.journal.exists() else []:
            parts = line.split()
            if len(parts) != 5:
                continue
            up, run_id, job, sched, attempt = parts
            t = boot + float(up)
            launches[(job, sched, attempt)].append(t)
            row = by_id.get(int(run_id)) if run_id.isdigit() else None
            if row is None or row[1] != job or row[2] != sched:
                without_row += 1
            if job == "tick":
                tick_launches.append(t)
        for times in launches.values():
            for t in sorted(times)[1:]:
                bucket(t).duplicates += 1

        # Lost fires: every whole second of the storm, for the two 1 s jobs. A fire counts as
        # accounted by its scheduled_for, whichever clock stamped it; rows a shifted clock wrote for
        # times outside the window are neither lost nor duplicates.
        window = range(int(self.t_start) + 1, int(self.t_end) + 1)
        reasons: Counter[str] = Counter()
        for job in ("tick", "work"):
            seen: dict[int, tuple] = {}
            for r in rows:
                if r[1] == job and r[3] == 1:
                    seen.setdefault(round(datetime.fromisoformat(r[2]).timestamp()), r)
            for k in window:
                r = seen.get(k)
                if r is None:
                    bucket(k).lost += 1
                elif r[4] in ("missed", "skipped"):
                    b = bucket(k)
                    if r[4] == "missed":
                        b.missed += 1
                    else:
                        b.skipped += 1
        lo, hi = window.start - 0.5, window.stop - 0.5
        for r in rows:
            if r[4] in ("missed", "skipped") and lo <= datetime.fromisoformat(r[2]).timestamp() < hi:
                reason = re.sub(r"[0-9]{4}-[0-9-]+T[0-9:.+]+", "<time>", r[5] or "(no reason)")
                reasons[f"{r[4]}: {re.sub(r'[0-9]+', 'N', reason)}"] += 1

        for r in rows:
            if r[0] <= self.max_id_at_end and r[4] in OPEN_STATES:
                run_bucket(r).stuck += 1
            if r[4] == "unknown":
                run_bucket(r).unknown += 1
        wrong_exit = sum(1 for r in rows if r[1] == "slow" and r[4] == "failed" and r[8] != 3)

        orphans = self.orphans(by_id)
        for proc_start, run_id in orphans.values():
            row = by_id.get(run_id)
            (run_bucket(row) if row else bucket(proc_start)).orphans += 1
        orphan_runs = sorted({run_id for _, run_id in orphans.values()})

        for e in self.exits:
            bucket(e.at).exits += 1

        # The longest stretch without a `tick` launch (it fires every second), storm and settle.
        tick_launches = sorted(t for t in tick_launches if self.t_start <= t)
        edges = [self.t_start, *tick_launches, now()]
        silence = max(b - a for a, b in itertools.pairwise(edges))
        settle_end = now()
        resumed = sum(1 for t in tick_launches if t > settle_end - 5.0)

        total = Bucket()
        for b in buckets.values():
            for key, value in b.figures().items():
                if key.endswith("_max_s"):
                    setattr(total, key, max(getattr(total, key), value))
                else:
                    setattr(total, key, getattr(total, key) + value)
        total.duplicates += ledger_dupes
        tracebacks = sum(
            log.read_text(errors="replace").count("Traceback") for log in self.logs.values() if log.exists()
        )
        return {
            "buckets": buckets,
            "total": total,
            "reasons": reasons,
            "integrity": integrity,
            "without_row": without_row,
            "wrong_exit": wrong_exit,
            "orphan_runs": orphan_runs,
            "tracebacks": tracebacks,
            "resumed": resumed,
            "rows": len(rows),
            "silence": round(silence, 1),
            "exits": [(kind_at(e.at), e) for e in self.exits],
        }

    def orphans(self, by_id: dict[int, tuple]) -> dict[int, tuple[float, int]]:
        """Job processes (not shims) alive with no open run or no live shim; seen twice 1 s apart."""

        def scan() -> dict[int, tuple[float, int]]:
            found: dict[int, tuple[float, int]] = {}
            for proc, env in self.bench_processes():
                try:
                    run_id = int(env.get("VIGIL_RUN_ID", ""))
                    run_dir = str(self.state / "runs" / str(run_id))
                    # A shim is started with its run directory as an argument; a job is not.
                    if proc.status() == psutil.STATUS_ZOMBIE or run_dir in " ".join(proc.cmdline()):
                        continue
                    started = proc.create_time()
                except (ValueError, psutil.Error):
                    continue
                if time.time() - started < 2.0:
                    continue
                row = by_id.get(run_id)
                shim_ok = False
                try:
                    shim = psutil.Process(int((self.state / "runs" / str(run_id) / "shim").read_text()))
                    shim_ok = shim.is_running() and is_supervisor(shim, run_dir)
                except (OSError, ValueError, psutil.Error):
                    pass
                if row is None or row[4] not in OPEN_STATES or not shim_ok:
                    found[proc.pid] = (started, run_id)
            return found

        first = scan()
        time.sleep(1.0)
        second = scan()
        return {pid: first[pid] for pid in first if pid in second}


def is_supervisor(proc: psutil.Process, run_dir: str) -> bool:
    """Whether the process named by a run's `shim` file is a run supervisor: a sh shim (its run
    directory is an argument) or one the launcher forked (the launcher's command line)."""
    args = proc.cmdline()
    return run_dir in " ".join(args) or (bool(args) and args[-1].endswith("launcher.py"))


def parse_faults(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind {', '.join(unknown) or '(none given)'}; choose from {','.join(FAULT_KINDS)}"
        )
    return list(dict.fromkeys(kinds))


def report(storm: Storm, figures: dict[str, Any], kinds: list[str], duration: float) -> None:
    buckets: dict[str, Bucket] = figures["buckets"]
    total: Bucket = figures["total"]
    columns = [
        ("faults", "faults"),
        ("injected", "inj"),
        ("duplicates", "dup"),
        ("lost", "lost"),
        ("missed", "missed"),
        ("skipped", "skip"),
        ("stuck", "stuck"),
        ("orphans", "orph"),
        ("unknown", "unkn"),
        ("exits", "exits"),
        ("stalls", "stalls"),
        ("recover_max_s", "recov_s"),
        ("resume_max_s", "resume_s"),
    ]
    print(f"machine: {json.dumps(machine())}")
    print(
        f"{total.faults} faults ({','.join(kinds)}, seed {storm.args.seed}) over {duration:.0f} s, "
        f"{INSTANCES} instances kept running, {len(storm.cluster.procs)} started; "
        f"figures {storm.settle:.0f} s after the storm"
    )
    print(f"{'fault':<9}" + "".join(f"{short:>9}" for _, short in columns))
    for name, b in [*buckets.items(), ("total", total)]:
        if name == "none" and not any(v for k, v in b.figures().items() if not k.endswith("_s")):
            continue
        print(f"{name:<9}" + "".join(f"{getattr(b, key):>9}" for key, _ in columns))
    print("(a figure is counted under the fault that last began before it; 'none' is before the first)")
    if figures["reasons"]:
        print("missed/skipped rows of all jobs in the window, by reason:")
        for reason, n in figures["reasons"].most_common(10):
            print(f"  {n:>5}  {reason[:150]}")
    if figures["exits"]:
        print("instances that ended by themselves (the cause, from their log):")
        seen: Counter[tuple[str, str]] = Counter()
        for kind, e in figures["exits"]:
            message = re.sub(r"^[0-9-]+ [0-9:,]+ vigil\[[0-9]+\] ", "", e.message).replace(str(storm.root), "<tmp>")
            seen[(kind, f"rc {e.code}: {re.sub(r'[0-9]{2,}', 'N', message)}")] += 1
        for (kind, text), n in seen.most_common(12):
            print(f"  [{kind}] {n}x {text[:170]}")
    notes = [f"[{k}] {n}" for k, b in buckets.items() for n in b.notes]
    if storm.wedged:
        notes.insert(0, storm.wedged)
    for note in notes[:10]:
        print(f"  note {note}")
    print(
        f"integrity {figures['integrity']}, ledger rows {figures['rows']}, launches without their ledger row "
        f"{figures['without_row']}, wrong exit codes {figures['wrong_exit']}, tracebacks in logs "
        f"{figures['tracebacks']}, orphaned runs {figures['orphan_runs'][:10]}, tick launches in the last 5 s {figures['resumed']}"
    )
    print(
        json.dumps(
            {
                "faults": total.faults,
                "faults_injected": total.injected,
                "kinds": kinds,
                "seed": storm.args.seed,
                "duration_s": round(duration, 1),
                "duplicates": total.duplicates,
                "lost": total.lost,
                "missed": total.missed,
                "skipped": total.skipped,
                "stuck": total.stuck,
                "orphans": total.orphans,
                "unknown": total.unknown,
                "instance_exits": total.exits,
                "stalls": total.stalls,
                "recover_max_s": total.recover_max_s,
                "resume_max_s": total.resume_max_s,
                "silence_max_s": figures["silence"],
                "tick_runs_last_5s": figures["resumed"],
                "launches_without_row": figures["without_row"],
                "wrong_exit_codes": figures["wrong_exit"],
                "tracebacks": figures["tracebacks"],
                "integrity_ok": figures["integrity"] == "ok",
                "wedged": storm.wedged is not None,
                "missed_reasons": dict(figures["reasons"].most_common(10)),
                "by_fault": {k: b.figures() for k, b in buckets.items() if k != "none" or b.lost or b.stuck},
            }
        )
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--faults",
        type=parse_faults,
        default=list(FAULT_KINDS),
        help=f"comma-separated kinds (default {','.join(FAULT_KINDS)})",
    )
    parser.add_argument(
        "--faults-count", "--kills", dest="count", type=int, default=70, help="faults in the storm (default 70)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-pause", type=float, default=0.8, help="longest wait between faults (s)")
    parser.add_argument("--max-time", type=float, default=900.0, help="stop injecting after this long (s)")
    parser.add_argument(
        "--wedge-after", type=float, default=20.0, help="end the storm when no active answered for this long (s)"
    )
    parser.add_argument("--settle", type=float, default=10.0, help="wait after the storm before the figures (s)")
    parser.add_argument("--clock-offset", type=int, default=15, help="clock fault: shift of the wall clock (s)")
    parser.add_argument("--tmpfs-size", default="256m", help="disk fault: size of the state directory's tmpfs")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each fault and exit as it happens")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (state, logs, journal)")
    args = parser.parse_args()
    if args.count < 1 or args.settle < 0 or args.clock_offset < 1:
        parser.error("--faults-count and --clock-offset must be positive, --settle not negative")
    kinds: list[str] = args.faults
    # Each kind in turn, then shuffled: every chosen kind occurs once the count allows it.
    plan = [kinds[i % len(kinds)] for i in range(args.count)]
    random.Random(args.seed).shuffle(plan)
    # SIGINT too: a shell starts background jobs with it ignored, and Python then leaves it so.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    storm = Storm(args)
    try:
        storm.setup(kinds)
        figures = storm.run(plan)
    except BenchError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        storm.teardown()
    report(storm, figures, kinds, storm.t_end - storm.t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
