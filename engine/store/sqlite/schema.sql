-- Vigil state schema. Every table the active scheduler writes carries a `writer_epoch` column that
-- triggers compare with leader.epoch, so a deposed process can change nothing (fencing).

CREATE TABLE IF NOT EXISTS leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    pid INTEGER,
    starttime INTEGER,
    since TEXT,
    clean_stop INTEGER NOT NULL DEFAULT 1
);
INSERT OR IGNORE INTO leader (id, epoch) VALUES (1, 0);

CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    scheduled_for TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    reason TEXT,
    trigger TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    writer_epoch INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    not_before TEXT,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    pid INTEGER,
    pid_starttime INTEGER,
    deadline TEXT,
    kill_requested TEXT,
    agent TEXT,
    peak_rss INTEGER,
    cpu_s REAL,
    command TEXT,
    flow_id INTEGER,  -- the run that started its flow (NULL: in none; reads as its own id)
    outputs TEXT,  -- a flow step's $VIGIL_OUTPUT pairs, a JSON array of [name, value]
    UNIQUE (job, scheduled_for, attempt)
);
CREATE INDEX IF NOT EXISTS runs_open ON runs (state) WHERE state IN ('pending', 'waiting', 'launching', 'running');
CREATE INDEX IF NOT EXISTS runs_job_id ON runs (job, id);
CREATE INDEX IF NOT EXISTS runs_state_id ON runs (state, id);
CREATE INDEX IF NOT EXISTS runs_ended ON runs (ended_at);

CREATE TABLE IF NOT EXISTS job_state (
    job TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    last_fire TEXT,
    held INTEGER NOT NULL DEFAULT 0,  -- added after 2026-12: a database made before gets it at open (db.py)
    writer_epoch INTEGER NOT NULL
);

-- What the active scheduler has loaded, so readers (CLI, dashboard) need not parse job files.
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    schedule TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    agent TEXT,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '',
    next_fire TEXT,
    error TEXT,
    writer_epoch INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,  -- added after 2026-12 (with locks): db.py adds them to older files
    locks TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    os_user TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    writer_epoch INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS failovers (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    from_pid INTEGER,
    to_pid INTEGER NOT NULL,
    cause TEXT NOT NULL,
    gap_ms REAL,
    epoch INTEGER NOT NULL,
    writer_epoch INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    up INTEGER NOT NULL DEFAULT 0,
    last_contact TEXT,
    version TEXT,
    cpu_percent REAL,
    memory_percent REAL,
    load1 REAL,
    running INTEGER,
    error TEXT,
    writer_epoch INTEGER NOT NULL
);

-- Fencing: writes must carry the current epoch.
CREATE TRIGGER IF NOT EXISTS fence_runs_insert BEFORE INSERT ON runs
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_runs_update BEFORE UPDATE ON runs
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_job_state_insert BEFORE INSERT ON job_state
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_job_state_update BEFORE UPDATE ON job_state
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_jobs_insert BEFORE INSERT ON jobs
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_jobs_update BEFORE UPDATE ON jobs
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_audit_insert BEFORE INSERT ON audit
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_audit_update BEFORE UPDATE ON audit
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_failovers_insert BEFORE INSERT ON failovers
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_failovers_update BEFORE UPDATE ON failovers
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_agents_insert BEFORE INSERT ON agents
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_agents_update BEFORE UPDATE ON agents
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;

-- The highest run id this database has handed out, kept when those runs are pruned. A run id in
-- STATE/high-water above it means the database is older than its state directory (restored or
-- replaced; engine/exec/rundirs.py). It only ever rises, so no writer can make it lie.
CREATE TABLE IF NOT EXISTS run_id_mark (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    run_id INTEGER NOT NULL,
    writer_epoch INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS fence_run_id_mark_insert BEFORE INSERT ON run_id_mark
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_run_id_mark_update BEFORE UPDATE ON run_id_mark
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;

-- Warnings raised on a run (late, longer, shorter), each once per run.
CREATE TABLE IF NOT EXISTS run_warnings (
    run_id INTEGER NOT NULL,
    warning TEXT NOT NULL,
    at TEXT NOT NULL,
    writer_epoch INTEGER NOT NULL,
    PRIMARY KEY (run_id, warning)
);
CREATE TRIGGER IF NOT EXISTS fence_run_warnings_insert BEFORE INSERT ON run_warnings
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
-- A pruned run's warnings go with it (retention, `vigil db prune`).
CREATE TRIGGER IF NOT EXISTS run_warnings_of_deleted_runs AFTER DELETE ON runs
BEGIN DELETE FROM run_warnings WHERE run_id = OLD.id; END;
CREATE TRIGGER IF NOT EXISTS fence_run_warnings_update BEFORE UPDATE ON run_warnings
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;

-- The notification outbox: one row per (event, channel), written in the transaction of the state
-- change that caused the event, delivered (and marked) by the active. `epoch` is the queuing
-- active's; `document` is the event as JSON (engine/notify/events.py).
CREATE TABLE IF NOT EXISTS notifications (
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    job TEXT,
    run_id INTEGER,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error TEXT,
    last_attempt_at TEXT,
    sent_at TEXT,
    summary_id TEXT,
    epoch INTEGER NOT NULL,
    document TEXT NOT NULL,
    writer_epoch INTEGER NOT NULL,
    PRIMARY KEY (event_id, channel)
);
CREATE INDEX IF NOT EXISTS notifications_pending ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created_at);
CREATE TRIGGER IF NOT EXISTS fence_notifications_insert BEFORE INSERT ON notifications
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
CREATE TRIGGER IF NOT EXISTS fence_notifications_update BEFORE UPDATE ON notifications
WHEN NEW.writer_epoch IS NOT (SELECT epoch FROM leader WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;
