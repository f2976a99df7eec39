"""`vigil import-crontab FILE`: a crontab's lines written as job files (the translation is
`engine.config.crontab`'s; this module reads the file, asks the host what cron would, and writes).

Layer: cli. Imports the base modules and config.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path

from engine.config import format_errors, job_name_problem, load_folder
from engine.config.crontab import CrontabOptions, folder_name_for, translate
from engine.errors import VigilError
from engine.paths import os_user
from engine.schedule.cron import validate_timezone
from engine.text import escape, quote
from engine.users import find_account, run_as_problem

EXIT_OK, EXIT_LEFT_OUT = 0, 1
_ZONEINFO = "zoneinfo/"
#: Where cron keeps user crontabs, each named after its owner (Debian; Red Hat; SUSE).
SPOOL_DIRS = ("/var/spool/cron/crontabs", "/var/spool/cron", "/var/spool/cron/tabs")


def host_timezone() -> str | None:
    """The zone this host's cron runs in: /etc/localtime's target, else /etc/timezone; None if neither names one."""
    candidates: list[str] = []
    try:
        target = os.readlink("/etc/localtime")
        if _ZONEINFO in target:
            candidates.append(target.split(_ZONEINFO, 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        pass
    for name in candidates:
        try:
            validate_timezone(name)
        except ValueError:
            continue
        return name
    return None


def _home_of(user: str) -> str | None:
    """The user's home, if it exists here (cron's chdir to a missing home is silently skipped)."""
    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        return None
    return home if os.path.isdir(home) else None


def spool_owner(path: str) -> str | None:
    """NAME for a user crontab in cron's spool (/var/spool/cron/crontabs/NAME), else None."""
    if path == "-":
        return None
    where = Path(os.path.abspath(path))
    return where.name if str(where.parent) in SPOOL_DIRS else None


def _run_as(args: argparse.Namespace) -> str | None:
    """Whom a user crontab's jobs run as: --user, else the owner of a spool file; checked here, before writing."""
    if args.user is not None and args.system:
        raise VigilError("--user: a --system crontab names the user on each line")
    name = args.user if args.user is not None else None if args.system else spool_owner(args.file)
    if name is None:
        return None
    problem = run_as_problem(name, find_account(name), euid=os.geteuid())
    if problem:
        raise VigilError(f"--user {quote(name)}: {problem}")
    return name


def _read(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise VigilError(f"{path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VigilError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def cmd_import_crontab(args: argparse.Namespace) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    if args.prefix is not None:
        prefix = args.prefix
    elif source == "<stdin>" and not args.system:
        # `crontab -l [-u NAME] | vigil import-crontab -`: a user's crontab, in a folder named after the
        # user (never `crontab/`, which /etc/crontab's import takes).
        prefix = f"crontab-{args.user or os_user()}"
    else:
        prefix = folder_name_for(source)
    prefix = prefix.strip("/")
    problem = job_name_problem(prefix)
    if problem or not prefix:
        raise VigilError(f"--prefix {quote(prefix)}: {problem or 'must name a folder under --to'}")
    timezone = args.timezone or host_timezone()
    zone_note = "" if args.timezone else " (this host's)" if timezone else " (this host's zone is unknown: --timezone)"
    timezone = timezone or "UTC"
    try:
        validate_timezone(timezone)
    except ValueError as exc:
        raise VigilError(f"--timezone: {exc}") from None
    text = _read(args.file)
    run_as = _run_as(args)
    owner = pwd.getpwuid(os.getuid()).pw_name
    options = CrontabOptions(source, args.system, timezone, owner=owner, run_as=run_as, home_of=_home_of)
    result = translate(text, options)
    root = Path(args.to or args.jobs).resolve()
    folder = root / prefix
    files = result.files()
    existing = [name for name, _ in files if (folder / name).exists()]
    if existing and not args.force:
        raise VigilError(
            f"refusing to overwrite {len(existing)} file(s) in {folder}: {', '.join(existing)} (--force overwrites)"
        )
    if files:
        folder.mkdir(parents=True, exist_ok=True)
    for name, content in files:
        # Whole files only: a scheduler watching the folder never reads half of one.
        temporary = folder / f".{name}.import"
        temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, folder / name)
    for job in result.jobs:
        print(escape(f"{prefix}/{job.name}  {job.schedule}  (line {job.line})"))
    if result.jobs:
        as_user = f", run as {run_as}" if run_as else ""
        zones = sorted({job.timezone for job in result.jobs})
        # The default zone, unless every line's CRON_TZ/TZ set another.
        where = f"{timezone}{zone_note}" if timezone in zones else ", ".join(zones) + " (CRON_TZ/TZ)"
        print(escape(f"wrote {len(result.jobs)} job(s) to {folder}, cron times in {where}{as_user}"))
    for problem_line in result.problems:
        print(escape(problem_line.format(source) + " (left out)"), file=sys.stderr)
    if files:
        _check_written(root, folder, [name for name, _ in files])
    if result.problems:
        raise VigilError(f"{len(result.problems)} line(s) of {source} could not be translated and were left out")
    if not result.jobs:
        raise VigilError(f"{source}: no cron entries found; nothing written")
    return EXIT_OK


def _check_written(root: Path, folder: Path, names: list[str]) -> None:
    """What was written must load; a `_folder.toml` above it could still get in the way."""
    written = {str(folder / name) for name in names}
    errors = [e for e in load_folder(root).errors if e.path in written]
    if errors:
        print(format_errors(errors), file=sys.stderr)
        raise VigilError(f"{len(errors)} error(s) in the files written to {folder} (see `vigil validate {root}`)")
