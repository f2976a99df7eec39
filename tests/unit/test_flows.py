"""Flows on a fake clock: conditions, fan-in within one flow, skipped steps, outputs, reruns, takeover.

No store, no processes, no sleep: the planner's batches are read as the loop would commit them.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest

from engine.errors import VigilError
from engine.exec.port import RunInfo, ShimExit
from engine.model import AfterEdge, Condition, Overlap, Run, RunState
from engine.run.planner import Batch, Trigger
from engine.schedule import flows
from engine.store import intents as i
from tests.helpers import write_job
from tests.unit.test_planner import Plan, job


def edges(*pairs: tuple[str, str]) -> dict[str, object]:
    """`after` given as tables: the JobSpec fields the job folder builds from them."""
    return {"after": tuple(name for name, _ in pairs), "after_on": tuple(Condition(on) for _, on in pairs)}


def start(p: Plan, name: str) -> RunInfo:
    """A manual fire of `name` (a root: it starts a flow if others depend on it)."""
    batch = Batch()
    info = p.planner.fire(batch, p.planner.jobs[name], p.clock.now(), Trigger.MANUAL, p.clock.now())
    assert info.state is RunState.LAUNCHING
    return info


def end(p: Plan, run_id: int, exit_code: int = 0, output: bytes | None = None) -> Batch:
    p.clock.advance(1)
    batch = Batch()
    result = ShimExit(run_id, exit_code, None, None, None, output=output)
    p.planner.handle_finished([result], p.clock.now(), batch)
    return batch


def by_job(batch: Batch) -> dict[str, i.NewRun]:
    return {row.job: row for row in batch.rows}


# ---------------------------------------------------------------- conditions


def condition_flow() -> Plan:
    p = Plan()
    p.scan(
        job("root"),
        job("ok", after=("root",)),
        job("alert", **edges(("root", "failure"))),
        job("cleanup", **edges(("root", "done"))),
    )
    return p


def test_a_failure_starts_the_failure_branch_and_skips_the_success_branch_saying_why() -> None:
    p = condition_flow()
    root = start(p, "root")
    rows = by_job(end(p, root.id, exit_code=1))
    assert set(rows) == {"ok", "alert", "cleanup"}
    assert (rows["ok"].state, rows["ok"].reason) == (
        RunState.SKIPPED,
        f"after: root failed (run {root.id}); this step needs success",
    )
    assert (rows["alert"].state, rows["alert"].reason) == (RunState.LAUNCHING, f"after: root failed (run {root.id})")
    assert rows["cleanup"].state is RunState.LAUNCHING
    assert {row.flow_id for row in rows.values()} == {root.id}  # all steps of the flow the root started
    assert all(row.trigger == Trigger.AFTER for row in rows.values())


def test_a_success_skips_the_failure_branch() -> None:
    p = condition_flow()
    root = start(p, "root")
    rows = by_job(end(p, root.id))
    assert rows["ok"].state is RunState.LAUNCHING
    assert (rows["alert"].state, rows["alert"].reason) == (
        RunState.SKIPPED,
        f"after: root succeeded (run {root.id}); this step needs on = failure",
    )
    assert rows["cleanup"].state is RunState.LAUNCHING


@pytest.mark.parametrize(
    ("state", "success", "failure", "done"),
    [
        (RunState.SUCCEEDED, True, False, True),
        (RunState.FAILED, False, True, True),
        (RunState.TIMED_OUT, False, True, True),
        (RunState.KILLED, False, True, True),
        (RunState.UNKNOWN, False, True, True),
        (RunState.SKIPPED, False, False, True),
    ],
)
def test_each_condition_takes_its_ends(state: RunState, success: bool, failure: bool, done: bool) -> None:
    assert [Condition(on).met_by(state) for on in ("success", "failure", "done")] == [success, failure, done]


def test_a_failure_that_is_retried_is_not_an_end_of_the_step_yet() -> None:
    p = Plan()
    p.scan(job("root", retries=1, retry_delay=5.0), job("alert", **edges(("root", "failure"))))
    root = start(p, "root")
    first = end(p, root.id, exit_code=1)
    (retry,) = first.rows
    assert (retry.job, retry.attempt, retry.flow_id) == ("root", 2, root.id)  # the retry keeps the flow
    p.tick(5)
    rows = by_job(end(p, retry.id, exit_code=1))
    assert rows["alert"].reason == f"after: root failed (run {retry.id})"


# ---------------------------------------------------------------- fan-in within one flow


def fan_in() -> Plan:
    """Two flows may overlap: `overlap = "allow"` (with the default "skip", a step still running
    from the flow before would skip the later flow's step, and so the rest of that flow)."""
    p = Plan()
    allow = Overlap.ALLOW
    p.scan(
        job("extract", overlap=allow),
        job("clean", after=("extract",), overlap=allow),
        job("stage", after=("extract",), overlap=allow),
        job("transform", after=("clean", "stage"), overlap=allow),
    )
    return p


def test_a_fan_in_step_waits_for_its_upstreams_in_its_own_flow() -> None:
    p = fan_in()
    extract1 = start(p, "extract")
    flow1 = by_job(end(p, extract1.id))
    assert end(p, flow1["stage"].id).rows == []  # transform waits for clean of flow 1
    extract2 = start(p, "extract")
    flow2 = by_job(end(p, extract2.id))
    assert {row.flow_id for row in flow2.values()} == {extract2.id}
    # clean of flow 2 succeeds: stage of flow 1 must not stand in for stage of flow 2.
    assert end(p, flow2["clean"].id).rows == []
    assert p.planner.flow_waiting_for(dataclasses.replace(flow_run(flow2["clean"]), job="transform")) == [
        ("stage", Condition.SUCCESS)
    ]
    (transform1,) = end(p, flow1["clean"].id).rows
    assert (transform1.job, transform1.flow_id) == ("transform", extract1.id)
    assert transform1.reason == (
        f"after: clean succeeded (run {flow1['clean'].id}), stage succeeded (run {flow1['stage'].id})"
    )
    (transform2,) = end(p, flow2["stage"].id).rows
    assert (transform2.flow_id, transform2.reason) == (
        extract2.id,
        f"after: clean succeeded (run {flow2['clean'].id}), stage succeeded (run {flow2['stage'].id})",
    )


def test_a_fan_in_step_is_skipped_once_one_upstream_of_its_flow_failed() -> None:
    p = fan_in()
    extract = start(p, "extract")
    steps = by_job(end(p, extract.id))
    (transform,) = end(p, steps["stage"].id, exit_code=2).rows
    assert (transform.state, transform.reason) == (
        RunState.SKIPPED,
        f"after: stage failed (run {steps['stage'].id}); this step needs success",
    )
    assert end(p, steps["clean"].id).rows == []  # told once: it already has its row in this flow
    assert p.planner.flows == {}  # nothing open: the flow is over


def flow_run(row: i.NewRun) -> Run:
    return Run(
        id=row.id,
        job=row.job,
        scheduled_for=row.scheduled_for,
        attempt=row.attempt,
        state=row.state,
        trigger=row.trigger,
        epoch=1,
        created_at=row.created_at,
        flow_id=row.flow_id,
    )


# ---------------------------------------------------------------- skipped steps propagate


def test_a_skipped_step_skips_what_needs_it_and_a_done_step_still_runs() -> None:
    p = Plan()
    p.scan(
        job("a"),
        job("b", after=("a",)),
        job("c", after=("b",)),
        job("report", **edges(("c", "done"))),
    )
    a = start(p, "a")
    rows = by_job(end(p, a.id, exit_code=1))
    assert [(name, rows[name].state) for name in ("b", "c", "report")] == [
        ("b", RunState.SKIPPED),
        ("c", RunState.SKIPPED),
        ("report", RunState.LAUNCHING),
    ]
    assert rows["c"].reason == f"after: b skipped (run {rows['b'].id}); this step needs success"
    assert rows["report"].reason == f"after: c skipped (run {rows['c'].id})"


def test_a_job_with_its_own_schedule_is_no_step_and_keeps_its_rule() -> None:
    p = Plan()
    p.scan(job("up"), job("nightly", every=3600.0, after=("up",)))
    up = start(p, "up")
    assert up.flow_id is None  # nothing after it is a step: no flow
    assert end(p, up.id).rows == []  # the scheduled job checks `after` at its own fire


# ---------------------------------------------------------------- outputs


def test_outputs_go_to_later_steps_the_later_ended_upstream_winning() -> None:
    p = Plan()
    p.scan(
        job("root"),
        job("left", after=("root",)),
        job("right", after=("root",)),
        job("join", after=("right", "left")),
        job("other"),
    )
    root = start(p, "root")
    steps = by_job(end(p, root.id, output=b"DAY=2026-12-02\nWHO=root\n"))
    end(p, steps["left"].id, output=b"WHO=left\nROWS=10\n")
    (join,) = end(p, steps["right"].id, output=b"# a comment\n\nWHO=right\n").rows
    info = p.planner.table.get(join.id)
    assert info is not None
    # right ended after left: its WHO wins, whatever the order of `after`.
    assert p.planner.launch_env(info) == {"DAY": "2026-12-02", "WHO": "right", "ROWS": "10"}
    other = start(p, "other")
    assert p.planner.launch_env(other) == {}  # in no flow


def test_outputs_are_stored_with_the_run_end_and_problems_go_to_its_reason() -> None:
    p = Plan()
    p.scan(job("root"), job("next", after=("root",)))
    root = start(p, "root")
    ended = end(p, root.id, output=b"OK=1\nnot a pair\n2BAD=x\n")
    (finished,) = [x for x in ended.intents if isinstance(x, i.RunFinished)]
    assert finished.outputs == (("OK", "1"),)
    assert finished.reason == "outputs: lines 2, 3 not NAME=value (ignored)"


def test_outputs_are_bounded_and_the_excess_is_reported() -> None:
    many = b"".join(b"N%d=v\n" % n for n in range(105))
    parsed = flows.parse_outputs(many)
    assert len(parsed.pairs) == flows.MAX_OUTPUT_NAMES
    assert parsed.problems == ("more than 100 names; not passed on: N100, N101, N102, N103, N104",)
    big = b"BIG=" + b"x" * flows.MAX_OUTPUT_BYTES + b"\nLATE=1\n"
    parsed = flows.parse_outputs(big[: flows.MAX_OUTPUT_BYTES], truncated=True)
    assert parsed.pairs == ()
    assert parsed.note() == "outputs: the file is larger than 64 KiB; the rest was not read"
    # A name set twice keeps its last value; `=` in a value is kept.
    assert flows.parse_outputs(b"A=1\nB=x=y\nA=2\n").pairs == (("B", "x=y"), ("A", "2"))


# ---------------------------------------------------------------- rerun from failed, takeover


def as_runs(batch_rows: list[i.NewRun], ends: dict[int, tuple[RunState, datetime]]) -> list[Run]:
    runs = []
    for row in batch_rows:
        state, ended = ends.get(row.id, (row.state, None)) if not row.state.terminal else (row.state, row.ended_at)
        run = dataclasses.replace(flow_run(row), state=state, ended_at=ended)
        runs.append(run)
    return runs


def test_rerun_from_failed_reruns_the_failed_step_and_tells_what_follows_it_again() -> None:
    p = Plan()
    p.scan(job("a"), job("b", after=("a",)), job("c", after=("b",)), job("alert", **edges(("b", "failure"))))
    a = start(p, "a")
    first = end(p, a.id)
    (b,) = first.rows
    second = end(p, b.id, exit_code=1)
    steps = by_job(second)
    assert steps["c"].state is RunState.SKIPPED
    end(p, steps["alert"].id)
    assert p.planner.flows == {}
    rows = [
        i.NewRun(a.id, "a", a.scheduled_for, 1, RunState.LAUNCHING, Trigger.MANUAL, a.scheduled_for, flow_id=a.id),
        b,
        *second.rows,
    ]
    t = p.clock.now()
    ledger = as_runs(
        rows, {a.id: (RunState.SUCCEEDED, t), b.id: (RunState.FAILED, t), steps["alert"].id: (RunState.SUCCEEDED, t)}
    )
    with pytest.raises(VigilError, match="still running"):
        p.planner.rerun_flow(
            a.id, [dataclasses.replace(ledger[0], state=RunState.RUNNING), *ledger[1:]], "ann", t, Batch()
        )
    with pytest.raises(VigilError, match="no failed step"):
        p.planner.rerun_flow(a.id, ledger[:1], "ann", t, Batch())
    batch = Batch()
    (rerun_id,) = p.planner.rerun_flow(a.id, ledger, "ann", t, batch)
    (again,) = batch.rows
    assert (again.job, again.attempt, again.scheduled_for, again.flow_id, again.trigger) == (
        "b",
        2,
        b.scheduled_for,
        a.id,
        Trigger.RERUN,
    )
    assert again.reason == f"rerun of run {b.id} (flow {a.id}, from failed) by ann"
    after = by_job(end(p, rerun_id))
    # c gets a new attempt of its skipped row; alert is told again and skipped now.
    assert (after["c"].state, after["c"].attempt, after["c"].flow_id) == (RunState.LAUNCHING, 2, a.id)
    assert (after["alert"].state, after["alert"].attempt) == (RunState.SKIPPED, 2)


def test_a_new_active_continues_a_flow_from_the_ledger_and_starts_the_join_once() -> None:
    p = fan_in()
    extract = start(p, "extract")
    steps = by_job(end(p, extract.id, output=b"DAY=1\n"))
    t = p.clock.now()
    ledger = [
        dataclasses.replace(
            flow_run(
                i.NewRun(
                    extract.id, "extract", extract.scheduled_for, 1, RunState.SUCCEEDED, "manual", t, flow_id=extract.id
                )
            ),
            ended_at=t,
            outputs=(("DAY", "1"),),
        ),
        dataclasses.replace(flow_run(steps["clean"]), state=RunState.SUCCEEDED, ended_at=t),
        flow_run(steps["stage"]),  # still running when the active died
    ]
    new = fan_in()  # the new active: a planner that knows only the ledger
    new.planner.next_id = 10
    new.planner.load_flows(ledger)
    stage = new.planner.table.track  # the reconciler tracks the open run again
    info = RunInfo(
        steps["stage"].id, "stage", steps["stage"].scheduled_for, 1, "after", RunState.RUNNING, flow_id=extract.id
    )
    stage(info, active=True)
    (join,) = end(new, info.id).rows
    assert (join.job, join.flow_id) == ("transform", extract.id)
    tracked = new.planner.table.get(join.id)
    assert tracked is not None and new.planner.launch_env(tracked) == {"DAY": "1"}
    assert end(new, steps["clean"].id).rows == []  # not tracked: nothing more


# ---------------------------------------------------------------- the job files


def test_after_tables_load_with_their_conditions(tmp_path: Path) -> None:
    from engine.config import load_folder

    write_job(tmp_path, "etl/extract", 'command = "true"')
    write_job(tmp_path, "etl/load", 'command = "true"\nafter = ["etl/extract"]')
    write_job(
        tmp_path,
        "etl/alert",
        'command = "true"\nafter = [{ job = "etl/load", on = "failure" }, { job = "etl/extract" }]',
    )
    result = load_folder(tmp_path)
    assert result.errors == []
    alert = result.jobs["etl/alert"]
    assert alert.after == ("etl/load", "etl/extract")
    assert alert.after_edges == (AfterEdge("etl/load", Condition.FAILURE), AfterEdge("etl/extract"))
    assert alert.schedule_text == "after etl/load(failure),etl/extract"
    assert result.jobs["etl/load"].after_on == ()


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        ('[{ job = "up", on = "sometimes" }]', "item 1 ('up'): `on` must be one of 'success', 'failure', 'done'"),
        ('[{ on = "failure" }]', "item 1: missing `job`"),
        ('[{ job = "up", when = "x" }]', "item 1: unknown key 'when'"),
        ('[{ job = "nope", on = "done" }]', "job 'nope' does not exist"),
    ],
)
def test_bad_after_tables_are_clear_errors(tmp_path: Path, after: str, reason: str) -> None:
    from engine.config import load_folder

    write_job(tmp_path, "up", 'command = "true"')
    write_job(tmp_path, "down", f'command = "true"\nafter = {after}')
    result = load_folder(tmp_path)
    assert "down" not in result.jobs and "up" in result.jobs  # a bad file never stops good ones
    (error,) = result.errors
    assert "down.toml" in error.format() and "after" in error.format() and reason in error.format()


