"""The deliverer: runs on the active, sends what the outbox holds, records each outcome.

Each round reads the due rows (`Store.due_notifications`), applies each channel's rate limit
(`notify.ratelimit`: the rows held back are marked suppressed and counted in one summary, in one
commit), then sends each channel's rows in order, channels in parallel (at most `concurrency` sends
at once), and commits `NotificationSent` / `NotificationRetry` / `NotificationFailed` after each send.

- At least once: a row is marked only after its send; a crash (or a failed commit) between the two
  sends it again, with the same event `id`, from the next active.
- A failed send is retried with exponential backoff (`RetryPolicy`); while a channel is failing, its
  other due rows wait behind it (same next attempt, attempts unchanged), so they go out in order when
  it is back. A row gives up (`failed`) after `give_up_after` of failures, or at once when the
  channel refuses it for good (DeliveryError.permanent, a channel no longer declared).
- Fenced: a commit raising FencedError stops the deliverer at once; it marks nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from engine.clock import Clock
from engine.errors import DeliveryError, FencedError, StoreError, StoreRetryableError
from engine.model import ChannelSpec, Notification, Settings
from engine.notify.events import LOG_TAIL_BYTES, document
from engine.notify.ratelimit import ChannelWindow, admit
from engine.outbox.channels import Channel, build_channel
from engine.paths import StatePaths
from engine.store import intents as i
from engine.store.abc import Store

log = logging.getLogger("vigil.outbox")

#: Reads the last lines of a row's run log (empty when it has no run, or no log here).
LogTail = Callable[[Notification], Awaitable[list[str]]]
ChannelFactory = Callable[[ChannelSpec], Channel]


@dataclass(frozen=True)
class RetryPolicy:
    """5 s after the first failure, doubling to at most 5 min between attempts; give up after 24 h."""

    first_delay: float = 5.0
    max_delay: float = 300.0
    give_up_after: float = 86400.0  #: seconds since the event was queued

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones."""
        return float(min(self.max_delay, self.first_delay * 2.0 ** min(max(attempts - 1, 0), 30)))


def run_dir_log_tail(paths: StatePaths) -> LogTail:
    """The log in the run's directory: a local run's own, an agent run's copy brought home."""

    async def tail(row: Notification) -> list[str]:
        if row.run_id is None:
            return []
        return await asyncio.to_thread(_read_tail, paths.run_dir(row.run_id) / "log")

    return tail


