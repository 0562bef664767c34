//! Row mapping: the columns fleet-q selects, rows into steps and pod records,
//! text limits, and how multi-row statements are cut into chunks.

use super::*;

pub(super) const STEP_COLS: &str =
    "step_id AS step_id, status AS status, claimed_by AS claimed_by, \
     DATE_PART(EPOCH_MILLISECOND, last_update_ts) AS last_update_ms, payload AS payload, \
     retry_count AS retry_count, priority AS priority, \
     DATE_PART(EPOCH_MILLISECOND, created_ts) AS created_ms, max_retries AS max_retries, \
     attempt AS attempt, DATE_PART(EPOCH_MILLISECOND, run_at) AS run_at_ms, \
     idempotency_key AS idempotency_key, last_error AS last_error, result AS result, \
     timeout_ms AS timeout_ms, COALESCE(queue, 'default') AS queue, \
     DATE_PART(EPOCH_MILLISECOND, started_ts) AS started_ms";

pub(super) const POD_COLS: &str =
    "pod_id AS pod_id, DATE_PART(EPOCH_MILLISECOND, birth_ts) AS birth_ms, \
     DATE_PART(EPOCH_MILLISECOND, last_heartbeat_ts) AS last_ms, status AS status, \
     capacity_in_use AS capacity_in_use, max_capacity AS max_capacity, meta AS meta, \
     heartbeat_interval_ms AS heartbeat_interval_ms, dead_after_ms AS dead_after_ms, \
     DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms";

/// How long the read-back of a tagged write (a claim, a fenced update) keeps
/// trying through an outage.
pub(super) const READ_BACK_LIMIT: Duration = Duration::from_secs(600);

/// Most rows per multi-row statement.
pub(super) const CHUNK: usize = 500;

/// Target size of one insert statement's text. A single step larger than this
/// still goes in one statement of its own.
pub(super) const MAX_STATEMENT_TEXT: usize = 512 * 1024;

/// Splits `items` into runs of at most `max_rows` items whose `lens` add up to at
/// most `max_bytes`; an item larger than `max_bytes` gets a run of its own.
pub(super) fn chunk_by_size<T: Copy>(
    items: &[T],
    lens: impl IntoIterator<Item = usize>,
    max_rows: usize,
    max_bytes: usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut size = 0usize;
    for (&item, len) in items.iter().zip(lens) {
        match out.last_mut() {
            Some(c) if c.len() < max_rows && size + len <= max_bytes => {
                c.push(item);
                size += len;
            }
            _ => {
                out.push(vec![item]);
                size = len;
            }
        }
    }
    out
}

pub(super) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn bad(op: &'static str, what: &str) -> StoreError {
    StoreError::fatal(op, format!("stored {what} is invalid"))
}

pub(super) fn step_from_row(op: &'static str, r: &Row) -> Result<Step, StoreError> {
    let int = |n: &str| r.int(n).ok_or_else(|| bad(op, n));
    let payload: Payload =
        serde_json::from_str(&r.text("payload").ok_or_else(|| bad(op, "payload"))?)
            .map_err(|_| bad(op, "payload"))?;
    Ok(Step {
        step_id: r
            .text("step_id")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(op, "step_id"))?,
        status: r
            .text("status")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(op, "status"))?,
        claimed_by: r.text("claimed_by"),
        last_update_ts: ts(int("last_update_ms")?),
        payload,
        retry_count: int("retry_count")? as u32,
        priority: int("priority")? as i32,
        created_ts: ts(int("created_ms")?),
        max_retries: int("max_retries")? as u32,
        attempt: int("attempt")? as u32,
        run_at: ts(int("run_at_ms")?),
        idempotency_key: r.text("idempotency_key"),
        last_error: r.text("last_error"),
        result: r
            .text("result")
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|_| bad(op, "result"))?,
        timeout_ms: r.int("timeout_ms").map(|t| t.max(0) as u64),
        queue: r
            .text("queue")
            .unwrap_or_else(|| fleet_q_actors::queue::DEFAULT_QUEUE.to_string()),
        started_ts: r.int("started_ms").map(ts),
    })
}

/// An optional duration as a SQL integer of milliseconds, or NULL.
pub(super) fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "NULL".to_string(), |d| ms(d).to_string())
}

pub(super) fn pod_from_row(op: &'static str, r: &Row) -> Result<PodRecord, StoreError> {
    let now = r.int("now_ms").ok_or_else(|| bad(op, "now"))?;
    let last = r
        .int("last_ms")
        .ok_or_else(|| bad(op, "last_heartbeat_ts"))?;
    Ok(PodRecord {
        pod_id: r.text("pod_id").ok_or_else(|| bad(op, "pod_id"))?,
        birth_ts: ts(r.int("birth_ms").ok_or_else(|| bad(op, "birth_ts"))?),
        last_heartbeat_ts: ts(last),
        status: r
            .text("status")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(op, "pod status"))?,
        capacity_in_use: r.int("capacity_in_use").unwrap_or(0) as u32,
        max_capacity: r.int("max_capacity").unwrap_or(0) as u32,
        meta: r
            .text("meta")
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or(serde_json::Value::Null),
        heartbeat_age: Duration::from_millis(now.saturating_sub(last).max(0) as u64),
        heartbeat_interval: r
            .int("heartbeat_interval_ms")
            .map(|v| Duration::from_millis(v.max(0) as u64)),
        dead_after: r
            .int("dead_after_ms")
            .map(|v| Duration::from_millis(v.max(0) as u64)),
    })
}

/// The VALUES columns of a failed outcome (error cut to [`MAX_ERROR_BYTES`]).
pub(super) fn failure_row(error: &str, retryable: bool, b: &Backoff) -> String {
    let cut = (b.jitter.clamp(0.0, 1.0) * rand::random::<f64>()).clamp(0.0, 1.0);
    format!(
        ", 0, {}, CAST(NULL AS VARCHAR), {}, {}",
        u8::from(retryable),
        sql::b64_lit(&cut_to(error, MAX_ERROR_BYTES)),
        sql::float(cut)
    )
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
/// Longest error text stored with a step (bytes); longer ones are cut.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Largest result stored with a step (bytes of JSON): Snowflake advises statement
/// text under 1 MB, and a result travels base64-encoded in one. A larger result
/// fails the step (not retried) with an error saying so.
pub const MAX_RESULT_BYTES: usize = 512 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub(super) fn cut_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What the shared statistics row holds: the statistics themselves, and the
/// finishes counted so far by step type (`[completed, failed, cancelled]`),
/// which the next publish advances.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct SharedStats {
    pub(super) finished: BTreeMap<String, [u64; 3]>,
    pub(super) stats: QueueStats,
}
