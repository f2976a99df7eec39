"""Delivering the outbox through real channels: an SMTP server (aiosmtpd) for `mailto://`, an HTTP
receiver for `json://`, a command writing to a file; real `vigil up` processes for the end-to-end
and failover cases, the real SQLite ledger with an injected clock for backoff and the rate limit."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from engine.clock import FakeClock
from engine.errors import DeliveryError, FencedError
from engine.model import ChannelSpec, NotificationState, Settings
from engine.notify.events import Event, EventKind, document, run_event_id
from engine.outbox.channels import AppriseChannel
from engine.outbox.deliverer import Deliverer
from engine.paths import StatePaths
from engine.run.loop import Scheduler
from engine.store import intents as i
from engine.store.abc import LeaderClaim
from engine.store.sqlite.ledger import Ledger
from engine.store.sqlite.reader import SqliteReader
from tests.helpers import vigil, vigil_json, wait_for, write_job

FAST_HA = "[scheduler]\nheartbeat_interval = '100ms'\nheartbeat_timeout = '1s'\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.port = free_port()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def url(self) -> str:
        # Apprise's mailto:// to a plain SMTP server: host:port, sender and recipient, no TLS.
        return f"mailto://127.0.0.1:{self.port}?from=vigil@example.net&to=ops@example.net&mode=insecure"


class JsonReceiver:
    """An HTTP server recording each POSTed JSON body with its arrival time."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bodies: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.arrivals.append(time.time())
                receiver.bodies.append(json.loads(data))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server: ThreadingHTTPServer | None = None
        self.handler = Handler

    def start(self) -> JsonReceiver:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/events"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture
def receiver() -> Iterator[JsonReceiver]:
    server = JsonReceiver().start()
    yield server
    server.stop()


def outbox(state: Path) -> list[dict[str, Any]]:
    return vigil_json(state, "notifications", "--limit", "1000")


def test_a_failed_run_is_mailed_posted_and_piped_exactly_once(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path, smtp: SmtpSink, receiver: JsonReceiver
) -> None:
    out = tmp_path / "events.jsonl"
    (jobs_dir / "vigil.toml").write_text(
        f'[notify.mail]\nurl = "{smtp.url()}"\n'
        f'[notify.hook]\nurl = "{receiver.url()}"\n'
        f"[notify.file]\ncommand = \"cat >> '{out}'\"\n"
    )
    write_job(
        jobs_dir, "etl/load", 'command = "echo loading; echo boom >&2; exit 3"\nnotify = ["mail", "hook", "file"]\n'
    )
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "etl/load")
    rows = wait_for(
        lambda: (
            [r for r in outbox(state_dir) if r["state"] == "sent"]
            if len([r for r in outbox(state_dir) if r["state"] == "sent"]) == 3
            else None
        ),
        15,
        what="three deliveries",
    )
    run_id = rows[0]["run_id"]
    assert {r["channel"] for r in rows} == {"mail", "hook", "file"}
    assert {r["event_id"] for r in rows} == {f"failed:run:{run_id}"} and {r["attempts"] for r in rows} == {1}
    time.sleep(0.5)  # nothing more arrives
    (mail,) = smtp.messages
    subject = str(make_header(decode_header(mail["Subject"])))
    assert subject == f"FAILED etl/load (run {run_id}, exit 3, attempt 1 of 1, final)"
    # Plain text, one line each (read as HTML, the lines ran into one).
    (plain,) = [part for part in mail.walk() if part.get_content_type() == "text/plain"]
    lines = plain.get_payload(decode=True).decode().splitlines()
    assert "loading" in lines and "boom" in lines
    assert not [part for part in mail.walk() if part.get_content_type() == "text/html"]
    (posted,) = receiver.bodies
    assert posted["title"] == subject and f"id failed:run:{run_id}" in posted["message"]
    assert "boom" in posted["message"]  # the log tail
    (line,) = out.read_text().splitlines()
    doc = json.loads(line)
    assert (doc["id"], doc["event"], doc["job"], doc["run_id"], doc["exit_code"]) == (
        f"failed:run:{run_id}",
        "failed",
        "etl/load",
        run_id,
        3,
    )
    assert doc["final"] is True and doc["epoch"] >= 1 and doc["log_tail"] == ["loading", "boom"]


async def test_a_burst_of_mails_is_not_paced_five_seconds_apart(smtp: SmtpSink) -> None:
    channel = AppriseChannel(ChannelSpec(name="mail", url=smtp.url(), timeout=5.0))
    started = time.monotonic()
    for run_id in (1, 2, 3):
        await channel.send(document(failed(run_id).to_json(), epoch=1))
    # Apprise's own pacing of one service object is 5.5 s by default: three mails would take 11 s.
    assert time.monotonic() - started < 5.0
    assert len(smtp.messages) == 3


# ---------------------------------------------------------------- the deliverer on the real ledger


BASE = datetime.now(UTC)  #: the clocks below start here: an event queued a day ago would be given up on