def _read_tail(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            start = max(0, size - 2 * LOG_TAIL_BYTES)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if start > 0 and lines else lines  # the first line may be cut


async def _no_tail(_row: Notification) -> list[str]:
    return []


class Deliverer:
    def __init__(
        self,
        store: Store,
        settings: Callable[[], Settings],
        clock: Clock,
        *,
        log_tail: LogTail = _no_tail,
        policy: RetryPolicy = RetryPolicy(),
        channel_factory: ChannelFactory = build_channel,
        concurrency: int = 8,
        batch: int = 500,
        poll: float = 5.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.log_tail = log_tail
        self.policy = policy
        self.channel_factory = channel_factory
        self.batch = batch
        self.poll = poll  #: seconds between looks when nothing wakes it (rows queued by other writers)
        self._sends = asyncio.Semaphore(concurrency)
        self._channels: dict[str, tuple[ChannelSpec, Channel]] = {}
        self._windows: dict[str, ChannelWindow] = {}
        self._down: dict[str, tuple[datetime, str]] = {}  #: failing channels: until when, and why
        self._busy: dict[str, asyncio.Task[None]] = {}  #: each channel's sender, while it has rows
        self._queues: dict[str, deque[Notification]] = {}  #: rows handed to a channel's sender, in order
        self._inflight: set[tuple[str, str]] = set()  #: (event id, channel) of the queued rows
        self._wake = asyncio.Event()
        self._stopped = False
        self.fenced = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped or fenced (FencedError propagates, the scheduler stops on it)."""
        try:
            while not self._stopped:
                self._wake.clear()
                try:
                    full = await self.deliver_due()
                except StoreRetryableError:
                    full = False  # logged once by the store; try again at the next look
                if full:
                    continue
                await self._sleep()
        finally:
            await self.stop()

    async def _sleep(self) -> None:
        timeout = self.poll
        with contextlib.suppress(StoreRetryableError):
            next_at = await self.store.next_notification_at()
            if next_at is not None:
                timeout = min(timeout, (next_at - self.clock.now()).total_seconds())
        if timeout > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def stop(self) -> None:
        """Stop sending; a send under way is cancelled before its outcome is committed (its row stays
        pending, so the next active sends it again)."""
        self._stopped = True
        self._wake.set()
        busy = list(self._busy.values())
        for task in busy:
            task.cancel()
        for task in busy:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait_idle(self) -> None:
        """Until every send this deliverer started has finished (tests, `deliver_all`)."""
        while self._busy:
            await asyncio.gather(*self._busy.values(), return_exceptions=True)
        if self.fenced:
            raise FencedError("deposed: another node holds a newer epoch")

    async def deliver_due(self) -> bool:
        """One round: due rows rate-limited and handed to their channels' senders. Returns True when
        the round read a full batch and acted on some of it (more may be due)."""
        if self.fenced:
            raise FencedError("deposed: another node holds a newer epoch")
        now = self.clock.now()
        due = await self.store.due_notifications(now, self.batch)
        by_channel: dict[str, list[Notification]] = {}
        for row in due:
            if (row.event_id, row.channel) not in self._inflight:  # already handed to its sender
                by_channel.setdefault(row.channel, []).append(row)
        channels = self.settings().channels
        marks: list[i.Intent] = []
        sends: dict[str, list[Notification]] = {}
        for name, rows in by_channel.items():
            spec = channels.get(name)
            if spec is None:
                error = f"channel {name!r} is no longer declared in vigil.toml"
                marks.extend(i.NotificationFailed(r.event_id, name, now, r.attempts, error) for r in rows)
                continue
            down = self._down.get(name)
            if down is not None and down[0] > now:
                marks.extend(self._held(rows, down, now))
                continue
            admission = admit(spec, self._windows.setdefault(name, ChannelWindow()), rows, now)
            if admission.suppress:
                assert admission.summary is not None
                held_ids = tuple(r.event_id for r in admission.suppress)
                marks.append(i.NotificationSuppressed(held_ids, name, admission.summary.id))
                if admission.summary_is_new:
                    marks.append(i.NotificationQueued(admission.summary, (name,), not_before=admission.summary_at))
                else:
                    marks.append(i.SummaryRecounted(admission.summary, name))
                log.warning("channel %s: rate limit: %d events held back", name, len(held_ids))
            if admission.deliver:
                sends[name] = admission.deliver
        if marks:
            await self._commit(marks)
        for name, rows in sends.items():
            self._queues.setdefault(name, deque()).extend(rows)
            self._inflight.update((r.event_id, name) for r in rows)
            if name not in self._busy:
                task = asyncio.create_task(self._send_all(name, channels[name]), name=f"notify-{name}")
                self._busy[name] = task
        return len(due) >= self.batch and bool(marks or sends)

    def _held(self, rows: Sequence[Notification], down: tuple[datetime, str], now: datetime) -> list[i.Intent]:
        until, error = down
        return [i.NotificationRetry(r.event_id, r.channel, now, r.attempts, until, f"waiting: {error}") for r in rows]

    async def _send_all(self, name: str, spec: ChannelSpec) -> None:
        """One channel's queue, in order (each round adds to it); when a send fails the rest wait behind it."""
        queue = self._queues[name]
        try:
            channel = self._channel(spec)
            while queue and not self._stopped:
                row = queue[0]
                ok = await self._send_one(channel, row)
                queue.popleft()
                self._inflight.discard((row.event_id, name))
                if not ok and queue:
                    rest = list(queue)
                    queue.clear()
                    window = self._windows.get(name)
                    if window is not None:  # they never used their slots
                        window.delivered = max(0, window.delivered - len(rest))
                    try:
                        await self._commit(self._held(rest, self._down[name], self.clock.now()))
                    finally:
                        self._inflight.difference_update((r.event_id, name) for r in rest)
        except FencedError:
            self.fenced = True
            log.error("deposed: the notification deliverer stops without marking anything more")
            self._stopped = True
            self._wake.set()
        except StoreError as exc:
            log.warning("channel %s: could not record a delivery (it will be sent again): %s", name, exc)
        finally:
            self._inflight.difference_update((r.event_id, name) for r in queue)
            queue.clear()  # what is left stays pending in the store: a later round reads it again
            self._busy.pop(name, None)
            self._wake.set()

    async def _send_one(self, channel: Channel, row: Notification) -> bool:
        doc = document(row.document, epoch=row.epoch, log_tail=await self.log_tail(row))
        attempts = row.attempts + 1
        try:
            async with self._sends:
                await channel.send(doc)
        except DeliveryError as exc:
            await self._commit([self._failure(row, attempts, str(exc), permanent=exc.permanent)])
            return False
        except Exception as exc:  # a channel's bug must not stop the deliverer
            log.exception("channel %s: send failed unexpectedly", row.channel)
            await self._commit([self._failure(row, attempts, f"internal error: {exc!r}", permanent=False)])
            return False
        self._down.pop(row.channel, None)
        await self._commit([i.NotificationSent(row.event_id, row.channel, self.clock.now(), attempts)])
        return True

    def _failure(self, row: Notification, attempts: int, error: str, *, permanent: bool) -> i.Intent:
        now = self.clock.now()
        next_at = now + timedelta(seconds=self.policy.delay(attempts))
        too_old = (next_at - row.created_at).total_seconds() > self.policy.give_up_after
        if permanent or too_old:
            log.error("channel %s: gave up on %s after %d attempts: %s", row.channel, row.event_id, attempts, error)
            return i.NotificationFailed(row.event_id, row.channel, now, attempts, error)
        self._down[row.channel] = (next_at, error)
        log.warning("channel %s: %s (attempt %d; next at %s)", row.channel, error, attempts, next_at.isoformat())
        return i.NotificationRetry(row.event_id, row.channel, now, attempts, next_at, error)

    def _channel(self, spec: ChannelSpec) -> Channel:
        known = self._channels.get(spec.name)
        if known is None or known[0] != spec:  # new, or its definition changed in vigil.toml
            known = (spec, self.channel_factory(spec))
            self._channels[spec.name] = known
        return known[1]

    async def _commit(self, intents: list[i.Intent]) -> None:
        await self.store.commit(intents)  # its observers (the metrics) count the outcomes
