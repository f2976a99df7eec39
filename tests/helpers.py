"""Shared helpers for integration tests: real `vigil up` processes on temporary folders."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
VIGIL = [sys.executable, "-m", "engine.cli"]


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as exc:  # e.g. the state does not exist yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate} (last: {last!r})")


async def async_wait(predicate: Callable[[], T], within: float) -> T:
    """`wait_for` inside an event loop: poll `predicate` every 20 ms until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s")


def write_job(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def vigil(
    state: Path, *args: str, jobs: Path | None = None, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    cmd = [*VIGIL, *args, "--state", str(state)]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


def vigil_json(state: Path, *args: str, jobs: Path | None = None) -> Any:
    return json.loads(vigil(state, *args, "--json", jobs=jobs).stdout)


class Up:
    """A `vigil up` process: started in its own process group, always cleaned up."""

    def __init__(self, state: Path, jobs: Path, log: Path | None = None) -> None:
        self.state = state
        self.jobs = jobs
        self.log_path = log or state.parent / f"up-{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*VIGIL, "up", "--state", str(state), "--jobs", str(jobs)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text()

    def is_active(self) -> bool:
        status = vigil_json(self.state, "status")
        return bool(status["active"] and status["active"]["pid"] == self.pid)

    def wait_active(self, timeout: float = 10.0) -> None:
        wait_for(self.is_active, timeout, what=f"pid {self.pid} to become active\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()


def runs(state: Path, *args: str) -> list[dict[str, Any]]:
    return vigil_json(state, "runs", "--limit", "100000", *args)


def exit_recorded(run_dir: Path) -> bool:
    """The run's shim has written its end record (the file exists, reserved, from the launch on)."""
    try:
        return (run_dir / "exit").read_text().rstrip().endswith(" end")
    except OSError:
        return False


def control(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One raw request on the control socket, as any hand-made client could send it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed without answering {request}")
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply
