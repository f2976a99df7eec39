"""A restored backup or a lost `vigil.db` never reuses an epoch, a run id or a run directory.

Real `vigil up` processes on a temporary state directory; the restore follows docs/ha.md: stop the
nodes, put the backup in place of `vigil.db`, start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from engine.exec.local import LocalExecutor, ShimExit
from engine.paths import StatePaths
from tests.helpers import runs, vigil, vigil_json, wait_for, write_job


def replace_db(state: Path, backup: Path | None) -> None:
    for suffix in ("", "-wal", "-shm"):
        (state / f"vigil.db{suffix}").unlink(missing_ok=True)
    if backup is None:
        (state / "vigil.db").write_bytes(b"")  # emptied (a zero-length file)
    else:
        shutil.copy(backup, state / "vigil.db")


def run_of(state: Path, run_id: int) -> dict:
    return next(r for r in runs(state) if r["id"] == run_id)


def ended(state: Path, job: str, count: int = 1) -> list[dict]:
    def done() -> list[dict]:
        found = [r for r in runs(state, "--job", job) if r["state"] not in ("pending", "launching", "running")]
        return found if len(found) >= count else []

    return wait_for(done, 10, what=f"{count} ended run(s) of {job}")


def epoch_of(state: Path) -> int:
    return int(vigil_json(state, "status")["active"]["epoch"])


def test_a_restored_backup_reuses_no_epoch_no_run_id_and_settles_its_open_runs(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate, out = tmp_path / "gate", tmp_path / "slow-ran"
    write_job(jobs_dir, "before", 'command = "echo before-$VIGIL_RUN_ID"\n')
    write_job(jobs_dir, "after", 'command = "echo after-$VIGIL_RUN_ID"\n')
    write_job(jobs_dir, "slow", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; exit 3"\n')
    write_job(jobs_dir, "flaky", f'retries = 1\nretry_delay = "1s"\ncommand = "echo $VIGIL_RUN_ID >> {out}; exit 4"\n')
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "before")
    [before] = ended(state_dir, "before")
    vigil(state_dir, "run", "slow")
    slow = wait_for(lambda: [r for r in runs(state_dir, "--job", "slow") if r["state"] == "running"], 10)[0]
    vigil(state_dir, "run", "flaky")
    wait_for(lambda: [r for r in runs(state_dir, "--job", "flaky") if r["state"] == "pending"], 10)
    backup = tmp_path / "backup.db"
    vigil(state_dir, "db", "backup", str(backup))  # `slow` is running in the backup, a `flaky` retry pending
    gate.touch()
    ended(state_dir, "slow")
    ended(state_dir, "flaky", 2)
    up.stop()
    # Life goes on after the backup: another start (a new epoch) and runs with new ids.
    up = start_up()
    up.wait_active()
    used_epoch = epoch_of(state_dir)
    vigil(state_dir, "run", "after")
    vigil(state_dir, "run", "after")
    later = ended(state_dir, "after", 2)
    used_ids = {
        before["id"],
        slow["id"],
        *(r["id"] for r in later),
        *(r["id"] for r in runs(state_dir, "--job", "flaky")),
    }
    up.stop()

    replace_db(state_dir, backup)
    up = start_up()
    up.wait_active()
    assert epoch_of(state_dir) > used_epoch
    assert "restored or replaced" in up.output()
    # the run that was open in the backup gets its real end from its run directory
    wait_for(lambda: run_of(state_dir, slow["id"])["state"] != "running", 10, what="the open run settled")
    settled = run_of(state_dir, slow["id"])
    assert (settled["state"], settled["exit_code"]) == ("failed", 3), settled
    # and the retry that was pending in the backup, which ran after it, is not run a second time
    retries = sorted(ended(state_dir, "flaky", 2), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["state"], r["exit_code"]) for r in retries] == [(1, "failed", 4), (2, "failed", 4)]
    assert len(out.read_text().split()) == 2
    # a new run takes an id no run has had, in a directory of its own
    vigil(state_dir, "run", "before")
    new = [r for r in ended(state_dir, "before", 2) if r["id"] != before["id"]][0]
    assert new["id"] > max(used_ids), (new, used_ids)
    assert vigil(state_dir, "logs", str(new["id"])).stdout == f"before-{new['id']}\n"
    for run in later:  # the runs made after the backup keep their output
        assert (state_dir / "runs" / str(run["id"]) / "log").read_text() == f"after-{run['id']}\n"
    # the schedule restarts from now: nothing is caught up or recorded missed for the gap
    assert not [r for r in runs(state_dir) if r["state"] == "missed"]


@pytest.mark.parametrize("lose_high_water", [False, True], ids=["high-water-kept", "high-water-lost"])
def test_an_emptied_database_starts_above_every_run_directory(
    start_up, state_dir: Path, jobs_dir: Path, lose_high_water: bool
) -> None:
    write_job(jobs_dir, "one", 'command = "echo one-$VIGIL_RUN_ID"\n')
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "one")
    vigil(state_dir, "run", "one")
    old = ended(state_dir, "one", 2)
    old_epoch = epoch_of(state_dir)
    up.stop()
    replace_db(state_dir, None)
    if lose_high_water:
        (state_dir / "high-water").unlink(missing_ok=True)
    up = start_up()
    up.wait_active()
    assert epoch_of(state_dir) > old_epoch
    vigil(state_dir, "run", "one")
    [new] = ended(state_dir, "one")
    assert new["id"] > max(r["id"] for r in old)
    assert vigil(state_dir, "logs", str(new["id"])).stdout == f"one-{new['id']}\n"
    for run in old:
        assert (state_dir / "runs" / str(run["id"]) / "log").read_text() == f"one-{run['id']}\n"


async def test_a_run_directory_holding_another_runs_files_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    stale = paths.run_dir(7)
    stale.mkdir()
    (stale / "log").write_text("another job's output\n")
    (stale / "exit").write_text("exit=0 end=1\n")
    loop = asyncio.get_running_loop()
    ends: dict[int, asyncio.Future[ShimExit]] = {7: loop.create_future(), 8: loop.create_future()}
    executor = LocalExecutor(paths, lambda r: ends[r.run_id].set_result(r), log_cap=1 << 20, kill_grace=1.0)

    def env(job: str) -> dict[str, str]:
        return {
            **os.environ,
            "VIGIL_JOB": job,
            "VIGIL_SCHEDULED_FOR": "2030-01-01T00:00:00.000000+00:00",
            "VIGIL_ATTEMPT": "1",
            "VIGIL_EPOCH": "3",
        }

    with caplog.at_level(logging.WARNING, logger="vigil.ids"):
        executor.launch(7, "echo new-output", env("new"), None)
    result = await asyncio.wait_for(ends[7], 10)
    assert result.exit_code == 0
    assert (stale / "log").read_text() == "new-output\n"
    [moved] = (paths.runs / ".stale").iterdir()
    assert moved.name.startswith("7.") and (moved / "log").read_text() == "another job's output\n"
    assert "moved it to" in caplog.text
    # Launching the same run again (a takeover relaunching a run that never started) keeps its directory.
    again = paths.run_dir(8)
    again.mkdir()
    (again / "lock").touch()
    executor.launch(8, "echo relaunched", env("same"), None)
    await asyncio.wait_for(ends[8], 10)
    assert (again / "log").read_text() == "relaunched\n"
    assert [p.name for p in (paths.runs / ".stale").iterdir()] == [moved.name]
    executor.close()


@pytest.fixture
def agent(tmp_path: Path):
    from tests.integration.test_agents import Agent

    made = Agent(tmp_path, "a1")
    yield made.start()
    made.stop()
    made.kill_jobs()


def test_after_a_restore_run_ids_held_by_an_agent_are_not_reused(
    start_up, agent, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    from tests.integration.test_agents import agent_journal, write_settings

    write_settings(jobs_dir, {"a1": {"url": agent.url}})
    write_job(jobs_dir, "remote", 'agent = "a1"\ncommand = "echo remote-$VIGIL_RUN_ID"\n')
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "remote")
    [first] = ended(state_dir, "remote")
    backup = tmp_path / "backup.db"
    vigil(state_dir, "db", "backup", str(backup))
    vigil(state_dir, "run", "remote")  # after the backup: the agent holds this id, the backup does not
    after = [r for r in ended(state_dir, "remote", 2) if r["id"] != first["id"]][0]
    up.stop()
    replace_db(state_dir, backup)
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "remote")
    new = [r for r in ended(state_dir, "remote", 2) if r["id"] != first["id"]][0]
    assert new["state"] == "succeeded" and new["id"] > after["id"], new
    assert new["epoch"] > after["epoch"]
    assert (agent_journal(agent, after["id"]) or {}).get("scheduled_for") == after["scheduled_for"]
    assert vigil(state_dir, "logs", str(new["id"]), jobs=jobs_dir).stdout == f"remote-{new['id']}\n"
