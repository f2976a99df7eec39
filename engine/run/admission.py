"""Admission: whether a run its own job lets start (overlap, retry delay) may start now.

Three things hold a run back here: its job is held (`vigil hold`), a counted lock it needs has no
room (`locks = { gpu = 1 }` against `[resources.gpu] limit`), or the cap on local runs is reached
(`[scheduler] max_running`). A run takes all its locks at once or none.

Who holds what is never stored: the holders are the open runs that were let start (launching,
running, or sent to an agent), each holding its job's locks, so a new active derives them again
from the open rows of the ledger (`RunTable.track`) and a lock can neither be granted twice nor
leaked by a crash.

Waiting runs are taken in line: higher `priority` first, then the oldest (the lowest run id). No run
overtakes a waiting run ahead of it on a lock they both need (so a run asking for 2 of a resource is
not starved by runs asking for 1); runs that need other locks go ahead. A held run is not in line.

Pure: no I/O, no clock. `obstacles` says why a run waits, for the reason of its pending row and for
`vigil why`.

Layer: run. May import the base modules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

#: The name `ResourceUse` and `Obstacle.resource` give the cap on local runs.
MAX_RUNNING = "max_running"
#: Holders named in a reason before "and N more".
NAMED_HOLDERS = 5


@dataclass(frozen=True, slots=True)
class Need:
    """What one run asks for to start."""

    run_id: int
    job: str
    priority: int = 0
    locks: tuple[tuple[str, int], ...] = ()
    local: bool = True  #: runs on this host: counts against `max_running`
    held: bool = False  #: its job is held

    @property
    def order(self) -> tuple[int, int]:
        """Its place in line: higher priority first, then the oldest."""
        return (-self.priority, self.run_id)


class Kind(StrEnum):
    HELD = "held"  #: the job is held
    LOCK = "lock"  #: a lock has no room for the count asked
    AHEAD = "ahead"  #: a lock has room, but a run ahead in line waits for it
    MAX_RUNNING = "max_running"  #: the cap on local runs is reached


@dataclass(frozen=True, slots=True)
class Obstacle:
    """One reason a run waits."""

    kind: Kind
    resource: str | None = None  #: the lock (LOCK, AHEAD), MAX_RUNNING, or None (HELD)
    used: int = 0
    limit: int = 0
    runs: tuple[int, ...] = ()  #: the holders (LOCK, MAX_RUNNING) or the run ahead (AHEAD)
    asked: int = 1

    @property
    def text(self) -> str:
        if self.kind is Kind.HELD:
            return "job held"
        if self.kind is Kind.MAX_RUNNING:
            return f"waiting: max_running = {self.limit} reached ({self.used} running)"
        asked = f" (needs {self.asked})" if self.asked > 1 else ""
        if self.kind is Kind.AHEAD:
            return f"waiting for {self.resource}{asked}: run {self.runs[0]} is ahead in line for it"
        if not self.limit:
            return f"waiting for {self.resource}: not declared in vigil.toml ([resources.{self.resource}] limit)"
        return f"waiting for {self.resource}{asked}: {self.used}/{self.limit} held by {_runs(self.runs)}"


def _runs(ids: tuple[int, ...]) -> str:
    shown = ", ".join(map(str, ids[:NAMED_HOLDERS]))
    more = f" and {len(ids) - NAMED_HOLDERS} more" if len(ids) > NAMED_HOLDERS else ""
    return f"run{'s' if len(ids) > 1 else ''} {shown}{more}" if ids else "no run (counts of runs ending now)"


def reason(obstacles: Iterable[Obstacle]) -> str:
    """A pending run's reason: every obstacle, most binding first."""
    return "; ".join(obstacle.text for obstacle in obstacles)


class Holders:
    """The runs let start and still open, and what each holds."""

    def __init__(self) -> None:
        self._needs: dict[int, Need] = {}
        self.used: Counter[str] = Counter()
        self.local: set[int] = set()  #: local runs let start (for `max_running`)
        self._named: dict[str, tuple[int, ...]] = {}  # holders_of, until the next take or release

    def __len__(self) -> int:
        return len(self._needs)

    def take(self, need: Need) -> None:
        if need.run_id in self._needs:
            return
        self._needs[need.run_id] = need
        self._named.clear()
        for name, count in need.locks:
            self.used[name] += count
        if need.local:
            self.local.add(need.run_id)

    def release(self, run_id: int) -> bool:
        """The run ended (or its row was never written); whether it held anything."""
        need = self._needs.pop(run_id, None)
        if need is None:
            return False
        self._named.clear()
        for name, count in need.locks:
            self.used[name] -= count
            if self.used[name] <= 0:
                del self.used[name]
        self.local.discard(run_id)
        return True

    def holders_of(self, resource: str) -> tuple[int, ...]:
        """Run ids holding `resource` (MAX_RUNNING: the local runs), oldest first."""
        named = self._named.get(resource)
        if named is None:
            if resource == MAX_RUNNING:
                named = tuple(sorted(self.local))
            else:
                named = tuple(sorted(run_id for run_id, need in self._needs.items() if resource in dict(need.locks)))
            self._named[resource] = named
        return named


@dataclass
class Line:
    """The locks claimed by waiting runs ahead in line: the first such run of each."""

    claims: dict[str, int] = field(default_factory=dict)

    def claim(self, need: Need) -> None:
        for name, _count in need.locks:
            self.claims.setdefault(name, need.run_id)

    @classmethod
    def of(cls, ahead: Iterable[Need]) -> Line:
        line = cls()
        for need in ahead:
            if not need.held:
                line.claim(need)
        return line


def obstacles(
    need: Need,
    holders: Holders,
    limits: Mapping[str, int],
    max_running: int | None,
    line: Line | Callable[[str], int | None] | None = None,
) -> tuple[Obstacle, ...]:
    """Why `need` cannot start now (empty: it may), given who holds what and the runs ahead of it:
    `line` says which waiting run ahead needs a lock (a Line, or a function asked only for a lock that
    has room)."""
    ahead_of = line.claims.get if isinstance(line, Line) else line
    if need.held:
        return (Obstacle(Kind.HELD),)
    full: list[Obstacle] = []
    ahead: list[Obstacle] = []
    for name, count in need.locks:
        limit = limits.get(name, 0)
        used = holders.used.get(name, 0)
        if used + count > limit:
            full.append(Obstacle(Kind.LOCK, name, used, limit, holders.holders_of(name), count))
        elif ahead_of is not None and (first := ahead_of(name)) is not None:
            ahead.append(Obstacle(Kind.AHEAD, name, used, limit, (first,), count))
    found = full + ahead
    if need.local and max_running is not None and len(holders.local) >= max_running:
        running = holders.holders_of(MAX_RUNNING)
        found.append(Obstacle(Kind.MAX_RUNNING, MAX_RUNNING, len(running), max_running, running))
    return tuple(found)


def admit(
    waiting: Iterable[Need], holders: Holders, limits: Mapping[str, int], max_running: int | None
) -> list[tuple[Need, tuple[Obstacle, ...]]]:
    """The waiting runs in line, each with its obstacles; those with none are let start (taken into
    `holders` as they are, so the runs after them see the room they took)."""
    line = Line()
    decided: list[tuple[Need, tuple[Obstacle, ...]]] = []
    for need in sorted(waiting, key=lambda n: n.order):
        found = obstacles(need, holders, limits, max_running, line)
        if not found:
            holders.take(need)
        elif not need.held:
            line.claim(need)
        decided.append((need, found))
    return decided
