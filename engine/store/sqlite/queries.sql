-- Every statement the engine runs on the state database, by name (engine/store/sqlite/queries.py
-- loads them). A block starts with `-- name --`, then one `-- description` line, then the SQL.
-- Parameters are named (:name); `:epoch` is the writer's epoch, which the fencing triggers compare
-- with leader.epoch (schema.sql). DELETEs fire no trigger, so they check the epoch themselves.
-- The readers' statements come last (engine/store/sqlite/reader.py): each runs on its own and never
-- writes. A runs page is keyset-paged: `:last` is the highest id it may show; `:low`/`:high` bound
-- what a count counts. Open states are spelled out (not bound) so that the partial index `runs_open`
-- applies; tests/contract checks each spelling against model.OPEN_STATES.

-- new_run --
-- Insert a run row with its chosen id; a row for a fire already handled is ignored
INSERT OR IGNORE INTO runs (id, job, scheduled_for, attempt, state, reason, trigger, epoch, writer_epoch,
    created_at, not_before, started_at, ended_at, command, agent, flow_id)
VALUES (:id, :job, :scheduled_for, :attempt, :state, :reason, :trigger, :epoch, :epoch,
    :created_at, :not_before, NULL, :ended_at, :command, :agent, :flow_id);

-- run_launching --
-- A pending run is being started
UPDATE runs SET state = 'launching', writer_epoch = :epoch WHERE id = :run_id;

-- run_launching_with_reason --
-- A queued run is being started; its reason says why it waited
UPDATE runs SET state = 'launching', reason = :reason, writer_epoch = :epoch WHERE id = :run_id;

-- run_started --
-- The run started (locally or on an agent); only a run not yet started moves
UPDATE runs SET state = 'running', started_at = :started_at, deadline = :deadline, writer_epoch = :epoch
WHERE id = :run_id AND state IN ('pending', 'launching', 'waiting');

-- run_started_clear_reason --
-- The run started after waiting for an agent: the wait's reason goes
UPDATE runs SET state = 'running', started_at = :started_at, deadline = :deadline, reason = NULL,
    writer_epoch = :epoch
WHERE id = :run_id AND state IN ('pending', 'launching', 'waiting');

-- start_restated --
-- A started run's start and deadline in the current active's terms
UPDATE runs SET started_at = :started_at, deadline = :deadline, writer_epoch = :epoch
WHERE id = :run_id AND state IN ('launching', 'running');

-- run_finished --
-- A run's end; only an open row moves, so an end recorded before is kept
UPDATE runs SET state = :state, reason = :reason, exit_code = :exit_code, ended_at = :ended_at,
    pid = COALESCE(:pid, pid), cpu_s = :cpu_s, peak_rss = :peak_rss, outputs = :outputs, writer_epoch = :epoch
WHERE id = :run_id AND state IN ('pending', 'waiting', 'launching', 'running');

-- kill_requested --
-- An operator or a timeout asked for the run to be killed
UPDATE runs SET kill_requested = :cause, writer_epoch = :epoch WHERE id = :run_id;

-- agent_chosen --
-- The agent an open run was sent to
UPDATE runs SET agent = :agent, writer_epoch = :epoch
WHERE id = :run_id AND state IN ('pending', 'waiting', 'launching', 'running');

-- run_waiting --
-- A run waits for a healthy agent
UPDATE runs SET state = 'waiting', reason = :reason, writer_epoch = :epoch
WHERE id = :run_id AND state IN ('launching', 'waiting');

-- run_blocked --
-- A pending run waits for a lock, a max_running slot or its job's release
UPDATE runs SET reason = :reason, writer_epoch = :epoch WHERE id = :run_id AND state = 'pending';

-- runs_pruned --
-- Delete finished runs by id (a JSON array), unless another active has taken over
DELETE FROM runs WHERE id IN (SELECT value FROM json_each(:run_ids))
    AND :epoch = (SELECT epoch FROM leader WHERE id = 1);

-- notifications_pruned --
-- Delete outbox rows no longer pending, queued before the cutoff, unless another active has taken over
DELETE FROM notifications WHERE state != 'pending' AND created_at < :cutoff
    AND :epoch = (SELECT epoch FROM leader WHERE id = 1);

