"""The `vigil` command line. Heavy modules are imported only by the commands that need them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ControlError, NotFoundError, VigilError
from engine.paths import StatePaths
from engine.text import escape, quote

if TYPE_CHECKING:
    from engine.api import StateReader
    from engine.model import JobRow, Run

#: Exit statuses (docs/cli.md lists them): 0 done; 1 a `vigil:` error (bad value, missing path,
#: refused command, database fault); 2 a malformed command line (argparse's usage message);
#: 3 the job or run named does not exist (NotFoundError, also when the active says so);
#: 130 interrupted with Ctrl-C.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MAX_PREVIEW = 1000  #: `vigil next -n`: more is never useful on a terminal, and each fire costs time
#: An agent's fields in `vigil status --json`, in their order there.
STATUS_AGENT_FIELDS = ("name", "up", "last_contact", "cpu_percent", "memory_percent", "load1", "running")


def _state(args: argparse.Namespace) -> StatePaths:
    paths = StatePaths(Path(args.state).resolve())
    try:
        os.stat(paths.db)
    except PermissionError:
        # State directories are owner-only: another user sees nothing in them.
        from engine.paths import os_user

        raise VigilError(
            f"state directory {paths.root} is not accessible to {os_user()}: it is owner-only; "
            "run this as the user who runs the scheduler (or root)"
        ) from None
    except OSError:
        pass  # missing: each command says what that means for it
    return paths


def _job_folder(args: argparse.Namespace) -> Path:
    """`--jobs`, which must be a folder: a missing one is an error, not an empty listing."""
    folder = Path(args.jobs).resolve()
    if not folder.exists():
        raise VigilError(f"job folder {folder} does not exist")
    if not folder.is_dir():
        raise VigilError(f"job folder {folder} is not a directory")
    return folder


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _table(rows: list[list[str]], headers: list[str]) -> str:
    # Cells carry text from job files, agents and reasons: escaped so none can drive the terminal.
    rows = [[escape(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _short_time(when: str | None) -> str:
    """A stored time (its text form, as in the JSON documents) as the tables show it."""
    if not when:
        return "-"
    return when.replace("+00:00", "Z").split(".")[0].replace("T", " ")


def _run_id(args: argparse.Namespace) -> int:
    """The run id argument, checked here so a bad one is a `vigil:` line, not a traceback."""
    from engine.ids import MAX_ROW_ID, as_row_id

    run_id = as_row_id(args.run_id)
    if run_id is None:
        raise VigilError(f"run id {args.run_id!r}: expected a whole number from 0 to {MAX_ROW_ID}")
    return run_id


def _flow_id(given: str) -> int:
    """A --flow argument: the id of the run that started the flow."""
    from engine.ids import MAX_ROW_ID, as_row_id

    flow_id = as_row_id(given)
    if flow_id is None:
        raise VigilError(f"--flow {given!r}: expected a flow id (a run id), a whole number from 0 to {MAX_ROW_ID}")
    return flow_id


def cmd_flows(args: argparse.Namespace) -> int:
    from engine.clock import iso
    from engine.ids import MAX_ROW_ID
    from engine.model import to_json

    if not 0 < args.limit <= MAX_ROW_ID:
        raise VigilError(f"--limit {args.limit}: expected a whole number from 1 to {MAX_ROW_ID}")
    reader = _reader(args)
    flows = reader.flows(job=args.job, limit=args.limit)
    if args.json:
        _print_json([to_json(flow) for flow in flows])
        return EXIT_OK
    rows = [
        [
            str(flow.id),
            flow.root_job,
            flow.state.value,
            _short_time(iso(flow.started_at)),
            _short_time(iso(flow.ended_at)) if flow.ended_at else "-",
            ", ".join(f"{count} {state}" for state, count in flow.steps.items()),
        ]
        for flow in flows
    ]
    print(_table(rows, ["FLOW", "ROOT JOB", "STATE", "STARTED (UTC)", "ENDED (UTC)", "STEPS"]))
    return EXIT_OK


def _reader(args: argparse.Namespace) -> StateReader:
    from engine.api import StateReader

    paths = _state(args)
    if not paths.db.exists():
        raise VigilError(f"no Vigil state at {paths.root}; start a scheduler there with `vigil up`")
    return StateReader(paths)


# ---------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from engine.ha.node import Node
    from engine.paths import restrict_umask
    from engine.sdnotify import Notifier

    restrict_umask()  # the state directory's files are owner-only; jobs get the umask back
    logging.basicConfig(
        level=logging.INFO if not args.quiet else logging.WARNING,
        format="%(asctime)s vigil[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # First: it takes systemd's notify variables out of the environment the jobs inherit.
    notifier = Notifier.from_environ()
    jobs_dir = _job_folder(args)
    listen = _http_listen(args, jobs_dir)
    if listen is None:
        node = Node(_state(args), jobs_dir, notifier=notifier)
        listener = None
    else:
        # Only a node with a listener loads prometheus_client and uvicorn.
        from engine.http.metrics import RunMetrics
        from engine.http.node_routes import node_app
        from engine.http.serve import HttpListener

        metrics = RunMetrics()
        node = Node(_state(args), jobs_dir, notifier=notifier, observer=metrics.observe)
        listener = HttpListener(node_app(node, metrics), *listen)
        listener.bind()  # a port in use is a `vigil:` error now, before the node starts

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.request_stop)
        serving = asyncio.create_task(listener.serve()) if listener is not None else None
        try:
            await node.run()
        finally:
            if listener is not None and serving is not None:
                listener.stop()
                await serving

    asyncio.run(main())
    return EXIT_OK


def _http_listen(args: argparse.Namespace, jobs_dir: Path) -> tuple[str, int] | None:
    """(host, port) of the HTTP listener: `--http`, else `[http] listen`, else None (no listener)."""
    from engine.config.listen import split_listen

    if args.http is not None:
        try:
            return split_listen(args.http)
        except ValueError as exc:
            raise VigilError(f"--http: {exc}") from None
    from engine.config import load_settings

    settings, errors = load_settings(jobs_dir)
    for error in errors:
        if error.key == "http" or error.key.startswith("http."):
            raise error  # the operator asked for a listener and would not get it: say so now
    return None if settings.http_listen is None else split_listen(settings.http_listen)


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.config import format_errors, load_folder

    folder = Path(args.dir or args.jobs)
    if not folder.is_dir():
        raise VigilError(f"{folder}: not a directory")
    result = load_folder(folder)
    errors = list(result.errors)
    if any(spec.url is not None for spec in result.settings.channels.values()):
        from engine.cli.notify_cmds import url_errors

        errors += url_errors(folder, result.settings)  # which Apprise URLs exist is Apprise's to say
    if errors:
        print(format_errors(errors))
        print(f"{len(errors)} error(s); {len(result.jobs)} valid job(s)", file=sys.stderr)
        return EXIT_ERROR
    print(f"{len(result.jobs)} job(s) valid in {escape(str(folder))}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from engine import schedule
    from engine.api import broken_job_files, flawed_job_files
    from engine.clock import iso
    from engine.config import load_folder

    jobs_dir = _job_folder(args)
    result = load_folder(jobs_dir, check_holidays=False)  # `vigil validate` checks them; listing stays fast
    paused: set[str] = set()
    held: set[str] = set()
    latest: dict[str, Run] = {}
    catalog: dict[str, JobRow] = {}
    stored: dict[str, JobRow] = {}
    paths = _state(args)
    if paths.db.exists():
        reader = _reader(args)
        paused = reader.paused_jobs()
        held = reader.held_jobs()
        latest = reader.latest_run_per_job()
        if _active_answers(paths):  # only a running active keeps a last valid version scheduled
            catalog = {row.name: row for row in reader.jobs()}
        elif any(job.calendar for job in result.jobs.values()):
            # The next fires the last active computed with their calendars (holiday tables are slow to load)
            stored = {row.name: row for row in reader.jobs()}
        reader.close()
    # A job file that is broken now: its first error, and what the active still runs in its place.
    still_run = [name for name, entry in catalog.items() if entry.loaded]
    broken = broken_job_files(jobs_dir, result.jobs, result.errors, catalogued=still_run)
    flawed = flawed_job_files(jobs_dir, result.jobs, result.errors)  # loaded, with an error (`notify`)
    now = datetime.now(UTC)
    docs = []
    for name in sorted(set(result.jobs) | set(broken)):
        job = result.jobs.get(name)
        last = latest.get(name)
        doc: dict[str, Any] = {"name": name, "last_state": last.state.value if last else None}
        doc["last_run_id"] = last.id if last else None
        if job is not None:
            row = catalog.get(name) or stored.get(name)
            known = row is not None and row.loaded and row.schedule == job.schedule_text
            if job.calendar and known and row and row.next_fire and row.next_fire > now and name not in paused:
                nxt = row.next_fire if job.enabled else None  # the active's, with the calendar applied
            else:
                trigger = schedule.job_trigger(job, result.settings.calendars)
                nxt = trigger.next_fire(now) if trigger and job.enabled and name not in paused else None
            status = "disabled" if not job.enabled else "paused" if name in paused else "enabled"
            if status == "enabled" and name in held:
                status = "held"
            doc |= {"schedule": job.schedule_text, "status": status, "next_fire": iso(nxt)}
            doc |= {"agent": job.agent, "description": job.description, "error": flawed.get(name)}
            doc |= {"held": name in held, "priority": job.priority, "locks": dict(job.locks)}
        else:
            row = catalog.get(name)
            if row is not None and row.loaded:
                status = "error: using last valid version"
                doc |= {"schedule": row.schedule, "status": status, "next_fire": iso(row.next_fire)}
                doc |= {"agent": row.agent, "description": row.description}
            else:
                doc |= {"schedule": None, "status": "error: not loaded", "next_fire": None}
                doc |= {"agent": None, "description": ""}
            doc["error"] = broken[name]
        docs.append(doc)
    if args.json:
        _print_json(docs)
    else:
        rows = [
            [
                d["name"],
                d["schedule"] or "-",
                d["status"] if d["error"] is None or d["status"].startswith("error") else f"{d['status']} (error)",
                _short_time(d["next_fire"]),
                d["last_state"] or "-",
            ]
            for d in docs
        ]
        print(_table(rows, ["JOB", "SCHEDULE", "STATUS", "NEXT FIRE (UTC)", "LAST"]))
    for err in result.errors:
        print(f"warning: {err.format()}", file=sys.stderr)
    return EXIT_OK


def _active_answers(paths: StatePaths) -> bool:
    from engine.control import ControlClient

    try:
        ControlClient(paths, timeout=2.0).request("status")
    except (ControlError, OSError, ValueError):
        return False
    return True


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.api import run_json
    from engine.clock import iso
    from engine.ids import MAX_ROW_ID
    from engine.model import RunState

    if not 0 < args.limit <= MAX_ROW_ID:
        raise VigilError(f"--limit {args.limit}: expected a whole number from 1 to {MAX_ROW_ID}")
    if args.status is not None and args.status not in set(RunState):
        states = ", ".join(state.value for state in RunState)
        raise VigilError(f"--status {quote(args.status)}: not a run state; use one of {states}")
    if args.job is not None:
        from engine.config import job_name_problem

        if problem := job_name_problem(args.job):  # names come from file paths: this one cannot
            raise VigilError(f"--job {quote(args.job, whole=True)}: no job can have this name ({problem})")
    reader = _reader(args)
    if args.flow is not None:
        flow_id = _flow_id(args.flow)
        runs = [
            r
            for r in reader.flow_runs(
                flow_id, limit=args.limit if args.job is None and args.status is None else 1 << 62
            )
            if (args.job is None or r.job == args.job) and (args.status is None or r.state == args.status)
        ][: args.limit]
    else:
        runs = reader.runs(job=args.job, state=args.status, limit=args.limit)
    if args.json:
        _print_json([run_json(r) for r in runs])
        return EXIT_OK
    rows = [
        [
            str(r.id),
            r.job,
            r.state.value,
            "-" if r.exit_code is None else str(r.exit_code),
            _short_time(iso(r.scheduled_for)),
            _duration(r),
            str(r.attempt),
            ",".join(r.warnings) or "-",
            (r.reason or "")[:60],
        ]
        for r in runs
    ]
    print(_table(rows, ["ID", "JOB", "STATE", "EXIT", "SCHEDULED (UTC)", "TOOK", "TRY", "WARN", "REASON"]))
    return EXIT_OK


def _duration(run: Run) -> str:
    if run.started_at is None or run.ended_at is None:
        return "-"
    return f"{(run.ended_at - run.started_at).total_seconds():.2f}s"


def cmd_logs(args: argparse.Namespace) -> int:
    args.run_id = _run_id(args)
    reader = _reader(args)
    run = reader.run(args.run_id)
    if run.agent and (not run.state.terminal or not reader.log_path(args.run_id).exists()):
        from engine.cli.agent_logs import print_agent_log  # a run on an agent: its log is there until it ends

        return print_agent_log(reader, run, Path(args.jobs), follow=args.follow)
    offset = 0
    while True:
        chunk = reader.read_log(args.run_id, offset)
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        offset = chunk.offset
        if chunk.text:
            continue
        if not args.follow or run.state.terminal:
            break
        time.sleep(0.25)
        run = reader.run(args.run_id)
    return EXIT_OK


def _control(args: argparse.Namespace, op: str, **kw: Any) -> dict[str, Any]:
    from engine.control import ControlClient

    return ControlClient(_state(args)).request(op, **kw)


def cmd_run(args: argparse.Namespace) -> int:
    reply = _control(args, "run", job=args.name)
    print(f"started run {reply['run_id']} of {escape(args.name)}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    _control(args, args.command, job=args.name)
    print(f"{escape(args.name)} {'paused' if args.command == 'pause' else 'resumed'}")
    return EXIT_OK


def cmd_hold(args: argparse.Namespace) -> int:
    reply = _control(args, args.command, job=args.name)
    if args.command == "hold":
        print(f"{escape(args.name)} held: its new runs wait pending until `vigil release {escape(args.name)}`")
    else:
        waiting = int(reply.get("waiting") or 0)
        print(f"{escape(args.name)} released" + (f": {waiting} waiting runs may start now" if waiting else ""))
    return EXIT_OK


def cmd_kill(args: argparse.Namespace) -> int:
    args.run_id = _run_id(args)
    _control(args, "kill", run_id=args.run_id)
    print(f"kill sent to run {args.run_id}")
    return EXIT_OK


def cmd_rerun(args: argparse.Namespace) -> int:
    if args.flow is not None:
        if args.run_id is not None:
            raise VigilError("give a run id or --flow ID --from-failed, not both")
        if not args.from_failed:
            raise VigilError("--flow ID needs --from-failed (rerun the flow's failed steps and what follows them)")
        flow_id = _flow_id(args.flow)
        reply = _control(args, "rerun_flow", flow_id=flow_id)
        ids = ", ".join(map(str, reply["run_ids"]))
        print(f"flow {flow_id}: failed steps rerun as run {ids}")
        return EXIT_OK
    if args.from_failed:
        raise VigilError("--from-failed needs --flow ID")
    if args.run_id is None:
        raise VigilError("give the run id to rerun (see `vigil runs`), or --flow ID --from-failed")
    args.run_id = _run_id(args)
    reply = _control(args, "rerun", run_id=args.run_id)
    print(f"rerun of {args.run_id} started as run {reply['run_id']}")
    return EXIT_OK


def cmd_switchover(args: argparse.Namespace) -> int:
    reply = _control(args, "switchover")
    print(f"active pid {reply['from_pid']} is handing over to a standby ({len(reply['standbys'])} waiting)")
    return EXIT_OK


def cmd_next(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from engine import schedule
    from engine.config import load_folder

    if not 1 <= args.n <= MAX_PREVIEW:  # a huge N would run for ever and fill memory
        raise VigilError(f"-n {args.n}: expected a whole number from 1 to {MAX_PREVIEW}")
    jobs_dir = _job_folder(args)
    result = load_folder(jobs_dir)
    job = result.jobs.get(args.name)
    if job is None:
        job_file = jobs_dir / f"{args.name}.toml"
        if not job_file.is_file():
            raise NotFoundError(f"no valid job named {quote(args.name)}")
        # The file is there but invalid, in itself or in a `_folder.toml` above it: an error (exit 1,
        # as `validate`), not a missing job.
        layers = {str(job_file)} | {str(d / "_folder.toml") for d in job_file.parents if d.is_relative_to(jobs_dir)}
        problems = [e.format() for e in result.errors if e.path in layers]
        raise VigilError(f"no valid job named {quote(args.name)}" + (": " + "; ".join(problems) if problems else ""))
    if job.calendar or job.window:
        from engine.cli.plan import next_lines

        # The calendar and windows applied: the fires they leave out are listed too, with why.
        times, lines = next_lines(job, result.settings.calendars, datetime.now(UTC), args.n)
    else:
        times = lines = [f.isoformat() for f in schedule.preview(job, datetime.now(UTC), args.n)]
    if args.json:
        _print_json(times)
    elif not times:
        for line in lines:
            print(line)
        print(f"{escape(args.name)} has no upcoming scheduled fires ({escape(job.schedule_text)})")
    else:
        for line in lines:
            print(line)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.cli.plan import cmd_plan as run

    return run(args)


def cmd_import_crontab(args: argparse.Namespace) -> int:
    from engine.cli.import_crontab import cmd_import_crontab as run

    return run(args)


def cmd_status(args: argparse.Namespace) -> int:
    from engine.api import cluster_status
    from engine.model import to_json

    paths = _state(args)
    if not paths.db.exists():  # like `runs`: no state is an error, not "active: none"
        raise VigilError(f"no Vigil state at {paths.root}; start a scheduler there with `vigil up`")
    cluster = cluster_status(paths)
    doc: dict[str, Any] = {
        "active": cluster.active,
        "standbys": cluster.standbys,
        "failovers": [to_json(f) for f in cluster.failovers],
        "jobs": 0,
        "runs": {},
        "agents": [],
        "max_running": cluster.max_running,
        "resources": [to_json(use) for use in cluster.resources()],
        "held": cluster.held,
    }
    if paths.db.exists():
        reader = _reader(args)
        doc["jobs"] = len(reader.jobs())
        doc["runs"] = reader.counts_by_state()
        doc["agents"] = [to_json(a, STATUS_AGENT_FIELDS) for a in reader.agents()]
        reader.close()
    if args.json:
        _print_json(doc)
        return EXIT_OK
    active = doc["active"]
    if active:
        print(f"active: pid {active['pid']} epoch {active['epoch']} since {_short_time(active['since'])}")
    else:
        print("active: none (no scheduler is running on this state directory)")
    for sb in doc["standbys"]:
        print(f"standby: pid {sb['pid']} since {_short_time(sb['since'])}")
    print(f"jobs: {doc['jobs']}" + (f" (held: {', '.join(map(escape, doc['held']))})" if doc["held"] else ""))
    for use in cluster.resources():
        holders = f" held by runs {', '.join(map(str, use.holders))}" if use.holders else ""
        waiting = f", {use.waiting} waiting" if use.waiting else ""
        print(f"resource: {escape(use.name)} {use.used}/{use.limit}{holders}{waiting}")
    print("runs: " + (", ".join(f"{k} {v}" for k, v in sorted(doc["runs"].items())) or "none"))
    for ag in doc["agents"]:
        load = "" if not ag["up"] else f" cpu {ag['cpu_percent']}% mem {ag['memory_percent']}% load {ag['load1']}"
        print(
            f"agent: {escape(ag['name'])} {'up' if ag['up'] else 'DOWN'}{load} running {ag['running'] or 0} "
            f"last contact {_short_time(ag['last_contact'])}"
        )
    for fo in doc["failovers"][:5]:
        gap = "?" if fo["gap_ms"] is None else f"{fo['gap_ms']:.0f} ms"
        print(f"failover: {_short_time(fo['at'])} {fo['cause']} pid {fo['from_pid']} -> {fo['to_pid']} gap {gap}")
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    paths = _state(args)
    if args.db_command == "check":
        return _db_check(paths)
    if args.db_command == "backup":
        return _db_backup(paths, Path(args.path))
    # prune
    from engine.control import ControlClient
    from engine.durations import parse_bounded_duration
    from engine.errors import NoActiveSchedulerError

    try:
        seconds = parse_bounded_duration(args.older_than)
    except ValueError as exc:
        raise VigilError(f"--older-than: {exc}") from None
    try:
        reply = ControlClient(paths, timeout=120).request("prune", older_than_s=seconds)
        deleted = reply["deleted"]
    except NoActiveSchedulerError:
        deleted = _prune_offline(paths, seconds)
    print(f"pruned {deleted} run(s) that ended more than {escape(args.older_than)} ago")
    return EXIT_OK


def _db_check(paths: StatePaths) -> int:
    from engine.errors import StoreError
    from engine.store.sqlite.admin import check_database
    from engine.store.sqlite.db import VIGIL_TABLES, foreign_message, restore_hint

    check = check_database(paths)  # refuses a missing, empty or foreign file
    problems = check.problems
    if not VIGIL_TABLES <= check.tables:
        raise StoreError(foreign_message(paths.db, check.tables))
    if problems != ["ok"]:
        print("\n".join(problems))
        raise StoreError(
            f"state database {paths.db} failed the integrity check ({len(problems)} problem(s), first: "
            f"{problems[0]}); {restore_hint(paths.db)}"
        )
    if not check.has_leader:
        raise StoreError(f"state database {paths.db} has no leader row; {restore_hint(paths.db)}")
    print("ok")
    return EXIT_OK


def _db_backup(paths: StatePaths, target: Path) -> int:
    from engine.store.sqlite.admin import backup

    backup(paths, target)
    print(escape(f"backed up {paths.db} to {target}"))
    return EXIT_OK


def _prune_offline(paths: StatePaths, seconds: float) -> int:
    import shutil
    from datetime import UTC, datetime, timedelta

    from engine.store.sqlite.admin import prune_offline

    ids = prune_offline(paths, datetime.now(UTC) - timedelta(seconds=seconds))
    for run_id in ids:
        shutil.rmtree(paths.run_dir(run_id), ignore_errors=True)
    return len(ids)


def cmd_monitor(args: argparse.Namespace) -> int:
    # The dashboard registers itself under this entry point (pyproject.toml): the engine never
    # imports it, so a scheduler host needs no terminal stack.
    from importlib.metadata import entry_points

    found = entry_points(group="vigil.commands", name="monitor")
    if not found:
        raise VigilError("the dashboard is not installed (no 'monitor' in the vigil.commands entry points)")
    monitor = next(iter(found)).load()
    return int(monitor(_state(args), read_only=args.read_only, jobs_dir=Path(args.jobs), start=args.start))


def cmd_agent(args: argparse.Namespace) -> int:
    from engine.agents.server import serve_agent

    return serve_agent(args)


def cmd_notify(args: argparse.Namespace) -> int:
    from engine.cli.notify_cmds import cmd_notify_test

    return cmd_notify_test(args, _job_folder(args))


def cmd_notifications(args: argparse.Namespace) -> int:
    from engine.cli.notify_cmds import cmd_notifications as listing

    reader = _reader(args)
    try:
        return listing(args, reader)
    finally:
        reader.close()


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    state_help = "state directory (default: $VIGIL_STATE or ./.vigil)"
    common.add_argument("--state", default=os.environ.get("VIGIL_STATE", "./.vigil"), help=state_help)
    # The db actions take --state too; with no default of their own, so `vigil db --state DIR check`
    # keeps DIR instead of having it overwritten by the action's default.
    action_state = argparse.ArgumentParser(add_help=False)
    action_state.add_argument("--state", default=argparse.SUPPRESS, help=state_help)
    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument(
        "--jobs",
        default=os.environ.get("VIGIL_JOBS", "./sample_jobs"),
        help="job folder (default: $VIGIL_JOBS or ./sample_jobs)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Vigil: a job scheduler with exactly-once runs, active/standby failover and a terminal dashboard.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", parents=[common, jobs], help="run the scheduler in the foreground (active or standby)")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics and /healthz on HOST:PORT ([::1]:PORT for IPv6; overrides [http] listen in vigil.toml)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("validate", parents=[common, jobs], help="check every job file; exit 1 on any error")
    p.add_argument("dir", nargs="?", help="job folder to check (default: --jobs)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "jobs", parents=[common, jobs, as_json], help="list jobs: schedule, status, next fire, last state"
    )
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("runs", parents=[common, as_json], help="list runs, newest first")
    p.add_argument("--job", help="only this job")
    p.add_argument("--status", metavar="STATE", help="only runs in this state (e.g. failed, running)")
    p.add_argument("--limit", type=int, default=50, help="at most N runs (default 50)")
    p.add_argument("--flow", metavar="ID", help="only the runs of this flow (see `vigil flows`)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "flows", parents=[common, as_json], help="list flows (a run and the steps after it), newest first"
    )
    p.add_argument("--job", help="only flows with a step of this job")
    p.add_argument("--limit", type=int, default=50, help="at most N flows (default 50)")
    p.set_defaults(func=cmd_flows)

    p = sub.add_parser("logs", parents=[common, jobs], help="print a run's captured stdout+stderr")
    p.add_argument("run_id", help="a run id (see `vigil runs`)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("run", parents=[common], help="run a job now (asks the active scheduler)")
    p.add_argument("name")
    p.set_defaults(func=cmd_run)
    for name, text in (("pause", "stop scheduling a job"), ("resume", "resume a paused job")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(func=cmd_pause)
    for name, text in (
        ("hold", "hold a job: its new runs wait pending (not skipped) until released"),
        ("release", "release a held job: its waiting runs start (subject to locks and overlap)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(func=cmd_hold)
    p = sub.add_parser("kill", parents=[common], help="kill a running run's whole process group")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_kill)
    p = sub.add_parser("rerun", parents=[common], help="run a finished run's job again, as a new run")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--flow", metavar="ID", help="with --from-failed: the flow whose failed steps to rerun")
    p.add_argument(
        "--from-failed",
        action="store_true",
        help="rerun the failed steps of a finished flow and what follows them, as new attempts in the flow",
    )
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser(
        "import-crontab",
        parents=[common, jobs],
        help="turn a crontab into job files (one per line)",
        description="Write one job file per line of a crontab (and a _folder.toml with what they share) to "
        "DIR/PREFIX. Lines that cannot be translated are listed with their line numbers and left out "
        "(exit status 1); existing files are not overwritten without --force.",
    )
    p.add_argument("file", metavar="FILE", help="the crontab (`-` for standard input, e.g. from `crontab -l`)")
    p.add_argument("--system", action="store_true", help="the /etc/crontab and /etc/cron.d format, with a user field")
    p.add_argument(
        "--user",
        metavar="NAME",
        help="run a user crontab's jobs as NAME (`user` in the _folder.toml; default: NAME for a spool file "
        "/var/spool/cron/crontabs/NAME, else the scheduler's user)",
    )
    p.add_argument("--to", metavar="DIR", help="the job folder to write into (default: --jobs)")
    p.add_argument(
        "--prefix",
        metavar="NAME",
        help="the sub-folder of DIR, and so the jobs' name prefix (default: the file's name, e.g. php for "
        "/etc/cron.d/php)",
    )
    p.add_argument(
        "--timezone", metavar="ZONE", help="the zone cron ran in, for lines without CRON_TZ (default: this host's)"
    )
    p.add_argument("--force", action="store_true", help="overwrite job files a previous import wrote")
    p.set_defaults(func=cmd_import_crontab)

    p = sub.add_parser("next", parents=[common, jobs, as_json], help="preview a job's next fire times")
    p.add_argument("name")
    p.add_argument("-n", type=int, default=5, help=f"how many, 1 to {MAX_PREVIEW} (default 5)")
    p.set_defaults(func=cmd_next)

    p = sub.add_parser(
        "plan",
        parents=[common, jobs, as_json],
        help="the projected fires of every job for the next days, with those a calendar or window leaves out",
    )
    p.add_argument("--days", type=int, default=7, help="how many days ahead, 1 to 366 (default 7)")
    p.add_argument("--job", metavar="GLOB", help="only the jobs whose names match, e.g. 'etl/*'")
    p.add_argument("--empty", action="store_true", help="list the working days of each calendar with nothing planned")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", parents=[common, as_json], help="active/standby, counts of jobs and runs, failovers")
    p.set_defaults(func=cmd_status)

    # --state on `test` itself (argparse would let a sub-command's default overwrite the parent's value).
    p = sub.add_parser("notify", help="notification channels: `notify test CHANNEL`")
    nsub = p.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    t = nsub.add_parser(
        "test",
        parents=[common, jobs],
        help="send a test event through a channel of vigil.toml now; exit 1 if not delivered",
    )
    t.add_argument("channel", help="a [notify.NAME] of vigil.toml in --jobs")
    t.set_defaults(func=cmd_notify)

    p = sub.add_parser("notifications", parents=[common, as_json], help="list the notification outbox, newest first")
    # --status, as `vigil runs` has it: --state is every command's state directory
    p.add_argument("--status", metavar="STATE", help="only pending, sent, failed or suppressed rows")
    p.add_argument("--channel", metavar="NAME", help="only this channel's rows")
    p.add_argument("--limit", type=int, default=50, help="at most N rows (default 50)")
    p.set_defaults(func=cmd_notifications)

    p = sub.add_parser("switchover", parents=[common], help="hand the active role to a standby")
    p.set_defaults(func=cmd_switchover)

    p = sub.add_parser("db", parents=[common], help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dbsub.add_parser("check", parents=[action_state], help="PRAGMA integrity_check")
    b = dbsub.add_parser("backup", parents=[action_state], help="online backup to PATH (safe while running)")
    b.add_argument("path")
    pr = dbsub.add_parser("prune", parents=[action_state], help="delete runs that ended before a cut-off")
    pr.add_argument("--older-than", required=True, metavar="DURATION", help='e.g. "30d"')
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("monitor", parents=[common, jobs], help="open the terminal dashboard")
    p.add_argument("--read-only", action="store_true", help="disable every action")
    p.add_argument("--start", action="store_true", help="also start a scheduler on --jobs for the dashboard's lifetime")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("agent", help="serve jobs for a remote scheduler over HTTP")
    p.add_argument(
        "--state",
        default=os.environ.get("VIGIL_AGENT_STATE", "./.vigil-agent"),
        help="the agent's journal and run directories (default: $VIGIL_AGENT_STATE or ./.vigil-agent); "
        "never a scheduler's state directory",
    )
    p.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT", help="default: 127.0.0.1:8765")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the bearer token every request needs (required off loopback; without it the "
        "agent makes its own in STATE/agent.token, mode 0600, and reuses it)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument(
        "--reset-epoch",
        metavar="EPOCH",
        help=(
            "first set the highest epoch seen to EPOCH (the active's, from `vigil status`): "
            "the way back from a bogus one, docs/agents.md"
        ),
    )
    p.set_defaults(func=cmd_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging
    import sqlite3

    # A library's log line (Apprise's "Unparseable URL ...") must not reach the terminal beside the
    # command's own `vigil:` line; `vigil up` configures a real handler on the root logger.
    logging.getLogger("vigil").addHandler(logging.NullHandler())

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VigilError as exc:
        print(f"vigil: {escape(str(exc))}", file=sys.stderr)  # one line, whatever user text it carries
        return EXIT_NOT_FOUND if isinstance(exc, NotFoundError) else EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    # The last resort: each path gives its own message; nothing reaches the user as a traceback.
    except sqlite3.Error as exc:
        print(escape(f"vigil: state database {_state(args).db}: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(escape(f"vigil: {where}{exc.strerror or exc}"), file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
