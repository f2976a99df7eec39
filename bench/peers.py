"""Vigil vs cronstable vs APScheduler 3, side by side on this machine (issue #12). Not a test.

The peers are installed into a temporary virtualenv (`pip install cronstable "apscheduler<4"`); a
peer that cannot be installed is skipped with a message and its figures are null. The same
workloads run on each peer, interleaved (vigil, cronstable, apscheduler, vigil, ...) for `--rounds`
rounds (3), each against a fresh temp directory; the table gives the median and range per peer.

Workloads (the same command text and job count for every peer; commands run through `/bin/sh -c`):

1. saturated  `--sat-jobs` (1,500) jobs running `true`, each due every second (all at the whole
              second): more fires than any peer here can run. Completed runs per second over the
              window, counted from each peer's own record of finished runs (Vigil: ledger `ended_at`;
              cronstable: its state store's run records `finished_at`; APScheduler: the finish time
              the harness's job function notes after `subprocess.run` returns).
2. latency    50 jobs due every second, each `date +%s.%N >> FILE` (one probe file for all). A stamp
              minus the whole second it belongs to is due→process-start; p50/p99 over the window.
3. idle       1,000 jobs defined (cron `0 3 1 1 *`: nothing due), then CPU (psutil user+system of
              the scheduler process and its descendants) over an idle window after 5 s of settling,
              as % of one core, and RSS (the process tree) at the end.
4. first fire 999 such jobs plus one `date +%s.%N >> FILE` due every second; the process is started
              50 ms after a whole second, and the figure is the first stamp minus the start. It
              includes the wait for the next whole second at or after loading, so it is quantised
              near whole seconds: 0.95 s means "loaded within the first second".

How each peer is configured:
- vigil: `vigil up --state DIR --jobs DIR --quiet` (this checkout), jobs `every = "1s"` (fires at
  whole seconds) or `cron = "0 3 1 1 *"`; default overlap `skip`; the ledger, shims and per-run logs on
  (they are not optional).
- cronstable: `cronstable -c FILE -l WARNING`, jobs `schedule: "* * * * * * *"` (the 7-field form
  with an explicit seconds column is its seconds resolution) or `"0 3 1 1 *"`;
  `concurrencyPolicy: Forbid` (Vigil's skip), `captureStderr: false`, `captureStdout: false`, and
  its `state:` store on (`path: DIR`): that is what gives it durable run history.
- apscheduler: 3.x `BlockingScheduler`, in-memory job store (its SQLAlchemy store keeps job
  definitions, not run history, so there is no durable history to turn on), `ThreadPoolExecutor(16)`,
  `CronTrigger(second="*")`, `max_instances=1`, `coalesce=True`, `misfire_grace_time=1`; each job
  is `subprocess.run(COMMAND, shell=True)`.

The last line of output is one JSON object with every figure (null where a peer or workload could
not be measured). Run: `python bench/peers.py [--quick] [--rounds N] [--idle S] [--keep]` (about 7 min
with `--quick`; psutil counts CPU in 10 ms ticks, so a 20 s idle window resolves 0.05 % of a core).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
from _cluster import iso, machine, next_whole_second, sleep_until
from throughput import RAN, Vigil, state_counts

DATE = shutil.which("date") or "/usr/bin/date"
TRUE_CMD = "true"
IDLE_CRON = "0 3 1 1 *"  # Jan 1, 03:00: never due during a run (the script refuses to run then)
PEERS = ("vigil", "cronstable", "apscheduler")

APS_RUNNER = r"""
import json, signal, subprocess, sys, threading, time
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.triggers.cron import CronTrigger

spec = json.load(open(sys.argv[1]))
out = sys.argv[2]
finished = []
lock = threading.Lock()

def run(command):
    subprocess.run(command, shell=True)
    t = time.time()
    with lock:
        finished.append(t)

sched = BlockingScheduler(
    executors={"default": ThreadPoolExecutor(16)},
    job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 1},
    timezone="UTC",
)
for job in spec:
    if job["every_second"]:
        trigger = CronTrigger(second="*", timezone="UTC")
    else:
        trigger = CronTrigger(month=1, day=1, hour=3, minute=0, timezone="UTC")
    sched.add_job(run, trigger, args=[job["command"]], id=job["name"])

def stop(signum, frame):
    with lock:
        json.dump(finished, open(out, "w"))
    sched.shutdown(wait=False)

