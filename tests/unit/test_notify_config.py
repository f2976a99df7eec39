"""`[notify.NAME]` channels in vigil.toml, `[scheduler] notify`, and a job's `notify` naming them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config import format_errors, load_folder, load_settings
from engine.model import ChannelSpec


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_channels_with_url_or_command_and_their_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        "vigil.toml",
        """
        [scheduler]
        notify = ["ops"]

        [notify.ops]
        url = "mailto://user:pass@smtp.example.net?to=ops@example.net"

        [notify.pager]
        command = ["/usr/local/bin/page-me", "--urgent"]
        events = ["failed", "timed_out", "failover"]
        timeout = "10s"
        rate_limit = 5
        rate_window = "1m"

        [notify.log]
        command = "cat >> /tmp/events.jsonl"
        """,
    )
    settings, errors = load_settings(tmp_path)
    assert errors == [], format_errors(errors)
    assert settings.notify == ("ops",)
    assert settings.channels["ops"] == ChannelSpec(
        name="ops", url="mailto://user:pass@smtp.example.net?to=ops@example.net"
    )
    assert (settings.channels["ops"].timeout, settings.channels["ops"].rate_limit) == (30.0, 20)
    assert settings.channels["ops"].rate_window == 300.0
    pager = settings.channels["pager"]
    assert pager.command == ("/usr/local/bin/page-me", "--urgent")
    assert pager.events == frozenset({"failed", "timed_out", "failover"})
    assert (pager.timeout, pager.rate_limit, pager.rate_window) == (10.0, 5, 60.0)
    assert settings.channels["log"].command == "cat >> /tmp/events.jsonl"
    assert settings.channels["log"].events is None


@pytest.mark.parametrize(
    ("text", "key", "line", "expected"),
    [
        ("[notify.a]\nevents = ['failed']\n", "notify.a", 1, "url"),
        ("[notify.a]\nurl = 'json://h'\ncommand = 'true'\n", "notify.a", 1, "not both"),
        ("[notify.a]\nurl = 'smtp.example.net'\n", "notify.a.url", 2, "SCHEMA://"),
        ("[notify.a]\nurl = ''\n", "notify.a.url", 2, "must not be empty"),
        ("[notify.a]\ncommand = ''\n", "notify.a.command", 2, "must not be empty"),
        ("[notify.a]\ncommand = 'true'\nevents = ['faild']\n", "notify.a.events", 3, "did you mean 'failed'?"),
        ("[notify.a]\ncommand = 'true'\nevents = []\n", "notify.a.events", 3, "at least one event"),
        ("[notify.a]\ncommand = 'true'\ntimeout = 0\n", "notify.a.timeout", 3, "greater than zero"),
        ("[notify.a]\ncommand = 'true'\nrate_limit = 0\n", "notify.a.rate_limit", 3, "at least 1"),
        ("[notify.a]\ncommand = 'true'\nrate_window = 'soon'\n", "notify.a.rate_window", 3, "bad duration"),
        ("[notify.a]\ncommand = 'true'\nrate_limt = 3\n", "notify.a.rate_limt", 3, "did you mean 'rate_limit'?"),
        ("[notify.'bad name']\ncommand = 'true'\n", "notify.bad name", 1, "channel names may use only"),
        ("[notify]\na = 3\n", "notify.a", 2, "expected a table [notify.a]"),
        ("[scheduler]\nnotify = ['ops']\n", "scheduler.notify", 2, "unknown channel 'ops'"),
        ("[scheduler]\nevents = ['failed']\n", "scheduler.events", 2, "[notify.NAME] setting"),
    ],
)
def test_channel_errors_name_file_key_line_and_reason(
    tmp_path: Path, text: str, key: str, line: int, expected: str
) -> None:
    write(tmp_path, "vigil.toml", text)
    settings, errors = load_settings(tmp_path)
    assert len(errors) == 1, format_errors(errors)
    assert (errors[0].path, errors[0].key, errors[0].line) == (str(tmp_path / "vigil.toml"), key, line)
    assert expected in errors[0].reason
    assert "a" not in settings.channels and settings.notify == ()


def test_a_bad_url_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    write(tmp_path, "vigil.toml", "[notify.a]\nurl = 'user:s3cret@host'\n")
    _settings, errors = load_settings(tmp_path)
    assert len(errors) == 1 and "s3cret" not in errors[0].reason


def test_a_job_naming_an_undeclared_channel_is_an_error_in_its_file_but_still_loads(tmp_path: Path) -> None:
    write(tmp_path, "vigil.toml", "[notify.ops]\ncommand = 'true'\n[notify.broken]\nurl = 'nope'\n")
    bad = write(tmp_path, "etl/load.toml", 'command = "true"\n\nnotify = ["ops", "opz"]\n')
    invalid = write(tmp_path, "etl/other.toml", 'command = "true"\nnotify = ["broken"]\n')
    write(tmp_path, "good.toml", 'command = "true"\nnotify = ["ops"]\n')
    result = load_folder(tmp_path)
    by_path = {error.path: error for error in result.errors}
    assert (by_path[str(bad)].key, by_path[str(bad)].line) == ("notify", 3)
    assert "unknown channel 'opz' (did you mean 'ops'?" in by_path[str(bad)].reason
    assert "definition is invalid" in by_path[str(invalid)].reason
    # Alerting config does not stop scheduling: every job loads (its events go where they can).
    assert sorted(result.jobs) == ["etl/load", "etl/other", "good"]
    assert result.jobs["etl/load"].notify == ("ops", "opz")
    # The deliverer keeps the broken channel's pending events waiting instead of giving them up.
    assert (sorted(result.settings.channels), result.settings.invalid_channels) == (["ops"], {"broken"})


def test_one_bad_channel_setting_does_not_stop_the_jobs_that_name_it(tmp_path: Path) -> None:
    """The case reported: one bad `timeout` in [notify.ops] gave "0 valid job(s)"."""
    write(
        tmp_path,
        "vigil.toml",
        "[scheduler]\nnotify = ['mail']\n[notify.mail]\ncommand = 'cat'\n[notify.ops]\ncommand = 'cat'\ntimeout = 0\n",
    )
    write(tmp_path, "etl/_folder.toml", 'notify = ["ops"]\n')
    for name in ("a", "b"):
        write(tmp_path, f"etl/{name}.toml", 'command = "true"\ncron = "0 * * * *"\n')
    result = load_folder(tmp_path)
    assert sorted(result.jobs) == ["etl/a", "etl/b"]
    assert sorted((e.path.rsplit("/", 1)[1], e.key) for e in result.errors) == [
        ("_folder.toml", "notify"),  # where the name is written
        ("vigil.toml", "notify.ops.timeout"),  # and why the channel is invalid
    ]
    assert result.settings.notify == ("mail",) and "ops" not in result.settings.channels


def test_a_scheduler_notify_naming_an_invalid_channel_keeps_it_to_hold_its_events(tmp_path: Path) -> None:
    write(
        tmp_path,
        "vigil.toml",
        "[scheduler]\nnotify = ['ops', 'pager']\n[notify.ops]\ncommand = 'cat'\n[notify.pager]\nurl = 'nope'\n",
    )
    settings, errors = load_settings(tmp_path)
    # The broken one stays named: its events wait in the outbox until its definition is fixed.
    assert settings.notify == ("ops", "pager") and settings.invalid_channels == {"pager"}
    assert [(e.key, e.line) for e in errors] == [("scheduler.notify", 2), ("notify.pager.url", 6)]
    assert "channel 'pager' is declared in vigil.toml but its definition is invalid" in errors[0].reason


def test_vigil_validate_lists_a_notify_error_and_exits_1(tmp_path: Path) -> None:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from engine.cli import main

    job = write(tmp_path, "job.toml", 'command = "true"\nnotify = ["ghost"]\n')
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["validate", str(tmp_path)])
    assert code == 1
    assert f"{job}:2: notify: unknown channel 'ghost'" in out.getvalue()
    assert "1 error(s); 1 valid job(s)" in err.getvalue()


def test_a_folder_default_naming_an_undeclared_channel_is_the_folder_files_error(tmp_path: Path) -> None:
    folder = write(tmp_path, "etl/_folder.toml", 'notify = ["ghost"]\n')
    write(tmp_path, "etl/load.toml", 'command = "true"\n')
    result = load_folder(tmp_path)
    assert [(e.path, e.key) for e in result.errors] == [(str(folder), "notify")]
    assert list(result.jobs) == ["etl/load"]  # the folder's other keys still apply to its jobs


def test_declaring_the_channel_later_clears_the_error(tmp_path: Path) -> None:
    from engine.config import JobFolder

    write(tmp_path, "job.toml", 'command = "true"\nnotify = ["ops"]\n')
    folder = JobFolder(tmp_path)
    first = folder.scan()
    assert list(first.jobs) == ["job"] and [e.key for e in first.errors] == ["notify"]
    write(tmp_path, "vigil.toml", "[notify.ops]\ncommand = 'cat'\n")
    second = folder.scan()
    assert list(second.jobs) == ["job"] and second.errors == []
