//! The tables, as `schema_init` creates them and `fleet-q schema` prints them.

/// The DDL `schema_init` runs (idempotent), as `fleet-q schema` prints it.
pub fn schema_ddl() -> &'static str {
    SCHEMA
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS STEP_TRACKER (
    step_id         BLOB    NOT NULL PRIMARY KEY, -- UUIDv7 bytes; hex(step_id) to read
    status          TEXT    NOT NULL,
    claimed_by      TEXT,
    last_update_ts  INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    retry_count     INTEGER NOT NULL DEFAULT 0,
    priority        INTEGER NOT NULL DEFAULT 0,
    created_ts      INTEGER NOT NULL,
    max_retries     INTEGER NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,
    run_at          INTEGER NOT NULL,
    idempotency_key TEXT,
    last_error      TEXT,
    result          TEXT,
    timeout_ms      INTEGER,
    step_type       TEXT    NOT NULL,
    queue           TEXT    NOT NULL DEFAULT 'default',
    started_ts      INTEGER, -- set by each claim
    backoff_ms      INTEGER, -- the queue's retry backoff when submitted
    backoff_max_ms  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS step_tracker_idempotency_key
    ON STEP_TRACKER (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Failed steps are few: this index costs nothing on the success path.
CREATE INDEX IF NOT EXISTS step_tracker_failed
    ON STEP_TRACKER (step_id) WHERE status = 'failed';
-- Per step type: rows held in STEP_TRACKER, and how many are failed and
-- cancelled. Kept in the transaction of each insert, terminal failure, cancel,
-- manual retry and prune, so stats never scan history (README, Statistics).
CREATE TABLE IF NOT EXISTS STEP_TOTALS (
    step_type TEXT    NOT NULL PRIMARY KEY,
    row_count INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0
);
-- Statistics read the largest types only (clients choose types).
CREATE INDEX IF NOT EXISTS step_totals_by_size ON STEP_TOTALS (row_count DESC);
-- Queue settings (fleet_q_actors::queue): read by every claim, so every pod
-- obeys the same pause and limits at once.
CREATE TABLE IF NOT EXISTS QUEUES (
    name            TEXT    NOT NULL PRIMARY KEY,
    paused          INTEGER NOT NULL DEFAULT 0,
    max_concurrency INTEGER,
    updated_ts      INTEGER NOT NULL DEFAULT 0,
    rate_per_second REAL,
    burst           INTEGER,
    tokens          REAL,    -- the rate bucket's level at tokens_ts (NULL: full)
    tokens_ts       INTEGER,
    max_retries     INTEGER, -- defaults for steps submitted without their own
    timeout_ms      INTEGER,
    backoff_ms      INTEGER,
    backoff_max_ms  INTEGER,
    started_minute  INTEGER, -- starts counted in this minute (Unix minutes)
    started_now     INTEGER NOT NULL DEFAULT 0,
    started_prev    INTEGER NOT NULL DEFAULT 0 -- and in the minute before
);
INSERT OR IGNORE INTO QUEUES (name) VALUES ('default');
-- Schedules (fleet_q_actors::schedule): fired by the leader; times in epoch ms.
CREATE TABLE IF NOT EXISTS SCHEDULES (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    cron          TEXT,
    every_seconds INTEGER,
    time_zone     TEXT    NOT NULL DEFAULT 'UTC',
    step          TEXT    NOT NULL, -- the step template (JSON)
    paused        INTEGER NOT NULL DEFAULT 0,
    catch_up      TEXT    NOT NULL DEFAULT 'skip',
    catch_up_max  INTEGER NOT NULL DEFAULT 100,
    overlap       TEXT    NOT NULL DEFAULT 'allow',
    next_run_at   INTEGER, -- the next tick not yet fired
    last_fired_at INTEGER,
    recent        TEXT    NOT NULL DEFAULT '[]', -- latest fires (JSON)
    fires         INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    created_ts    INTEGER NOT NULL,
    updated_ts    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS POD_HEALTH (
    pod_id            TEXT    NOT NULL PRIMARY KEY,
    birth_ts          INTEGER NOT NULL,
    last_heartbeat_ts INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    capacity_in_use   INTEGER NOT NULL DEFAULT 0,
    max_capacity      INTEGER NOT NULL DEFAULT 0,
    meta              TEXT    NOT NULL DEFAULT '{}',
    incarnation       TEXT,
    heartbeat_interval_ms INTEGER,
    dead_after_ms     INTEGER
);
";

/// Columns added to STEP_TRACKER after its first release (see
/// [`POD_HEALTH_ADDED`]).
pub(super) const STEP_TRACKER_ADDED: [(&str, &str); 4] = [
    ("queue", "TEXT NOT NULL DEFAULT 'default'"),
    ("started_ts", "INTEGER"),
    ("backoff_ms", "INTEGER"),
    ("backoff_max_ms", "INTEGER"),
];

/// Columns added to QUEUES after its first release (see [`POD_HEALTH_ADDED`]).
pub(super) const QUEUES_ADDED: [(&str, &str); 11] = [
    ("rate_per_second", "REAL"),
    ("burst", "INTEGER"),
    ("tokens", "REAL"),
    ("tokens_ts", "INTEGER"),
    ("max_retries", "INTEGER"),
    ("timeout_ms", "INTEGER"),
    ("backoff_ms", "INTEGER"),
    ("backoff_max_ms", "INTEGER"),
    ("started_minute", "INTEGER"),
    ("started_now", "INTEGER NOT NULL DEFAULT 0"),
    ("started_prev", "INTEGER NOT NULL DEFAULT 0"),
];

/// Run after every added column exists. One index serves claims (status
/// `pending`, per queue, in claim order), orphan detection (status `claimed`)
/// and each queue's claimed count: a step moves within it instead of between
/// two. It replaces `step_tracker_live`, which had no queue column (built over
/// live rows only, so the swap costs one pass over the live rows).
pub(super) const AFTER_COLUMNS: &str = "
CREATE INDEX IF NOT EXISTS step_tracker_live_q
    ON STEP_TRACKER (status, queue, priority DESC, created_ts, step_id)
    WHERE status IN ('pending', 'claimed');
DROP INDEX IF EXISTS step_tracker_live;
";

/// Columns added to POD_HEALTH after its first release: `schema_init` adds each
/// one a table created by an older version lacks (SQLite has no
/// `ADD COLUMN IF NOT EXISTS`).
pub(super) const POD_HEALTH_ADDED: [(&str, &str); 3] = [
    ("incarnation", "TEXT"),
    ("heartbeat_interval_ms", "INTEGER"),
    ("dead_after_ms", "INTEGER"),
];
