"""Remote agents on this machine (issue #5): runs/s and dispatch latency to one agent over loopback,
beside the same load run locally. Not a test.

Each phase runs twice on a fresh state directory and job folder: once with the jobs local, once
with `agent = "a1"` pointing at one `vigil agent` on 127.0.0.1 (bearer token, plain HTTP).

1. http       the agent alone: sequential `POST /runs` of `true` from this process (httpx, one
              keep-alive connection); round trip = accept + journal commit + shim spawn + reply.
2. sustained  many trivial jobs (`command = "true"`, `every = "1s"`), offered above what the
              machine can do, so the figure is capacity: runs that reached a terminal state per
              second (ledger `ended_at` in the window). For agent runs that includes the dispatch,
              the result long-poll, the log copy and the ledger write; the ack follows.
3. latency    one-off `at` jobs spread evenly (20/s); each is `date +%s.%N` exec'd directly, so the
              time it prints is taken by the job's own process. "start" = that time minus the
              fire's `scheduled_for`; "dispatch" = the ledger's `started_at` minus `scheduled_for`,
              which for an agent run is the agent's clock when it journaled the run, just before
              spawning its shim (for a local run: when the scheduler decided to launch).

Scheduler, agent, shims and jobs share this machine's CPUs, so the agent figures include the cost
of a second process competing for them; over a real network add the round-trip time.
The last line of output is one JSON object with every figure (units in the key names).
Run: `python bench/agents.py` (about 2 minutes); `--quick` shortens every window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from _cluster import iso, machine, next_whole_second, pct, sleep_until

DATE = shutil.which("date") or "/usr/bin/date"
RAN = ("succeeded", "failed", "timed_out", "killed", "unknown")
VIGIL = [sys.executable, "-m", "engine.cli"]
TOKEN = uuid.uuid4().hex


class Procs:
    """Processes of one phase: found again through a marker in the environment, always ended."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = uuid.uuid4().hex
        self.env = dict(os.environ, VIGIL_BENCH_MARKER=self.marker)
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "wb") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    print(f"  ! pid {proc.pid} did not stop within 20 s of SIGTERM; killing it")
                    proc.kill()
                    proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline:
            left = []
            for proc in psutil.process_iter():
                try:
                    if proc.environ().get("VIGIL_BENCH_MARKER") == self.marker:
                        left.append(proc)
                except (psutil.Error, OSError):
                    continue
            if not left:
                return
            for proc in left:
                try:
                    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)


class Setup:
    """One `vigil up` (and, for the agent variant, one `vigil agent`) on a fresh directory."""

    def __init__(self, root: Path, name: str, jobs: dict[str, str], *, remote: bool) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.state = self.dir / "state"
        self.jobs_dir = self.dir / "jobs"
        self.jobs_dir.mkdir()
        self.remote = remote
        self.procs = Procs(self.dir)
        self.agent_state = self.dir / "agent"
        self.url = ""
        if remote:
            token = self.dir / "token"
            token.write_text(TOKEN)
            token.chmod(0o600)
            self.procs.start(
                "agent",
                [
                    *VIGIL,
                    "agent",
                    "--listen",
                    "127.0.0.1:0",
                    "--state",
                    str(self.agent_state),
                    "--token-file",
                    str(token),
                ],
            )
            self.url = wait_agent(self.agent_state)
            (self.jobs_dir / "vigil.toml").write_text(f'[agents.a1]\nurl = "{self.url}"\ntoken_file = "{token}"\n')
        prefix = 'agent = "a1"\n' if remote else ""
        for job, text in jobs.items():
            path = self.jobs_dir / f"{job}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(prefix + text)
        self.n_jobs = len(jobs)

    def start(self) -> None:
        self.up = self.procs.start(
            "up", [*VIGIL, "up", "--quiet", "--state", str(self.state), "--jobs", str(self.jobs_dir)]
        )

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(f"file:{self.state / 'vigil.db'}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def wait_loaded(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.up.poll() is not None:
                raise RuntimeError(f"vigil up exited with {self.up.returncode}; see {self.dir / 'up.log'}")
            try:
                if self.query("SELECT COUNT(*) FROM jobs")[0][0] >= self.n_jobs:
                    return
            except sqlite3.Error:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"jobs not loaded within {timeout}s")

    def stop(self) -> None:
        self.procs.stop()