-- run_id_mark --
-- Raise the mark of run ids handed out (never lowers it)
INSERT INTO run_id_mark (id, run_id, writer_epoch) VALUES (1, :run_id, :epoch)
ON CONFLICT (id) DO UPDATE SET run_id = MAX(run_id, excluded.run_id), writer_epoch = excluded.writer_epoch;

-- last_fire --
-- The last fire time a job's schedule has handled
INSERT INTO job_state (job, last_fire, writer_epoch) VALUES (:job, :at, :epoch)
ON CONFLICT (job) DO UPDATE SET last_fire = excluded.last_fire, writer_epoch = excluded.writer_epoch;

-- last_fire_forgotten --
-- Forget a job's last fire (its file went away, or the time lies ahead of the clock)
UPDATE job_state SET last_fire = NULL, writer_epoch = :epoch WHERE job = :job;

-- paused --
-- Pause or resume a job
INSERT INTO job_state (job, paused, writer_epoch) VALUES (:job, :paused, :epoch)
ON CONFLICT (job) DO UPDATE SET paused = excluded.paused, writer_epoch = excluded.writer_epoch;

-- runs_columns --
-- The columns of runs (a database made by an older version lacks the newer ones)
SELECT name FROM pragma_table_info('runs');

-- add_runs_flow_id --
-- Migration: the flow a run belongs to (the id of the run that started it; NULL: in no flow)
ALTER TABLE runs ADD COLUMN flow_id INTEGER;

-- add_runs_outputs --
-- Migration: the NAME=value lines a flow step wrote to $VIGIL_OUTPUT (JSON)
ALTER TABLE runs ADD COLUMN outputs TEXT;

-- job_state_columns --
-- The columns of job_state (a database made by an older version lacks the newer ones)
SELECT name FROM pragma_table_info('job_state');

-- add_job_state_held --
-- Migration: the `held` flag of `vigil hold`, added to a job_state made before it existed
ALTER TABLE job_state ADD COLUMN held INTEGER NOT NULL DEFAULT 0;

-- jobs_columns --
-- The columns of the catalog (a database made by an older version lacks the newer ones)
SELECT name FROM pragma_table_info('jobs');

-- add_jobs_priority --
-- Migration: a job's `priority` in the catalog
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;

-- add_jobs_locks --
-- Migration: a job's `locks` in the catalog ("gpu=1,db=1")
ALTER TABLE jobs ADD COLUMN locks TEXT NOT NULL DEFAULT '';

-- held --
-- Hold or release a job (`vigil hold`): its new runs wait pending while held
INSERT INTO job_state (job, held, writer_epoch) VALUES (:job, :held, :epoch)
ON CONFLICT (job) DO UPDATE SET held = excluded.held, writer_epoch = excluded.writer_epoch;

-- catalog_upsert --
-- A job as the active loaded it (or the error that keeps it from loading)
INSERT INTO jobs (name, path, schedule, enabled, agent, description, tags, next_fire, error, priority, locks,
    writer_epoch)
VALUES (:name, :path, :schedule, :enabled, :agent, :description, :tags, :next_fire, :error, :priority, :locks,
    :epoch)
ON CONFLICT (name) DO UPDATE SET path = excluded.path, schedule = excluded.schedule,
    enabled = excluded.enabled, agent = excluded.agent, description = excluded.description,
    tags = excluded.tags, next_fire = excluded.next_fire, error = excluded.error,
    priority = excluded.priority, locks = excluded.locks, writer_epoch = excluded.writer_epoch;

-- catalog_drop --
-- A job no longer loaded leaves the catalog
DELETE FROM jobs WHERE name = :name AND :epoch = (SELECT epoch FROM leader WHERE id = 1);

-- catalog_cleared --
-- Empty the catalog before a full rewrite
DELETE FROM jobs WHERE :epoch = (SELECT epoch FROM leader WHERE id = 1);

-- next_fire --
-- A job's next fire time
UPDATE jobs SET next_fire = :at, writer_epoch = :epoch WHERE name = :job;

-- agent_seen --
-- What the dispatcher last learned of an agent (unknown contact and version are kept)
INSERT INTO agents (name, url, up, last_contact, version, cpu_percent, memory_percent, load1, running, error,
    writer_epoch)
VALUES (:name, :url, :up, :last_contact, :version, :cpu_percent, :memory_percent, :load1, :running, :error,
    :epoch)