def test_a_cycle_through_a_failure_edge_is_an_error(tmp_path: Path) -> None:
    from engine.config import load_folder

    write_job(tmp_path, "a", 'command = "true"\nafter = [{ job = "b", on = "failure" }]')
    write_job(tmp_path, "b", 'command = "true"\nafter = ["a"]')
    result = load_folder(tmp_path)
    assert result.jobs == {}
    assert any("cycle" in error.format() for error in result.errors)


def test_a_plain_after_name_means_success() -> None:
    assert job("down", after=("up",)).after_edges == (AfterEdge("up", Condition.SUCCESS),)


def test_a_step_skipped_by_its_overlap_policy_ends_its_branch_of_the_flow() -> None:
    p = Plan()
    p.scan(job("root", overlap=Overlap.ALLOW), job("step", after=("root",)), job("last", after=("step",)))
    first = start(p, "root")
    (busy,) = end(p, first.id).rows  # `step` of the first flow is still running
    second = start(p, "root")
    rows = by_job(end(p, second.id))
    assert (rows["step"].state, rows["step"].reason) == (RunState.SKIPPED, f"overlap=skip: run {busy.id} still running")
    assert (rows["last"].state, rows["last"].reason) == (
        RunState.SKIPPED,
        f"after: step skipped (run {rows['step'].id}); this step needs success",
    )
    assert second.id not in p.planner.flows  # nothing of it is open: it has ended


def test_the_sample_flow_loads_with_its_failure_branch() -> None:
    from engine.config import load_folder

    result = load_folder(Path(__file__).resolve().parents[2] / "sample_jobs")
    assert result.errors == []
    assert result.jobs["flow/quarantine"].after_edges == (AfterEdge("flow/validate", Condition.FAILURE),)
    assert {edge.on for edge in result.jobs["flow/cleanup"].after_edges} == {Condition.DONE}
