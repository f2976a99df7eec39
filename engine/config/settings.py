"""`vigil.toml`: the `[scheduler]` settings, the `[agents.NAME]` and `[pools.NAME]` a job's `agent` may name,
the `[notify.NAME]` channels a `notify` may name, the `[calendars.NAME]` a `calendar` may name (`calendars`)
and the `[http]` listener.

Invalid entries are left out (their defaults used) and every one is reported with its line. Imports
`sources`, `fields`, `listen`, `engine.model`, `engine.errors` and `engine.text`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.config.calendars import parse_calendars
from engine.config.fields import (
    AGENT_KEYS,
    CHANNEL_KEYS,
    MAX_LOCK_COUNT,
    POOL_KEYS,
    POOL_MODES,
    RESOURCE_KEYS,
    SCHEDULER_FIELDS,
    BadValue,
    as_choice,
    as_command,
    as_duration,
    as_event_kinds,
    as_int,
    as_string,
    as_string_list,
    resolve_path,
    unknown_key_reason,
)
from engine.config.listen import split_listen
from engine.config.names import NAME_RULE, NAME_SEGMENT
from engine.config.sources import SourceFile, read_file
from engine.errors import ConfigError
from engine.model import AgentSpec, ChannelSpec, PoolSpec, Settings
from engine.text import describe, quote

__all__ = [
    "MAX_RATE_LIMIT",
    "SETTINGS_FILE",
    "DeclaredNames",
    "Targets",
    "agent_targets",
    "calendar_targets",
    "channel_targets",
    "load_settings",
    "parse_settings",
]

SETTINGS_FILE = "vigil.toml"
_TABLES = ("scheduler", "agents", "pools", "notify", "http", "resources", "calendars")
MAX_RATE_LIMIT = 100_000
#: an Apprise URL is `schema://...`; which schemas exist is Apprise's to say (`vigil validate` asks it)
_APPRISE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_HTTP_KEYS = ("listen",)


@dataclass(frozen=True)
class DeclaredNames:
    """What a job key may name in vigil.toml (`agent =`, `notify =`): the names declared validly, and
    those declared but invalid, with the words its errors use."""

    what: str  #: "agent or pool", "channel"
    tables: tuple[str, ...]  #: the tables that declare such a name: ("agents", "pools"), ("notify",)
    valid: frozenset[str] = frozenset()
    invalid: frozenset[str] = frozenset()

    def problem(self, name: str) -> str | None:
        if name in self.valid:
            return None
        if name in self.invalid:
            return f"{self.what} {quote(name)} is declared in {SETTINGS_FILE} but its definition is invalid"
        close = difflib.get_close_matches(name, sorted(self.valid), n=1)
        hint = f"did you mean {quote(close[0])}? " if close else ""
        declare = " or ".join(f"[{table}.{name}]" for table in self.tables)
        known = ", ".join(sorted(self.valid)) or "none declared"
        return f"unknown {self.what} {quote(name)} ({hint}declare {declare} in {SETTINGS_FILE}; known: {known})"


def agent_targets(valid: frozenset[str] = frozenset(), invalid: frozenset[str] = frozenset()) -> DeclaredNames:
    """What an `agent =` key may name: declared agents and pools."""
    return DeclaredNames("agent or pool", ("agents", "pools"), valid, invalid)


def channel_targets(valid: frozenset[str] = frozenset(), invalid: frozenset[str] = frozenset()) -> DeclaredNames:
    """What a `notify =` key may name: declared channels."""
    return DeclaredNames("channel", ("notify",), valid, invalid)


def resource_targets(valid: frozenset[str] = frozenset(), invalid: frozenset[str] = frozenset()) -> DeclaredNames:
    """What a `locks =` key may name: declared resources."""
    return DeclaredNames("resource", ("resources",), valid, invalid)


def calendar_targets(valid: frozenset[str] = frozenset(), invalid: frozenset[str] = frozenset()) -> DeclaredNames:
    """What a `calendar =` key may name: declared calendars."""
    return DeclaredNames("calendar", ("calendars",), valid, invalid)


@dataclass(frozen=True)
class Targets:
    """The names job keys refer to in vigil.toml: `agent =`, `notify =`, `calendar =` and `locks =`
    (with each resource's limit, which a lock's count may not exceed)."""

    agents: DeclaredNames = field(default_factory=agent_targets)
    channels: DeclaredNames = field(default_factory=channel_targets)
    calendars: DeclaredNames = field(default_factory=calendar_targets)
    resources: DeclaredNames = field(default_factory=resource_targets)
    limits: tuple[tuple[str, int], ...] = ()  #: each valid resource's limit, by name

    def lock_problem(self, name: str, count: int) -> str | None:
        """Why a job cannot take `count` of resource `name`, or None."""
        problem = self.resources.problem(name)
        if problem is not None:
            return problem
        limit = dict(self.limits)[name]
        if count > limit:
            return (
                f"asks for {count} of {quote(name)} but its limit is {limit} ([resources.{name}] limit in "
                f"{SETTINGS_FILE}): the run could never start"
            )
        return None


_Report = Callable[[tuple[str, ...], str], None]


def parse_settings(
    source: SourceFile | None, root_abs: str, *, check_holidays: bool = True
) -> tuple[Settings, list[ConfigError], Targets]:
    """Settings from vigil.toml; invalid entries are left out (defaults used) and reported.

    `check_holidays`: check each calendar's holiday country against the `holidays` package (listing
    commands pass False: importing it costs tens of milliseconds)."""
    if source is None:
        return Settings(), [], Targets()
    if source.syntax_error is not None:
        return Settings(channels_unknown=True), [source.syntax_error], Targets()
    data = source.data or {}
    errors: list[ConfigError] = []

    def bad(path: tuple[str, ...], reason: str) -> None:
        errors.append(source.error(path, reason))

    for key, raw in data.items():
        if key not in _TABLES:
            bad((key,), unknown_key_reason(key, _TABLES, where="top"))
        elif not isinstance(raw, dict):
            bad(
                (key,),
                f"expected a table [{key}{'' if key == 'scheduler' else '.NAME'}], got {describe(raw)}",
            )
    scheduler = _parse_scheduler(_table(data, "scheduler"), bad)
    agents, pools, invalid = _parse_targets(data, root_abs, bad)
    channels, invalid_channels = _parse_channels(_table(data, "notify"), bad)
    channel_names = channel_targets(frozenset(channels), frozenset(invalid_channels))
    scheduler["notify"] = _declared_notify(scheduler.get("notify", ()), channel_names, bad)
    http_listen = _parse_http(_table(data, "http"), bad)
    resources, invalid_resources = _parse_resources(_table(data, "resources"), bad)
    calendars, invalid_calendars = parse_calendars(_table(data, "calendars"), bad, check_holidays=check_holidays)
    settings = Settings(
        **scheduler,
        agents=agents,
        pools=pools,
        channels=channels,
        invalid_channels=frozenset(invalid_channels),
        channels_unknown="notify" in data and not isinstance(data["notify"], dict),
        http_listen=http_listen,
        resources=resources,
        calendars=calendars,
    )
    targets = Targets(
        agent_targets(frozenset(agents) | frozenset(pools), frozenset(invalid - set(agents) - set(pools))),
        channel_names,
        calendars=calendar_targets(frozenset(calendars), frozenset(invalid_calendars)),
        resources=resource_targets(frozenset(resources), frozenset(invalid_resources)),
        limits=tuple(sorted(resources.items())),
    )
    errors.sort(key=lambda error: error.line or 0)
    return settings, errors, targets


def _parse_targets(
    data: Mapping[str, Any], root_abs: str, bad: _Report
) -> tuple[dict[str, AgentSpec], dict[str, PoolSpec], set[str]]:
    """The valid agents and pools, and the names declared but invalid."""
    invalid: set[str] = set()
    agents: dict[str, AgentSpec] = {}
    for name, table in _table(data, "agents").items():
        spec = _parse_agent(name, table, root_abs, bad)
        if spec is None:
            invalid.add(name)
        else:
            agents[name] = spec
    pools: dict[str, PoolSpec] = {}
    declared = set(_table(data, "agents"))
    for name, table in _table(data, "pools").items():
        pool = _parse_pool(name, table, declared, agents, bad)
        if pool is None:
            invalid.add(name)
        else:
            pools[name] = pool
    for name in sorted(set(pools) & set(agents)):
        bad(
            ("pools", name),
            f"a pool cannot have the same name as agent {quote(name)} (`agent =` would be ambiguous)",
        )
        del pools[name]
        invalid.add(name)
    return agents, pools, invalid


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A top-level table of vigil.toml; empty when absent or not a table (already reported)."""
    section = data.get(key)
    return section if isinstance(section, dict) else {}


