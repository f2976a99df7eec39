"""The table of open runs: by id, active and queued per job, and the retry and deadline heaps.

Memory only: what is in it was committed (or is being, in this iteration's batch). Heaps hold
monotonic times, so a step of the wall clock moves no retry and no timeout.

Layer: run. May import the base modules, `engine.exec.port` and `engine.run.admission`.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import defaultdict, deque
from collections.abc import Callable, Iterator

from engine.clock import Clock
from engine.exec.port import RunInfo
from engine.model import ACTIVE_STATES, RunState
from engine.run.admission import Holders, Need


class RunTable:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.runs: dict[int, RunInfo] = {}  #: open runs only
        self.active: defaultdict[str, set[int]] = defaultdict(set)  #: launching or running, per job
        self.queued: defaultdict[str, deque[int]] = defaultdict(deque)  #: pending behind them, in order
        #: pending until an admission window opens (`window`), per job; they wait on the retry heap
        self.window_waiting: defaultdict[str, set[int]] = defaultdict(set)
        self._retries: list[tuple[float, int]] = []
        self._deadlines: list[tuple[float, int]] = []
        self._opened: list[RunInfo] = []  # tracked since the last take_opened (for the run watch)
        #: the locks and local slots of the runs counted active, derived from them (never stored)
        self.holders = Holders()
        self.need_of: Callable[[RunInfo], Need] = lambda info: Need(info.id, info.job, local=info.agent is None)
        #: pending runs held back by admission (a lock, max_running, a hold), with their reason
        self.waiting: dict[int, str] = {}
        self.waiting_by_job: defaultdict[str, list[int]] = defaultdict(list)
        #: a holder or a waiting run went, or what admission depends on changed: look at the waiting again
        self.admission_changed = False

    def __len__(self) -> int:
        return len(self.runs)

    def get(self, run_id: int) -> RunInfo | None:
        return self.runs.get(run_id)

    def is_open(self, info: RunInfo) -> bool:
        """`info` is the record of an open run (not one ended, or replaced, since)."""
        return self.runs.get(info.id) is info

    def track(self, info: RunInfo, *, active: bool = False) -> None:
        """An open run; `active` counts it against its job's overlap whatever its state."""
        self.runs[info.id] = info
        self._opened.append(info)
        if active or info.state in ACTIVE_STATES:
            self.active[info.job].add(info.id)
            self.holders.take(self.need_of(info))

    def take_opened(self) -> list[RunInfo]:
        """The runs tracked since the last call (some may have ended or been dropped since)."""
        opened, self._opened = self._opened, []
        return opened

    def forget(self, run_id: int, job: str) -> None:
        """A run that ended, or whose row was never written."""
        self.runs.pop(run_id, None)
        self.active[job].discard(run_id)
        if job in self.window_waiting:
            self.window_waiting[job].discard(run_id)
        with contextlib.suppress(ValueError):
            self.queued[job].remove(run_id)
        if self.holders.release(run_id) or self.unwait(run_id, job):
            self.admission_changed = True

    def wait(self, info: RunInfo, reason: str) -> None:
        """A pending run held back by admission (not by its own job's rules)."""
        if info.id not in self.waiting:
            self.waiting_by_job[info.job].append(info.id)
        self.waiting[info.id] = reason

    def unwait(self, run_id: int, job: str) -> bool:
        if self.waiting.pop(run_id, None) is None:
            return False
        ids = self.waiting_by_job[job]
        ids.remove(run_id)
        if not ids:
            del self.waiting_by_job[job]
        return True

    def open_of(self, job: str) -> tuple[list[int], list[int]]:
        """The job's open runs: (active, by id; queued, in order)."""
        active = sorted(run_id for run_id in self.active[job] if run_id in self.runs)
        queued = [run_id for run_id in self.queued[job] if run_id in self.runs]
        return active, queued

    def start(self, info: RunInfo) -> None:
        """A pending run becomes `launching` (a retry that is due, a queued run whose turn came)."""
        info.state = RunState.LAUNCHING
        self.active[info.job].add(info.id)
        self.unwait(info.id, info.job)
        self.holders.take(self.need_of(info))
        if info.job in self.window_waiting:
            self.window_waiting[info.job].discard(info.id)

    def next_queued(self, job: str) -> RunInfo | None:
        """The next pending run of the job's queue, taken off it (runs ended meanwhile are dropped)."""
        while self.queued[job]:
            info = self.runs.get(self.queued[job].popleft())
            if info is not None and info.state is RunState.PENDING:
                return info
        return None

    # ------------------------------------------------------------ retries and deadlines

    def retry_at(self, mono: float, run_id: int) -> None:
        heapq.heappush(self._retries, (mono, run_id))

    def wait_for_window(self, mono: float, info: RunInfo) -> None:
        """A pending run that starts when its window opens (at `mono`), like a retry that is due."""
        self.window_waiting[info.job].add(info.id)
        self.retry_at(mono, info.id)

    def window_waiting_of(self, job: str) -> list[int]:
        """The job's runs waiting for a window to open, by id."""
        return sorted(run_id for run_id in self.window_waiting.get(job, ()) if run_id in self.runs)

    def due_retries(self, mono: float) -> Iterator[RunInfo]:
        """Pending runs whose retry time has come, each once."""
        while self._retries and self._retries[0][0] <= mono:
            _, run_id = heapq.heappop(self._retries)
            info = self.runs.get(run_id)
            if info is not None and info.state is RunState.PENDING:
                yield info

    def arm_deadline(self, info: RunInfo) -> None:
        if info.deadline is None:
            return
        if info.deadline_mono is None:  # a deadline set by an earlier process: what is left of it
            left = (info.deadline - self.clock.now()).total_seconds()
            info.deadline_mono = self.clock.monotonic() + left
        heapq.heappush(self._deadlines, (info.deadline_mono, info.id))

    def due_deadlines(self, mono: float) -> Iterator[RunInfo]:
        """Running runs past their deadline and not yet asked to stop, each once."""
        while self._deadlines and self._deadlines[0][0] <= mono:
            _, run_id = heapq.heappop(self._deadlines)
            info = self.runs.get(run_id)
            if info is not None and info.state is RunState.RUNNING and not info.kill_requested:
                yield info

    def next_retry(self) -> float | None:
        return self._retries[0][0] if self._retries else None

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None
