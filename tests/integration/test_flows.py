"""Flows end to end: real `vigil up`, real shims, the real SQLite ledger.

A flow with a failure branch and outputs; `vigil rerun --flow ID --from-failed`; the active SIGKILLed
mid-flow and a new `vigil up` finishing the flow exactly once.
"""

from __future__ import annotations

from pathlib import Path

from engine.api import StateReader
from engine.paths import StatePaths
from tests.helpers import runs, vigil, vigil_json, wait_for, write_job

OPEN = ("pending", "waiting", "launching", "running")


def flow_ended(state: Path, flow_id: int, steps: int) -> list[dict]:
    found = runs(state, "--flow", str(flow_id))
    latest: dict[str, dict] = {}
    for run in found:
        if run["job"] not in latest or run["id"] > latest[run["job"]]["id"]:
            latest[run["job"]] = run
    if len(latest) < steps or any(run["state"] in OPEN for run in latest.values()):
        return []
    return found


def etl_flow(jobs: Path, gate: Path) -> None:
    write_job(
        jobs,
        "etl/extract",
        "command = \"echo ROWS=5 >> $VIGIL_OUTPUT; printf 'DAY=2026-12-02\\nWHO=extract\\n' >> $VIGIL_OUTPUT\"\n",
    )
    # Fails until the gate exists; its own env wins over the flow's DAY.
    write_job(
        jobs,
        "etl/load",
        'after = ["etl/extract"]\n'
        f'command = "echo rows=$ROWS day=$DAY who=$WHO; echo WHO=load >> $VIGIL_OUTPUT; test -e {gate}"\n'
        '[env]\nDAY = "mine"\n',
    )
    write_job(
        jobs,
        "etl/alert",
        'after = [{ job = "etl/load", on = "failure" }]\ncommand = "echo alert rows=$ROWS who=$WHO"\n',
    )
    write_job(jobs, "etl/report", 'after = ["etl/load"]\ncommand = "echo report who=$WHO"\n')


