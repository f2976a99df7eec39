"""The dashboard at scale (issue #4). Not a test.

Against a generated state with 10,000 jobs and 1,000,000 runs (built once with the engine's own
schema, cached under bench/out/), the headless app (`App.run_test`) is timed for:

1. first paint     app start → first snapshot applied and the jobs table painted (target ≤ 1.5 s)
2. history page    runs view: request → page fetched from SQLite and shown, for the newest page, a
                   deep page (id ≈ 500,000), a job filter and a state filter (target ≤ 100 ms)
3. refresh tick    main-thread time to apply one snapshot while a writer adds ~50 runs/s
                   (p50, max; target ≤ 50 ms), and the longest event-loop stall seen by a 5 ms probe
4. throughput      `vigil up` on N trivial jobs (`true`, periods 1.0–1.9 s) for a window, without
                   and with a dashboard (1 s refresh) polling the same state; completed runs/s from
                   the ledger, alternated A/B three times, medians (the dashboard may cost ≤ 5 %).
                   The dashboard's own CPU share is printed too: on a busy 2-core machine the
                   run-rate comparison is noisy, the CPU share is not.

The last line of output is one JSON object with every figure (units in the key names).
Run: `python bench/tui_scale.py` (about 3 minutes the first time, 2 after). `--quick` shrinks it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _cluster import machine as shared_machine  # noqa: E402
from _state import EPOCH, generate, job_name  # noqa: E402

from engine.clock import iso  # noqa: E402
from engine.paths import StatePaths  # noqa: E402
from tui.app import VigilApp  # noqa: E402
from tui.screens.jobs import JobsScreen  # noqa: E402
from tui.screens.runs import RunsScreen  # noqa: E402

OUT = ROOT / "bench" / "out"
RAN = ("succeeded", "failed", "timed_out", "killed", "unknown")


# ----------------------------------------------------------------------------------- machine


def machine() -> dict[str, object]:
    """The shared machine figures plus a pure-Python loop's time (how fast this CPU runs the app)."""
    start = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    return {**shared_machine(), "py_loop_2M_ms": round((time.perf_counter() - start) * 1000, 1)}


# ----------------------------------------------------------------------------------- state


# ----------------------------------------------------------------------------------- app phases


