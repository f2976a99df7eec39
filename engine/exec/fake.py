"""An Executor for tests: records launches and kills, starts nothing; a test ends runs by hand.

Layer: exec. May import the base modules and `engine.store`, never run/, agents/ or ha/.
"""

from __future__ import annotations

from engine.errors import LaunchError
from engine.exec.port import Adopted, Adoption, RunContext, RunInfo, ShimExit
from engine.model import JobSpec, RunState, Settings


class FakeExecutor:
    """Implements engine.exec.port.Executor in memory.

    `refuse` makes launches fail with that reason (as a missing workdir would); `adopt` finds
    every run left open still running (`WATCHED`).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.launched: list[int] = []
        self.killed: list[int] = []
        self.adopted: list[int] = []
        self.refuse: str | None = None
        self.settings = ctx.settings()

    def launch(self, run: RunInfo, job: JobSpec) -> None:
        if self.refuse is not None:
            raise LaunchError(self.refuse)
        self.launched.append(run.id)

    def kill(self, run: RunInfo) -> None:
        self.killed.append(run.id)

    def adopt(self, run: RunInfo) -> Adoption:
        self.adopted.append(run.id)
        return Adoption(Adopted.WATCHED)

    def finish(
        self, run_id: int, exit_code: int | None = 0, *, state: RunState | None = None, reason: str | None = None
    ) -> None:
        """The run's job ended with `exit_code` (or, without one, in `state` for `reason`)."""
        self.ctx.finished(ShimExit(run_id, exit_code, None, None, None, reason=reason, state=state))

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    def sample(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
