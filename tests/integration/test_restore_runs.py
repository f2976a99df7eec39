"""What a restored or replaced database does not know: runs made after the backup.

Real `vigil up` processes on a temporary state directory (as in test_restore.py): a restore taken
during the same leadership (its epoch equals `high-water`'s) is still a restore, and a job still
running when its database was lost is never left running unmanaged.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine.exec.local import lock_is_held as _lock_held
from engine.exec.procs import GroupState, group_state
from tests.helpers import Up, runs, vigil, wait_for, write_job
from tests.integration.test_restore import replace_db

FAST = '[scheduler]\nheartbeat_interval = "100ms"\nheartbeat_timeout = "1s"\n'


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("high_water", ["kept", "lagging"])
def test_a_backup_of_the_same_leadership_is_detected_and_its_gap_is_not_missed(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path, high_water: str
) -> None:
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "echo tick-$VIGIL_RUN_ID"\n')
    up = start_up()
    up.wait_active()
    wait_for(lambda: len([r for r in runs(state_dir, "--job", "tick") if r["state"] == "succeeded"]) >= 2, 10)
    backup = tmp_path / "backup.db"
    vigil(state_dir, "db", "backup", str(backup))
    in_backup = {r["id"] for r in runs(state_dir)}
    # Fires after the backup run (and leave their run directories); then the node stops and the
    # backup is put back: same epoch as `high-water`, lower run ids.
    wait_for(lambda: len({r["id"] for r in runs(state_dir, "--job", "tick")} - in_backup) >= 3, 10)
    up.stop()
    after_backup = {r["id"] for r in runs(state_dir)} - in_backup
    replace_db(state_dir, backup)
    if high_water == "lagging":  # its last update failed (say, a full disk): the run directories tell
        record = (state_dir / "high-water").read_text()
        (state_dir / "high-water").write_text(record[: record.index("run_id=") + 7] + f"{max(in_backup):020d}\n")
    up = start_up()
    up.wait_active()
    wait_for(lambda: "older than this state directory (restored or replaced)" in up.output(), 5, what=up.output)
    wait_for(lambda: [r for r in runs(state_dir, "--job", "tick") if r["id"] > max(after_backup)], 10)
    # The fires between the backup and the stop ran: none of them is recorded `missed` (nor run again).
    assert not [r for r in runs(state_dir) if r["state"] == "missed"], runs(state_dir)
    assert min(r["id"] for r in runs(state_dir) if r["id"] not in in_backup) > max(after_backup)
    for run_id in after_backup:  # and their run directories keep their own output
        assert (state_dir / "runs" / str(run_id) / "log").read_text() == f"tick-{run_id}\n"


def test_a_pruned_newest_run_is_not_taken_for_a_restore(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "once", 'command = "true"\n')
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "once")
    wait_for(lambda: [r for r in runs(state_dir) if r["state"] == "succeeded"], 10)
    up.stop()
    vigil(state_dir, "db", "prune", "--older-than", "0s")  # offline: every run, the newest too
    assert runs(state_dir) == []
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "once")
    wait_for(lambda: [r for r in runs(state_dir) if r["state"] == "succeeded"], 10)
    assert "restored or replaced" not in up.output()


def _start_pair(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> tuple[Up, Up]:
    (jobs_dir / "vigil.toml").write_text(FAST)
    active = Up(state_dir, jobs_dir, log=tmp_path / "active.log")
    active.wait_active()
    standby = Up(state_dir, jobs_dir, log=tmp_path / "standby.log")
    wait_for(lambda: "standby" in standby.output(), 10, what="the standby")
    return active, standby


def test_a_job_still_running_when_the_database_is_removed_is_adopted_and_its_timeout_kept(
    state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    write_job(jobs_dir, "slow", 'timeout = "3s"\ncommand = "sleep 30"\n')
    active, standby = _start_pair(state_dir, jobs_dir, tmp_path)
    try:
        vigil(state_dir, "run", "slow")
        [run] = wait_for(lambda: [r for r in runs(state_dir) if r["state"] == "running"], 10)
        run_dir = state_dir / "runs" / str(run["id"])
        job_pid = wait_for(lambda: _pid(run_dir / "started"), 5)
        job_start = wait_for(lambda: _pid(run_dir / "jobstart"), 5)
        (state_dir / "vigil.db").unlink()
        wait_for(active.proc.poll, 5, what=f"the active to stop\n{active.output()}")
        standby.wait_active()
        # The timeout (3 s from its start) still holds: the job does not sleep on for 30 s.
        wait_for(
            lambda: group_state(job_pid, job_start) is GroupState.GONE,
            10,
            what=f"the job to be ended\n{standby.output()}",
        )
        [seen] = wait_for(lambda: [r for r in runs(state_dir) if r["id"] == run["id"] and r["ended_at"]], 5)
        assert (seen["job"], seen["state"]) == ("slow", "timed_out"), seen
        assert "found running" in standby.output() and "adopted" in standby.output(), standby.output()
    finally:
        standby.stop()
        active.stop()
        if group_state(job_pid, job_start) is not GroupState.GONE:
            os.killpg(job_pid, signal.SIGKILL)


def test_a_job_whose_shim_died_before_a_restore_is_ended_and_recorded(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    write_job(jobs_dir, "slow", 'command = "sleep 30"\n')
    up = start_up()
    up.wait_active()
    backup = tmp_path / "backup.db"
    vigil(state_dir, "db", "backup", str(backup))
    vigil(state_dir, "run", "slow")
    [run] = wait_for(lambda: [r for r in runs(state_dir) if r["state"] == "running"], 10)
    run_dir = state_dir / "runs" / str(run["id"])
    job_pid = wait_for(lambda: _pid(run_dir / "started"), 5)
    job_start = wait_for(lambda: _pid(run_dir / "jobstart"), 5)
    up.stop()  # the job runs on under its shim, as after any stop
    shim = _pid(run_dir / "shim")
    assert shim is not None
    os.kill(shim, signal.SIGKILL)
    wait_for(lambda: not (run_dir / "lock").exists() or not _lock_held(run_dir), 5, what="the shim's end")
    replace_db(state_dir, backup)  # the backup has no row for this run
    try:
        up = start_up()
        up.wait_active()
        wait_for(lambda: group_state(job_pid, job_start) is GroupState.GONE, 10, what=f"the job ended\n{up.output()}")
        [seen] = wait_for(lambda: [r for r in runs(state_dir) if r["id"] == run["id"] and r["ended_at"]], 5)
        assert seen["job"] == "slow" and seen["state"] in ("failed", "unknown"), seen
        assert "restored or replaced" in seen["reason"] and "SIGTERM" in seen["reason"], seen
    finally:
        if group_state(job_pid, job_start) is not GroupState.GONE:
            os.killpg(job_pid, signal.SIGKILL)
