"""The state store: the one place that reads and writes the ledger (runs, jobs, leader, audit).

`Store` is the active scheduler's side of it (the writer, and the reads an active needs); its
writes are the typed intents of `engine.store.intents`. `StoreReader` is the readers' side (the CLI,
the dashboard, through `engine.api.StateReader`): no leadership, no writes. The contracts are in `engine.store.abc`
(this package's `__init__` imports nothing, so a reader pays only for what it uses); the SQLite
backend is `engine.store.sqlite`, the in-memory one `engine.store.memory`; every backend passes the
same contract suite (tests/contract/).

Layer: store. May import the base modules (errors, model, clock, ids, paths, text, durations).
"""