ON CONFLICT (name) DO UPDATE SET url = excluded.url, up = excluded.up,
    last_contact = COALESCE(excluded.last_contact, agents.last_contact),
    version = COALESCE(excluded.version, agents.version), cpu_percent = excluded.cpu_percent,
    memory_percent = excluded.memory_percent, load1 = excluded.load1, running = excluded.running,
    error = excluded.error, writer_epoch = excluded.writer_epoch;

-- agent_dropped --
-- An agent no longer declared
DELETE FROM agents WHERE name = :name AND :epoch = (SELECT epoch FROM leader WHERE id = 1);

-- audit --
-- One operator action and its result
INSERT INTO audit (at, os_user, action, target, result, writer_epoch)
VALUES (:at, :user, :action, :target, :result, :epoch);

-- failover --
-- A takeover, recorded by the new active
INSERT INTO failovers (at, from_pid, to_pid, cause, gap_ms, epoch, writer_epoch)
VALUES (:at, :from_pid, :to_pid, :cause, :gap_ms, :epoch, :epoch);

-- clean_stop --
-- The active stops cleanly
UPDATE leader SET clean_stop = 1 WHERE id = 1 AND epoch = :epoch;

-- run_warned --
-- A run crossed late_after, warn_if_longer or warn_if_shorter (kept once per run and warning)
INSERT INTO run_warnings (run_id, warning, at, writer_epoch) VALUES (:run_id, :warning, :at, :epoch)
ON CONFLICT (run_id, warning) DO NOTHING;

-- notification_queued --
-- An event for each channel of a JSON array, pending; a row already there for (event, channel) is kept
INSERT INTO notifications (event_id, channel, event, job, run_id, created_at, state, next_attempt_at, epoch,
    document, writer_epoch)
SELECT :event_id, value, :event, :job, :run_id, :created_at, 'pending', :not_before, :epoch, :document, :epoch
FROM json_each(:channels) WHERE true
ON CONFLICT (event_id, channel) DO NOTHING;

-- notification_sent --
-- An event was delivered to a channel. Only a pending row moves, but the row is touched whatever its
-- state (writer_epoch), so the fencing trigger refuses a deposed deliverer even on a row the new
-- active already marked (an UPDATE that matches no row fires no trigger)
UPDATE notifications SET
    state = CASE WHEN state = 'pending' THEN 'sent' ELSE state END,
    sent_at = CASE WHEN state = 'pending' THEN :at ELSE sent_at END,
    last_attempt_at = CASE WHEN state = 'pending' THEN :at ELSE last_attempt_at END,
    attempts = CASE WHEN state = 'pending' THEN :attempts ELSE attempts END,
    next_attempt_at = CASE WHEN state = 'pending' THEN NULL ELSE next_attempt_at END,
    last_error = CASE WHEN state = 'pending' THEN NULL ELSE last_error END,
    writer_epoch = :epoch
WHERE event_id = :event_id AND channel = :channel;

-- notification_retry --
-- A delivery failed: the event stays pending until its next attempt (a row no longer pending is
-- only touched, for the fencing trigger)
UPDATE notifications SET
    attempts = CASE WHEN state = 'pending' THEN :attempts ELSE attempts END,
    next_attempt_at = CASE WHEN state = 'pending' THEN :next_attempt_at ELSE next_attempt_at END,
    last_error = CASE WHEN state = 'pending' THEN :error ELSE last_error END,
    last_attempt_at = CASE WHEN state = 'pending' THEN :at ELSE last_attempt_at END,
    writer_epoch = :epoch
WHERE event_id = :event_id AND channel = :channel;

-- notification_failed --
-- Delivery of an event to a channel gave up (a row no longer pending is only touched, for the
-- fencing trigger)
UPDATE notifications SET
    state = CASE WHEN state = 'pending' THEN 'failed' ELSE state END,
    attempts = CASE WHEN state = 'pending' THEN :attempts ELSE attempts END,
    next_attempt_at = CASE WHEN state = 'pending' THEN NULL ELSE next_attempt_at END,
    last_error = CASE WHEN state = 'pending' THEN :error ELSE last_error END,
    last_attempt_at = CASE WHEN state = 'pending' THEN :at ELSE last_attempt_at END,
    writer_epoch = :epoch
