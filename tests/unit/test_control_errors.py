"""A refusal's kind crosses the control socket: the server picks it from the exception class, and
ControlClient raises that class again (so the CLI can tell "not found" from other refusals)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.control import (
    ERROR_KINDS,
    RAISED_AS,
    ControlClient,
    ErrorKind,
    error_reply,
    kind_of,
    refusal,
    refused_error,
    socket_address,
)
from engine.errors import (
    ControlError,
    FencedError,
    NoActiveSchedulerError,
    NotFoundError,
    SchedulerStoppingError,
    StoreRetryableError,
    UnwritableError,
    VigilError,
)
from engine.paths import StatePaths


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_comes_back_as_its_class_and_its_class_goes_out_as_it(kind: ErrorKind) -> None:
    assert kind in ERROR_KINDS
    error = refused_error(error_reply("the reason", kind))
    assert type(error) is RAISED_AS[kind] and str(error) == "the reason"
    assert kind_of(error) == kind
    assert refusal(error) == {"ok": False, "error": "the reason", "kind": str(kind)}


def test_the_kind_of_an_exception_is_its_most_specific_family() -> None:
    assert kind_of(NotFoundError("no job named 'x'")) == ErrorKind.NOT_FOUND
    assert kind_of(StoreRetryableError("disk full", "state database: disk full")) == ErrorKind.UNWRITABLE
    assert kind_of(SchedulerStoppingError("stopping")) == ErrorKind.STOPPING
    for other in (VigilError("unknown command 'x'"), FencedError("deposed"), NoActiveSchedulerError("/s")):
        assert kind_of(other) == ErrorKind.REFUSED


@pytest.mark.parametrize(
    "reply",
    [
        {"ok": False, "error": "refused by an older scheduler"},  # no kind: a plain refusal
        {"ok": False, "error": "from a newer one", "kind": "a_kind_not_known_here"},
        {"ok": False, "error": "hand-made", "kind": ["not_found"]},  # not even text
    ],
)
def test_a_missing_or_unknown_kind_is_a_plain_control_error(reply: dict[str, Any]) -> None:
    error = refused_error(reply)
    assert type(error) is ControlError and str(error) == reply["error"]


@pytest.fixture
def answering(tmp_path: Path) -> Iterator[tuple[StatePaths, list[dict[str, Any]]]]:
    """A Unix socket at STATE/control.sock that answers each request with the next queued reply."""
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    replies: list[dict[str, Any]] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_address(paths.control))  # the client's own way round long paths
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.makefile("rb").readline()
                conn.sendall(json.dumps(replies.pop(0)).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield paths, replies
    finally:
        server.close()
        thread.join(2)


def test_the_client_raises_the_kind_of_a_real_reply(answering: tuple[StatePaths, list[dict[str, Any]]]) -> None:
    paths, replies = answering
    client = ControlClient(paths, timeout=5)
    replies.append(error_reply("no job named 'x'", ErrorKind.NOT_FOUND))
    with pytest.raises(NotFoundError, match="no job named 'x'"):
        client.request("run", job="x")
    replies.append(error_reply("state database: disk full; try again when it is writable", ErrorKind.UNWRITABLE))
    with pytest.raises(UnwritableError, match="try again when it is writable"):
        client.request("pause", job="x")
    replies.append({"ok": True, "run_id": 7})
    assert client.request("run", job="x") == {"ok": True, "run_id": 7}
