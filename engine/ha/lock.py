"""The leader lock: an exclusive flock on `leader.lock` (never a database file) elects the active.

A node holding it is active; the others block on it in a thread, so a crash is replaced as soon as
the kernel releases the dead process's lock. Only a lock on the file the path names counts: a
removed or replaced `leader.lock` is locked again by the active, and waiters follow it.

Layer: ha. Imports only the base modules (errors, linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path

from engine.errors import VigilError
from engine.linux import FileWatch, wait_readable, watching

FileKey = tuple[int, int]  #: (st_dev, st_ino): which file a path or an fd is


class LeaderLock:
    """The exclusive flock on the dedicated lock file (never a database file).

    Only a lock on the file the path names *now* counts: if `leader.lock` is removed or replaced,
    a lock on the old file is worthless, since a node opening the path locks another file. So an
    acquired lock is checked against the path and dropped if stale; a waiting node moves to the new
    file (after `relock_grace`, which gives the active the first chance); and the active re-locks
    the new file (`keep`) or, if another node holds it, stops.
    """

    poll = 0.2  #: how often a waiting node looks at the path (where inotify cannot tell it of changes)
    watched_poll = 5.0  #: how often it looks anyway when inotify reports the changes of names
    relock_grace = 1.0  #: a waiting node moves to a replaced file only after this (the active polls faster)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None  #: the open file holding the lock, when we hold it
        self.waiting_on: FileKey | None = None  #: the file a blocked acquire() waits on

    def _open(self) -> int:
        try:
            # O_CLOEXEC (Python's default) keeps the lock out of every child we spawn.
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise VigilError(f"cannot open lock file {self.path}: {exc.strerror or exc}") from exc

    def path_key(self) -> FileKey | None:
        try:
            st = os.stat(self.path)
        except OSError:  # missing, or the directory became unreadable: the path names no file we can lock
            return None
        return st.st_dev, st.st_ino

    def key(self) -> FileKey | None:
        """The file the election is about: the path's, or while the path is missing, the one we wait on."""
        return self.path_key() or self.waiting_on

    def _names(self, fd: int) -> bool:
        st = os.fstat(fd)
        return self.path_key() == (st.st_dev, st.st_ino)

    def _try_lock_path(self) -> int | None:
        """Open the path and take its lock without blocking; the fd if it is the current file's lock."""
        for _ in range(3):  # the path changing between open and flock: retry, but never spin
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if self._names(fd):
                return fd
            os.close(fd)  # we locked a removed or replaced file: worthless
        return None

    def try_acquire(self) -> bool:
        if self.fd is None:
            self.fd = self._try_lock_path()
        return self.fd is not None

    def keep(self) -> bool:
        """For the holder: make sure we hold the lock on the file the path names now.

        True if we still do, or re-locked a replaced (or re-created a removed) file; False when
        another process holds the current file: then that process is the active, not us.
        """
        if self.fd is None:
            return False
        if self._names(self.fd):
            return True
        fd = self._try_lock_path()
        if fd is None:
            return False
        # Hand the old file's lock to whoever waits on it: they will find it stale and move here.
        old, self.fd = self.fd, fd
        os.close(old)
        return True

    async def acquire(self) -> None:
        """Block (in a thread) until we hold the lock on the file the path names."""
        loop = asyncio.get_running_loop()
        first = True
        while self.fd is None:
            if not first:
                await asyncio.sleep(0.02)  # a path replaced over and over is no reason to spin
            first = False
            attempt = _LockAttempt(self._open(), loop)
            self.waiting_on = attempt.key
            try:
                await self._wait(attempt)
            except BaseException:
                fd = attempt.settle()
                if fd is not None:
                    os.close(fd)
                raise
            fd = attempt.settle()
            if attempt.error is not None:
                raise VigilError(f"cannot lock {self.path}: {attempt.error.strerror or attempt.error}")
            if fd is not None and self._names(fd):
                self.fd = fd
            elif fd is not None:
                os.close(fd)  # the previous holder's file, removed or replaced: move to the new one
            # else: abandoned for a replaced file; its thread closes the fd if the flock ever returns
        self.waiting_on = None

    async def _wait(self, attempt: _LockAttempt) -> None:
        """Until the attempt's flock returns, or the path has named another file for `relock_grace`."""
        with watching(self.path) as watch:
            await self._wait_watched(attempt, watch)

    async def _wait_watched(self, attempt: _LockAttempt, watch: FileWatch | None) -> None:
        changed_at: float | None = None
        while True:
            if watch is None:
                await asyncio.wait({attempt.future}, timeout=self.poll)
            else:
                # Woken by the kernel when a name in the folder changes; while the path names another
                # file, every `poll` until the grace is over.
                timeout = self.watched_poll if changed_at is None else self.poll
                await wait_readable(watch.fd, timeout, attempt.future)
                watch.drain()
            if attempt.future.done():
                return
            now_key = self.path_key()
            if now_key is None or now_key == attempt.key:
                # Removed: keep waiting on the old file; its holder re-creates the path or dies.
                changed_at = None
                continue
            if changed_at is None:
                changed_at = time.monotonic()
            elif time.monotonic() - changed_at >= self.relock_grace:
                return

    def still_ours(self) -> bool:
        """False when the path no longer names the file we hold the lock on."""
        if self.fd is None:
            return False
        return self._names(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _LockAttempt:
    """One blocking flock on one open file, in a daemon thread, that can be abandoned."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.key: FileKey = (st.st_dev, st.st_ino)
        self.future: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._mutex = threading.Lock()
        self._abandoned = False
        self._acquired = False
        self.error: OSError | None = None
        threading.Thread(target=self._run, name="vigil-lock-wait", daemon=True).start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            error: OSError | None = exc
        else:
            error = None
        with self._mutex:
            self.error = error
            if self._abandoned or error is not None:
                os.close(self.fd)  # nobody wants this lock any more (or the flock failed)
            else:
                self._acquired = True
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting
            self._loop.call_soon_threadsafe(_set_result, self.future, None)

    def settle(self) -> int | None:
        """The fd holding the lock if the flock has returned with it; otherwise abandon the attempt."""
        with self._mutex:
            if self._acquired:
                return self.fd
            self._abandoned = True
            return None


def _set_result(fut: asyncio.Future[None], value: None) -> None:
    if not fut.done():
        fut.set_result(value)
