"""The job folder: TOML job files, `_folder.toml` defaults, `vigil.toml` settings, and live reload.

Loading is strict and complete: every problem in every file becomes a ConfigError located by path,
line and key, and a bad file never stops the good ones. The package, lowest layer first:

- `positions`: where each key of a TOML text is written (tomllib gives no positions);
- `sources`: a file as read (safely), its table or syntax error, and `Value` (a value and its file);
- `fields`: the key tables (`JOB_FIELDS`: key → check, default from `model.JobSpec`; `[scheduler]`,
  agent and pool keys) and the hand-written checks;
- `settings`: `vigil.toml`;
- `watch`: the inotify watch that spares the scheduler a walk of an unchanged folder;
- `folder`: `JobFolder` (incremental cache, `_folder.toml` layering, `after` names and cycles).

A module imports only those above it, and outside the package only `engine.model`, `engine.errors`,
`engine.text`, `engine.durations`, `engine.notify.events` (event kinds) and `engine.schedule` (whose cron
parser decides what is valid).
This module re-exports what the rest of Vigil uses (each loaded on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config.folder import (
        FOLDER_FILE,
        JobFolder,
        LoadResult,
        ScanResult,
        format_errors,
        job_name_of,
        load_folder,
    )
    from engine.config.names import job_name_problem
    from engine.config.settings import SETTINGS_FILE, load_settings

#: Each re-exported name and its module, imported when first asked for: `vigil runs --job` needs
#: only the naming rule, not the folder loader.
_HOME = {
    "FOLDER_FILE": "folder",
    "JobFolder": "folder",
    "LoadResult": "folder",
    "ScanResult": "folder",
    "format_errors": "folder",
    "job_name_of": "folder",
    "load_folder": "folder",
    "job_name_problem": "names",
    "SETTINGS_FILE": "settings",
    "load_settings": "settings",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.config.{_HOME[name]}"), name)


__all__ = [
    "FOLDER_FILE",
    "SETTINGS_FILE",
    "JobFolder",
    "LoadResult",
    "ScanResult",
    "format_errors",
    "job_name_of",
    "job_name_problem",
    "load_folder",
    "load_settings",
]