signal.signal(signal.SIGTERM, stop)
sched.start()
"""


@dataclass(frozen=True)
class Job:
    name: str
    command: str
    every_second: bool  # due at every whole second; else the never-due IDLE_CRON


# --------------------------------------------------------------------------------------- processes


class Peer:
    """One scheduler process of a peer on a fresh dir; it and whatever it started are found again
    through a marker in the environment and ended at stop()."""

    name = ""

    def __init__(self, root: Path, jobs: list[Job]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=root))
        self.jobs = jobs
        self.marker = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        argv = self.argv()
        self.log = open(self.dir / "peer.log", "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            argv,
            env=dict(os.environ, VIGIL_BENCH_MARKER=self.marker),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        top = psutil.Process(self.proc.pid)
        return [top, *top.children(recursive=True)]

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        deadline = time.time() + 5
        while left := self.leftovers():
            if time.time() > deadline:
                print(f"  ! {len(left)} processes of {self.name} could not be ended: {[p.pid for p in left]}")
                break
            for p in left:
                try:
                    os.killpg(os.getpgid(p.pid), signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)

    def leftovers(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("VIGIL_BENCH_MARKER") == self.marker:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def completions(self, t0: float, t1: float) -> int:
        """Runs whose process ended in (t0, t1], by the peer's own record (call after stop())."""
        raise NotImplementedError


class VigilPeer(Peer):
    name = "vigil"

    def __init__(self, root: Path, jobs: list[Job]) -> None:
        super().__init__(root, jobs)
        texts = {}
        for job in jobs:
            when = 'every = "1s"' if job.every_second else f'cron = "{IDLE_CRON}"'
            texts[job.name] = f"command = {json.dumps(job.command)}\n{when}\n"
        self.vigil = Vigil(self.dir, "v", texts)

    def start(self) -> None:
        self.started = time.time()
        self.vigil.start()
        self.proc = self.vigil.proc

    def stop(self) -> None:
        self.vigil.stop()

    def completions(self, t0: float, t1: float) -> int:
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        (n,) = self.vigil.query(
            f"SELECT COUNT(*) FROM runs WHERE ended_at > ? AND ended_at <= ? AND state IN ({','.join('?' * len(RAN))})",
            (lo, hi, *RAN),
        )[0]
        return int(str(n))


class CronstablePeer(Peer):
    name = "cronstable"
    exe = ""

    def argv(self) -> list[str]:
        lines = ["jobs:"]
        for job in self.jobs:
            schedule = "* * * * * * *" if job.every_second else IDLE_CRON
            lines += [
                f"  - name: {job.name.replace('/', '-')}",
                f"    command: {json.dumps(job.command)}",
                f'    schedule: "{schedule}"',
                "    concurrencyPolicy: Forbid",
                "    captureStderr: false",
                "    captureStdout: false",
            ]
        lines += ["state:", f"  path: {self.dir / 'state'}"]
        config = self.dir / "cronstable.yaml"
        config.write_text("\n".join(lines) + "\n")
        return [self.exe, "-c", str(config), "-l", "WARNING"]

    def completions(self, t0: float, t1: float) -> int:
        n = 0
        records = self.dir / "state" / "default" / "records"
        for folder in records.glob("runs%2F*"):
            for path in folder.glob("*.json"):
                try:
                    finished = json.loads(path.read_text())["data"]["finished_at"]
                except (OSError, ValueError, KeyError):
                    continue
                if finished and t0 < datetime.fromisoformat(finished).timestamp() <= t1:
                    n += 1
        return n


class ApschedulerPeer(Peer):
    name = "apscheduler"
    python = ""

    def argv(self) -> list[str]:
        (self.dir / "runner.py").write_text(APS_RUNNER)
        spec = [{"name": j.name, "command": j.command, "every_second": j.every_second} for j in self.jobs]
        (self.dir / "jobs.json").write_text(json.dumps(spec))
        return [self.python, str(self.dir / "runner.py"), str(self.dir / "jobs.json"), str(self.dir / "finished.json")]

    def completions(self, t0: float, t1: float) -> int:
        try:
            finished = json.loads((self.dir / "finished.json").read_text())
        except (OSError, ValueError):
            return 0
        return sum(1 for t in finished if t0 < t <= t1)


