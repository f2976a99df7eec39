"""What every view shares: header, banner, view tabs, a `/` filter line, the footer, and the rule
that commands are greyed out when they cannot be sent (read-only, or no active scheduler)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input

from tui.data import Snapshot
from tui.widgets.header import Banner, FilterBar, StatusHeader, ViewBar

if TYPE_CHECKING:
    from tui.app import VigilApp

#: Actions that change the scheduler's state; all are disabled under --read-only or without an active.
COMMAND_ACTIONS = frozenset({"run_now", "toggle_pause", "toggle_hold", "kill", "rerun"})


class ViewScreen(Screen[None]):
    """Base of the jobs, runs, cluster and agents views (and the run view pushed over them)."""

    VIEW: ClassVar[str] = ""
    FILTER_HINT: ClassVar[str] = "filter…"
    FILTERABLE: ClassVar[bool] = True  #: False: the view has nothing to filter, so `/` is off

    BINDINGS = [
        Binding("escape", "back", "Back", show=False),
        Binding("slash", "start_filter", "Filter", key_display="/"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""

    @property
    def vigil(self) -> VigilApp:
        from tui.app import VigilApp

        assert isinstance(self.app, VigilApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield Banner()
        yield ViewBar(self.VIEW)
        yield from self.compose_body()
        yield FilterBar(placeholder=self.FILTER_HINT, id="filter")
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    # ------------------------------------------------------------ snapshots

    def on_screen_resume(self) -> None:
        snap = self.vigil.snapshot
        if snap is not None:
            self.show_snapshot(snap)
        self.refresh_bindings()

    def show_snapshot(self, snap: Snapshot) -> None:
        """Called by the app after every refresh tick while this screen is in the current stack."""
        if not self.query(StatusHeader):
            # Pushed but not composed yet (a tick can land in between, on a busy machine): it shows
            # the snapshot when it resumes, or at the next tick.
            return
        self.show_header()
        self.on_snapshot(snap)

    def show_header(self) -> None:
        state = self.vigil.header_state()
        self.query_one(StatusHeader).show(state)
        self.query_one(Banner).show(state)

    def on_snapshot(self, snap: Snapshot) -> None:
        """Override: update the view's own widgets."""

    def set_summary(self, text: str) -> None:
        self.query_one(ViewBar).set_summary(text)

    # ------------------------------------------------------------ filter

    def action_start_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.add_class("-shown")
        bar.value = self.filter_text
        bar.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, FilterBar):
            event.stop()
            self.filter_text = event.value.strip()
            self.apply_filter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, FilterBar):
            event.stop()
            if not self.filter_text:
                event.input.remove_class("-shown")
            self.focus_main()

    def apply_filter(self) -> None:
        """Override: re-filter with `self.filter_text`."""

    def clear_filter(self) -> bool:
        bar = self.query_one(FilterBar)
        had = bool(self.filter_text) or bar.has_class("-shown")
        bar.remove_class("-shown")
        if self.filter_text:
            self.filter_text = ""
            bar.value = ""
            self.apply_filter()
        return had

    def focus_main(self) -> None:
        """Override: focus the view's main widget."""

    def action_back(self) -> None:
        """Esc: close the filter first, else go back to the previous view."""
        if self.clear_filter():
            self.focus_main()
            return
        self.vigil.go_back()

    # ------------------------------------------------------------ commands

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start_filter":
            return self.FILTERABLE
        if action in COMMAND_ACTIONS:
            if not self.vigil.can_command:
                return None  # shown greyed out in the footer
            return True if self.command_target(action) is not None else None
        return True

    def command_target(self, action: str) -> object | None:
        """Override: what a command would act on now (None: nothing, so the key is greyed out)."""
        return None