def _parse_scheduler(section: Mapping[str, Any], bad: _Report) -> dict[str, Any]:
    """The valid `[scheduler]` keys, checked by `SCHEDULER_FIELDS`; each bad one reported."""
    scheduler: dict[str, Any] = {}
    for key, raw in section.items():
        check = SCHEDULER_FIELDS.get(key)
        if check is None:
            bad(("scheduler", key), unknown_key_reason(key, SCHEDULER_FIELDS, where="scheduler"))
            continue
        try:
            scheduler[key] = check(raw)
        except BadValue as problem:
            for sub, reason in problem.problems:
                bad(("scheduler", key, *sub), reason)
    interval = scheduler.get("heartbeat_interval", Settings.heartbeat_interval)
    timeout = scheduler.get("heartbeat_timeout", Settings.heartbeat_timeout)
    if timeout <= interval:
        bad(("scheduler", "heartbeat_timeout"), f"must be longer than heartbeat_interval ({interval:g}s)")
        scheduler.pop("heartbeat_timeout", None)
        scheduler.pop("heartbeat_interval", None)
    return scheduler


def _parse_http(section: Mapping[str, Any], bad: _Report) -> str | None:
    """`[http] listen = "HOST:PORT"`, or None (no listener)."""
    for key in section:
        if key not in _HTTP_KEYS:
            bad(("http", key), unknown_key_reason(key, _HTTP_KEYS, where="http"))
    raw = section.get("listen")
    if raw is None:
        return None
    if not isinstance(raw, str):
        bad(("http", "listen"), f'expected a string "HOST:PORT" (e.g. "127.0.0.1:8780"), got {describe(raw)}')
        return None
    try:
        split_listen(raw.strip())
    except ValueError as exc:
        bad(("http", "listen"), str(exc))
        return None
    return raw.strip()


