"""What the Linux kernel can tell an idle process, so that it need not look: inotify (a folder's names
or a file changed) and a timerfd that the kernel cancels when the wall clock is set (a clock step).

Both through libc with ctypes, opened only by who asks. Where they are unavailable (not Linux, the
per-user limit of 128 inotify instances reached) each `open` returns None and the caller polls as
before. `wait_readable(fd, ...)` waits for a descriptor in the running asyncio loop.

Layer: base. Imports only the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["IN_DIR_NAMES", "IN_FILE_WRITTEN", "ClockSetWatch", "FileWatch", "Inotify", "wait_readable"]

# inotify(7) event bits.
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
#: A folder's names came, went or moved, or the folder itself was moved or removed.
IN_DIR_NAMES = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
#: A file's content or size changed (a write, a truncation).
IN_FILE_WRITTEN = IN_MODIFY

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


def _libc() -> Any | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


class Inotify:
    """One inotify instance: watches added by path, events read without blocking."""

    def __init__(self, fd: int, add_watch: Any) -> None:
        self.fd = fd
        self._add_watch = add_watch
        self._closer = weakref.finalize(self, _close_in_thread, fd)

    @classmethod
    def open(cls) -> Inotify | None:
        """An instance, or None where inotify is unavailable (not Linux, or the per-user limit is reached)."""
        libc = _libc()
        try:
            init1, add_watch = libc.inotify_init1, libc.inotify_add_watch  # type: ignore[union-attr]
        except AttributeError:
            return None
        add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
        return cls(fd, add_watch) if fd >= 0 else None

    def add(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch `path` for the events of `mask`: the watch descriptor, or -1 if it cannot be watched.
        Adding a path watched already replaces its mask and returns the same descriptor."""
        return int(self._add_watch(self.fd, os.fsencode(path), mask))

    def read(self) -> list[tuple[int, int, bytes]] | None:
        """Every event queued, as (watch descriptor, mask, name); None when events were lost (the queue
        overflowed, or the descriptor failed): then anything may have changed."""
        events: list[tuple[int, int, bytes]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            except OSError:
                return None
            if not data:
                return events
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                if mask & IN_Q_OVERFLOW:
                    return None
                events.append((wd, mask, name))

    def close(self) -> None:
        self._closer()


def _close_in_thread(fd: int) -> None:
    """Close an inotify descriptor off the calling thread: the close waits for a grace period of the
    kernel (~15 ms measured), which a takeover or a stop must not wait for."""
    try:
        threading.Thread(target=os.close, args=(fd,), name="vigil-inotify-close", daemon=True).start()
    except RuntimeError:  # the interpreter is exiting: no new threads
        os.close(fd)


class FileWatch:
    """Readable when `path` may name another file than before (a name created, removed or moved in
    its folder, or the folder moved or removed) and, with `written`, when the file it named at the
    start was written or truncated. Events are only a reason to look: the owner checks the path."""

    def __init__(self, notify: Inotify) -> None:
        self._notify = notify
        self.fd = notify.fd

    @classmethod
    def open(cls, path: Path, *, written: bool = False) -> FileWatch | None:
        notify = Inotify.open()
        if notify is None:
            return None
        ok = notify.add(path.parent, IN_DIR_NAMES | IN_ONLYDIR) >= 0
        if ok and written:
            ok = notify.add(path, IN_FILE_WRITTEN | IN_DONT_FOLLOW) >= 0
        if not ok:
            notify.close()
            return None
        return cls(notify)

    def drain(self) -> None:
        """Drop the events queued (after them, the owner looks at the path)."""
        self._notify.read()

    def close(self) -> None:
        self._notify.close()


@contextlib.contextmanager
def watching(path: Path, *, written: bool = False) -> Iterator[FileWatch | None]:
    """`FileWatch.open` for the length of a block, closed after it (None: poll instead)."""
    watch = FileWatch.open(path, written=written)
    try:
        yield watch
    finally:
        if watch is not None:
            watch.close()


async def wait_readable(fd: int, within: float | None, *others: asyncio.Future[Any]) -> bool:
    """Wait until `fd` is readable, one of `others` is done, or `within` seconds passed (None: no
    limit); True when `fd` is readable. The descriptor is watched only during the call."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _set_done, ready)
    try:
        await asyncio.wait({ready, *others}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)  # now, not in a callback: the next call may watch the same fd
        ready.cancel()
    return ready.done() and not ready.cancelled()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():  # level-triggered: called again until the reader is removed
        future.set_result(None)


# timerfd_create(2) and timerfd_settime(2).
_CLOCK_REALTIME = 0
_TFD_TIMER_ABSTIME, _TFD_TIMER_CANCEL_ON_SET = 1, 2
_FAR = 10 * 365 * 86400  # seconds ahead the timer is set: it is never meant to expire


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class ClockSetWatch:
    """A timerfd on the wall clock with TFD_TIMER_CANCEL_ON_SET: it becomes readable when the wall
    clock is set (settimeofday, clock_settime, an NTP step, and after a resume from suspend), so a
    process can sleep long and still hear of every clock step at once. `rearm()` after each."""

    def __init__(self, fd: int, settime: Any) -> None:
        self.fd = fd
        self._settime = settime
        self._closer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls) -> ClockSetWatch | None:
        libc = _libc()
        try:
            create, settime = libc.timerfd_create, libc.timerfd_settime  # type: ignore[union-attr]
        except AttributeError:
            return None
        settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p)
        fd = create(_CLOCK_REALTIME, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        watch = cls(fd, settime)
        if not watch.rearm():
            watch.close()
            return None
        return watch

    def rearm(self) -> bool:
        """Clear a cancellation (or expiry) and arm the timer again; False if the kernel refuses."""
        try:
            os.read(self.fd, 8)
        except OSError as exc:  # ECANCELED: the clock was set; EAGAIN: nothing happened
            if exc.errno not in (errno.ECANCELED, errno.EAGAIN):
                return False
        spec = _Itimerspec()
        spec.it_value.tv_sec = int(time.time()) + _FAR
        flags = _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET
        return int(self._settime(self.fd, flags, ctypes.byref(spec), None)) == 0

    def close(self) -> None:
        self._closer()
