"""engine/linux.py and the job folder's watch: the kernel's word on files and clock steps (Linux)."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path

import pytest

from engine.config import watch as folder_watch
from engine.linux import ClockSetWatch, FileWatch, wait_readable


def is_readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.mark.parametrize("how", ["removed", "replaced", "emptied", "created"])
def test_a_file_watch_is_readable_when_the_path_may_name_another_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "vigil.db"
    path.write_bytes(b"x" * 100)
    watch = FileWatch.open(path, written=True)
    assert watch is not None
    (tmp_path / "unrelated").mkdir()  # names change in the folder: a reason to look, no more
    watch.drain()
    assert not is_readable(watch.fd)
    if how == "removed":
        path.unlink()
    elif how == "replaced":
        (tmp_path / "copy").write_bytes(b"y")
        os.replace(tmp_path / "copy", path)
    elif how == "emptied":
        os.truncate(path, 0)
    else:
        path.unlink()
        watch.drain()
        path.write_bytes(b"new")
    assert is_readable(watch.fd)
    watch.drain()
    assert not is_readable(watch.fd)
    watch.close()


def test_a_file_watch_without_writes_ignores_the_content(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    path.write_bytes(b"")
    watch = FileWatch.open(path)
    assert watch is not None
    path.write_bytes(b"written")
    assert not is_readable(watch.fd)
    watch.close()


async def test_wait_readable_returns_on_the_fd_on_another_future_or_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    path.write_bytes(b"")
    watch = FileWatch.open(path)
    assert watch is not None
    assert not await wait_readable(watch.fd, 0.05)
    other: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, other.set_result, None)
    assert not await asyncio.wait_for(wait_readable(watch.fd, 5.0, other), 1.0)
    path.unlink()
    assert await asyncio.wait_for(wait_readable(watch.fd, 5.0), 1.0)
    # The same fd is watched again at once (the reader of the last call is gone, not pending).
    watch.drain()
    asyncio.get_running_loop().call_later(0.05, path.write_bytes, b"")
    assert await asyncio.wait_for(wait_readable(watch.fd, 5.0), 1.0)
    watch.close()


def test_a_clock_set_watch_is_quiet_while_the_clock_is_not_set() -> None:
    watch = ClockSetWatch.open()
    assert watch is not None, "timerfd with TFD_TIMER_CANCEL_ON_SET is available on Linux"
    assert not is_readable(watch.fd)
    assert watch.rearm()
    assert not is_readable(watch.fd)
    watch.close()


def test_the_folder_watch_counts_passwd_but_not_the_rest_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc, jobs = tmp_path / "etc", tmp_path / "jobs"
    etc.mkdir()
    jobs.mkdir()
    monkeypatch.setattr(folder_watch, "PASSWD", str(etc / "passwd"))
    watch = folder_watch.DirWatch.open()
    assert watch is not None
    assert watch.add(str(jobs))
    (etc / "hostname").write_text("other\n")
    assert not watch.changed()
    (etc / "passwd+").write_text("backup:x:34:34::/var/backups:/usr/sbin/nologin\n")
    os.replace(etc / "passwd+", etc / "passwd")  # how useradd writes it
    assert watch.changed()
    (jobs / "a.toml").write_text('command = "true"\n')
    assert watch.changed()
    assert not watch.changed()
