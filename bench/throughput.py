"""Throughput, latency and overload of `vigil up` on this machine (issue #2). Not a test.

Phases, each against a fresh state directory and job folder in a temp dir:

1. baseline   raw `os.posix_spawn` + reap of /bin/true, 16 in flight (what the machine can do at all).
2. sustained  many trivial jobs (`command = "true"`, `every = "1s"`), offered above the target so the
              figure is Vigil's capacity: runs that reached a terminal state per second (ledger
              `ended_at`), with the ledger, the shims and the per-run logs all on.
3. latency    100 runs/s offered, evenly spread: one-off `at` jobs 10 ms apart. Each job is
              `/usr/bin/date +%s.%N` run directly (no shell), so the time it prints into its run log is
              taken by the job's own process about 0.5 ms after its exec. Latency = that time minus
              the fire's `scheduled_for`. The ledger's `started_at` (the scheduler's clock when it
              decided to launch) is reported too, for comparison.
4. burst      100 jobs all due on the same whole second (`every = "1s"`): the same latency, from the
              same job-side timestamp, when 100 fires arrive at once.
5. overload   10 jobs, each due every 100 ms (100 fires/s) running `sleep 0.3`, with overlap skip,
              queue and allow. Every fire due in a 20 s window must be a ledger row (a run, or a
              `skipped`/`missed` row); `overload_unaccounted` counts those that are not.

The last line of output is one JSON object with every figure (units in the key names).
Run: `python bench/throughput.py` (about 2–3 minutes). `--quick` shortens every window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

TRUE = shutil.which("true") or "/bin/true"
DATE = shutil.which("date") or "/usr/bin/date"
TERMINAL = ("succeeded", "failed", "timed_out", "killed", "skipped", "missed", "unknown")
RAN = ("succeeded", "failed", "timed_out", "killed", "unknown")


# ------------------------------------------------------------------------------------------ helpers


def iso(dt: datetime) -> str:
    """The ledger's own text form of a time (engine/db.py `iso`), so text comparisons are exact."""
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def vigil_argv() -> list[str]:
    """The `vigil` console script of this interpreter (not a pyenv shim, which adds its own start-up)."""
    exe = Path(sys.executable).parent / "vigil"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())"]


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "kernel": os.uname().release,
        "load_1m": round(os.getloadavg()[0], 2),
    }


# ----------------------------------------------------------------------------------------- baseline


