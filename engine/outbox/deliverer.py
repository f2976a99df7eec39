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
  channel refuses it for good (DeliveryError.permanent, a channel no longer declared), or when it
  cannot be sent at all (a document this version cannot read: "internal error: ..."); the rows
  behind a row that gave up go on at once.
- A channel declared in vigil.toml whose definition is invalid (a typo being fixed) keeps its rows
  pending, looked at again every `invalid_recheck`, until the same `give_up_after`.
- Rate limit: a round admits on copies of the channels' windows and keeps them only once its marks
  (suppressed rows with their summary, in one commit) are committed; the slots of admitted rows that
  were never sent (their sender stopped, or they were held behind a failure) are given back.
- Fenced: a commit raising FencedError stops the deliverer at once; it marks nothing more. Every mark
  meets the fence, even on a row the new active has already marked.
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
from engine.notify.events import LOG_TAIL_BYTES, Event, document
from engine.notify.ratelimit import ChannelWindow, admit, takes_slot
from engine.notify.routing import SCHEDULER_CHANNELS
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
    invalid_recheck: float = 60.0  #: seconds between looks at the rows of a channel declared but invalid

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


@dataclass(frozen=True)
class _Queued:
    """A row handed to its channel's sender, with the start of the window whose slot it took."""

    row: Notification
    window_start: datetime | None  #: None: it took no slot (a summary, a test event)


