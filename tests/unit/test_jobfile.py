"""Job folder loading, validation and live reload (engine.config), on real files in tmp_path."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.clock import FakeClock
from engine.config import JobFolder, format_errors, load_folder, load_settings
from engine.config.fields import JOB_FIELDS, SCHEDULER_FIELDS
from engine.durations import MAX_DURATION_LABEL, MAX_DURATION_S, MAX_DURATION_TEXT, within_max_duration
from engine.errors import ConfigError
from engine.model import Catchup, JobSpec, Overlap, Settings
from engine.schedule import trigger_for

SAMPLE_JOBS = Path(__file__).resolve().parents[2] / "sample_jobs"


def write(root: Path, rel: str, text: str) -> Path:
    """Write a dedented file, creating folders, so each test reads like the folder it builds."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def errors_for(errors: list[ConfigError], path: Path) -> list[ConfigError]:
    return [error for error in errors if Path(error.path) == path]


def only_error(errors: list[ConfigError], path: Path) -> ConfigError:
    found = errors_for(errors, path)
    assert len(found) == 1, format_errors(errors)
    return found[0]


# ---------------------------------------------------------------------------------------------------
# Happy paths


def test_every_key_is_read_into_the_spec(tmp_path: Path) -> None:
    write(tmp_path, "vigil.toml", '[agents.edge1]\nurl = "http://edge1:8700"\n')
    write(tmp_path, "up.toml", 'command = "true"\n')
    write(
        tmp_path,
        "team/job.toml",
        """
        command = "echo hello"
        cron = "*/5 * * * *"
        every = "90s"
        at = 2030-01-02T03:04:05
        timezone = "Europe/Berlin"
        after = ["up"]
        timeout = "1h30m"
        retries = 3
        retry_delay = "20s"
        overlap = "queue"
        catchup = "all"
        catchup_window = "2h"
        agent = "edge1"
        workdir = "data"
        enabled = false
        description = "does everything"
        tags = ["a", "b"]

        [env]
        B = "2"
        A = "1"
        """,
    )
    result = load_folder(tmp_path)
    assert result.errors == [], format_errors(result.errors)
    spec = result.jobs["team/job"]
    assert spec.name == "team/job"
    assert spec.path == str(tmp_path / "team/job.toml")
    assert spec.command == "echo hello"
    assert spec.cron == "*/5 * * * *"
    assert spec.every == 90.0
    assert spec.at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=ZoneInfo("Europe/Berlin"))
    assert spec.timezone == "Europe/Berlin"
    assert spec.after == ("up",)
    assert spec.timeout == 5400.0
    assert spec.retries == 3
    assert spec.retry_delay == 20.0
    assert spec.overlap is Overlap.QUEUE
    assert spec.catchup is Catchup.ALL
    assert spec.catchup_window == 7200.0
    assert spec.agent == "edge1"
    assert spec.env == (("A", "1"), ("B", "2"))
    assert spec.workdir == str(tmp_path / "team" / "data")
    assert spec.enabled is False
    assert spec.description == "does everything"
    assert spec.tags == ("a", "b")


def test_defaults_for_a_minimal_manual_job(tmp_path: Path) -> None:
    """No cron/every/at/after is a valid manual job, with the documented defaults."""
    write(tmp_path, "manual.toml", 'command = ["/bin/echo", "hi"]\n')
    result = load_folder(tmp_path)
    assert result.errors == []
    spec = result.jobs["manual"]
    assert spec.command == ("/bin/echo", "hi")
    assert (spec.cron, spec.every, spec.at, spec.after) == (None, None, None, ())
    assert spec.schedule_text == "manual"
    assert spec.timezone == "UTC"
    assert spec.retry_delay == 10.0
    assert spec.overlap is Overlap.SKIP
    assert spec.catchup is Catchup.LATEST
    assert spec.catchup_window == 3600.0
    assert spec.enabled is True
    assert spec.workdir is None
    assert spec.agent is None
    assert spec.timeout is None


def test_the_job_key_table_is_jobspec_and_a_key_left_unset_takes_jobspecs_default(tmp_path: Path) -> None:
    """One table of job keys: every JobSpec field but name and path is a key, with JobSpec's default
    (`after_on` is not a key of its own: the conditions of `after`'s tables)."""
    derived = ("name", "path", "after_on")
    spec_fields = {f.name: f.default for f in dataclasses.fields(JobSpec) if f.name not in derived}
    assert list(JOB_FIELDS) == list(spec_fields)
    assert {key: job_field.default for key, job_field in JOB_FIELDS.items()} == spec_fields
    assert [key for key, job_field in JOB_FIELDS.items() if job_field.required] == ["command"]
    write(tmp_path, "manual.toml", 'command = "true"\n')
    (spec,) = load_folder(tmp_path).jobs.values()
    assert spec == JobSpec(name="manual", path=str(tmp_path / "manual.toml"), command="true")
    # [scheduler] of vigil.toml likewise: its keys are Settings' scalar fields, whose defaults apply
    assert list(SCHEDULER_FIELDS) == [
        f.name
        for f in dataclasses.fields(Settings)
        if f.name
        not in (
            "agents",
            "pools",
            "channels",
            "invalid_channels",
            "channels_unknown",
            "http_listen",
            "resources",
            "calendars",
        )
    ]


def test_names_come_from_paths_and_special_files_are_not_jobs(tmp_path: Path) -> None:
    write(tmp_path, "etl/extract.toml", 'command = "true"\n')
    write(tmp_path, "a/b/c/deep.toml", 'command = "true"\n')
    write(tmp_path, "vigil.toml", "[scheduler]\n")
    write(tmp_path, "sub/vigil.toml", 'command = "true"\n')  # only the root vigil.toml is settings
    write(tmp_path, "etl/_folder.toml", 'timeout = "1m"\n')
    write(tmp_path, ".hidden.toml", "not toml at all [")
    write(tmp_path, ".git/config.toml", "not toml at all [")
    write(tmp_path, "notes.txt", "not a job")
    result = load_folder(tmp_path)
    assert result.errors == [], format_errors(result.errors)
    assert sorted(result.jobs) == ["a/b/c/deep", "etl/extract", "sub/vigil"]


def test_six_field_cron_has_seconds_first(tmp_path: Path) -> None:
    write(tmp_path, "fast.toml", 'command = "true"\ncron = "*/15  *  * * * *"\n')
    result = load_folder(tmp_path)
    assert result.errors == []
    assert result.jobs["fast"].cron == "*/15 * * * * *"


def test_at_accepts_aware_values_and_iso_strings(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'command = "true"\nat = 2030-05-01T10:00:00+02:00\n')
    write(tmp_path, "b.toml", 'command = "true"\nat = "2030-05-01T08:00:00Z"\n')
    write(tmp_path, "c.toml", 'command = "true"\nat = "2030-05-01 10:00"\ntimezone = "Europe/Paris"\n')
    result = load_folder(tmp_path)
    assert result.errors == []
    expected = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)
    for name in ("a", "b", "c"):
        at = result.jobs[name].at
        assert at is not None and at.utcoffset() is not None
        assert at == expected, name
    assert result.jobs["c"].at.utcoffset() == timedelta(hours=2)


def test_workdir_absolute_kept_and_home_expanded(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'command = "true"\nworkdir = "/srv/../var/tmp"\n')
    write(tmp_path, "b.toml", 'command = "true"\nworkdir = "~/x"\n')
    result = load_folder(tmp_path)
    assert result.jobs["a"].workdir == "/var/tmp"
    assert result.jobs["b"].workdir == os.path.expanduser("~/x")


def test_extreme_every_is_rejected_not_left_to_crash_the_scheduler(tmp_path: Path) -> None:
    """A period the trigger cannot compute fire times for must fail validation, not trigger_for()."""
    write(tmp_path, "tiny.toml", 'command = "true"\nevery = "0.0000001s"\n')
    write(tmp_path, "huge.toml", 'command = "true"\nevery = "10000000d"\n')
    write(tmp_path, "ok.toml", 'command = "true"\nevery = "36500d"\ncatchup_window = "36500d"\n')
    result = load_folder(tmp_path)
    assert sorted(Path(e.path).name for e in result.errors) == ["huge.toml", "tiny.toml"]
    assert list(result.jobs) == ["ok"]
    trigger = trigger_for(result.jobs["ok"])
    assert trigger is not None and trigger.next_fire(datetime(2026, 1, 1, tzinfo=UTC)) is not None


