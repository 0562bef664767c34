//! Row mapping (columns, rows into steps and pod records, ids and times) and
//! multi-row insert statements in power-of-two chunks.

use super::*;

pub(super) const STEP_COLS: &str =
    "step_id, status, claimed_by, last_update_ts, payload, retry_count, \
     priority, created_ts, max_retries, attempt, run_at, idempotency_key, last_error, result, \
     timeout_ms, queue, started_ts";

pub(super) const POD_COLS: &str = "pod_id, birth_ts, last_heartbeat_ts, status, capacity_in_use, \
     max_capacity, meta, heartbeat_interval_ms, dead_after_ms";

pub(super) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn bad_row(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("stored {what} is invalid: {e}").into(),
    )
}

/// Step ids are stored as the UUID's 16 bytes: less than half the size of the
/// text form in the table and in every index, and still in creation order.
pub(super) fn id_val(id: StepId) -> SqlValue {
    SqlValue::Blob(id.as_bytes().to_vec())
}

/// The smallest id that could be minted at `ms` (Unix milliseconds): a UUIDv7
/// starts with its 48-bit big-endian timestamp.
pub(super) fn id_floor(ms: i64) -> SqlValue {
    let mut bytes = vec![0u8; 16];
    bytes[..6].copy_from_slice(&ms.max(0).to_be_bytes()[2..]);
    SqlValue::Blob(bytes)
}

pub(super) fn id_at(r: &Row<'_>, idx: usize) -> rusqlite::Result<StepId> {
    let bytes: Vec<u8> = r.get(idx)?;
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| bad_row("step_id", "not 16 bytes"))?;
    Ok(StepId::from_bytes(arr))
}

pub(super) fn step_from_row(r: &Row<'_>) -> rusqlite::Result<Step> {
    let status: String = r.get(1)?;
    let payload: String = r.get(4)?;
    let result: Option<String> = r.get(13)?;
    Ok(Step {
        step_id: id_at(r, 0)?,
        status: status.parse().map_err(|e| bad_row("status", e))?,
        claimed_by: r.get(2)?,
        last_update_ts: ts(r.get(3)?),
        payload: serde_json::from_str(&payload).map_err(|e| bad_row("payload", e))?,
        retry_count: r.get(5)?,
        priority: r.get(6)?,
        created_ts: ts(r.get(7)?),
        max_retries: r.get(8)?,
        attempt: r.get(9)?,
        run_at: ts(r.get(10)?),
        idempotency_key: r.get(11)?,
        last_error: r.get(12)?,
        result: result
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| bad_row("result", e))?,
        timeout_ms: r.get::<_, Option<i64>>(14)?.map(|t| t.max(0) as u64),
        queue: r.get(15)?,
        started_ts: r.get::<_, Option<i64>>(16)?.map(ts),
    })
}

pub(super) fn pod_from_row(r: &Row<'_>, now: i64) -> rusqlite::Result<PodRecord> {
    let status: String = r.get(3)?;
    let meta: String = r.get(6)?;
    let last: i64 = r.get(2)?;
    Ok(PodRecord {
        pod_id: r.get(0)?,
        birth_ts: ts(r.get(1)?),
        last_heartbeat_ts: ts(last),
        status: status.parse().map_err(|e| bad_row("pod status", e))?,
        capacity_in_use: r.get(4)?,
        max_capacity: r.get(5)?,
        meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
        heartbeat_age: Duration::from_millis(now.saturating_sub(last).max(0) as u64),
        heartbeat_interval: r
            .get::<_, Option<i64>>(7)?
            .map(|v| Duration::from_millis(v.max(0) as u64)),
        dead_after: r
            .get::<_, Option<i64>>(8)?
            .map(|v| Duration::from_millis(v.max(0) as u64)),
    })
}

pub(super) fn run_at_ms(run_at: RunAt, now: i64) -> i64 {
    match run_at {
        RunAt::Now => now,
        RunAt::After(d) => now.saturating_add(ms(d)),
        // A time in the past simply means "due now"; keep it so ordering by age holds.
        RunAt::At(at) => at.timestamp_millis(),
    }
}

pub(super) const INSERT_COLS: &str =
    "step_id, status, last_update_ts, payload, priority, created_ts, \
     max_retries, run_at, idempotency_key, timeout_ms, step_type, queue, backoff_ms, backoff_max_ms";
pub(super) const INSERT_ROW: &str = "(?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
pub(super) const INSERT_PARAMS: usize = 13;

/// A queue's defaults for the steps submitted to it without their own.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct QueueDefaults {
    pub max_retries: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub backoff_ms: Option<i64>,
    pub backoff_max_ms: Option<i64>,
}

fn opt_int(v: Option<i64>) -> SqlValue {
    v.map_or(SqlValue::Null, SqlValue::Integer)
}

pub(super) fn push_insert_values(
    values: &mut Vec<SqlValue>,
    s: &NewStep,
    now: i64,
    d: QueueDefaults,
) {
    values.extend([
        id_val(s.step_id()),
        SqlValue::Integer(now),
        SqlValue::Text(s.payload_json().to_string()),
        SqlValue::Integer(s.priority().into()),
        SqlValue::Integer(now),
        SqlValue::Integer(
            s.max_retries()
                .map(i64::from)
                .or(d.max_retries)
                .unwrap_or(fleet_q_actors::step::DEFAULT_MAX_RETRIES.into()),
        ),
        SqlValue::Integer(run_at_ms(s.run_at(), now)),
        s.idempotency_key()
            .map_or(SqlValue::Null, |k| SqlValue::Text(k.to_string())),
        opt_int(s.timeout().map(ms).or(d.timeout_ms)),
        SqlValue::Text(s.payload().step_type.clone()),
        SqlValue::Text(s.queue().to_string()),
        opt_int(d.backoff_ms),
        opt_int(d.backoff_max_ms),
    ]);
}

/// Splits `n` rows into chunks of at most [`MAX_CHUNK`], each a power of two, so
/// multi-row statements come in a handful of shapes the statement cache keeps.
pub(super) fn pow2_chunks(n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let left = n - start;
        let len = if left >= MAX_CHUNK {
            MAX_CHUNK
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        out.push((start, len));
        start += len;
    }
    out
}

/// Largest multi-row statement (rows); × 13 parameters stays far below SQLite's
/// 32,766-parameter limit.
pub(super) const MAX_CHUNK: usize = 128;