WHERE event_id = :event_id AND channel = :channel;

-- notification_suppressed --
-- Pending events (a JSON array of ids) a channel's rate limit held back, counted by a summary event
-- (rows no longer pending are only touched, for the fencing trigger)
UPDATE notifications SET
    state = CASE WHEN state = 'pending' THEN 'suppressed' ELSE state END,
    summary_id = CASE WHEN state = 'pending' THEN :summary_id ELSE summary_id END,
    next_attempt_at = CASE WHEN state = 'pending' THEN NULL ELSE next_attempt_at END,
    writer_epoch = :epoch
WHERE channel = :channel AND event_id IN (SELECT value FROM json_each(:event_ids));

-- summary_recounted --
-- A channel's rate-limit summary: queued pending (first attempt at :not_before) when absent, else its
-- document rewritten while it is still pending (the insert's trigger fences a deposed writer)
INSERT INTO notifications (event_id, channel, event, job, run_id, created_at, state, next_attempt_at, epoch,
    document, writer_epoch)
VALUES (:event_id, :channel, :event, :job, :run_id, :created_at, 'pending', :not_before, :epoch, :document, :epoch)
ON CONFLICT (event_id, channel) DO UPDATE SET
    document = CASE WHEN state = 'pending' THEN excluded.document ELSE document END,
    writer_epoch = excluded.writer_epoch;

-- take_leadership --
-- Raise the epoch above the stored one and the floor, naming the new leader
UPDATE leader SET epoch = MAX(epoch, :floor) + 1, pid = :pid, starttime = :starttime, since = :since,
    clean_stop = 0
WHERE id = 1;

-- leader --
-- The leader row
SELECT epoch, pid, starttime, since, clean_stop FROM leader WHERE id = 1;

-- max_run_id --
-- The highest run id with a row
SELECT COALESCE(MAX(id), 0) FROM runs;

-- run_id_mark_value --
-- The highest run id ever handed out
SELECT COALESCE(MAX(run_id), 0) FROM run_id_mark;

-- job_states --
-- Every job's paused and held flags and last fire
SELECT job, paused, held, last_fire FROM job_state;

-- last_successes --
-- The latest successful end of each job
SELECT job, MAX(ended_at) AS t FROM runs WHERE state = 'succeeded' GROUP BY job;

-- last_ends --
-- The state of each catalogued job's latest final outcome: a run that ended by running (not skipped or
-- missed) and that no retry followed (a retried failure was never announced)
SELECT j.name AS job, (SELECT state FROM runs x WHERE x.job = j.name
        AND x.state IN ('succeeded', 'failed', 'timed_out', 'killed', 'unknown')
        AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job = x.job AND r.scheduled_for = x.scheduled_for
            AND r.attempt = x.attempt + 1)
        ORDER BY x.id DESC LIMIT 1) AS state
FROM jobs j;

-- agents_up --
-- Each agent's recorded health
SELECT name, up FROM agents;

-- recent_durations --
-- How long a job's latest successful runs took, newest first
SELECT started_at, ended_at FROM runs WHERE job = :job AND state = 'succeeded' AND started_at IS NOT NULL
ORDER BY id DESC LIMIT :limit;

-- due_notifications --
-- Pending outbox rows whose next attempt is due, oldest first
SELECT * FROM notifications WHERE state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
ORDER BY created_at, event_id, channel LIMIT :limit;

-- next_notification_at --
-- The earliest next attempt of a pending outbox row
SELECT MIN(next_attempt_at) FROM notifications WHERE state = 'pending';

-- open_runs --
-- Every run not yet finished, by id
SELECT * FROM runs WHERE state IN ('pending', 'waiting', 'launching', 'running') ORDER BY id;

-- run --
-- One run by id
SELECT * FROM runs WHERE id = :run_id;

-- run_states --
-- The states of runs named by a JSON array of ids
SELECT id, state FROM runs WHERE id IN (SELECT value FROM json_each(:run_ids));

-- inserted_runs --
-- Which of the ids just inserted (a JSON array) have a row, checked in the inserting transaction
SELECT id FROM runs WHERE id IN (SELECT value FROM json_each(:run_ids));

-- prunable_runs --
-- Finished runs that ended before the cutoff
SELECT id FROM runs WHERE ended_at < :cutoff
    AND state NOT IN ('pending', 'waiting', 'launching', 'running')
