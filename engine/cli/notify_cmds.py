"""`vigil notify test CHANNEL` and `vigil notifications`: a channel tried from the CLI, and the outbox
listed. The listing imports only the reader (never Apprise); the test builds the channel itself."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, DeliveryError, VigilError
from engine.text import escape, quote

#: `vigil notifications --json`: each row's fields, in this order.
NOTIFICATION_FIELDS = (
    "event_id",
    "channel",
    "event",
    "job",
    "run_id",
    "state",
    "attempts",
    "last_error",
    "created_at",
    "last_attempt_at",
    "next_attempt_at",
    "sent_at",
    "summary_id",
)
NOTIFICATION_STATES = ("pending", "sent", "failed", "suppressed")


def cmd_notify_test(args: argparse.Namespace, jobs_dir: Path) -> int:
    from engine.config import SETTINGS_FILE, load_settings
    from engine.notify.events import Event, EventKind, document
    from engine.outbox.channels import build_channel

    settings, errors = load_settings(jobs_dir)
    spec = settings.channels.get(args.channel)
    if spec is None:
        own = [e for e in errors if e.key == f"notify.{args.channel}" or e.key.startswith(f"notify.{args.channel}.")]
        if own:
            raise VigilError(own[0].format())
        known = ", ".join(sorted(settings.channels)) or "none declared"
        raise VigilError(
            f"no channel {quote(args.channel)} in {jobs_dir / SETTINGS_FILE} (declare [notify.{args.channel}];"
            f" known: {known})"
        )
    now = datetime.now(UTC)
    event = Event(
        id=f"test:{spec.name}:{now.strftime('%Y%m%dT%H%M%S.%fZ')}",
        event=EventKind.TEST,
        at=now,
        message=f"a test notification from `vigil notify test` by {getpass.getuser()} on {socket.gethostname()}",
    )
    doc = document(event.to_json(), epoch=0)
    try:
        asyncio.run(build_channel(spec).send(doc))
    except DeliveryError as exc:
        raise VigilError(f"channel {spec.name}: not delivered: {exc}") from None
    print(f"delivered to {escape(spec.name)} (event id {event.id})")
    return 0


def url_errors(jobs_dir: Path, settings: Any) -> list[ConfigError]:
    """What Apprise says of each `url` channel (`vigil validate`; Apprise is imported only if one exists)."""
    from engine.config import SETTINGS_FILE
    from engine.outbox.channels import url_problem

    errors = []
    for name, spec in sorted(settings.channels.items()):
        if spec.url is not None and (problem := url_problem(spec)):
            errors.append(ConfigError(jobs_dir / SETTINGS_FILE, f"notify.{name}.url", problem))
    return errors


def cmd_notifications(args: argparse.Namespace, reader: Any) -> int:
    from engine.model import NotificationState, to_json

    if args.status is not None and args.status not in NOTIFICATION_STATES:
        raise VigilError(f"--status {quote(args.status)}: use one of {', '.join(NOTIFICATION_STATES)}")
    if not 0 < args.limit <= 100_000:
        raise VigilError(f"--limit {args.limit}: expected a whole number from 1 to 100000")
    state = NotificationState(args.status) if args.status else None
    rows = reader.notifications(state=state, channel=args.channel, limit=args.limit)
    docs = [to_json(row, NOTIFICATION_FIELDS) for row in rows]
    if args.json:
        sys.stdout.write(json.dumps(docs, indent=2) + "\n")
        return 0
    from engine.cli import _short_time, _table

    table = [
        [
            d["event_id"],
            d["channel"],
            d["event"],
            d["job"] or "-",
            "-" if d["run_id"] is None else str(d["run_id"]),
            d["state"],
            str(d["attempts"]),
            _short_time(d["created_at"]),
            _short_time(d["sent_at"]),
            (d["last_error"] or "")[:50],
        ]
        for d in docs
    ]
    print(_table(table, ["EVENT", "CHANNEL", "KIND", "JOB", "RUN", "STATE", "TRIES", "CREATED", "SENT", "LAST ERROR"]))
    return 0
