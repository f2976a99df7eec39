"""`vigil import-crontab`: cron's lines, env, zones, `%` and macros become job files that load and fire
when cron would (compared with croniter on the original lines, in the same zone)."""

from __future__ import annotations

import io
import re
import subprocess
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from engine.cli import main
from engine.config import load_folder
from engine.config.crontab import CrontabOptions, cron_stdin, job_name_for, split_percent, translate
from engine.model import JobSpec
from engine.schedule import preview

DATA = Path(__file__).resolve().parents[1] / "data" / "crontabs"
SYSTEM_FILES = sorted((DATA / "system").iterdir())
USER_FILES = sorted((DATA / "user").iterdir())
START = datetime(2026, 1, 10, 11, 3, tzinfo=ZoneInfo("Europe/Berlin"))  # 20 fires of any line stay clear of the DST gap


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def cron_lines(path: Path, *, system: bool) -> dict[int, tuple[str, str]]:
    """line number → (schedule, zone) of every entry, read here independently of the importer."""
    entries: dict[int, tuple[str, str]] = {}
    zone = "Europe/Berlin"
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if m := re.fullmatch(r"\s*(CRON_TZ|TZ)\s*=\s*(\S+)\s*", line):
            zone = m.group(2)
            continue
        if re.fullmatch(r"\s*[A-Za-z_]\w*\s*=.*", line):
            continue
        fields = stripped.split()
        entries[number] = (fields[0] if fields[0].startswith("@") else " ".join(fields[:5]), zone)
    return entries


def croniter_fires(schedule: str, zone: str, n: int) -> list[datetime]:
    it = croniter(schedule, START.astimezone(ZoneInfo(zone)))
    return [it.get_next(datetime).astimezone(UTC) for _ in range(n)]


def imported_jobs(folder: Path) -> dict[int, JobSpec]:
    """line number (from the job file's comment) → the loaded job."""
    result = load_folder(folder)
    assert result.errors == []
    jobs: dict[int, JobSpec] = {}
    for job in result.jobs.values():
        line = re.search(r", line (\d+):", Path(job.path).read_text())
        assert line, job.path
        jobs[int(line.group(1))] = job
    return jobs


# ------------------------------------------------------------------------------------- real crontabs


