"""Local users and hostile callers: owner-only state, peer credentials, agent tokens, hostile ids.

Everything runs for real: `vigil up` and `vigil agent` processes with a chosen umask, the control
socket spoken to raw, another local user (`nobody`, through setpriv), HTTP against a real agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import VIGIL, control, exit_recorded, vigil, wait_for, write_job

HUGE = 10**30
ME = pwd.getpwuid(os.geteuid()).pw_name
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")


class Proc:
    """A `vigil` subprocess started with a given umask, in its own session, always cleaned up."""

    def __init__(self, args: list[str], log: Path, umask: int = 0o022) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [*VIGIL, *args], stdout=self._log, stderr=subprocess.STDOUT, umask=umask, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

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
def procs() -> Iterator[Any]:
    started: list[Proc] = []

    def start(args: list[str], log: Path, umask: int = 0o022) -> Proc:
        proc = Proc(args, log, umask)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def start_up(procs: Any, state: Path, jobs: Path, umask: int = 0o022) -> Proc:
    up = procs(["up", "--state", str(state), "--jobs", str(jobs)], state.parent / "up.log", umask)
    wait_for(lambda: _answers(state / "control.sock"), 10, what=f"vigil up to be active\n{up.output()}")
    return up


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        control(path, {"op": "status"})
    except OSError:
        return False
    return True


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def run_state(db: Path, run_id: int) -> str | None:
    rows = query(db, f"SELECT state FROM runs WHERE id = {int(run_id)}")
    return rows[0][0] if rows else None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ------------------------------------------------------------------ item 2: owner-only state


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask000", "umask022"])
def test_state_is_owner_only_whatever_the_umask_and_jobs_keep_it(procs, tmp_path: Path, umask: int) -> None:
    state, jobs, out = tmp_path / "state", tmp_path / "jobs", tmp_path / "out"
    jobs.mkdir()
    out.mkdir()
    out.chmod(0o777)
    write_job(jobs, "writer", f'command = "echo secret; umask > {out}/umask; touch {out}/made"\n')
    start_up(procs, state, jobs, umask)
    started = control(state / "control.sock", {"op": "run", "job": "writer"})
    assert started["ok"], started
    wait_for(lambda: run_state(state / "vigil.db", started["run_id"]) == "succeeded", 10, what="the run to succeed")
    run_dir = state / "runs" / str(started["run_id"])
    expected = {
        state,
        state / "runs",
        run_dir,
        state / "vigil.db",
        state / "vigil.db-wal",
        state / "vigil.db-shm",
        state / "leader.lock",
        state / "control.sock",
        run_dir / "log",
        run_dir / "shim",
        run_dir / "started",
        run_dir / "exit",
    }
    found = {state, *state.rglob("*")}
    assert expected <= found, sorted(map(str, expected - found))
    loose = {str(p): oct(mode(p)) for p in found if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert not loose, f"not owner-only under umask {umask:03o}: {loose}"
    assert "secret" in (run_dir / "log").read_text()
    # the job itself keeps the operator's umask for what it makes elsewhere
    assert (out / "umask").read_text().strip() == f"{umask:04o}"
    assert mode(out / "made") == 0o666 & ~umask


@pytest.mark.parametrize("loose", [0o777, 0o770, 0o702], ids=["0777", "0770", "0702"])
def test_a_state_directory_others_can_write_is_refused(tmp_path: Path, loose: int) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for command in (["up", "--jobs", str(jobs)], ["agent", "--listen", "127.0.0.1:0"]):
        state = tmp_path / f"state-{command[0]}"
        state.mkdir()
        state.chmod(loose)
        proc = subprocess.run([*VIGIL, *command, "--state", str(state)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1, proc
        assert proc.stderr.startswith("vigil: ") and "Traceback" not in proc.stderr, proc.stderr
        assert str(state) in proc.stderr and f"chmod 700 {state}" in proc.stderr, proc.stderr
        assert not (state / "vigil.db").exists() and not (state / "journal.db").exists()


@needs_root
def test_a_state_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    jobs, state = tmp_path / "jobs", tmp_path / "state"
    jobs.mkdir()
    state.mkdir(mode=0o700)
    os.chown(state, pwd.getpwnam("nobody").pw_uid, -1)
    proc = subprocess.run(
        [*VIGIL, "up", "--state", str(state), "--jobs", str(jobs)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and proc.stderr.startswith("vigil: "), proc
    assert f"{state} belongs to nobody" in proc.stderr, proc.stderr
    assert not (state / "vigil.db").exists()


# ------------------------------------------------------------------ item 2: peer credentials


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A folder another local user can traverse (pytest's tmp_path is 0700 root)."""
    folder = Path(tempfile.mkdtemp(prefix="vigil-sec-", dir="/tmp"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


AS_NOBODY = """
import json, socket, sys
replies = []
for request in json.loads(sys.argv[2]):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(sys.argv[1])
    sock.sendall(json.dumps(request).encode() + b"\\n")
    buf = b""
    while not buf.endswith(b"\\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    replies.append(json.loads(buf) if buf else None)
    sock.close()
print(json.dumps(replies))
"""
AS_NOBODY_CMD = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", AS_NOBODY]


@needs_root
def test_control_identity_comes_from_the_socket_and_other_users_are_refused(procs, reachable_dir: Path) -> None:
    state, jobs = reachable_dir / "state", reachable_dir / "jobs"
    jobs.mkdir()
    write_job(jobs, "a", 'command = "true"\n')
    start_up(procs, state, jobs)
    sock = state / "control.sock"
    # the caller's name is the peer's uid, whatever the request claims
    assert control(sock, {"op": "pause", "job": "a", "user": "alice-spoofed"})["ok"]
    audit = query(state / "vigil.db", "SELECT os_user, action, target FROM audit")
    assert audit == [(ME, "pause", "a")], audit
    # an id beyond SQLite's integers is refused with an answer, not a dropped connection
    for op in ("rerun", "kill"):
        reply = control(sock, {"op": op, "run_id": HUGE})
        assert reply["ok"] is False and "no run with id" in reply["error"], reply
    for older in (None, "soon", 1e300):
        reply = control(sock, {"op": "prune", "older_than_s": older})
        assert reply["ok"] is False and "older_than_s" in reply["error"], reply
    # another local user who can reach the socket (opened up here on purpose) may do nothing
    audit_before = query(state / "vigil.db", "SELECT * FROM audit")
    state.chmod(0o711)
    sock.chmod(0o666)
    requests = [
        "not a request",
        {"op": "resume", "job": "a", "user": ME},
        {"op": "run", "job": "a"},
        {"op": "status"},
        {"op": "subscribe", "role": "standby", "pid": 1},
        {"op": "switchover"},
    ]
    proc = subprocess.run(
        [*AS_NOBODY_CMD, str(sock), json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    replies = json.loads(proc.stdout)
    for request, reply in zip(requests, replies, strict=True):
        assert reply and reply["ok"] is False and reply["error"].startswith("permission denied: "), (request, reply)
        assert "nobody" in reply["error"]
    assert query(state / "vigil.db", "SELECT COUNT(*) FROM runs") == [(0,)]
    assert control(sock, {"op": "status"})["ok"]  # its own user still may

    # Refused requests are audited too, under the kernel's name for the caller.
    def refusals() -> list[tuple[Any, ...]]:
        return query(state / "vigil.db", "SELECT os_user, action, target, result FROM audit")[len(audit_before) :]

    # Deferred rows reach the database in batches: wait for all six, not the first batch.
    refused = wait_for(lambda: len(refusals()) >= len(requests) and refusals(), 5, what="the refusals in the audit")
    assert [(user, action) for user, action, _, _ in refused] == [
        ("nobody", op) for op in ("?", "resume", "run", "status", "subscribe", "switchover")
    ], refused
    assert all(result.startswith("refused: permission denied: user nobody") for *_, result in refused), refused


def test_a_request_longer_than_the_limit_is_answered_not_a_traceback(procs, tmp_path: Path) -> None:
    state, jobs = tmp_path / "state", tmp_path / "jobs"
    jobs.mkdir()
    write_job(jobs, "a", 'command = "true"\n')
    up = start_up(procs, state, jobs)
    sock_path = state / "control.sock"
    for request in (b"x" * (70 * 1024), b'{"op": "pause", "job": "' + b"a" * (200 * 1024) + b'"}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(sock_path))
            with contextlib.suppress(OSError):  # the scheduler may hang up before reading it all
                sock.sendall(request)
            reply = sock.makefile("rb").readline()
        answer = json.loads(reply)
        assert answer["ok"] is False and "request too long" in answer["error"], answer
    # A nesting too deep for the JSON parser is a malformed request, not a dropped connection.
    deep = b"[" * 50000 + b"]" * 10
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(deep + b"\n")
        assert json.loads(sock.makefile("rb").readline()) == {
            "ok": False,
            "error": "malformed request",
            "kind": "refused",
        }
    assert control(sock_path, {"op": "status"})["ok"]  # it still serves
    assert query(state / "vigil.db", "SELECT COUNT(*) FROM audit") == [(0,)]
    out = up.output()
    assert "Traceback" not in out and "Separator is not found" not in out, out


@needs_root
def test_refusals_are_audited_within_a_bound_and_name_who_may(procs, reachable_dir: Path) -> None:
    state, jobs = reachable_dir / "state", reachable_dir / "jobs"
    jobs.mkdir()
    write_job(jobs, "a", 'command = "true"\n')
    up = start_up(procs, state, jobs)
    sock = state / "control.sock"
    state.chmod(0o711)
    sock.chmod(0o666)
    # A hostile local user asking again and again must not fill the disk with audit rows.
    flood = [{"op": "run", "job": "a"}] * 60
    proc = subprocess.run([*AS_NOBODY_CMD, str(sock), json.dumps(flood)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    replies = json.loads(proc.stdout)
    assert all(r and r["ok"] is False and r["error"].startswith("permission denied") for r in replies), replies
    # The scheduler runs as root here: the message names root once.
    assert "only root may" in replies[0]["error"] and "root and root" not in replies[0]["error"], replies[0]
    from engine.control import RefusalAudit

    limit = RefusalAudit().limit
    rows = wait_for(
        lambda: query(state / "vigil.db", "SELECT os_user, action, target, result FROM audit"), 5, what="audit rows"
    )
    assert len(rows) == limit, rows
    assert set(rows) == {("nobody", "run", "a", f"refused: {replies[0]['error']}")}
    assert query(state / "vigil.db", "SELECT COUNT(*) FROM runs") == [(0,)]
    assert up.output().count("refused run from nobody") == limit, up.output()


def test_refusal_audit_policy_is_bounded_and_summarised() -> None:
    from engine.control import RefusalAudit

    policy = RefusalAudit(limit=3, window=60.0)
    assert [policy.note(100.0 + i, "nobody") for i in range(5)] == [True, True, True, False, False]
    assert policy.note(110.0, "mallory") is False
    assert policy.due(110.0) == 50.0
    assert policy.due(170.0) == 0.0
    user, text = policy.summary() or ("", "")
    assert user == "?" and "3 more refused request(s) within 60s" in text and "mallory 1, nobody 2" in text
    assert policy.summary() is None and policy.due(170.0) is None
    assert policy.note(170.0, "nobody") is True  # a new window
    assert [policy.note(171.0, "nobody") for _ in range(3)] == [True, True, False]
    assert policy.summary() == ("nobody", policy_text(1))


async def test_refusals_past_the_bound_are_summarised_in_one_audit_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from engine.control import RefusalAudit
    from engine.ha import Node, control_server
    from engine.paths import StatePaths

    state, jobs = tmp_path / "state", tmp_path / "jobs"
    jobs.mkdir()
    write_job(jobs, "a", 'command = "true"\n')
    # Everyone is a stranger here: the peer-credential check is the seam (the real one is tested above).
    refusal = "permission denied: user mallory (uid 4242) may not control this scheduler; only root may"
    monkeypatch.setattr(control_server, "_peer_identity", lambda writer: ("mallory", refusal))
    node = Node(StatePaths(state), jobs)
    node._refusals = RefusalAudit(limit=2, window=0.5)
    running = asyncio.create_task(node.run())
    try:
        await asyncio.to_thread(wait_for, lambda: (state / "control.sock").exists(), 10)
        for _ in range(5):
            reader, writer = await asyncio.open_unix_connection(str(state / "control.sock"))
            writer.write(b'{"op": "pause", "job": "a"}\n')
            assert refusal in (await reader.readline()).decode()
            writer.close()

        def audit() -> list[tuple[Any, ...]]:
            return query(state / "vigil.db", "SELECT os_user, action, target, result FROM audit")

        rows = await asyncio.to_thread(wait_for, lambda: len(audit()) == 3 and audit(), 5)
    finally:
        node.request_stop()
        await asyncio.wait_for(running, 10)
    assert rows[:2] == [("mallory", "pause", "a", f"refused: {refusal}")] * 2
    assert rows[2][0] == "mallory" and "3 more refused request(s) within 0.5s" in rows[2][3], rows


def policy_text(count: int) -> str:
    return (
        f"refused: permission denied: {count} more refused request(s) within 60s, "
        "not recorded one by one (by user: nobody 1)"
    )


@needs_root
def test_other_users_get_one_line_from_the_cli_on_an_owner_only_state(procs, reachable_dir: Path) -> None:
    state, jobs = reachable_dir / "state", reachable_dir / "jobs"
    jobs.mkdir()
    start_up(procs, state, jobs)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *VIGIL]
    if subprocess.run([*as_nobody, "--help"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("this checkout is not readable by nobody")
    for args in (["status"], ["runs"], ["logs", "1"], ["pause", "a"], ["db", "check"]):
        proc = subprocess.run([*as_nobody, *args, "--state", str(state)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1, (args, proc)
        assert proc.stderr.startswith("vigil: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert "owner-only" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ items 3, 4, 16: agents


def start_agent(procs: Any, state: Path, name: str, *extra: str, umask: int = 0o022) -> tuple[Proc, str]:
    addr = state / "agent.addr"
    addr.unlink(missing_ok=True)
    args = ["agent", "--listen", "127.0.0.1:0", "--state", str(state), *extra]
    agent = procs(args, state.parent / f"{name}.log", umask)

    def ready() -> bool:
        if agent.proc.poll() is not None:
            raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.output()}")
        return addr.exists()

    wait_for(ready, 10, what="the agent to listen")
    return agent, addr.read_text().strip()


def dispatch_body(run_id: Any, epoch: Any, command: str = "true", **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "epoch": epoch,
        "job": "j",
        "scheduled_for": "2030-01-01T00:00:00.000000+00:00",
        "attempt": 1,
        "command": command,
        **extra,
    }


def test_an_agent_without_a_token_file_makes_one_and_requires_it(procs, tmp_path: Path) -> None:
    state, marker = tmp_path / "agent", tmp_path / "ran"
    agent, url = start_agent(procs, state, "agent1", umask=0o000)
    token_file = state / "agent.token"
    assert str(token_file) in agent.output()
    assert mode(token_file) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token not in agent.output()
    body = dispatch_body(1, 1, f"touch {marker}")
    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "Bearer " + token[:-1]}):
        assert httpx.post(url + "/runs", json=body, headers=headers).status_code == 401
        assert httpx.get(url + "/status", headers=headers).status_code == 401
    assert not (state / "runs" / "1").exists() and not marker.exists()
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.post(url + "/runs", json=body, headers=auth).status_code == 201
    wait_for(marker.exists, 10, what="the authenticated dispatch to run")
    wait_for(lambda: exit_recorded(state / "runs" / "1"), 10, what="the run to end")
    assert mode(marker) == 0o666  # the job keeps the operator's umask (000 here)
    found = {state, *state.rglob("*")}
    loose = {str(p): oct(mode(p)) for p in found if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert not loose, f"agent state not owner-only under umask 000: {loose}"
    # restarted, it reuses the same token
    agent.stop()
    agent, url = start_agent(procs, state, "agent2")
    assert token_file.read_text().strip() == token
    assert httpx.get(url + "/status", headers=auth).status_code == 200
    assert httpx.get(url + "/status").status_code == 401
    agent.stop()
    # and a scheduler is never started on an agent's state directory
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    proc = subprocess.run(
        [*VIGIL, "up", "--state", str(state), "--jobs", str(jobs)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and proc.stderr.startswith("vigil: "), proc
    assert "an agent's state directory" in proc.stderr and not (state / "vigil.db").exists()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret-" + "y" * 30 + "\n")
    path.chmod(0o600)
    return path


def test_hostile_ids_and_epochs_are_400_and_change_nothing(procs, tmp_path: Path, token_file: Path) -> None:
    state = tmp_path / "agent"
    auth = {"Authorization": "Bearer " + token_file.read_text().strip()}
    agent, url = start_agent(procs, state, "agent1", "--token-file", str(token_file))
    client = httpx.Client(base_url=url, headers=auth, timeout=10)

    def max_epoch() -> int:
        return int(client.get("/status").json()["max_epoch"])

    assert client.post("/runs", json=dispatch_body(1, 3)).status_code == 201
    for bad in [HUGE, 1 << 63, -1, True, False, 1.5, "5", [], {}]:
        for body in (dispatch_body(2, bad), dispatch_body(bad, 5), dispatch_body(2, 5, attempt=bad)):
            answer = client.post("/runs", json=body)
            assert answer.status_code == 400, (body, answer.status_code, answer.text)
        for path, body in (
            ("/runs/1/kill", {"epoch": bad}),
            ("/ack", {"epoch": bad, "run_ids": [1]}),
            ("/ack", {"epoch": 5, "run_ids": [1, bad]}),  # a valid epoch with a bad id moves nothing
        ):
            answer = client.post(path, json=body)
            assert answer.status_code == 400, (path, body, answer.status_code, answer.text)
    for header in (str(HUGE), "-1", "1.5", "abc", str(1 << 63)):
        for method, path in (("GET", "/status"), ("GET", "/runs/1"), ("POST", "/runs/1/kill"), ("GET", "/results")):
            answer = client.request(method, path, headers={"X-Vigil-Epoch": header})
            assert answer.status_code == 400, (method, path, header, answer.status_code)
    for path in (f"/runs/{HUGE}", f"/runs/{HUGE}/log", f"/runs/{1 << 63}/log", f"/results?after={HUGE}"):
        answer = client.get(path)
        assert answer.status_code in (400, 404), (path, answer.status_code, answer.text)
    assert client.post(f"/runs/{HUGE}/kill", json={"epoch": 5}).status_code in (400, 404)
    infinite = json.dumps(dispatch_body(2, 5, timeout=float("inf")))  # "Infinity": Python reads it
    assert client.post("/runs", content=infinite, headers={"content-type": "application/json"}).status_code == 400
    deep = b"[" * 200_000 + b"]" * 200_000
    assert client.post("/runs", content=deep, headers={"content-type": "application/json"}).status_code == 400
    assert client.get("/results?after=%ff").status_code == 400
    # the wrong token moves nothing either, even with a valid epoch
    assert httpx.post(url + "/runs", json=dispatch_body(3, 50)).status_code == 401
    assert httpx.get(url + "/status", headers={"X-Vigil-Epoch": "60"}).status_code == 401
    assert max_epoch() == 3
    assert not (state / "runs" / "2").exists() and not (state / "runs" / "3").exists()
    assert client.post("/runs", json=dispatch_body(4, 3)).status_code == 201
    # after a restart the maximum is still the true one, and a current scheduler is served
    client.close()
    agent.stop()
    agent, url = start_agent(procs, state, "agent2", "--token-file", str(token_file))
    with httpx.Client(base_url=url, headers=auth, timeout=10) as client:
        assert int(client.get("/status").json()["max_epoch"]) == 3
        assert client.post("/runs", json=dispatch_body(5, 3)).status_code == 201
    agent.stop()


def test_a_journal_poisoned_by_an_older_agent_heals_on_start(procs, tmp_path: Path, token_file: Path) -> None:
    state = tmp_path / "agent"
    auth = {"Authorization": "Bearer " + token_file.read_text().strip()}
    agent, url = start_agent(procs, state, "agent1", "--token-file", str(token_file))
    assert httpx.post(url + "/runs", json=dispatch_body(1, 7), headers=auth).status_code == 201
    agent.stop()
    conn = sqlite3.connect(state / "journal.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'max_epoch'", (str(HUGE),))
    conn.commit()
    conn.close()
    agent, url = start_agent(procs, state, "agent2", "--token-file", str(token_file))
    assert httpx.get(url + "/status", headers=auth).json()["max_epoch"] == 7
    assert httpx.post(url + "/runs", json=dispatch_body(2, 7), headers=auth).status_code == 201
    assert httpx.post(url + "/runs", json=dispatch_body(3, 6), headers=auth).status_code == 409


def test_an_agent_locked_out_by_a_top_epoch_gets_back_with_reset_epoch(procs, tmp_path: Path, token_file: Path) -> None:
    # Review 9, #11: a token holder pushed the agent's highest epoch to the top of the valid range
    # (no scheduler can go above it); `vigil agent --reset-epoch EPOCH` is the documented way back.
    from engine.ids import MAX_ROW_ID

    state = tmp_path / "agent"
    auth = {"Authorization": "Bearer " + token_file.read_text().strip()}
    agent, url = start_agent(procs, state, "agent1", "--token-file", str(token_file))
    assert httpx.post(url + "/runs", json=dispatch_body(1, 7), headers=auth).status_code == 201
    assert httpx.post(url + "/ack", json={"epoch": MAX_ROW_ID, "run_ids": []}, headers=auth).status_code == 200
    # what the previous agent version accepted, and every scheduler refuses, is a 400 that moves nothing
    assert httpx.post(url + "/ack", json={"epoch": 2**63 - 1, "run_ids": []}, headers=auth).status_code == 400
    assert httpx.post(url + "/runs", json=dispatch_body(2, 7), headers=auth).status_code == 409
    agent.stop()
    bad = vigil(state, "agent", "--token-file", str(token_file), "--reset-epoch", "2**70", check=False)
    assert bad.returncode != 0 and bad.stderr.startswith("vigil: --reset-epoch") and "Traceback" not in bad.stderr
    agent, url = start_agent(procs, state, "agent2", "--token-file", str(token_file), "--reset-epoch", "7")
    assert "reset from" in agent.output()
    assert httpx.get(url + "/status", headers=auth).json()["max_epoch"] == 7
    assert httpx.post(url + "/runs", json=dispatch_body(2, 7), headers=auth).status_code == 201
    assert httpx.post(url + "/runs", json=dispatch_body(3, 6), headers=auth).status_code == 409  # still fenced
    agent.stop()
    # A journal the previous version let reach 2**63-1 heals on start, as any out-of-range maximum does.
    conn = sqlite3.connect(state / "journal.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'max_epoch'", (str(2**63 - 1),))
    conn.commit()
    conn.close()
    agent, url = start_agent(procs, state, "agent3", "--token-file", str(token_file))
    assert httpx.get(url + "/status", headers=auth).json()["max_epoch"] == 7
    agent.stop()


def test_cli_run_ids_beyond_sqlite_are_a_vigil_error(procs, tmp_path: Path) -> None:
    state, jobs = tmp_path / "state", tmp_path / "jobs"
    jobs.mkdir()
    start_up(procs, state, jobs)
    for args in (["logs", str(HUGE)], ["kill", str(HUGE)], ["rerun", str(HUGE)], ["logs", "-5"], ["kill", "x"]):
        proc = vigil(state, *args, check=False)
        assert proc.returncode == 1, (args, proc)
        assert proc.stderr.startswith("vigil: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
    proc = vigil(state, "runs", "--limit", str(HUGE), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("vigil: "), proc