#: A failing channel: until when its rows wait, and why.
Down = tuple[datetime, str]


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
        self._unused: dict[str, list[datetime]] = {}  #: per channel, the window of each slot taken but not sent
        self._down: dict[str, Down] = {}  #: failing channels
        self._busy: dict[str, asyncio.Task[None]] = {}  #: each channel's sender, while it has rows
        self._queues: dict[str, deque[_Queued]] = {}  #: rows handed to a channel's sender, in order
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
            if self.fenced:  # a sender's mark was refused
                raise FencedError("deposed: another node holds a newer epoch")
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
        settings = self.settings()
        self._return_unused()
        marks: list[i.Intent] = []
        windows: dict[str, ChannelWindow] = {}  #: this round's, kept once its marks are committed
        held_back: dict[str, int] = {}
        sends: dict[str, list[Notification]] = {}
        for name, rows in by_channel.items():
            spec = settings.channels.get(name)
            if spec is None:
                marks.extend(self._undeliverable(name, rows, now, settings))
                continue
            down = self._down.get(name)
            if down is not None and down[0] > now:
                marks.extend(self._held(rows, down, now))
                continue
            window = windows[name] = self._windows.get(name, ChannelWindow()).copy()
            admission = admit(spec, window, rows, now)
            if admission.suppress:
                assert admission.summary is not None
                held_ids = tuple(r.event_id for r in admission.suppress)
                # One commit: no row is suppressed under a summary that is not queued (an upsert).
                marks.append(i.NotificationSuppressed(held_ids, name, admission.summary.id))
                marks.append(i.SummaryRecounted(admission.summary, name, not_before=admission.summary_at))
                held_back[name] = len(held_ids)
            if admission.deliver:
                sends[name] = admission.deliver
        if marks:
            await self._commit(marks)  # raising, the windows stay as they were: nothing was admitted
        self._windows.update(windows)
        for name, count in held_back.items():
            log.warning("channel %s: rate limit: %d events held back", name, count)
        for name, rows in sends.items():
            start = self._windows[name].start
            self._queues.setdefault(name, deque()).extend(_Queued(r, start if takes_slot(r) else None) for r in rows)
            self._inflight.update((r.event_id, name) for r in rows)
            if name not in self._busy:
                task = asyncio.create_task(self._send_all(name, settings.channels[name]), name=f"notify-{name}")
                self._busy[name] = task
        return len(due) >= self.batch and bool(marks or sends)

    def _undeliverable(
        self, name: str, rows: Sequence[Notification], now: datetime, settings: Settings
    ) -> list[i.Intent]:
        """Rows of a channel that is not in the settings: no longer declared (they give up), or declared
        but invalid, or vigil.toml unreadable (they wait, looked at again every `invalid_recheck`,
        until `give_up_after`: a typo being fixed must not lose them)."""
        if name in settings.invalid_channels:
            error = f"channel {name!r} is declared in vigil.toml but its definition is invalid"
        elif settings.channels_unknown:
            error = f"vigil.toml cannot be read, so channel {name!r} is unknown"
        else:
            return self._hand_on(name, rows, now, settings)
        next_at = now + timedelta(seconds=self.policy.invalid_recheck)
        marks: list[i.Intent] = []
        for r in rows:
            if (next_at - r.created_at).total_seconds() > self.policy.give_up_after:
                marks.append(i.NotificationFailed(r.event_id, name, now, r.attempts, error))
            else:
                marks.append(i.NotificationRetry(r.event_id, name, now, r.attempts, next_at, f"waiting: {error}"))
        log.warning("%s: %d events wait (see vigil validate)", error, len(rows))
        return marks

    def _hand_on(self, name: str, rows: Sequence[Notification], now: datetime, settings: Settings) -> list[i.Intent]:
        """Rows of a channel no longer declared (renamed, removed), or queued for `[scheduler] notify`
        while vigil.toml could not be read: handed on to `[scheduler] notify`, each as a new row of the
        same event (same id), in the commit that closes the old row. With nowhere to go, they give up."""
        gone = "" if name == SCHEDULER_CHANNELS else f"channel {name!r} is no longer declared in vigil.toml"
        targets = tuple(c for c in settings.notify if c != name)
        if not targets:
            error = gone or "vigil.toml was unreadable when it was queued, and [scheduler] notify names no channel"
            log.warning("%s: %d events given up", error, len(rows))
            return [i.NotificationFailed(r.event_id, name, now, r.attempts, error) for r in rows]
        handed = f"handed on to [scheduler] notify: {', '.join(targets)}"
        error = f"{gone}: {handed}" if gone else handed
        log.warning("%s (%d events)", error, len(rows))
        marks: list[i.Intent] = []
        for r in rows:
            marks.append(i.NotificationQueued(Event.from_json(r.document), targets))
            marks.append(i.NotificationFailed(r.event_id, name, now, r.attempts, error))
        return marks

    def _held(self, rows: Sequence[Notification], down: Down, now: datetime) -> list[i.Intent]:
        until, error = down
        return [i.NotificationRetry(r.event_id, r.channel, now, r.attempts, until, f"waiting: {error}") for r in rows]

    def _unsent(self, name: str, entries: Sequence[_Queued]) -> None:
        """Admitted rows that were never sent: their slots are given back at the next round."""
        self._unused.setdefault(name, []).extend(e.window_start for e in entries if e.window_start is not None)

    def _return_unused(self) -> None:
        for name, starts in self._unused.items():
            window = self._windows.get(name)
            if window is not None:  # only the slots of the window still open
                window.delivered = max(0, window.delivered - sum(1 for start in starts if start == window.start))
        self._unused.clear()

    async def _send_all(self, name: str, spec: ChannelSpec) -> None:
        """One channel's queue, in order (each round adds to it); when a send fails and may succeed
        later, the rest wait behind it; when a row gives up, the next one goes on."""
        queue = self._queues[name]
        try:
            while queue and not self._stopped:
                row = queue[0].row
                try:
                    down = await self._send_one(spec, row)
                except StoreError:
                    raise
                except Exception as exc:  # this row cannot be sent (a document this version cannot read)
                    log.exception("channel %s: cannot send %s; giving up on it", name, row.event_id)
                    error = f"internal error: {exc!r}"
                    await self._commit(
                        [i.NotificationFailed(row.event_id, name, self.clock.now(), row.attempts, error)]
                    )
                    down = None
                queue.popleft()
                self._inflight.discard((row.event_id, name))
                if down is not None and queue:
                    rest = list(queue)
                    queue.clear()
                    self._unsent(name, rest)
                    try:
                        await self._commit(self._held([e.row for e in rest], down, self.clock.now()))
                    finally:
                        self._inflight.difference_update((e.row.event_id, name) for e in rest)
        except FencedError:
            self.fenced = True
            log.error("deposed: the notification deliverer stops without marking anything more")
            self._stopped = True
            self._wake.set()
        except StoreError as exc:
            log.warning("channel %s: could not record a delivery (it will be sent again): %s", name, exc)
        finally:
            self._unsent(name, queue)
            self._inflight.difference_update((e.row.event_id, name) for e in queue)
            queue.clear()  # what is left stays pending in the store: a later round reads it again
            self._busy.pop(name, None)
            self._wake.set()

    async def _send_one(self, spec: ChannelSpec, row: Notification) -> Down | None:
        """Send one row and record the outcome; the channel's down state when the send failed and may
        succeed later (the rest of its queue waits), else None."""
        channel = self._channel(spec)
        doc = document(row.document, epoch=row.epoch, log_tail=await self.log_tail(row))
        attempts = row.attempts + 1
        try:
            async with self._sends:
                await channel.send(doc)
        except DeliveryError as exc:
            return await self._failed(row, attempts, str(exc), permanent=exc.permanent)
        except Exception as exc:  # a channel's bug must not stop the deliverer
            log.exception("channel %s: send failed unexpectedly", row.channel)
            return await self._failed(row, attempts, f"internal error: {exc!r}", permanent=False)
        self._down.pop(row.channel, None)
        await self._commit([i.NotificationSent(row.event_id, row.channel, self.clock.now(), attempts)])
        return None

    async def _failed(self, row: Notification, attempts: int, error: str, *, permanent: bool) -> Down | None:
        now = self.clock.now()
        next_at = now + timedelta(seconds=self.policy.delay(attempts))
        too_old = (next_at - row.created_at).total_seconds() > self.policy.give_up_after
        if permanent or too_old:
            log.error("channel %s: gave up on %s after %d attempts: %s", row.channel, row.event_id, attempts, error)
            await self._commit([i.NotificationFailed(row.event_id, row.channel, now, attempts, error)])
            return None
        down = self._down[row.channel] = (next_at, error)
        log.warning("channel %s: %s (attempt %d; next at %s)", row.channel, error, attempts, next_at.isoformat())
        await self._commit([i.NotificationRetry(row.event_id, row.channel, now, attempts, next_at, error)])
        return down

    def _channel(self, spec: ChannelSpec) -> Channel:
        known = self._channels.get(spec.name)
        if known is None or known[0] != spec:  # new, or its definition changed in vigil.toml
            known = (spec, self.channel_factory(spec))
            self._channels[spec.name] = known
        return known[1]

    async def _commit(self, intents: list[i.Intent]) -> None:
        await self.store.commit(intents)  # its observers (the metrics) count the outcomes
