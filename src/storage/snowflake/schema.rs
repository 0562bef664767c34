//! The tables `schema_init` creates and `fleet-q schema` prints.

/// Tables, as `fleet-q schema` prints them. Column names are the seed's plus the
/// design's; no primary keys (Snowflake would not enforce them).
/// Statements that bring a table created by an earlier version up to date come
/// last; each is idempotent, so `schema_init` runs them all every time.
pub const DDL: [&str; 9] = [
    "CREATE TABLE IF NOT EXISTS STEP_TRACKER (
    step_id         VARCHAR(36)   NOT NULL,
    status          VARCHAR(16)   NOT NULL,
    claimed_by      VARCHAR,
    last_update_ts  TIMESTAMP_NTZ NOT NULL,
    payload         VARCHAR       NOT NULL,
    retry_count     NUMBER(10,0)  NOT NULL,
    priority        NUMBER(10,0)  NOT NULL,
    created_ts      TIMESTAMP_NTZ NOT NULL,
    max_retries     NUMBER(10,0)  NOT NULL,
    attempt         NUMBER(10,0)  NOT NULL,
    run_at          TIMESTAMP_NTZ NOT NULL,
    idempotency_key VARCHAR,
    last_error      VARCHAR,
    result          VARCHAR,
    timeout_ms      NUMBER(19,0),
    step_type       VARCHAR       NOT NULL,
    op_token        VARCHAR,
    queue           VARCHAR       DEFAULT 'default'
)",
    "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS queue VARCHAR DEFAULT 'default'",
    // Queue settings (fleet_q_actors::queue), read by every claim.
    "CREATE TABLE IF NOT EXISTS QUEUES (
    name            VARCHAR       NOT NULL,
    paused          BOOLEAN       NOT NULL,
    max_concurrency NUMBER(10,0),
    updated_ts      TIMESTAMP_NTZ NOT NULL
)",
    "MERGE INTO QUEUES USING (SELECT 'default' AS name) v ON QUEUES.name = v.name \
     WHEN NOT MATCHED THEN INSERT (name, paused, max_concurrency, updated_ts) \
     VALUES (v.name, FALSE, NULL, SYSDATE())",
    "CREATE TABLE IF NOT EXISTS POD_HEALTH (
    pod_id            VARCHAR       NOT NULL,
    birth_ts          TIMESTAMP_NTZ NOT NULL,
    last_heartbeat_ts TIMESTAMP_NTZ NOT NULL,
    status            VARCHAR(8)    NOT NULL,
    capacity_in_use   NUMBER(10,0)  NOT NULL,
    max_capacity      NUMBER(10,0)  NOT NULL,
    meta              VARCHAR,
    incarnation       VARCHAR,
    heartbeat_interval_ms NUMBER(19,0),
    dead_after_ms     NUMBER(19,0)
)",
    "ALTER TABLE POD_HEALTH ADD COLUMN IF NOT EXISTS incarnation VARCHAR",
    "ALTER TABLE POD_HEALTH ADD COLUMN IF NOT EXISTS heartbeat_interval_ms NUMBER(19,0)",
    "ALTER TABLE POD_HEALTH ADD COLUMN IF NOT EXISTS dead_after_ms NUMBER(19,0)",
    // The queue statistics the leader publishes and every pod reads (one row,
    // name 'queue'): see `stats_publish`.
    "CREATE TABLE IF NOT EXISTS FLEET_STATS (
    name          VARCHAR       NOT NULL,
    watermark_ms  NUMBER(19,0)  NOT NULL,
    computed_at   TIMESTAMP_NTZ NOT NULL,
    computed_by   VARCHAR,
    body          VARCHAR       NOT NULL
)",
];
