"""RunMetrics: the counters and histograms of one `vigil up` process, fed from committed intents.

`observe` is a `store.intents.CommitObserver`: the node registers it on the store of each active
term, so it sees exactly what the ledger recorded (a failed commit is never counted; a deferred
start is counted with the commit that wrote it). The counters are process-local, the Prometheus
norm: they start at zero when the process starts and only grow; a standby's stay where its last
active term left them (zero if it never was active). Pure: no I/O, no clock reads.

Gauges that describe the node now (active or not, open runs, epoch, agents, failovers) are not
kept here: `node_routes` reads them at scrape time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from engine.model import RunState
from engine.store import intents as i

# The `_created` series would double every counter's and histogram's series for a start time the
# process's own `process_start_time_seconds` already gives.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Run durations: a tenth of a second to a day (jobs are anything from `true` to a nightly batch).
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)
#: Fire lag (due → started): a healthy scheduler starts within milliseconds; seconds mean trouble.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class RunMetrics:
    """The process's run and delivery metrics, in their own registry (two nodes in one test process
    must not share the global one)."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if process:
            ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory, fds
        self.runs = Counter(
            "vigil_runs",
            "Runs that reached a terminal state, by job and state",
            ["job", "state"],
            registry=self.registry,
        )
        # One histogram for all jobs: per job it would be 16 series a job (10,000 jobs: 160,000 series,
        # and a scrape of seconds). Per job there is the last duration, one series each.
        self.duration = Histogram(
            "vigil_run_duration_seconds",
            "Seconds from a run's start to its end (runs that ran: not skipped or missed), all jobs",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.last_duration = Gauge(
            "vigil_job_last_duration_seconds",
            "Seconds the job's latest run that ended took, by job",
            ["job"],
            registry=self.registry,
        )
        # Not per job: lag measures the scheduler, not the job, and it is observed at every start.
        self.fire_lag = Histogram(
            "vigil_fire_lag_seconds",
            "Seconds from a run's due time (its fire time, or its retry time) to its start",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.notifications = Counter(
            "vigil_notifications",
            "Notification deliveries by channel and outcome (sent, retry, failed, suppressed)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self._due: dict[int, datetime] = {}  #: runs created by this process, until they start
        self._started: dict[int, datetime] = {}  #: runs started (or adopted) here, until they end

    def observe(self, intents: Sequence[i.Intent]) -> None:
        """What one commit wrote (a `CommitObserver`)."""
        for intent in intents:
            match intent:
                case i.NewRun():
                    if intent.ended_at is not None:  # created terminal: skipped, missed
                        self.runs.labels(intent.job, str(intent.state)).inc()
                    else:
                        self._due[intent.id] = intent.not_before or intent.scheduled_for
                case i.RunStarted():
                    due = self._due.pop(intent.run_id, None)
                    if due is not None:
                        self.fire_lag.observe(max(0.0, (intent.started_at - due).total_seconds()))
                    self._started[intent.run_id] = intent.started_at
                case i.StartRestated():
                    self._started[intent.run_id] = intent.started_at  # adopted, or after a clock step
                case i.RunFinished():
                    self._due.pop(intent.run_id, None)
                    started = self._started.pop(intent.run_id, None)
                    job = intent.job or "?"
                    self.runs.labels(job, str(intent.state)).inc()
                    if started is not None and intent.state not in (RunState.SKIPPED, RunState.MISSED):
                        seconds = max(0.0, (intent.ended_at - started).total_seconds())
                        self.duration.observe(seconds)
                        self.last_duration.labels(job).set(seconds)
                case i.NotificationSent():
                    self.notifications.labels(intent.channel, "sent").inc()
                case i.NotificationRetry():
                    self.notifications.labels(intent.channel, "retry").inc()
                case i.NotificationFailed():
                    self.notifications.labels(intent.channel, "failed").inc()
                case i.NotificationSuppressed():
                    self.notifications.labels(intent.channel, "suppressed").inc(len(intent.event_ids))
                case _:
                    pass

    def exposition(self) -> bytes:
        """The text format of everything in the registry (thread-safe: a scrape renders off the loop)."""
        return generate_latest(self.registry)