def test_durations_accept_numbers_of_seconds_and_compound_units(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'command = "true"\nevery = 30\ntimeout = "1h30m"\nretry_delay = "250ms"\n')
    spec = load_folder(tmp_path).jobs["a"]
    assert (spec.every, spec.timeout, spec.retry_delay) == (30.0, 5400.0, 0.25)


# ---------------------------------------------------------------------------------------------------
# Errors: each key, with file, line, key and reason


def test_unknown_key_is_reported_with_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "true"\n\nretires = 3\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, path)
    assert (error.key, error.line) == ("retires", 3)
    assert "unknown key" in error.reason and "retries" in error.reason
    assert error.format() == f"{path}:3: retires: unknown key (did you mean 'retries'?)"
    assert "job" not in result.jobs


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("command = 1", "command", "got an integer"),
        ("command = []", "command", "empty array"),
        ('command = ["ls", 2]', "command", "item 2: expected a string, got an integer"),
        ('command = "   "', "command", "must not be empty"),
        ("cron = 5", "cron", "expected a string, got an integer"),
        ("every = true", "every", "got a boolean"),
        ('every = "0s"', "every", "greater than zero"),
        ("timeout = -5", "timeout", "negative"),
        ("at = 5", "at", "got an integer"),
        ('at = "tomorrow"', "at", "expected a date and time"),
        ("at = 2030-01-01", "at", "got a date (2030-01-01)"),
        ('at = "2030-01-01"', "at", "time of day is required"),
        ('timezone = ["UTC"]', "timezone", "expected a string, got an array"),
        ('after = "up"', "after", "expected an array of job names, got a string"),
        ("after = [1]", "after", "item 1: expected a string, got an integer"),
        ('after = ["./up"]', "after", "full name"),
        ('after = ["up.toml"]', "after", "full name"),
        ("retries = -1", "retries", "at least 0"),
        ('retries = "3"', "retries", "expected an integer, got a string"),
        ("retries = 1.5", "retries", "expected an integer, got a float"),
        ('retry_delay = "soon"', "retry_delay", "bad duration"),
        ('overlap = "never"', "overlap", "expected one of skip, queue, allow, got 'never'"),
        ("catchup = 1", "catchup", "got an integer"),
        ("catchup_window = []", "catchup_window", "got an array"),
        ('agent = ""', "agent", "must not be empty"),
        ("agent = 1", "agent", "got an integer"),
        ('env = "A=1"', "env", "got a string"),
        ("env = { A = 1 }", "env.A", "expected a string, got an integer"),
        ("workdir = 1", "workdir", "got an integer"),
        ("enabled = 1", "enabled", "expected a boolean (true or false), got an integer"),
        ('enabled = "yes"', "enabled", "got a string"),
        ("description = 1", "description", "expected a string, got an integer"),
        ('tags = "x"', "tags", "expected an array of strings, got a string"),
        ('tags = ["ok", 1]', "tags", "item 2"),
        ('every = "5 minutes"', "every", "bad duration"),
        ("every = inf", "every", "finite"),
        ('every = "0.0000001s"', "every", "at least 1s"),
        ('timeout = "0.0000001s"', "timeout", "at least 1 microsecond"),
        # A NUL byte makes posix_spawn raise ValueError at launch, which stopped the scheduler.
        ('command = "echo a\\u0000b"', "command", "NUL"),
        ('command = ["echo", "a\\u0000b"]', "command", "item 2: must not contain a NUL"),
        ('env = { X = "a\\u0000b" }', "env.X", "NUL"),
        ('workdir = "/tmp/\\u0000"', "workdir", "NUL"),
        ('every = "10000000d"', "every", "at most 100 years"),
        ('timeout = "10000000d"', "timeout", "at most 100 years"),
        ('catchup_window = "10000000d"', "catchup_window", "at most 100 years"),
    ],
)
def test_bad_values_are_rejected_naming_key_line_and_type(tmp_path: Path, line: str, key: str, expected: str) -> None:
    tail = "" if line.startswith("command") else 'command = "true"\n'
    path = write(tmp_path, "job.toml", f"# a job\n{line}\n{tail}")
    result = load_folder(tmp_path)
    error = only_error(result.errors, path)
    assert error.key == key
    assert error.line == 2
    assert expected in error.reason
    assert "job" not in result.jobs


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("61 * * * *", "minute field '61'"),
        ("* 24 * * *", "hour field '24'"),
        ("* * 0 * *", "day-of-month field '0'"),
        ("* * * 13 *", "month field '13'"),
        ("* * * * FOO", "day-of-week field 'FOO'"),
        ("70 * * * * *", "second field '70'"),
        ("* * * * * * *", "expected 5 fields"),
        ("@reboot", "@reboot is not supported"),
        ("@dayly", "unknown macro '@dayly'"),
        ("daily", "got 1"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_cron_names_the_wrong_field(tmp_path: Path, cron: str, expected: str) -> None:
    path = write(tmp_path, "job.toml", f'command = "true"\ncron = "{cron}"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert (error.key, error.line) == ("cron", 2)
    assert expected in error.reason


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("R * * * *", "minute field 'R': hashed (H), random (R) and nearest-weekday (W) values are not supported"),
        ("0 0 15W * *", "day-of-month field '15W'"),
        ("0 5-1 * * *", "hour field '5-1': range '5-1' runs backwards"),
        ("0 0 */5 * L5", "a day-of-month cannot be combined with an nth/last weekday"),
    ],
)
def test_cron_that_only_croniter_accepts_is_rejected(tmp_path: Path, cron: str, expected: str) -> None:
    """The scheduler fires with engine.schedule's parser: what it cannot build must not pass validation."""
    path = write(tmp_path, "job.toml", f'command = "true"\ncron = "{cron}"\n')
    write(tmp_path, "ok.toml", 'command = "true"\ncron = "0 5 * * *"\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, path)
    assert (error.key, error.line) == ("cron", 2)
    assert expected in error.reason
    assert list(result.jobs) == ["ok"]
    for spec in result.jobs.values():  # every loaded job can be scheduled
        assert trigger_for(spec) is not None


def test_unknown_time_zone(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "true"\ntimezone = "Mars/Olympus_Mons"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert (error.key, error.line) == ("timezone", 2)
    assert "unknown time zone 'Mars/Olympus_Mons'" in error.reason


def test_bad_duration_reason_comes_from_the_parser(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "true"\ntimeout = "10 parsecs"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert error.key == "timeout"
    assert "bad duration '10 parsecs'" in error.reason


def test_command_is_required(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'every = "1m"\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, path)
    assert error.key == "command" and "required" in error.reason
    assert result.jobs == {}


def test_bad_file_and_folder_names_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "my job.toml", 'command = "true"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert error.key == "name"
    # Every character of "-x" is allowed; the reason must say it is the first one that is not.
    path = write(tmp_path, "-x.toml", 'command = "true"\n')
    assert "must start with a letter, digit or _" in only_error(load_folder(tmp_path).errors, path).reason


def test_unknown_agent_and_declared_agent_or_pool(tmp_path: Path) -> None:
    write(
        tmp_path,
        "vigil.toml",
        """
        [agents.a1]
        url = "https://a1:8700"
        [pools.p]
        agents = ["a1"]
        """,
    )
    bad = write(tmp_path, "bad.toml", 'command = "true"\n\nagent = "a11"\n')
    write(tmp_path, "to_agent.toml", 'command = "true"\nagent = "a1"\n')
    write(tmp_path, "to_pool.toml", 'command = "true"\nagent = "p"\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, bad)
    assert (error.key, error.line) == ("agent", 3)
    assert error.reason == (
        "unknown agent or pool 'a11' (did you mean 'a1'? declare [agents.a11] or [pools.a11] in vigil.toml; "
        "known: a1, p)"
    )
    assert sorted(result.jobs) == ["to_agent", "to_pool"]


def test_agent_without_vigil_toml_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "true"\nagent = "x"\n')
    assert "unknown agent or pool 'x'" in only_error(load_folder(tmp_path).errors, path).reason


def test_after_must_name_an_existing_job(tmp_path: Path) -> None:
    write(tmp_path, "etl/extract.toml", 'command = "true"\n')
    good = write(tmp_path, "etl/transform.toml", 'command = "true"\nafter = ["etl/extract"]\n')
    bad = write(tmp_path, "etl/load.toml", 'command = "true"\nafter = ["etl/transform", "transform"]\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, bad)
    assert (error.key, error.line) == ("after", 2)
    assert error.reason == "job 'transform' does not exist"
    assert errors_for(result.errors, good) == []
    assert sorted(result.jobs) == ["etl/extract", "etl/transform"]


def test_two_job_cycle_reports_each_job_with_the_path(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", 'command = "true"\nafter = ["b"]\n')
    b = write(tmp_path, "b.toml", 'command = "true"\n\nafter = ["a"]\n')
    write(tmp_path, "c.toml", 'command = "true"\nafter = ["a"]\n')  # downstream of a cycle, not in it
    result = load_folder(tmp_path)
    error_a = only_error(result.errors, a)
    error_b = only_error(result.errors, b)
    assert (error_a.key, error_a.line) == ("after", 2)
    assert (error_b.key, error_b.line) == ("after", 3)
    assert "cycle: a → b → a" in error_a.reason
    assert "cycle: b → a → b" in error_b.reason
    assert sorted(result.jobs) == ["c"]


def test_self_cycle_and_three_job_cycle(tmp_path: Path) -> None:
    me = write(tmp_path, "me.toml", 'command = "true"\nafter = ["me"]\n')
    for name, up in (("x", "y"), ("y", "z"), ("z", "x")):
        write(tmp_path, f"{name}.toml", f'command = "true"\nafter = ["{up}"]\n')
    result = load_folder(tmp_path)
    assert "cycle: me → me" in only_error(result.errors, me).reason
    assert "cycle: x → y → z → x" in only_error(result.errors, tmp_path / "x.toml").reason
    assert "cycle: z → x → y → z" in only_error(result.errors, tmp_path / "z.toml").reason
    assert result.jobs == {}


# ---------------------------------------------------------------------------------------------------
# _folder.toml inheritance


def test_folder_defaults_inherit_override_and_env_merges(tmp_path: Path) -> None:
    write(
        tmp_path,
        "_folder.toml",
        """
        command = "echo default"
        timeout = "10m"
        tags = ["root"]
        [env]
        SITE = "lab"
        LEVEL = "root"
        """,
    )
    write(
        tmp_path,
        "etl/_folder.toml",
        """
        timeout = "2m"
        tags = ["etl"]
        workdir = "work"
        [env]
        LEVEL = "etl"
        DATASET = "orders"
        """,
    )
    write(tmp_path, "etl/extract.toml", 'every = "1m"\n[env]\nDATASET = "users"\nOWN = "1"\n')
    write(tmp_path, "etl/deeper/load.toml", 'command = "echo load"\ntimeout = "30s"\n')
    write(tmp_path, "other.toml", 'every = "5m"\n')
    result = load_folder(tmp_path)
    assert result.errors == [], format_errors(result.errors)
    extract = result.jobs["etl/extract"]
    assert extract.command == "echo default"
    assert extract.timeout == 120.0
    assert extract.tags == ("etl",)  # lists replace, they do not merge
    assert dict(extract.env) == {"SITE": "lab", "LEVEL": "etl", "DATASET": "users", "OWN": "1"}
    assert extract.workdir == str(tmp_path / "etl" / "work")  # relative to the _folder.toml that set it
    load = result.jobs["etl/deeper/load"]
    assert load.command == "echo load"
    assert load.timeout == 30.0
    assert dict(load.env) == {"SITE": "lab", "LEVEL": "etl", "DATASET": "orders"}
    other = result.jobs["other"]
    assert other.timeout == 600.0
    assert other.tags == ("root",)
    assert dict(other.env) == {"SITE": "lab", "LEVEL": "root"}
    assert other.workdir is None


def test_bad_folder_file_is_reported_there_and_blocks_only_jobs_below(tmp_path: Path) -> None:
    folder = write(tmp_path, "etl/_folder.toml", 'timeout = "soon"\n')
    write(tmp_path, "etl/extract.toml", 'command = "true"\n')
    write(tmp_path, "etl/sub/load.toml", 'command = "true"\n')
    write(tmp_path, "other.toml", 'command = "true"\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, folder)
    assert (error.key, error.line) == ("timeout", 1)
    assert len(result.errors) == 1  # reported once, against the folder file, not per job
    assert sorted(result.jobs) == ["other"]


def test_folder_file_unknown_agent_and_missing_after_are_its_errors(tmp_path: Path) -> None:
    folder = write(tmp_path, "grp/_folder.toml", 'agent = "nowhere"\nafter = ["ghost"]\n')
    write(tmp_path, "grp/a.toml", 'command = "true"\n')
    result = load_folder(tmp_path)
    keys = sorted((error.key, error.line) for error in errors_for(result.errors, folder))
    assert keys == [("after", 2), ("agent", 1)]
    assert result.jobs == {}


# ---------------------------------------------------------------------------------------------------
# Positions and completeness


def test_toml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "true"\ndescription = "ok"\ntimeout = = 3\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert error.key == "syntax"
    assert error.line == 3
    assert error.reason.startswith("invalid TOML: ")


def test_syntax_error_at_end_of_file_points_at_last_line(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "true"\ntags = ["a",\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert (error.key, error.line) == ("syntax", 2)


def test_line_numbers_follow_tables_and_skip_multiline_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.toml",
        """
        # comment
        command = '''
        retries = 5
        [env]
        '''
        retries = "x"
        tags = [
          "a",
          2,
        ]

        [env]
        OK = "1"
        BAD = 7
        """,
    )
    errors = errors_for(load_folder(tmp_path).errors, path)
    assert sorted((error.key, error.line) for error in errors) == [
        ("env.BAD", 14),
        ("retries", 6),
        ("tags", 7),
    ]


def test_every_error_in_one_file_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.toml",
        """
        command = "true"
        cron = "99 * * * *"
        every = "fast"
        timezone = "Nowhere/City"
        overlap = "sometimes"
        retries = -2
        colour = "blue"
        """,
    )
    errors = errors_for(load_folder(tmp_path).errors, path)
    assert [(error.key, error.line) for error in errors] == [
        ("cron", 2),
        ("every", 3),
        ("timezone", 4),
        ("overlap", 5),
        ("retries", 6),
        ("colour", 7),
    ]


def test_a_bad_file_does_not_stop_good_ones(tmp_path: Path) -> None:
    write(tmp_path, "good1.toml", 'command = "true"\nevery = "1m"\n')
    write(tmp_path, "bad.toml", "command = \n")
    write(tmp_path, "sub/good2.toml", 'command = "true"\n')
    write(tmp_path, "worse.toml", b"\xff\xfe".decode("latin-1"))
    result = load_folder(tmp_path)
    assert sorted(result.jobs) == ["good1", "sub/good2"]
    assert {Path(error.path).name for error in result.errors} == {"bad.toml", "worse.toml"}


def test_format_errors_gives_one_line_each(tmp_path: Path) -> None:
    errors = [ConfigError("a.toml", "cron", "bad", 3), ConfigError("b.toml", "command", "required")]
    assert format_errors(errors) == "a.toml:3: cron: bad\nb.toml: command: required"
    assert format_errors([]) == ""


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    result = load_folder(tmp_path / "nope")
    assert result.jobs == {}
    assert len(result.errors) == 1 and "does not exist" in result.errors[0].reason


# ---------------------------------------------------------------------------------------------------
# vigil.toml


def test_settings_happy_path(tmp_path: Path) -> None:
    write(tmp_path, "certs/ca.pem", "")
    write(
        tmp_path,
        "vigil.toml",
        """
        [scheduler]
        retention = "7d"
        log_cap = "512KB"
        kill_grace = "2s"
        heartbeat_interval = "200ms"
        heartbeat_timeout = "2s"
        max_missed_rows = 50
        agent_poll_interval = "1s"
        agent_wait_limit = "10m"

        [agents.a1]
        url = "https://a1.example:8700"
        token_file = "secrets/a1.token"
        tls_ca = "certs/ca.pem"
        tls_cert = "/etc/vigil/client.pem"
        tls_key = "/etc/vigil/client.key"

        [agents.a2]
        url = "http://a2:8700"

        [pools.lab]
        agents = ["a2", "a1"]
        mode = "round-robin"

        [pools.default]
        agents = ["a1"]
        """,
    )
    settings, errors = load_settings(tmp_path)
    assert errors == [], format_errors(errors)
    assert settings.retention == 7 * 86400.0
    assert settings.log_cap == 512 * 1024
    assert settings.kill_grace == 2.0
    assert settings.heartbeat_interval == 0.2
    assert settings.heartbeat_timeout == 2.0
    assert settings.max_missed_rows == 50
    assert settings.agent_poll_interval == 1.0
    assert settings.agent_wait_limit == 600.0
    a1 = settings.agents["a1"]
    assert a1.url == "https://a1.example:8700"
    assert a1.token_file == str(tmp_path / "secrets/a1.token")
    assert a1.tls_ca == str(tmp_path / "certs/ca.pem")
    assert (a1.tls_cert, a1.tls_key) == ("/etc/vigil/client.pem", "/etc/vigil/client.key")
    assert settings.agents["a2"].token_file is None
    assert settings.pools["lab"].agents == ("a2", "a1")
    assert settings.pools["lab"].mode == "round-robin"
    assert settings.pools["default"].mode == "fixed-priority"


def test_settings_absent_means_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path) == (Settings(), [])
    assert load_folder(tmp_path).settings == Settings()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1MB", 1024**2), ("2GB", 2 * 1024**3), ("64kb", 64 * 1024), (4096, 4096), ("1.5MB", 1572864)],
)
def test_log_cap_sizes(tmp_path: Path, value: object, expected: int) -> None:
    text = f'"{value}"' if isinstance(value, str) else str(value)
    write(tmp_path, "vigil.toml", f"[scheduler]\nlog_cap = {text}\n")
    settings, errors = load_settings(tmp_path)
    assert errors == []
    assert settings.log_cap == expected


@pytest.mark.parametrize(
    ("text", "key", "line", "expected"),
    [
        ('[scheduler]\nlog_cap = "1XB"\n', "scheduler.log_cap", 2, "bad size"),
        ("[scheduler]\nlog_cap = 0\n", "scheduler.log_cap", 2, "at least 1 byte"),
        ("[scheduler]\nlog_cap = true\n", "scheduler.log_cap", 2, "got a boolean"),
        ('[scheduler]\nretention = "forever"\n', "scheduler.retention", 2, "bad duration"),
        ("[scheduler]\nmax_missed_rows = 0\n", "scheduler.max_missed_rows", 2, "at least 1"),
        (
            '[scheduler]\nheartbeat_timeout = "100ms"\n',
            "scheduler.heartbeat_timeout",
            2,
            "heartbeat_interval",
        ),
        ("[scheduler]\nspeed = 3\n", "scheduler.speed", 2, "unknown key"),
        ("[database]\npath = 'x'\n", "database", 1, "unknown key"),
        ("scheduler = 3\n", "scheduler", 1, "expected a table"),
        ("[agents.a]\ntoken_file = 'x'\n", "agents.a", 1, "url is missing"),
        ("[agents.a]\nurl = 'ftp://a'\n", "agents.a.url", 2, "http:// or https://"),
        ("[agents.a]\nurl = 'https://'\n", "agents.a.url", 2, "with a host"),
        ("[agents.a]\nurl = 5\n", "agents.a.url", 2, "got an integer"),
        ("[agents.a]\nurl = 'http://a'\ntls_ca = 'ca.pem'\n", "agents.a.tls_ca", 3, "https"),
        ("[agents.a]\nurl = 'https://a'\ntls_key = 'k'\n", "agents.a.tls_key", 3, "tls_cert"),
        ("[agents.a]\nurl = 'https://a'\nport = 1\n", "agents.a.port", 3, "unknown key"),
        ("[pools.p]\nagents = ['ghost']\n", "pools.p.agents", 2, "unknown agent 'ghost'"),
        ("[pools.p]\nagents = []\n", "pools.p.agents", 2, "at least one agent"),
        ("[pools.p]\nmode = 'round-robin'\n", "pools.p", 1, "agents is missing"),
        (
            "[agents.a]\nurl = 'http://a'\n[pools.p]\nagents = ['a']\nmode = 'random'\n",
            "pools.p.mode",
            5,
            "one of",
        ),
        ("[agents.a]\nurl = 'http://a'\n[pools.a]\nagents = ['a']\n", "pools.a", 3, "same name"),
    ],
)
def test_settings_errors(tmp_path: Path, text: str, key: str, line: int, expected: str) -> None:
    write(tmp_path, "vigil.toml", text)
    settings, errors = load_settings(tmp_path)
    assert len(errors) == 1, format_errors(errors)
    assert (errors[0].key, errors[0].line) == (key, line)
    assert expected in errors[0].reason
    assert errors[0].path == str(tmp_path / "vigil.toml")
    assert "p" not in settings.pools


def test_job_naming_an_invalid_agent_is_told_so(tmp_path: Path) -> None:
    write(tmp_path, "vigil.toml", "[agents.a1]\nurl = 'gopher://a1'\n")
    job = write(tmp_path, "job.toml", 'command = "true"\nagent = "a1"\n')
    result = load_folder(tmp_path)
    assert "definition is invalid" in only_error(result.errors, job).reason
    assert len(errors_for(result.errors, tmp_path / "vigil.toml")) == 1


def test_settings_syntax_error(tmp_path: Path) -> None:
    write(tmp_path, "vigil.toml", "[scheduler\n")
    settings, errors = load_settings(tmp_path)
    assert settings == Settings(channels_unknown=True)  # defaults; its channels' pending events wait
    assert [(error.key, error.line) for error in errors] == [("syntax", 1)]


# ---------------------------------------------------------------------------------------------------
# Live reload


def test_live_reload_lifecycle(tmp_path: Path) -> None:
    job = write(tmp_path, "job.toml", 'command = "echo 1"\nevery = "1m"\n')
    write(tmp_path, "other.toml", 'command = "true"\n')
    folder = JobFolder(tmp_path)

    first = folder.scan()
    assert first.changed == {"job", "other"} and first.removed == set() and first.errors == []

    unchanged = folder.scan()
    assert (unchanged.changed, unchanged.removed, unchanged.errors) == (set(), set(), [])
    assert unchanged.jobs == first.jobs

    job.write_text('command = "echo 2"\nevery = "1m"\n')  # same size: found by content, not size
    modified = folder.scan()
    assert modified.changed == {"job"}
    assert modified.jobs["job"].command == "echo 2"

    job.write_text('command = "echo 3"\nevery = "1 fortnight"\n')
    broken = folder.scan()
    assert broken.changed == set() and broken.removed == set()
    assert broken.jobs["job"].command == "echo 2"  # the last valid version stays active
    assert [(error.key, error.line) for error in broken.errors] == [("every", 2)]
    assert folder.scan().errors == broken.errors  # still reported while still broken

    job.write_text('command = "echo 4"\nevery = "2m"\n')
    fixed = folder.scan()
    assert fixed.errors == []
    assert fixed.changed == {"job"}
    assert (fixed.jobs["job"].command, fixed.jobs["job"].every) == ("echo 4", 120.0)

    write(tmp_path, "new/one.toml", 'command = "true"\n')
    added = folder.scan()
    assert added.changed == {"new/one"} and "new/one" in added.jobs

    job.unlink()
    deleted = folder.scan()
    assert deleted.removed == {"job"} and deleted.changed == set()
    assert sorted(deleted.jobs) == ["new/one", "other"]


def test_touch_without_change_is_not_a_change(tmp_path: Path) -> None:
    job = write(tmp_path, "job.toml", 'command = "true"\n')
    folder = JobFolder(tmp_path)
    folder.scan()
    os.utime(job, ns=(1, 1))
    result = folder.scan()
    assert result.changed == set() and "job" in result.jobs


def test_edit_within_one_timestamp_tick_is_still_seen(tmp_path: Path) -> None:
    """Same size and same mtime (a coarse clock tick): a freshly written file's content is re-checked."""
    job = write(tmp_path, "job.toml", 'command = "echo A"\n')
    folder = JobFolder(tmp_path)
    folder.scan()
    before = job.stat()
    job.write_text('command = "echo B"\n')
    os.utime(job, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (job.stat().st_mtime_ns, job.stat().st_size) == (before.st_mtime_ns, before.st_size)
    result = folder.scan()
    assert result.changed == {"job"}
    assert result.jobs["job"].command == "echo B"


def test_broken_job_that_never_was_valid_is_absent_not_removed(tmp_path: Path) -> None:
    job = write(tmp_path, "job.toml", "command = 1\n")
    folder = JobFolder(tmp_path)
    assert folder.scan().jobs == {}
    job.unlink()
    result = folder.scan()
    assert result.removed == set() and result.errors == []


def test_folder_file_change_reevaluates_only_jobs_below(tmp_path: Path) -> None:
    settings = write(tmp_path, "etl/_folder.toml", '[env]\nDATASET = "orders"\n')
    write(tmp_path, "etl/a.toml", 'command = "true"\n')
    write(tmp_path, "etl/sub/b.toml", 'command = "true"\n')
    write(tmp_path, "c.toml", 'command = "true"\n')
    folder = JobFolder(tmp_path)
    folder.scan()

    settings.write_text('[env]\nDATASET = "people"\n')
    changed = folder.scan()
    assert changed.changed == {"etl/a", "etl/sub/b"}
    assert dict(changed.jobs["etl/sub/b"].env) == {"DATASET": "people"}

    settings.write_text("[env]\nDATASET = 42\n")
    broken = folder.scan()
    assert broken.changed == set() and broken.removed == set()
    assert dict(broken.jobs["etl/a"].env) == {"DATASET": "people"}  # last valid version kept
    assert [(Path(e.path).name, e.key) for e in broken.errors] == [("_folder.toml", "env.DATASET")]

    settings.unlink()
    gone = folder.scan()
    assert gone.errors == [] and gone.changed == {"etl/a", "etl/sub/b"}
    assert gone.jobs["etl/a"].env == ()


def test_job_checked_again_from_its_file_when_a_folder_above_changes(tmp_path: Path) -> None:
    """A loaded job keeps no parsed copy of its file: a `_folder.toml` edit re-reads it, lines and all."""
    settings = write(tmp_path, "etl/_folder.toml", '[env]\nA = "a"\n')
    job = write(tmp_path, "etl/job.toml", f'command = "true"\ntimeout = "1m"\n[env]\nB = "{"b" * 30000}"\n')
    folder = JobFolder(tmp_path)
    assert dict(folder.scan().jobs["etl/job"].env) == {"A": "a", "B": "b" * 30000}

    settings.write_text(f'[env]\nA = "{"a" * 40000}"\n')  # fine alone; too large merged with the job's
    broken = folder.scan()
    error = only_error(broken.errors, job)
    assert (error.key, error.line) == ("env", 3) and "_folder.toml" in error.reason
    assert dict(broken.jobs["etl/job"].env) == {"A": "a", "B": "b" * 30000}  # last valid version kept

    settings.write_text('[env]\nA = "c"\n')
    fixed = folder.scan()
    assert fixed.errors == [] and fixed.changed == {"etl/job"}
    assert dict(fixed.jobs["etl/job"].env) == {"A": "c", "B": "b" * 30000} and fixed.jobs["etl/job"].timeout == 60.0


def test_user_set_by_a_folder_is_checked_again_when_accounts_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.config.folder as folder_module
    from engine.users import Account

    write(tmp_path, "ops/_folder.toml", 'user = "vigil-test-nobody"\n')
    write(tmp_path, "ops/job.toml", 'command = "true"\n')
    write(tmp_path, "other.toml", 'command = "true"\n')
    folder = JobFolder(tmp_path)
    first = folder.scan()
    assert sorted(first.jobs) == ["other"] and "no user 'vigil-test-nobody'" in first.errors[0].reason

    me = Account("vigil-test-nobody", os.geteuid(), os.getegid(), str(tmp_path), "/bin/sh")
    monkeypatch.setattr(folder_module, "find_account", lambda name: me if name == me.name else None)
    monkeypatch.setattr(folder_module, "accounts_stamp", lambda: (1, 1))  # the passwd file changed
    after = folder.scan()
    assert after.errors == [] and after.changed == {"ops/job"} and after.jobs["ops/job"].user == me.name


def test_vigil_toml_change_revalidates_agent_references(tmp_path: Path) -> None:
    job = write(tmp_path, "job.toml", 'command = "true"\nagent = "edge"\n')
    folder = JobFolder(tmp_path)
    first = folder.scan()
    assert "job" not in first.jobs
    assert [(Path(e.path), e.key) for e in first.errors] == [(job, "agent")]

    write(tmp_path, "vigil.toml", '[agents.edge]\nurl = "http://edge:8700"\n')
    declared = folder.scan()
    assert declared.errors == []
    assert declared.changed == {"job"}
    assert declared.settings.agents["edge"].url == "http://edge:8700"

    (tmp_path / "vigil.toml").write_text('[agents.edge]\nurl = "http://edge:8701"\nbogus = 1\n')
    broken = folder.scan()
    assert broken.settings.agents["edge"].url == "http://edge:8700"  # last valid settings stay
    assert [e.key for e in broken.errors] == ["agents.edge.bogus"]
    assert "job" in broken.jobs

    (tmp_path / "vigil.toml").write_text('[agents.other]\nurl = "http://other:8700"\n')
    renamed = folder.scan()
    assert [(Path(e.path), e.key) for e in renamed.errors] == [(job, "agent")]
    assert renamed.jobs["job"].agent == "edge"  # the job's last valid version stays, with the error


def test_cycle_made_by_an_edit_keeps_previous_versions(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'command = "true"\n')
    b = write(tmp_path, "b.toml", 'command = "true"\nafter = ["a"]\n')
    a = tmp_path / "a.toml"
    folder = JobFolder(tmp_path)
    folder.scan()
    a.write_text('command = "true"\nafter = ["b"]\n')
    result = folder.scan()
    assert result.jobs["a"].after == ()
    assert result.jobs["b"].after == ("a",)
    assert {Path(e.path) for e in result.errors} == {a, b}
    assert all("cycle" in e.reason for e in result.errors)


def test_deleting_an_upstream_job_reports_the_downstream_reference(tmp_path: Path) -> None:
    up = write(tmp_path, "up.toml", 'command = "true"\n')
    down = write(tmp_path, "down.toml", 'command = "true"\nafter = ["up"]\n')
    folder = JobFolder(tmp_path)
    folder.scan()
    up.unlink()
    result = folder.scan()
    assert result.removed == {"up"}
    error = only_error(result.errors, down)
    assert (error.key, error.reason) == ("after", "job 'up' does not exist")


# ---------------------------------------------------------------------------------------------------
# The shipped sample folder


def test_sample_jobs_load_cleanly() -> None:
    result = load_folder(SAMPLE_JOBS)
    assert result.errors == [], format_errors(result.errors)
    assert len(result.jobs) >= 8
    for spec in result.jobs.values():
        assert spec.description, spec.name
        assert spec.tags, spec.name
    assert result.jobs["etl/load"].after == ("etl/transform",)
    assert result.jobs["etl/transform"].after == ("etl/extract",)
    assert result.jobs["reports/daily_summary"].timezone == "Europe/Berlin"
    assert result.jobs["health/ping"].every == 15.0
    assert result.settings.retention == 30 * 86400.0
    assert result.settings.log_cap == 1024 * 1024
    assert any(spec.retries and "VIGIL_ATTEMPT" in str(spec.command) for spec in result.jobs.values())
    assert any(spec.overlap is Overlap.SKIP and spec.every == 5.0 for spec in result.jobs.values())


# ---------------------------------------------------------------------------------------------------
# CLI argument handling (pure: parsing only, no state directory is opened)


@pytest.mark.parametrize(
    ("argv", "state"),
    [
        (["db", "--state", "S", "check"], "S"),
        (["db", "check", "--state", "S"], "S"),
        (["db", "--state", "S", "backup", "out.db"], "S"),
        (["db", "prune", "--older-than", "1d"], os.environ.get("VIGIL_STATE", "./.vigil")),
    ],
)
def test_db_state_option_is_kept_wherever_it_is_written(argv: list[str], state: str) -> None:
    from engine.cli import build_parser

    assert build_parser().parse_args(argv).state == state


def test_db_prune_bad_duration_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["db", "prune", "--older-than", "soon", "--state", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vigil: --older-than: bad duration 'soon'") and "Traceback" not in err


def test_next_names_only_the_errors_of_the_job_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    write(tmp_path, "jobs/bad.toml", 'command = "true"\ncron = "99 * * * *"\n')
    argv = ["next", "--jobs", str(tmp_path / "jobs"), "--state", str(tmp_path / "state")]
    assert main([*argv, "bad"]) == 1
    assert "bad.toml:2: cron" in capsys.readouterr().err
    assert main([*argv, "a"]) == 3  # not found; 'a' is a substring of the folder and of bad.toml's path
    assert capsys.readouterr().err == "vigil: no valid job named 'a'\n"


def test_next_of_a_job_whose_folder_defaults_are_broken_is_an_error_not_a_missing_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A good job file under a broken `_folder.toml` is there but invalid: exit 1 naming the cause, not 3."""
    from engine.cli import main

    write(tmp_path, "jobs/y/j.toml", 'command = "true"\nevery = "1m"\n')
    write(tmp_path, "jobs/y/_folder.toml", 'timeout = "zz"\n')
    argv = ["next", "--jobs", str(tmp_path / "jobs"), "--state", str(tmp_path / "state"), "y/j"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("vigil: no valid job named 'y/j': ") and "_folder.toml:1: timeout" in err


def test_validate_missing_folder_is_a_vigil_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"vigil: {tmp_path / 'nope'}: not a directory\n"


# ---------------------------------------------------------------------------------------------------
# Bounds (issue 9, item 14): values that load today but fail, spin or overflow later


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('every = "1ms"', "every", "must be at least 1s"),
        ('every = "999ms"', "every", "must be at least 1s"),
        ("every = 0.5", "every", "must be at least 1s"),
        ("retries = 99999999999999999999", "retries", "must be at most 100, got 99999999999999999999"),
        ("retries = 101", "retries", "must be at most 100"),
        ('every = "36501d"', "every", "at most 100 years"),
        ('timeout = "36500d1s"', "timeout", "at most 100 years"),
        ('retry_delay = "36501d"', "retry_delay", "at most 100 years"),
        ('catchup_window = "5300w"', "catchup_window", "at most 100 years"),
        ('cron = "*/61 * * * *"', "cron", "minute field '*/61': step 61 is larger than the field's range"),
        ('cron = "0 */25 * * *"', "cron", "hour field '*/25'"),
        ('cron = "*/61 * * * * *"', "cron", "second field '*/61'"),
        ('cron = "0 0 */32 * *"', "cron", "day-of-month field '*/32'"),
        ('cron = "0 0 1 */13 *"', "cron", "month field '*/13'"),
        ('cron = "0 0 * * 1/8"', "cron", "day-of-week field '1/8'"),
        ("at = 9999-12-31T23:00:00\ntimezone = 'America/New_York'", "at", "between the years 1970 and 9899"),
        ("at = 0001-01-01T00:00:00+05:00", "at", "between the years"),
    ],
)
def test_values_past_sensible_bounds_are_rejected(tmp_path: Path, line: str, key: str, expected: str) -> None:
    path = write(tmp_path, "job.toml", f'command = "true"\n{line}\n')
    write(tmp_path, "ok.toml", 'command = "true"\nevery = "1s"\nretries = 100\ncron = "*/60 * * * *"\n')
    result = load_folder(tmp_path)
    error = only_error(result.errors, path)
    assert (error.key, error.line) == (key, 2)
    assert expected in error.reason
    assert list(result.jobs) == ["ok"]
    for spec in result.jobs.values():
        assert trigger_for(spec) is not None


def test_36500d_is_the_longest_duration_accepted_as_docs_say(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "jobs.md").read_text()
    assert "`36500d` is the longest accepted" in docs
    write(tmp_path, "a.toml", 'command = "true"\ntimeout = "36500d"\nretry_delay = "36500d"\n')
    write(tmp_path, "b.toml", 'command = "true"\ntimeout = "36501d"\n')
    result = load_folder(tmp_path)
    assert list(result.jobs) == ["a"]
    assert [(Path(e.path).name, e.key) for e in result.errors] == [("b.toml", "timeout")]


@pytest.mark.parametrize(
    ("seconds", "accepted"),
    [
        (0.0, True),
        (36500 * 86400, True),
        (-1e-9, False),
        (MAX_DURATION_S + 1e-6, False),
        (float("nan"), False),
        (float("inf"), False),
    ],
)
def test_within_max_duration_is_0_to_36500d_inclusive(seconds: float, accepted: bool) -> None:
    """The one 100-year bound (job files, vigil.toml and `db prune` all use it)."""
    assert within_max_duration(seconds) is accepted
    assert (MAX_DURATION_LABEL, MAX_DURATION_TEXT) == ("100 years (36500d)", "36500d")


def test_at_is_accepted_up_to_the_last_year_to_which_any_duration_can_be_added(tmp_path: Path) -> None:
    write(tmp_path, "last.toml", 'command = "true"\nat = 9899-12-31T23:59:59Z\n')
    late = write(tmp_path, "late.toml", 'command = "true"\nat = 9900-01-01T00:00:00Z\n')
    result = load_folder(tmp_path)
    assert list(result.jobs) == ["last"]
    assert only_error(result.errors, late).reason == "must be between the years 1970 and 9899 (UTC)"
    assert result.jobs["last"].at + timedelta(seconds=MAX_DURATION_S) < datetime.max.replace(tzinfo=UTC)


def test_a_command_too_long_to_exec_is_rejected_at_load_time(tmp_path: Path) -> None:
    """10 MB would fail only at launch, with E2BIG; 64 KiB is the documented cap (string or array)."""
    huge = write(tmp_path, "huge.toml", f'command = "echo {"x" * (10 * 1024 * 1024)}"\n')
    path_s = write(tmp_path, "s.toml", f'command = "echo {"x" * (500 * 1024)}"\n')
    path_a = write(tmp_path, "a.toml", f'command = ["echo", "{"y" * 40000}", "{"y" * 40000}"]\n')
    write(tmp_path, "ok.toml", f'command = "echo {"z" * 60000}"\n')
    result = load_folder(tmp_path)
    assert "at most 65536 bytes (64 KiB) are allowed" in only_error(result.errors, path_s).reason
    assert f"is {500 * 1024 + 5} bytes;" in only_error(result.errors, path_s).reason
    assert "larger than 1048576 bytes (1 MiB)" in only_error(result.errors, huge).reason
    assert only_error(result.errors, path_a).key == "command"
    assert list(result.jobs) == ["ok"]


def test_env_too_large_is_rejected_also_when_only_the_merge_is(tmp_path: Path) -> None:
    write(tmp_path, "big/own.toml", f'command = "true"\n[env]\nA = "{"a" * 70000}"\n')
    write(tmp_path, "merged/_folder.toml", f'[env]\nA = "{"a" * 40000}"\n')
    job = write(tmp_path, "merged/job.toml", f'command = "true"\n[env]\nB = "{"b" * 40000}"\n')
    write(tmp_path, "merged/fine.toml", 'command = "true"\n')
    result = load_folder(tmp_path)
    own = only_error(result.errors, tmp_path / "big/own.toml")
    assert (own.key, own.line) == ("env", 2) and "at most 65536 bytes (64 KiB)" in own.reason
    merged = only_error(result.errors, job)
    assert merged.key == "env" and "_folder.toml" in merged.reason
    assert sorted(result.jobs) == ["merged/fine"]


def test_huge_integers_and_sizes_are_errors_not_crashes(tmp_path: Path) -> None:
    digits = "1" + "0" * 5000  # tomllib itself refuses to convert this (Python's int-string limit)
    path = write(tmp_path, "job.toml", f'command = "true"\nretries = {digits}\n')
    write(tmp_path, "vigil.toml", f'[scheduler]\nlog_cap = "{"9" * 400}GB"\nmax_missed_rows = {2**70}\n')
    result = load_folder(tmp_path)
    assert only_error(result.errors, path).key == "syntax"
    settings = {e.key: e.reason for e in errors_for(result.errors, tmp_path / "vigil.toml")}
    assert "must be at most 1024GB" in settings["scheduler.log_cap"]
    assert "must be at most 1000000" in settings["scheduler.max_missed_rows"]


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('heartbeat_interval = "1ms"', "scheduler.heartbeat_interval", "must be at least 10ms"),
        ('agent_poll_interval = "1ms"', "scheduler.agent_poll_interval", "must be at least 100ms"),
    ],
)
def test_settings_that_would_spin_a_loop_are_rejected(tmp_path: Path, line: str, key: str, expected: str) -> None:
    write(tmp_path, "vigil.toml", f"[scheduler]\n{line}\n")
    settings, errors = load_settings(tmp_path)
    assert [(e.key, e.line) for e in errors] == [(key, 2)]
    assert expected in errors[0].reason
    assert settings == Settings()


# ---------------------------------------------------------------------------------------------------
# Messages: user text escaped, values shown as written (issue 9, item 14 and 16)


def test_control_characters_in_keys_values_and_names_are_escaped_in_every_message(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'command = "true"\n"evil\\u001b[2J\\u0007" = 1\n')
    write(tmp_path, "b.toml", 'command = "true"\novercap = "x"\nenv = { "K\\u001b]0;pwn\\u0007" = 1 }\n')
    write(tmp_path, "c.toml", 'command = "true"\ntimezone = "Europe/\\u001b[31mBerlin"\n')
    write(tmp_path, "d.toml", 'command = "true"\nafter = ["x\\u009bq", "\\u202egnp.exe"]\n')
    write(tmp_path, "e.toml", 'command = "true"\nretries = "\\r\\nforged: line"\n')
    (tmp_path / "bad\x1b[1mname.toml").write_text('command = "true"\n')
    write(tmp_path, "vigil.toml", '[agents."a\\u001bb"]\nurl = "ftp://\\u001b"\n')
    result = load_folder(tmp_path)
    text = format_errors(result.errors)
    assert len(result.errors) >= 8, text
    for bad in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert bad not in text
    assert text.count("\n") == len(result.errors) - 1  # one line per error, whatever the values hold
    assert "evil\\x1b[2J\\x07: unknown key" in text
    assert "Europe/\\x1b[31mBerlin" in text
    assert "bad\\x1b[1mname.toml" in text
    for error in result.errors:
        assert str(error) == error.format()


def test_messages_show_values_as_toml_writes_them_not_python_reprs(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "command = 2024-01-01\n")
    write(tmp_path, "b.toml", 'command = "true"\nenabled = 07:30:00\n')
    write(tmp_path, "c.toml", 'command = "true"\ndescription = 2024-01-01T10:00:00Z\n')
    write(tmp_path, "d.toml", 'command = "true"\nretries = true\n')
    write(tmp_path, "e.toml", 'command = "true"\ntags = [[1, 2]]\n')
    write(tmp_path, "f.toml", 'command = "true"\nevery = true\ntimeout = [1]\n')
    write(tmp_path, "vigil.toml", "scheduler = 2024-01-01\n[agents.x]\nurl = 5\n")
    text = format_errors(load_folder(tmp_path).errors)
    for python in ("datetime.", "True", "False", "[[1, 2]]", "tzinfo", "<class", "(1,"):
        assert python not in text, text
    assert "got a date (2024-01-01)" in text
    assert "got a time (07:30:00)" in text
    assert "got a date-time (2024-01-01T10:00:00+00:00)" in text
    assert "got a boolean (true)" in text
    assert "got an array (2 items)" in text
    assert "got an integer (5)" in text


# ---------------------------------------------------------------------------------------------------
# The folder walk: every `*.toml` that cannot be read is an error of its own, and nothing that is
# not a regular file is opened (issue 9, item 14)


def test_unreadable_toml_entries_each_get_an_error_and_nothing_blocks(tmp_path: Path) -> None:
    import socket
    import stat
    import time

    write(tmp_path, "ok.toml", 'command = "true"\n')
    os.mkfifo(tmp_path / "fifo.toml")
    os.symlink(tmp_path / "fifo.toml", tmp_path / "to_fifo.toml")
    os.symlink(tmp_path / "missing", tmp_path / "dangling.toml")
    os.symlink(tmp_path / "loop_b.toml", tmp_path / "loop_a.toml")
    os.symlink(tmp_path / "loop_a.toml", tmp_path / "loop_b.toml")
    os.symlink("/proc/self/status", tmp_path / "proc.toml")  # "regular" per stat, yet a kernel file
    if os.path.exists("/proc/kmsg"):
        os.symlink("/proc/kmsg", tmp_path / "kmsg.toml")  # a read blocks until the kernel logs
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null.toml", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.toml"))
    started = time.monotonic()
    try:
        result = load_folder(tmp_path)
    finally:
        server.close()
    assert time.monotonic() - started < 2
    reasons = {Path(e.path).name: e.reason for e in result.errors}
    expected = {"fifo.toml", "to_fifo.toml", "dangling.toml", "loop_a.toml", "loop_b.toml", "proc.toml", "sock.toml"}
    expected |= {"kmsg.toml"} if os.path.exists("/proc/kmsg") else set()
    expected |= {"null.toml"} if os.geteuid() == 0 else set()
    assert set(reasons) == expected, format_errors(result.errors)
    assert all(e.key == "file" for e in result.errors)
    assert "named pipe" in reasons["fifo.toml"] and "named pipe" in reasons["to_fifo.toml"]
    assert "dangling symlink" in reasons["dangling.toml"] and "missing" in reasons["dangling.toml"]
    assert "symlink loop" in reasons["loop_a.toml"]
    assert "kernel pseudo-file" in reasons["proc.toml"]
    assert "socket" in reasons["sock.toml"]
    assert list(result.jobs) == ["ok"]


def test_a_fifo_job_file_is_never_opened(tmp_path: Path) -> None:
    """A writer blocked on the FIFO would be released by any open for reading: it must stay blocked."""
    import threading

    fifo = tmp_path / "job.toml"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY)  # blocks until someone opens the FIFO for reading
        except OSError:
            return
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    folder = JobFolder(tmp_path)
    for _ in range(3):
        result = folder.scan()
    assert [e.key for e in result.errors] == ["file"]
    assert not opened.wait(0.2)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
    thread.join(2)


def test_symlinked_job_files_inside_and_outside_the_folder_are_read(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "real.toml"
    outside.parent.mkdir()
    outside.write_text('command = "true"\n')
    root = tmp_path / "jobs"
    write(root, "inside.toml", 'command = "true"\n')
    os.symlink(root / "inside.toml", root / "alias.toml")
    os.symlink(outside, root / "out.toml")
    os.symlink(outside.parent, root / "linked_folder")  # symlinked folders are not followed
    result = load_folder(root)
    assert result.errors == []
    assert sorted(result.jobs) == ["alias", "inside", "out"]


def test_a_file_larger_than_any_job_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "big.toml", "# " + "x" * (2 * 1024 * 1024) + '\ncommand = "true"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert error.key == "file" and "larger than 1048576 bytes (1 MiB)" in error.reason


def test_a_job_file_of_exactly_the_size_limit_is_read_whole(tmp_path: Path) -> None:
    from engine.config.sources import MAX_FILE_BYTES

    head = 'command = "true"\ndescription = "'
    tail = '"\n'
    body = "d" * (MAX_FILE_BYTES - len(head) - len(tail))  # read in several steps, not one of 1 MiB
    write(tmp_path, "big.toml", head + body + tail)
    result = load_folder(tmp_path)
    assert result.errors == [] and result.jobs["big"].description == body


def test_a_rescan_that_finds_nothing_changed_allocates_nothing_for_each_job(tmp_path: Path) -> None:
    # Every second: at 10,000 jobs, copies of the job mapping there left megabytes of heap behind.
    import tracemalloc

    from engine.run.catalog import Catalog
    from engine.run.planner import Planner
    from engine.run.table import RunTable

    def rescan_peak(root: Path, jobs: int) -> int:
        for n in range(jobs):
            text = f'command = "true"\ncron = "{n % 60} 3 * * *"\n'
            os.utime(write(root, f"team{n // 100}/job{n}.toml", text), (1e9, 1e9))  # none is read again
        clock = FakeClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        planner = Planner(RunTable(clock), clock)
        catalog = Catalog(planner, root)
        folder = JobFolder(root)
        catalog.apply_scan(folder.scan(), clock.now(), initial=True)
        catalog.apply_scan(folder.scan(), clock.now())  # the second sets up the folder watch
        tracemalloc.start()
        try:
            catalog.apply_scan(folder.scan(), clock.now())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert len(planner.jobs) == jobs

    few, many = rescan_peak(tmp_path / "few", 200), rescan_peak(tmp_path / "many", 3000)
    assert many - few < 16 * 1024, f"an unchanged rescan allocated {few} bytes at 200 jobs, {many} at 3,000"


def test_cli_errors_carrying_user_text_stay_one_escaped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    write(tmp_path, "a.toml", 'command = "true"\n')
    code = main(["next", "evil\x1b[2J\nforged", "--jobs", str(tmp_path), "--state", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code != 0
    assert err == "vigil: no valid job named 'evil\\x1b[2J\\nforged'\n"
    code = main(["validate", str(tmp_path / "gone\x1b]0;title\x07\nvigil: forged")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "\x1b" not in err and "\x07" not in err
    assert "gone\\x1b]0;title\\x07\\nvigil: forged: not a directory" in err


# ---------------------------------------------------------------------------------------------------
# Messages that name the real numbers and the real place of a key (issue 9 review, #17 and D5)


def test_length_limits_say_the_actual_length_and_the_limit_in_bytes(tmp_path: Path) -> None:
    over = write(tmp_path, "over.toml", f'command = "{"x" * 65537}"\n')
    items = write(tmp_path, "items.toml", f'command = ["echo", "{"y" * 40000}", "{"y" * 40000}"]\n')
    env = write(tmp_path, "env.toml", f'command = "true"\n[env]\nA = "{"a" * 65534}"\n')
    write(tmp_path, "exact.toml", f'command = "{"z" * 65536}"\n')
    result = load_folder(tmp_path)
    assert only_error(result.errors, over).reason == (
        "is 65537 bytes; at most 65536 bytes (64 KiB) are allowed (put a long script in a file and run that)"
    )
    assert only_error(result.errors, items).reason.startswith(
        "is 80007 bytes; at most 65536 bytes (64 KiB) are allowed"
    )
    assert only_error(result.errors, env).reason == "is 65537 bytes in total; at most 65536 bytes (64 KiB) are allowed"
    assert list(result.jobs) == ["exact"]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("1-100/2 * * * *", "minute field '1-100/2': 100 is out of range (allowed 0-59)"),
        ("0 0 32/2 * *", "day-of-month field '32/2': 32 is out of range (allowed 1-31)"),
        ("0 0 * * 1-9", "day-of-week field '1-9': 9 is out of range (allowed 0-7 or SUN-SAT)"),
        ("0 0 * 1-13/3 *", "month field '1-13/3': 13 is out of range (allowed 1-12 or JAN-DEC)"),
        ("1-70/5 * * * * *", "second field '1-70/5': 70 is out of range (allowed 0-59)"),
        ("*/0 * * * *", "minute field '*/0': step '0' must be a whole number >= 1 (allowed 0-59)"),
        ("0 0 * * MON#6", "day-of-week field 'MON#6': the week number after '#' must be 1-5"),
        ("? * * * *", "minute field '?': unknown value '?' (allowed 0-59)"),
        ("0 0 ? JAN-FOO *", "month field 'JAN-FOO': unknown value 'foo' (allowed 1-12 or JAN-DEC)"),
    ],
)
def test_cron_field_errors_are_in_the_projects_own_words(tmp_path: Path, cron: str, expected: str) -> None:
    path = write(tmp_path, "job.toml", f'command = "true"\ncron = "{cron}"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert (error.key, error.line) == ("cron", 2)
    assert error.reason == expected
    assert "bands" not in error.reason and "acceptable" not in error.reason


@pytest.mark.parametrize("key", ["log_cap", "kill_grace", "heartbeat_interval", "retention", "agent_wait_limit"])
@pytest.mark.parametrize("file", ["job.toml", "_folder.toml", "team/_folder.toml"])
def test_a_scheduler_setting_in_a_job_file_says_where_it_belongs(tmp_path: Path, key: str, file: str) -> None:
    path = write(tmp_path, file, f'command = "true"\n{key} = "5s"\n')
    write(tmp_path, "team/ok.toml", 'command = "true"\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert (error.key, error.line) == (key, 2)
    assert error.reason == f"unknown key; `{key}` is a [scheduler] setting in vigil.toml"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (
            '[scheduler]\ntimeout = "1s"\n',
            "scheduler.timeout",
            "`timeout` is a job setting (a job file or _folder.toml)",
        ),
        ("[scheduler]\nretries = 3\n", "scheduler.retries", "`retries` is a job setting (a job file or _folder.toml)"),
        ('log_cap = "1MB"\n', "log_cap", "`log_cap` is a [scheduler] setting: put it under [scheduler]"),
        ('every = "1m"\n', "every", "`every` is a job setting (a job file or _folder.toml)"),
        ("[agents.a]\nurl = 'https://a'\nlog_cap = 5\n", "agents.a.log_cap", "[scheduler] setting"),
    ],
)
def test_a_key_of_another_file_in_vigil_toml_says_where_it_belongs(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path, "vigil.toml", text)
    error = only_error(load_folder(tmp_path).errors, path)
    assert error.key == key
    assert error.reason.startswith("unknown key; ") and expected in error.reason


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("url = 'https://a'", "url", "`url` is an [agents.NAME] setting in vigil.toml"),
        ("[scheduler]\nlog_cap = 5", "scheduler", "[scheduler] is a table of vigil.toml"),
        ("retires = 3", "retires", "unknown key (did you mean 'retries'?)"),
    ],
)
def test_other_misplaced_keys_in_a_job_file(tmp_path: Path, line: str, key: str, expected: str) -> None:
    path = write(tmp_path, "job.toml", f'command = "true"\n{line}\n')
    error = only_error(load_folder(tmp_path).errors, path)
    assert error.key == key and expected in error.reason


def test_every_name_engine_config_exports_resolves() -> None:
    """`engine.config` loads its re-exports on first use: each listed one must be there."""
    import engine.config

    for name in engine.config.__all__:
        assert getattr(engine.config, name) is not None, name
    with pytest.raises(AttributeError):
        _ = engine.config.no_such_name  # type: ignore[attr-defined]


def test_cron_macro_in_a_job_file_fires_at_its_expansion(tmp_path: Path) -> None:
    write(tmp_path, "nightly.toml", 'command = "true"\ncron = "@midnight"\ntimezone = "Europe/Berlin"\n')
    result = load_folder(tmp_path)
    assert result.errors == []
    job = result.jobs["nightly"]
    assert job.cron == "@midnight"
    trigger = trigger_for(job)
    assert trigger is not None
    assert trigger.next_fire(datetime(2026, 7, 1, 12, tzinfo=UTC)) == datetime(2026, 7, 1, 22, tzinfo=UTC)


def test_a_job_folder_given_as_dot_names_its_files_without_a_dot_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by review: a folder root of "." named its files "./a.toml" in errors and the catalog.
    (tmp_path / "a.toml").write_text('command = "true"\nbogus = 1\n')
    monkeypatch.chdir(tmp_path)
    result = JobFolder(Path(".")).scan()
    assert [err.format().split(":")[0] for err in result.errors] == ["a.toml"]
