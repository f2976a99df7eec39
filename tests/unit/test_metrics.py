"""The metrics as a Prometheus server reads them: counters and histograms fed from committed intents
(pure: RunMetrics.observe), the gauges of a node's snapshot, /healthz's verdict, and the parts of
`[http] listen` and `--http` that are checked before anything starts."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.config.listen import format_listen, split_listen
from engine.config.settings import load_settings
from engine.http.metrics import RunMetrics
from engine.http.node_routes import NodeSnapshot, StoredView, health_document, render
from engine.model import RunState
from engine.notify.events import Event, EventKind
from engine.store import intents as i

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser: (name, labels) → value."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def new_run(run_id: int, job: str, *, at: datetime = T0, **kw: object) -> i.NewRun:
    fields: dict[str, object] = {"state": RunState.LAUNCHING, "trigger": "schedule", "created_at": at, **kw}
    return i.NewRun(id=run_id, job=job, scheduled_for=at, attempt=1, **fields)  # type: ignore[arg-type]


def ended(run_id: int, job: str, state: RunState, at: datetime) -> i.RunFinished:
    return i.RunFinished(run_id, state, None, 0 if state is RunState.SUCCEEDED else 1, at, job=job)


def exposition(metrics: RunMetrics, snap: NodeSnapshot | None = None, stored: StoredView | None = None) -> dict:
    return samples(render(metrics, snap or NodeSnapshot(True, 1, 1, None), stored or StoredView(1, 1, {})))


def test_runs_are_counted_by_job_and_state_and_timed_from_their_start() -> None:
    m = RunMetrics(process=False)
    m.observe([new_run(1, "etl"), new_run(2, "etl"), new_run(3, "web")])
    m.observe([i.RunStarted(1, T0 + timedelta(milliseconds=3), None), i.RunStarted(2, T0, None)])
    m.observe([i.RunStarted(3, T0 + timedelta(seconds=2), None)])
    m.observe(
        [
            ended(1, "etl", RunState.SUCCEEDED, T0 + timedelta(seconds=0.4)),
            ended(2, "etl", RunState.FAILED, T0 + timedelta(seconds=40)),
            ended(3, "web", RunState.SUCCEEDED, T0 + timedelta(seconds=3)),
        ]
    )
    got = exposition(m)
    assert got[("vigil_runs_total", (("job", "etl"), ("state", "succeeded")))] == 1
    assert got[("vigil_runs_total", (("job", "etl"), ("state", "failed")))] == 1
    assert got[("vigil_runs_total", (("job", "web"), ("state", "succeeded")))] == 1
    # 0.397 s, 40 s and 1 s, in one histogram for all jobs (cumulative buckets); per job, the latest.
    assert got[("vigil_run_duration_seconds_bucket", (("le", "0.5"),))] == 1
    assert got[("vigil_run_duration_seconds_bucket", (("le", "1.0"),))] == 2
    assert got[("vigil_run_duration_seconds_bucket", (("le", "30.0"),))] == 2
    assert got[("vigil_run_duration_seconds_bucket", (("le", "60.0"),))] == 3
    assert got[("vigil_run_duration_seconds_count", ())] == 3
    assert got[("vigil_run_duration_seconds_sum", ())] == pytest.approx(41.397)
    assert got[("vigil_job_last_duration_seconds", (("job", "etl"),))] == 40
    assert got[("vigil_job_last_duration_seconds", (("job", "web"),))] == 1
    # Fire lag (due → start): 3 ms, 0 and 2 s, one histogram for the whole scheduler.
    assert got[("vigil_fire_lag_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("vigil_fire_lag_seconds_bucket", (("le", "0.005"),))] == 2
    assert got[("vigil_fire_lag_seconds_bucket", (("le", "2.5"),))] == 3
    assert got[("vigil_fire_lag_seconds_count", ())] == 3


def test_a_retry_lags_from_its_retry_time_and_skipped_or_missed_rows_count_without_a_duration() -> None:
    m = RunMetrics(process=False)
    retry_at = T0 + timedelta(seconds=30)
    m.observe([new_run(1, "j", state=RunState.PENDING, not_before=retry_at)])
    m.observe([i.RunStarted(1, retry_at + timedelta(seconds=0.02), None)])
    m.observe(
        [new_run(2, "j", state=RunState.SKIPPED, ended_at=T0), new_run(3, "j", state=RunState.MISSED, ended_at=T0)]
    )
    got = exposition(m)
    assert got[("vigil_fire_lag_seconds_sum", ())] == pytest.approx(0.02)
    assert got[("vigil_runs_total", (("job", "j"), ("state", "skipped")))] == 1
    assert got[("vigil_runs_total", (("job", "j"), ("state", "missed")))] == 1
    assert got[("vigil_run_duration_seconds_count", ())] == 0
    assert ("vigil_job_last_duration_seconds", (("job", "j"),)) not in got


def test_an_adopted_run_is_timed_from_its_restated_start_and_adds_no_fire_lag() -> None:
    # A run the previous active started: this process never saw its row, only its adoption.
    m = RunMetrics(process=False)
    m.observe([i.StartRestated(7, T0, None)])
    m.observe([ended(7, "long", RunState.SUCCEEDED, T0 + timedelta(minutes=20))])
    got = exposition(m)
    assert got[("vigil_run_duration_seconds_sum", ())] == 1200
    assert got[("vigil_job_last_duration_seconds", (("job", "long"),))] == 1200
    assert got[("vigil_fire_lag_seconds_count", ())] == 0


def test_deliveries_are_counted_by_channel_and_outcome() -> None:
    m = RunMetrics(process=False)
    event = Event(id="failed:run:1", event=EventKind.FAILED, at=T0, job="j", run_id=1)
    m.observe(
        [
            i.NotificationQueued(event, ("ops", "pager")),  # queued is not an outcome
            i.NotificationSent("failed:run:1", "ops", T0, 1),
            i.NotificationRetry("failed:run:1", "pager", T0, 1, T0 + timedelta(seconds=5), "timeout"),
            i.NotificationFailed("failed:run:1", "pager", T0, 8, "gave up"),
            i.NotificationSuppressed(("a", "b", "c"), "ops", "summary:1"),
        ]
    )
    got = exposition(m)
    outcome = {labels: v for (name, labels), v in got.items() if name == "vigil_notifications_total"}
    assert outcome == {
        (("channel", "ops"), ("outcome", "sent")): 1,
        (("channel", "pager"), ("outcome", "retry")): 1,
        (("channel", "pager"), ("outcome", "failed")): 1,
        (("channel", "ops"), ("outcome", "suppressed")): 3,
    }


def test_the_active_reports_its_open_runs_and_last_successes_a_standby_the_ledger() -> None:
    m = RunMetrics(process=False)
    active = NodeSnapshot(True, 10, 4, None, running=3, pending=2, last_success={"etl": T0})
    got = exposition(m, active, StoredView(4, 10, {"crash": 2, "switchover": 1}, (("edge1", True), ("edge2", False))))
    assert got[("vigil_is_active", ())] == 1
    assert got[("vigil_epoch", ())] == 4
    assert got[("vigil_runs_running", ())] == 3
    assert got[("vigil_runs_pending", ())] == 2
    assert got[("vigil_failovers_total", (("cause", "crash"),))] == 2
    assert got[("vigil_failovers_total", (("cause", "switchover"),))] == 1
    assert got[("vigil_agent_up", (("agent", "edge1"),))] == 1
    assert got[("vigil_agent_up", (("agent", "edge2"),))] == 0
    assert got[("vigil_job_last_success_timestamp_seconds", (("job", "etl"),))] == T0.timestamp()
    standby = exposition(m, NodeSnapshot(False, 11, None, None), StoredView(4, 10, {}))
    assert standby[("vigil_is_active", ())] == 0
    assert standby[("vigil_epoch", ())] == 4  # the ledger's: the active it would take over from
    assert ("vigil_runs_running", ()) not in standby
    # A ledger it cannot read leaves out what the ledger would say, and says so.
    broken = exposition(m, NodeSnapshot(False, 11, None, None), StoredView(error="disk I/O error"))
    assert broken[("vigil_store_up", ())] == 0
    assert not any(name == "vigil_failovers_total" for name, _ in broken) and ("vigil_epoch", ()) not in broken


def test_healthz_is_503_only_when_the_node_cannot_use_its_store() -> None:
    assert health_document(NodeSnapshot(False, 11, None, None), StoredView(3, 10))[0] == 200
    status, doc = health_document(NodeSnapshot(False, 11, None, None), StoredView(3, 10))
    assert doc["role"] == "standby" and doc["epoch"] == 3 and doc["active_pid"] == 10 and doc["store"] == "ok"
    status, doc = health_document(NodeSnapshot(False, 11, None, None), StoredView(error="no such table"))
    assert (status, doc["store"]) == (503, "no such table")
    status, doc = health_document(NodeSnapshot(True, 10, 3, "2026-12-01T03:00:00+00:00"), None)
    assert (status, doc["role"], doc["epoch"], doc["pid"]) == (200, "active", 3, 10)
    status, doc = health_document(NodeSnapshot(True, 10, 3, None, store_fault="state database: disk full"), None)
    assert (status, doc["store"]) == (503, "state database: disk full")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8780", ("127.0.0.1", 8780)), ("[::1]:8780", ("::1", 8780)), ("localhost:0", ("localhost", 0))],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert split_listen(text) == expected
    assert format_listen(*expected) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8780", "expected HOST:PORT"),
        (":8780", "expected HOST:PORT"),
        ("127.0.0.1:http", "expected a port from 0 to 65535"),
        ("127.0.0.1:65536", "expected a port from 0 to 65535"),
        ("::1:8780", "an IPv6 address needs brackets: [::1]:8780"),
        ("[127.0.0.1]:80", "expected an IPv6 address inside [ ]"),
        ("999.1.1.1:80", "expected an IPv4 address, a host name or [IPv6]"),
        ("bad host:80", "expected an IPv4 address, a host name or [IPv6]"),
    ],
)
def test_bad_listen_addresses_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        split_listen(text)


def test_http_table_in_vigil_toml(tmp_path: Path) -> None:
    (tmp_path / "vigil.toml").write_text('[http]\nlisten = "[::1]:9100"\n')
    settings, errors = load_settings(tmp_path)
    assert (settings.http_listen, errors) == ("[::1]:9100", [])
    (tmp_path / "vigil.toml").write_text('[scheduler]\n\n[http]\nlisten = "0.0.0.0"\nport = 1\n')
    settings, errors = load_settings(tmp_path)
    assert settings.http_listen is None
    assert [(e.key, e.line) for e in errors] == [("http.listen", 4), ("http.port", 5)]
    assert "expected HOST:PORT" in errors[0].reason and str(tmp_path / "vigil.toml") in errors[0].format()
    (tmp_path / "vigil.toml").write_text("[http]\nlisten = 8780\n")
    (error,) = load_settings(tmp_path)[1]
    assert error.key == "http.listen" and 'expected a string "HOST:PORT"' in error.reason


def test_the_listing_commands_load_neither_prometheus_client_nor_uvicorn(tmp_path: Path) -> None:
    # `vigil runs --json` has a start-up budget (150 ms); the listener's stack is only `vigil up --http`'s.
    from engine.paths import StatePaths
    from engine.store.sqlite.db import connect

    connect(StatePaths(tmp_path)).close()
    for args in (["runs", "--json"], ["jobs", "--json", "--jobs", str(tmp_path)], ["status", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "engine.cli", *args, "--state", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert "engine.cli" in loaded, proc.stderr[-500:]
        heavy = sorted(m for m in loaded if m.split(".")[0] in ("prometheus_client", "uvicorn") or m == "engine.http")
        assert heavy == [], args
