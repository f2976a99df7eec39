"""The agent dispatcher and collector against an in-process agent, through the transport seam.

A real Scheduler (real SQLite ledger, real state directory) drives a real AgentService (real
journal, real shims); the HTTP between them goes through httpx.ASGITransport, wrapped where a test
must lose answers or break connections the way a network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.agents.server import AgentApp, AgentService
from engine.model import RunState
from engine.paths import StatePaths
from engine.run.loop import Scheduler
from engine.store.intents import NewRun

Rule = Callable[[httpx.Request, Callable[[], Awaitable[httpx.Response]]], Awaitable[httpx.Response]]


class Wire(httpx.AsyncBaseTransport):
    """The network between scheduler and agent: passes requests to the ASGI app, unless `rule` says."""

    def __init__(self, app: AgentApp) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.rule: Rule | None = None
        self.results_fetched = asyncio.Event()  #: set once GET /results returned a result

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async def forward() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response

        response = await (self.rule(request, forward) if self.rule else forward())
        if request.url.path == "/results" and response.status_code == 200 and response.json().get("results"):
            self.results_fetched.set()
        return response


TOKEN = "dispatch-test-token"


def write_jobs(jobs: Path, scheduler: str = "") -> None:
    jobs.mkdir(parents=True, exist_ok=True)
    token_file = jobs.parent / "agent.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    (jobs / "vigil.toml").write_text(
        f'[scheduler]\nagent_poll_interval = "100ms"\n{scheduler}\n'
        f'[agents.a1]\nurl = "http://agent.test"\ntoken_file = "{token_file}"\n'
    )
    (jobs / "remote.toml").write_text('agent = "a1"\ncommand = "echo remote-ran"\n')


def rows(paths: StatePaths) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{paths.db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        conn.close()


async def until(predicate: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.paths = StatePaths(tmp / "state")
        self.jobs = tmp / "jobs"
        self.agent = AgentService(tmp / "agent")
        self.wire = Wire(AgentApp(self.agent, TOKEN))
        self.scheduler: Scheduler | None = None
        self.task: asyncio.Task[str] | None = None

    async def start(self, before_reconcile: Callable[[], Awaitable[None]] | None = None) -> Scheduler:
        scheduler = Scheduler(self.paths, self.jobs, rescan_interval=0.2)
        scheduler.agent_transport_factory = lambda spec: self.wire
        if before_reconcile is not None:
            original = scheduler._reconcile

            async def reconcile(now: Any) -> None:
                await before_reconcile()
                await original(now)

            scheduler._reconcile = reconcile  # type: ignore[method-assign]
        await scheduler.take_leadership(pid=1, starttime=1, cause="start")
        await scheduler.prepare()
        self.scheduler = scheduler
        self.task = asyncio.create_task(scheduler.run())
        return scheduler

    async def stop(self) -> None:
        if self.scheduler is not None and self.task is not None:
            self.scheduler.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)
        self.agent.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    await made.stop()


async def run_now(scheduler: Scheduler) -> int:
    reply = await scheduler.command("run", {"job": "remote", "user": "test"})
    assert reply["ok"], reply
    return int(reply["run_id"])


# ------------------------------------------------------------------------------------ item 17 (a)


async def test_a_result_read_before_the_takeover_registers_the_run_is_still_recorded(cluster: Cluster) -> None:
    # The previous active (epoch 1) dispatched run 1 and died; the run finished on the agent.
    write_jobs(cluster.jobs)
    old = Scheduler(cluster.paths, cluster.jobs)
    await old.take_leadership(pid=1, starttime=1, cause="start")
    scheduled = "2030-01-01T00:00:00.000000+00:00"
    when = datetime.fromisoformat(scheduled)
    await old.store.commit([NewRun(1, "remote", when, 1, RunState.RUNNING, "manual", when, agent="a1")])
    await old.store.close()
    code, _ = cluster.agent.dispatch(
        {"run_id": 1, "epoch": 1, "job": "remote", "scheduled_for": scheduled, "attempt": 1, "command": "echo hi"}
    )
    assert code == 201
    await until(lambda: (cluster.agent.journal.get(1) or {})["state"] == "finished", 5, "the run to finish")

    async def slow_reconcile() -> None:
        # The takeover registers its open runs a moment after its collector may first ask the agent.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cluster.wire.results_fetched.wait(), 1.0)

    await cluster.start(before_reconcile=slow_reconcile)
    done = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == 1 and r["state"] == "succeeded"], 5, "run 1 recorded"
    )
    assert done[0]["exit_code"] == 0 and done[0]["writer_epoch"] == 2
    await until(lambda: cluster.agent.journal.get(1)["acked_at"], 5, "the new active's ack")


# ------------------------------------------------------------------------------------ item 17 (b)


async def test_a_5xx_answer_to_a_dispatch_that_arrived_does_not_fail_the_run(cluster: Cluster) -> None:
    write_jobs(cluster.jobs)
    answers_lost = 0

    async def agent_errs_after_accepting(request: httpx.Request, forward: Any) -> httpx.Response:
        nonlocal answers_lost
        response = await forward()
        if request.method == "POST" and request.url.path == "/runs" and answers_lost < 2:
            answers_lost += 1  # the agent journaled and started the run, then answered 500/503
            return httpx.Response(500 + answers_lost, json={"error": "internal error"})
        return response

    cluster.wire.rule = agent_errs_after_accepting
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    done = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] not in ("launching", "running")],
        10,
        "the run to end",
    )
    assert done[0]["state"] == "succeeded", done
    assert answers_lost >= 1
    assert cluster.agent.journal.count_running() == 0
    assert (cluster.agent.paths.run_dir(run_id) / "log").read_text() == "remote-ran\n"  # ran once


# ------------------------------------------------------------------------------------ item 17 (c)


async def test_broken_dispatches_are_capped_and_the_agent_confirms_it_never_got_the_run(cluster: Cluster) -> None:
    write_jobs(cluster.jobs)
    sent = 0

    async def connection_breaks_before_sending(request: httpx.Request, forward: Any) -> httpx.Response:
        nonlocal sent
        if request.method == "POST" and request.url.path == "/runs":
            sent += 1
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        return await forward()

    cluster.wire.rule = connection_breaks_before_sending
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    ended = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] not in ("launching", "waiting")],
        10,
        "the run to end",
    )
    assert ended[0]["state"] == "failed", ended
    assert "got no clear answer" in ended[0]["reason"] and "confirms it never received" in ended[0]["reason"]
    count = sent
    await asyncio.sleep(0.5)
    assert sent == count <= 8  # no more re-sends after the run ended


async def test_broken_dispatches_that_may_have_arrived_end_unknown_after_the_cap(cluster: Cluster) -> None:
    write_jobs(cluster.jobs)

    async def answers_never_come_back(request: httpx.Request, forward: Any) -> httpx.Response:
        if request.url.path.startswith(("/runs", "/results")):
            if request.method == "POST":
                await forward()  # it arrives and runs; the answer is lost (and so is any later news)
            raise httpx.ReadError("connection reset by peer", request=request)
        return await forward()

    cluster.wire.rule = answers_never_come_back
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    ended = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] not in ("launching", "waiting")],
        10,
        "the run to end",
    )
    assert ended[0]["state"] == "unknown", ended
    assert "may be running there" in ended[0]["reason"], ended
    assert cluster.agent.journal.get(run_id) is not None  # it did arrive: "failed" would have been a lie


async def test_a_deposed_schedulers_collector_cannot_finish_or_ack_a_run(cluster: Cluster, tmp_path: Path) -> None:
    # Shown, not fixed: fencing already covers it. The old active reads the result after a new
    # active took the epoch; its write is refused, it stops, and the agent keeps the result.
    write_jobs(cluster.jobs)
    (cluster.jobs / "remote.toml").write_text(
        f'agent = "a1"\ncommand = "while [ ! -e {tmp_path}/gate ]; do sleep 0.02; done"\n'
    )
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    await until(lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "running"], 5, "running")
    newer = Scheduler(cluster.paths, cluster.jobs)
    await newer.take_leadership(pid=2, starttime=2, cause="failover")  # epoch 2; its loop never runs
    (tmp_path / "gate").touch()
    assert cluster.task is not None
    assert await asyncio.wait_for(cluster.task, 10) == "fenced"
    [row] = [r for r in rows(cluster.paths) if r["id"] == run_id]
    assert row["state"] == "running" and row["writer_epoch"] == 1
    assert cluster.agent.journal.get(run_id)["acked_at"] is None  # still there for the new active
    await newer.store.close()


# ------------------------------------------------------------------------------------ review 9, #8


@pytest.mark.parametrize(
    ("job_lines", "why"),
    [
        ('command = ["/nonexistent/bin"]\n', "could not start: /nonexistent/bin: command not found"),
        ('command = "true"\nworkdir = "/nonexistent/d"\n', "could not start: workdir /nonexistent/d"),
    ],
)
async def test_a_job_that_cannot_start_on_an_agent_fails_like_a_local_one(
    cluster: Cluster, job_lines: str, why: str
) -> None:
    write_jobs(cluster.jobs)
    (cluster.jobs / "remote.toml").write_text(f'agent = "a1"\n{job_lines}')
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    ended = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] not in ("launching", "running")],
        10,
        "the run to end",
    )
    row = ended[0]
    assert row["state"] == "failed", row
    assert row["exit_code"] is None, row
    assert row["reason"].startswith(f"agent a1: {why}"), row


async def test_an_older_agents_exit_less_end_still_maps_to_unknown(cluster: Cluster) -> None:
    # An agent of the previous version has no end_state field: its exit-less end stays `unknown`.
    write_jobs(cluster.jobs)
    (cluster.jobs / "remote.toml").write_text('agent = "a1"\ncommand = ["/nonexistent/bin"]\n')

    async def older_agent(request: httpx.Request, forward: Any) -> httpx.Response:
        response = await forward()
        if request.url.path.startswith(("/runs", "/results")) and response.status_code < 300:
            doc = response.json()
            for status in doc.get("results", [doc]):
                status.pop("end_state", None)
            return httpx.Response(response.status_code, json=doc)
        return response

    cluster.wire.rule = older_agent
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    ended = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] not in ("launching", "running")],
        10,
        "the run to end",
    )
    assert ended[0]["state"] == "unknown" and "could not start" in ended[0]["reason"], ended


# ------------------------------------------------------------------------------------ review 9, #11


async def agent_post(cluster: Cluster, path: str, body: dict[str, Any]) -> httpx.Response:
    """An authenticated request straight to the agent, as any holder of the token could send."""
    async with httpx.AsyncClient(transport=cluster.wire, base_url="http://agent.test") as client:
        return await client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def test_scheduler_and_agent_agree_on_one_id_range() -> None:
    from engine.agents.server.refusals import Malformed, body_id
    from engine.ids import MAX_ROW_ID, as_row_id, valid_id

    for value in (0, 1, MAX_ROW_ID - 1, MAX_ROW_ID, MAX_ROW_ID + 1, 2**62, 2**63 - 1, 2**63, -1):
        try:
            agent_takes = body_id(value, "epoch") == value
        except Malformed:
            agent_takes = False
        assert agent_takes == valid_id(value) == (as_row_id(value) == value), value
        assert as_row_id(str(value)) == (value if agent_takes else None), value


async def test_an_epoch_the_scheduler_would_refuse_is_refused_by_the_agent(cluster: Cluster) -> None:
    write_jobs(cluster.jobs)
    scheduler = await cluster.start()
    before = cluster.agent.journal.max_epoch
    answer = await agent_post(cluster, "/ack", {"epoch": 9223372036854775807, "run_ids": []})
    assert answer.status_code == 400, answer.text
    assert cluster.agent.journal.max_epoch == before
    run_id = await run_now(scheduler)
    done = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "succeeded"], 5, "the run"
    )
    assert done and scheduler.epoch == 1


@pytest.mark.parametrize("pushed", ["top", "far"])
async def test_an_agent_pushed_to_a_bogus_epoch_names_the_way_back_and_reset_epoch_restores_it(
    cluster: Cluster, tmp_path: Path, pushed: str
) -> None:
    from engine.ids import MAX_ROW_ID

    write_jobs(cluster.jobs)
    scheduler = await cluster.start()
    # A token holder pushes the agent's epoch to the top of the range (no scheduler can go above it),
    # or far up (following it would leave the installation no takeovers): neither is followed.
    epoch = MAX_ROW_ID if pushed == "top" else MAX_ROW_ID // 2
    answer = await agent_post(cluster, "/ack", {"epoch": epoch, "run_ids": []})
    assert answer.status_code == 200, answer.text

    def agent_row() -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{cluster.paths.db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute("SELECT * FROM agents WHERE name = 'a1'").fetchone()
            return dict(found) if found else {}
        finally:
            conn.close()

    down = await until(lambda: (agent_row().get("up") == 0 and agent_row()) or None, 5, "the agent marked down")
    assert "--reset-epoch" in down["error"] and str(epoch) in down["error"], down
    await asyncio.sleep(0.3)  # a few polls: still not followed
    assert scheduler.epoch == 1 and not cluster.task.done(), cluster.task  # type: ignore[union-attr]
    # The way back: restart the agent once with `vigil agent --reset-epoch EPOCH` (the active's epoch).
    cluster.agent.closing()  # as on SIGTERM: answers the collector's long-poll
    cluster.agent.close()
    cluster.agent = AgentService(tmp_path / "agent", reset_epoch=scheduler.epoch)
    cluster.wire.inner = httpx.ASGITransport(app=AgentApp(cluster.agent, TOKEN))
    assert cluster.agent.journal.max_epoch == scheduler.epoch
    run_id = await run_now(scheduler)
    done = await until(
        lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "succeeded"], 5, "the run"
    )
    assert done[0]["reason"] is None, done  # not the stale "waiting for a healthy agent ..."
    assert (await agent_post(cluster, "/ack", {"epoch": scheduler.epoch - 1, "run_ids": []})).status_code == 409


async def test_a_run_that_waited_for_its_agent_does_not_keep_the_waiting_reason_once_running(
    cluster: Cluster, tmp_path: Path
) -> None:
    write_jobs(cluster.jobs)
    (cluster.jobs / "remote.toml").write_text(
        f'agent = "a1"\ncommand = "while [ ! -e {tmp_path}/gate ]; do sleep 0.02; done"\n'
    )
    reachable = False

    async def down_until_reachable(request: httpx.Request, forward: Any) -> httpx.Response:
        if not reachable:
            raise httpx.ConnectError("connection refused", request=request)
        return await forward()

    cluster.wire.rule = down_until_reachable
    scheduler = await cluster.start()
    try:
        run_id = await run_now(scheduler)
        await until(
            lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "waiting"], 5, "waiting"
        )
        reachable = True
        running = await until(
            lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "running"], 5, "running"
        )
        assert running[0]["reason"] is None, running
    finally:
        (tmp_path / "gate").touch()  # the job ends, also when an assertion failed
    await until(lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "succeeded"], 5, "done")


@pytest.mark.parametrize("pushed", ["top", "far"])
async def test_a_bogus_max_run_id_on_an_agent_does_not_move_the_schedulers_run_ids(
    cluster: Cluster, pushed: str
) -> None:
    from engine.ids import MAX_ROW_ID

    write_jobs(cluster.jobs)
    scheduler = await cluster.start()
    # A token holder dispatches a run under an id near the top: following it would leave the
    # scheduler run ids that agents refuse and `vigil logs` cannot name.
    bogus = MAX_ROW_ID if pushed == "top" else MAX_ROW_ID - 5
    body = {"run_id": bogus, "epoch": 1, "job": "x", "scheduled_for": "2030-01-01T00:00:00+00:00"}
    assert (await agent_post(cluster, "/runs", {**body, "command": "true"})).status_code == 201
    await until(lambda: cluster.agent.journal.max_run_id == bogus, 5, "the agent to record it")
    await asyncio.sleep(0.3)  # a few status polls
    run_id = await run_now(scheduler)
    assert run_id < 1000, run_id
    await until(lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "succeeded"], 5, "run")


async def test_a_restore_found_with_high_water_present_asks_the_agents_before_numbering(cluster: Cluster) -> None:
    # docs/agents.md: after a restore, run ids continue above the agent's max_run_id, from the
    # first run numbered on (not only when STATE/high-water is missing).
    write_jobs(cluster.jobs)
    first = await cluster.start()
    first.request_stop()
    await asyncio.wait_for(cluster.task, 10)  # type: ignore[arg-type]
    epoch = first.epoch
    # The database is older than the state directory (same epoch, fewer run ids): a backup of the
    # last leadership put back. The agent has seen run ids far above both.
    (cluster.paths.root / "high-water").write_text(f"vigil high-water epoch={epoch:020d} run_id={7:020d}\n")
    cluster.agent.journal.max_run_id = 500
    scheduler = Scheduler(cluster.paths, cluster.jobs, rescan_interval=0.2)
    scheduler.agent_transport_factory = lambda spec: cluster.wire
    numbered_from: list[int] = []
    original = scheduler._reconcile

    async def reconcile(now: Any) -> None:  # where the first run ids can be handed out
        numbered_from.append(scheduler.planner.next_id)
        await original(now)

    scheduler._reconcile = reconcile  # type: ignore[method-assign]
    await scheduler.take_leadership(pid=1, starttime=1, cause="start")
    await scheduler.prepare()
    cluster.scheduler, cluster.task = scheduler, asyncio.create_task(scheduler.run())
    assert scheduler.restored
    assert numbered_from == [501]


async def test_an_agent_that_reports_a_null_max_epoch_stays_usable(cluster: Cluster) -> None:
    # A null max_epoch means no epoch seen: not an epoch "outside the valid range" that marks it down.
    async def null_epoch(request: httpx.Request, forward: Any) -> httpx.Response:
        response = await forward()
        if request.url.path == "/status" and response.status_code == 200:
            return httpx.Response(200, json={**response.json(), "max_epoch": None})
        return response

    cluster.wire.rule = null_epoch
    write_jobs(cluster.jobs)
    scheduler = await cluster.start()
    run_id = await run_now(scheduler)
    await until(lambda: [r for r in rows(cluster.paths) if r["id"] == run_id and r["state"] == "succeeded"], 5, "run")


# ------------------------------------------------------------------------------------ agent_down debounce


def query(paths: StatePaths, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{paths.db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def agent_events(paths: StatePaths) -> list[str]:
    return [r["event"] for r in query(paths, "SELECT event FROM notifications ORDER BY created_at, event_id")]


async def test_an_agent_is_announced_down_only_once_unreachable_for_two_polls_and_two_intervals(
    cluster: Cluster,
) -> None:
    write_jobs(cluster.jobs, scheduler='notify = ["ops"]')
    with (cluster.jobs / "vigil.toml").open("a") as toml:
        toml.write('\n[notify.ops]\ncommand = "cat"\n')
    lost: list[float] = []  # monotonic times of the status polls the network loses
    lose = 0  # how many more to lose; -1: all of them

    async def network(request: httpx.Request, forward: Any) -> httpx.Response:
        nonlocal lose
        if request.url.path == "/status" and lose:
            if lose > 0:
                lose -= 1
            lost.append(time.monotonic())
            raise httpx.ConnectError("connection refused", request=request)
        return await forward()

    cluster.wire.rule = network
    await cluster.start()
    recorded_up = lambda: [r["up"] for r in query(cluster.paths, "SELECT up FROM agents WHERE name = 'a1'")]  # noqa: E731
    await until(lambda: recorded_up() == [1], 5, "the agent to be recorded up")
    # A blip: two polls lost in a row (100 ms apart, so 2 polls but not 2 intervals). No alert, no record.
    lose = 2
    await until(lambda: lose == 0 and len(lost) == 2, 5, "two polls to be lost")
    await asyncio.sleep(0.5)  # several polls answered since
    assert agent_events(cluster.paths) == [] and recorded_up() == [1]
    # Gone for good: announced once, at the third lost poll (2 polls and 2 intervals after the first).
    lost.clear()
    lose = -1
    await until(lambda: recorded_up() == [0], 5, "the agent to be recorded down")
    assert len(lost) >= 3 and lost[-1] - lost[0] >= 0.2
    await asyncio.sleep(0.5)  # more polls lost: not announced again
    assert agent_events(cluster.paths) == ["agent_down"]
    lose = 0
    await until(lambda: recorded_up() == [1], 5, "the agent to be recorded up again")
    assert agent_events(cluster.paths) == ["agent_down", "agent_up"]
