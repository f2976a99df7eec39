"""Shared machinery for the benchmarks: the machine, the `vigil` program, times and percentiles,
and real `vigil up` processes on a temporary state (the HA benchmarks)."""

from __future__ import annotations

import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

VIGIL = [sys.executable, "-m", "engine.cli"]


def machine() -> dict[str, Any]:
    """What the figures were measured on (the load moves them: it is printed with them)."""
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def vigil_argv() -> list[str]:
    """The `vigil` console script of this interpreter (not a pyenv shim, which adds its own start-up)."""
    exe = Path(sys.executable).parent / "vigil"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())"]


def iso(dt: datetime) -> str:
    """The ledger's own text form of a time (engine/clock.py `iso`), so text comparisons are exact."""
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a list; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def next_whole_second(after: float) -> float:
    return float(int(after) + 1)


def sleep_until(ts: float) -> None:
    while (left := ts - time.time()) > 0:
        time.sleep(min(left, 0.5))


class Cluster:
    def __init__(self, jobs: dict[str, str], settings: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        self.jobs = self.root / "jobs"
        self.state = self.root / "state"
        self.jobs.mkdir()
        (self.jobs / "vigil.toml").write_text(settings)
        for name, body in jobs.items():
            (self.jobs / f"{name}.toml").write_text(body)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """One more `vigil up` on the state; `env` replaces the environment (None: this one's)."""
        with open(self.root / f"up-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [*VIGIL, "up", "--quiet", "--state", str(self.state), "--jobs", str(self.jobs)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def status(self) -> dict[str, Any]:
        out = subprocess.run([*VIGIL, "status", "--json", "--state", str(self.state)], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {"active": None, "standbys": []}

    def active_pid(self) -> int | None:
        try:
            row = self.db().execute("SELECT pid FROM leader").fetchone()
        except sqlite3.Error:
            return None
        pid = row[0] if row else None
        return pid if pid and any(p.pid == pid and p.poll() is None for p in self.procs) else None

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.state / "vigil.db", timeout=5)

    def wait(self, predicate, timeout: float = 15.0, interval: float = 0.005):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except sqlite3.Error:
                value = None
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"timed out waiting for {predicate}")

    def epoch(self) -> int:
        return int(self.db().execute("SELECT epoch FROM leader").fetchone()[0])

    def first_launch_after(self, epoch: int) -> float | None:
        row = self.db().execute("SELECT MIN(started_at) FROM runs WHERE epoch = ?", (epoch,)).fetchone()
        return datetime.fromisoformat(row[0]).timestamp() if row and row[0] else None

    def standbys(self) -> int:
        return len(self.status().get("standbys", []))

    def ledger_counts(self, job: str, every_s: float, start: float, end: float) -> tuple[int, int]:
        """(duplicates, lost) for `job` firing every `every_s` between two wall times."""
        conn = self.db()
        dupes = conn.execute(
            "SELECT COUNT(*) FROM (SELECT job, scheduled_for, attempt FROM runs GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        dupes += conn.execute(
            "SELECT COUNT(*) FROM (SELECT scheduled_for FROM runs WHERE job = ? AND attempt = 1 "
            "AND state NOT IN ('missed', 'skipped') GROUP BY 1 HAVING COUNT(*) > 1)",
            (job,),
        ).fetchone()[0]
        seen = {
            round(datetime.fromisoformat(r[0]).timestamp() / every_s)
            for r in conn.execute("SELECT scheduled_for FROM runs WHERE job = ? AND attempt = 1", (job,))
        }
        expected = range(int(start / every_s) + 1, int(end / every_s))
        lost = sum(1 for k in expected if k not in seen)
        return int(dupes), lost

    def integrity(self) -> str:
        return str(self.db().execute("PRAGMA integrity_check").fetchone()[0])

    def orphans(self) -> int:
        """Job processes still alive whose run the ledger no longer has open."""
        conn = self.db()
        open_ids = {str(r[0]) for r in conn.execute("SELECT id FROM runs WHERE state IN ('launching', 'running')")}
        count = 0
        for started in (self.state / "runs").glob("*/started"):
            try:
                env = psutil.Process(int(started.read_text())).environ()
            except (ValueError, psutil.Error):
                continue
            if env.get("VIGIL_RUN_ID") == started.parent.name and started.parent.name not in open_ids:
                count += 1
        return count

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for started in (self.state / "runs").glob("*/started"):
            try:
                pid = int(started.read_text())
                if psutil.Process(pid).environ().get("VIGIL_RUN_ID") == started.parent.name:
                    os.killpg(pid, signal.SIGKILL)
            except (ValueError, OSError, psutil.Error):
                pass


def now() -> float:
    return datetime.now(UTC).timestamp()
