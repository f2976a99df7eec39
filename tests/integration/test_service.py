"""Running as a systemd service: the notify protocol as a unit sees it, on a socket the test owns.

Each `vigil up` / `vigil agent` gets NOTIFY_SOCKET (a path or an abstract `@name`) and a small
WATCHDOG_USEC, exactly as systemd passes them to a Type=notify unit; the test reads the datagrams.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import VIGIL, vigil_json, wait_for, write_job

WATCHDOG_USEC = 200_000  #: WatchdogSec=200ms: a ping every 100 ms


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Every message received so far (and keep them)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def wait_for(self, word: str, timeout: float = 10.0, after: int = 0) -> str:
        """The first message from index `after` on that holds the line `word`."""

        def found() -> str | None:
            return next((m for m in self.drain()[after:] if word in m.split("\n")), None)

        return wait_for(found, timeout, what=f"{word} on the notify socket (got {self.messages})")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_sockets(tmp_path: Path) -> Iterator[list[NotifySocket]]:
    made: list[NotifySocket] = []
    yield made
    for sock in made:
        sock.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(
    processes: list[subprocess.Popen[bytes]], argv: list[str], notify: NotifySocket, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([*VIGIL, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
    processes.append(proc)
    return proc


def pings(messages: list[str]) -> int:
    return sum(m == "WATCHDOG=1" for m in messages)


def test_active_and_standby_tell_systemd_when_ready_ping_and_stop(
    tmp_path: Path, state_dir: Path, jobs_dir: Path, notify_sockets: list[NotifySocket], processes: list
) -> None:
    out = tmp_path / "job-env"
    write_job(jobs_dir, "env", f'command = "env > {out}"\n')
    first_sock = NotifySocket(str(tmp_path / "notify-1"))
    second_sock = NotifySocket(f"@vigil-test-{os.getpid()}-{time.monotonic_ns()}")
    notify_sockets += [first_sock, second_sock]
    up = ["up", "--state", str(state_dir), "--jobs", str(jobs_dir)]

    first = start(processes, up, first_sock, tmp_path / "first.log")
    ready = first_sock.wait_for("READY=1")
    # READY comes once the node is active: the control socket already answers for it.
    assert ready == f"READY=1\nSTATUS=active (pid {first.pid}, epoch 1)"
    assert vigil_json(state_dir, "status")["active"]["pid"] == first.pid
    index = len(first_sock.drain())
    wait_for(lambda: pings(first_sock.drain()[index:]) >= 3, 5, what="three watchdog pings")

    second = start(processes, up, second_sock, tmp_path / "second.log")
    standby = second_sock.wait_for("READY=1")
    assert standby == f"READY=1\nSTATUS=standby (pid {second.pid}): waiting for the leader lock"
    index = len(second_sock.drain())
    wait_for(lambda: pings(second_sock.drain()[index:]) >= 3, 5, what="the standby's watchdog pings")

    # The job does not inherit systemd's variables (it could ping for a scheduler that is gone).
    vigil_json(state_dir, "status")
    subprocess.run([*VIGIL, "run", "env", "--state", str(state_dir)], check=True, capture_output=True)
    job_env = wait_for(lambda: out.exists() and out.read_text(), 10, what="the job's environment")
    assert "VIGIL_RUN_ID=" in job_env
    assert "NOTIFY_SOCKET" not in job_env and "WATCHDOG_USEC" not in job_env

    first.send_signal(signal.SIGTERM)
    assert first_sock.wait_for("STOPPING=1") == "STOPPING=1\nSTATUS=stopping"
    assert first.wait(10) == 0
    # The standby's role changes: a STATUS= line, no second READY=1.
    second_sock.wait_for(f"STATUS=active (pid {second.pid}, epoch 2)")
    assert sum("READY=1" in m.split("\n") for m in second_sock.drain()) == 1


def test_a_stopped_event_loop_stops_the_watchdog_pings(
    tmp_path: Path, state_dir: Path, jobs_dir: Path, notify_sockets: list[NotifySocket], processes: list
) -> None:
    sock = NotifySocket(str(tmp_path / "notify"))
    notify_sockets.append(sock)
    proc = start(processes, ["up", "--state", str(state_dir), "--jobs", str(jobs_dir)], sock, tmp_path / "up.log")
    sock.wait_for("READY=1")
    os.kill(proc.pid, signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(") ", 1)[1].startswith("T"), 5)
    before = len(sock.drain())  # anything sent before the stop took effect
    time.sleep(0.6)  # six ping intervals, three times WatchdogSec: systemd would act here
    assert pings(sock.drain()[before:]) == 0
    os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: pings(sock.drain()[before:]) >= 2, 5, what="pings after SIGCONT")


def test_the_agent_is_ready_once_it_listens_and_says_when_it_stops(
    tmp_path: Path, notify_sockets: list[NotifySocket], processes: list
) -> None:
    sock = NotifySocket(str(tmp_path / "notify"))
    notify_sockets.append(sock)
    agent_state = tmp_path / "agent"
    proc = start(
        processes, ["agent", "--listen", "127.0.0.1:0", "--state", str(agent_state)], sock, tmp_path / "agent.log"
    )
    ready = sock.wait_for("READY=1")
    address = (agent_state / "agent.addr").read_text().strip()  # written before READY=1
    assert ready == f"READY=1\nSTATUS=listening on {address}"
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2):
        pass  # it really listens
    index = len(sock.drain())
    wait_for(lambda: pings(sock.drain()[index:]) >= 3, 5, what="the agent's watchdog pings")
    proc.send_signal(signal.SIGTERM)
    assert sock.wait_for("STOPPING=1") == "STOPPING=1\nSTATUS=stopping"
    # uvicorn re-raises the SIGTERM it caught once it has shut down; systemd counts that as a clean stop.
    assert proc.wait(10) in (0, -signal.SIGTERM)
