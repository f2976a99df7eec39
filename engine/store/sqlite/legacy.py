"""Positional SQL the scheduler still passes to the Ledger's transitional `write`/`defer(sql, params)`.

Only until engine/run speaks intents (`RunIdMark`, `LedgerStart.run_id_mark`): then this module goes.
"""

SQL_RUN_ID_MARK = "SELECT COALESCE(MAX(run_id), 0) FROM run_id_mark"
SQL_RAISE_RUN_ID_MARK = (
    "INSERT INTO run_id_mark (id, run_id, writer_epoch) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "run_id = MAX(run_id, excluded.run_id), writer_epoch = excluded.writer_epoch"
)