def wait_agent(state: Path, timeout: float = 20.0) -> str:
    addr = state / "agent.addr"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if addr.exists():
            return addr.read_text().strip()
        time.sleep(0.02)
    raise RuntimeError(f"agent did not start within {timeout}s; see {state.parent / 'agent.log'}")


# ---------------------------------------------------------------------------------------- phases


def phase_http(root: Path, count: int) -> dict[str, float]:
    """Sequential dispatches straight to the agent's HTTP API (no scheduler)."""
    setup = Setup(root, "http", {}, remote=True)
    try:
        rtts: list[float] = []
        # TCP_NODELAY as the scheduler's async client has it (anyio sets it); without it, Nagle and
        # delayed ACKs add ~40 ms to a request whose headers and body go out in two writes.
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=setup.url, headers=headers, transport=transport) as client:
            for i in range(count):
                body = {
                    "run_id": i + 1,
                    "epoch": 1,
                    "job": "rtt",
                    "scheduled_for": iso(datetime.now(UTC)),
                    "command": ["true"],
                }
                t0 = time.perf_counter()
                response = client.post("/runs", json=body)
                rtts.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
                if i % 50 == 49:  # keep the journal's unacked set small, as a scheduler would
                    client.post("/ack", json={"epoch": 1, "run_ids": list(range(i - 48, i + 2))})
    finally:
        setup.stop()
    p50, p99 = pct(rtts, 50), pct(rtts, 99)
    print(f"http: {count} sequential POST /runs (`true`) over loopback: round trip p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return {"http_dispatch_rtt_p50_ms": round(p50, 2), "http_dispatch_rtt_p99_ms": round(p99, 2)}


def phase_sustained(root: Path, *, remote: bool, jobs: int, window: float) -> dict[str, float]:
    where = "agent" if remote else "local"
    spec = 'command = "true"\nevery = "1s"\n'
    setup = Setup(root, f"sustained-{where}", {f"t/{i:03d}": spec for i in range(jobs)}, remote=remote)
    try:
        setup.start()
        setup.wait_loaded()
        t0 = next_whole_second(time.time() + 2.0)  # 2 s of warm-up
        t1 = t0 + window
        watched = {"scheduler": psutil.Process(setup.up.pid)}
        if remote:
            watched["agent"] = psutil.Process(setup.procs.started[0].pid)
        sleep_until(t0)
        cpu0 = {k: p.cpu_times() for k, p in watched.items()}
        sleep_until(t1)
        cpu1 = {k: p.cpu_times() for k, p in watched.items()}
        sleep_until(t1 + 3.0)  # runs ended in the window are counted; let the last ones land
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        (ended,) = setup.query(
            f"SELECT COUNT(*) FROM runs WHERE ended_at > ? AND ended_at <= ? AND state IN ({','.join('?' * len(RAN))})",
            (lo, hi, *RAN),
        )[0]
        states = dict(
            setup.query(
                "SELECT state, COUNT(*) FROM runs WHERE scheduled_for > ? AND scheduled_for <= ? GROUP BY state",
                (lo, hi),
            )
        )
    finally:
        setup.stop()
    rate = int(ended) / window  # type: ignore[arg-type]
    offered = jobs / 1.0
    # Own CPU only (user+system, not the children): the shims and jobs cost the same either way.
    cpu_ms = {
        k: ((cpu1[k].user - cpu0[k].user) + (cpu1[k].system - cpu0[k].system)) * 1000 / max(1, int(ended))  # type: ignore[arg-type]
        for k in cpu0
    }
    print(
        f"sustained ({where}): {jobs} jobs `true` every 1s ({offered:.0f} fires/s offered) for {window:.0f} s: "
        f"{rate:.0f} runs/s completed; rows by state {states}; own CPU per run: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu_ms.items())
    )
    out = {f"{where}_runs_per_s": round(rate, 1), f"{where}_sustained_unknown_runs": int(states.get("unknown", 0))}
    out.update({f"{where}_{k}_cpu_ms_per_run": round(v, 2) for k, v in cpu_ms.items()})
    return out


def phase_latency(root: Path, *, remote: bool, rate: int, window: float) -> dict[str, float]:
    where = "agent" if remote else "local"
    first = next_whole_second(time.time() + 6.0)
    count = int(rate * window)
    step = 1.0 / rate
    jobs = {}
    for i in range(count):
        at = datetime.fromtimestamp(first + i * step, UTC).isoformat(timespec="microseconds")
        jobs[f"at/{i:04d}"] = f'command = ["{DATE}", "+%s.%N"]\nat = "{at}"\n'
    setup = Setup(root, f"latency-{where}", jobs, remote=remote)
    try:
        setup.start()
        setup.wait_loaded()
        if time.time() > first:
            print("  ! the jobs took too long to load; the first fires were late for that reason")
        sleep_until(first + window + 3.0)
        rows = setup.query(
            "SELECT id, scheduled_for, started_at, state FROM runs WHERE trigger = 'schedule' "
            "AND state NOT IN ('skipped', 'missed')"
        )
    finally:
        setup.stop()
    start_ms: list[float] = []
    dispatch_ms: list[float] = []
    missing = 0
    states: dict[str, int] = {}
    for run_id, scheduled_for, started_at, state in rows:
        states[str(state)] = states.get(str(state), 0) + 1
        due = datetime.fromisoformat(str(scheduled_for)).timestamp()
        if started_at:
            dispatch_ms.append((datetime.fromisoformat(str(started_at)).timestamp() - due) * 1000)
        try:
            stamp = float((setup.state / "runs" / str(run_id) / "log").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            missing += 1
            continue
        start_ms.append((stamp - due) * 1000)
    label = "due→agent journaled" if remote else "due→launch decided"
    print(
        f"latency ({where}): {count} one-off jobs, {rate}/s: due→process start p50 {pct(start_ms, 50):.2f} ms, "
        f"p99 {pct(start_ms, 99):.2f} ms; {label} p50 {pct(dispatch_ms, 50):.2f} ms, "
        f"p99 {pct(dispatch_ms, 99):.2f} ms ({len(start_ms)} samples, {missing} without a timestamp, states {states})"
    )
    return {
        f"{where}_start_latency_p50_ms": round(pct(start_ms, 50), 2),
        f"{where}_start_latency_p99_ms": round(pct(start_ms, 99), 2),
        f"{where}_dispatch_latency_p50_ms": round(pct(dispatch_ms, 50), 2),
        f"{where}_dispatch_latency_p99_ms": round(pct(dispatch_ms, 99), 2),
        f"{where}_latency_samples": len(start_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows (less stable figures)")
    args = parser.parse_args()
    window = 5.0 if args.quick else 10.0
    info = machine()
    print(f"machine: {info}")
    root = Path(tempfile.mkdtemp(prefix="vigil-bench-agents-"))
    figures: dict[str, object] = {}
    try:
        figures.update(phase_http(root, 200 if args.quick else 500))
        for remote in (False, True):
            figures.update(phase_sustained(root, remote=remote, jobs=300, window=window))
        for remote in (False, True):
            figures.update(phase_latency(root, remote=remote, rate=20, window=window))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    local, agent = figures["local_runs_per_s"], figures["agent_runs_per_s"]
    print(
        f"summary: {agent} runs/s on one agent vs {local} local; due→start p50/p99 "
        f"{figures['agent_start_latency_p50_ms']}/{figures['agent_start_latency_p99_ms']} ms on the agent vs "
        f"{figures['local_start_latency_p50_ms']}/{figures['local_start_latency_p99_ms']} ms local"
    )
    figures.update({"cpus": info["cpus"], "load_1m_before": info["load_1m"]})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
