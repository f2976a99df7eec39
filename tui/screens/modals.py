"""Modal screens: key help, and the confirmation a destructive action needs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

HELP = r"""[b]Vigil dashboard — keys[/b]   (esc closes)

[b $text-accent]Everywhere[/]  [b]?[/] help  [b]q[/] quit  [b]1[/]–[b]4[/] jobs · runs · cluster · agents
  [b]:[/] or [b]ctrl+p[/] command palette   [b]esc[/] clear filter, then back
  [b]j k[/] or arrows move   [b]g G[/] first, last   [b]enter[/] open

[b $text-accent]Jobs[/]  [b]r[/] run now  [b]p[/] pause/resume  [b]h[/] hold/release  [b]K[/] kill  [b]R[/] rerun last
  [b]l[/] log of the current or last run   [b]/[/] filter: words in name, state, tags…
  sort [b]N[/] name  [b]S[/] state  [b]F[/] next fire  [b]L[/] last result  [b]D[/] took (twice: reverse)

[b $text-accent]Runs[/]  [b]][/] older page  [b]\[[/] newer page  [b]s[/] cycle the state filter
  [b]/[/] a job (or unique part of its name) and/or a state: [i]extract failed[/]
  [b]K[/] kill (asks first)  [b]R[/] rerun  [b]r[/] run the job now  [b]enter[/] detail and log
  [b]w[/] the run's flow: its steps as a tree, with states, durations and edge conditions

[b $text-accent]Run log[/]  scrolling up stops following; [b]f[/], End or [b]G[/] follow again

Commands are greyed out under --read-only or with no active scheduler;
the scheduler audits every command (see the cluster view).
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q,f1", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a destructive action; Cancel has the focus so Enter alone never destroys."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, confirm_label: str = "Confirm") -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.question, id="confirm-question")
            with Horizontal():
                yield Button(f"{self.confirm_label} (y)", variant="error", id="confirm-yes")
                yield Button("Cancel (n)", variant="default", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