def failed(run_id: int, job: str = "etl/load") -> Event:
    at = BASE + timedelta(milliseconds=run_id)
    return Event(id=run_event_id(EventKind.FAILED, run_id), event=EventKind.FAILED, at=at, job=job, run_id=run_id)


async def leading_ledger(state: Path, pid: int) -> Ledger:
    ledger = Ledger(StatePaths(state))
    await ledger.open()
    await ledger.take_leadership(LeaderClaim(pid, None, datetime.now(UTC)))
    return ledger


def rows_of(state: Path) -> dict[tuple[str, str], Any]:
    reader = SqliteReader(StatePaths(state))
    try:
        return {(n.event_id, n.channel): n for n in reader.notifications(limit=1000)}
    finally:
        reader.close()


async def test_a_channel_that_is_down_keeps_its_events_and_delivers_them_when_it_is_back(tmp_path: Path) -> None:
    ledger = await leading_ledger(tmp_path / "state", os.getpid())
    down = JsonReceiver()  # not listening yet
    clock = FakeClock(datetime.now(UTC))
    settings = Settings(channels={"hook": ChannelSpec(name="hook", url=down.url(), timeout=5)})
    deliverer = Deliverer(ledger, lambda: settings, clock)
    try:
        await ledger.commit([i.NotificationQueued(failed(n), ("hook",)) for n in (1, 2)])
        await deliverer.deliver_due()
        await deliverer.wait_idle()
        rows = rows_of(tmp_path / "state")
        first = rows[("failed:run:1", "hook")]
        assert first.state is NotificationState.PENDING and first.attempts == 1
        assert "Connection error" in (first.last_error or "")
        down.start()
        clock.advance(5)
        await deliverer.deliver_due()
        await deliverer.wait_idle()
        assert [b["message"].splitlines()[-1].rsplit("id ", 1)[1] for b in down.bodies] == [
            "failed:run:1",
            "failed:run:2",
        ]
        assert {r.state for r in rows_of(tmp_path / "state").values()} == {NotificationState.SENT}
    finally:
        down.stop()
        await deliverer.stop()
        await ledger.close()


async def test_apprise_says_why_a_send_failed_in_the_row_and_nothing_per_send_in_vigils_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # as `vigil up` logs
    channel = AppriseChannel(ChannelSpec(name="hook", url=JsonReceiver().url(), timeout=5))  # nobody listening
    with pytest.raises(DeliveryError, match="Connection error"):  # Apprise's warning, kept as the reason
        await channel.send(document(failed(1).to_json(), epoch=1, log_tail=[]))
    # Not "Notifying 1 service(s)." nor the warning again on every send.
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("apprise")] == []


async def test_a_storm_reaches_the_receiver_as_the_limit_and_one_summary(
    tmp_path: Path, receiver: JsonReceiver
) -> None:
    ledger = await leading_ledger(tmp_path / "state", os.getpid())
    clock = FakeClock(datetime.now(UTC))
    spec = ChannelSpec(name="hook", url=receiver.url(), rate_limit=5, rate_window=300)
    deliverer = Deliverer(ledger, lambda: Settings(channels={"hook": spec}), clock)
    try:
        for first in range(1, 41, 10):  # 40 failures arriving in four bursts
            await ledger.commit(
                [i.NotificationQueued(failed(n, f"etl/j{n}"), ("hook",)) for n in range(first, first + 10)]
            )
            await deliverer.deliver_due()
            await deliverer.wait_idle()
        assert len(receiver.bodies) == 5
        states = [r.state for r in rows_of(tmp_path / "state").values()]
        assert states.count(NotificationState.SUPPRESSED) == 35
        clock.advance(300)
        await deliverer.deliver_due()
        await deliverer.wait_idle()
        assert len(receiver.bodies) == 6
        summary = receiver.bodies[-1]
        assert summary["title"] == "SUMMARY: 35 more failures of etl/* in the last 5m"
    finally:
        await deliverer.stop()
        await ledger.close()


async def test_a_fenced_deliverer_marks_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "out"
    old = await leading_ledger(state, os.getpid())
    spec = ChannelSpec(name="file", command=f"cat >> '{out}'")
    deliverer = Deliverer(old, lambda: Settings(channels={"file": spec}), FakeClock(datetime.now(UTC)))
    await old.commit([i.NotificationQueued(failed(1), ("file",))])
    new = await leading_ledger(state, os.getpid() + 1)  # another node takes over
    try:
        await deliverer.deliver_due()
        with pytest.raises(FencedError):
            await deliverer.wait_idle()
        assert rows_of(state)[("failed:run:1", "file")].state is NotificationState.PENDING
        assert rows_of(state)[("failed:run:1", "file")].attempts == 0
    finally:
        await deliverer.stop()
        await old.close()
        await new.close()


class LedgerWithABugOnce(Ledger):
    """Its first outbox read fails as a bug would (not a store fault)."""

    bugs = 1

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Any]:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug while reading the outbox")
        return await super().due_notifications(now, limit)


