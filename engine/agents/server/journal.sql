-- Every statement the agent runs on its own journal (journal.db in its state directory), by name
-- (engine/agents/server/journal.py loads them with engine.sqlfile.load_queries).
-- A block starts with `-- name --`, then one `-- description` line, then the SQL.

-- settings --
-- WAL, so a reader never blocks the agent; NORMAL sync is durable across a process crash
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;

-- schema --
-- The journal's tables and indexes, made on first open (a script, run whole)
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    scheduled_for TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    job_pid INTEGER,
    cpu_s REAL,
    peak_rss INTEGER,
    killed TEXT,
    reason TEXT,
    end_state TEXT,
    seq INTEGER,
    acked_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_unacked ON runs (seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);

-- run_columns --
-- The columns of the runs table (a journal from an older agent may lack one)
PRAGMA table_info(runs);

-- add_end_state --
-- Upgrade a journal from an agent before end_state
ALTER TABLE runs ADD COLUMN end_state TEXT;

-- meta_get --
-- One stored value (instance, max_epoch, max_run_id, next_seq)
SELECT value FROM meta WHERE key = :key;

-- meta_set --
-- Store one value, replacing the old one
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- newest_run_id --
-- The highest run id still in the journal (0 when empty)
SELECT COALESCE(MAX(run_id), 0) FROM runs;

-- newest_run_epoch --
-- The highest epoch a run was accepted with (NULL when empty)
SELECT MAX(epoch) FROM runs;

-- run --
-- One run's row
SELECT * FROM runs WHERE run_id = :run_id;

-- run_accepted --
-- A dispatched run, journaled before its shim is started
INSERT INTO runs (run_id, job, scheduled_for, attempt, epoch, spec, state, started_at)
VALUES (:run_id, :job, :scheduled_for, :attempt, :epoch, :spec, :running, :started_at);

-- run_finished --
-- A run's end and its place in the results order; only a running row moves
UPDATE runs SET state = :state, ended_at = :ended_at, exit_code = :exit_code, job_pid = COALESCE(:job_pid, job_pid),
    cpu_s = :cpu_s, peak_rss = :peak_rss, reason = COALESCE(:reason, reason), end_state = :end_state, seq = :seq
WHERE run_id = :run_id AND state = :running;

-- run_killed --
-- Why a running run is being killed ("timeout" or "kill"); the first reason stays
UPDATE runs SET killed = :why WHERE run_id = :run_id AND killed IS NULL AND state = :running;

-- running --
-- The runs still running, by run id
SELECT * FROM runs WHERE state = :running ORDER BY run_id;

-- running_count --
-- How many runs are running
SELECT COUNT(*) FROM runs WHERE state = :running;

-- open_ids --
-- Runs a scheduler still has to learn about: running, or finished but not acknowledged
SELECT run_id FROM runs WHERE acked_at IS NULL ORDER BY run_id;

-- results_after --
-- Finished, unacknowledged runs after a results cursor, in finishing order
SELECT * FROM runs WHERE acked_at IS NULL AND seq > :after ORDER BY seq LIMIT :limit;

-- run_acked --
-- A scheduler recorded a finished run's result: the agent may forget it later
UPDATE runs SET acked_at = :acked_at WHERE run_id = :run_id AND acked_at IS NULL AND state != :running;

-- prunable --
-- Runs acknowledged before a cutoff
SELECT run_id FROM runs WHERE acked_at IS NOT NULL AND acked_at < :before;

-- run_deleted --
-- Forget one run
DELETE FROM runs WHERE run_id = :run_id;

-- begin --
-- Start a write transaction now, so a concurrent writer waits here rather than at its first write
BEGIN IMMEDIATE;

-- commit --
-- End the write transaction
COMMIT;

-- rollback --
-- Undo the write transaction
ROLLBACK;
