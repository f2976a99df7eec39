"""Pilot tests of every view against the fixed state (the engine's schema, fixed rows, fixed clock)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from textual.pilot import Pilot

from engine.paths import StatePaths
from engine.store.sqlite.db import connect
from tests.tui.conftest import ready, until
from tests.tui.fixture_state import EPOCH, FIXED_NOW, fixed_clock
from tests.tui.screen_text import screen_text
from tui.screens.agents import AgentsScreen
from tui.screens.cluster import ClusterScreen
from tui.screens.jobs import JobsScreen
from tui.screens.modals import HelpScreen
from tui.screens.run import LOG_MAX_LINES, LogView, RunScreen
from tui.screens.runs import RunsScreen
from tui.widgets.header import ViewBar


async def open_runs(pilot: Pilot[Any], loaded: Callable[[RunsScreen], object], what: str) -> RunsScreen:
    """Switch to the runs view (key 2) and wait until `loaded(view)` holds."""
    await pilot.press("2")
    runs = pilot.app.screen
    assert isinstance(runs, RunsScreen)
    await until(pilot, lambda: loaded(runs), what=what)
    return runs


async def test_jobs_view_shows_each_job_with_glyph_word_schedule_and_result(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        text = screen_text(app)
        assert isinstance(app.screen, JobsScreen)
        assert "● ACTIVE pid 4242 epoch 3" in text and "1 standby" in text and "agents 1/2" in text
        lines = {
            line.split()[0]: line
            for line in text.splitlines()
            if line.strip().startswith(("demo/", "etl/", "health/", "ops/", "reports/"))
        }
        assert "✗ FAIL" in lines["demo/always_fails"] and "every 3m" in lines["demo/always_fails"]
        assert "● RUN" in lines["demo/overlap_skip"]
        assert "⏸ PAUSED" in lines["etl/load"]
        assert "○ OFF" in lines["ops/disk_report"]
        assert "⚠ ERROR" in lines["reports/broken"]
        assert "⏱ TIMEOUT" in lines["demo/slow_timeout"]
        assert "12:01:35" in lines["demo/always_fails"]  # next fire, UTC
        assert "▅▅▆▇▇█" in lines["health/ping"]  # duration trend, oldest first
        assert "11 jobs" in text


async def test_jobs_sort_keeps_the_cursor_on_the_same_job(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await pilot.press("j", "j")
        assert screen.table.cursor_key == "demo/flaky"
        await pilot.press("S")  # sort by state: errors and running jobs first
        assert screen.table.keys[0] == "reports/broken"
        assert screen.table.cursor_key == "demo/flaky"
        await pilot.press("S")  # again: reversed
        assert screen.table.keys[-1] == "reports/broken"
        assert "STATE▼" in screen_text(app)
        await pilot.press("G")
        assert screen.table.cursor_key == screen.table.keys[-1]
        await pilot.press("g")
        assert screen.table.cursor_key == screen.table.keys[0]


async def test_live_update_does_not_move_the_cursor(make_app, fixed_paths: StatePaths) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await pilot.press("S")  # state order: a new running run re-orders the table
        screen.table.move_cursor_to("health/ping")
        before = screen.table.keys.index("health/ping")
        conn = connect(fixed_paths)
        conn.execute(
            "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, started_at) "
            "VALUES (100, 'etl/extract', '2030-01-02T11:59:59.000000+00:00', 'running', 'manual', ?, ?, "
            "'2030-01-02T11:59:59.000000+00:00', '2030-01-02T11:59:59.000000+00:00')",
            (EPOCH, EPOCH),
        )
        conn.close()
        await app.refresh_now()
        await pilot.pause()
        assert "● RUN" in next(line for line in screen_text(app).splitlines() if "etl/extract" in line)
        assert screen.table.cursor_key == "health/ping"
        assert screen.table.keys.index("health/ping") == before + 1  # its row moved; the cursor went with it


async def test_jobs_filter_narrows_and_escape_clears(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await pilot.press("slash", *"etl")
        await until(pilot, lambda: screen.table.row_count == 3, what="etl filter")
        assert "3 of 11 jobs · filter: etl" in screen_text(app)
        await pilot.press("enter")  # keep the filter, back to the table
        assert screen.table.has_focus
        await pilot.press("slash", "backspace", "backspace", "backspace", *"fail")
        await until(pilot, lambda: set(screen.table.keys) == {"demo/always_fails"}, what="fail filter")
        await pilot.press("escape")
        assert screen.table.row_count == 11


async def test_enter_on_a_job_opens_its_runs_and_escape_comes_back(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("j", "j", "enter")  # demo/flaky
        runs = await until(pilot, lambda: app.screen if isinstance(app.screen, RunsScreen) else None)
        await until(pilot, lambda: runs.table.row_count == 4, what="flaky's four runs")
        assert {r.job for r in runs.runs.values()} == {"demo/flaky"}
        assert "job demo/flaky" in screen_text(app)
        await pilot.press("escape")  # clears the job filter
        await until(pilot, lambda: runs.table.row_count == 25, what="all runs")
        await pilot.press("escape")  # back to jobs
        assert isinstance(app.screen, JobsScreen)


async def test_runs_view_state_filter_and_typed_filter(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda r: r.table.row_count == 25 and r.total == 25, "first page")
        assert "1–25 of 25" in screen_text(app)
        await pilot.press("s")  # running
        await until(pilot, lambda: [r.state for r in runs.runs.values()] == ["running"], what="running only")
        await pilot.press("s")  # failed
        await until(pilot, lambda: runs.total == 7, what="failed only")
        assert {r.state for r in runs.runs.values()} == {"failed"}
        await pilot.press("slash", *"flaky failed")
        await until(pilot, lambda: runs.total == 2 and runs.job == "demo/flaky", what="flaky failed")
        await pilot.press("escape")
        await until(pilot, lambda: runs.total == 25, what="cleared")


async def test_runs_history_is_paged_newest_first(make_app, fixed_paths: StatePaths) -> None:
    conn = connect(fixed_paths)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(230):
        when = (FIXED_NOW - timedelta(days=2, seconds=i)).isoformat()
        conn.execute(
            "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, started_at, ended_at, exit_code) "
            "VALUES (?, 'health/ping', ?, 'succeeded', 'schedule', ?, ?, ?, ?, ?, 0)",
            (1000 + i, when, EPOCH, EPOCH, when, when, when),
        )
    conn.execute("COMMIT")
    conn.close()
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda r: r.table.row_count == 100 and r.total == 255, "page 1")
        assert runs.table.keys[0] == "1229"
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: runs.table.keys and runs.table.keys[0] == "1129", what="page 2")
        assert "101–200 of 255" in screen_text(app)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: runs.table.row_count == 55, what="page 3")
        assert runs.table.keys[-1] == "1"
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: runs.table.keys and runs.table.keys[0] == "1129", what="back to page 2")


async def test_run_detail_and_log(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.show_run(12)  # demo/chatty
        screen = await until(pilot, lambda: app.screen if isinstance(app.screen, RunScreen) else None)
        await until(pilot, lambda: screen.record is not None and screen.query_one(LogView).line_count == 40)
        await pilot.pause()
        text = screen_text(app)
        assert "Run 12 · demo/chatty · ✓ OK · exit 0 · attempt 1 · epoch 3" in text
        assert "started 11:58:40.000" in text and "ended 11:58:41.400" in text and "took 1.4s" in text
        assert "peak RSS 9.0 MB · CPU 0.61s" in text
        assert "line 00040" in text
        app.show_run(15)  # a failed attempt: the reason is shown
        screen = await until(
            pilot, lambda: app.screen if isinstance(app.screen, RunScreen) and app.screen.run_id == 15 else None
        )
        await until(pilot, lambda: "reason: exit code 1; retry in 3s" in screen_text(app))
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen) and app.screen.run_id == 12
        await pilot.press("escape")
        assert isinstance(app.screen, JobsScreen)


async def test_log_follow_turns_off_when_scrolling_up_and_huge_logs_are_capped(
    make_app, fixed_paths: StatePaths
) -> None:
    log_dir = fixed_paths.run_dir(21)  # the running demo/overlap_skip run
    log_dir.mkdir(parents=True, exist_ok=True)
    line = "x" * 70 + "\n"
    (log_dir / "log").write_text(line * 60_000)  # 4.3 MB
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        app.show_run(21)
        screen = await until(pilot, lambda: app.screen if isinstance(app.screen, RunScreen) else None)
        log = await until(pilot, lambda: screen.query_one(LogView))
        await until(pilot, lambda: log.line_count > 1000, what="log tail")
        assert log.line_count <= LOG_MAX_LINES
        assert "not shown" in screen_text(app)  # only the tail was loaded
        assert log.auto_scroll
        await pilot.press("k", "k", "k")
        await until(pilot, lambda: not log.auto_scroll, what="follow off")
        assert "paused" in screen_text(app)
        (log_dir / "log").write_text(line * 60_000 + "appended while paused\n")
        await until(pilot, lambda: any("appended while paused" in x for x in log.lines[-3:]), what="tail")
        assert not log.is_vertical_scroll_end  # we did not drag the reader to the end
        await pilot.press("f")
        await until(pilot, lambda: log.auto_scroll and log.is_vertical_scroll_end, what="follow on")
        assert "▼ following" in screen_text(app)


async def test_cluster_view_shows_active_standby_failovers_and_audit(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("3")
        assert isinstance(app.screen, ClusterScreen)
        await pilot.pause()
        text = screen_text(app)
        assert "● Active pid 4242 · epoch 3" in text and "heartbeat 0.1s" in text
        assert "◌ Standby pid 4243" in text
        crash = next(line for line in text.splitlines() if "crash" in line)
        assert "4100 → 4242" in crash and "1,840 ms" in crash
        assert "refused: no job named" in text


async def test_agents_view_and_its_empty_state(make_app, tmp_path) -> None:
    app = make_app()
    async with app.run_test(size=(100, 24)) as pilot:
        await ready(pilot)
        await pilot.press("4")
        assert isinstance(app.screen, AgentsScreen)
        await pilot.pause()
        text = screen_text(app)
        lab1 = next(line for line in text.splitlines() if "lab1" in line)
        assert "● UP" in lab1 and "12%" in lab1 and "41%" in lab1
        lab2 = next(line for line in text.splitlines() if "lab2" in line)
        assert "✗ DOWN" in lab2 and "5m" in lab2 and "connect timeout" in lab2
    empty = StatePaths(tmp_path / "empty")
    connect(empty).close()
    app = make_app(paths=empty)
    async with app.run_test(size=(100, 24)) as pilot:
        await ready(pilot)
        await pilot.press("4")
        await pilot.pause()
        assert "No agents yet" in screen_text(app)


async def test_no_active_scheduler_banner_and_greyed_actions(make_app) -> None:
    app = make_app(active=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        text = screen_text(app)
        assert "○ NO ACTIVE SCHEDULER" in text
        assert "No scheduler is active" in text and "read-only" in text
        screen = app.screen
        for action in ("run_now", "toggle_pause", "kill", "rerun"):
            assert screen.check_action(action, ()) is None  # greyed out, not hidden
        await pilot.press("r")
        await pilot.pause()
        assert not app._notifications  # nothing was sent


async def test_cluster_view_without_an_active_scheduler(make_app) -> None:
    app = make_app(active=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("3")
        await pilot.pause()
        line = next(x for x in screen_text(app).splitlines() if "○ No active scheduler" in x)
        assert line.strip() == "○ No active scheduler · at 12:00:00"


async def test_read_only_disables_actions_even_with_an_active_scheduler(make_app) -> None:
    app = make_app(read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert "READ-ONLY" in screen_text(app)
        assert app.screen.check_action("run_now", ()) is None
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.screen.check_action("run_now", ()) is True
        assert app.screen.check_action("kill", ()) is None  # the first job has nothing running


async def test_stale_data_is_flagged(fixed_paths: StatePaths) -> None:
    from tests.tui.fixture_state import FixedActiveSource
    from tui.app import VigilApp

    now = [FIXED_NOW]
    app = VigilApp(
        fixed_paths, clock=lambda: now[0], source=FixedActiveSource(fixed_paths, clock=lambda: now[0]), interval=60
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert "STALE" not in screen_text(app)
        now[0] = FIXED_NOW + timedelta(seconds=200)  # > 3 refresh intervals (60 s here) without a read
        app.screen.show_header()
        await pilot.pause()
        text = screen_text(app)
        assert "⚠ STALE 3m ago" in text and "Data is stale" in text


async def test_missing_state_directory_waits_without_creating_it(tmp_path) -> None:
    from tui.app import VigilApp

    paths = StatePaths(tmp_path / "nothing-here")
    app = VigilApp(paths, clock=fixed_clock, interval=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert "No Vigil state in" in screen_text(app)
    assert not paths.db.exists()


async def test_help_palette_and_quit_keys(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "Vigil dashboard — keys" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, JobsScreen)
        await pilot.press("colon")
        await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette", what="palette")
        await pilot.press(*"cluster view")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ClusterScreen), what="cluster via palette")
        await pilot.press("escape")  # back to the previous view
        assert isinstance(app.screen, JobsScreen)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    assert app.return_code == 0  # None had `q` not quit


def start_run(paths: StatePaths, run_id: int, job: str) -> None:
    """A new running run of `job`, as the scheduler would record it."""
    conn = connect(paths)
    when = "2030-01-02T11:59:59.000000+00:00"
    conn.execute(
        "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, started_at) "
        "VALUES (?, ?, ?, 'running', 'manual', ?, ?, ?, ?)",
        (run_id, job, when, EPOCH, EPOCH, when, when),
    )
    conn.close()


def footer_enabled(app, key: str) -> bool:
    from textual.widgets._footer import FooterKey

    (found,) = [k for k in app.screen.query(FooterKey) if k.key == key]
    return not found.has_class("-disabled")


async def test_footer_follows_the_selected_job_as_its_run_starts(make_app, fixed_paths: StatePaths) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        screen.table.move_cursor_to("demo/overlap_skip")
        await until(pilot, lambda: footer_enabled(app, "K"), what="K enabled: a run to kill")
        screen.table.move_cursor_to("etl/extract")
        await until(pilot, lambda: not footer_enabled(app, "K"), what="K greyed: nothing running")
        await pilot.pause()
        start_run(fixed_paths, 100, "etl/extract")
        await app.refresh_now()
        await until(pilot, lambda: footer_enabled(app, "K"), what="K enabled once its run started")


async def test_runs_view_at_the_top_shows_new_runs_as_they_arrive(make_app, fixed_paths: StatePaths) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda r: r.table.row_count == 25, "first page")
        assert runs.table.cursor_key == "25"
        start_run(fixed_paths, 26, "etl/extract")
        await app.refresh_now()
        await until(pilot, lambda: runs.table.keys[0] == "26", what="the new run on the page")
        await pilot.pause()
        assert runs.table.cursor_key == "25"  # the cursor stays on its run...
        assert round(runs.table.scroll_y) == 0  # ...and the new run is not hidden above the screen
        assert any(line.split()[:2] == ["26", "etl/extract"] for line in screen_text(app).splitlines())


async def test_opening_a_jobs_runs_again_starts_at_its_newest_run(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda r: r.table.row_count == 25 and r.total == 25, "first page")
        await pilot.press(*"jjjjjjjjjj", "1", "j", "j", "enter")  # demo/flaky, from a runs view seen before
        await until(pilot, lambda: runs.table.keys == ["16", "15", "14", "13"], what="flaky's runs")
        await until(pilot, lambda: runs.total == 4, what="flaky's count")
        assert runs.table.cursor_key == "16"


async def test_slash_is_offered_only_where_there_is_something_to_filter(make_app) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        for key, filterable in (("1", True), ("2", True), ("3", False), ("4", False)):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen.check_action("start_filter", ()) is filterable
            assert ("/ Filter" in screen_text(app)) is filterable
        await pilot.press("slash")  # on the agents view: no filter line to type into
        await pilot.pause()
        assert not app.screen.query_one("#filter").has_class("-shown")
        app.show_run(12)
        screen = await until(pilot, lambda: app.screen if isinstance(app.screen, RunScreen) else None)
        assert screen.check_action("start_filter", ()) is False


async def test_a_run_deleted_while_open_can_no_longer_be_rerun(make_app, fixed_paths: StatePaths) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.show_run(12)
        screen = await until(pilot, lambda: app.screen if isinstance(app.screen, RunScreen) else None)
        await until(pilot, lambda: screen.record is not None, what="run loaded")
        assert screen.check_action("rerun", ()) is True
        conn = connect(fixed_paths)
        conn.execute("DELETE FROM runs WHERE id = 12")  # retention
        conn.close()
        await app.refresh_now()
        await until(pilot, lambda: "no longer exists" in screen_text(app), what="gone")
        assert screen.check_action("rerun", ()) is None
        assert screen.check_action("run_now", ()) is None


async def test_a_failed_read_does_not_leave_rows_stale(make_app, fixed_paths: StatePaths, monkeypatch) -> None:
    import sqlite3

    from engine.api import StateReader

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await pilot.press("S")  # state order: running jobs near the top, idle ones below
        assert screen.table.keys.index("demo/overlap_skip") == 1
        conn = connect(fixed_paths)
        conn.execute("UPDATE runs SET state = 'succeeded', ended_at = started_at, exit_code = 0 WHERE id = 21")
        conn.close()

        def locked(self: StateReader) -> list[object]:
            raise sqlite3.OperationalError("database is locked")

        with monkeypatch.context() as patch:  # the read that sees the run end fails part-way
            patch.setattr(StateReader, "agents", locked)
            snap = await app.refresh_now()
            assert snap.error is not None
        await app.refresh_now()
        await pilot.pause()
        assert screen.jobs["demo/overlap_skip"].status == "idle"
        keys = list(screen.table.keys)
        assert keys.index("demo/overlap_skip") > keys.index("health/ping")  # re-sorted among the idle
        assert "· IDLE" in next(line for line in screen_text(app).splitlines() if "demo/overlap_skip" in line)


async def test_a_dashboard_that_never_read_the_state_does_not_claim_a_good_read(make_app, monkeypatch) -> None:
    """Every read failing from the start once showed "last good read 0.0s ago"."""
    import sqlite3

    from engine.api import StateReader

    def locked(self: StateReader) -> list[object]:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(StateReader, "jobs", locked)
    app = make_app()
    async with app.run_test(size=(120, 24)) as pilot:
        await ready(pilot)
        await app.refresh_now()
        app.screen.show_header()
        await pilot.pause()
        text = screen_text(app)
        assert "No successful read of the state yet" in text, text
        assert "NO DATA yet" in text
        assert "last good read" not in text and "0.0s ago" not in text and "updated" not in text
        monkeypatch.undo()  # the state becomes readable: the usual freshness line comes back
        await app.refresh_now()
        app.screen.show_header()
        await pilot.pause()
        text = screen_text(app)
        assert "No successful read" not in text and "updated" in text


def _add_runs(paths: StatePaths, count: int, state: str = "succeeded") -> None:
    from tests.tui.fixture_state import EPOCH

    conn = connect(paths)
    start = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0]
    for n in range(count):
        conn.execute(
            "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at) "
            "VALUES (?, 'health/ping', ?, ?, 'schedule', ?, ?, '2030-01-02T12:00:00+00:00')",
            (start + n + 1, f"2030-01-02T12:{n // 60:02d}:{n % 60:02d}.{start:06d}+00:00", state, EPOCH, EPOCH),
        )
    conn.close()


def _run_count(paths: StatePaths) -> int:
    conn = connect(paths)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        conn.close()


def _range_and_total(summary: str) -> tuple[int, int, int]:
    import re

    match = re.search(r"(\d[\d,]*)–(\d[\d,]*) of (\d[\d,]*)", summary)
    assert match, summary
    first, last, total = (int(group.replace(",", "")) for group in match.groups())
    return first, last, total


async def test_runs_header_range_and_total_agree_while_runs_arrive(make_app, fixed_paths: StatePaths) -> None:
    """New runs between two full counts once showed "1–22 of 21"."""
    app = make_app()
    n = _run_count(fixed_paths)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda view: view.total == n, "the first count")
        assert _range_and_total(runs.query_one(ViewBar).summary) == (1, n, n)
        _add_runs(fixed_paths, 1)
        await app.refresh_now()  # a refresh within 5 s of the full count
        await until(pilot, lambda: len(runs.runs) == n + 1, what="the new run on screen")
        assert _range_and_total(runs.query_one(ViewBar).summary) == (1, n + 1, n + 1)


async def test_runs_header_on_an_older_page_counts_the_runs_that_arrived_since(
    make_app, fixed_paths: StatePaths
) -> None:
    _add_runs(fixed_paths, 130 - _run_count(fixed_paths))  # 130 runs: two pages of 100
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda view: view.total == 130, "the first count")
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: len(runs.pages) == 2 and len(runs.runs) == 30, what="page 2")
        assert _range_and_total(runs.query_one(ViewBar).summary) == (101, 130, 130)
        _add_runs(fixed_paths, 5)  # the rows of page 2 stay; five newer ones now come before them
        await app.refresh_now()
        await until(pilot, lambda: runs.total == 135, what="the new total")
        assert _range_and_total(runs.query_one(ViewBar).summary) == (106, 135, 135)


async def test_runs_header_with_a_state_filter_follows_runs_that_change_state(
    make_app, fixed_paths: StatePaths
) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        runs = await open_runs(pilot, lambda view: view.total is not None, "the first count")
        runs.set_filters(job=None, state="succeeded")
        await until(pilot, lambda: runs.state == "succeeded" and runs.total is not None and runs.runs, what="filter")
        before = _range_and_total(runs.query_one(ViewBar).summary)
        conn = connect(fixed_paths)
        opened = conn.execute("SELECT COUNT(*) FROM runs WHERE state = 'running'").fetchone()[0]
        assert opened >= 1
        conn.execute("UPDATE runs SET state = 'succeeded', exit_code = 0 WHERE state = 'running'")
        conn.close()
        await app.refresh_now()
        await until(pilot, lambda: len(runs.runs) == before[1] + opened, what="the finished runs listed")
        assert _range_and_total(runs.query_one(ViewBar).summary) == (1, before[1] + opened, before[2] + opened)


async def test_control_characters_in_catalogued_names_are_shown_escaped(make_app, fixed_paths: StatePaths) -> None:
    """A file named with an escape sequence is an invalid job: its catalog row must not reach the terminal raw."""
    from tests.tui.fixture_state import EPOCH

    conn = connect(fixed_paths)
    conn.execute(
        "INSERT INTO jobs (name, path, schedule, enabled, error, writer_epoch) VALUES (?, '', 'invalid', 0, ?, ?)",
        ("aaa\x1b[2Jbad", "/srv/jobs/aaa\\x1b[2Jbad.toml: name: not allowed", EPOCH),
    )
    conn.close()
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        text = screen_text(app)
        assert "\x1b" not in text
        assert "aaa\\x1b[2Jbad" in text


async def test_a_refresh_that_reaches_a_screen_before_it_is_composed_is_left_for_later(make_app) -> None:
    # On a busy machine a refresh tick can reach a screen that is pushed but not composed yet; it
    # must not crash the dashboard (NoMatches on its header), and the screen shows the state later.
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert app.snapshot is not None
        not_composed = RunsScreen()
        not_composed.show_snapshot(app.snapshot)  # raised NoMatches before
        await app.push_screen(not_composed)
        await pilot.pause()
        await until(pilot, lambda: "Runs" in screen_text(app), what="the runs view")


async def test_cluster_view_shows_undelivered_notifications_and_the_header_a_failing_channel(
    make_app, fixed_paths: StatePaths
) -> None:
    conn = connect(fixed_paths)
    at = (FIXED_NOW - timedelta(minutes=3)).isoformat()
    sent_at = (FIXED_NOW - timedelta(minutes=10)).isoformat()
    rows = [
        ("failed:run:1", "ops", "pending", 3, "SMTP 421 try later", at, None),
        (
            "failed:run:2",
            "ops",
            "failed",
            290,
            "SMTP 550 relay denied",
            (FIXED_NOW - timedelta(minutes=1)).isoformat(),
            None,
        ),
        ("failed:run:0", "ops", "sent", 1, None, sent_at, sent_at),
        ("failed:run:1", "pager", "sent", 1, None, at, at),
    ]
    for event_id, channel, state, attempts, error, attempt_at, sent in rows:
        conn.execute(
            "INSERT INTO notifications (event_id, channel, event, job, run_id, created_at, state, attempts, "
            "last_error, last_attempt_at, sent_at, epoch, document, writer_epoch) "
            "VALUES (?, ?, 'failed', 'etl/load', 1, ?, ?, ?, ?, ?, ?, ?, '{}', ?)",
            (event_id, channel, at, state, attempts, error, attempt_at, sent, EPOCH, EPOCH),
        )
    conn.commit()
    conn.close()
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        lines = screen_text(app).splitlines()
        assert "✉✗" in lines[0]  # a mark in the header; the banner names the channel and its error
        assert "✉ Notifications failing on ops: SMTP 550 relay denied; 1 pending (view 3)" in " ".join(lines[:3])
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert "✉✗" in screen_text(app).splitlines()[0]  # in the header, on every view
        await pilot.press("3")
        await pilot.pause()
        text = screen_text(app)
        ops = next(line for line in text.splitlines() if line.strip().startswith("ops "))
        assert ops.split()[1:3] == ["1", "1"] and "SMTP 550 relay denied" in ops  # pending, failed, latest error
        pager = next(line for line in text.splitlines() if line.strip().startswith("pager "))
        assert pager.split()[1:4] == ["0", "0", "0"]
        assert "1 undelivered" not in text and "2 undelivered" in text
