"""`vigil logs RUN_ID` for a run on an agent: its log is fetched (and with -f, followed) over HTTP.

Layer: cli. Imports the base modules, config (the agents vigil.toml declares) and the agent client.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.agents.protocol import AgentClient
from engine.config import load_settings
from engine.errors import AgentError, AgentNotFound, VigilError

if TYPE_CHECKING:
    from engine.api import StateReader
from engine.model import Run


def print_agent_log(reader: StateReader, run: Run, jobs_dir: Path, *, follow: bool) -> int:
    """Print the log of `run` (a row of `reader`) from the agent it ran on; with `follow`, until it ends."""
    settings, _ = load_settings(jobs_dir)
    run_id = run.id

    async def main() -> int:
        offset = 0
        current = run
        client: AgentClient | None = None
        try:
            while True:
                name = current.agent
                if client is None and name in settings.agents:
                    client = AgentClient(settings.agents[name], epoch=None)
                data = b""
                if client is not None:
                    try:
                        data, offset, _size, _state = await client.log(run_id, offset)
                    except AgentNotFound:
                        pass  # the agent has forgotten it (or never had it): nothing to show
                    except AgentError as exc:
                        raise VigilError(str(exc)) from None
                elif name not in settings.pools:
                    raise VigilError(
                        f"run {run_id} ran on agent {name!r}, which {jobs_dir}/vigil.toml does not declare "
                        "(pass --jobs DIR)"
                    )
                if data:
                    sys.stdout.write(data.decode("utf-8", "replace"))
                    sys.stdout.flush()
                    continue
                if not follow or current.state.terminal:
                    return 0
                await asyncio.sleep(0.25)
                current = reader.run(run_id)
        finally:
            if client is not None:
                await client.aclose()

    return asyncio.run(main())
