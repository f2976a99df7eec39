"""Remote agents end to end: real `vigil agent` servers (uvicorn) on 127.0.0.1, real `vigil up`.

Every agent is a subprocess in its own session, so SIGKILL reaches the agent alone and its jobs run
on, as they would on a remote host. Polling reads the state database directly (read-only) with
deadlines; nothing sleeps for long.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import VIGIL, exit_recorded, vigil, vigil_json, wait_for, write_job

TOKEN = "t0ken-" + "x" * 26
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Agent:
    """A `vigil agent` subprocess in its own session (so SIGKILL reaches it alone, not its jobs)."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        token: str | None = TOKEN,
        tls: dict[str, Path] | None = None,
        port: int = 0,
    ) -> None:
        self.name = name
        self.state = root / f"agent-{name}"
        self.state.mkdir(parents=True, exist_ok=True)
        self.token_file: Path | None = None
        if token is not None:
            self.token_file = root / f"{name}.token"
            self.token_file.write_text(token + "\n")
            self.token_file.chmod(0o600)
        self.tls = tls
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self, timeout: float = 10.0) -> Agent:
        addr = self.state / "agent.addr"
        addr.unlink(missing_ok=True)
        cmd = [*VIGIL, "agent", "--listen", f"127.0.0.1:{self.port}", "--state", str(self.state)]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls["cert"]), "--tls-key", str(self.tls["key"])]
            if "client_ca" in self.tls:
                cmd += ["--tls-client-ca", str(self.tls["client_ca"])]
        self.starts += 1
        self.log_path = self.state.parent / f"agent-{self.name}-{self.starts}.log"
        self._log = open(self.log_path, "wb")  # closed in stop() or kill9()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.output()}")
            return addr.exists()

        wait_for(ready, timeout, what=f"agent {self.name} to listen")
        self.url = addr.read_text().strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()

    def kill_jobs(self) -> None:
        """End every job this agent started that is still alive (test cleanup)."""
        for started in (self.state / "runs").glob("*/started"):
            try:
                pid = int(started.read_text().strip())
                if psutil.Process(pid).environ().get("VIGIL_RUN_ID") == started.parent.name:
                    os.killpg(pid, signal.SIGKILL)
            except (OSError, ValueError, psutil.Error):
                pass


class LossyProxy:
    """An HTTP proxy in front of an agent that can lose the agent's answers to dispatches.

    mode "pass" relays everything; "drop-runs" relays POST /runs to the agent but closes the
    connection without its answer (the dispatch arrived; the scheduler cannot know), and holds
    GET /status until `release` is set (so the scheduler's poll does not notice anything either).
    refuse() closes the listening socket (connections refused), start() listens again on the same port.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.mode = "pass"
        self.port = 0
        self.release = threading.Event()
        self.held = 0  #: status requests held so far
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LossyProxy:
        proxy = self

        class Relay(BaseHTTPRequestHandler):
            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if proxy.mode == "drop-runs" and self.path == "/status":
                    proxy.held += 1
                    proxy.release.wait(10)
                keep = ("authorization", "content-type", "x-vigil-epoch")
                headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
                answer = httpx.request(
                    self.command, proxy.target + self.path, content=body, headers=headers, timeout=30
                )
                if proxy.mode == "drop-runs" and (self.command, self.path) == ("POST", "/runs"):
                    self.close_connection = True
                    return
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = relay

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Relay)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def refuse(self) -> None:
        """Stop listening: new connections are refused (requests already held stay held)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def stop(self) -> None:
        self.release.set()
        self.refuse()


@pytest.fixture
def proxies():
    made: list[LossyProxy] = []

    def make(target: str) -> LossyProxy:
        made.append(LossyProxy(target))
        return made[-1].start()

    yield make
    for proxy in made:
        proxy.stop()


