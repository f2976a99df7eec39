"""Idle cost of `vigil up`: CPU and wake-ups of an active and a standby with N jobs and nothing due (issue 12).

The folder is bench/scale.py's realistic mix (nested folders, `_folder.toml` defaults, cron in many
zones, `every`, `at`, `after`), every schedule chosen so that nothing fires during the measurement.
For each job count an active `vigil up` starts; once its `jobs` table lists every job a standby
starts on the same state (`--no-standby`: none); after `--settle` seconds both are measured over
`--window` seconds:

- `cpu_pct`: CPU time of the process (all its threads: the sum of /proc/PID/task/*/schedstat, which
  the kernel counts in nanoseconds, not the 10 ms ticks of utime/stime) as a percentage of one core;
- `wakeups_per_s`: voluntary context switches of all its threads per second (each is one sleep that
  ended: a timer or an event woke the process).

`--compare DIR` runs another checkout (e.g. a detached worktree of main) with PYTHONPATH=DIR in the
same rounds, interleaved (this tree, DIR, this tree, ...), and prints medians and ranges of both.
Run: `python bench/idle.py [--jobs 1000,10000] [--window 60] [--rounds 3] [--compare DIR]`.
The last line of output is one JSON object with every figure.
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from _cluster import machine, vigil_argv
from scale import make_folder


def _per_thread(pid: int, name: str, read: Callable[[TextIO], int]) -> int:
    """The sum of `read` over /proc/PID/task/*/NAME (0 if the process is gone; a thread that ended
    meanwhile counts 0)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    total = 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                total += read(f)
        except (OSError, ValueError, IndexError):
            pass
    return total


def _schedstat_ns(f: TextIO) -> int:
    return int(f.read().split()[0])


def _voluntary_switches(f: TextIO) -> int:
    return next((int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:")), 0)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far, in nanoseconds."""
    return _per_thread(pid, "schedstat", _schedstat_ns)


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far."""
    return _per_thread(pid, "status", _voluntary_switches)


def count_jobs(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def start(root: Path, jobs_dir: Path, state: Path, name: str, pythonpath: str | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with open(root / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [*vigil_argv(), "up", "--quiet", "--state", str(state), "--jobs", str(jobs_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(
    root: Path, jobs_dir: Path, count: int, pythonpath: str | None, args: argparse.Namespace
) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="state-", dir=root))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        active = start(root, jobs_dir, state, "active", pythonpath)
        procs.append(active)
        deadline = time.monotonic() + 120
        while count_jobs(state / "vigil.db") < count:
            if active.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the active did not load {count} jobs; see {root / 'active.log'}")
            time.sleep(0.05)
        if args.standby:
            procs.append(start(root, jobs_dir, state, "standby", pythonpath))
        time.sleep(args.settle)
        pids = [p.pid for p in procs]
        c0, s0, t0 = [cpu_ns(p) for p in pids], [wakeups(p) for p in pids], time.monotonic()
        time.sleep(args.window)
        c1, s1, t1 = [cpu_ns(p) for p in pids], [wakeups(p) for p in pids], time.monotonic()
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a vigil up exited during the window; see {root}")
        conn = sqlite3.connect(f"file:{state / 'vigil.db'}?mode=ro", uri=True)
        (runs,) = conn.execute("SELECT COUNT(*) FROM runs").fetchone()
        conn.close()
        if runs:
            print(f"  ! {runs} runs in the ledger: something fired; the figures include it")
        span = t1 - t0
        out = {
            "active_cpu_pct": (c1[0] - c0[0]) / 1e9 / span * 100,
            "active_wakeups_per_s": (s1[0] - s0[0]) / span,
        }
        if args.standby:
            out["standby_cpu_pct"] = (c1[1] - c0[1]) / 1e9 / span * 100
            out["standby_wakeups_per_s"] = (s1[1] - s0[1]) / span
        return out
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1000,10000", help="job counts, comma-separated (1000,10000)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured per run (60)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after loading before measuring (5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--no-standby", dest="standby", action="store_false", help="measure the active alone")
    parser.add_argument("--compare", metavar="DIR", help="another checkout, run with PYTHONPATH=DIR in the same rounds")
    args = parser.parse_args()
    print(f"machine: {json.dumps(machine())}")
    counts = [int(c) for c in args.jobs.split(",")]
    variants: list[tuple[str, str | None]] = [("this", None)]
    if args.compare:
        variants.append(("compare", str(Path(args.compare).resolve())))
    root = Path(tempfile.mkdtemp(prefix="vigil-idle-"))
    now = datetime.now(UTC)
    margin = timedelta(seconds=len(counts) * len(variants) * args.rounds * (args.window + args.settle + 40) + 300)
    folders = {}
    for count in counts:
        folders[count] = root / f"jobs-{count}"
        make_folder(folders[count], count, now, margin)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for count in counts:
                for name, pythonpath in order:
                    figures = measure(root, folders[count], count, pythonpath, args)
                    results.setdefault((name, count), []).append(figures)
                    shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                    print(f"round {r + 1} {name:7} {count:>6} jobs: {shown}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary: dict[str, object] = {"machine_load_1m": round(os.getloadavg()[0], 2), "window_s": args.window}
    print("\nmedian (min–max) over rounds:")
    for (name, count), runs in results.items():
        for key in runs[0]:
            values = [run[key] for run in runs]
            med = statistics.median(values)
            print(f"  {name:7} {count:>6} jobs {key:24} {med:8.3f} ({min(values):.3f}–{max(values):.3f})")
            prefix = "" if name == "this" else "compare_"
            summary[f"{prefix}{key}_{count // 1000}k" if count % 1000 == 0 else f"{prefix}{key}_{count}"] = round(
                med, 4
            )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