@pytest.mark.parametrize("path", SYSTEM_FILES + USER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_real_crontab_imports_validates_and_fires_when_cron_would(tmp_path: Path, path: Path) -> None:
    system = path.parent.name == "system"
    args = ["import-crontab", str(path), "--to", str(tmp_path), "--timezone", "Europe/Berlin"]
    code, out, err = run_cli(*args, *(["--system"] if system else []))
    assert (code, err) == (0, ""), out
    assert run_cli("validate", str(tmp_path))[0] == 0
    entries = cron_lines(path, system=system)
    jobs = imported_jobs(tmp_path / path.name)
    assert sorted(jobs) == sorted(entries)  # one job per line, none left out
    for number, job in jobs.items():
        schedule, zone = entries[number]
        assert job.timezone == zone
        fires = [f.astimezone(UTC) for f in preview(job, START, 20)]
        assert fires == croniter_fires(schedule, zone, 20), (path.name, number, schedule)
        if system:
            assert job.user == "root"


def test_debians_etc_crontab_becomes_four_named_jobs_sharing_its_env(tmp_path: Path) -> None:
    code, out, _ = run_cli(
        "import-crontab", str(DATA / "system/crontab"), "--system", "--to", str(tmp_path), "--timezone", "UTC"
    )
    assert code == 0
    folder = tmp_path / "crontab"
    assert sorted(p.name for p in folder.iterdir()) == [
        "_folder.toml",
        "cron.daily.toml",
        "cron.hourly.toml",
        "cron.monthly.toml",
        "cron.weekly.toml",
    ]
    jobs = load_folder(tmp_path).jobs
    hourly = jobs["crontab/cron.hourly"]
    assert hourly.command == "cd / && run-parts --report /etc/cron.hourly"  # run-parts is an ordinary command
    assert dict(hourly.env) == {
        "SHELL": "/bin/sh",
        "PATH": "/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin",
    }
    assert "env" in (folder / "_folder.toml").read_text() and "env" not in (folder / "cron.daily.toml").read_text()
    assert "crontab/cron.weekly  47 6 * * 7  (line 20)" in out


def test_vigil_next_shows_crons_times(tmp_path: Path) -> None:
    run_cli("import-crontab", str(DATA / "system/sysstat"), "--system", "--to", str(tmp_path), "--timezone", "UTC")
    code, out, _ = run_cli("next", "--jobs", str(tmp_path), "sysstat/debian-sa1", "-n", "20", "--json")
    assert code == 0
    shown = [datetime.fromisoformat(t) for t in re.findall(r'"([^"]+)"', out)]
    it = croniter("5-55/10 * * * *", shown[0].replace(second=0) - (shown[1] - shown[0]))
    assert shown == [it.get_next(datetime) for _ in range(20)]


# ------------------------------------------------------------------------------- a hand-written one

USER_CRONTAB = textwrap.dedent(
    r"""
    # a user crontab with everything cron lets one write
    MAILTO=ops@example.net
    PATH=/usr/local/bin:/usr/bin:/bin
    CRON_TZ=America/New_York
    @daily       /home/ann/bin/backup --all
    0 9 * * mon-fri  cd ~/reports && ./send.sh 2>&1 | logger%Monday's\% report%%done
    @reboot      /home/ann/bin/at-boot
    STAGE=late
    CRON_TZ=Asia/Tokyo
    30 2 * * 1,3  python3 /opt/etl/load.py --full > /dev/null
    61 * * * *    echo never
    0 0 */2 * 1   echo vixie-and
    @hourly
    TZ=Mars/Olympus
    CRON_TZ=
    15 3 * * *    date
    """
).lstrip("\n")


def test_a_user_crontab_with_env_zones_mail_stdin_and_macros(tmp_path: Path) -> None:
    path = tmp_path / "ann.cron"
    path.write_text(USER_CRONTAB)
    jobs_dir = tmp_path / "jobs"
    code, out, err = run_cli("import-crontab", str(path), "--jobs", str(jobs_dir), "--timezone", "UTC")
    # Untranslatable lines: reported with their numbers, left out, exit status 1; the rest written.
    assert code == 1
    problems = err.strip().split("\n")
    assert problems[:-1] == [
        f"{path}:7: @reboot is not supported: Vigil fires jobs by the clock, and a scheduler start is not a boot "
        "(a restart or a failover starts one too); start the command from a systemd unit (Type=oneshot, "
        "WantedBy=multi-user.target) instead (left out)",
        f"{path}:11: cron '61 * * * *': minute field '61': 61 is out of range (allowed 0-59) (left out)",
        f"{path}:12: day-of-month '*/2' starts with '*', so cron fires only on days matching both day fields "
        "('*/2' and '1'); Vigil would fire on days matching either. Write the job with cron = \"0 0 * * 1\" and "
        'its command starting with `case "$(TZ=Asia/Tokyo date -d "$VIGIL_SCHEDULED_FOR" +%d)" in '
        "01|03|05|07|09|11|13|15|17|19|21|23|25|27|29|31) ;; *) exit 0 ;; esac;` (a run on another day then "
        "ends at once, succeeded); or, if one day field alone can list the days wanted, that field and '*' "
        "in the other (left out)",
        f"{path}:13: not a cron entry: expected 5 time fields (or a macro), a command (left out)",
        f"{path}:16: CRON_TZ at line 15: unknown time zone '' (left out)",
    ]
    assert problems[-1] == f"vigil: 5 line(s) of {path} could not be translated and were left out"
    assert run_cli("validate", str(jobs_dir))[0] == 0
    jobs = load_folder(jobs_dir).jobs
    assert sorted(jobs) == ["ann/backup", "ann/load.py", "ann/send.sh"]
    backup, send, load = jobs["ann/backup"], jobs["ann/send.sh"], jobs["ann/load.py"]
    # env lines apply below them: STAGE reaches only the job after it, by its own file. SHELL: cron's.
    assert dict(backup.env) == {"SHELL": "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin"} == dict(send.env)
    assert dict(load.env) == {"SHELL": "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin", "STAGE": "late"}
    assert "STAGE" in Path(load.path).read_text() and "STAGE" not in Path(backup.path).read_text()
    # CRON_TZ is the schedule's zone, per line; MAILTO a comment pointing at notify, not env.
    assert (backup.timezone, send.timezone, load.timezone) == ("America/New_York", "America/New_York", "Asia/Tokyo")
    folder_file = (jobs_dir / "ann" / "_folder.toml").read_text()
    assert "# cron mailed output to ops@example.net (MAILTO, line 2)." in folder_file
    assert 'notify = ["NAME"]' in folder_file
    assert backup.cron == "@daily"
    assert [f.astimezone(UTC) for f in preview(backup, START, 20)] == croniter_fires("@daily", "America/New_York", 20)
    assert [f.astimezone(UTC) for f in preview(load, START, 20)] == croniter_fires("30 2 * * 1,3", "Asia/Tokyo", 20)
    # `%`: the command ends at the first one, the rest is its stdin.
    assert send.command == (
        "printf '%s' 'Monday'\\''s% report\n\ndone\n' | {\ncd ~/reports && ./send.sh 2>&1 | logger\n}"
    )
    assert "wrote 3 job(s)" in out


def test_different_zones_and_env_go_in_each_job_file_and_shared_ones_in_the_folder() -> None:
    result = translate(
        "A=1\n0 1 * * * one\nB=2\nCRON_TZ=Europe/Paris\n0 2 * * * two\nA=3\n0 3 * * * three\n",
        CrontabOptions(source="t", timezone="UTC"),
    )
    assert result.problems == ()
    assert "timezone" not in result.folder_text and "A =" not in result.folder_text  # not shared by all
    assert 'PATH = "/usr/bin:/bin"' in result.folder_text  # cron's default: every job's
    one, two, three = (job.text for job in result.jobs)
    assert 'timezone = "UTC"' in one and 'timezone = "Europe/Paris"' in two and 'timezone = "Europe/Paris"' in three
    assert 'A = "1"' in one and "B" not in one
    assert 'A = "1"' in two and 'B = "2"' in two
    assert 'A = "3"' in three


def test_a_job_gets_crons_default_path_and_shell_unless_the_crontab_sets_them() -> None:
    # cron gives every job PATH=/usr/bin:/bin and SHELL=/bin/sh: a migrated job must not see a longer PATH.
    (plain,) = translate("* * * * * backup\n", CrontabOptions(source="t")).jobs
    assert load_text(plain.text, translate("* * * * * backup\n", CrontabOptions(source="t")).folder_text) == {
        "SHELL": "/bin/sh",
        "PATH": "/usr/bin:/bin",
    }
    own = translate("PATH=/opt/bin\nSHELL=/bin/bash\n* * * * * backup\n", CrontabOptions(source="t"))
    assert load_text(own.jobs[0].text, own.folder_text) == {"PATH": "/opt/bin", "SHELL": "/bin/bash"}


def load_text(job_text: str, folder_text: str) -> dict[str, str]:
    """The env a job file and its _folder.toml give together (env merges by name)."""
    import tomllib

    return {**tomllib.loads(folder_text).get("env", {}), **tomllib.loads(job_text).get("env", {})}


@pytest.mark.parametrize(
    ("days", "reported"),
    [
        ("*/2 * 1-5", True),  # cron: odd days that are weekdays
        ("1-15 * */2", True),
        ("*/2 * */3", True),  # both starred: cron ANDs them too
        ("*/1 * 1", True),  # every day AND Monday: Mondays; Vigil would fire daily
        ("*,15 * 1", True),  # cron looks at the first character only
        ("*/2 * *", False),  # the other is `*`: both fire on odd days
        ("* * */2", False),
        ("1,15 * 1", False),  # neither starred: cron ORs them, as Vigil does
        ("* * *", False),
    ],
)
def test_day_fields_cron_reads_otherwise_are_reported(days: str, reported: bool) -> None:
    result = translate(f"0 0 {days} echo x\n", CrontabOptions(source="t"))
    assert (len(result.problems), len(result.jobs)) == ((1, 0) if reported else (0, 1))
    if reported:
        assert "so cron fires only on days matching both day fields" in result.problems[0].reason
        assert "two jobs" not in result.problems[0].reason  # two jobs fire on either day: not cron's AND


@pytest.mark.parametrize(
    "schedule", ["0 0 */2 * 1-5", "30 6 */2 * */3", "0 12 1-10 * */2", "0 0 */3 * 0,6", "0 0 */1 * 2"]
)
def test_the_suggested_job_fires_on_crons_days(tmp_path: Path, schedule: str) -> None:
    """The report's `cron` and guard, run for real by /bin/sh on each fire, give Vixie cron's days
    (croniter with day_or=False: both day fields must match)."""
    (problem,) = translate(f"{schedule} echo x\n", CrontabOptions(source="t", timezone="Asia/Tokyo")).problems
    suggested = re.search(r'cron = "([^"]+)"', problem.reason)
    assert suggested
    guard = re.search(r"`(case .*esac;)`", problem.reason)
    job = JobSpec(name="j", path="j.toml", command="true", cron=suggested.group(1), timezone="Asia/Tokyo")
    fires = preview(job, START, 60)
    if guard:  # none for `*/1`: its suggestion alone is cron's
        ran = []
        for fire in fires:
            env = {"PATH": "/usr/bin:/bin", "VIGIL_SCHEDULED_FOR": fire.isoformat()}
            done = subprocess.run(["/bin/sh", "-c", guard.group(1) + " echo ran"], env=env, capture_output=True)
            if done.stdout == b"ran\n":
                ran.append(fire)
        fires = ran
    it = croniter(schedule, START.astimezone(ZoneInfo("Asia/Tokyo")), day_or=False)
    expected = [it.get_next(datetime).astimezone(UTC) for _ in range(len(fires))]
    assert len(fires) > 3 and [f.astimezone(UTC) for f in fires] == expected


def test_a_shell_other_than_sh_runs_the_command() -> None:
    result = translate("SHELL=/bin/bash\n* * * * * echo $BASH_VERSION\n", CrontabOptions(source="t"))
    assert 'command = ["/bin/bash", "-c", "echo $BASH_VERSION"]' in result.jobs[0].text


def test_the_system_format_needs_a_user_field() -> None:
    result = translate("17 * * * * root\n@daily nobody /bin/true\n", CrontabOptions(source="t", system=True))
    assert [(p.line, p.reason) for p in result.problems] == [
        (1, "not a cron entry: expected 5 time fields (or a macro), a user and a command")
    ]
    assert 'user = "nobody"' in result.folder_text


def test_a_user_crontab_runs_as_the_user_given_or_as_a_spool_files_owner(tmp_path: Path, monkeypatch) -> None:
    from engine.cli import import_crontab

    crontab = tmp_path / "copied"
    crontab.write_text("0 1 * * * backup\n0 2 * * * rotate\n")
    code, out, _ = run_cli("import-crontab", str(crontab), "--user", "nobody", "--to", str(tmp_path / "a"))
    assert code == 0 and "run as nobody" in out
    folder_file = (tmp_path / "a" / "copied" / "_folder.toml").read_text()
    assert 'user = "nobody"' in folder_file
    assert {job.user for job in load_folder(tmp_path / "a").jobs.values()} == {"nobody"}
    # Without --user, a copied file's jobs run as the scheduler's user ...
    assert run_cli("import-crontab", str(crontab), "--to", str(tmp_path / "b"))[0] == 0
    assert {job.user for job in load_folder(tmp_path / "b").jobs.values()} == {None}
    # ... and a file in cron's spool as its owner, whose name it has.
    spool = tmp_path / "spool"
    (spool / "crontabs").mkdir(parents=True)
    (spool / "crontabs" / "nobody").write_text("0 1 * * * backup\n")
    monkeypatch.setattr(import_crontab, "SPOOL_DIRS", (str(spool / "crontabs"),))
    assert import_crontab.spool_owner(str(spool / "crontabs" / "nobody")) == "nobody"
    assert import_crontab.spool_owner("-") is None and import_crontab.spool_owner(str(crontab)) is None
    assert run_cli("import-crontab", str(spool / "crontabs" / "nobody"), "--to", str(tmp_path / "c"))[0] == 0
    assert load_folder(tmp_path / "c").jobs["nobody/backup"].user == "nobody"


def test_a_bad_user_is_one_vigil_line_and_nothing_is_written(tmp_path: Path) -> None:
    crontab = tmp_path / "copied"
    crontab.write_text("0 1 * * * backup\n")
    code, _, err = run_cli("import-crontab", str(crontab), "--user", "vigil-no-such-user", "--to", str(tmp_path / "j"))
    assert (code, err) == (1, "vigil: --user 'vigil-no-such-user': no user 'vigil-no-such-user' on this host\n")
    assert not (tmp_path / "j").exists()
    code, _, err = run_cli("import-crontab", str(crontab), "--system", "--user", "nobody", "--to", str(tmp_path))
    assert (code, err) == (1, "vigil: --user: a --system crontab names the user on each line\n")


def test_names_are_unique_valid_and_say_what_runs() -> None:
    result = translate(
        "* * * * * echo a\n* * * * * echo b\n* * * * * ECHO c\n* * * * * /opt/_folder\n* * * * * 'unbalanced\n",
        CrontabOptions(source="t"),
    )
    assert [job.name for job in result.jobs] == ["echo", "echo-2", "ECHO-3", "_folder-job", "unbalanced"]
    assert job_name_for("test -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }") == "cron.daily"
    assert job_name_for("nice -n 19 timeout 1h /usr/bin/rsync -a / /backup 2>&1") == "rsync"
    assert job_name_for("perl -e 'sleep 3' && certbot -q renew") == "certbot"
    assert job_name_for("if [ -x /x ]; then /usr/lib/php/sessionclean; fi") == "sessionclean"
    assert job_name_for("FOO=1 python3 -u /srv/app/sync.py") == "sync.py"
    assert job_name_for("$HOME/bin/daily.job >> $HOME/tmp/out 2>&1") == "daily.job"
    assert job_name_for("true") == "true"


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    path = DATA / "system/php"
    assert run_cli("import-crontab", str(path), "--system", "--to", str(tmp_path))[0] == 0
    target = tmp_path / "php" / "sessionclean.toml"
    target.write_text("# mine\n" + target.read_text())
    code, _, err = run_cli("import-crontab", str(path), "--system", "--to", str(tmp_path))
    assert code == 1
    assert (
        err
        == f"vigil: refusing to overwrite 2 file(s) in {tmp_path / 'php'}: _folder.toml, sessionclean.toml (--force overwrites)\n"
    )
    assert target.read_text().startswith("# mine")
    assert run_cli("import-crontab", str(path), "--system", "--to", str(tmp_path), "--force")[0] == 0
    assert not target.read_text().startswith("# mine")


def test_prefix_names_the_folder_and_bad_input_is_one_vigil_line(tmp_path: Path) -> None:
    code, out, _ = run_cli(
        "import-crontab", str(DATA / "system/php"), "--system", "--to", str(tmp_path), "--prefix", "legacy/php"
    )
    assert code == 0 and "legacy/php/sessionclean" in out
    assert "legacy/php/sessionclean" in load_folder(tmp_path).jobs
    assert run_cli("import-crontab", str(DATA / "system/php"), "--to", str(tmp_path), "--prefix", "a b")[2] == (
        "vigil: --prefix 'a b': job file and folder names may use only ASCII letters, digits and _ . @ + -, "
        "and must start with a letter, digit or _\n"
    )
    missing = tmp_path / "nope"
    assert (
        run_cli("import-crontab", str(missing), "--to", str(tmp_path))[2]
        == f"vigil: {missing}: No such file or directory\n"
    )
    (tmp_path / "empty").write_text("# nothing\nPATH=/bin\n")
    code, _, err = run_cli("import-crontab", str(tmp_path / "empty"), "--to", str(tmp_path / "jobs"))
    assert (code, err) == (1, f"vigil: {tmp_path / 'empty'}: no cron entries found; nothing written\n")


# ------------------------------------------------------------------------------------- cron's `%`


@pytest.mark.parametrize(
    ("field", "command", "stdin"),
    [
        ("mail -s hi joe", "mail -s hi joe", None),
        (
            'mail -s "It\'s 10pm" joe%Joe,%%Where are your kids?%',
            'mail -s "It\'s 10pm" joe',
            "Joe,\n\nWhere are your kids?\n",
        ),
        ("cat%one line", "cat", "one line\n"),  # cron ends the text with a newline
        ("cat%", "cat", ""),  # nothing after the %: no input at all
        # In the input each backslash escapes the next character: `\\%` is `\%`, not a backslash and a newline.
        (r"date +\%s%100\% sure\\%x\y", "date +%s", "100% sure\\%x\\y\n"),
        ("printf x%%", "printf x", "\n"),
        ("cat%a%\\", "cat", "a\n\\"),  # a final backslash is written after the last newline, none added
        (r"echo \\%rest", "echo \\\\", "rest\n"),  # an escaped backslash does not escape the %
    ],
)
def test_percent_splits_command_and_stdin_as_cron_does(field: str, command: str, stdin: str | None) -> None:
    got_command, rest = split_percent(field)
    assert got_command == command
    assert (None if rest is None else cron_stdin(rest)) == stdin


def test_the_translated_command_reads_exactly_crons_stdin(tmp_path: Path) -> None:
    """Run as the shim runs a string command (/bin/sh -c, stdin /dev/null): both commands of an `&&`
    read the one input, byte for byte, quotes, backslashes and all."""
    out = tmp_path / "out"
    line = f"* * * * * head -c 6 > {out}.1 && cat > {out}.2 # trailing comment%it's%%\\%d \\\\ $HOME `x`%end"
    result = translate(line + "\n", CrontabOptions(source="t"))
    (job,) = result.jobs
    command = load_one(tmp_path, result).command
    assert isinstance(command, str)
    subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, check=True, timeout=10)
    expected = b"it's\n\n%d \\\\ $HOME `x`\nend\n"
    assert (tmp_path / "out.1").read_bytes() + (tmp_path / "out.2").read_bytes() == expected
    assert job.name == "head"


def load_one(tmp_path: Path, result: object) -> JobSpec:
    folder = tmp_path / "jobs" / "t"
    folder.mkdir(parents=True)
    for name, text in result.files():  # type: ignore[attr-defined]
        (folder / name).write_text(text)
    loaded = load_folder(tmp_path / "jobs")
    assert loaded.errors == []
    (spec,) = loaded.jobs.values()
    return spec


def test_a_crontab_from_standard_input_gets_a_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crontab -l | vigil import-crontab -` after `/etc/crontab`'s import: a folder of its own, not `crontab/`."""
    import io

    from engine.paths import os_user

    run_cli("import-crontab", str(DATA / "system/crontab"), "--system", "--to", str(tmp_path), "--timezone", "UTC")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"5 * * * * backup-home\n")))
    code, out, err = run_cli("import-crontab", "-", "--to", str(tmp_path), "--timezone", "UTC")
    assert (code, err) == (0, ""), out
    assert (tmp_path / f"crontab-{os_user()}" / "backup-home.toml").exists()
    assert "backup-home.toml" not in {p.name for p in (tmp_path / "crontab").iterdir()}
