"""10,000 job files: load time, memory and idle CPU of `vigil up` on this machine (issue #2). Not a test.

The folder is a realistic mix (100 folders of 100 jobs, `_folder.toml` defaults, tags, env, timeouts,
retries): cron jobs in a dozen time zones at hours spread over the day, `every` jobs of minutes to days,
one-off `at` jobs days ahead, `after` chains and manual jobs. Every schedule is chosen, from the
current time, so that nothing fires during the measurement: the scheduler is idle, and what is
measured is the cost of holding 10,000 jobs (the heap of next fires, the folder's inotify watch and
its safety walk, the timers of an idle node: docs/operations.md, "An idle node").

Figures:
- `load_10k_s`: from starting `vigil up` until the `jobs` table lists every job (polled every 20 ms).
  `parse_10k_s` is the folder load alone (`JobFolder.scan()` in this process) for comparison.
- `rss_mb`: the scheduler's resident memory once loaded (psutil, after a few seconds of settling).
- `idle_cpu_pct`: CPU time (user + system, psutil `cpu_times`) of the `vigil up` process over the idle
  window, as a percentage of one core.

The last line of output is one JSON object with every figure. Run: `python bench/scale.py` (about a
minute). `--jobs N` and `--idle SECONDS` change the size and the window.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
from _cluster import machine, vigil_argv

ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Sydney",
    "Pacific/Auckland",
)
EVERY_MINUTES = (5, 7, 10, 13, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360, 720, 1440)
COMMANDS = (
    'echo "hello from $VIGIL_JOB"',
    "/usr/local/bin/backup --incremental",
    '["/usr/bin/rsync", "-a", "/srv/data/", "/backup/data/"]',
    "python3 -m reports.daily --site $SITE",
    "curl -fsS https://example.invalid/health",
)


# ------------------------------------------------------------------------------------- the folder


def quiet_hours(zone: str, now: datetime, margin: timedelta) -> list[int]:
    """Local hours in `zone` during which no fire can fall inside [now, now + margin]."""
    busy = set()
    t = now - timedelta(hours=1)
    while t <= now + margin + timedelta(hours=1):
        busy.add(t.astimezone(ZoneInfo(zone)).hour)
        t += timedelta(minutes=15)
    return [h for h in range(24) if h not in busy]


def command_line(rng: random.Random) -> str:
    cmd = rng.choice(COMMANDS)
    return f"command = {cmd}" if cmd.startswith("[") else f"command = {json.dumps(cmd)}"


def make_folder(root: Path, count: int, now: datetime, margin: timedelta, seed: int = 2) -> dict[str, int]:
    """Write `count` job files under `root`; none fires within `margin` of `now`. Returns the mix."""
    rng = random.Random(seed)
    per_folder = 100
    folders = max(1, (count + per_folder - 1) // per_folder)
    mix = {"cron": 0, "every": 0, "at": 0, "after": 0, "manual": 0}
    quiet = {zone: quiet_hours(zone, now, margin) for zone in ZONES}
    horizon = (now + margin).timestamp()
    safe_every = [m for m in EVERY_MINUTES if (horizon // (m * 60) == now.timestamp() // (m * 60))]
    written = 0
    root.mkdir(parents=True, exist_ok=True)
    (root / "vigil.toml").write_text('[scheduler]\nretention = "30d"\nlog_cap = "1MB"\n')
    for f in range(folders):
        team = f"team{f // 10:02d}"
        folder = root / team / f"svc{f % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        zone = ZONES[f % len(ZONES)]
        (folder / "_folder.toml").write_text(
            f'timezone = "{zone}"\ntags = ["{team}", "svc{f % 10:02d}"]\ntimeout = "30m"\n'
            f'[env]\nSITE = "site{f % 7}"\nTEAM = "{team}"\n'
        )
        scheduled: list[str] = []
        for j in range(per_folder):
            if written >= count:
                break
            name = f"job{j:03d}"
            kind = rng.choices(("cron", "every", "at", "after", "manual"), (60, 25, 5, 7, 3))[0]
            if kind == "after" and not scheduled:
                kind = "cron"
            if kind == "every" and not safe_every:
                kind = "cron"
            lines = [command_line(rng), f'description = "{kind} job {j} of {team}/svc{f % 10:02d}"']
            if kind == "cron":
                hour = rng.choice(quiet[zone])
                minute = rng.randrange(60)
                form = rng.randrange(5)
                if form == 0:
                    cron = f"{minute} {hour} * * *"
                elif form == 1:
                    cron = f"{minute} {hour} * * 1-5"
                elif form == 2:
                    cron = f"{minute} {hour} 1,15 * *"
                elif form == 3:
                    other = rng.choice(quiet[zone])
                    cron = f"{minute} {min(hour, other)},{max(hour, other)} * * *"
                else:
                    cron = f"*/{rng.choice((5, 10, 15, 20, 30))} {hour} * * *"
                lines.append(f'cron = "{cron}"')
                if rng.random() < 0.2:  # a job's own zone overrides its folder's
                    own = rng.choice(ZONES)
                    lines[-1] = f'cron = "{minute} {rng.choice(quiet[own])} * * *"'
                    lines.append(f'timezone = "{own}"')
                scheduled.append(name)
            elif kind == "every":
                minutes = rng.choice(safe_every)
                text = f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"
                lines.append(f'every = "{text}"')
                scheduled.append(name)
            elif kind == "at":
                at = (now + timedelta(days=rng.randint(1, 60), minutes=rng.randrange(1440))).replace(microsecond=0)
                lines.append(f'at = "{at.astimezone(UTC).isoformat()}"')
            elif kind == "after":
                lines.append(f'after = ["{team}/svc{f % 10:02d}/{rng.choice(scheduled)}"]')
            if rng.random() < 0.3:
                lines.append(f"retries = {rng.randint(1, 3)}")
                lines.append(f'retry_delay = "{rng.choice(("10s", "30s", "1m"))}"')
            if rng.random() < 0.2:
                lines.append(f'overlap = "{rng.choice(("skip", "queue", "allow"))}"')
            if rng.random() < 0.3:
                lines.append(f'[env]\nJOB_INDEX = "{j}"')
            (folder / f"{name}.toml").write_text("\n".join(lines) + "\n")
            mix[kind] += 1
            written += 1
    return mix


# ------------------------------------------------------------------------------------- measurement


def count_jobs(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            (n,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE error IS NULL").fetchone()
            return int(n)
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def leftovers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("VIGIL_BENCH_MARKER") == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement (20)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    args = parser.parse_args()
    print(f"machine: {json.dumps(machine())}")
    root = Path(tempfile.mkdtemp(prefix="vigil-scale-"))
    jobs_dir, state = root / "jobs", root / "state"
    now = datetime.now(UTC)
    margin = timedelta(seconds=args.idle + 120)
    mix = make_folder(jobs_dir, args.jobs, now, margin)
    files = sum(1 for _ in jobs_dir.rglob("*.toml"))
    print(f"folder: {args.jobs} jobs ({mix}) in {files} files; none due before {now + margin:%H:%M:%S} UTC")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from engine.config import JobFolder

    t = time.perf_counter()
    scan = JobFolder(jobs_dir).scan()
    parse_s = time.perf_counter() - t
    if scan.errors or len(scan.jobs) != args.jobs:
        print(f"  ! {len(scan.errors)} errors, {len(scan.jobs)} jobs; first: {scan.errors[:3]}")
    t = time.perf_counter()
    JobFolder(jobs_dir).scan()
    parse2_s = time.perf_counter() - t
    folder = JobFolder(jobs_dir)
    folder.scan()
    folder.scan()  # the scheduler's second scan sets up its folder watch; later ones are the steady state
    t = time.perf_counter()
    folder.scan()
    rescan_ms = (time.perf_counter() - t) * 1000
    print(
        f"parse: JobFolder.scan() of the folder {parse_s:.2f} s (again {parse2_s:.2f} s); unchanged rescan {rescan_ms:.1f} ms"
    )

    marker = uuid.uuid4().hex
    log = open(root / "vigil.log", "wb")
    figures: dict[str, float | int] = {}
    started = time.time()
    proc = subprocess.Popen(
        [*vigil_argv(), "up", "--state", str(state), "--jobs", str(jobs_dir)],
        env=dict(os.environ, VIGIL_BENCH_MARKER=marker),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ps = psutil.Process(proc.pid)
        load_s = None
        while time.time() - started < 120:
            if proc.poll() is not None:
                raise RuntimeError(f"vigil up exited with {proc.returncode}; see {root / 'vigil.log'}")
            if count_jobs(state / "vigil.db") >= args.jobs:
                load_s = time.time() - started
                break
            time.sleep(0.02)
        if load_s is None:
            raise RuntimeError("jobs not loaded within 120 s")
        cpu_at_load = cpu_seconds(ps)
        rss_at_load = ps.memory_info().rss / 2**20
        print(
            f"load: {load_s:.2f} s from process start to {args.jobs} rows in `jobs` "
            f"(CPU {cpu_at_load:.2f} s, RSS {rss_at_load:.0f} MB at that moment)"
        )
        time.sleep(3.0)  # settle: the first rescan, the first sample, the flusher
        c0, w0 = cpu_seconds(ps), time.time()
        rss_samples = []
        while time.time() - w0 < args.idle:
            time.sleep(1.0)
            rss_samples.append(ps.memory_info().rss / 2**20)
        c1, w1 = cpu_seconds(ps), time.time()
        idle_pct = (c1 - c0) / (w1 - w0) * 100
        rss = max(rss_samples)
        conn = sqlite3.connect(f"file:{state / 'vigil.db'}?mode=ro", uri=True)
        (runs,) = conn.execute("SELECT COUNT(*) FROM runs").fetchone()
        conn.close()
        threads = ps.num_threads()
        print(
            f"idle: {idle_pct:.2f} % of one core over {w1 - w0:.1f} s ({(c1 - c0) * 1000:.0f} ms CPU); "
            f"RSS {rss:.1f} MB (max over the window); {threads} threads; runs in the ledger: {runs}"
        )
        if runs:
            print("  ! something fired during the idle window: the idle figure includes its runs")
        figures = {
            "jobs": args.jobs,
            "load_10k_s": round(load_s, 2),
            "parse_10k_s": round(parse_s, 2),
            "rescan_unchanged_ms": round(rescan_ms, 1),
            "rss_mb": round(rss, 1),
            "idle_cpu_pct": round(idle_pct, 2),
            "idle_runs": int(runs),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        for left in leftovers(marker):
            try:
                os.killpg(os.getpgid(left.pid), signal.SIGKILL)
            except OSError:
                pass
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("targets (2 cores): load_10k_s <= 3; rss_mb <= 100; idle_cpu_pct <= 2")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