def test_a_flow_takes_its_failure_branch_and_passes_outputs_on(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    etl_flow(jobs_dir, tmp_path / "gate")
    start_up().wait_active()
    root = int(vigil(state_dir, "run", "etl/extract").stdout.split()[2])
    done = wait_for(lambda: flow_ended(state_dir, root, 4), 15, what="the flow to end")
    steps = {run["job"]: run for run in done}
    assert {run["flow_id"] for run in done} == {root}
    assert steps["etl/extract"]["outputs"] == {"ROWS": "5", "DAY": "2026-12-02", "WHO": "extract"}
    assert (steps["etl/load"]["state"], steps["etl/load"]["trigger"]) == ("failed", "after")
    assert "rows=5 day=mine who=extract" in vigil(state_dir, "logs", str(steps["etl/load"]["id"])).stdout
    assert steps["etl/alert"]["state"] == "succeeded"
    # The failed step's own output still reaches the failure branch.
    assert "alert rows=5 who=load" in vigil(state_dir, "logs", str(steps["etl/alert"]["id"])).stdout
    assert (steps["etl/report"]["state"], steps["etl/report"]["reason"]) == (
        "skipped",
        f"after: etl/load failed (run {steps['etl/load']['id']}); this step needs success",
    )
    (flow,) = vigil_json(state_dir, "flows", "--job", "etl/report")
    assert (flow["id"], flow["root_job"], flow["state"]) == (root, "etl/extract", "failed")
    assert flow["steps"] == {"failed": 1, "skipped": 1, "succeeded": 2}
    header, line = vigil(state_dir, "flows").stdout.splitlines()[:2]
    assert header.split()[:3] == ["FLOW", "ROOT", "JOB"]
    assert line.split()[:3] == [str(root), "etl/extract", "failed"]
    assert line.endswith("1 failed, 1 skipped, 2 succeeded")


def test_rerun_from_failed_reruns_the_failed_step_and_what_follows_in_the_same_flow(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    etl_flow(jobs_dir, gate)
    start_up().wait_active()
    root = int(vigil(state_dir, "run", "etl/extract").stdout.split()[2])
    first = wait_for(lambda: flow_ended(state_dir, root, 4), 15, what="the flow to end")
    load = next(run for run in first if run["job"] == "etl/load")
    gate.touch()
    out = vigil(state_dir, "rerun", "--flow", str(root), "--from-failed").stdout
    assert out.startswith(f"flow {root}: failed steps rerun as run ")

    def rerun_done() -> list[dict]:
        found = flow_ended(state_dir, root, 4)
        return found if len(found) >= 7 else []

    again = wait_for(rerun_done, 15, what="the rerun's steps to end")
    newest = {}
    for run in again:
        newest[run["job"]] = run if run["id"] > newest.get(run["job"], {"id": 0})["id"] else newest[run["job"]]
    assert {run["flow_id"] for run in again} == {root}
    assert (newest["etl/load"]["state"], newest["etl/load"]["attempt"], newest["etl/load"]["trigger"]) == (
        "succeeded",
        2,
        "rerun",
    )
    assert newest["etl/load"]["scheduled_for"] == load["scheduled_for"]  # a new attempt of that step
    assert (newest["etl/report"]["state"], newest["etl/report"]["attempt"]) == ("succeeded", 2)
    assert newest["etl/alert"]["state"] == "skipped"  # told again: load succeeded this time
    assert newest["etl/extract"]["id"] == root  # not rerun: it had succeeded
    assert "report who=load" in vigil(state_dir, "logs", str(newest["etl/report"]["id"])).stdout
    (flow,) = vigil_json(state_dir, "flows")
    assert flow["state"] == "succeeded"
    # Audited like a rerun; a finished flow without failures is refused with one line.
    reader = StateReader(StatePaths(state_dir))
    actions = [(a.action, a.target, a.result) for a in reader.audit() if a.action == "rerun_flow"]
    reader.close()
    assert actions == [("rerun_flow", f"flow {root}", f"reran as {newest['etl/load']['id']}")]
    refused = vigil(state_dir, "rerun", "--flow", str(root), "--from-failed", check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == f"vigil: flow {root} has no failed step to rerun"
    missing = vigil(state_dir, "rerun", "--flow", "999999", "--from-failed", check=False)
    assert missing.returncode == 3 and "no flow with id 999999" in missing.stderr


def test_the_standby_finishes_a_flow_after_a_sigkill_of_the_active_and_its_join_runs_once(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    write_job(jobs_dir, "root", 'command = "echo DAY=1 >> $VIGIL_OUTPUT"\n')
    for name in ("left", "right"):
        write_job(
            jobs_dir,
            name,
            f'after = ["root"]\ncommand = "echo {name.upper()}=done >> $VIGIL_OUTPUT; '
            f'while [ ! -e {gate} ]; do sleep 0.05; done"\n',
        )
    write_job(jobs_dir, "join", 'after = ["left", "right"]\ncommand = "echo join $DAY $LEFT $RIGHT"\n')
    first = start_up()
    first.wait_active()
    second = start_up()  # a standby
    wait_for(lambda: second.pid in {s["pid"] for s in vigil_json(state_dir, "status")["standbys"]}, 5)
    root = int(vigil(state_dir, "run", "root").stdout.split()[2])
    wait_for(
        lambda: len([r for r in runs(state_dir, "--flow", str(root)) if r["state"] == "running"]) == 2,
        10,
        what="left and right to run",
    )
    first.kill9()
    gate.touch()  # both end around the failover
    second.wait_active()  # the standby takes over and finishes the flow
    done = wait_for(lambda: flow_ended(state_dir, root, 4), 15, what="the flow to end after the takeover")
    joins = [run for run in done if run["job"] == "join"]
    assert len(joins) == 1 and joins[0]["state"] == "succeeded" and joins[0]["flow_id"] == root
    assert "join 1 done done" in vigil(state_dir, "logs", str(joins[0]["id"])).stdout
    assert len(done) == 4  # every step once