async def _until(pilot, predicate, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await pilot.pause(0.005)


async def shown(pilot) -> str:
    """Let pending messages be handled, then render the whole frame; returns its text.

    (`Pilot.pause()` also waits for the process to be idle by CPU, which measures background
    threads too; a full-frame render is what a terminal would be sent, and is an upper bound.)
    """
    await pilot._wait_for_screen()
    strips = pilot.app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


async def first_paint(paths: StatePaths, jobs: int) -> float:
    started = time.perf_counter()
    app = VigilApp(paths, interval=60.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.table.row_count == jobs)
        text = await shown(pilot)
        elapsed = time.perf_counter() - started
        assert "group00/job00000" in text, text
    return elapsed


async def history_pages(paths: StatePaths) -> dict[str, float]:
    app = VigilApp(paths, interval=60.0)
    out: dict[str, float] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        await _until(pilot, lambda: app.snapshot is not None)
        await pilot.press("2")
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        await _until(pilot, lambda: runs.table.row_count == 100 and runs.total is not None)

        async def timed(name: str, action) -> None:
            samples = []
            for _ in range(5):
                runs.last_fetch_ms = None
                started = time.perf_counter()
                action()
                await _until(pilot, lambda: runs.last_fetch_ms is not None)
                await shown(pilot)
                samples.append((time.perf_counter() - started) * 1000)
            out[name] = round(statistics.median(samples), 1)

        await timed("history_page_newest_ms", lambda: runs.load_page())
        runs.pages = [None, 500_001]
        await timed("history_page_deep_ms", lambda: runs.load_page())
        runs.pages = [None]
        await timed("history_page_job_ms", lambda: runs.set_filters(job="group42/job04242", state=None))
        await timed("history_page_state_ms", lambda: runs.set_filters(job=None, state="timed_out"))
        await timed("history_page_job_state_ms", lambda: runs.set_filters(job="group42/job04242", state="failed"))
    out["history_page_ms"] = max(out.values())
    return out


class Writer(threading.Thread):
    """Adds ~`rate` runs/s to the state (a few left running for a second) so ticks have work to do."""

    def __init__(self, paths: StatePaths, jobs: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.paths, self.jobs, self.rate = paths, jobs, rate
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.paths.db, isolation_level=None, timeout=5)
        next_id = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0] + 1
        rnd = random.Random(7)
        running: list[int] = []
        while not self.stop.wait(0.2):
            now = datetime.now(UTC)
            conn.execute("BEGIN IMMEDIATE")
            for run_id in running:
                conn.execute(
                    "UPDATE runs SET state = 'succeeded', ended_at = ?, exit_code = 0 WHERE id = ?", (iso(now), run_id)
                )
            running = []
            for offset in range(max(1, self.rate // 5)):
                job = job_name(rnd.randrange(self.jobs))
                due = iso(now + timedelta(microseconds=offset))
                state = "running" if rnd.random() < 0.2 else "succeeded"
                conn.execute(
                    "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, "
                    "started_at, ended_at, exit_code) VALUES (?, ?, ?, ?, 'schedule', ?, ?, ?, ?, ?, ?)",
                    (
                        next_id,
                        job,
                        due,
                        state,
                        EPOCH,
                        EPOCH,
                        iso(now),
                        iso(now),
                        None if state == "running" else iso(now + timedelta(seconds=0.5)),
                        None if state == "running" else 0,
                    ),
                )
                if state == "running":
                    running.append(next_id)
                next_id += 1
            conn.execute("COMMIT")
        conn.close()


async def ticks(paths: StatePaths, jobs: int, seconds: float, sort_key: str | None) -> dict[str, float]:
    app = VigilApp(paths, interval=1.0)
    lags: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.table.row_count == jobs)
        if sort_key:
            await pilot.press(sort_key)
        writer = Writer(paths, jobs, rate=50)
        writer.start()
        app.tick_ms.clear()
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:  # the probe: how late does a 5 ms sleep wake up?
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - before) * 1000 - 5)
        writer.stop.set()
        writer.join()
        samples = list(app.tick_ms)
    return {
        "ticks": len(samples),
        "tick_ms_p50": round(statistics.median(samples), 2),
        "tick_ms_max": round(max(samples), 2),
        "loop_stall_ms_max": round(max(lags), 1),
    }


# ----------------------------------------------------------------------------------- throughput


def _vigil_up(state: Path, jobs_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "up", "--state", str(state), "--jobs", str(jobs_dir), "--quiet"],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


async def _throughput_once(
    root: Path, name: str, jobs: int, window: float, with_monitor: bool
) -> tuple[float, float, float]:
    """(completed runs/s, scheduler CPU % incl. shims and jobs, this process's CPU % = the dashboard)."""
    work = root / name
    jobs_dir, state = work / "jobs", work / "state"
    for i in range(jobs):
        path = jobs_dir / "t" / f"{i:04d}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Periods from 1.0 s to 1.9 s spread the fires over time: completions arrive smoothly rather
        # than in one burst per second, so a window's count is not quantised by bursts.
        path.write_text(f'command = "true"\nevery = "{1000 + (i % 10) * 100}ms"\n')
    proc = _vigil_up(state, jobs_dir, work / "up.log")
    paths = StatePaths(state)
    try:
        deadline = time.monotonic() + 60
        while True:  # loaded: the catalog is published
            if paths.db.exists():
                try:
                    with sqlite3.connect(paths.db, timeout=5) as conn:
                        if conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= jobs:
                            break
                except sqlite3.Error:
                    pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"vigil up did not load its jobs; see {work / 'up.log'}")
            await asyncio.sleep(0.1)

        sched = psutil.Process(proc.pid)

        async def measure() -> tuple[float, float, float]:
            await asyncio.sleep(3.0)  # warm-up
            t0 = datetime.now(UTC)
            cpu0, own0, wall0 = sched.cpu_times(), time.process_time(), time.monotonic()
            await asyncio.sleep(window)
            cpu1, own1, wall = sched.cpu_times(), time.process_time(), time.monotonic() - wall0
            t1 = datetime.now(UTC)
            await asyncio.sleep(2.0)  # runs ending inside the window finish being recorded
            with sqlite3.connect(paths.db, timeout=5) as conn:
                (count,) = conn.execute(
                    f"SELECT COUNT(*) FROM runs WHERE ended_at > ? AND ended_at <= ? AND state IN ({','.join('?' * len(RAN))})",
                    (iso(t0), iso(t1), *RAN),
                ).fetchone()
            sched_cpu = sum(cpu1) - sum(cpu0)  # user+system, own and reaped children (shims, jobs)
            return count / window, sched_cpu / wall * 100, (own1 - own0) / wall * 100

        if not with_monitor:
            return await measure()
        app = VigilApp(paths, interval=1.0)
        async with app.run_test(size=(120, 40)):
            found = await measure()
            assert app.ticks >= window / 2, f"the dashboard only refreshed {app.ticks} times"
        return found
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