def spawn_rate(seconds: float, width: int = 16) -> float:
    """Spawns+reaps of /bin/true per second with `width` children in flight (os.posix_spawn)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    live: set[int] = set()
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        now = time.perf_counter()
        while now < deadline and len(live) < width:
            live.add(os.posix_spawn(TRUE, [TRUE], env))
        if not live:
            break
        pid, _ = os.waitpid(-1, 0)
        live.discard(pid)
        done += 1
    return done / (time.perf_counter() - start)


def baseline(trials: int, seconds: float) -> float:
    rates = [spawn_rate(seconds) for _ in range(trials)]
    print(f"baseline: os.posix_spawn /bin/true, 16 in flight: {', '.join(f'{r:.0f}' for r in rates)}/s")
    return statistics.median(rates)


# ------------------------------------------------------------------------------------ a vigil up run


class Vigil:
    """One `vigil up` on a fresh state dir and job folder; every process it starts is found again
    through a marker in the environment (shims and jobs inherit the scheduler's environment)."""

    def __init__(self, root: Path, name: str, jobs: dict[str, str]) -> None:
        self.dir = root / name
        self.state = self.dir / "state"
        self.jobs_dir = self.dir / "jobs"
        self.jobs_dir.mkdir(parents=True)
        for job, text in jobs.items():
            path = self.jobs_dir / f"{job}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.n_jobs = len(jobs)
        self.marker = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        env = dict(os.environ, VIGIL_BENCH_MARKER=self.marker)
        self.log = open(self.dir / "vigil.log", "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [*vigil_argv(), "up", "--state", str(self.state), "--jobs", str(self.jobs_dir), "--quiet"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.state / 'vigil.db'}?mode=ro", uri=True, timeout=5)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = self.db()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def wait_loaded(self, timeout: float = 60.0) -> float:
        """Seconds from process start until the `jobs` table lists every job."""
        assert self.proc is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vigil up exited with {self.proc.returncode}; see {self.dir / 'vigil.log'}")
            try:
                (count,) = self.query("SELECT COUNT(*) FROM jobs")[0]
                if count >= self.n_jobs:
                    return time.time() - self.started
            except sqlite3.Error:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"jobs not loaded within {timeout}s")

    def stop(self) -> None:
        """SIGTERM the scheduler, then end whatever it left running (shims and jobs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                print(f"  ! vigil up did not stop within 20 s of SIGTERM; killing it ({self.dir})")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        deadline = time.time() + 5
        while True:
            left = self.leftovers()
            if not left or time.time() > deadline:
                break
            for proc in left:
                try:
                    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        if left:
            print(f"  ! {len(left)} processes of this run could not be ended: {[p.pid for p in left]}")

    def leftovers(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("VIGIL_BENCH_MARKER") == self.marker:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def rss_mb(self) -> float:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


def next_whole_second(after: float) -> float:
    return float(int(after) + 1)


def sleep_until(ts: float) -> None:
    while (left := ts - time.time()) > 0:
        time.sleep(min(left, 0.5))


def job_side_latencies(v: Vigil, t0: str, t1: str) -> tuple[list[float], list[float], int]:
    """(job-side latency ms, ledger started_at latency ms, runs without a timestamp) for fires in (t0, t1]."""
    rows = v.query(
        "SELECT id, scheduled_for, started_at FROM runs WHERE scheduled_for > ? AND scheduled_for <= ? "
        "AND state NOT IN ('skipped', 'missed')",
        (t0, t1),
    )
    job_side: list[float] = []
    ledger: list[float] = []
    missing = 0
    for run_id, scheduled_for, started_at in rows:
        due = datetime.fromisoformat(str(scheduled_for)).timestamp()
        if started_at:
            ledger.append((datetime.fromisoformat(str(started_at)).timestamp() - due) * 1000)
        try:
            stamp = float((v.state / "runs" / str(run_id) / "log").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            missing += 1
            continue
        job_side.append((stamp - due) * 1000)
    return job_side, ledger, missing


def state_counts(v: Vigil, where: str = "", params: tuple[object, ...] = ()) -> dict[str, int]:
    return {str(s): int(n) for s, n in v.query(f"SELECT state, COUNT(*) FROM runs {where} GROUP BY state", params)}


# ---------------------------------------------------------------------------------------- phases


def phase_sustained(root: Path, jobs: int, every: str, window: float) -> dict[str, float]:
    spec = f'command = "true"\nevery = "{every}"\n'
    v = Vigil(root, "sustained", {f"t/{i:04d}": spec for i in range(jobs)})
    v.start()
    try:
        v.wait_loaded()
        t0 = next_whole_second(time.time() + 2.0)  # 2 s of warm-up first
        t1 = t0 + window
        sched = psutil.Process(v.proc.pid) if v.proc else None
        sleep_until(t0)
        cpu0 = sched.cpu_times() if sched else None
        sleep_until(t1)
        cpu1 = sched.cpu_times() if sched else None
        sleep_until(t1 + 3.0)  # let runs due before t1 finish; only ended_at in the window counts
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        (ended,) = v.query(
            f"SELECT COUNT(*) FROM runs WHERE ended_at > ? AND ended_at <= ? AND state IN ({','.join('?' * len(RAN))})",
            (lo, hi, *RAN),
        )[0]
        counts = state_counts(v, "WHERE scheduled_for > ? AND scheduled_for <= ?", (lo, hi))
        rows = sum(counts.values())
        (distinct,) = v.query(
            "SELECT COUNT(*) FROM (SELECT DISTINCT job, scheduled_for FROM runs "
            "WHERE scheduled_for > ? AND scheduled_for <= ? AND trigger = 'schedule')",
            (lo, hi),
        )[0]
        rss = v.rss_mb()
    finally:
        v.stop()
    offered = jobs / _seconds(every)
    due = jobs * round(window / _seconds(every))
    rate = int(ended) / window
    own_ms = kids_ms = float("nan")
    if cpu0 is not None and cpu1 is not None and ended:
        # The scheduler reaps its shims, and each shim reaps its job: children_* holds both.
        own_ms = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) * 1000 / int(ended)
        kids_ms = (
            ((cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system))
            * 1000
            / int(ended)
        )
    print(
        f"sustained: {jobs} jobs `true` every {every} ({offered:.0f} fires/s offered) for {window:.0f} s: "
        f"{rate:.0f} runs/s completed (ended_at in window); fires due {due}, rows {rows} "
        f"(distinct {distinct}) by state {counts}; scheduler RSS {rss:.0f} MB; CPU per completed run: "
        f"scheduler {own_ms:.2f} ms, shim+job {kids_ms:.2f} ms"
    )
    return {
        "runs_per_s": round(rate, 1),
        "sustained_offered_per_s": offered,
        "sustained_due": due,
        "sustained_unaccounted": max(0, due - int(distinct)),
        "sustained_rss_mb": round(rss, 1),
        "scheduler_cpu_ms_per_run": round(own_ms, 2),
        "shim_job_cpu_ms_per_run": round(kids_ms, 2),
    }


def _seconds(duration: str) -> float:
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    return float(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def phase_latency(root: Path, rate: int, window: float) -> dict[str, float]:
    # The fires start well after the folder is loaded; the load is checked against that.
    first = next_whole_second(time.time() + 6.0)
    count = int(rate * window)
    step = 1.0 / rate
    jobs = {}
    for i in range(count):
        at = datetime.fromtimestamp(first + i * step, UTC).isoformat(timespec="microseconds")
        jobs[f"at/{i:05d}"] = f'command = ["{DATE}", "+%s.%N"]\nat = "{at}"\n'
    v = Vigil(root, "latency", jobs)
    v.start()
    try:
        load = v.wait_loaded()
        if time.time() > first:
            print(f"  ! {count} jobs took {load:.1f} s to load; the first fires were late for that reason")
        t0 = first - step / 2
        t1 = first + window
        sleep_until(t1 + 2.0)
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        job_side, ledger, missing = job_side_latencies(v, lo, hi)
        counts = state_counts(v)
    finally:
        v.stop()
    p50, p99 = pct(job_side, 50), pct(job_side, 99)
    print(
        f"latency: {count} one-off jobs ({rate}/s, {step * 1000:.0f} ms apart, `date +%s.%N` exec'd directly): "
        f"due→process start p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(job_side):.2f} ms "
        f"({len(job_side)} samples, {missing} without a timestamp); ledger started_at−due p50 "
        f"{pct(ledger, 50):.2f} ms p99 {pct(ledger, 99):.2f} ms; states {counts}"
    )
    return {
        "latency_p50_ms": round(p50, 2),
        "latency_p99_ms": round(p99, 2),
        "latency_max_ms": round(max(job_side), 2),
        "latency_samples": len(job_side),
        "ledger_started_p99_ms": round(pct(ledger, 99), 2),
    }


def phase_burst(root: Path, jobs: int, window: float) -> dict[str, float]:
    spec = f'command = ["{DATE}", "+%s.%N"]\nevery = "1s"\n'
    v = Vigil(root, "burst", {f"b/{i:03d}": spec for i in range(jobs)})
    v.start()
    try:
        v.wait_loaded()
        t0 = next_whole_second(time.time() + 1.0)
        t1 = t0 + window
        sleep_until(t1 + 2.0)
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        job_side, _ledger, missing = job_side_latencies(v, lo, hi)
    finally:
        v.stop()
    p50, p99 = pct(job_side, 50), pct(job_side, 99)
    print(
        f"burst: {jobs} jobs due on the same whole second, {window:.0f} times: due→process start "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(job_side)} samples, {missing} without a timestamp)"
    )
    return {"burst100_latency_p50_ms": round(p50, 1), "burst100_latency_p99_ms": round(p99, 1)}


def phase_overload(root: Path, window: float) -> dict[str, float]:
    policies = ["skip"] * 4 + ["queue"] * 3 + ["allow"] * 3
    jobs = {
        f"o/{i:02d}_{policy}": f'command = "sleep 0.3"\nevery = "100ms"\noverlap = "{policy}"\n'
        for i, policy in enumerate(policies)
    }
    v = Vigil(root, "overload", jobs)
    v.start()
    try:
        v.wait_loaded()
        t0 = next_whole_second(time.time() + 1.0)
        t1 = t0 + window
        sleep_until(t1 + 1.0)
        lo, hi = iso(datetime.fromtimestamp(t0, UTC)), iso(datetime.fromtimestamp(t1, UTC))
        # Give a slow scheduler a few seconds to write the rows of the last fires in the window.
        due = len(jobs) * round(window / 0.1)
        deadline = time.time() + 5
        while time.time() < deadline:
            (n,) = v.query(
                "SELECT COUNT(DISTINCT job || scheduled_for) FROM runs WHERE scheduled_for > ? "
                "AND scheduled_for <= ? AND trigger = 'schedule'",
                (lo, hi),
            )[0]
            if int(n) >= due:
                break
            time.sleep(0.2)
        counts = state_counts(v, "WHERE scheduled_for > ? AND scheduled_for <= ?", (lo, hi))
        (rows,) = v.query(
            "SELECT COUNT(*) FROM runs WHERE scheduled_for > ? AND scheduled_for <= ? AND trigger = 'schedule'",
            (lo, hi),
        )[0]
        (distinct,) = v.query(
            "SELECT COUNT(*) FROM (SELECT DISTINCT job, scheduled_for FROM runs WHERE scheduled_for > ? "
            "AND scheduled_for <= ? AND trigger = 'schedule')",
            (lo, hi),
        )[0]
        by_policy = {
            policy: state_counts(
                v, "WHERE job LIKE ? AND scheduled_for > ? AND scheduled_for <= ?", (f"%{policy}", lo, hi)
            )
            for policy in ("skip", "queue", "allow")
        }
        summarised = v.query(
            "SELECT reason FROM runs WHERE reason LIKE '%not recorded individually%' AND scheduled_for > ?",
            (lo,),
        )
    finally:
        v.stop()
    unaccounted = max(0, due - int(distinct))
    print(
        f"overload: 10 jobs `sleep 0.3` every 100 ms (100 fires/s; overlap skip×4, queue×3, allow×3) for "
        f"{window:.0f} s: fires due {due}, rows {rows} (distinct fires {distinct}, duplicates "
        f"{int(rows) - int(distinct)}), unaccounted {unaccounted}; by state {counts}; "
        f"per policy {by_policy}; summarised missed rows {len(summarised)}"
    )
    return {
        "overload_due": due,
        "overload_rows": int(rows),
        "overload_duplicates": int(rows) - int(distinct),
        "overload_unaccounted": unaccounted,
        "overload_ran": sum(counts.get(s, 0) for s in (*RAN, "running")),
        "overload_skipped": counts.get("skipped", 0),
        "overload_missed": counts.get("missed", 0),
        "overload_pending": counts.get("pending", 0),
    }


# ------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run, noisier figures)")
    parser.add_argument("--jobs", type=int, default=600, help="trivial jobs in the sustained phase (600)")
    parser.add_argument("--every", default="1s", help="their interval (1s)")
    parser.add_argument("--phases", default="baseline,sustained,latency,burst,overload")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (state, logs) for inspection")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    window = 5.0 if args.quick else 20.0
    print(f"machine: {json.dumps(machine())}")
    root = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    figures: dict[str, float | int | str] = {}
    started = time.time()
    try:
        if "baseline" in phases:
            figures["baseline_spawn_per_s"] = round(baseline(3, 1.0 if args.quick else 2.0))
        if "sustained" in phases:
            figures.update(phase_sustained(root, args.jobs, args.every, window))
            if "baseline_spawn_per_s" in figures:
                figures["ratio"] = round(float(figures["runs_per_s"]) / float(figures["baseline_spawn_per_s"]), 3)
        if "latency" in phases:
            figures.update(phase_latency(root, 100, 10.0 if args.quick else 15.0))
        if "burst" in phases:
            figures.update(phase_burst(root, 100, 5.0 if args.quick else 10.0))
        if "overload" in phases:
            figures.update(phase_overload(root, window))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "targets (2 cores): runs_per_s >= 300 and ratio >= 0.15; latency_p99_ms <= 10; overload_unaccounted = 0. "
        f"Total {time.time() - started:.0f} s."
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