def _parse_resources(section: Mapping[str, Any], bad: _Report) -> tuple[dict[str, int], set[str]]:
    """`[resources.NAME] limit = N`: each valid resource's limit, and the names declared but invalid."""
    limits: dict[str, int] = {}
    invalid: set[str] = set()
    for name, table in section.items():
        where = ("resources", name)
        if not isinstance(table, dict):
            bad(where, f"expected a table [resources.{name}] with limit = N, got {describe(table)}")
            invalid.add(name)
            continue
        ok = True
        if not NAME_SEGMENT.fullmatch(name):
            bad(where, f"resource names {NAME_RULE}")
            ok = False
        for key in table:
            if key not in RESOURCE_KEYS:
                bad((*where, key), unknown_key_reason(key, RESOURCE_KEYS, where="resource"))
                ok = False
        if "limit" not in table:
            bad(where, "required key limit is missing (e.g. limit = 2: how many runs may hold it at once)")
            ok = False
        else:
            try:
                limit = as_int(table["limit"], minimum=1, maximum=MAX_LOCK_COUNT)
            except BadValue as problem:
                bad((*where, "limit"), f"expected a positive integer: {problem}")
                ok = False
        if ok:
            limits[name] = limit
        else:
            invalid.add(name)
    return limits, invalid


