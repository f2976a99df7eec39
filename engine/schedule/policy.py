"""Fire policy: missed fires after a gap, retries, overlap, and `after` (upstream) conditions.

Pure: no I/O, no clock; every function takes the times it needs. Imports `cron` (for `require_aware`)
and `engine.model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from engine.model import Catchup, Overlap, RunState, format_duration
from engine.schedule.cron import require_aware

__all__ = [
    "FirePlan",
    "OverlapDecision",
    "overlap_decision",
    "plan_missed_fires",
    "retry_delay",
    "retryable",
    "should_retry",
    "upstream_satisfied",
]


# ---------------------------------------------------------------------------------------- missed fires


@dataclass(frozen=True)
class FirePlan:
    scheduled_for: datetime
    action: Literal["run", "missed"]
    reason: str | None = None


def plan_missed_fires(
    fires: list[datetime],
    now: datetime,
    catchup: Catchup,
    window_s: float,
    *,
    cause: str | Callable[[datetime], str] = "downtime",
    on_time_s: float | None = None,
) -> list[FirePlan]:
    """Decide, per the job's catchup policy, which fires that fell due during a gap still run.

    Every skipped fire gets a reason naming the gap's `cause` (one for all, or a function giving each
    fire's), so an operator sees why it did not run. With `on_time_s`, the newest fire, if it is at
    most that old, is on time: it runs whatever `catchup` and the window say, and only the older
    fires follow the policy (with `latest` it is the one that supersedes them). The result is in
    ascending order of `scheduled_for`.
    """
    if window_s < 0:
        raise ValueError(f"catchup window must not be negative, got {window_s}")
    require_aware(now, "now")
    cause_of = cause if callable(cause) else (lambda _fire, text=cause: text)
    ordered = sorted(fires)
    on_time: datetime | None = None
    if ordered and on_time_s is not None and (now - ordered[-1]).total_seconds() <= on_time_s:
        on_time = ordered.pop()
    cutoff = now - timedelta(seconds=window_s)
    outside = [f for f in ordered if f < cutoff]
    inside = [f for f in ordered if f >= cutoff]
    too_old = f"outside catchup window ({format_duration(window_s)})"
    plans = [FirePlan(f, "missed", f"{cause_of(f)}: {too_old}") for f in outside]
    catchup = Catchup(catchup)
    if catchup is Catchup.ALL:
        plans += [FirePlan(f, "run", None) for f in inside]
    elif catchup is Catchup.LATEST:
        newest = on_time or (inside[-1] if inside else None)
        if newest is not None:
            late = inside if on_time is not None else inside[:-1]
            superseded = f"catchup=latest: superseded by {newest.isoformat()}"
            plans += [FirePlan(f, "missed", f"{cause_of(f)}: {superseded}") for f in late]
            if on_time is None:
                plans.append(FirePlan(newest, "run", None))
    else:
        plans += [FirePlan(f, "missed", f"{cause_of(f)}: catchup=none") for f in inside]
    if on_time is not None:
        plans.append(FirePlan(on_time, "run", None))
    return plans


# ------------------------------------------------------------------------------------ retries, overlap


def retry_delay(base_s: float, attempt: int, cap_s: float = 3600.0) -> float:
    """Seconds before attempt `attempt + 1` once attempt `attempt` (from 1) failed: doubling, capped."""
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, got {attempt}")
    if base_s < 0 or cap_s < 0:
        raise ValueError("retry delays must not be negative")
    if attempt > 64:  # 2**63 times any positive base is past every sane cap; avoid float overflow
        return float(cap_s) if base_s > 0 else 0.0
    return float(min(base_s * 2 ** (attempt - 1), cap_s))


_RETRYABLE = frozenset({RunState.FAILED, RunState.TIMED_OUT})


def retryable(state: str) -> bool:
    """A run that ends this way is retried while it has retries left: it failed or timed out, never
    one an operator killed or whose outcome is unknown."""
    return str(state) in _RETRYABLE


def should_retry(state: str, attempt: int, retries: int) -> bool:
    """Retry a run that ended in a retryable state while attempts remain (`retries` beyond the first)."""
    return retryable(state) and attempt <= retries


OverlapDecision = Literal["launch", "skip", "queue"]


def overlap_decision(policy: Overlap, active_runs: int) -> OverlapDecision:
    """What to do with a new fire while `active_runs` runs of the same job are launching or running."""
    if active_runs < 0:
        raise ValueError(f"active_runs must not be negative, got {active_runs}")
    policy = Overlap(policy)
    if active_runs == 0 or policy is Overlap.ALLOW:
        return "launch"
    return "skip" if policy is Overlap.SKIP else "queue"


def upstream_satisfied(
    after: tuple[str, ...],
    last_success: Mapping[str, datetime | None],
    since: datetime | None,
) -> tuple[bool, list[str]]:
    """Whether every upstream succeeded after the downstream's own last trigger (`since`; None = never).

    Requiring a success newer than `since` stops one upstream success from triggering the job twice.
    Returns (satisfied, unmet upstream names in `after` order).
    """
    unmet = []
    for name in after:
        ok = last_success.get(name)
        if ok is None or (since is not None and ok <= since):
            unmet.append(name)
    return not unmet, unmet