async def throughput(jobs: int, window: float, rounds: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="vigil-tui-bench-"))
    without: list[tuple[float, float, float]] = []
    with_: list[tuple[float, float, float]] = []
    try:
        for i in range(rounds):  # alternated, so drifting machine load hits both sides alike
            without.append(await _throughput_once(root, f"a{i}", jobs, window, with_monitor=False))
            with_.append(await _throughput_once(root, f"b{i}", jobs, window, with_monitor=True))
            print(
                f"throughput round {i + 1}: without {without[-1][0]:.1f} runs/s (scheduler CPU "
                f"{without[-1][1]:.0f}%), with dashboard {with_[-1][0]:.1f} runs/s (scheduler CPU "
                f"{with_[-1][1]:.0f}%, dashboard CPU {with_[-1][2]:.1f}%)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    a = statistics.median(r for r, _, _ in without)
    b = statistics.median(r for r, _, _ in with_)
    return {
        "throughput_without_runs_per_s": round(a, 1),
        "throughput_with_runs_per_s": round(b, 1),
        "throughput_cost_pct": round((a - b) / a * 100, 1) if a else float("nan"),
        "dashboard_cpu_pct": round(statistics.median(c for _, _, c in with_), 1),
        "throughput_jobs": jobs,
    }


# ----------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--tp-jobs", type=int, default=300, help="trivial jobs for the throughput phase")
    parser.add_argument("--tp-window", type=float, default=15.0)
    parser.add_argument("--tp-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 jobs / 100,000 runs, short windows")
    parser.add_argument("--phases", default="paint,history,ticks,throughput")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.runs, args.tp_window, args.tp_rounds = 1_000, 100_000, 5.0, 1
    phases = set(args.phases.split(","))
    print(f"machine: {json.dumps(machine())}")
    figures: dict[str, object] = {"jobs": args.jobs, "runs": args.runs}
    paths = generate(OUT / f"tui-state-{args.jobs}-{args.runs}", args.jobs, args.runs)

    if "paint" in phases:
        paints = [asyncio.run(first_paint(paths, args.jobs)) for _ in range(3)]
        print(f"first paint ({args.jobs:,} jobs, {args.runs:,} runs): {', '.join(f'{p:.2f}' for p in paints)} s")
        figures["first_paint_s"] = round(statistics.median(paints), 2)
        figures["first_paint_max_s"] = round(max(paints), 2)
    if "history" in phases:
        pages = asyncio.run(history_pages(paths))
        print("history pages (fetch + show, median of 5): " + ", ".join(f"{k} {v}" for k, v in pages.items()))
        figures.update(pages)
    if "ticks" in phases:
        for sort_key, label in ((None, "name"), ("S", "state")):
            found = asyncio.run(ticks(paths, args.jobs, 5.0 if args.quick else 10.0, sort_key))
            print(f"refresh ticks, sorted by {label}, writer at ~50 runs/s: {found}")
            suffix = "" if sort_key is None else "_sorted_by_state"
            figures.update({f"{k}{suffix}": v for k, v in found.items()})
    if "throughput" in phases:
        figures.update(asyncio.run(throughput(args.tp_jobs, args.tp_window, args.tp_rounds)))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
