"""`vigil plan --days 31` wall time on a folder of jobs on working-day calendars (default 10,000). Not a test.

The folder (bench/out/plan-N/, rebuilt when N changes) has three holiday calendars (DE-BE, US, GB) and
jobs of four kinds in equal shares: a daily cron that is skipped on non-working days, a daily cron moved
to the next working day, the last working day of the month (`workday = -1`), and an hourly cron with an
admission window. Each round starts the `vigil` console script as an operator would and times it to
exit (its output to /dev/null); `--json` and `--empty` are timed too.

    python bench/plan.py [--jobs 10000] [--days 31] [--rounds 5]
    python bench/plan.py --quick            # 1,000 jobs, 2 rounds

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from _cluster import machine, vigil_argv

OUT = Path(__file__).resolve().parent / "out"

SETTINGS = """
[calendars.de-berlin]
holidays = { country = "DE", subdivision = "BE" }
exclude = [2026-12-24, 2026-12-31]

[calendars.us]
holidays = { country = "US" }

[calendars.gb]
holidays = { country = "GB" }
"""
KINDS = (
    'cron = "{m} 7 * * *"\ncalendar = "{cal}"\n',
    'cron = "{m} 9 * * *"\ncalendar = "{cal}"\non_nonworking = "next"\n',
    'workday = -1\nat_time = "18:{m:02d}"\ncalendar = "{cal}"\n',
    'cron = "{m} * * * *"\ncalendar = "{cal}"\nwindow = "mon-fri 08:00-18:00"\n',
)
ZONES = {"de-berlin": "Europe/Berlin", "us": "America/New_York", "gb": "Europe/London"}


def build(jobs: int) -> Path:
    root = OUT / f"plan-{jobs}"
    marker = root / ".complete"
    if marker.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / "vigil.toml").write_text(SETTINGS)
    calendars = list(ZONES)
    for n in range(jobs):
        group = root / f"group{n // 100:03d}"
        group.mkdir(exist_ok=True)
        cal = calendars[n % len(calendars)]
        body = KINDS[n % len(KINDS)].format(m=n % 60, cal=cal)
        (group / f"job{n:05d}.toml").write_text(f'command = "true"\ntimezone = "{ZONES[cal]}"\n{body}')
    marker.write_text("")
    return root


def timed(root: Path, days: int, extra: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [*vigil_argv(), "plan", "--jobs", str(root), "--days", str(days), *extra],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.rounds = 1_000, 2
    root = build(args.jobs)
    out = subprocess.run(
        [*vigil_argv(), "plan", "--jobs", str(root), "--days", str(args.days), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    fires = json.loads(out.stdout)["fires"]
    by_status: dict[str, int] = {}
    for fire in fires:
        by_status[fire["status"]] = by_status.get(fire["status"], 0) + 1
    cases = {"text": [], "json": ["--json"], "empty": ["--empty"]}
    times: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, extra in cases.items():
            times[case].append(timed(root, args.days, extra))
    figures = {
        case: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3)}
        for case, v in times.items()
    }
    print(f"vigil plan --days {args.days}: {args.jobs} jobs on 3 holiday calendars, {len(fires)} fires {by_status}")
    for case, figure in figures.items():
        print(f"  {case:<5} median {figure['median_s']:.3f} s (min {figure['min_s']:.3f}, max {figure['max_s']:.3f})")
    doc = {"jobs": args.jobs, "days": args.days, "fires": len(fires), "by_status": by_status, **figures}
    print(json.dumps({"bench": "plan", **doc, "machine": machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