ORDER BY id;

-- query_only --
-- A reader's connection refuses every write
PRAGMA query_only=ON;

-- table_names --
-- The tables a database file has (a Vigil database, an older one, or something else)
SELECT name FROM sqlite_master WHERE type = 'table';

-- begin_read --
-- One read transaction: a runs window's page and counts see the same instant
BEGIN;

-- end_read --
-- The end of a read transaction
COMMIT;

-- runs_page --
-- A page of runs, newest first, from id :last down
SELECT * FROM runs WHERE id <= :last ORDER BY id DESC LIMIT :limit;

-- runs_page_of_job --
-- A page of one job's runs, newest first, from id :last down
SELECT * FROM runs WHERE job = :job AND id <= :last ORDER BY id DESC LIMIT :limit;

-- runs_page_in_state --
-- A page of the runs in one state, newest first, from id :last down
SELECT * FROM runs WHERE state = :state AND id <= :last ORDER BY id DESC LIMIT :limit;

-- runs_page_of_job_in_state --
-- A page of one job's runs in one state, newest first, from id :last down
SELECT * FROM runs WHERE job = :job AND state = :state AND id <= :last ORDER BY id DESC LIMIT :limit;

-- count_runs --
-- How many runs have an id from :low to :high
SELECT COUNT(*) FROM runs WHERE id BETWEEN :low AND :high;

-- count_runs_of_job --
-- How many of one job's runs have an id from :low to :high
SELECT COUNT(*) FROM runs WHERE job = :job AND id BETWEEN :low AND :high;

-- count_runs_in_state --
-- How many runs in one state have an id from :low to :high
SELECT COUNT(*) FROM runs WHERE state = :state AND id BETWEEN :low AND :high;

-- count_runs_of_job_in_state --
-- How many of one job's runs in one state have an id from :low to :high
SELECT COUNT(*) FROM runs WHERE job = :job AND state = :state AND id BETWEEN :low AND :high;

-- count_anchor --
-- An id below every open run (the rows up to it are finished and stay as they are), else the newest
SELECT COALESCE((SELECT MIN(id) - 1 FROM runs WHERE state IN ('pending', 'waiting', 'launching', 'running')),
    (SELECT MAX(id) FROM runs), 0);

-- runs_after --
-- Runs newer than an id, oldest first: what is new since a reader last looked
SELECT * FROM runs WHERE id > :after ORDER BY id LIMIT :limit;

-- runs_by_ids --
-- The current rows of runs named by a JSON array of ids
SELECT * FROM runs WHERE id IN (SELECT value FROM json_each(:run_ids)) ORDER BY id;

-- latest_run_per_job --
-- The newest run of every catalogued job, one index seek per job
SELECT * FROM runs WHERE id IN (SELECT (SELECT id FROM runs x WHERE x.job = j.name ORDER BY id DESC LIMIT 1)
    FROM jobs j);

-- recent_runs_of_job --
-- A job's newest runs, newest first
SELECT * FROM runs WHERE job = :job ORDER BY id DESC LIMIT :limit;

-- counts_by_state --
-- How many runs there are in each state
SELECT state, COUNT(*) AS n FROM runs GROUP BY state;

-- catalog --
-- The active's catalog of jobs with their pause flag; `loaded` is 0 for a file that never loaded
SELECT j.name, j.path, j.schedule, j.enabled, j.agent, j.description, j.tags, j.next_fire, j.error,
    COALESCE(s.paused, 0) AS paused, (j.path != '') AS loaded, COALESCE(s.held, 0) AS held, j.priority, j.locks
FROM jobs j LEFT JOIN job_state s ON s.job = j.name ORDER BY j.name;

-- held_jobs --
-- The jobs held now (`vigil hold`)
SELECT job FROM job_state WHERE held = 1;

-- paused_jobs --
-- The jobs paused now
SELECT job FROM job_state WHERE paused = 1;

-- recent_failovers --
-- The newest takeovers, newest first
SELECT at, from_pid, to_pid, cause, gap_ms, epoch FROM failovers ORDER BY id DESC LIMIT :limit;

-- failover_counts --
-- How many takeovers the ledger has recorded, by cause (vigil_failovers_total)
SELECT cause, COUNT(*) AS n FROM failovers GROUP BY cause;

