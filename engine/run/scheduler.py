"""`engine.run.scheduler.Scheduler`, as the HA node and tests import it: the loop's (engine/run/loop.py)."""

from engine.run.loop import Scheduler

__all__ = ["Scheduler"]
