"""Scheduler side of remote agents: dispatch, pools, status polling, result collection, acks.

The active scheduler hands a run to `AgentDispatcher.launch` once its row is committed. The
dispatcher never blocks the scheduler's loop: each run is driven by its own task.

Exactly-once, across crashes and failovers, rests on four rules:

1. The chosen agent is written into `runs.agent` (a fenced write) *before* the dispatch is sent,
   so whoever is active later knows the one agent that may have the run.
2. A dispatch is idempotent by run id on the agent, so re-sending it after any doubt (a broken
   connection, a takeover) can never start the job twice. After an *unreachable* error (no
   connection at all) the run may go to another pool member; after an *ambiguous* one it sticks
   to the same agent.
3. Results are delivered at least once: the agent keeps each result until a scheduler
   acknowledges it, and the scheduler acknowledges only runs whose ledger row is already terminal.
   The scheduler hands a result to the ledger at most once per process; the ledger only moves
   open rows, and a deposed scheduler's writes are refused by epoch fencing.
4. Every request carries the scheduler's epoch; agents refuse commands from a lower epoch than
   they have seen, so a deposed scheduler can neither start, kill nor acknowledge anything.

A run whose agent comes back without any record of it ends `unknown`, never silently re-run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.agents.protocol import (
    FINISHED,
    AgentClient,
    RunStatus,
    load_httpx,
)
from engine.clock import iso, parse_iso
from engine.errors import (
    AgentAmbiguous,
    AgentError,
    AgentNotFound,
    AgentRefused,
    AgentUnreachable,
    FencedError,
    StaleEpochError,
    StoreError,
    StoreRetryableError,
)
from engine.exec.port import Adopted, Adoption, RunContext, RunInfo, ShimExit
from engine.ids import MAX_ROW_ID, valid_id
from engine.model import OPEN_STATES, AgentSpec, JobSpec, RunState, Settings
from engine.notify import build
from engine.notify.events import Event
from engine.store import intents as i

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("vigil.agents")

#: How an operator clears an agent's bogus highest epoch (docs/agents.md, "An agent that refuses every scheduler").
RESET_EPOCH_HINT = (
    "if no scheduler really has that epoch, restart the agent once with `vigil agent --reset-epoch EPOCH`"
)
#: The furthest above its own epoch (run id) a scheduler follows an agent's. Epochs grow by one per
#: takeover and run ids by one per run, so a restored database is a few behind, never 2**32; following
#: a bogus one far up would move the whole installation towards the top of the range (docs/agents.md).
MAX_EPOCH_JUMP = MAX_RUN_ID_JUMP = 1 << 32
RESULTS_WAIT = 10.0  #: seconds a results long-poll may wait on the agent
#: An agent is recorded and announced down (`agent_down`) once unreachable for this many status polls
#: in a row and this many poll intervals: one lost poll is no alert (nor a pair of down and up).
DOWN_POLLS = 2
MAX_AMBIGUOUS_DISPATCHES = 8  #: re-sends of a dispatch without a clear answer before asking, then giving up


# ------------------------------------------------------------------------------------ pure logic


def targets_of(name: str, settings: Settings) -> tuple[tuple[str, ...], str]:
    """The agents a job's `agent` may run on, in order, and the pool mode."""
    if name in settings.pools:
        pool = settings.pools[name]
        return pool.agents, pool.mode
    if name in settings.agents:
        return (name,), "fixed-priority"
    return (), "fixed-priority"


def choose_member(
    members: Sequence[str], healthy: Callable[[str], bool], mode: str, cursor: int
) -> tuple[str | None, int]:
    """Pick an agent of a pool: (agent or None, next round-robin cursor).

    fixed-priority: the first healthy member, in declared order (JS7's "active-passive").
    round-robin: the next healthy member after the previous pick, wrapping around.
    """
    if not members:
        return None, cursor
    if mode == "round-robin":
        count = len(members)
        for step in range(count):
            index = (cursor + step) % count
            if healthy(members[index]):
                return members[index], (index + 1) % count
        return None, cursor
    for member in members:
        if healthy(member):
            return member, cursor
    return None, cursor


# ------------------------------------------------------------------------------------ state


@dataclass
class AgentLink:
    """What the scheduler knows about one declared agent."""

    spec: AgentSpec
    client: AgentClient | None = None
    up: bool | None = None  #: None until the first contact
    error: str | None = None
    last_contact: datetime | None = None
    instance: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    cursor: int = 0  #: highest result seq seen from `results_instance` (owned by the collector)
    results_instance: str | None = None
    ack_pending: set[int] = field(default_factory=set)
    acking: bool = False
    rebuild: bool = False
    ignored_run_id: int | None = None  #: a bogus max_run_id already warned about
    down_since: float | None = None  #: monotonic time of the first failed contact since the last answer
    failed_polls: int = 0  #: status polls failed in a row
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