def _parse_agent(name: str, table: object, root_abs: str, bad: _Report) -> AgentSpec | None:
    where = ("agents", name)
    if not isinstance(table, dict):
        bad(where, f"expected a table [agents.{name}] with a url, got {describe(table)}")
        return None
    ok = True
    if not NAME_SEGMENT.fullmatch(name):
        bad(where, f"agent names {NAME_RULE}")
        ok = False
    fields: dict[str, str] = {}
    for key, raw in table.items():
        if key not in AGENT_KEYS:
            bad((*where, key), unknown_key_reason(key, AGENT_KEYS, where="agent"))
            ok = False
        elif not isinstance(raw, str) or not raw.strip():
            bad((*where, key), f"expected a non-empty string, got {describe(raw)}")
            ok = False
        else:
            fields[key] = raw.strip()
    ok = _agent_url_ok(where, table, fields, bad) and ok
    if "tls_key" in fields and "tls_cert" not in fields:
        bad((*where, "tls_key"), "tls_key needs tls_cert (the client certificate)")
        ok = False
    if not ok:
        return None
    paths = {key: resolve_path(fields[key], root_abs) for key in AGENT_KEYS[1:] if key in fields}
    return AgentSpec(name=name, url=fields["url"], **paths)


def _agent_url_ok(where: tuple[str, ...], table: Mapping[str, Any], fields: Mapping[str, str], bad: _Report) -> bool:
    """Whether the agent has a usable url (an unreadable one is already reported), reporting what is wrong."""
    url = fields.get("url")
    if "url" not in table:
        bad(where, 'required key url is missing (e.g. url = "https://host:8700")')
        return False
    if url is None:
        return False
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        bad((*where, "url"), f"expected an http:// or https:// URL with a host, got {quote(url)}")
        return False
    tls_over_http = [key for key in ("tls_ca", "tls_cert", "tls_key") if key in fields and parts.scheme == "http"]
    for key in tls_over_http:
        bad((*where, key), "TLS settings need an https:// url")
    return not tls_over_http


def _parse_pool(
    name: str, table: object, declared: set[str], agents: Mapping[str, AgentSpec], bad: _Report
) -> PoolSpec | None:
    where = ("pools", name)
    if not isinstance(table, dict):
        bad(where, f"expected a table [pools.{name}] with agents = [...], got {describe(table)}")
        return None
    ok = True
    for key in table:
        if key not in POOL_KEYS:
            bad((*where, key), unknown_key_reason(key, POOL_KEYS, where="pool"))
            ok = False
    mode = "fixed-priority"
    if "mode" in table:
        try:
            mode = as_choice(table["mode"], POOL_MODES)
        except BadValue as problem:
            bad((*where, "mode"), str(problem))
            ok = False
    members = _pool_members(where, table, declared, agents, bad)
    if not ok or members is None:
        return None
    return PoolSpec(name=name, agents=members, mode=mode)


def _pool_members(
    where: tuple[str, ...], table: Mapping[str, Any], declared: set[str], agents: Mapping[str, AgentSpec], bad: _Report
) -> tuple[str, ...] | None:
    """The pool's agents; None when the list is missing or invalid or names an agent that is not valid."""
    if "agents" not in table:
        bad(where, 'required key agents is missing (e.g. agents = ["a1", "a2"])')
        return None
    try:
        members = as_string_list(table["agents"], "agent names")
        if not members:
            raise BadValue("must name at least one agent")
    except BadValue as problem:
        for _sub, reason in problem.problems:
            bad((*where, "agents"), reason)
        return None
    ok = True
    for member in members:
        if member not in declared:
            bad((*where, "agents"), f"unknown agent {quote(member)} (declare it as [agents.{member}])")
            ok = False
        elif member not in agents:
            ok = False  # declared but invalid: already reported there
    return tuple(members) if ok else None


