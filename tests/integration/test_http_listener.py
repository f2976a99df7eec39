"""The HTTP listener of real `vigil up` processes: /metrics scraped and parsed with prometheus_client's
parser, /healthz on the active and a standby, a failover seen through both, and the start-up errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import VIGIL, runs, vigil, wait_for, write_job

FAST_HA = '[scheduler]\nheartbeat_interval = "100ms"\nheartbeat_timeout = "1s"\n'
LISTENING = re.compile(r"http: listening on (http://\S+) ")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Node:
    """`vigil up --http 127.0.0.1:0`: the test learns the port the system chose from the node's log."""

    def __init__(self, state: Path, jobs: Path, log: Path, http: str = "127.0.0.1:0") -> None:
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [*VIGIL, "up", "--state", str(state), "--jobs", str(jobs), "--http", http],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        found = wait_for(lambda: LISTENING.search(log.read_text()), 15, what=f"the listener's address in {log}")
        self.url = found.group(1)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def health(self) -> dict:
        return self.get("/healthz").json()

    def metrics(self) -> Samples:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def nodes(tmp_path: Path):
    started: list[Node] = []

    def start(state: Path, jobs: Path, **kw: str) -> Node:
        node = Node(state, jobs, tmp_path / f"up-{len(started)}.log", **kw)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def ledger_counts(state: Path) -> Counter[tuple[str, str]]:
    return Counter((run["job"], run["state"]) for run in runs(state))


def test_metrics_count_what_the_ledger_recorded_and_a_standby_says_it_is_one(nodes, tmp_path: Path) -> None:
    state, jobs = tmp_path / "state", tmp_path / "jobs"
    write_job(jobs, "ok", 'command = "true"\nevery = "1s"\n')
    write_job(jobs, "bad", 'command = "exit 3"\nevery = "1s"\n')
    active = nodes(state, jobs)
    wait_for(lambda: active.health()["role"] == "active", 10, what="the first node to become active")
    wait_for(
        lambda: active.metrics().get(("vigil_runs_total", (("job", "bad"), ("state", "failed"))), 0) >= 2,
        15,
        what="two failed runs of bad",
    )
    vigil(state, "pause", "ok")
    vigil(state, "pause", "bad")

    def ended_runs_agree() -> bool:
        # Paused jobs' fires go on as skipped rows; their runs that ran stop growing.
        ledger = ledger_counts(state)
        got = active.metrics()
        return all(
            got.get(("vigil_runs_total", (("job", job), ("state", st))), 0) == ledger[(job, st)] > 0
            for job, st in (("ok", "succeeded"), ("bad", "failed"))
        ) and not any(st in ("pending", "launching", "running") for _, st in ledger)

    wait_for(ended_runs_agree, 15, what="the counters to equal the ledger's runs that ran")
    got = active.metrics()
    ran = ledger_counts(state)[("ok", "succeeded")] + ledger_counts(state)[("bad", "failed")]
    assert got[("vigil_run_duration_seconds_count", ())] == ran
    assert got[("vigil_run_duration_seconds_bucket", (("le", "+Inf"),))] == ran
    assert got[("vigil_run_duration_seconds_bucket", (("le", "5.0"),))] == ran  # `true` and `exit 3` are quick
    assert 0 <= got[("vigil_job_last_duration_seconds", (("job", "ok"),))] < 5
    assert got[("vigil_fire_lag_seconds_count", ())] == ran  # each started once, by this process
    # A paused job's fires are skipped rows, counted as they are committed: bracketed by two ledger reads.
    skipped = ("vigil_runs_total", (("job", "ok"), ("state", "skipped")))
    wait_for(lambda: active.metrics().get(skipped, 0) >= 1, 10, what="a skipped row of the paused job")
    before = ledger_counts(state)[("ok", "skipped")]
    counted = active.metrics()[skipped]
    after = ledger_counts(state)[("ok", "skipped")]
    assert before <= counted <= after
    assert got[("vigil_is_active", ())] == 1
    assert got[("vigil_runs_running", ())] == 0
    assert got[("vigil_job_last_success_timestamp_seconds", (("job", "ok"),))] > 0
    assert ("vigil_job_last_success_timestamp_seconds", (("job", "bad"),)) not in got
    health = active.health()
    assert health["pid"] == active.proc.pid and health["store"] == "ok"

    standby = nodes(state, jobs)
    response = standby.get("/healthz")
    assert response.status_code == 200
    doc = response.json()
    assert (doc["role"], doc["pid"], doc["active_pid"], doc["epoch"]) == (
        "standby",
        standby.proc.pid,
        active.proc.pid,
        health["epoch"],
    )
    seen = standby.metrics()
    assert seen[("vigil_is_active", ())] == 0
    assert seen[("vigil_epoch", ())] == health["epoch"]
    assert not any(name == "vigil_failovers_total" for name, _ in seen)  # none recorded yet
    assert not any(name == "vigil_runs_total" for name, _ in seen)  # it ran nothing: its counters are empty
    assert standby.get("/nowhere").status_code == 404