class Phase(StrEnum):
    """Where an agent run is, from dispatch to the acknowledgement of its result."""

    DISPATCHING = "dispatching"
    WAITING = "waiting"  #: for a healthy agent
    RUNNING = "running"  #: the agent confirmed it has the run
    COLLECTING = "collecting"  #: its result is being taken in
    REPORTED = "reported"  #: its end was handed to the scheduler; the ack may still be pending


@dataclass
class Flight:
    """One open agent run, from dispatch to the acknowledgement of its result."""

    info: RunInfo
    target: str  #: the job's `agent`: an agent or a pool
    member: str | None = None  #: the agent that has (or may have) the run
    phase: Phase = Phase.DISPATCHING
    sticky: bool = False  #: a dispatch may have reached `member`: never send it elsewhere
    waiting_since: float | None = None
    running_since: float = 0.0  #: monotonic time the dispatch was confirmed
    kill_sent: bool = False
    kill_since: float | None = None
    kill_retry_at: float = 0.0
    verifying: bool = False
    driving: bool = False
    ambiguous: int = 0  #: dispatches in a row without a clear answer (broken connection, 5xx)
    ambiguous_since: float | None = None
    from_restore: bool = False  #: open in a restored database: ask the agent, never re-send


class AgentDispatcher:
    """The scheduler's executor for runs on remote agents (implements engine.exec.port.Executor).

    Besides its RunContext it is given how to keep run ids and epochs above an agent's:
    `next_run_id` and `skip_run_ids` (an agent has seen run ids up to N), and `retake_above` (take
    the leadership again above an epoch an agent has seen; False when that is not allowed now).
    `restored`: the database is older than this state directory (a restored backup).
    `agents_up`: each agent's health as the ledger recorded it (an earlier active's last word), so
    that a new active announces a change of it, not what was announced before; `notification`
    turns an event into the outbox intent written with the AgentSeen that records the change.
    """

    def __init__(
        self,
        ctx: RunContext,
        *,
        restored: bool,
        next_run_id: Callable[[], int],
        skip_run_ids: Callable[[int], None],
        retake_above: Callable[[int], bool],
        transport_factory: Callable[[AgentSpec], httpx.AsyncBaseTransport] | None = None,
        agents_up: dict[str, bool] | None = None,
        notification: Callable[[Event], list[i.Intent]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.restored = restored
        self.next_run_id = next_run_id
        self.skip_run_ids = skip_run_ids
        self.retake_above = retake_above
        self.transport_factory = transport_factory
        self.recorded_up: dict[str, bool] = dict(agents_up or {})  #: as written (deferred) last
        self.notification = notification
        self.links: dict[str, AgentLink] = {}
        self.flights: dict[int, Flight] = {}
        self._rr: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._agent_up = asyncio.Event()
        self._nudge = asyncio.Event()  #: something to supervise may have come (agents declared, a run)
        self._ready = asyncio.Event()
        self._retaking = False
        self._closed = False
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
        self._supervisor = asyncio.create_task(self._supervise(), name="agents")

    # ---------------------------------------------------------------- scheduler hooks

    def launch(self, run: RunInfo, job: JobSpec) -> None:
        """Start driving a committed `launching` run to its agent or pool (returns at once).

        The job is read again at each dispatch attempt: a run waiting for an agent goes as it is then.
        """
        info = run
        flight = self.flights.get(info.id)
        if flight is None:
            flight = Flight(info=info, target=info.agent or "")
            self.flights[info.id] = flight
        self._nudge.set()
        self._drive_soon(flight)

    def ready(self) -> None:
        """The open runs have their flights (reconciliation is done): results may be collected.

        Before this, a result read from an agent could find no flight for its run (which a
        takeover registers during reconciliation) and be passed over for good.
        """
        self._ready.set()

    async def first_contact(self, within: float) -> None:
        """Wait (at most `within` seconds) until every declared agent answered once or failed to."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self._closed:
            declared = self.ctx.settings().agents
            if all(name in self.links and self.links[name].up is not None for name in declared):
                return
            await asyncio.sleep(0.01)

    def kill(self, info: RunInfo) -> None:
        """Operator kill or timeout: forward to the agent (retried while it is unreachable)."""
        flight = self.flights.get(info.id)
        if flight is None:
            return
        if flight.phase in (Phase.DISPATCHING, Phase.WAITING) and not flight.sticky:
            self._wake_drivers()  # the driver sees kill_requested and cancels before dispatch
            return
        flight.kill_since = flight.kill_since or time.monotonic()
        if flight.phase in (Phase.RUNNING, Phase.COLLECTING):
            flight.kill_retry_at = time.monotonic() + self.ctx.settings().agent_poll_interval
            self._spawn(self._send_kill(flight))

    def adopt(self, run: RunInfo) -> Adoption:
        """A run the previous active left open on an agent or a pool (startup or takeover).

        The scheduler tracks it as active first; its end, whatever it is, comes through `finished`.
        """
        ended = self._adopt(run, run.agent or "")
        return Adoption(Adopted.ENDED if ended else Adopted.WATCHED)

    def _adopt(self, info: RunInfo, recorded: str) -> bool:
        """Take the run over; True if it could only be ended (its end is handed to `finished`)."""
        job = self.ctx.job(info.job)
        target = job.agent if job is not None and job.agent else recorded
        settings = self.ctx.settings()
        flight = Flight(info=info, target=target)
        self.flights[info.id] = flight
        self._nudge.set()
        is_agent = recorded in settings.agents
        if self.restored and is_agent and info.state is not RunState.RUNNING:
            # A later scheduler (the one whose history the restore lost) handled this dispatch:
            # ask the agent what became of it rather than send it again.
            flight.from_restore = True
            info.state = RunState.RUNNING
        if info.state is RunState.RUNNING:
            if not is_agent:
                self._end(flight, RunState.UNKNOWN, f"ran on agent {recorded!r}, which vigil.toml no longer declares")
                return True
            flight.member, flight.phase, flight.sticky = recorded, Phase.RUNNING, True
            # The poll checks the run is in the agent's journal; results come through the collector.
            if info.kill_requested:
                self.kill(info)  # delivered once the agent is reachable (or `unknown` after the limit)
            return False
        # launching or waiting: the dispatch may or may not have reached `recorded`. Re-sending it
        # is safe (idempotent by run id), and only that agent may have it.
        if is_agent:
            flight.member, flight.sticky = recorded, True
            info.state = RunState.LAUNCHING  # not `waiting`: a kill must ask that agent (see _drive_inner)
        elif recorded not in settings.pools:
            self._end(flight, RunState.UNKNOWN, f"agent or pool {recorded!r} is no longer declared")
            return True
        self._drive_soon(flight)
        return False

    def configure(self, settings: Settings) -> None:
        self._nudge.set()  # settings are read through the context at each use; agents may be declared now

    def sample(self) -> None:
        pass  # agents sample their own runs

    async def aclose(self) -> None:
        self._closed = True
        self._supervisor.cancel()
        tasks = [self._supervisor, *self._tasks]
        for link in self.links.values():
            tasks += link.tasks
            for task in link.tasks:
                task.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self.links.values():
            if link.client is not None:
                with contextlib.suppress(Exception):
                    await link.client.aclose()

    # ---------------------------------------------------------------- helpers

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, StoreError) and not isinstance(exc, StoreRetryableError):
            self.ctx.store_fault(exc)  # fenced, or a fault the store cannot outlive
        elif exc is not None:
            log.error("agent task failed", exc_info=exc)

    def _is_open(self, flight: Flight) -> bool:
        return self.ctx.is_open(flight.info)

    def _healthy(self, name: str) -> bool:
        link = self.links.get(name)
        return link is not None and link.client is not None and link.up is not False

    def _wake_drivers(self) -> None:
        self._agent_up.set()
        self._agent_up = asyncio.Event()

    def _drive_soon(self, flight: Flight) -> None:
        if not flight.driving:
            flight.driving = True
            self._spawn(self._drive(flight))

    def _end(self, flight: Flight, state: RunState, reason: str) -> None:
        """End a run that no agent will report on (never dispatched, or its outcome is lost)."""
        flight.phase = Phase.REPORTED
        self.flights.pop(flight.info.id, None)
        log.warning("run %d: %s (%s)", flight.info.id, state, reason)
        self.ctx.finished(ShimExit(flight.info.id, None, None, None, None, reason=reason, state=state))

    def _why_down(self, name: str) -> str:
        link = self.links.get(name)
        if link is None:
            return "not contacted yet"
        if link.error:
            return link.error
        return "no answer yet" if link.up is None else "not reachable"

    def _link(self, name: str | None) -> AgentLink | None:
        return self.links.get(name) if name else None

    def _mark_down(self, link: AgentLink, error: str, *, poll: bool = False) -> None:
        """A failed contact: no run is sent to the agent until it answers again (at once), but it is
        recorded and announced down only once that lasts (`_down_long_enough`)."""
        if link.up is not False:
            log.warning("agent %s is down: %s", link.name, error)
        link.up, link.error = False, error
        if link.down_since is None:
            link.down_since = self.ctx.clock.monotonic()
        if poll:
            link.failed_polls += 1
        self._write_link(link)

    def _down_long_enough(self, link: AgentLink) -> bool:
        """Unreachable for DOWN_POLLS status polls in a row and DOWN_POLLS poll intervals: not a blip."""
        if link.down_since is None:
            return True  # down for what it answered (a stale epoch), not for a lost contact
        lasted = self.ctx.clock.monotonic() - link.down_since
        return link.failed_polls >= DOWN_POLLS and lasted >= DOWN_POLLS * self.ctx.settings().agent_poll_interval

    def _write_link(self, link: AgentLink) -> None:
        st = link.status if link.up else {}
        up = bool(link.up)
        before = self.recorded_up.get(link.name)
        if not up and before is not False and not self._down_long_enough(link):
            # Maybe a blip: the ledger keeps the health it has (that a new active goes by), so that
            # the record and its agent_down come together, or not at all if the next poll answers.
            return
        self.recorded_up[link.name] = up
        self.store.defer(
            i.AgentSeen(
                name=link.name,
                url=link.spec.url,
                up=bool(link.up),
                last_contact=link.last_contact,
                version=st.get("version"),
                cpu_percent=st.get("cpu_percent"),
                memory_percent=st.get("memory_percent"),
                load1=st.get("load1"),
                running=st.get("running"),
                error=link.error,
            )
        )
        # One event per change of the recorded health, deferred with the AgentSeen that records it
        # (one transaction). An agent first seen up is no news; one first seen down is.
        if up != before and (before is not None or not up) and self.notification is not None:
            event = build.agent_changed(agent=link.name, up=up, error=link.error, at=self.ctx.clock.now())
            for intent in self.notification(event):
                self.store.defer(intent)

    # ---------------------------------------------------------------- agents: config, poll, collect

    async def _supervise(self) -> None:
        """Keep links in step with vigil.toml; retry kills and acks; nudge waiting runs."""
        httpx_loaded = False
        while not self._closed:
            if not httpx_loaded and self.ctx.settings().agents:
                await asyncio.to_thread(load_httpx)  # off the loop: the import takes ~0.1 s
                httpx_loaded = True
            try:
                self._sync_links()
                self._tick_kills()
                self._tick_acks()
            except FencedError as exc:
                self.ctx.store_fault(exc)
                return
            except Exception:
                log.exception("agent supervisor failed")
            if not self.links and not self.flights:
                # No agent declared and no run on one: nothing to tick until that changes.
                self._nudge.clear()
                await self._nudge.wait()
                continue
            await asyncio.sleep(min(0.25, self.ctx.settings().agent_poll_interval))

    def _sync_links(self) -> None:
        declared = self.ctx.settings().agents
        for name in list(self.links):
            if name not in declared or declared[name] != self.links[name].spec:
                link = self.links.pop(name)
                for task in link.tasks:
                    task.cancel()
                if link.client is not None:
                    self._spawn(link.client.aclose())
                if name not in declared:
                    self.store.defer(i.AgentDropped(name))
                    self.recorded_up.pop(name, None)
        for name, spec in declared.items():
            if name not in self.links:
                link = AgentLink(spec=spec)
                self.links[name] = link
                link.tasks = [
                    asyncio.create_task(self._poll(link), name=f"agent-poll-{name}"),
                    asyncio.create_task(self._collect(link), name=f"agent-results-{name}"),
                ]

    def _make_client(self, link: AgentLink) -> bool:
        if link.client is not None and not link.rebuild:
            return True
        old, link.client, link.rebuild = link.client, None, False
        if old is not None:
            self._spawn(old.aclose())
        transport = self.transport_factory(link.spec) if self.transport_factory else None
        try:
            link.client = AgentClient(link.spec, epoch=self.store.epoch, transport=transport)
        except (AgentError, OSError, ValueError) as exc:  # unreadable token or TLS files
            self._mark_down(link, f"cannot configure the client: {exc}", poll=True)
            return False
        return True

    async def _poll(self, link: AgentLink) -> None:
        while True:
            started = time.monotonic()
            if self._make_client(link):
                assert link.client is not None
                try:
                    status = await link.client.status()
                except AgentError as exc:
                    if isinstance(exc, AgentRefused) and exc.status == 401:
                        link.rebuild = True  # the token file may have changed
                    self._mark_down(link, str(exc), poll=True)
                else:
                    self._on_status(link, status, started)
            await asyncio.sleep(self.ctx.settings().agent_poll_interval)

    def _on_status(self, link: AgentLink, status: dict[str, Any], asked_at: float) -> None:
        came_up = link.up is not True
        link.up, link.error, link.status = True, None, status
        link.down_since, link.failed_polls = None, 0
        link.last_contact = datetime.now(UTC)
        instance = str(status.get("instance"))
        if link.instance is not None and instance != link.instance:
            # Its open runs are checked below; the collector restarts its cursor on its own.
            log.warning("agent %s restarted with a new journal (instance %s)", link.name, instance)
        link.instance = instance
        max_run_id = status.get("max_run_id")
        if valid_id(max_run_id):
            if max_run_id < MAX_ROW_ID and max_run_id - self.next_run_id() <= MAX_RUN_ID_JUMP:
                self.skip_run_ids(max_run_id)
            elif link.ignored_run_id != max_run_id:
                link.ignored_run_id = max_run_id
                log.warning(
                    "agent %s reports run id %d, far above this scheduler's next (%d): not followed "
                    "(a run id it already holds is refused by it, and that run fails with the reason)",
                    link.name,
                    max_run_id,
                    self.next_run_id(),
                )
        seen = status.get("max_epoch") or 0  # an agent that has seen no epoch may send null
        if not isinstance(seen, int) or seen > self.store.epoch:
            self._epoch_behind(link, seen)
        self._write_link(link)
        if came_up and link.up:
            log.info("agent %s is up (version %s)", link.name, status.get("version"))
            self._wake_drivers()
        open_ids = set(status.get("open") or ())
        for flight in list(self.flights.values()):
            if (
                flight.member == link.name
                and flight.phase is Phase.RUNNING
                and flight.info.id not in open_ids
                and not flight.verifying
                and flight.running_since < asked_at
            ):
                flight.verifying = True
                self._spawn(self._verify(flight, link))

    def _epoch_behind(self, link: AgentLink, seen: Any) -> None:
        """The agent has seen a higher epoch than ours: take the leadership again above it.

        That happens after a restored or replaced database (or a lost high-water record). A
        deposed scheduler cannot get here and win: it no longer holds the leader lock, and the
        database fences its writes. This scheduler re-takes once; the node allows a re-take while
        fewer than 3 were made in the last 60 s (Node._active). Past that, someone else keeps
        raising the agent's epoch (another installation using the same agent): the agent is then
        marked down with that reason instead of racing it.
        """
        link.up = False
        if not valid_id(seen):
            link.error = (
                f"stale epoch: agent {link.name} reports epoch {seen!r}, outside the valid range; not followed "
                f"({RESET_EPOCH_HINT})"
            )
        elif seen >= MAX_ROW_ID:
            # A token holder can push an agent to the top epoch; no scheduler can ever go above it.
            link.error = (
                f"stale epoch: agent {link.name} has seen epoch {seen}, the highest there is: no scheduler "
                f"can take an epoch above it ({RESET_EPOCH_HINT})"
            )
        elif seen - self.store.epoch > MAX_EPOCH_JUMP:
            link.error = (
                f"stale epoch: agent {link.name} has seen epoch {seen}, far above this scheduler's "
                f"{self.store.epoch} (more than {MAX_EPOCH_JUMP} takeovers ahead): not followed ({RESET_EPOCH_HINT})"
            )
        elif self._retaking:
            link.error = f"stale epoch: agent {link.name} has seen epoch {seen}; taking the leadership again above it"
        elif self.retake_above(seen):
            self._retaking = True
            link.error = f"stale epoch: agent {link.name} has seen epoch {seen}; taking the leadership again above it"
            log.warning(
                "agent %s has seen epoch %d, above this scheduler's %d (restored or replaced database?): "
                "taking the leadership again above it",
                link.name,
                seen,
                self.store.epoch,
            )
        else:
            link.error = (
                f"stale epoch: agent {link.name} has seen epoch {seen}, above this scheduler's {self.store.epoch} "
                f"(does another Vigil installation use this agent? {RESET_EPOCH_HINT})"
            )

    async def _collect(self, link: AgentLink) -> None:
        """Long-poll the agent for finished runs; hand each to the ledger once."""
        await self._ready.wait()
        while True:
            client = link.client
            if client is None or link.up is False:
                await asyncio.sleep(self.ctx.settings().agent_poll_interval)
                continue
            asked_instance, asked_after = link.results_instance, link.cursor
            try:
                instance, results = await client.results(asked_after, RESULTS_WAIT)
            except AgentError:
                await asyncio.sleep(self.ctx.settings().agent_poll_interval)
                continue
            if instance != asked_instance:
                # A new journal numbers its results from 1: start over from the beginning.
                link.results_instance, link.cursor = instance, 0
                if asked_after != 0:
                    continue
            for status in results:
                link.cursor = max(link.cursor, status.seq or 0)
                await self._on_result(link, status)

    async def _verify(self, flight: Flight, link: AgentLink) -> None:
        """A running run the agent's journal did not list: ask for it by id."""
        try:
            if link.client is None:
                return
            try:
                status = await link.client.run(flight.info.id)
            except AgentNotFound:
                if self._is_open(flight) and flight.phase is Phase.RUNNING:
                    if flight.from_restore:
                        reason = (
                            f"open in the restored database, and agent {link.name} has no record of it "
                            "(dispatched and forgotten, or never sent); not re-run"
                        )
                    else:
                        reason = (
                            f"agent {link.name} has no record of this run (instance {link.instance}): it "
                            "lost its journal or was replaced; not re-run"
                        )
                    self._end(flight, RunState.UNKNOWN, reason)
                return
            except AgentError:
                return  # unreachable: the next poll tries again
            if status.done:
                await self._on_result(link, status)
        finally:
            flight.verifying = False

    async def _on_result(self, link: AgentLink, status: RunStatus) -> None:
        flight = self.flights.get(status.run_id)
        if flight is None or flight.member != link.name or not self._is_open(flight):
            # Not open here: ack it once the ledger shows it ended (e.g. recorded before a crash).
            link.ack_pending.add(status.run_id)
            return
        if flight.phase in (Phase.COLLECTING, Phase.REPORTED):
            return
        info = flight.info
        identity = (status.job, status.scheduled_for, status.attempt)
        if identity != (info.job, iso(info.scheduled_for), info.attempt):
            self._end(flight, RunState.UNKNOWN, f"agent {link.name} holds a different run under id {info.id}")
            return
        flight.phase = Phase.COLLECTING
        if info.state is not RunState.RUNNING:
            self._mark_running(flight, status)
        await self._copy_log(link, info.id, status.log_b64)
        if info.kill_requested is None and status.killed:
            info.kill_requested = status.killed  # the agent enforced the timeout itself
        exit_code = status.exit_code if status.state == FINISHED else None
        result = ShimExit(
            info.id,
            exit_code,
            status.job_pid,
            status.cpu_s,
            status.peak_rss,
            reason=None if exit_code is not None else f"agent {link.name}: {status.reason or 'outcome unknown'}",
            # Only `failed` is taken from the agent (e.g. "could not start"), as a local run would end;
            # anything else, or an older agent without end_state, stays `unknown`.
            state=RunState.FAILED if exit_code is None and status.failed_without_exit else None,
            ended_at=agent_end(info.started_at, status),
        )
        flight.phase = Phase.REPORTED
        link.ack_pending.add(info.id)
        self.ctx.finished(result)

    async def _copy_log(self, link: AgentLink, run_id: int, inline: str | None = None) -> None:
        """Bring the finished run's log home, so `vigil logs` and the dashboard read it locally."""
        run_dir = self.ctx.paths.run_dir(run_id)
        part = run_dir / "log.part"
        if inline is not None:
            try:
                await asyncio.to_thread(_store_log, run_dir, base64.b64decode(inline))
                return
            except (OSError, ValueError) as exc:
                log.warning("run %d: could not store its log: %s", run_id, exc)
        if link.client is None:
            return
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            offset = 0
            chunks: list[bytes] = []
            while True:
                data, offset, size, _ = await link.client.log(run_id, offset)
                chunks.append(data)
                if not data or offset >= size:
                    break
            part.write_bytes(b"".join(chunks))  # at most the log cap (1 MiB by default)
            os.replace(part, run_dir / "log")
        except (AgentError, OSError) as exc:
            log.warning("run %d: could not copy its log from agent %s: %s", run_id, link.name, exc)
            with contextlib.suppress(OSError):
                part.unlink()

    def _tick_acks(self) -> None:
        for link in self.links.values():
            if link.ack_pending and not link.acking and link.up and link.client is not None:
                link.acking = True
                self._spawn(self._ack(link))

    async def _ack(self, link: AgentLink) -> None:
        """Acknowledge results whose end the ledger holds (only then may the agent forget them)."""
        try:
            ids = sorted(link.ack_pending)[:500]
            states = await self.store.run_states(ids)
            recorded = [run_id for run_id in ids if run_id in states and states[run_id] not in OPEN_STATES]
            for run_id in ids:
                if run_id not in states:
                    link.ack_pending.discard(run_id)  # not a run of this installation: leave it alone
                elif states[run_id] in OPEN_STATES:
                    # A result that found no flight, for a run that is open: fetch it again by id
                    # now that the run may have one (never leave the run open for good).
                    flight = self.flights.get(run_id)
                    if flight is not None and flight.member == link.name and flight.phase is Phase.RUNNING:
                        if not flight.verifying:
                            flight.verifying = True
                            self._spawn(self._verify(flight, link))
            if not recorded or link.client is None:
                return
            try:
                await link.client.ack(recorded)
            except AgentError as exc:
                log.info("ack to agent %s failed (%s); retrying", link.name, exc)
                return
            for run_id in recorded:
                link.ack_pending.discard(run_id)
                flight = self.flights.get(run_id)
                if flight is not None and flight.phase is Phase.REPORTED:
                    self.flights.pop(run_id, None)
        finally:
            link.acking = False

    # ---------------------------------------------------------------- dispatch

    def _payload(self, info: RunInfo, job: JobSpec) -> dict[str, Any]:
        settings = self.ctx.settings()
        return {
            "run_id": info.id,
            "job": info.job,
            "scheduled_for": iso(info.scheduled_for),
            "attempt": info.attempt,
            "command": job.command if isinstance(job.command, str) else list(job.command),
            "env": {**dict(info.flow_env), **dict(job.env)},  # a flow step's inputs under its own env
            "workdir": job.workdir,
            "user": job.user,  # the agent checks it against its own privileges when it launches
            "timeout": job.timeout,
            "kill_grace": settings.kill_grace,
            "log_cap": settings.log_cap,
        }

    async def _drive(self, flight: Flight) -> None:
        try:
            await self._drive_inner(flight)
        finally:
            flight.driving = False

    async def _drive_inner(self, flight: Flight) -> None:
        info = flight.info
        backoff = 0.05
        while not self._closed:
            if flight.phase is Phase.REPORTED:
                return
            if not self._is_open(flight):
                self.flights.pop(info.id, None)
                return
            if info.kill_requested and not flight.sticky:
                self._end(flight, RunState.KILLED, "cancelled by operator before it reached an agent")
                return
            job = self.ctx.job(info.job)
            if job is None:
                self._end(flight, RunState.FAILED, f"job {info.job} no longer exists")
                return
            settings = self.ctx.settings()
            if flight.sticky:
                member = flight.member
                if member not in settings.agents:
                    self._end(flight, RunState.UNKNOWN, f"agent {member!r} is no longer declared")
                    return
                if not self._healthy(member or ""):
                    await self._wait(flight, [member or ""], sticky=True)
                    continue  # the loop's top returns if the wait gave up
            else:
                members, mode = targets_of(flight.target, settings)
                if not members:
                    self._end(flight, RunState.FAILED, f"agent or pool {flight.target!r} is not declared")
                    return
                member, self._rr[flight.target] = choose_member(
                    members, self._healthy, mode, self._rr.get(flight.target, 0)
                )
                if member is None:
                    await self._wait(flight, list(members), sticky=False)
                    continue
                if flight.member != member:
                    # Persisted before the request: a later active then knows the one agent to ask.
                    # (Even for a single agent: the row was written from the job as it was then.)
                    self.store.defer(i.AgentChosen(info.id, member))
                    try:
                        await self.store.flush()
                    except StoreRetryableError:
                        # Not persisted yet (kept deferred): no dispatch until it is.
                        await asyncio.sleep(max(0.1, self.store.health.wait(time.monotonic())))
                        continue
                    flight.member = member
                    if not self._is_open(flight) or info.kill_requested:
                        continue  # killed meanwhile: the top of the loop settles it
            link = self._link(member)
            if link is None or link.client is None:
                continue
            if info.kill_requested:
                # Killed while a dispatch may have arrived: never (re)send it; find out instead.
                if await self._settle_killed(flight, link):
                    return
                await asyncio.sleep(self.ctx.settings().agent_poll_interval)
                continue
            # From here the dispatch may arrive: a scheduler kill must go through kill(), never
            # settle the run as "cancelled before it started" (which it does for `waiting` runs).
            info.state = RunState.LAUNCHING
            may_have_arrived, flight.sticky = flight.sticky, True
            try:
                status = await link.client.dispatch(self._payload(info, job))
            except AgentUnreachable as exc:
                # This attempt certainly did not arrive, but an earlier ambiguous one may have.
                flight.sticky = may_have_arrived
                self._mark_down(link, str(exc))
                continue
            except StaleEpochError as exc:
                flight.sticky = may_have_arrived
                self._mark_down(link, str(exc))
                if exc.max_epoch is not None and exc.max_epoch > self.store.epoch:
                    self._epoch_behind(link, exc.max_epoch)
                continue
            except (AgentAmbiguous, AgentRefused) as exc:
                if isinstance(exc, AgentRefused) and exc.status < 500:
                    flight.sticky = may_have_arrived
                    if exc.status in (401, 403):
                        link.rebuild = True
                        self._mark_down(link, str(exc))
                        continue
                    self._end(flight, RunState.FAILED, str(exc))
                    return
                # A broken connection or a 5xx: the agent may have journaled the run (and started
                # it) before the answer was lost. Re-send (idempotent by run id), never fail it.
                now = time.monotonic()
                flight.ambiguous += 1
                flight.ambiguous_since = flight.ambiguous_since or now
                limit = self.ctx.settings().agent_wait_limit
                if flight.ambiguous >= MAX_AMBIGUOUS_DISPATCHES or now - flight.ambiguous_since >= limit:
                    await self._settle_ambiguous(flight, link, exc)
                    return
                log.warning("run %d: %s; re-sending (idempotent)", info.id, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.ctx.settings().agent_poll_interval)
                continue
            if flight.phase in (Phase.DISPATCHING, Phase.WAITING):
                self._mark_running(flight, status)
            if status.done:
                await self._on_result(link, status)
            elif info.kill_requested and not flight.kill_sent:
                self.kill(info)
            return

    async def _settle_ambiguous(self, flight: Flight, link: AgentLink, last: AgentError) -> None:
        """Re-sends keep failing without a clear answer: ask the agent, then end the run with why."""
        assert link.client is not None
        tries = f"{flight.ambiguous} dispatches to agent {link.name} got no clear answer (last: {last})"
        try:
            status = await link.client.run(flight.info.id)
        except AgentNotFound:
            self._end(flight, RunState.FAILED, f"{tries}; the agent confirms it never received the run")
            return
        except AgentError as exc:
            self._end(
                flight,
                RunState.UNKNOWN,
                f"{tries}; asking it whether it has the run failed too ({exc}): the job may be running there",
            )
            return
        self._mark_running(flight, status)  # it had arrived: follow it like any running run
        if status.done:
            await self._on_result(link, status)
        elif flight.info.kill_requested and not flight.kill_sent:
            self.kill(flight.info)

    async def _wait(self, flight: Flight, members: list[str], *, sticky: bool) -> None:
        """No usable agent: the run waits (state `waiting`, with why) up to agent_wait_limit."""
        info = flight.info
        now = time.monotonic()
        if flight.waiting_since is None:
            flight.waiting_since = now
        why = "; ".join(f"{m}: {self._why_down(m)}" for m in members)
        kind = "pool" if flight.target in self.ctx.settings().pools else "agent"
        if sticky:
            reason = f"agent {flight.member} unreachable while its dispatch may have arrived ({why})"
        else:
            reason = f"waiting for a healthy agent of {kind} {flight.target} ({why})"
        limit = self.ctx.settings().agent_wait_limit
        if now - flight.waiting_since >= limit:
            if sticky:
                self._end(flight, RunState.UNKNOWN, f"gave up after {limit:g}s: {reason}")
            else:
                self._end(flight, RunState.FAILED, f"no healthy agent within {limit:g}s: {reason}")
            return
        if flight.phase is not Phase.WAITING:
            flight.phase = Phase.WAITING
            if not sticky:  # only a run that was certainly not delivered may be cancelled in place
                info.state = RunState.WAITING
            self.store.defer(i.RunWaiting(info.id, reason))
        remaining = limit - (now - flight.waiting_since)
        event = self._agent_up
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, self.ctx.settings().agent_poll_interval)):
                await event.wait()

    async def _settle_killed(self, flight: Flight, link: AgentLink) -> bool:
        """A killed run whose dispatch may have reached `link`: cancel it or kill it there."""
        assert link.client is not None
        try:
            status = await link.client.run(flight.info.id)
        except AgentNotFound:
            self._end(flight, RunState.KILLED, f"cancelled by operator before it reached agent {link.name}")
            return True
        except AgentError:
            return False
        self._mark_running(flight, status)
        if status.done:
            await self._on_result(link, status)
        else:
            self.kill(flight.info)
        return True

    def _mark_running(self, flight: Flight, status: RunStatus) -> None:
        info = flight.info
        started = parse_iso(status.started_at) or datetime.now(UTC)
        job = self.ctx.job(info.job)
        deadline = started + timedelta(seconds=job.timeout) if job and job.timeout else None
        info.state = RunState.RUNNING
        info.started_at = started
        info.deadline = deadline
        flight.phase = Phase.RUNNING
        flight.running_since = time.monotonic()
        self.store.defer(i.RunStarted(info.id, started, deadline, clear_reason=True))

    # ---------------------------------------------------------------- kill

    async def _send_kill(self, flight: Flight) -> None:
        info = flight.info
        link = self._link(flight.member)
        if link is None or link.client is None or not self._is_open(flight):
            return
        reason = info.kill_requested or "kill"
        try:
            await link.client.kill(info.id, reason)
        except AgentNotFound:
            if flight.phase is Phase.RUNNING and not flight.verifying:
                flight.verifying = True
                await self._verify(flight, link)
            return
        except AgentError as exc:
            log.warning("run %d: kill not delivered to agent %s yet: %s", info.id, link.name, exc)
            return
        flight.kill_sent = True

    def _tick_kills(self) -> None:
        now = time.monotonic()
        limit = self.ctx.settings().agent_wait_limit
        for flight in list(self.flights.values()):
            if flight.kill_since is None or flight.kill_sent or not flight.info.kill_requested:
                continue
            if not self._is_open(flight) or flight.phase not in (Phase.RUNNING, Phase.COLLECTING):
                continue
            if now - flight.kill_since >= limit:
                self._end(
                    flight,
                    RunState.UNKNOWN,
                    f"{flight.info.kill_requested} requested but agent {flight.member} unreachable for "
                    f"{limit:g}s; the job may still be running there",
                )
            elif self._healthy(flight.member or "") and now >= flight.kill_retry_at:
                flight.kill_retry_at = now + self.ctx.settings().agent_poll_interval
                self._spawn(self._send_kill(flight))


def agent_end(started: datetime | None, status: RunStatus) -> datetime | None:
    """When an agent's run ended, on the scheduler's record: its start as recorded plus the duration
    the agent measured (both of its times are on its own clock, which may be off ours). None when the
    agent does not say; the planner then dates the end when it learns of it."""
    agent_start, agent_end = parse_iso(status.started_at), parse_iso(status.ended_at)
    if started is None or agent_start is None or agent_end is None or agent_end < agent_start:
        return None
    return started + (agent_end - agent_start)


def _store_log(run_dir: Path, data: bytes) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log").write_bytes(data)


__all__ = ["AgentDispatcher", "choose_member", "targets_of"]
