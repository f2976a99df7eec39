"""The observers of a store's commits (`Store.observe`), shared by every backend.

Layer: store. Imports engine.store.intents only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from engine.store.intents import CommitObserver, Intent, NewRun

log = logging.getLogger("vigil.store")


class Observers:
    """Told after each successful commit what it wrote (see `intents.CommitObserver`)."""

    def __init__(self) -> None:
        self._observers: list[CommitObserver] = []

    def add(self, observer: CommitObserver) -> None:
        self._observers.append(observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def committed(self, deferred: Sequence[Intent], given: Sequence[Intent], new_ids: set[int]) -> None:
        """A commit of `deferred` then `given` succeeded; `new_ids`: the NewRun rows that were new."""
        if not self._observers:
            return
        rows = [x for x in given if isinstance(x, NewRun) and x.id in new_ids]
        written = [*deferred, *rows, *(x for x in given if not isinstance(x, NewRun))]
        if not written:
            return
        for observer in self._observers:
            try:
                observer(written)
            except Exception:
                # What was committed stays committed: an observer's fault must not look like the store's.
                log.exception("commit observer %r failed", observer)
