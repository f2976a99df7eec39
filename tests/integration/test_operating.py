"""Issue 11's "done when", end to end: a crontab copied in, its failure mailed by a local SMTP server,
`/metrics` scraped; and the operator's outbox commands (`vigil notify test`, `vigil notifications`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from engine.paths import os_user
from tests.helpers import VIGIL, vigil, vigil_json, wait_for
from tests.integration.test_http_listener import Node, nodes  # noqa: F401 (the fixture)
from tests.integration.test_notify_delivery import SmtpSink, smtp  # noqa: F401 (the fixture)


def test_a_crontab_moved_in_mails_its_failure_and_is_counted_in_metrics(
    nodes,  # noqa: F811
    smtp: SmtpSink,  # noqa: F811
    tmp_path: Path,
) -> None:
    jobs, state = tmp_path / "jobs", tmp_path / "state"
    jobs.mkdir()
    (jobs / "vigil.toml").write_text(f'[scheduler]\nnotify = ["mail"]\n[notify.mail]\nurl = "{smtp.url()}"\n')
    imported = subprocess.run(
        [*VIGIL, "import-crontab", "-", "--jobs", str(jobs), "--timezone", "UTC"],
        input="MAILTO=ops@example.net\n17 3 * * * echo checking disks; exit 4\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert imported.returncode == 0, imported.stderr
    job = f"crontab-{os_user()}/echo"
    assert vigil(state, "validate", str(jobs)).returncode == 0
    node = nodes(state, jobs)
    wait_for(lambda: node.health()["role"] == "active", 10, what="the node to be active")
    vigil(state, "run", job)
    wait_for(lambda: smtp.messages, 15, what="the failure mail")
    (mail,) = smtp.messages
    assert mail["Subject"].startswith(f"FAILED {job} (run ") and "exit 4" in mail["Subject"]
    (plain,) = [part for part in mail.walk() if part.get_content_type() == "text/plain"]
    assert "checking disks" in plain.get_payload(decode=True).decode()  # the log tail

    def counted() -> bool:
        samples = node.metrics()
        return (
            samples.get(("vigil_runs_total", (("job", job), ("state", "failed")))) == 1.0
            and samples.get(("vigil_notifications_total", (("channel", "mail"), ("outcome", "sent")))) == 1.0
        )

    wait_for(counted, 10, what="the failed run and its mail in /metrics")


def test_notify_test_sends_through_a_channel_and_notifications_lists_the_outbox(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    got = tmp_path / "got.jsonl"
    (jobs_dir / "vigil.toml").write_text(
        f"[notify.file]\ncommand = \"cat >> '{got}'\"\n"
        '[notify.broken]\ncommand = "echo refused >&2; exit 1"\n'
        '[notify.typo]\nurl = "foo://bar"\n'
        '[scheduler]\nnotify = ["file"]\n'
    )
    (jobs_dir / "fails.toml").write_text('command = "exit 2"\n')
    sent = vigil(state_dir, "notify", "test", "file", jobs=jobs_dir)
    assert sent.returncode == 0 and sent.stdout.startswith("delivered to file (event id test:file:")
    (doc,) = [json.loads(line) for line in got.read_text().splitlines()]
    assert doc["event"] == "test" and doc["id"] in sent.stdout
    refused = vigil(state_dir, "notify", "test", "broken", jobs=jobs_dir, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("vigil: channel broken: not delivered")
    assert "refused" in refused.stderr and len(refused.stderr.splitlines()) == 1
    typo = vigil(state_dir, "notify", "test", "typo", jobs=jobs_dir, check=False)
    # Apprise's own log line ("Unparseable URL") stays off the terminal: one `vigil:` line.
    assert typo.returncode == 1 and typo.stderr.count("\n") == 1 and typo.stderr.startswith("vigil: channel typo")
    unknown = vigil(state_dir, "notify", "test", "nope", jobs=jobs_dir, check=False)
    assert unknown.returncode != 0 and unknown.stderr.startswith("vigil: ") and "Traceback" not in unknown.stderr

    start_up().wait_active()
    vigil(state_dir, "run", "fails")
    rows = wait_for(
        lambda: [r for r in vigil_json(state_dir, "notifications") if r["state"] == "sent"] or None,
        15,
        what="the failure delivered",
    )
    (row,) = rows
    assert (row["event"], row["job"], row["channel"], row["attempts"]) == ("failed", "fails", "file", 1)
    assert row["event_id"] == f"failed:run:{row['run_id']}"
    assert vigil_json(state_dir, "notifications", "--status", "pending") == []
    table = vigil(state_dir, "notifications").stdout
    assert row["event_id"] in table and "sent" in table
    bad = vigil(state_dir, "notifications", "--status", "nope", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("vigil: --status 'nope'")