def free_port() -> int:
    """A port nothing listens on (for an agent that is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_settings(jobs: Path, agents: dict[str, dict[str, Any]], pools: str = "", scheduler: str = "") -> None:
    lines = ["[scheduler]", 'agent_poll_interval = "200ms"', scheduler, ""]
    shared_token = jobs.parent / "agents.token"  # every Agent here has TOKEN unless a test says otherwise
    shared_token.write_text(TOKEN + "\n")
    shared_token.chmod(0o600)
    for name, fields in agents.items():
        fields = {"token_file": str(shared_token), **fields}
        lines.append(f"[agents.{name}]")
        lines += [f'{key} = "{value}"' for key, value in fields.items()]
        lines.append("")
    lines.append(pools)
    (jobs / "vigil.toml").write_text("\n".join(lines))


def query(state: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    db = state / "vigil.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def run_rows(state: Path, job: str) -> list[dict[str, Any]]:
    return query(state, "SELECT * FROM runs WHERE job = ? ORDER BY id", (job,))


def wait_state(state: Path, job: str, states: set[str], timeout: float = 10.0) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        rows = [r for r in run_rows(state, job) if r["state"] in states]
        return rows[-1] if rows else None

    return wait_for(found, timeout, what=f"a run of {job} in {sorted(states)}: {run_rows(state, job)}")


def make_certs(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return make_certs_openssl(folder)
    if os.environ.get("VIGIL_TEST_CERTS") == "openssl":
        return make_certs_openssl(folder)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("vigil test CA"))
        .issuer_name(name("vigil test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _, ca_path = save("ca", ca_key, ca)

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return save(cn, key, builder.sign(ca_key, hashes.SHA256()))

    server_key, server_cert = leaf(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key, client_cert = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return {
        "ca": ca_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def make_certs_openssl(folder: Path) -> dict[str, Path]:
    """The same certificates with the `openssl` command (when the cryptography package is absent)."""
    if shutil.which("openssl") is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    folder.mkdir(parents=True, exist_ok=True)

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder, timeout=30)

    ssl_cmd("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=vigil test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for stem, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (folder / f"{stem}.ext").write_text(ext + "\n")
        ssl_cmd("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", f"/CN={stem}", "-keyout", f"{stem}.key", "-out", f"{stem}.csr")  # fmt: skip
        ssl_cmd("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", f"{stem}.ext", "-out", f"{stem}.pem")  # fmt: skip
    return {
        "ca": folder / "ca.pem",
        "server_cert": folder / "server.pem",
        "server_key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
    }


def settle(seconds: float) -> None:
    """A short, bounded pause where a test must show that something does *not* happen."""
    time.sleep(seconds)


def gated(gate: Path, out: Path, word: str) -> str:
    """A job that waits for `gate`, then appends `word` to `out` (so a second execution would show)."""
    return (
        f'command = "echo start-{word}; while [ ! -e {gate} ]; do sleep 0.05; done; '
        f'echo {word} >> {out}; echo done-{word}"\n'
    )


def agent_journal(agent: Agent, run_id: int) -> dict[str, Any] | None:
    conn = sqlite3.connect(f"file:{agent.state / 'journal.db'}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def agent_row(state: Path, name: str) -> dict[str, Any]:
    rows = query(state, "SELECT * FROM agents WHERE name = ?", (name,))
    return rows[0] if rows else {}


def dispatch_body(run_id: int, epoch: int, command: str = "true", **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "epoch": epoch,
        "job": f"direct{run_id}",  # ids from 1001: the scheduler in this test numbers its runs from 1
        "scheduled_for": "2030-01-01T00:00:00.000000+00:00",
        "attempt": 1,
        "command": command,
        **extra,
    }


@pytest.fixture
def agents(tmp_path: Path):
    made: list[Agent] = []

    def make(name: str, **kw: Any) -> Agent:
        agent = Agent(tmp_path, name, **kw)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        agent.kill_jobs()


# ---------------------------------------------------------------------------------------- tests


def test_dispatch_and_result_with_env_logs_and_status(start_up, agents, state_dir: Path, jobs_dir: Path) -> None:
    agent = agents("a1", token=TOKEN).start()
    write_settings(jobs_dir, {"a1": {"url": agent.url, "token_file": str(agent.token_file)}})
    write_job(
        jobs_dir,
        "remote",
        'agent = "a1"\n'
        'command = "echo run=$VIGIL_RUN_ID job=$VIGIL_JOB try=$VIGIL_ATTEMPT epoch=$VIGIL_EPOCH '
        'for=$VIGIL_SCHEDULED_FOR; echo oops >&2"\n',
    )
    write_job(jobs_dir, "remote-fail", 'agent = "a1"\ncommand = ["sh", "-c", "exit 3"]\n')
    write_job(jobs_dir, "local", 'command = "echo pid=$$"\n')
    up = start_up()
    up.wait_active()
    for job in ("remote", "remote-fail", "local"):
        vigil(state_dir, "run", job)
    ok = wait_state(state_dir, "remote", {"succeeded"})
    bad = wait_state(state_dir, "remote-fail", {"failed"})
    local = wait_state(state_dir, "local", {"succeeded"})
    assert ok["agent"] == "a1" and ok["exit_code"] == 0 and ok["started_at"] and ok["cpu_s"] is not None
    assert bad["agent"] == "a1" and bad["exit_code"] == 3 and bad["reason"] == "exit code 3"
    assert local["agent"] is None  # jobs without `agent` still run locally
    # it ran under the agent's shim, in the agent's own run directory
    assert (agent.state / "runs" / str(ok["id"]) / "exit").read_text().startswith("exit=0 ")
    assert not (agent.state / "runs" / str(local["id"])).exists()
    log = vigil(state_dir, "logs", str(ok["id"]), jobs=jobs_dir).stdout
    assert f"run={ok['id']} job=remote try=1 epoch={ok['epoch']} for={ok['scheduled_for']}" in log
    assert "oops" in log
    # the scheduler acknowledged the results after recording them
    wait_for(lambda: (agent_journal(agent, ok["id"]) or {}).get("acked_at"), 5, what="ack")
    status = vigil_json(state_dir, "status")
    [a1] = status["agents"]
    assert set(a1) == {"name", "up", "last_contact", "cpu_percent", "memory_percent", "load1", "running"}
    assert a1["name"] == "a1" and a1["up"] is True and a1["running"] == 0
    assert a1["last_contact"] and a1["memory_percent"] > 0 and a1["load1"] is not None
    assert agent_row(state_dir, "a1")["version"]
    assert TOKEN not in agent.output() and TOKEN not in up.output()


def test_token_refused_and_accepted(start_up, agents, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    agent = agents("a1", token=TOKEN).start()
    assert httpx.get(agent.url + "/status").status_code == 401
    assert httpx.get(agent.url + "/status", headers={"Authorization": "Bearer " + TOKEN[:-1] + "y"}).status_code == 401
    assert httpx.post(agent.url + "/runs", json=dispatch_body(1, 1)).status_code == 401
    accepted = httpx.get(agent.url + "/status", headers=AUTH)
    assert accepted.status_code == 200 and accepted.json()["version"]
    # a scheduler holding the wrong token: the agent shows as down and the run fails after the wait limit
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    write_settings(jobs_dir, {"a1": {"url": agent.url, "token_file": str(wrong)}}, scheduler='agent_wait_limit = "1s"')
    write_job(jobs_dir, "remote", 'agent = "a1"\ncommand = "true"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "remote")
    failed = wait_state(state_dir, "remote", {"failed"})
    assert "no healthy agent within 1s" in failed["reason"] and "401" in failed["reason"], failed
    row = agent_row(state_dir, "a1")
    assert row["up"] == 0 and "401" in row["error"]
    assert not (agent.state / "runs" / str(failed["id"])).exists()
    # without a token an agent refuses to listen anywhere but loopback
    proc = subprocess.run(
        [*VIGIL, "agent", "--listen", "0.0.0.0:0", "--state", str(tmp_path / "open")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1 and "refusing to listen on non-loopback" in proc.stderr
    assert TOKEN not in agent.output()


def test_mutual_tls(start_up, agents, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    pki = make_certs(tmp_path / "pki")
    agent = agents(
        "tls",
        token=TOKEN,
        tls={"cert": pki["server_cert"], "key": pki["server_key"], "client_ca": pki["ca"]},
    ).start()
    assert agent.url.startswith("https://127.0.0.1:")
    no_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    with pytest.raises(httpx.TransportError):
        httpx.get(agent.url + "/status", headers=AUTH, verify=no_cert)
    with pytest.raises(httpx.ConnectError):  # the client checks the agent's certificate too
        httpx.get(agent.url + "/status", headers=AUTH)
    with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    with_cert.load_cert_chain(pki["client_cert"], pki["client_key"])
    assert httpx.get(agent.url + "/status", headers=AUTH, verify=with_cert).status_code == 200
    write_settings(
        jobs_dir,
        {
            "tls": {
                "url": agent.url,
                "token_file": str(agent.token_file),
                "tls_ca": str(pki["ca"]),
                "tls_cert": str(pki["client_cert"]),
                "tls_key": str(pki["client_key"]),
            }
        },
    )
    write_job(jobs_dir, "secure", 'agent = "tls"\ncommand = "echo over-mtls"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "secure")
    run = wait_state(state_dir, "secure", {"succeeded"})
    assert run["agent"] == "tls"
    assert "over-mtls" in vigil(state_dir, "logs", str(run["id"]), jobs=jobs_dir).stdout


def test_pool_falls_back_when_the_first_agent_is_down(start_up, agents, state_dir: Path, jobs_dir: Path) -> None:
    down_port = free_port()
    second = agents("second").start()
    write_settings(
        jobs_dir,
        {"first": {"url": f"http://127.0.0.1:{down_port}"}, "second": {"url": second.url}},
        pools='[pools.p]\nagents = ["first", "second"]\nmode = "fixed-priority"\n',
    )
    write_job(jobs_dir, "pooled", 'agent = "p"\ncommand = "true"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "pooled")
    run = wait_state(state_dir, "pooled", {"succeeded"})
    assert run["agent"] == "second"
    wait_for(lambda: agent_row(state_dir, "first").get("up") == 0, 5)
    assert agent_row(state_dir, "first")["error"]
    # once the first agent is up, it takes the pool's runs again
    first = agents("first", port=down_port).start()
    wait_for(lambda: agent_row(state_dir, "first").get("up") == 1, 5)
    vigil(state_dir, "run", "pooled")
    wait_for(lambda: len([r for r in run_rows(state_dir, "pooled") if r["state"] == "succeeded"]) == 2, 10)
    assert [r["agent"] for r in run_rows(state_dir, "pooled")] == ["second", "first"]
    assert (first.state / "runs").is_dir()


def test_round_robin_spreads_runs(start_up, agents, state_dir: Path, jobs_dir: Path) -> None:
    a, b = agents("a").start(), agents("b").start()
    write_settings(
        jobs_dir,
        {"a": {"url": a.url}, "b": {"url": b.url}},
        pools='[pools.rr]\nagents = ["a", "b"]\nmode = "round-robin"\n',
    )
    write_job(jobs_dir, "spread", 'agent = "rr"\noverlap = "allow"\ncommand = "true"\n')
    start_up().wait_active()
    for _ in range(4):
        vigil(state_dir, "run", "spread")
    wait_for(lambda: len([r for r in run_rows(state_dir, "spread") if r["state"] == "succeeded"]) == 4, 10)
    assert Counter(r["agent"] for r in run_rows(state_dir, "spread")) == {"a": 2, "b": 2}


def test_run_waits_for_an_agent_then_starts_when_it_comes_up(start_up, agents, state_dir: Path, jobs_dir: Path) -> None:
    port = free_port()
    write_settings(jobs_dir, {"late": {"url": f"http://127.0.0.1:{port}"}}, scheduler='agent_wait_limit = "30s"')
    write_job(jobs_dir, "patient", 'agent = "late"\ncommand = "echo finally"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "patient")
    waiting = wait_state(state_dir, "patient", {"waiting"})
    assert waiting["reason"].startswith("waiting for a healthy agent of agent late")
    agents("late", port=port).start()
    run = wait_state(state_dir, "patient", {"succeeded"})
    assert run["id"] == waiting["id"] and run["agent"] == "late"


def test_agent_killed_mid_run_and_restarted(start_up, agents, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    agent = agents("a1", token=TOKEN).start()
    write_settings(jobs_dir, {"a1": {"url": agent.url, "token_file": str(agent.token_file)}})
    out = tmp_path / "out"
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    write_job(jobs_dir, "ja", 'agent = "a1"\n' + gated(gate_a, out, "A"))
    write_job(jobs_dir, "jb", 'agent = "a1"\n' + gated(gate_b, out, "B"))
    start_up().wait_active()
    vigil(state_dir, "run", "ja")
    vigil(state_dir, "run", "jb")
    ra = wait_state(state_dir, "ja", {"running"})
    rb = wait_state(state_dir, "jb", {"running"})
    agent.kill9()
    wait_for(lambda: agent_row(state_dir, "a1").get("up") == 0, 5, what="the agent to show as down")
    # A ends while its agent is dead: the shim records it; nobody can tell the scheduler yet
    gate_a.touch()
    wait_for(lambda: exit_recorded(agent.state / "runs" / str(ra["id"])), 5)
    settle(0.3)
    assert run_rows(state_dir, "ja")[-1]["state"] == "running"
    agent.start()  # same port, same journal: it ingests A's end and adopts B's live shim
    done_a = wait_state(state_dir, "ja", {"succeeded"})
    assert run_rows(state_dir, "jb")[-1]["state"] == "running"
    gate_b.touch()
    done_b = wait_state(state_dir, "jb", {"succeeded"})
    assert out.read_text().split() == ["A", "B"]  # each ran exactly once
    assert len(run_rows(state_dir, "ja")) == len(run_rows(state_dir, "jb")) == 1
    assert done_a["id"] == ra["id"] and done_b["id"] == rb["id"]
    assert "done-A" in vigil(state_dir, "logs", str(ra["id"]), jobs=jobs_dir).stdout
    assert "adopted run" in agent.output()


def test_scheduler_failover_while_a_job_runs_on_an_agent(
    start_up, agents, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    agent = agents("a1", token=TOKEN).start()
    write_settings(jobs_dir, {"a1": {"url": agent.url, "token_file": str(agent.token_file)}})
    out, gate = tmp_path / "out", tmp_path / "gate"
    write_job(jobs_dir, "long", 'agent = "a1"\n' + gated(gate, out, "L"))
    first = start_up()
    first.wait_active()
    second = start_up()
    wait_for(lambda: second.pid in [s["pid"] for s in vigil_json(state_dir, "status")["standbys"]], 10)
    vigil(state_dir, "run", "long")
    running = wait_state(state_dir, "long", {"running"})
    # while it runs, `vigil logs` reads the log from the agent
    live = wait_for(lambda: vigil(state_dir, "logs", str(running["id"]), jobs=jobs_dir).stdout, 5)
    assert live == "start-L\n"
    first.kill9()
    second.wait_active()
    epoch = query(state_dir, "SELECT epoch FROM leader")[0]["epoch"]
    assert epoch == running["epoch"] + 1
    gate.touch()
    done = wait_state(state_dir, "long", {"succeeded"})
    assert done["id"] == running["id"] and done["exit_code"] == 0
    assert done["writer_epoch"] == epoch  # recorded by the new active
    assert len(run_rows(state_dir, "long")) == 1 and out.read_text().split() == ["L"]
    wait_for(lambda: (agent_journal(agent, done["id"]) or {}).get("acked_at"), 5, what="the new active's ack")
    status = httpx.get(agent.url + "/status", headers=AUTH).json()
    assert status["max_epoch"] == epoch and status["open"] == []
    assert vigil(state_dir, "logs", str(done["id"]), jobs=jobs_dir).stdout == "start-L\ndone-L\n"


def test_stale_epoch_commands_are_refused(start_up, agents, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    agent = agents("a1", token=TOKEN).start()
    with httpx.Client(base_url=agent.url, headers=AUTH) as client:
        first = client.post("/runs", json=dispatch_body(1001, 5, "sleep 0.2"))
        assert first.status_code == 201 and first.json()["state"] == "running"
        stale = client.post("/runs", json=dispatch_body(1002, 4))
        assert stale.status_code == 409 and "stale epoch 4" in stale.json()["error"]
        assert client.post("/runs/1001/kill", json={"epoch": 4}).status_code == 409
        assert client.post("/ack", json={"epoch": 4, "run_ids": [1001]}).status_code == 409
        # a repeated dispatch returns the run's status and never starts it twice
        again = client.post("/runs", json=dispatch_body(1001, 5, "sleep 0.2"))
        assert again.status_code == 200 and again.json()["started_at"] == first.json()["started_at"]
        clash = client.post("/runs", json={**dispatch_body(1001, 5), "job": "other"})
        assert clash.status_code == 409 and "already used" in clash.json()["error"]
        assert client.get("/runs/1002").status_code == 404
    agent.kill9()
    agent.start()  # the highest epoch seen is persisted
    with httpx.Client(base_url=agent.url, headers=AUTH) as client:
        assert client.get("/status").json()["max_epoch"] == 5
        assert client.post("/runs", json=dispatch_body(1003, 4)).status_code == 409
        wait_for(lambda: client.get("/runs/1001").json()["state"] == "finished", 5)
    # a scheduler whose database is behind what the agent has seen (a restored backup, a new state
    # directory) takes the leadership again above the agent's epoch, and numbers its runs above the
    # agent's run ids: its runs go through, and no id is used twice
    write_settings(
        jobs_dir, {"a1": {"url": agent.url, "token_file": str(agent.token_file)}}, scheduler='agent_wait_limit = "1s"'
    )
    write_job(jobs_dir, "remote", 'agent = "a1"\ncommand = "true"\n')
    up = start_up()
    wait_for(lambda: [r["epoch"] for r in query(state_dir, "SELECT epoch FROM leader")] == [6], 10, what="epoch 6")
    up.wait_active()
    wait_for(lambda: vigil(state_dir, "run", "remote", check=False).returncode == 0, 10, what="vigil run")
    done = wait_state(state_dir, "remote", {"succeeded"})
    assert done["epoch"] == 6 and done["id"] > 1001, done
    assert (agent_journal(agent, done["id"]) or {}).get("epoch") == 6
    assert "taking the leadership again above it" in up.output()


def test_agent_back_without_knowledge_of_a_run_means_unknown(
    start_up, agents, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    agent = agents("a1").start()
    write_settings(jobs_dir, {"a1": {"url": agent.url}})
    out, gate = tmp_path / "out", tmp_path / "gate"
    write_job(jobs_dir, "lost", 'agent = "a1"\n' + gated(gate, out, "X"))
    start_up().wait_active()
    vigil(state_dir, "run", "lost")
    running = wait_state(state_dir, "lost", {"running"})
    agent.kill9()
    agent.kill_jobs()
    # the shim outlives its job by an instant (it writes the exit record): wipe after that
    wait_for(lambda: exit_recorded(agent.state / "runs" / str(running["id"])), 5, what="the shim to end")
    shutil.rmtree(agent.state)  # the host was rebuilt: journal and run directories are gone
    agent.state.mkdir()
    agent.start()
    unknown = wait_state(state_dir, "lost", {"unknown"})
    assert unknown["id"] == running["id"]
    assert "has no record of this run" in unknown["reason"] and "not re-run" in unknown["reason"]
    settle(0.5)
    assert len(run_rows(state_dir, "lost")) == 1
    assert httpx.get(f"{agent.url}/runs/{running['id']}", headers=AUTH).status_code == 404  # never dispatched again
    assert not out.exists()


def test_timeout_and_kill_on_an_agent(start_up, agents, state_dir: Path, jobs_dir: Path) -> None:
    agent = agents("a1").start()
    write_settings(jobs_dir, {"a1": {"url": agent.url}}, scheduler='kill_grace = "1s"')
    write_job(jobs_dir, "slow", 'agent = "a1"\ntimeout = "1s"\ncommand = "sleep 30"\n')
    write_job(jobs_dir, "victim", 'agent = "a1"\ncommand = "sh -c \'trap \\"\\" TERM; sleep 31\' & sleep 32"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "slow")
    vigil(state_dir, "run", "victim")
    victim = wait_state(state_dir, "victim", {"running"})
    vigil(state_dir, "kill", str(victim["id"]))
    killed = wait_state(state_dir, "victim", {"killed"})
    assert killed["reason"] == "killed by operator"
    timed_out = wait_state(state_dir, "slow", {"timed_out"})
    assert "timeout of 1s exceeded" in timed_out["reason"]
    for run in (killed, timed_out):
        pid = run["pid"]
        assert pid is not None

        def group_gone(pid: int = pid) -> bool:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(group_gone, 5, what=f"process group {pid} to be gone")


def test_a_dispatch_that_may_have_arrived_never_goes_to_another_member(
    start_up, agents, proxies, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    first, second = agents("first").start(), agents("second").start()
    proxy = proxies(first.url)
    write_settings(
        jobs_dir,
        {"first": {"url": proxy.url}, "second": {"url": second.url}},
        pools='[pools.p]\nagents = ["first", "second"]\nmode = "fixed-priority"\n',
        scheduler='agent_wait_limit = "30s"',
    )
    out, gate = tmp_path / "out", tmp_path / "gate"
    write_job(jobs_dir, "once", 'agent = "p"\n' + gated(gate, out, "O"))
    start_up().wait_active()
    wait_for(lambda: agent_row(state_dir, "first").get("up") == 1, 5)
    proxy.mode = "drop-runs"
    vigil(state_dir, "run", "once")
    run = wait_state(state_dir, "once", {"launching"})
    wait_for(lambda: agent_journal(first, run["id"]), 5, what="the dispatch to reach the first agent")
    wait_for(lambda: proxy.held, 5, what="the scheduler's status poll to be held")
    proxy.refuse()  # the re-sends find nobody listening: certainly not delivered, but the first one was
    waiting = wait_for(
        lambda: [r for r in run_rows(state_dir, "once") if r["state"] == "waiting" or r["agent"] == "second"], 10
    )[0]
    assert waiting["agent"] == "first" and "may have arrived" in waiting["reason"], waiting
    proxy.mode = "pass"
    proxy.release.set()
    proxy.start()
    wait_state(state_dir, "once", {"running"})
    gate.touch()
    done = wait_state(state_dir, "once", {"succeeded"})
    assert done["id"] == run["id"] and done["agent"] == "first"
    assert out.read_text().split() == ["O"] and agent_journal(second, run["id"]) is None


def test_kill_of_a_run_whose_dispatch_may_have_arrived_reaches_the_agent(
    start_up, agents, proxies, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    agent = agents("a1").start()
    proxy = proxies(agent.url)
    write_settings(jobs_dir, {"a1": {"url": proxy.url}}, scheduler='agent_wait_limit = "30s"\nkill_grace = "1s"')
    out, gate = tmp_path / "out", tmp_path / "gate"
    write_job(jobs_dir, "victim", 'agent = "a1"\n' + gated(gate, out, "V"))
    start_up().wait_active()
    wait_for(lambda: agent_row(state_dir, "a1").get("up") == 1, 5)
    proxy.mode = "drop-runs"
    vigil(state_dir, "run", "victim")
    run = wait_state(state_dir, "victim", {"launching"})
    wait_for(lambda: agent_journal(agent, run["id"]), 5, what="the dispatch to reach the agent")
    wait_for(lambda: proxy.held, 5, what="the scheduler's status poll to be held")
    proxy.refuse()
    waiting = wait_state(state_dir, "victim", {"waiting"})
    assert "may have arrived" in waiting["reason"], waiting
    vigil(state_dir, "kill", str(run["id"]))  # the job is running on the agent: it must be killed there
    settle(0.5)
    assert run_rows(state_dir, "victim")[-1]["state"] == "waiting"  # not "cancelled before it started"
    proxy.mode = "pass"
    proxy.release.set()
    proxy.start()
    killed = wait_state(state_dir, "victim", {"killed"})
    assert killed["id"] == run["id"] and killed["reason"] == "killed by operator"
    assert (agent_journal(agent, run["id"]) or {}).get("killed") == "kill"
    gate.touch()
    settle(0.3)
    assert not out.exists()


def test_jobs_that_cannot_start_fail_on_an_agent_as_they_do_locally(
    start_up, agents, state_dir: Path, jobs_dir: Path
) -> None:
    # Review 9, #8: the same job, run locally and on a real `vigil agent`, ends the same way.
    agent = agents("a2", token=TOKEN).start()
    write_settings(jobs_dir, {"a2": {"url": agent.url, "token_file": str(agent.token_file)}})
    cases = {"nobin": 'command = ["/nonexistent/bin"]\n', "nodir": 'command = "true"\nworkdir = "/nonexistent/d"\n'}
    for name, lines in cases.items():
        write_job(jobs_dir, f"{name}-remote", 'agent = "a2"\n' + lines)
        write_job(jobs_dir, f"{name}-local", lines)
    up = start_up()
    up.wait_active()
    for name in cases:
        for where in ("remote", "local"):
            vigil(state_dir, "run", f"{name}-{where}")
    for name in cases:
        local = wait_state(state_dir, f"{name}-local", {"failed", "unknown"})
        remote = wait_state(state_dir, f"{name}-remote", {"failed", "unknown"})
        assert local["state"] == remote["state"] == "failed", (local, remote)
        assert local["exit_code"] is None and remote["exit_code"] is None, (local, remote)
        assert local["reason"].startswith("could not start: "), local
        assert remote["reason"] == f"agent a2: {local['reason']}", (local, remote)
