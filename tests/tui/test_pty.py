"""The real `vigil monitor` in a pseudo-terminal, against a live `vigil up`, as an operator sees it."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.helpers import write_job

ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def _read(fd: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_vigil_monitor_in_a_pty_shows_a_job_changing_state(start_up, state_dir: Path, jobs_dir: Path) -> None:
    # Runs 1.2 s of every 2 s: two 1-second refreshes per period cannot both miss it running.
    write_job(jobs_dir, "pty/blink", 'every = "2s"\ncommand = "sleep 1.2"\n')
    up = start_up()
    up.wait_active()
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    env.pop("COLORTERM", None)  # as over SSH: 256 colours
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "monitor", "--state", str(state_dir), "--jobs", str(jobs_dir)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        events: list[tuple[int, str]] = []  # (position in the stream, what appeared)
        while time.monotonic() < deadline:
            seen += _read(master, 0.2)
            text = ANSI.sub(b"", seen).decode("utf-8", "replace")
            if "pty/blink" not in text:
                continue
            events = sorted(
                (m.start(), m.group(0)) for m in re.finditer(r"● RUN|✓ OK", text[text.index("pty/blink") :])
            )
            kinds = [kind for _, kind in events]
            # A change on screen: the job shown running and then a result, or a result and then running.
            if "● RUN" in kinds and "✓ OK" in kinds and kinds[0] != kinds[-1]:
                break
        else:
            raise AssertionError(f"no state change seen; screen stream tail:\n{ANSI.sub(b'', seen)[-3000:]!r}")
        assert "● ACTIVE pid" in text
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