-- agents_by_name --
-- Every agent the dispatcher knows of, by name
SELECT name, url, up, last_contact, version, cpu_percent, memory_percent, load1, running, error
FROM agents ORDER BY name;

-- recent_audit --
-- The newest operator actions, newest first
SELECT at, os_user, action, target, result FROM audit ORDER BY id DESC LIMIT :limit;

-- integrity_check --
-- SQLite's own check of every page and index (`vigil db check`); one row "ok" when sound
PRAGMA integrity_check;

-- prune_offline --
-- `vigil db prune` with no scheduler running: delete one finished run
DELETE FROM runs WHERE id = :run_id;

-- notifications_pruned_offline --
-- `vigil db prune` with no scheduler running: delete outbox rows no longer pending, queued before the cutoff
DELETE FROM notifications WHERE state != 'pending' AND created_at < :cutoff;

-- run_id_mark_offline --
-- The same rise of the run id mark, by `vigil db prune` with no scheduler running (the database's epoch)
INSERT INTO run_id_mark (id, run_id, writer_epoch) VALUES (1, :run_id, (SELECT epoch FROM leader WHERE id = 1))
ON CONFLICT (id) DO UPDATE SET run_id = MAX(run_id, excluded.run_id), writer_epoch = excluded.writer_epoch;

-- warnings_of_runs --
-- The warnings of runs named by a JSON array of ids, in the order they were raised
SELECT run_id, warning FROM run_warnings WHERE run_id IN (SELECT value FROM json_each(:run_ids))
ORDER BY run_id, at, warning;

-- notifications_page --
-- Outbox rows, newest first, optionally of one state and one channel
SELECT * FROM notifications WHERE (:state IS NULL OR state = :state) AND (:channel IS NULL OR channel = :channel)
ORDER BY created_at DESC, event_id DESC, channel LIMIT :limit;

-- channel_counts --
-- Each channel's outbox rows by state, with its last delivery and its last failed attempt
SELECT channel, state, COUNT(*) AS n, MAX(sent_at) AS last_sent,
    MAX(CASE WHEN last_error IS NOT NULL AND state != 'sent' THEN last_attempt_at END) AS last_failed
FROM notifications GROUP BY channel, state ORDER BY channel;

-- channel_last_error --
-- A channel's latest delivery error
SELECT last_error FROM notifications WHERE channel = :channel AND last_error IS NOT NULL AND state != 'sent'
ORDER BY last_attempt_at DESC LIMIT 1;

-- runs_flow_index --
-- The runs of a flow by flow id (made by the migration, after the column exists: db.migrate)
CREATE INDEX IF NOT EXISTS runs_flow ON runs (flow_id, id) WHERE flow_id IS NOT NULL;

-- open_flow_runs --
-- Every run of each flow that still has an open run (the active rebuilds its flows from them)
SELECT * FROM runs WHERE flow_id IN (SELECT DISTINCT flow_id FROM runs
    WHERE state IN ('pending', 'waiting', 'launching', 'running') AND flow_id IS NOT NULL)
ORDER BY id;

-- flow_runs --
-- The runs of one flow, oldest first (a run in no flow is a flow of its own)
SELECT * FROM runs WHERE flow_id = :flow_id OR (id = :flow_id AND flow_id IS NULL) ORDER BY id;

-- flow_runs_page --
-- The runs of one flow, newest first, from id :last down
SELECT * FROM runs WHERE (flow_id = :flow_id OR (id = :flow_id AND flow_id IS NULL)) AND id <= :last
ORDER BY id DESC LIMIT :limit;

-- flows_page --
-- The newest flows' ids, from :last down
SELECT DISTINCT flow_id FROM runs WHERE flow_id IS NOT NULL AND flow_id <= :last ORDER BY flow_id DESC LIMIT :limit;

-- flows_page_of_job --
-- The newest flows with a step of one job, from :last down
SELECT DISTINCT flow_id FROM runs WHERE job = :job AND flow_id IS NOT NULL AND flow_id <= :last
ORDER BY flow_id DESC LIMIT :limit;

-- runs_of_flows --
-- The runs of the flows named by a JSON array of flow ids, oldest first
SELECT * FROM runs WHERE flow_id IN (SELECT value FROM json_each(:flow_ids)) ORDER BY id;