def test_after_a_failover_the_standby_serves_as_the_active(nodes, tmp_path: Path) -> None:
    state, jobs = tmp_path / "state", tmp_path / "jobs"
    write_job(jobs, "ok", 'command = "true"\nevery = "1s"\n')
    (jobs / "vigil.toml").write_text(FAST_HA)
    first = nodes(state, jobs)
    wait_for(lambda: first.health()["role"] == "active", 10, what="the first node to become active")
    second = nodes(state, jobs)
    assert second.health()["role"] == "standby"
    epoch = first.health()["epoch"]
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    wait_for(lambda: second.health()["role"] == "active", 10, what="the standby to take over")
    assert second.health()["epoch"] > epoch
    wait_for(
        lambda: second.metrics().get(("vigil_runs_total", (("job", "ok"), ("state", "succeeded"))), 0) >= 1,
        10,
        what="the new active to count its own runs",
    )
    got = second.metrics()
    assert got[("vigil_is_active", ())] == 1
    assert got[("vigil_failovers_total", (("cause", "crash"),))] == 1
    assert got[("vigil_epoch", ())] == second.health()["epoch"]


def test_a_port_in_use_or_a_bad_address_stops_the_start_with_one_line(tmp_path: Path) -> None:
    state, jobs = tmp_path / "state", tmp_path / "jobs"
    write_job(jobs, "ok", 'command = "true"\nevery = "1h"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = vigil(state, "up", "--http", f"127.0.0.1:{port}", jobs=jobs, check=False, timeout=15)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"vigil: cannot listen for HTTP on 127.0.0.1:{port}: Address already in use"
    assert not (state / "vigil.db").exists()  # nothing started
    proc = vigil(state, "up", "--http", "::1:8780", jobs=jobs, check=False, timeout=15)
    assert (proc.returncode, proc.stderr.strip()) == (1, "vigil: --http: an IPv6 address needs brackets: [::1]:8780")
    (jobs / "vigil.toml").write_text('[http]\nlisten = "localhost"\n')
    proc = vigil(state, "up", jobs=jobs, check=False, timeout=15)
    assert proc.returncode == 1
    assert re.fullmatch(r"vigil: \S+vigil\.toml:2: http\.listen: expected HOST:PORT .*", proc.stderr.strip())


async def test_the_listener_routes_answers_head_refuses_other_methods_and_survives_a_failing_handler() -> None:
    import asyncio

    from engine.http.app import HttpApp, Request, Response, json_response
    from engine.http.serve import HttpListener

    async def hello(request: Request) -> Response:
        return json_response(200, {"path": request.path, "query": request.query, "x": request.headers.get("x-probe")})

    async def broken(request: Request) -> Response:
        raise RuntimeError("handler bug")

    app = HttpApp()
    app.route("GET", "/hello", hello)
    app.route("GET", "/broken", broken)
    with pytest.raises(ValueError, match="already routed"):
        app.route("GET", "/hello", hello)
    listener = HttpListener(app, "::1", 0)  # IPv6 loopback, a port the system chooses
    listener.bind()
    assert re.fullmatch(r"\[::1\]:\d+", listener.address)
    serving = asyncio.create_task(listener.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://{listener.address}", timeout=5) as client:
            for _ in range(100):
                try:
                    response = await client.get("/hello", params={"a": "1"}, headers={"X-Probe": "p"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            assert (response.status_code, response.json()) == (200, {"path": "/hello", "query": {"a": "1"}, "x": "p"})
            head = await client.head("/hello", params={"a": "1"}, headers={"X-Probe": "p"})
            assert (head.status_code, head.content, head.headers["content-length"]) == (
                200,
                b"",
                response.headers["content-length"],
            )
            refused = await client.post("/hello")
            assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
            assert (await client.get("/elsewhere")).status_code == 404
            assert (await client.get("/broken")).status_code == 500
            assert (await client.get("/hello")).status_code == 200  # still serving
    finally:
        listener.stop()
        await asyncio.wait_for(serving, 5)
