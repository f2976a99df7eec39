"""The agent protocol and pool choice without sockets: pure functions, and the ASGI app driven through
httpx.ASGITransport (the transport seam). The agent still runs real shims in a temporary directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from engine.agents.dispatcher import choose_member, targets_of
from engine.agents.protocol import (
    AgentAmbiguous,
    AgentClient,
    AgentNotFound,
    AgentRefused,
    is_loopback_host,
    split_host_port,
)
from engine.agents.server import AgentApp, AgentService
from engine.errors import StaleEpochError
from engine.model import AgentSpec, PoolSpec, Settings


def up(*names: str):
    return lambda name: name in names


def test_fixed_priority_takes_the_first_healthy_member() -> None:
    members = ("a", "b", "c")
    assert choose_member(members, up("a", "b", "c"), "fixed-priority", 0) == ("a", 0)
    assert choose_member(members, up("b", "c"), "fixed-priority", 0) == ("b", 0)
    assert choose_member(members, up(), "fixed-priority", 0) == (None, 0)


def test_round_robin_rotates_over_healthy_members() -> None:
    members = ("a", "b", "c")
    picks, cursor = [], 0
    for _ in range(6):
        pick, cursor = choose_member(members, up("a", "b", "c"), "round-robin", cursor)
        picks.append(pick)
    assert picks == ["a", "b", "c", "a", "b", "c"]
    picks = []
    for _ in range(4):
        pick, cursor = choose_member(members, up("a", "c"), "round-robin", cursor)
        picks.append(pick)
    assert picks == ["a", "c", "a", "c"]
    assert choose_member(members, up(), "round-robin", 2) == (None, 2)
    assert choose_member((), up("a"), "round-robin", 0) == (None, 0)


def test_targets_of_agent_pool_and_unknown() -> None:
    settings = Settings(
        agents={n: AgentSpec(name=n, url=f"http://{n}:1") for n in ("a", "b")},
        pools={"p": PoolSpec(name="p", agents=("b", "a"), mode="round-robin")},
    )
    assert targets_of("a", settings) == (("a",), "fixed-priority")
    assert targets_of("p", settings) == (("b", "a"), "round-robin")
    assert targets_of("zz", settings) == ((), "fixed-priority")


def test_listen_address_parsing_and_loopback() -> None:
    assert split_host_port("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert split_host_port("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        split_host_port("8765")
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::") and not is_loopback_host("10.1.2.3")


@pytest.fixture
async def service(tmp_path: Path):
    svc = AgentService(tmp_path / "agent")
    yield svc
    svc.close()


def client_for(service: AgentService, epoch: int | None, token: str | None = "tok", sent: str | None = "tok"):
    token_file = None
    if sent is not None:
        token_file = service.state_dir.parent / f"sent-{sent}"
        token_file.write_text(sent)
    spec = AgentSpec(name="asgi", url="http://agent.test", token_file=str(token_file) if token_file else None)
    return AgentClient(spec, epoch=epoch, transport=httpx.ASGITransport(app=AgentApp(service, token)))


def body(run_id: int, command: str = "echo hello $VIGIL_JOB") -> dict:
    return {
        "run_id": run_id,
        "job": "j",
        "scheduled_for": "2030-01-01T00:00:00+00:00",
        "attempt": 1,
        "command": command,
    }


async def test_dispatch_result_log_and_ack_through_the_transport_seam(service: AgentService) -> None:
    client = client_for(service, epoch=3)
    status = await client.dispatch(body(7))
    assert status.state == "running" and status.run_id == 7
    assert (await client.dispatch(body(7))).started_at == status.started_at  # idempotent
    instance, results = await client.results(0, wait=5)
    assert instance == service.instance and [r.run_id for r in results] == [7]
    assert results[0].exit_code == 0 and results[0].seq == 1
    data, offset, size, state = await client.log(7, 0)
    assert data == b"hello j\n" and offset == size == 8 and state == "finished"
    await client.ack([7])
    assert (await client.results(0, wait=0))[1] == []
    with pytest.raises(AgentNotFound):
        await client.run(8)
    await client.aclose()


async def test_auth_and_epoch_fencing_through_the_transport_seam(service: AgentService) -> None:
    wrong = client_for(service, epoch=3, sent="nope")
    with pytest.raises(AgentRefused) as refused:
        await wrong.status()
    assert refused.value.status == 401
    newer, older = client_for(service, epoch=4), client_for(service, epoch=2)
    assert (await newer.status())["max_epoch"] == 4  # any request raises the highest epoch seen
    assert (await older.status())["max_epoch"] == 4  # reads stay allowed for a lower epoch
    with pytest.raises(StaleEpochError):
        await older.dispatch(body(9, "true"))
    with pytest.raises(StaleEpochError):
        await older.ack([9])
    assert service.journal.get(9) is None
    status = await newer.dispatch(body(10, "sleep 30"))
    with pytest.raises(StaleEpochError):
        await older.kill(10, "kill")
    killed = await newer.kill(10, "kill")
    assert killed.killed == "kill"
    for _ in range(100):
        if (await newer.run(10)).done:
            break
        await asyncio.sleep(0.05)
    final = await newer.run(10)
    assert final.state == "finished" and final.killed == "kill" and final.exit_code != 0
    assert status.run_id == 10
    for c in (wrong, newer, older):
        await c.aclose()


async def test_bad_dispatches_are_refused(service: AgentService) -> None:
    client = client_for(service, epoch=1)
    for bad in ({**body(1), "command": ""}, {**body(1), "env": {"A": 1}}, {"run_id": 1, "epoch": 1}):
        with pytest.raises(AgentRefused) as refused:
            await client._request("POST", "/runs", json=bad)
        assert refused.value.status == 400
    await client.dispatch(body(2, "true"))
    with pytest.raises(AgentRefused) as clash:
        await client.dispatch({**body(2, "true"), "job": "other"})
    assert clash.value.status == 409 and "already used" in str(clash.value)
    await client.aclose()


async def test_an_answer_that_is_not_an_agents_is_an_agent_error(tmp_path: Path) -> None:
    # e.g. the url points at another web server: every call must fail as AgentError (which the
    # scheduler handles), never as a ValueError that ends its poll or dispatch task
    def other_server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ack":
            return httpx.Response(500, json=["not", "an", "object"])
        return httpx.Response(200, text="<html>welcome</html>")

    spec = AgentSpec(name="web", url="http://web.test")
    client = AgentClient(spec, epoch=1, transport=httpx.MockTransport(other_server))
    for call in (
        client.status(),
        client.dispatch(body(1)),
        client.run(1),
        client.kill(1, "kill"),
        client.results(0, 0),
    ):
        with pytest.raises(AgentAmbiguous, match="not a JSON object"):
            await call
    with pytest.raises(AgentRefused) as refused:
        await client.ack([1])
    assert refused.value.status == 500
    await client.aclose()


async def test_log_reads_are_bounded_whatever_max_asks(service: AgentService) -> None:
    client = client_for(service, epoch=1)
    await client.dispatch({**body(3, "head -c 3000000 /dev/zero"), "log_cap": 4 << 20})
    await client.results(0, wait=5)
    data, offset, size, _ = await client.log(3, 0, max_bytes=-1)
    assert size == 3_000_000 and len(data) == offset == 1 << 20  # the default chunk, not the whole log
    await client.aclose()


async def test_a_hostile_agents_numbers_never_reach_the_scheduler() -> None:
    # a broken or hostile agent: ids and epochs SQLite cannot store, booleans, strings where numbers go
    answers = {
        "/status": {"instance": "i", "max_epoch": 10**30, "open": []},
        "/runs": {**body(1), "state": "running", "seq": True},
        "/runs/1": {**body(1), "state": "finished", "exit_code": 10**30},
        "/runs/1/kill": {**body(1), "run_id": "1", "state": "running"},
        "/results": {"instance": "i", "results": [{**body(1), "state": "finished", "seq": 2**63}]},
    }

    def hostile(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    client = AgentClient(
        AgentSpec(name="evil", url="http://evil.test"), epoch=1, transport=httpx.MockTransport(hostile)
    )
    for call in (
        client.status(),
        client.dispatch(body(1)),
        client.run(1),
        client.kill(1, "kill"),
        client.results(0, 0),
    ):
        with pytest.raises(AgentAmbiguous, match="a vigil agent would not send"):
            await call
    answers["/status"] = {"instance": "i", "max_epoch": "7", "open": []}
    with pytest.raises(AgentAmbiguous):
        await client.status()
    answers["/status"] = {"instance": "i", "max_epoch": 7, "open": [1, 2]}
    assert (await client.status())["max_epoch"] == 7
    await client.aclose()


async def test_a_journal_from_before_end_state_is_upgraded_and_reports_start_failures(tmp_path: Path) -> None:
    import sqlite3

    from engine.agents.server import JOURNAL_SCHEMA

    state = tmp_path / "agent"
    state.mkdir(mode=0o700)
    old = sqlite3.connect(state / "journal.db")
    old.executescript(JOURNAL_SCHEMA.replace("    end_state TEXT,\n", ""))
    old.execute(
        "INSERT INTO runs (run_id, job, scheduled_for, attempt, epoch, spec, state, reason, seq) "
        "VALUES (1, 'j', '2030-01-01T00:00:00+00:00', 1, 1, '{}', 'unknown', 'older', 1)"
    )
    old.commit()
    old.close()
    service = AgentService(state)
    try:
        client = client_for(service, epoch=1)
        assert (await client.run(1)).end_state is None  # an old row stays plain `unknown`
        status = await client.dispatch({**body(2), "command": ["/nonexistent/bin"]})
        if not status.done:
            for _ in range(250):
                await asyncio.sleep(0.02)
                status = await client.run(2)
                if status.done:
                    break
        assert status.state == "unknown" and status.end_state == "failed" and status.failed_without_exit, status
        assert status.reason is not None and status.reason.startswith("could not start: /nonexistent/bin")
        await client.aclose()
    finally:
        service.close()


# ------------------------------------------------------------------ the wire, byte for byte


def raw_client(service: AgentService, token: str = "tok") -> httpx.AsyncClient:
    """Plain HTTP to the app, to see exactly what any client gets (statuses, headers, bodies)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=AgentApp(service, "tok")),
        base_url="http://agent.test",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_wrong_method_unknown_path_and_bad_token_get_their_own_answers(service: AgentService) -> None:
    async with raw_client(service) as client:
        for method, path in (("GET", "/runs"), ("POST", "/status"), ("GET", "/runs/3/kill"), ("DELETE", "/ack")):
            answer = await client.request(method, path)
            assert answer.status_code == 405, (method, path)
            assert answer.content == f'{{"error": "{method} not allowed on {path}"}}'.encode()
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["content-length"] == str(len(answer.content))
        for path in ("/", "/runs/", "/runs/x", "/runs/1/logs", "/status/"):
            answer = await client.get(path)
            assert (answer.status_code, answer.json()) == (404, {"error": f"no such endpoint {path}"}), path
    async with raw_client(service, token="nope") as client:
        answer = await client.get("/status")
        assert (answer.status_code, answer.content) == (401, b'{"error": "unauthorized"}')
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_refusals_carry_their_status_and_message(service: AgentService) -> None:
    from engine.ids import MAX_ROW_ID

    huge = "9" * 20
    async with raw_client(service) as client:
        answer = await client.get(f"/runs/{huge}")
        assert (answer.status_code, answer.json()) == (
            400,
            {"error": f"run id must be a whole number from 0 to {MAX_ROW_ID}, got '{huge}'"},
        )
        answer = await client.get("/status", headers={"X-Vigil-Epoch": "-1"})
        assert answer.json() == {"error": f"X-Vigil-Epoch must be a whole number from 0 to {MAX_ROW_ID}, got b'-1'"}
        answer = await client.post("/runs", json={**body(5), "epoch": "5"})
        assert answer.json() == {"error": f"epoch must be a whole number from 0 to {MAX_ROW_ID}, got '5'"}
        answer = await client.post("/ack", json={"epoch": 1, "run_ids": [1, True]})
        assert answer.json() == {"error": f"run_ids[] must be a whole number from 0 to {MAX_ROW_ID}, got True"}
        assert (await client.post("/ack", json={"epoch": 1})).json() == {"error": "ack needs run_ids: [...]"}
        assert (await client.post("/runs", content=b"{")).status_code == 400
        assert (await client.post("/runs", json={"epoch": 1})).json()["error"].startswith("dispatch needs run_id")
        answer = await client.post("/runs/4/kill", json={"epoch": 1})
        assert (answer.status_code, answer.json()) == (404, {"error": "no run 4 on this agent"})
        answer = await client.get("/runs/4/log")
        assert (answer.status_code, answer.json()) == (404, {"error": "no run 4 on this agent"})
        assert (await client.post("/runs", json={**body(4, "true"), "epoch": 1})).status_code == 201
        answer = await client.post("/runs", json={**body(4, "true"), "job": "other", "epoch": 1})
        assert answer.status_code == 409 and answer.json()["error"].startswith("run id 4 is already used here by job j")
        answer = await client.post("/runs/4/kill", json={"epoch": 0})
        assert (answer.status_code, answer.json()) == (
            409,
            {"error": "stale epoch 0: this agent has seen epoch 1", "max_epoch": 1},
        )


async def test_a_request_with_a_bad_parameter_moves_no_stored_epoch(service: AgentService) -> None:
    async with raw_client(service) as client:
        for path in ("/results?wait=soon", "/results?after=-1", f"/runs/{'9' * 20}"):
            answer = await client.get(path, headers={"X-Vigil-Epoch": "5"})
            assert answer.status_code == 400, path
            assert service.journal.max_epoch == 0, path
        answer = await client.post("/runs", json={**body(1), "epoch": 5, "attempt": -1})
        assert answer.status_code == 400 and service.journal.max_epoch == 0
        # The same requests, well formed: any of them shows the agent a newer epoch.
        answer = await client.get("/runs/1/log?offset=junk&max=-3", headers={"X-Vigil-Epoch": "5"})
        assert answer.status_code == 404 and service.journal.max_epoch == 5
        answer = await client.get("/results?after=0&wait=0", headers={"X-Vigil-Epoch": "6"})
        assert answer.json() == {"instance": service.instance, "results": []} and service.journal.max_epoch == 6
