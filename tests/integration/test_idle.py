"""An idle scheduler waits for the kernel to tell it of changes instead of looking (issue 12): what it
must still notice, and as fast: job files, new folders, symlinked files, vigil.toml, a lost database,
and a heartbeat stream that starts at once for a new subscriber."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.paths import StatePaths
from engine.run.loop import Scheduler
from tests.helpers import vigil_json, wait_for, write_job

NOTHING_DUE = 'cron = "0 3 1 1 *"\ncommand = "true"\n'


@pytest.fixture
async def scheduler(state_dir: Path, jobs_dir: Path) -> AsyncIterator[Scheduler]:
    """An active scheduler whose rescan interval is a minute: only the kernel's word can be quicker."""
    write_job(jobs_dir, "first", NOTHING_DUE)
    s = Scheduler(StatePaths(state_dir), jobs_dir, rescan_interval=60.0)
    await s.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await s.prepare()
    await s.rescan()  # the second scan puts the folder under its inotify watch (JobFolder.scan)
    loop = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        s.request_stop()
        await asyncio.wait_for(loop, 10)


async def eventually(predicate: object, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not noticed in time"
        await asyncio.sleep(0.02)


async def test_a_job_file_added_edited_or_removed_is_seen_at_once(scheduler: Scheduler, jobs_dir: Path) -> None:
    write_job(jobs_dir, "new", NOTHING_DUE)
    await eventually(lambda: "new" in scheduler.planner.jobs)
    write_job(jobs_dir, "new", 'cron = "0 4 1 1 *"\ncommand = "true"\n')
    await eventually(lambda: scheduler.planner.jobs["new"].cron == "0 4 1 1 *")
    (jobs_dir / "new.toml").rename(jobs_dir / "renamed.toml")
    await eventually(lambda: "renamed" in scheduler.planner.jobs and "new" not in scheduler.planner.jobs)
    (jobs_dir / "renamed.toml").unlink()
    await eventually(lambda: "renamed" not in scheduler.planner.jobs)


async def test_a_job_added_to_an_idle_scheduler_fires_on_time(
    scheduler: Scheduler, jobs_dir: Path, tmp_path: Path
) -> None:
    # The loop of an idle scheduler sleeps up to LONG_SLEEP_S: a rescan that brings a sooner fire
    # must end that sleep, or the new job's first fire waits for it (found by review: ~28 s late).
    ran = tmp_path / "ran"
    write_job(jobs_dir, "soon", f'every = "1s"\ncommand = ["touch", "{ran}"]\n')
    await eventually(lambda: "soon" in scheduler.planner.jobs)
    await eventually(ran.exists, within=3.0)


async def test_a_new_folder_and_its_folder_defaults_are_seen_at_once(scheduler: Scheduler, jobs_dir: Path) -> None:
    team = jobs_dir / "team"
    team.mkdir()
    write_job(team, "nightly", NOTHING_DUE)
    await eventually(lambda: "team/nightly" in scheduler.planner.jobs)
    (team / "_folder.toml").write_text('tags = ["ops"]\n')
    await eventually(lambda: scheduler.planner.jobs["team/nightly"].tags == ("ops",))


async def test_vigil_toml_changes_are_seen_at_once(scheduler: Scheduler, jobs_dir: Path) -> None:
    (jobs_dir / "vigil.toml").write_text('[scheduler]\nretention = "7d"\n')
    await eventually(lambda: scheduler.settings.retention == 7 * 86400)


async def test_a_symlinked_file_edited_outside_the_folder_is_seen_within_the_rescan_interval(
    state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    # Its target's folder is not watched: a folder with symlinked files is scanned every rescan_interval.
    target = tmp_path / "elsewhere" / "linked.toml"
    target.parent.mkdir()
    target.write_text(NOTHING_DUE)
    (jobs_dir / "linked.toml").symlink_to(target)
    s = Scheduler(StatePaths(state_dir), jobs_dir, rescan_interval=0.2)
    await s.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await s.prepare()
    loop = asyncio.create_task(s.run())
    try:
        await asyncio.sleep(0.5)  # past the second scan (the watch)
        target.write_text('cron = "0 5 1 1 *"\ncommand = "true"\n')
        await eventually(lambda: s.planner.jobs["linked"].cron == "0 5 1 1 *")
    finally:
        s.request_stop()
        await asyncio.wait_for(loop, 10)


def test_an_idle_active_stops_when_its_database_is_removed(start_up, state_dir: Path, jobs_dir: Path) -> None:
    # Nothing is due, so no write would find out: the watch on the file must.
    write_job(jobs_dir, "idle", NOTHING_DUE)
    up = start_up()
    up.wait_active()
    time.sleep(1.5)  # the loop is asleep
    (state_dir / "vigil.db").unlink()
    code = wait_for(up.proc.poll, 5, what=f"the active to stop\n{up.output()}")
    assert code != 0
    assert "was removed under the running scheduler" in up.output().strip().splitlines()[-1], up.output()


def test_heartbeats_start_at_once_for_a_subscriber_and_status_shows_a_live_loop_without_one(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    write_job(jobs_dir, "idle", NOTHING_DUE)
    start_up().wait_active()
    time.sleep(1.5)  # no subscriber: no heartbeat sent meanwhile
    active = vigil_json(state_dir, "status")["active"]
    assert active["heartbeat_age_s"] < 0.5, active  # the answer itself is the sign of life
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(state_dir / "control.sock"))
        asked = time.monotonic()
        sock.sendall(json.dumps({"op": "subscribe", "role": "monitor"}).encode() + b"\n")
        stream = sock.makefile("rb")
        beats = []
        for _ in range(3):
            beats.append((time.monotonic(), json.loads(stream.readline())))
    assert all("hb" in beat for _, beat in beats), beats
    assert beats[0][0] - asked < 0.5, "the first heartbeat comes at once"
    assert beats[2][0] - beats[0][0] < 2.0, "then one every heartbeat_interval (250 ms)"
