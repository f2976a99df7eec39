"""A crontab turned into job files (`vigil import-crontab`): text in, job file texts and problems out.

Pure: no I/O (the caller passes the zone cron ran in and how to find a user's home). Cron's rules, as
Vixie cron (Debian's `cron`) applies them, and what each becomes:

- `NAME=value` lines apply to the entries **below** them. Each job's `env` holds what cron adds to
  its environment: cron's defaults `PATH=/usr/bin:/bin` and `SHELL=/bin/sh` unless the crontab sets
  them, then the crontab's variables; the pairs every job shares go in the folder's `_folder.toml`,
  the rest in the job's own file (`env` merges by name). The job's environment is not only cron's:
  it is built on the scheduler's (only PATH, LANG, LC_* and TZ of it with `user`, plus the user's
  HOME, USER, LOGNAME; docs/jobs.md, "Running a job as another user").
- `CRON_TZ` (else `TZ`) becomes `timezone`; without either, cron used its host's zone (`timezone`
  given by the caller). `TZ` stays in `env` (cron passes it to the job); `CRON_TZ` and `MAILTO` are
  instructions to cron and do not. `MAILTO` becomes a comment pointing at `notify`.
- `SHELL` other than `/bin/sh` makes `command` an array `[SHELL, "-c", ...]` (cron runs the command
  with `$SHELL -c`; a string `command` is run by `/bin/sh -c`).
- `%`: the first unescaped `%` ends the command; the rest is its stdin, each unescaped `%` a newline,
  `\\%` a literal `%`, and a final newline added when the text does not end with one (cron's
  `write_data`). The command becomes `printf '%s' '<stdin>' | {\\n<command>\\n}`: the whole command
  reads those bytes, exactly, as under cron.
- The system format (`/etc/crontab`, `/etc/cron.d/*`) has a user field: it becomes `user`. A user
  crontab runs as its owner (`CrontabOptions.owner`, when given): `user` in the `_folder.toml`.
- cron runs each job in `$HOME` (the crontab's `HOME=`, else the user's home): `workdir`.
- Vixie cron sets DOM_STAR / DOW_STAR when a day field's first character is `*` (`*`, `*/2`, `*,5`)
  and then fires on days matching both day fields if either flag is set, else on days matching
  either. Vigil takes a field as unrestricted only when it is exactly `*`, and otherwise fires on
  days matching either. The two differ exactly when neither field is `*` and one starts with `*`
  (`0 0 */2 * 1-5`, `0 0 */2 * */3`): such a line is reported, with a translation the user can
  write (one day field in `cron`, the other tested in the command), not translated.

Lines that cannot be translated (`@reboot`, a bad field, an unknown zone, no command) are problems
with their line number; the other lines still become jobs. Imports `engine.config.names`,
`engine.schedule.cron` and `engine.text`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.config.names import NAME_SEGMENT
from engine.schedule.cron import REBOOT_REASON, day_field_values, validate_cron, validate_timezone
from engine.text import quote

__all__ = [
    "CrontabImport",
    "CrontabOptions",
    "CrontabProblem",
    "ImportedJob",
    "cron_stdin",
    "folder_name_for",
    "job_name_for",
    "split_percent",
    "translate",
]

FOLDER_FILE = "_folder.toml"  # the folder package's name for it; not imported, so this module stays light
_DEFAULT_SHELL = "/bin/sh"
#: What cron puts in every job's environment unless the crontab sets it (Vixie cron's entry.c:
#: SHELL=_PATH_BSHELL, PATH=_PATH_DEFPATH; HOME and LOGNAME come from `user`'s login variables).
_CRON_DEFAULT_ENV = (("SHELL", _DEFAULT_SHELL), ("PATH", "/usr/bin:/bin"))
_NAME_MAX = 48
#: Variables cron itself reads: they steer cron and are not passed on as `env`.
_CRON_ONLY = ("MAILTO", "CRON_TZ")
# `NAME = value`, the name bare or quoted (Vixie cron's env.c); anything else is an entry.
_ENV_LINE = re.compile(r"\s*(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<bare>[^\s=]+))\s*=\s*(?P<value>.*?)\s*")
_ENTRY = re.compile(r"\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.*)", re.DOTALL)
_SYSTEM_ENTRY = re.compile(r"\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.*)", re.DOTALL)
_MACRO_ENTRY = re.compile(r"\s*(@\S+)\s+(.*)", re.DOTALL)
_SYSTEM_MACRO_ENTRY = re.compile(r"\s*(@\S+)\s+(\S+)\s+(.*)", re.DOTALL)
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.@+-]+")
_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Words a command name is never taken from: guards, shell syntax and helpers around the real work.
_SKIP_WORDS = frozenset(
    "cd test [ [[ ] ]] true false : command type which hash sleep exit set export umask ulimit ! { } "
    "if then elif else fi while until do done for case esac in time".split()
)
_WRAPPERS = frozenset("nice ionice nohup chronic systemd-cat exec env sudo su-exec setsid stdbuf".split())
_WRAPPERS_WITH_ARG = frozenset(("timeout", "flock", "chpst"))  # their first word is not the program
_INTERPRETERS = re.compile(r"(sh|bash|dash|zsh|ksh|python[0-9.]*|perl|php[0-9.]*|ruby|node)")
_REDIRECTS = frozenset((">", ">>", "<", "<<", ">&", "<&", "&>", ">|", "<>", "&>>"))
_OPERATORS = frozenset(("&&", "||", ";", "|", "&", "(", ")", ";;", "|&"))


@dataclass(frozen=True, slots=True)
class CrontabOptions:
    source: str  #: the file as named on the command line, for comments and problems
    system: bool = False  #: the /etc/crontab format, with a user field
    timezone: str = "UTC"  #: the zone cron ran in when a line has no CRON_TZ or TZ above it
    owner: str | None = None  #: whose crontab it is (a user crontab): for its home
    run_as: str | None = None  #: a user crontab's jobs run as this user (`user`), e.g. its owner
    home_of: Callable[[str], str | None] = field(default=lambda _user: None)  #: a user's home directory


@dataclass(frozen=True, slots=True)
class CrontabProblem:
    line: int
    reason: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ImportedJob:
    name: str  #: the file's name without `.toml`
    line: int
    schedule: str  #: the schedule as the crontab wrote it (5 fields or a macro): `cron` in the file
    timezone: str
    text: str  #: the job file


@dataclass(frozen=True, slots=True)
class CrontabImport:
    jobs: tuple[ImportedJob, ...]
    folder_text: str  #: the `_folder.toml` (empty when there are no jobs)
    problems: tuple[CrontabProblem, ...]

    def files(self) -> list[tuple[str, str]]:
        """(file name, text) to write, the `_folder.toml` first."""
        if not self.jobs:
            return []
        return [(FOLDER_FILE, self.folder_text)] + [(f"{job.name}.toml", job.text) for job in self.jobs]


@dataclass(frozen=True, slots=True)
class _Entry:
    line: int
    written: str  #: the line as written, for the job file's comment
    schedule: str
    user: str | None
    command: str  #: the command field, `%` and all
    env: tuple[tuple[str, str], ...]  #: cron's variables at this line, in order
    env_lines: Mapping[str, int]  #: where each was set


@dataclass(frozen=True, slots=True)
class _Job:
    """One entry's settings before they are split between the job's file and the `_folder.toml`."""

    entry: _Entry
    name: str
    cron: str
    command: str | tuple[str, ...]
    settings: dict[str, str]  #: timezone, user, workdir
    env: dict[str, str]
    mail: str | None  #: the MAILTO comment, or None without MAILTO


# ---------------------------------------------------------------------------------------------------
# cron's `%`


def split_percent(command: str) -> tuple[str, str | None]:
    """The command cron runs and the raw text after its first unescaped `%` (None without one).

    In the command, `\\%` becomes `%` and every other backslash stays (cron's child_process)."""
    out: list[str] = []
    escaped = False
    for index, ch in enumerate(command):
        if escaped:
            if ch == "%":
                out[-1] = "%"  # the backslash goes
            else:
                out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif ch == "%":
            return "".join(out), command[index + 1 :]
        else:
            out.append(ch)
    return "".join(out), None


def cron_stdin(rest: str) -> str:
    """The bytes cron writes to the command's stdin for the text after the first `%` (its write_data):
    `%` → newline, `\\%` → `%`, other backslashes kept, and a newline at the end if there is none."""
    out: list[str] = []
    escaped = need_newline = False
    for ch in rest:
        if escaped:
            if ch != "%":
                out.append("\\")
        elif ch == "%":
            ch = "\n"
        escaped = ch == "\\"  # as cron has it: a backslash is written when the next character is seen
        if not escaped:
            out.append(ch)
            need_newline = ch != "\n"
    if escaped:
        out.append("\\")
    if need_newline:
        out.append("\n")
    return "".join(out)


def _sh_quote(text: str) -> str:
    """Single-quoted for sh: every byte literal, newlines included."""
    return "'" + text.replace("'", "'\\''") + "'"


def _with_stdin(command: str, stdin: str) -> str:
    # A brace group so the whole command line reads the text, as it does under cron (`a && b`: both);
    # the newlines keep a trailing comment in the command from swallowing the closing brace.
    return f"printf '%s' {_sh_quote(stdin)} | {{\n{command}\n}}"


# ---------------------------------------------------------------------------------------------------
# Names


def _command_words(command: str) -> list[list[str]]:
    """The simple commands of a shell line, each as its words (best effort: for naming only)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: the shell would say; naming falls back
        tokens = command.split()
    commands: list[list[str]] = [[]]
    skip_next = False
    in_condition = False  # between `if`/`while` and `then`/`do`: tests, not the work
    for token in tokens:
        if skip_next:
            skip_next = False
        elif token in _REDIRECTS:
            if commands[-1] and commands[-1][-1].isdigit():  # the `2` of `2>&1`
                commands[-1].pop()
            skip_next = True
        elif token in _OPERATORS:
            commands.append([])
        elif not commands[-1] and token in ("if", "elif", "while", "until"):
            in_condition = True
        elif not commands[-1] and token in ("then", "do"):
            in_condition = False
        elif not in_condition:
            commands[-1].append(token)
    return [words for words in commands if words]


def _program_of(words: list[str]) -> str | None:
    """The name a simple command is known by, or None for a guard (`test -x`, `cd /`)."""
    index = 0
    while index < len(words):
        word = words[index]
        if "=" in word and not word.startswith("=") and index < len(words) - 1:  # VAR=value cmd
            index += 1
            continue
        base = word.rsplit("/", 1)[-1]
        if base in _SKIP_WORDS:
            return None
        if base in _WRAPPERS or base in _WRAPPERS_WITH_ARG:
            index += 1
            while index < len(words) and words[index].startswith("-"):
                index += 1
                if len(words[index - 1]) == 2 and index < len(words) and words[index].lstrip("-").isdigit():
                    index += 1  # `nice -n 19`, `ionice -c 3`
            index += base in _WRAPPERS_WITH_ARG
            continue
        args = [w for w in words[index + 1 :] if not w.startswith("-")]
        if _INTERPRETERS.fullmatch(base):
            if any(w in ("-c", "-e", "-r") for w in words[index + 1 :]):
                return None  # inline code (`perl -e 'sleep …'`): not what the job is
            return args[0].rsplit("/", 1)[-1] if args else base
        if base == "run-parts" and args:
            return args[-1].rstrip("/").rsplit("/", 1)[-1]  # `run-parts /etc/cron.daily`: cron.daily
        if base in ("invoke-rc.d", "service") and args:
            return f"{base}-{args[0]}"
        return base
    return None


def _clean_name(text: str) -> str:
    """`text` made a valid job file name (never `_folder`), or `job` when nothing of it is left."""
    name = _BAD_NAME_CHARS.sub("-", text).lstrip("@+-.")[:_NAME_MAX].rstrip("-.")
    if not name or not NAME_SEGMENT.fullmatch(name):
        return "job"
    return f"{name}-job" if name == FOLDER_FILE.removesuffix(".toml") else name


def job_name_for(command: str) -> str:
    """A job name from what the command runs: `cd / && run-parts /etc/cron.daily` → `cron.daily`."""
    commands = _command_words(command)
    for words in commands:
        program = _program_of(words)
        if program:
            return _clean_name(program)
    if commands:  # only guards: name it by the first one's program
        return _clean_name(commands[0][0].rsplit("/", 1)[-1])
    return "job"


def folder_name_for(source: str) -> str:
    """The folder a crontab's jobs go in by default: its file name (`/etc/cron.d/php` → `php`,
    `mine.txt` → `mine`; `crontab` for standard input)."""
    base = source.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    if dot and stem and suffix.isalpha():
        base = stem
    name = _clean_name(base)
    return "crontab" if source == "<stdin>" or name == "job" else name


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate.lower() in taken:  # case-folded: the folder may be on a case-insensitive disk
        number += 1
        candidate = f"{name}-{number}"
    taken.add(candidate.lower())
    return candidate


# ---------------------------------------------------------------------------------------------------
# TOML text


def _toml_string(text: str) -> str:
    # JSON's string escapes are TOML's, but for DEL, which TOML forbids raw.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: str | tuple[str, ...]) -> str:
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_string(item) for item in value) + "]"


def _toml_key(key: str) -> str:
    return key if _TOML_BARE_KEY.fullmatch(key) else _toml_string(key)


def _comment(text: str) -> str:
    """`# text`, with what a TOML comment may not hold (control characters) shown as `?`."""
    return "# " + "".join(ch if ch == "\t" or (ch >= " " and ch != "\x7f") else "?" for ch in text)


def _toml_file(comments: list[str], keys: list[tuple[str, str | tuple[str, ...]]], env: Mapping[str, str]) -> str:
    lines = [_comment(part) for comment in comments for part in comment.split("\n")]
    lines += [f"{key} = {_toml_value(value)}" for key, value in keys]
    if env:
        lines += ["", "[env]"] + [f"{_toml_key(name)} = {_toml_string(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Reading the crontab


def _env_assignment(line: str) -> tuple[str, str] | None:
    match = _ENV_LINE.fullmatch(line)
    if match is None:
        return None
    name = match.group("dq") if match.group("dq") is not None else match.group("sq") or match.group("bare")
    value = match.group("value")
    if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        value = value[1:-1]
    return name, value


def _read_entries(text: str, system: bool) -> tuple[list[_Entry], list[CrontabProblem]]:
    entries: list[_Entry] = []
    problems: list[CrontabProblem] = []
    env: dict[str, str] = {}
    env_lines: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        assignment = _env_assignment(line)
        if assignment is not None:
            name, value = assignment
            env.pop(name, None)  # a variable set again moves to the end, as cron's list does
            env[name] = value
            env_lines[name] = number
            continue
        if stripped.startswith("@"):
            match = (_SYSTEM_MACRO_ENTRY if system else _MACRO_ENTRY).fullmatch(line)
            fields: tuple[str, ...] = (match.group(1),) if match else ()
        else:
            match = (_SYSTEM_ENTRY if system else _ENTRY).fullmatch(line)
            fields = tuple(match.groups()[:5]) if match else ()
        if match is None:
            wanted = "a user and a command" if system else "a command"
            problems.append(CrontabProblem(number, f"not a cron entry: expected 5 time fields (or a macro), {wanted}"))
            continue
        groups = match.groups()
        entries.append(
            _Entry(
                line=number,
                written=line,
                schedule=" ".join(fields),
                user=groups[-2] if system else None,
                command=groups[-1],
                env=tuple(env.items()),
                env_lines=dict(env_lines),
            )
        )
    return entries, problems


def _day_fields_problem(schedule: str, timezone: str) -> str | None:
    """Why Vigil would fire on other days than Vixie cron for these day fields, and what to write instead.

    Vixie cron ANDs the day fields when either starts with `*` (its DOM_STAR / DOW_STAR flags) and
    ORs them otherwise; Vigil takes only an exact `*` as unrestricted and ORs restricted fields.
    """
    fields = schedule.split()
    if len(fields) != 5:
        return None  # a macro: its day fields are `*` or fixed
    dom, dow = fields[2], fields[4]
    if dom == "*" or dow == "*" or not (dom.startswith("*") or dow.startswith("*")):
        return None
    # Keep one day field in `cron` (the other `*`: both agree on that) and test the starred one.
    on_dom = dom.startswith("*")
    tested, what = (dom, "day-of-month") if on_dom else (dow, "day-of-week")
    kept = fields.copy()
    kept[2 if on_dom else 4] = "*"
    problem = (
        f"{what} {quote(tested)} starts with '*', so cron fires only on days matching both day fields "
        f"({quote(dom)} and {quote(dow)}); Vigil would fire on days matching either. Write the job "
        f"with cron = {_toml_string(' '.join(kept))}"
    )
    values = day_field_values(tested, day_of_week=not on_dom)
    if len(values) == (7 if not on_dom else 31):
        return problem + f" (under cron {quote(tested)} names every day)"
    if on_dom:
        pattern, directive = "|".join(f"{day:02d}" for day in sorted(values)), "%d"
    else:
        pattern, directive = "[" + "".join(str(day) for day in sorted(values)) + "]", "%w"
    guard = f'case "$(TZ={timezone} date -d "$VIGIL_SCHEDULED_FOR" +{directive})" in {pattern}) ;; *) exit 0 ;; esac;'
    return (
        problem + f" and its command starting with `{guard}` (a run on another day then ends at once, "
        "succeeded); or, if one day field alone can list the days wanted, that field and '*' in the other"
    )


def _translate_entry(entry: _Entry, options: CrontabOptions) -> _Job | CrontabProblem:
    env = dict(entry.env)
    schedule = entry.schedule
    if schedule.lower() == "@reboot":
        return CrontabProblem(entry.line, REBOOT_REASON)
    zone_var = "CRON_TZ" if "CRON_TZ" in env else "TZ" if "TZ" in env else None
    timezone = options.timezone if zone_var is None else env[zone_var].removeprefix(":")
    try:
        validate_timezone(timezone)
    except ValueError:
        where = f"{zone_var} at line {entry.env_lines[zone_var]}" if zone_var else "the default zone"
        return CrontabProblem(entry.line, f"{where}: unknown time zone {quote(timezone)}")
    try:
        validate_cron(schedule, timezone)
    except ValueError as exc:
        return CrontabProblem(entry.line, str(exc))
    days_problem = _day_fields_problem(schedule, timezone)
    if days_problem:
        return CrontabProblem(entry.line, days_problem)
    shell_command, rest = split_percent(entry.command)
    if not shell_command.strip():
        return CrontabProblem(entry.line, "no command before the first '%'")
    if "\0" in entry.command:
        return CrontabProblem(entry.line, "the command holds a NUL character")
    stdin = cron_stdin(rest) if rest else ""
    body = _with_stdin(shell_command, stdin) if stdin else shell_command
    shell = env.get("SHELL", _DEFAULT_SHELL)
    command: str | tuple[str, ...] = body if shell == _DEFAULT_SHELL else (shell, "-c", body)
    settings = {"timezone": timezone}
    user = entry.user or options.run_as
    if user:
        settings["user"] = user
    home_user = user or options.owner  # cron's chdir: to the home of whom the job runs as
    home = env.get("HOME") or (options.home_of(home_user) if home_user else None)
    if home:
        settings["workdir"] = home
    mail: str | None = None
    if "MAILTO" in env:
        mail = _mail_comment(env["MAILTO"], entry.env_lines["MAILTO"])
    job_env = {name: value for name, value in _CRON_DEFAULT_ENV if name not in env}
    job_env.update((name, value) for name, value in env.items() if name not in _CRON_ONLY)
    return _Job(entry, job_name_for(shell_command), schedule, command, settings, job_env, mail)


def _mail_comment(mailto: str, line: int) -> str:
    if not mailto:
        return f"MAILTO was empty (line {line}): cron mailed nothing."
    return (
        f"cron mailed output to {mailto} (MAILTO, line {line}). Vigil keeps it in the run's log\n"
        "(`vigil logs RUN_ID`); to hear of failures, declare a channel [notify.NAME] in vigil.toml\n"
        'and set notify = ["NAME"] here.'
    )


def translate(text: str, options: CrontabOptions) -> CrontabImport:
    """Every entry of the crontab as a job file, what they share as the `_folder.toml`, and a problem
    (with its line number) for each line that cannot be translated."""
    entries, problems = _read_entries(text, options.system)
    jobs: list[_Job] = []
    for entry in entries:
        result = _translate_entry(entry, options)
        if isinstance(result, CrontabProblem):
            problems.append(result)
        else:
            jobs.append(result)
    problems.sort(key=lambda p: p.line)
    if not jobs:
        return CrontabImport((), "", tuple(problems))
    # What every job has alike goes to the folder; a job states only what differs (env merges by name).
    shared_settings = _shared([job.settings for job in jobs])
    shared_env = _shared([job.env for job in jobs])
    mails = {job.mail for job in jobs}
    shared_mail = mails.pop() if len(mails) == 1 else None
    taken: set[str] = set()
    imported: list[ImportedJob] = []
    for job in jobs:
        name = _unique(job.name, taken)
        keys: list[tuple[str, str | tuple[str, ...]]] = [("cron", job.cron), ("command", job.command)]
        keys += [(key, value) for key, value in job.settings.items() if key not in shared_settings]
        comments = [
            f"Imported by `vigil import-crontab` from {options.source}, line {job.entry.line}:",
            "  " + job.entry.written.strip(),
        ]
        if job.mail and job.mail != shared_mail:
            comments.append(job.mail)
        env = {k: v for k, v in job.env.items() if shared_env.get(k) != v}
        text = _toml_file(comments, keys, env)
        imported.append(ImportedJob(name, job.entry.line, job.cron, job.settings["timezone"], text))
    folder_comments = [f"Written by `vigil import-crontab` from {options.source}: what its jobs share."]
    if shared_mail:
        folder_comments.append(shared_mail)
    folder_text = _toml_file(folder_comments, list(shared_settings.items()), shared_env)
    return CrontabImport(tuple(imported), folder_text, tuple(problems))


def _shared(tables: list[dict[str, str]]) -> dict[str, str]:
    """The (key, value) pairs every table has, in the first table's order."""
    counts = Counter(pair for table in tables for pair in table.items())
    return {key: value for key, value in tables[0].items() if counts[(key, value)] == len(tables)}
