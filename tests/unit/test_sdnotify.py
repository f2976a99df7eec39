"""engine.sdnotify: what a systemd unit receives, on a real datagram socket, without systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.sdnotify import Notifier, socket_address, watchdog_interval


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, without blocking."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_environment_is_read_once_and_taken_away_from_jobs() -> None:
    env = {"NOTIFY_SOCKET": "@vigil-test", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42", "HOME": "/root"}
    notifier = Notifier.from_environ(env, pid=42)
    assert notifier.address == "\0vigil-test"
    assert notifier.watchdog == 1.0  # half of WatchdogSec
    assert env == {"HOME": "/root"}  # a job started later inherits none of them


def test_a_watchdog_meant_for_another_process_or_without_a_socket_is_ignored() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, pid=8) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=8) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, pid=8) is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "1000000"}, pid=8).watchdog is None
    assert socket_address("relative/path") is None and socket_address("@") is None


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.ready("active")
    notifier.stopping()
    assert notifier.send("READY=1") is False


def test_ready_is_sent_once_then_status_lines(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier(path)
    notifier.ready("standby (pid 1)")
    notifier.ready("active (pid 1, epoch 2)")
    notifier.stopping()
    notifier.stopping()
    assert received(sock) == [
        "READY=1\nSTATUS=standby (pid 1)",
        "STATUS=active (pid 1, epoch 2)",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_a_socket_that_is_gone_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.send("READY=1") is False
    assert notifier.send("READY=1") is False
    assert [r.getMessage() for r in caplog.records if "cannot notify" in r.getMessage()] == [
        f"cannot notify systemd on {tmp_path / 'nobody-listens'}: No such file or directory"
    ]  # once, not at every ping


async def test_watchdog_pings_stop_while_the_event_loop_is_blocked(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier(path, watchdog=0.02)
    pings = asyncio.create_task(notifier.watchdog_pings())
    await asyncio.sleep(0.15)
    assert received(sock).count("WATCHDOG=1") >= 3
    time.sleep(0.3)  # noqa: ASYNC251 -- the point: a coroutine that blocks the loop, 15 intervals without a ping
    blocked = received(sock)
    await asyncio.sleep(0.1)
    pings.cancel()
    assert blocked == []
    assert received(sock).count("WATCHDOG=1") >= 2  # the loop runs again: so do the pings


async def test_no_watchdog_asked_for_means_no_pings(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    await asyncio.wait_for(Notifier(path, watchdog=None).watchdog_pings(), 1.0)  # returns at once
    assert received(sock) == []


def test_an_abstract_socket_address_is_reached() -> None:
    name = f"vigil-sdnotify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready("active")
        sock.settimeout(2.0)
        assert sock.recv(4096) == b"READY=1\nSTATUS=active"
