"""The active scheduler, split by concern.

- `loop.py`: Scheduler, the loop (wake, iterate, commit, launch, stop); owns the I/O (Store,
  Executors, job folder, clock), all injected or built from the state directory.
- `table.py`: RunTable, the open runs (active and queued per job, retry and deadline heaps).
- `planner.py`: Planner, fires, retries, overlap, `after` and catch-up turned into a Batch of
  intents and launches (no I/O); also the run triggers (Trigger).
- `catalog.py`: Catalog, job folder scans turned into triggers, next fires and catalog rows.
- `commands.py`: operator commands (Op), each audited; refusals carry their kind.
- `reconcile.py`: the runs a previous active left open, settled at start-up.

Layer: run. May import every lower layer (base modules, config, schedule, store, exec, control) and the
agent dispatcher (which it builds); never ha/ or cli/. Nothing below imports engine.run.
"""
