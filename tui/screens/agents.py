"""The agents view: each remote agent's health as the scheduler last saw it."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult

from tui.data import AgentRow, Snapshot
from tui.format import NONE_TEXT, fmt_age, fmt_percent
from tui.screens.base import ViewScreen
from tui.widgets.vtable import Cell, Column, VirtualTable

COLUMNS = (
    Column("name", "AGENT", 0, min_width=10, weight=2),
    Column("up", "STATE", 6),
    Column("contact", "CONTACT", 8, justify="right"),
    Column("cpu", "CPU", 4, justify="right"),
    Column("mem", "MEM", 4, justify="right"),
    Column("load", "LOAD", 5, justify="right"),
    Column("running", "RUNS", 4, justify="right"),
    Column("note", "VERSION / ERROR", 0, min_width=8, weight=2),
)

EMPTY = (
    "No agents yet. Declare them in vigil.toml under [agents.NAME]; they appear here once the "
    "scheduler has contacted them."
)


class AgentsScreen(ViewScreen):
    VIEW = "agents"
    FILTERABLE = False

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, AgentRow] = {}

    def compose_body(self) -> ComposeResult:
        yield VirtualTable(COLUMNS, self.render_agent, empty_text=EMPTY, id="agents-table")

    def on_mount(self) -> None:
        self.query_one(VirtualTable).focus()

    def focus_main(self) -> None:
        self.query_one(VirtualTable).focus()

    def on_snapshot(self, snap: Snapshot) -> None:
        self.agents = {a.name: a for a in snap.agents}
        self.query_one(VirtualTable).set_rows(list(self.agents), None)
        up = sum(1 for a in snap.agents if a.up)
        self.set_summary(f"{up}/{len(snap.agents)} up")

    def render_agent(self, key: str) -> Sequence[Cell]:
        agent = self.agents[key]
        now = self.vigil.now()
        contact = agent.last_contact
        age = fmt_age((now - contact).total_seconds()) if contact else NONE_TEXT
        note = agent.error or (f"v{agent.version}" if agent.version else agent.url)
        return [
            agent.name,
            ("● UP", "ok") if agent.up else ("✗ DOWN", "fail"),
            age,
            fmt_percent(agent.cpu_percent),
            fmt_percent(agent.memory_percent),
            NONE_TEXT if agent.load1 is None else f"{agent.load1:.2f}",
            NONE_TEXT if agent.running is None else str(agent.running),
            (note, "fail") if agent.error else note,
        ]
