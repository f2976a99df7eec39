from __future__ import annotations

from datetime import UTC, datetime

from engine.model import ChannelSpec, JobSpec, Settings
from engine.notify.events import Event, EventKind
from engine.notify.routing import channels_for

AT = datetime(2026, 12, 2, tzinfo=UTC)
SETTINGS = Settings(
    notify=("ops",),
    channels={
        "ops": ChannelSpec(name="ops", url="json://localhost"),
        "pager": ChannelSpec(name="pager", command="page-me", events=frozenset({"failed", "failover"})),
    },
)


def event(kind: EventKind, job: str | None = "etl/load") -> Event:
    return Event(id=f"{kind}:x", event=kind, at=AT, job=job)


def test_a_job_without_notify_uses_the_scheduler_default_and_one_with_it_its_own() -> None:
    plain = JobSpec(name="etl/load", path="x", command="true")
    own = JobSpec(name="etl/load", path="x", command="true", notify=("pager", "undeclared"))
    assert channels_for(event(EventKind.FAILED), plain, SETTINGS) == ("ops",)
    assert channels_for(event(EventKind.FAILED), own, SETTINGS) == ("pager",)
    # The pager's filter leaves out what it did not ask for; an empty list silences the job.
    assert channels_for(event(EventKind.LATE), own, SETTINGS) == ()
    assert channels_for(event(EventKind.FAILED), JobSpec(name="q", path="x", command="true", notify=()), SETTINGS) == ()


def test_system_events_go_to_the_scheduler_channels_whatever_the_job_says() -> None:
    own = JobSpec(name="etl/load", path="x", command="true", notify=("pager",))
    assert channels_for(event(EventKind.FAILOVER, job=None), None, SETTINGS) == ("ops",)
    assert channels_for(event(EventKind.AGENT_DOWN), own, SETTINGS) == ("ops",)
    many = Settings(notify=("ops", "pager"), channels=SETTINGS.channels)
    assert channels_for(event(EventKind.FAILOVER, job=None), None, many) == ("ops", "pager")
    assert channels_for(event(EventKind.AGENT_DOWN, job=None), None, many) == ("ops",)
    # A summary of held-back events passes any filter.
    assert channels_for(event(EventKind.SUMMARY, job=None), None, many) == ("ops", "pager")


def test_a_job_whose_channels_are_all_invalid_falls_back_to_the_scheduler_channels() -> None:
    # A typo in the alerting config must not lose the job's alerts.
    typo = JobSpec(name="etl/load", path="x", command="true", notify=("opz",))
    assert channels_for(event(EventKind.FAILED), typo, SETTINGS) == ("ops",)
    # One valid channel is enough: the job's own choice stands (with its filter) and there is no fallback.
    partly = JobSpec(name="etl/load", path="x", command="true", notify=("opz", "pager"))
    assert channels_for(event(EventKind.FAILED), partly, SETTINGS) == ("pager",)
    assert channels_for(event(EventKind.LATE), partly, SETTINGS) == ()
    # Without a valid [scheduler] notify either, there is nowhere to send it.
    assert channels_for(event(EventKind.FAILED), typo, Settings(channels=SETTINGS.channels)) == ()


def test_a_channel_declared_but_invalid_still_gets_its_events_to_hold_until_it_is_fixed() -> None:
    # [notify.mail] has a typo (say, events = ["faild"]): its events wait in the outbox, and the job's
    # alert also reaches [scheduler] notify now, since none of its channels can deliver.
    broken = Settings(notify=("ops", "mail"), channels=SETTINGS.channels, invalid_channels=frozenset({"mail"}))
    only_mail = JobSpec(name="etl/load", path="x", command="true", notify=("mail",))
    assert channels_for(event(EventKind.FAILED), only_mail, broken) == ("mail", "ops")
    assert channels_for(event(EventKind.FAILOVER, job=None), None, broken) == ("ops", "mail")
    both = JobSpec(name="etl/load", path="x", command="true", notify=("mail", "pager"))
    assert channels_for(event(EventKind.FAILED), both, broken) == ("mail", "pager")


def test_while_vigil_toml_is_unreadable_events_wait_under_the_names_the_job_gives_or_for_the_scheduler() -> None:
    from engine.notify.routing import SCHEDULER_CHANNELS

    unreadable = Settings(channels_unknown=True)
    own = JobSpec(name="etl/load", path="x", command="true", notify=("mail", "pager"))
    plain = JobSpec(name="etl/load", path="x", command="true")
    assert channels_for(event(EventKind.FAILED), own, unreadable) == ("mail", "pager")
    assert channels_for(event(EventKind.FAILED), plain, unreadable) == (SCHEDULER_CHANNELS,)
    assert channels_for(event(EventKind.FAILOVER, job=None), None, unreadable) == (SCHEDULER_CHANNELS,)
