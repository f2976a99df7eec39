"""Shared resources with real processes: a limit-1 resource shared by two jobs is never held twice,
also across SIGKILLs of the active, and no run is left pending; `vigil hold` / `release`; status."""

from __future__ import annotations

import itertools
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

from tests.helpers import runs, vigil, vigil_json, wait_for, write_job
from tests.integration.test_ha import FAST_HA, active_pid, no_duplicates

SLOT = "\n[resources.slot]\nlimit = 1\n"


def recorder(log: Path, seconds: float) -> str:
    """A command that appends its start and end (wall time, run id) to `log`: one atomic line each."""
    line = f'printf "%s %s %s\\n" {{}} "$(date +%s.%N)" "$VIGIL_RUN_ID" >> {log}'
    return f"{line.format('start')}; sleep {seconds}; {line.format('end')}"


def intervals(log: Path) -> dict[int, list[tuple[str, float]]]:
    seen: dict[int, list[tuple[str, float]]] = {}
    for text in log.read_text().splitlines():
        what, at, run_id = text.split()
        seen.setdefault(int(run_id), []).append((what, float(at)))
    return seen


def assert_never_together(log: Path) -> int:
    """No two recorded runs overlap; each run started once. How many ran."""
    seen = intervals(log)
    starts = Counter(run_id for run_id, marks in seen.items() for what, _ in marks if what == "start")
    assert [run_id for run_id, n in starts.items() if n > 1] == []  # no run started twice
    spans = sorted(
        (dict(marks)["start"], dict(marks).get("end", float("inf")), run_id) for run_id, marks in seen.items()
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        assert start >= end, f"runs {first} and {second} held the limit-1 resource at once"
    return len(spans)


def test_a_limit_one_resource_is_never_held_twice_across_sigkills_of_the_active(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans"
    (jobs_dir / "vigil.toml").write_text(FAST_HA + SLOT)
    for name, priority in (("one", 0), ("two", 1)):
        body = f'every = "1s"\nlocks = ["slot"]\npriority = {priority}\ncommand = \'{recorder(log, 0.6)}\'\n'
        write_job(jobs_dir, name, body)
    rng = random.Random(13)
    ups = [start_up(), start_up()]
    wait_for(lambda: active_pid(state_dir) is not None, 5)
    reasons: set[str] = set()
    for _ in range(3):
        time.sleep(rng.uniform(0.3, 1.5))  # mid-run, mid-launch, while one waits
        reasons |= {r["reason"] for r in runs(state_dir, "--status", "pending")}
        pid = active_pid(state_dir)
        victim = next((up for up in ups if up.pid == pid), None)
        if victim is None:
            continue
        victim.kill9()
        ups.append(start_up())  # a restarted `vigil up` joins as the standby
        wait_for(lambda v=victim: active_pid(state_dir) not in (None, v.pid), 5, what="a takeover")

    def waiting_reasons() -> set[str]:
        reasons.update(r["reason"] for r in runs(state_dir, "--status", "pending"))
        return {text for text in reasons if text.startswith("waiting for slot: 1/1 held by run ")}

    wait_for(waiting_reasons, 5, what="a run pending for the resource, saying who holds it")
    # Stop the fires; every run still pending gets the resource in its turn and runs, once.
    vigil(state_dir, "pause", "one")
    vigil(state_dir, "pause", "two")
    wait_for(lambda: not [r for r in runs(state_dir) if r["state"] in ("pending", "launching", "running")], 10,
             what="no run left pending or running")  # fmt: skip
    ran = assert_never_together(log)
    assert ran >= 4
    no_duplicates(state_dir)
    ledger = [r for r in runs(state_dir) if r["state"] == "succeeded"]
    assert {r["id"] for r in ledger} == set(intervals(log))  # every run recorded as run ran, and only those


def test_hold_keeps_new_runs_pending_and_release_starts_them_and_status_shows_the_use(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    (jobs_dir / "vigil.toml").write_text("[scheduler]\nmax_running = 4\n" + SLOT)
    write_job(jobs_dir, "long", f'locks = ["slot"]\ncommand = "while [ ! -e {gate} ]; do sleep 0.05; done"\n')
    write_job(jobs_dir, "next", 'locks = { slot = 1 }\ncommand = "true"\n')
    up = start_up()
    up.wait_active()
    assert vigil(state_dir, "hold", "next").stdout.startswith("next held")
    listed = {doc["name"]: doc for doc in vigil_json(state_dir, "jobs", jobs=jobs_dir)}
    assert (listed["next"]["status"], listed["next"]["held"], listed["next"]["locks"]) == ("held", True, {"slot": 1})
    vigil(state_dir, "run", "next")
    (held,) = wait_for(lambda: runs(state_dir, "--job", "next"), 5)
    assert (held["state"], held["reason"]) == ("pending", "job held")
    vigil(state_dir, "run", "long")
    (running,) = wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)
    assert vigil(state_dir, "release", "next").stdout.strip() == "next released: 1 waiting runs may start now"

    def reason() -> str:
        (run,) = runs(state_dir, "--job", "next")
        return run["reason"]

    wait_for(lambda: reason() == f"waiting for slot: 1/1 held by run {running['id']}", 5, what="the lock reason")
    status = vigil_json(state_dir, "status")
    assert status["max_running"] == 4
    assert status["resources"] == [
        {"name": "slot", "limit": 1, "used": 1, "holders": [running["id"]], "waiting": 1},
        {"name": "max_running", "limit": 4, "used": 1, "holders": [running["id"]], "waiting": 1},
    ]
    assert f"resource: slot 1/1 held by runs {running['id']}, 1 waiting" in vigil(state_dir, "status").stdout
    gate.touch()
    wait_for(lambda: runs(state_dir, "--job", "next")[0]["state"] == "succeeded", 5, what="next to run")
    with sqlite3.connect(state_dir / "vigil.db") as conn:
        audit = conn.execute("SELECT action, target, result FROM audit WHERE action IN ('hold', 'release')").fetchall()
    assert audit == [("hold", "next", "held"), ("release", "next", "released")]
