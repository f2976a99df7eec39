"""The naming rule of job files, folders and agents (also what `vigil runs --job` checks, cheaply)."""

from __future__ import annotations

import re

NAME_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*")
NAME_RULE = "may use only ASCII letters, digits and _ . @ + -, and must start with a letter, digit or _"


def job_name_problem(name: str) -> str | None:
    """Why no job can have this name (e.g. for `vigil runs --job`), or None: a job's name is its
    file's path under the folder, and every part of it follows the naming rule."""
    if all(NAME_SEGMENT.fullmatch(part) for part in name.split("/")):
        return None
    return f"job file and folder names {NAME_RULE}"
