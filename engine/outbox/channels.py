"""The channels an event is delivered through: an Apprise URL, or a command that reads the event
as one JSON document on stdin.

A channel's `send` returns when the channel took the event, or raises DeliveryError (`permanent`
when retrying cannot help). A command runs in its own session (its own process group, like a job's
shim) and the whole group is killed at the channel's timeout, and after the command exits, so a
notifier cannot leave processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any, Protocol

from engine.errors import DeliveryError
from engine.model import ChannelSpec
from engine.notify import message

#: Bytes of a failing command's stderr kept as the row's error.
ERROR_TAIL_BYTES = 500


class Channel(Protocol):
    name: str

    async def send(self, doc: Mapping[str, Any]) -> None: ...


class CommandChannel:
    """`command = ...`: the event as one JSON document on stdin; exit 0 means delivered."""

    def __init__(self, spec: ChannelSpec) -> None:
        assert spec.command is not None
        self.name = spec.name
        self.argv = ("/bin/sh", "-c", spec.command) if isinstance(spec.command, str) else spec.command
        self.timeout = spec.timeout

    async def send(self, doc: Mapping[str, Any]) -> None:
        data = (json.dumps(doc, sort_keys=True) + "\n").encode()
        env = {
            **os.environ,
            "VIGIL_CHANNEL": self.name,
            "VIGIL_EVENT": str(doc.get("event")),
            "VIGIL_EVENT_ID": str(doc.get("id")),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise DeliveryError(f"could not start {self.argv[0]}: {exc.strerror or exc}") from None
        try:
            _out, err = await asyncio.wait_for(proc.communicate(data), self.timeout)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            raise DeliveryError(f"timed out after {self.timeout:g}s (its process group was killed)") from None
        finally:
            _kill_group(proc.pid)  # whatever it left running in its group
        code = proc.returncode
        if code != 0:
            how = f"exit {code}" if code is None or code >= 0 else f"killed by signal {-code}"
            tail = err[-ERROR_TAIL_BYTES:].decode("utf-8", "replace").strip()
            raise DeliveryError(f"{how}: {tail}" if tail else how)


def _kill_group(pgid: int) -> None:
    # The group leader is our child, not yet reaped or just reaped by us: the pgid is still ours.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


#: At most this many seconds between two requests of one Apprise channel (see AppriseChannel).
MAX_REQUEST_SPACING_S = 1.0


class _ErrorsToVigilLog(logging.Handler):
    """Apprise's ERROR lines, into vigil's log (as `vigil.outbox.apprise`)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("vigil.outbox.apprise").handle(record)


def _quiet_apprise() -> None:
    """Keep Apprise's per-send INFO and WARNING lines ("Notifying 1 service(s)") out of vigil's log.

    Not by raising the `apprise` logger to ERROR: Apprise captures a call's WARNING records through
    a handler on that logger, and they are the failed row's error ("A Connection error occurred ...").
    So the logger stays at WARNING, does not propagate, and hands only ERROR and above on."""
    apprise_log = logging.getLogger("apprise")
    if not any(isinstance(h, _ErrorsToVigilLog) for h in apprise_log.handlers):
        apprise_log.addHandler(_ErrorsToVigilLog())
    apprise_log.setLevel(logging.WARNING)
    apprise_log.propagate = False


class AppriseChannel:
    """`url = ...`: any Apprise URL; a readable title and body made from the event (engine/notify/message)."""

    def __init__(self, spec: ChannelSpec) -> None:
        import apprise  # only here: the scheduler with a url channel, or `vigil notify test`

        _quiet_apprise()
        assert spec.url is not None
        self.name = spec.name
        self.timeout = spec.timeout
        self._apprise = apprise.Apprise()
        self.accepted = bool(self._apprise.add(spec.url))
        self._schema = spec.url.split("://", 1)[0]
        self._text = apprise.NotifyFormat.TEXT  # the body is plain lines: mail must not read it as HTML
        for service in self._apprise:
            # Apprise paces one service object's requests (5.5 s apart unless the service says
            # otherwise) and the scheduler keeps one object per channel: 20 mails would take 110 s.
            # One second apart is still polite; a storm is summarised by the channel's rate limit.
            service.request_rate_per_sec = min(service.request_rate_per_sec, MAX_REQUEST_SPACING_S)

    async def send(self, doc: Mapping[str, Any]) -> None:
        if not self.accepted:
            raise DeliveryError(
                # Not permanent: the events wait (with backoff, up to the give-up) for the URL to be fixed.
                f"Apprise does not accept this {self._schema}:// URL (see its wiki for the URL form; "
                "`vigil validate` checks it)"
            )
        # Apprise is synchronous: a thread, bounded by the channel's timeout (given to Apprise too).
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(self._notify, message.title(doc), message.body(doc), message.severity(doc)),
                self.timeout + 5,
            )
        except TimeoutError:
            raise DeliveryError(f"timed out after {self.timeout:g}s") from None
        if result is not None:
            raise DeliveryError(result)

    def _notify(self, title: str, body: str, severity: str) -> str | None:
        """None when delivered, else Apprise's last warning or error."""
        result = self._apprise.notify(
            body=body, title=title, notify_type=severity, body_format=self._text, timeout=self.timeout
        )
        if result:
            return None
        problems = [entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")]
        return (problems[-1] if problems else f"Apprise reported {result.status.name.lower()}")[:ERROR_TAIL_BYTES]


def build_channel(spec: ChannelSpec) -> Channel:
    if spec.url is not None:
        return AppriseChannel(spec)
    return CommandChannel(spec)


def url_problem(spec: ChannelSpec) -> str | None:
    """Why Apprise refuses the channel's URL (for `vigil validate`), or None."""
    if spec.url is None:
        return None
    channel = AppriseChannel(spec)
    return None if channel.accepted else f"Apprise does not accept this {channel._schema}:// URL"
