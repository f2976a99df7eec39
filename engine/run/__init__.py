"""The active scheduler: its loop, the table of open runs, planning fires, commands, reconcile."""
