"""Linux inotify on every folder of the job folder (and on /etc/passwd), so an unchanged folder is not
walked, and a scheduler can wait for the kernel to say that something changed instead of looking.

Owns `DirWatch` (on `engine.linux.Inotify`) and how often the folder is walked anyway. Imports only
the standard library and `engine.linux`, `engine.users` (base).
"""

from __future__ import annotations

import os

from engine.linux import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_DELETE,
    IN_DIR_NAMES,
    IN_DONT_FOLLOW,
    IN_MODIFY,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)
from engine.users import PASSWD

__all__ = ["FULL_WALK_EVERY", "FULL_WALK_SHARE", "DirWatch"]

# Anything that can add, remove, rename or rewrite a file or folder.
_IN_EVENTS = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DIR_NAMES
#: Even with inotify, the whole folder is walked this often (a safety net for changes it cannot see,
#: e.g. on a network file system written from another host)...
FULL_WALK_EVERY = 30.0
#: ...or less often when a walk is slow: walks take at most this share of the time (10,000 files
#: take about 55 ms on a 2-core machine: one walk every ~110 s).
FULL_WALK_SHARE = 0.0005


class DirWatch:
    """Linux inotify on every folder of the tree, and on the passwd file's folder for that file alone.

    With 10,000 job files, walking the folder costs about 10,000 stat() calls; done every second
    that alone was about 4 % of a core while nothing changed. With a watch on every folder, `scan()`
    walks only after the kernel reported an event (or at the safety walk), and `fd` is readable
    whenever there is one to report.
    """

    def __init__(self, notify: Inotify) -> None:
        self._notify = notify
        self.fd = notify.fd
        self._folders: set[int] = set()  #: watch descriptors of job folders
        self._passwd = -1  #: the watch descriptor of /etc (only `passwd` in it counts)
        self._passwd_name = os.fsencode(os.path.basename(PASSWD))

    @classmethod
    def open(cls) -> DirWatch | None:
        """A watch, or None where inotify is unavailable (not Linux, or the per-user limit is reached)."""
        notify = Inotify.open()
        if notify is None:
            return None
        watch = cls(notify)
        # A user added or removed changes which `user` keys are valid: that is a change to scan for.
        watch._passwd = notify.add(os.path.dirname(PASSWD), IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE | IN_ONLYDIR)
        return watch

    def add(self, abs_dir: str) -> bool:
        """Watch one folder (again: adding a watched folder is a no-op). False if it cannot be watched."""
        wd = self._notify.add(abs_dir, _IN_EVENTS | IN_ONLYDIR | IN_DONT_FOLLOW)
        if wd < 0:
            return False
        self._folders.add(wd)
        return True

    def changed(self) -> bool:
        """Whether any event that may change the scan arrived since the last call (reads them all)."""
        events = self._notify.read()
        if events is None:
            return True  # events were lost: anything may have changed
        for wd, _mask, name in events:
            if wd == self._passwd and wd not in self._folders and name != self._passwd_name:
                continue  # another file of /etc
            return True
        return False
