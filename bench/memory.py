"""Where a scheduler holding N jobs keeps its memory (issue 12). Not a test.

Starts the active scheduler in this process on the folder bench/scale.py writes (nothing due),
lets it run a few seconds, then prints:
- RSS after the imports, after the folder scan, once loaded and once idle, with SQLite's own heap
  (`sqlite3_memory_used`), to split the interpreter, the job folder, the planner and the database;
- the `--top` largest live allocations grouped by file and line (tracemalloc, in a second pass, as
  tracing doubles the RSS).

The last line is one JSON object: `rss_imports_mb`, `rss_scanned_mb`, `rss_loaded_mb`, `rss_idle_mb`,
`sqlite_mb`, `traced_mb` (Python allocations still live, tracemalloc pass) and `jobs`.
Run: `python bench/memory.py --jobs 10000` (about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import linecache
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _cluster import machine
from scale import make_folder

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sqlite_mb() -> float:
    import _sqlite3

    lib = ctypes.CDLL(_sqlite3.__file__)  # resolves to the libsqlite3 the module uses
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return float(lib.sqlite3_memory_used()) / 2**20


async def hold(jobs_dir: Path, state: Path, idle: float, figures: dict[str, float]) -> None:
    """Load the folder as the active scheduler does, run `idle` seconds, note RSS at each step."""
    from engine.paths import StatePaths
    from engine.run.loop import Scheduler

    scheduler = Scheduler(StatePaths(state), jobs_dir)
    scan = scheduler.folder.scan

    def first_scan_noted():  # type: ignore[no-untyped-def]
        result = scan()
        figures.setdefault("rss_scanned_mb", rss_mb())
        return result

    scheduler.folder.scan = first_scan_noted  # type: ignore[method-assign]
    scheduler.paths.ensure()
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.prepare()
    figures["rss_loaded_mb"] = rss_mb()
    running = asyncio.create_task(scheduler.run())
    await asyncio.sleep(idle)
    gc.collect()
    figures["rss_idle_mb"] = rss_mb()
    figures["sqlite_mb"] = sqlite_mb()
    if tracemalloc.is_tracing():
        figures["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
        top(tracemalloc.take_snapshot(), int(figures.pop("top")))
    scheduler.request_stop()
    await running


def top(snapshot: tracemalloc.Snapshot, count: int) -> None:
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    print(f"largest live allocations (tracemalloc, by line), top {count}:")
    for stat in snapshot.statistics("lineno")[:count]:
        frame = stat.traceback[0]
        where = frame.filename.replace(str(ROOT) + "/", "")
        code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        print(f"  {stat.size / 2**20:6.2f} MB {stat.count:7d} blocks  {where}:{frame.lineno}  {code}")


def one_pass(args: argparse.Namespace, traced: bool) -> dict[str, float]:
    """This script again in a fresh interpreter (imports counted from nothing), one figure set back."""
    argv = [sys.executable, __file__, "--jobs", str(args.jobs), "--idle", str(args.idle), "--pass"]
    argv += ["--top", str(args.top if traced else 0)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    *lines, last = out.strip().splitlines()
    print("\n".join(lines))
    return dict(json.loads(last))


def measure(args: argparse.Namespace) -> None:
    """One pass in this process: the folder, the scheduler, the figures as the last line."""
    root = Path(tempfile.mkdtemp(prefix="vigil-memory-"))
    try:
        make_folder(root / "jobs", args.jobs, datetime.now(UTC), timedelta(seconds=args.idle + 120))
        sys.path.insert(0, str(ROOT))
        figures: dict[str, float] = {"top": args.top}
        if args.top:
            tracemalloc.start()
        import engine.agents.dispatcher  # prepare imports it: count it with the imports
        import engine.run.loop  # noqa: F401

        figures["rss_imports_mb"] = rss_mb()
        asyncio.run(hold(root / "jobs", root / "state", args.idle, figures))
        figures.pop("top", None)
        print(json.dumps({key: round(value, 1) for key, value in figures.items()}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds the loaded scheduler runs (3)")
    parser.add_argument("--top", type=int, default=25, help="allocation sites to list (0: no tracemalloc pass)")
    parser.add_argument("--pass", dest="one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args)
        return 0
    print(f"machine: {json.dumps(machine())}")
    figures = one_pass(args, traced=False)
    print(
        f"RSS: {figures['rss_imports_mb']:.1f} MB after imports, {figures['rss_scanned_mb']:.1f} after the folder "
        f"scan, {figures['rss_loaded_mb']:.1f} loaded, {figures['rss_idle_mb']:.1f} after {args.idle:g} s "
        f"(SQLite's heap {figures['sqlite_mb']:.1f} MB)"
    )
    if args.top:
        figures["traced_mb"] = one_pass(args, traced=True)["traced_mb"]
        print(f"live Python allocations (tracemalloc pass): {figures['traced_mb']:.1f} MB")
    print(json.dumps({"jobs": args.jobs, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