PEER_CLASSES: dict[str, type[Peer]] = {"vigil": VigilPeer, "cronstable": CronstablePeer, "apscheduler": ApschedulerPeer}


# ------------------------------------------------------------------------------------------ installs


def install_peers(root: Path) -> set[str]:
    """A venv with the peers in it; returns the peers that can run (vigil always)."""
    venv = root / "peers-venv"
    ok = {"vigil"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    for peer, spec, module in (
        ("cronstable", "cronstable", "cronstable"),
        ("apscheduler", "apscheduler<4", "apscheduler"),
    ):
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", spec], capture_output=True, text=True)
        check = subprocess.run(
            [str(python), "-c", f"import {module}, importlib.metadata as m; print(m.version({spec.split('<')[0]!r}))"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or check.returncode != 0:
            tail = (done.stderr or check.stderr).strip().splitlines()[-1:] or ["?"]
            print(f"peers: {peer} skipped: pip install {spec!r} failed ({tail[0]})")
            continue
        print(f"peers: {peer} {check.stdout.strip()} installed in {venv}")
        ok.add(peer)
    CronstablePeer.exe = str(venv / "bin" / "cronstable")
    ApschedulerPeer.python = str(python)
    return ok


# ----------------------------------------------------------------------------------------- workloads


def wait_ready(peer: Peer, settle: float) -> None:
    """Vigil: until its ledger lists every job; the others have no such signal. Then `settle` s."""
    if isinstance(peer, VigilPeer):
        peer.vigil.wait_loaded()
    time.sleep(settle)
    if not peer.alive():
        raise RuntimeError(f"{peer.name} exited; see {peer.dir / 'peer.log'}")


def saturated(cls: type[Peer], root: Path, jobs: int, window: float) -> float:
    peer = cls(root, [Job(f"s{i:05d}", TRUE_CMD, True) for i in range(jobs)])
    peer.start()
    try:
        wait_ready(peer, 1.0)
        t0 = next_whole_second(time.time() + 2.0)  # warm-up
        t1 = t0 + window
        sleep_until(t1 + 0.5)
    finally:
        peer.stop()
    if isinstance(peer, VigilPeer):
        # Where the fires that did not run went (missed: more than 1 s late; skipped: overlap).
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        print(
            f"  vigil rows due in the window by state: {state_counts(peer.vigil, 'WHERE scheduled_for > ? AND scheduled_for <= ?', (lo, hi))}"
        )
    return peer.completions(t0, t1) / window


def read_stamps(path: Path) -> list[float]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.split():
        try:
            out.append(float(line))
        except ValueError:
            continue
    return out


def latency(cls: type[Peer], root: Path, jobs: int, window: float) -> tuple[float, float, int]:
    probe = root / f"probe-{uuid.uuid4().hex}"
    peer = cls(root, [Job(f"l{i:03d}", f"{DATE} +%s.%N >> {probe}", True) for i in range(jobs)])
    peer.start()
    try:
        wait_ready(peer, 1.0)
        t0 = next_whole_second(time.time() + 2.0)
        t1 = t0 + window
        sleep_until(t1 + 1.5)
    finally:
        peer.stop()
    lat = [(s - math.floor(s)) * 1000 for s in read_stamps(probe) if t0 <= math.floor(s) < t1]
    if not lat:
        return float("nan"), float("nan"), 0
    qs = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return statistics.median(lat), qs[98], len(lat)


def idle(cls: type[Peer], root: Path, jobs: int, window: float) -> tuple[float, float]:
    peer = cls(root, [Job(f"i{i:04d}", TRUE_CMD, False) for i in range(jobs)])
    peer.start()
    try:
        wait_ready(peer, 5.0)
        procs = peer.tree()
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        time.sleep(window)
        procs = [p for p in procs if p.is_running()]
        cpu1 = sum(sum(p.cpu_times()[:2]) for p in procs)
        rss = sum(p.memory_info().rss for p in peer.tree()) / 2**20
    finally:
        peer.stop()
    return (cpu1 - cpu0) / window * 100, rss


def first_fire(cls: type[Peer], root: Path, jobs: int) -> float:
    probe = root / f"first-{uuid.uuid4().hex}"
    specs = [Job(f"f{i:04d}", TRUE_CMD, False) for i in range(jobs - 1)]
    specs.append(Job("f-probe", f"{DATE} +%s.%N >> {probe}", True))
    peer = cls(root, specs)
    sleep_until(next_whole_second(time.time()) + 0.05)
    peer.start()
    try:
        deadline = peer.started + 60
        while not probe.exists() and time.time() < deadline and peer.alive():
            time.sleep(0.02)
    finally:
        peer.stop()
    stamps = read_stamps(probe)
    return min(stamps) - peer.started if stamps else float("nan")


# ------------------------------------------------------------------------------------------- report


def summary(values: list[float]) -> tuple[float | None, str]:
    good = [v for v in values if not math.isnan(v)]
    if not good:
        return None, "n/a"
    med = statistics.median(good)
    return med, f"{med:.2f} ({min(good):.2f}–{max(good):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run, noisier figures)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--sat-jobs", type=int, default=1500, help="jobs due every second when saturated (1500)")
    parser.add_argument("--peers", default=",".join(PEERS), help="which peers (vigil,cronstable,apscheduler)")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="idle window in s (20; 10 with --quick): CPU ticks are 10 ms"
    )
    parser.add_argument("--workloads", default="runs_per_s,latency,idle,first", help="which workloads (all four)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    now = datetime.now(UTC)
    if now.month == 1 and now.day == 1:
        print(f"vigil: the idle jobs use cron {IDLE_CRON!r}, which is due today; run on another day")
        return 1
    sat_window, lat_window, idle_window = (5.0, 5.0, 10.0) if args.quick else (10.0, 10.0, 20.0)
    idle_window = args.idle or idle_window
    print(f"machine: {json.dumps(machine())}")
    root = Path(tempfile.mkdtemp(prefix="vigil-peers-"))
    load_start = os.getloadavg()[0]
    figures: dict[str, float | int | str | None] = {}
    results: dict[tuple[str, str], list[float]] = {}
    try:
        available = install_peers(root)
        wanted = [p for p in args.peers.split(",") if p in available]
        workloads: list[tuple[str, Callable[[type[Peer]], dict[str, float]]]] = [
            ("runs_per_s", lambda c: {"runs_per_s": saturated(c, root, args.sat_jobs, sat_window)}),
            (
                "latency",
                lambda c: dict(zip(("p50_ms", "p99_ms", "samples"), latency(c, root, 50, lat_window), strict=True)),
            ),
            ("idle", lambda c: dict(zip(("idle_cpu_pct", "rss_mb_1k"), idle(c, root, 1000, idle_window), strict=True))),
            ("first", lambda c: {"first_fire_s_1k": first_fire(c, root, 1000)}),
        ]
        for rnd in range(args.rounds):
            for label, run in [w for w in workloads if w[0] in args.workloads.split(",")]:
                for name in wanted:
                    try:
                        got = run(PEER_CLASSES[name])
                    except Exception as exc:  # a peer failing a workload leaves its figure null
                        print(f"round {rnd + 1} {label} {name}: failed: {exc}")
                        continue
                    for key, value in got.items():
                        results.setdefault((name, key), []).append(float(value))
                    shown = ", ".join(f"{k}={v:.2f}" for k, v in got.items())
                    print(f"round {rnd + 1} {label} {name}: {shown}  (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    keys = ("runs_per_s", "p50_ms", "p99_ms", "idle_cpu_pct", "rss_mb_1k", "first_fire_s_1k")
    print()
    print(f"{'figure':<18}" + "".join(f"{p:<28}" for p in PEERS))
    for key in keys:
        row = f"{key:<18}"
        for peer in PEERS:
            med, text = summary(results.get((peer, key), []))
            figures[f"{peer}_{key}"] = None if med is None else round(med, 3)
            row += f"{text:<28}"
        print(row)
    v, c = figures.get("vigil_runs_per_s"), figures.get("cronstable_runs_per_s")
    figures["ratio_vs_cronstable"] = round(float(v) / float(c), 3) if v and c else None
    a = figures.get("apscheduler_runs_per_s")
    figures["ratio_vs_apscheduler"] = round(float(v) / float(a), 3) if v and a else None
    figures["load"] = round(load_start, 2)
    figures["load_end"] = round(os.getloadavg()[0], 2)
    figures["rounds"] = args.rounds
    figures["sat_jobs"] = args.sat_jobs
    print(f"(median (min–max) over {args.rounds} interleaved rounds; load {load_start:.2f} → {os.getloadavg()[0]:.2f})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
