//! The tables `schema_init` creates and `fleet-q schema` prints.

/// Tables, as `fleet-q schema` prints them. Column names are the seed's plus the
/// design's; no primary keys (Snowflake would not enforce them).
/// Statements that bring a table created by an earlier version up to date come
/// last; each is idempotent, so `schema_init` runs them all every time.
pub const DDL: [&str; 19] = [
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
    queue           VARCHAR       DEFAULT 'default',
    started_ts      TIMESTAMP_NTZ,
    backoff_ms      NUMBER(19,0),
    backoff_max_ms  NUMBER(19,0)
)",
    "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS queue VARCHAR DEFAULT 'default'",
    "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS started_ts TIMESTAMP_NTZ",
    "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS backoff_ms NUMBER(19,0)",
    "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS backoff_max_ms NUMBER(19,0)",
    // Queue settings (fleet_q_actors::queue), read by every claim.
    "CREATE TABLE IF NOT EXISTS QUEUES (
    name            VARCHAR       NOT NULL,
    paused          BOOLEAN       NOT NULL,
    max_concurrency NUMBER(10,0),
    updated_ts      TIMESTAMP_NTZ NOT NULL,
    rate_per_second FLOAT,
    burst           NUMBER(10,0),
    max_retries     NUMBER(10,0),
    timeout_ms      NUMBER(19,0),
    backoff_ms      NUMBER(19,0),
    backoff_max_ms  NUMBER(19,0)
)",
    "ALTER TABLE QUEUES ADD COLUMN IF NOT EXISTS rate_per_second FLOAT",
    "ALTER TABLE QUEUES ADD COLUMN IF NOT EXISTS burst NUMBER(10,0)",
    "ALTER TABLE QUEUES ADD COLUMN IF NOT EXISTS max_retries NUMBER(10,0)",
    "ALTER TABLE QUEUES ADD COLUMN IF NOT EXISTS timeout_ms NUMBER(19,0)",
    "ALTER TABLE QUEUES ADD COLUMN IF NOT EXISTS backoff_ms NUMBER(19,0)",
    "ALTER TABLE QUEUES ADD COLUMN IF NOT EXISTS backoff_max_ms NUMBER(19,0)",
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
    // Schedules (fleet_q_actors::schedule), fired by the leader; times in
    // epoch milliseconds, the step template and recent fires as JSON text.
    "CREATE TABLE IF NOT EXISTS SCHEDULES (
    id            VARCHAR       NOT NULL,
    name          VARCHAR       NOT NULL,
    cron          VARCHAR,
    every_seconds NUMBER(19,0),
    time_zone     VARCHAR       NOT NULL,
    step          VARCHAR       NOT NULL,
    paused        BOOLEAN       NOT NULL,
    catch_up      VARCHAR       NOT NULL,
    catch_up_max  NUMBER(10,0)  NOT NULL,
    overlap       VARCHAR       NOT NULL,
    next_run_at   NUMBER(19,0),
    last_fired_at NUMBER(19,0),
    recent        VARCHAR       NOT NULL,
    fires         NUMBER(19,0)  NOT NULL,
    skipped       NUMBER(19,0)  NOT NULL,
    created_ms    NUMBER(19,0)  NOT NULL,
    updated_ms    NUMBER(19,0)  NOT NULL
)",
];

/// Whether `ddl` has nothing left to do given the schema's `(table, column)`
/// pairs (upper case): a `CREATE TABLE IF NOT EXISTS` whose table exists, an
/// `ADD COLUMN IF NOT EXISTS` whose column exists. Anything else runs.
pub(super) fn applied(ddl: &str, have: &std::collections::HashSet<(String, String)>) -> bool {
    let words: Vec<String> = ddl
        .split_whitespace()
        .take(9)
        .map(|w| w.trim_end_matches('(').to_uppercase())
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", table, ..] => {
            have.iter().any(|(t, _)| t == table)
        }
        ["ALTER", "TABLE", table, "ADD", "COLUMN", "IF", "NOT", "EXISTS", col] => {
            have.contains(&(table.to_string(), col.to_string()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_statements_already_applied_are_skipped() {
        let have: std::collections::HashSet<(String, String)> = [
            ("STEP_TRACKER", "STEP_ID"),
            ("STEP_TRACKER", "QUEUE"),
            ("QUEUES", "NAME"),
        ]
        .iter()
        .map(|(t, c)| (t.to_string(), c.to_string()))
        .collect();
        assert!(applied(DDL[0], &have));
        assert!(applied(
            "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS queue VARCHAR DEFAULT 'default'",
            &have
        ));
        assert!(!applied(
            "ALTER TABLE STEP_TRACKER ADD COLUMN IF NOT EXISTS started_ts TIMESTAMP_NTZ",
            &have
        ));
        assert!(!applied("CREATE TABLE IF NOT EXISTS POD_HEALTH (", &have));
        // The MERGE of the default queue always runs.
        assert!(DDL
            .iter()
            .any(|d| d.starts_with("MERGE") && !applied(d, &have)));
        // Every CREATE and ALTER is of a recognised shape.
        let all: std::collections::HashSet<(String, String)> = DDL
            .iter()
            .filter_map(|d| {
                let w: Vec<&str> = d.split_whitespace().collect();
                match w.as_slice() {
                    ["CREATE", "TABLE", "IF", "NOT", "EXISTS", t, ..] => {
                        Some((t.to_string(), "X".to_string()))
                    }
                    ["ALTER", "TABLE", t, "ADD", "COLUMN", "IF", "NOT", "EXISTS", c, ..] => {
                        Some((t.to_string(), c.to_uppercase()))
                    }
                    _ => None,
                }
            })
            .collect();
        for d in DDL.iter().filter(|d| !d.starts_with("MERGE")) {
            assert!(applied(d, &all), "{d} not recognised");
        }
    }
}