async def test_the_scheduler_replaces_a_deliverer_that_failed_unexpectedly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, out = StatePaths(tmp_path / "state"), tmp_path / "out"
    (tmp_path / "jobs").mkdir()
    scheduler = Scheduler(paths, tmp_path / "jobs", store=LedgerWithABugOnce(paths))
    scheduler.deliverer_restart_delay = 0.05
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    scheduler.planner.settings = Settings(channels={"file": ChannelSpec(name="file", command=f"cat >> '{out}'")})
    await scheduler.store.commit([i.NotificationQueued(failed(1), ("file",))])
    delivering = asyncio.create_task(scheduler._deliver())
    try:
        for _ in range(200):  # 10 s at most
            if out.exists() and out.read_text().endswith("\n"):
                break
            await asyncio.sleep(0.05)
        assert json.loads(out.read_text())["id"] == "failed:run:1"  # delivered by the deliverer that replaced it
        assert "the notification deliverer failed; starting a new one in 0.05s" in caplog.text
        assert "RuntimeError: a bug while reading the outbox" in caplog.text  # with its traceback
    finally:
        scheduler.request_stop()
        if scheduler.deliverer is not None:
            await scheduler.deliverer.stop()
        await asyncio.wait_for(delivering, 10)
        await scheduler.store.close()


# ---------------------------------------------------------------- failover


def test_the_active_killed_mid_delivery_and_the_standby_delivers_the_same_event(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate, out, pids = tmp_path / "gate", tmp_path / "out", tmp_path / "notifier.pids"
    # The notifier holds the delivery until the gate exists, so the active can be killed mid-delivery.
    script = (
        f"echo $$ >> '{pids}'; doc=$(cat); while [ ! -e '{gate}' ]; do sleep 0.05; done; "
        f"printf '%s\\n' \"$doc\" >> '{out}'"
    )
    (jobs_dir / "vigil.toml").write_text(
        FAST_HA
        + "notify = ['file']\n"
        + f"[notify.file]\ncommand = {json.dumps(script)}\ntimeout = '60s'\nevents = ['failed']\n"
    )
    write_job(jobs_dir, "fail", 'command = "exit 4"\n')
    first = start_up()
    first.wait_active()
    second = start_up()
    wait_for(lambda: "standby" in second.output(), 10, what="a standby")
    vigil(state_dir, "run", "fail")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 15, what="the first delivery to start")
    first.kill9()
    # The crash interrupted that delivery: its notifier dies with it (as a killed machine's would).
    os.killpg(int(pids.read_text().split()[0]), signal.SIGKILL)
    wait_for(lambda: len(pids.read_text().split()) >= 2, 15, what="the new active to deliver again")
    gate.touch()
    row = wait_for(lambda: [r for r in outbox(state_dir) if r["state"] == "sent"], 10, what="the row marked sent")[0]
    (line,) = out.read_text().splitlines()
    doc = json.loads(line)
    assert doc["id"] == row["event_id"] and doc["id"].startswith("failed:run:")
    assert row["attempts"] == 1  # the first attempt was never recorded: the new active's is the first


# ---------------------------------------------------------------- a broken channel config


def test_a_job_naming_a_broken_channel_still_runs_and_alerts_the_scheduler_channels(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    (jobs_dir / "vigil.toml").write_text(
        "[scheduler]\nnotify = ['file']\n"
        f"[notify.file]\ncommand = \"cat >> '{out}'\"\n"
        "[notify.ops]\ncommand = 'cat'\ntimeout = 0\n"  # one bad key: the channel is invalid
    )
    job = write_job(jobs_dir, "etl/load", 'command = "exit 3"\nnotify = ["ops"]\n')
    check = vigil(state_dir, "validate", jobs=jobs_dir, check=False)
    assert check.returncode == 1
    assert f"{job}:2: notify: channel 'ops' is declared in vigil.toml but its definition is invalid" in check.stdout
    assert "2 error(s); 1 valid job(s)" in check.stderr
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "etl/load")  # loaded: the operator can run it
    row = wait_for(lambda: [r for r in outbox(state_dir) if r["state"] == "sent"], 15, what="the fallback delivery")[0]
    assert row["channel"] == "file" and row["event"] == "failed"
    assert json.loads(out.read_text().splitlines()[0])["job"] == "etl/load"
    # The active's catalog row: loaded, with the error (what the dashboard shows as "error").
    reader = SqliteReader(StatePaths(state_dir))
    try:
        catalog = {r.name: r for r in reader.jobs()}
    finally:
        reader.close()
    assert catalog["etl/load"].loaded and "notify: channel 'ops'" in (catalog["etl/load"].error or "")
    (doc,) = vigil_json(state_dir, "jobs", jobs=jobs_dir)
    assert doc["status"] == "enabled" and "notify: channel 'ops'" in doc["error"]


async def test_a_url_apprise_does_not_accept_keeps_its_events_waiting_for_the_fix() -> None:
    channel = AppriseChannel(ChannelSpec(name="typo", url="mailtoo://ops@example.net"))
    with pytest.raises(DeliveryError) as refused:
        await channel.send(document(failed(1).to_json(), epoch=1))
    assert not refused.value.permanent and "does not accept this mailtoo:// URL" in str(refused.value)