def _parse_channels(section: Mapping[str, Any], bad: _Report) -> tuple[dict[str, ChannelSpec], set[str]]:
    """The valid `[notify.NAME]` channels, and the names declared but invalid."""
    channels: dict[str, ChannelSpec] = {}
    invalid: set[str] = set()
    for name, table in section.items():
        spec = _parse_channel(name, table, bad)
        if spec is None:
            invalid.add(name)
        else:
            channels[name] = spec
    return channels, invalid


def _parse_channel(name: str, table: object, bad: _Report) -> ChannelSpec | None:
    where = ("notify", name)
    if not isinstance(table, dict):
        bad(where, f"expected a table [notify.{name}] with a url or a command, got {describe(table)}")
        return None
    ok = True
    if not NAME_SEGMENT.fullmatch(name):
        bad(where, f"channel names {NAME_RULE}")
        ok = False
    values: dict[str, Any] = {}
    for key, raw in table.items():
        check = _CHANNEL_CHECKS.get(key)
        if check is None:
            bad((*where, key), unknown_key_reason(key, CHANNEL_KEYS, where="channel"))
            ok = False
            continue
        try:
            values[key] = check(raw)
        except BadValue as problem:
            for sub, reason in problem.problems:
                bad((*where, key, *sub), reason)
            ok = False
    if ("url" in table) == ("command" in table):
        both = "url" in table
        bad(
            where,
            "set either url or command, not both" if both else 'required: url = "an Apprise URL" or command = ...',
        )
        ok = False
    if not ok:
        return None
    return ChannelSpec(name=name, **values)


def _as_apprise_url(value: object) -> str:
    """An Apprise URL, checked for its form only (which schemas exist, `vigil validate` asks Apprise)."""
    url = as_string(value, allow_empty=False).strip()
    if not _APPRISE_URL.fullmatch(url):
        # never echo the value: an Apprise URL often holds a password or a token
        raise BadValue(
            'expected an Apprise URL "SCHEMA://...", such as "mailto://user:pass@host" or "json://host/path"'
        )
    return url


_CHANNEL_CHECKS: Mapping[str, Callable[[object], Any]] = {
    "url": _as_apprise_url,
    "command": as_command,
    "events": as_event_kinds,
    "timeout": partial(as_duration, positive=True),
    "rate_limit": partial(as_int, minimum=1, maximum=MAX_RATE_LIMIT),
    "rate_window": partial(as_duration, positive=True),
}


def _declared_notify(names: tuple[str, ...], channels: DeclaredNames, bad: _Report) -> tuple[str, ...]:
    """`[scheduler] notify` without the undeclared names, each bad name reported. A channel declared
    but invalid stays: its events are queued and wait for its definition to be fixed."""
    kept = []
    for name in names:
        problem = channels.problem(name)
        if problem is not None:
            bad(("scheduler", "notify"), problem)
        if problem is None or name in channels.invalid:
            kept.append(name)
    return tuple(kept)


def load_settings(root: Path) -> tuple[Settings, list[ConfigError]]:
    """Settings from `root/vigil.toml` (optional: defaults when absent) and every error in it."""
    root = Path(root)
    path = root / SETTINGS_FILE
    raw = read_file(str(path))
    if isinstance(raw, FileNotFoundError):
        return Settings(), []
    if isinstance(raw, OSError):
        return Settings(channels_unknown=True), [ConfigError(path, "file", f"cannot read: {raw.strerror or raw}")]
    source = SourceFile(path, "", os.path.abspath(root), 0, raw, 0)
    settings, errors, _targets = parse_settings(source, os.path.abspath(root))
    return settings, errors
