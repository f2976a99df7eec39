"""`vigil monitor`: the Textual app, its refresh loop and its commands.

One polling worker reads a snapshot (off the event loop, see ``tui.data``) at most every
``interval`` seconds and never faster than every MIN_INTERVAL, then hands it to the screens on the
current stack. Commands go to the active scheduler through the control socket; they are greyed out
under ``--read-only`` and whenever no scheduler is active, and the scheduler audits each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine.control import ControlClient
from engine.errors import ControlError, VigilError
from engine.paths import StatePaths
from tui.data import Run, Snapshot, StateSource, utc_now
from tui.screens.agents import AgentsScreen
from tui.screens.base import ViewScreen
from tui.screens.cluster import ClusterScreen
from tui.screens.flow import FlowScreen
from tui.screens.jobs import JobsScreen
from tui.screens.modals import ConfirmScreen, HelpScreen
from tui.screens.run import RunScreen
from tui.screens.runs import RunsScreen
from tui.widgets.header import VIEWS, HeaderState

MIN_INTERVAL = 0.25  #: never poll the state faster than this
DEFAULT_INTERVAL = 1.0
SLOW_REPLY_S = 0.5  #: tell the operator we are waiting if the scheduler has not answered by then


class VigilApp(App[int]):
    """The dashboard. `clock` and `source` are injectable so tests get fixed times and data."""

    CSS_PATH = "app.tcss"
    TITLE = "Vigil"
    MODES = {"jobs": JobsScreen, "runs": RunsScreen, "cluster": ClusterScreen, "agents": AgentsScreen}
    DEFAULT_MODE = "jobs"

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("colon", "command_palette", "Palette", show=False),
        *(Binding(str(i), f"view('{mode}')", label, show=False) for i, (mode, label) in enumerate(VIEWS, 1)),
    ]

    def __init__(
        self,
        paths: StatePaths,
        *,
        jobs_dir: Path | None = None,
        read_only: bool = False,
        clock: Callable[[], datetime] | None = None,
        interval: float = DEFAULT_INTERVAL,
        source: StateSource | None = None,
    ) -> None:
        super().__init__()
        self.paths = paths
        self.read_only = read_only
        self.clock = clock or utc_now
        self.interval = max(MIN_INTERVAL, interval)
        self.source = source or StateSource(paths, jobs_dir=jobs_dir, clock=self.clock)
        self.snapshot: Snapshot | None = None
        self.ticks = 0
        self.tick_ms: list[float] = []  #: main-thread time spent applying each snapshot
        self._wake: asyncio.Event | None = None
        self._view_history: list[str] = []
        self._had_active: bool | None = None

    # ------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self._wake = asyncio.Event()
        self.poll_loop()
        self.set_interval(1.0, self._tick_headers)

    def on_unmount(self) -> None:
        self.source.close()

    def now(self) -> datetime:
        return self.clock()

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def poll_loop(self) -> None:
        assert self._wake is not None
        while True:
            started = time.monotonic()
            try:
                snap = await self.source.snapshot()
            except Exception as exc:
                self.log.error(f"snapshot failed: {exc!r}")
            else:
                self.apply_snapshot(snap)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval - (time.monotonic() - started))
            rest = MIN_INTERVAL - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    def refresh_soon(self) -> None:
        """Poll again now (still no sooner than MIN_INTERVAL after the last poll started)."""
        if self._wake is not None:
            self._wake.set()

    async def refresh_now(self) -> Snapshot:
        """Read and apply a snapshot immediately (tests and benchmarks use this to stay deterministic)."""
        snap = await self.source.snapshot()
        self.apply_snapshot(snap)
        return snap

    def apply_snapshot(self, snap: Snapshot) -> None:
        started = time.perf_counter()
        self.snapshot = snap
        self.ticks += 1
        has_active = snap.cluster.active is not None
        for screen in self.screen_stack:
            if isinstance(screen, ViewScreen) and screen.is_mounted:
                screen.show_snapshot(snap)
        if has_active != self._had_active:
            self._had_active = has_active
            self.screen.refresh_bindings()
        self.tick_ms.append((time.perf_counter() - started) * 1000)
        del self.tick_ms[:-1000]
        if self.ticks == 1:
            # The first load creates most long-lived objects (every job's record and history). Left
            # in the collector's oldest generation they make each full collection scan them all:
            # 100+ ms stalls of the UI at 10,000 jobs. Freezing them keeps collections short.
            gc.freeze()

    def _tick_headers(self) -> None:
        # The freshness age must keep counting even when polls stall.
        for screen in self.screen_stack:
            if isinstance(screen, ViewScreen) and screen.is_mounted:
                screen.show_header()

    def header_state(self) -> HeaderState:
        return HeaderState(
            snapshot=self.snapshot,
            now=self.now(),
            read_only=self.read_only,
            interval=self.interval,
            state_dir=str(self.paths.root),
        )

    @property
    def can_command(self) -> bool:
        snap = self.snapshot
        return not self.read_only and snap is not None and snap.cluster.active is not None

    # ------------------------------------------------------------ navigation

    def action_view(self, mode: str) -> None:
        if mode == self.current_mode:
            while len(self.screen_stack) > 1:
                self.pop_screen()
            return
        self._view_history.append(self.current_mode)
        del self._view_history[:-20]
        self.switch_mode(mode)

    def go_back(self) -> None:
        """Esc on a view: close a pushed screen, else return to the previous view."""
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self._view_history:
            self.switch_mode(self._view_history.pop())

    def show_runs(self, job: str | None = None, state: str | None = None) -> None:
        self.action_view("runs")
        screen = self.screen
        if isinstance(screen, RunsScreen):
            if screen.is_mounted:
                screen.set_filters(job=job, state=state)
            else:
                screen.job, screen.state = job, state

    def show_run(self, run_id: int) -> None:
        self.push_screen(RunScreen(run_id))

    def show_flow(self, flow_id: int) -> None:
        self.push_screen(FlowScreen(flow_id))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for i, (mode, label) in enumerate(VIEWS, 1):
            yield SystemCommand(f"{label} view", f"Go to the {label.lower()} view (key {i})", self._goto(mode))
        yield SystemCommand("Failed runs", "Runs view filtered to failed runs", lambda: self.show_runs(state="failed"))
        yield SystemCommand("Help", "Keys and views (?)", self.action_help)
        yield from super().get_system_commands(screen)

    def _goto(self, mode: str) -> Callable[[], None]:
        return lambda: self.action_view(mode)

    # ------------------------------------------------------------ commands

    def command_run_now(self, job: str) -> None:
        self._send("run", f"Run {job} now", lambda r: f"{job}: started run {r.get('run_id')}", job=job)

    def command_pause(self, job: str, *, resume: bool) -> None:
        op = "resume" if resume else "pause"
        self._send(op, f"{op.capitalize()} {job}", lambda r: f"{job} {op}d", job=job)

    def command_hold(self, job: str, *, release: bool) -> None:
        """Hold (after a confirmation: its runs stop starting) or release a job."""
        if release:
            self._send(
                "release", f"Release {job}", lambda r: f"{job} released ({r.get('waiting', 0)} waiting)", job=job
            )
            return
        question = (
            f"Hold [b]{job}[/b]?\n\nIts new runs wait pending (not skipped) until you release it; runs going now go on."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._send("hold", f"Hold {job}", lambda r: f"{job} held", job=job)
            else:
                self.notify("Hold cancelled", timeout=2)

        self.push_screen(ConfirmScreen(question, "Hold"), answered)

    def command_rerun(self, run: Run) -> None:
        self._send(
            "rerun",
            f"Rerun of run {run.id}",
            lambda r: f"rerun of {run.id} ({run.job}) started as run {r.get('run_id')}",
            run_id=run.id,
        )

    def command_kill(self, run: Run) -> None:
        question = (
            f"Kill run [b]{run.id}[/b] of [b]{run.job}[/b]?\n\n"
            "Its whole process group gets SIGTERM, then SIGKILL after the grace period."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._send("kill", f"Kill run {run.id}", lambda r: f"kill sent to run {run.id}", run_id=run.id)
            else:
                self.notify("Kill cancelled", timeout=2)

        self.push_screen(ConfirmScreen(question, "Kill"), answered)

    def _send(self, op: str, what: str, success: Callable[[dict[str, Any]], str], **args: Any) -> None:
        if not self.can_command:
            why = "read-only mode" if self.read_only else "no active scheduler"
            self.notify(f"{what}: not available ({why})", severity="warning", timeout=4)
            return
        self._command_worker(op, what, success, args)

    @work(group="commands", exit_on_error=False)
    async def _command_worker(
        self, op: str, what: str, success: Callable[[dict[str, Any]], str], args: dict[str, Any]
    ) -> None:
        task = asyncio.ensure_future(self.source.command(op, **args))
        done, _ = await asyncio.wait({task}, timeout=SLOW_REPLY_S)
        if not done:
            self.notify(f"{what}: waiting for the scheduler…", timeout=2)
        try:
            reply = await task
        except (VigilError, OSError) as exc:  # a refusal raises its kind's class (NotFoundError too)
            self.notify(f"{what} failed: {exc}", severity="error", timeout=8)
        else:
            self.notify(success(reply), timeout=4)
        self.refresh_soon()


# ---------------------------------------------------------------- entry point


def _wait_active(paths: StatePaths, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    client = ControlClient(paths, timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            reply = client.request("status")
        except (ControlError, OSError, ValueError):
            reply = {}
        active = reply.get("active") or {}
        if active.get("pid") == proc.pid:
            return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_monitor(paths: StatePaths, read_only: bool, jobs_dir: Path, start: bool) -> int:
    """Open the dashboard; with `start`, run a scheduler on `jobs_dir` for the dashboard's lifetime."""
    proc: subprocess.Popen[bytes] | None = None
    if start:
        if ControlClient(paths, timeout=1.0).is_active():
            print(f"vigil: a scheduler is already active on {paths.root}; opening the dashboard on it")
        else:
            paths.root.mkdir(parents=True, exist_ok=True)
            log_path = paths.root / "up.log"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "engine.cli",
                        "up",
                        "--state",
                        str(paths.root),
                        "--jobs",
                        str(Path(jobs_dir).resolve()),
                        "--quiet",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C meant for the dashboard must not hit it
                )
            if not _wait_active(paths, proc, timeout=20.0):
                _stop(proc)
                tail = log_path.read_text(errors="replace")[-2000:]
                print(f"vigil: the scheduler did not become active; see {log_path}\n{tail}", file=sys.stderr)
                return 1
    try:
        interval = float(os.environ.get("VIGIL_MONITOR_INTERVAL", "1"))
        app = VigilApp(paths, jobs_dir=Path(jobs_dir), read_only=read_only, interval=interval)
        app.run()
        return app.return_code or 0
    finally:
        if proc is not None:
            _stop(proc)
