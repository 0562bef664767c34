//! Claims that obey the queues (`fleet_q_actors::queue`), and the queue
//! settings. A claim runs in one write transaction, which SQLite makes
//! exclusive across every process on the file: the pause flags, concurrency
//! counts and claims it reads and writes cannot interleave with another pod's.

use super::*;

use std::collections::HashMap;
use std::time::Duration;

use fleet_q_actors::Claimed;

use fleet_q_actors::queue::{bucket_refill, QueueInfo, QueueSettings, MAX_QUEUES};

/// The claim statement for one queue: its `?4` oldest-highest due steps.
fn claim_sql() -> String {
    format!(
        "UPDATE STEP_TRACKER SET status = 'claimed', claimed_by = ?1, \
         attempt = attempt + 1, last_update_ts = ?2, started_ts = ?2 \
         WHERE rowid IN (SELECT rowid FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
           WHERE status = 'pending' AND {LIVE} AND queue = ?3 AND run_at <= ?2 \
           ORDER BY priority DESC, created_ts, step_id LIMIT ?4) \
         RETURNING {STEP_COLS}"
    )
}

/// What a claim did to one queue's row: its starts counted by minute and, for
/// a rate-limited queue, its bucket spent (`?5`: the level left, or NULL).
const SPEND_SQL: &str = "UPDATE QUEUES SET \
     started_prev = CASE WHEN started_minute = ?2 THEN started_prev \
       WHEN started_minute = ?2 - 1 THEN started_now ELSE 0 END, \
     started_now = CASE WHEN started_minute = ?2 THEN started_now + ?3 ELSE ?3 END, \
     started_minute = ?2, \
     tokens = CASE WHEN ?5 IS NULL THEN tokens ELSE ?5 END, \
     tokens_ts = CASE WHEN ?5 IS NULL THEN tokens_ts ELSE ?4 END \
     WHERE name = ?1";

/// One eligible queue in a claim.
struct Eligible {
    name: String,
    /// Steps it may still give (concurrency room and bucket).
    room: u64,
    /// Its bucket's level now and its rate, when rate-limited.
    tokens: Option<(f64, f64)>,
    /// Whether the bucket, not `max_concurrency`, bounds `room`.
    bucket_bound: bool,
    /// Steps claimed from it so far.
    got: u64,
}

/// How long until a bucket of `rate` per second at `level` holds a whole token.
fn until_token(rate: f64, level: f64) -> Duration {
    Duration::from_secs_f64(((1.0 - level).max(0.0) / rate).min(3600.0))
}

/// Claims up to `p.limit` steps, shared round-robin among the eligible queues
/// starting at `start` (see the fairness rule in `fleet_q_actors::queue`).
///
/// Also answers the pacing hint of `Store::steps_claim_paced`: the soonest
/// next token among rate-limited queues whose bucket bounded this claim (they
/// were skipped for want of a token, or gave all their tokens). A queue so
/// bounded that has no more due steps costs one empty claim at that time.
pub(super) fn claim(
    c: &Connection,
    now: i64,
    p: &ClaimParams,
    start: usize,
) -> Result<Claimed, StoreError> {
    let op = "steps_claim";
    let err = |e| map_err(op, e);
    // Eligible queues and their room under max_concurrency and the bucket.
    let mut queues: Vec<Eligible> = Vec::new();
    let mut pace: Option<Duration> = None;
    let mut sooner = |d: Duration| pace = Some(pace.map_or(d, |p| p.min(d)));
    {
        let mut st = c
            .prepare_cached(
                "SELECT name, max_concurrency, rate_per_second, burst, tokens, tokens_ts \
                 FROM QUEUES WHERE paused = 0 ORDER BY name",
            )
            .map_err(err)?;
        type QueueRow = (
            String,
            Option<i64>,
            Option<f64>,
            Option<i64>,
            Option<f64>,
            Option<i64>,
        );
        let rows = st
            .query_map([], |r| -> rusqlite::Result<QueueRow> {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(err)?;
        for row in rows {
            let (name, max, rate, burst, tokens, tokens_ts) = row.map_err(err)?;
            if p.queues.as_ref().is_some_and(|only| !only.contains(&name)) {
                continue;
            }
            let mut room = match max {
                None => u64::MAX,
                Some(m) => {
                    let running: i64 = c
                        .prepare_cached(&format!(
                            "SELECT COUNT(*) FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
                             WHERE status = 'claimed' AND {LIVE} AND queue = ?1"
                        ))
                        .and_then(|mut st| st.query_row([&name], |r| r.get(0)))
                        .map_err(err)?;
                    (m - running).max(0) as u64
                }
            };
            let level = rate.filter(|r| *r > 0.0).map(|rate| {
                let burst = burst
                    .map(|b| b.clamp(1, i64::from(u32::MAX)) as u32)
                    .unwrap_or_else(|| fleet_q_actors::queue::default_burst(rate));
                bucket_refill(rate, burst, tokens, tokens_ts.unwrap_or(now), now)
            });
            let mut bucket_bound = false;
            if let Some(t) = level {
                // A hair of slack so 2.9999999 tokens still start 3.
                let whole = (t + 1e-9).floor().max(0.0) as u64;
                bucket_bound = whole <= room;
                room = room.min(whole);
            }
            let tokens = level.zip(rate);
            if room > 0 {
                queues.push(Eligible {
                    name,
                    room,
                    tokens,
                    bucket_bound,
                    got: 0,
                });
            } else if let (true, Some((t, rate))) = (bucket_bound, tokens) {
                sooner(until_token(rate, t));
            }
        }
    }
    let n = queues.len();
    let mut open: Vec<usize> = (0..n).map(|k| (start + k) % n.max(1)).collect();
    let mut left = u64::from(p.limit);
    let mut steps = Vec::new();
    let mut st = c.prepare_cached(&claim_sql()).map_err(err)?;
    while left > 0 && !open.is_empty() {
        let k = open.len() as u64;
        let (base, mut extra) = (left / k, left % k);
        let mut still = Vec::new();
        for i in open {
            let q = &mut queues[i];
            let share = (base + u64::from(extra > 0)).min(q.room);
            extra = extra.saturating_sub(1);
            if share == 0 {
                still.push(i);
                continue;
            }
            let got: Vec<Step> = st
                .query_map(params![p.pod_id, now, q.name, share as i64], step_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(err)?;
            let g = got.len() as u64;
            left -= g;
            q.room = q.room.saturating_sub(g);
            q.got += g;
            steps.extend(got);
            // A queue that filled its share may have more; one that did not is
            // done for this claim.
            if g == share && q.room > 0 {
                still.push(i);
            }
        }
        // Every round claims a step or closes a queue (a share of 0 happens
        // only when fewer steps are left than queues, and then the first
        // queues get 1 each), so the rounds end.
        open = still;
    }
    // Count the starts, and spend the buckets, in the same transaction.
    let mut spend = c.prepare_cached(SPEND_SQL).map_err(err)?;
    for q in queues.iter().filter(|q| q.got > 0) {
        let left = q.tokens.map(|(t, _)| (t - q.got as f64).max(0.0));
        spend
            .execute(params![q.name, now / 60_000, q.got as i64, now, left])
            .map_err(err)?;
        if let (true, 0, Some((_, rate)), Some(l)) = (q.bucket_bound, q.room, q.tokens, left) {
            sooner(until_token(rate, l));
        }
    }
    // RETURNING order is unspecified: hand steps back in claim order.
    steps.sort_by(|a, b| {
        (b.priority, a.created_ts, a.step_id).cmp(&(a.priority, b.created_ts, b.step_id))
    });
    Ok(Claimed {
        steps,
        next_token_in: pace,
    })
}

/// Creates the queues `names` name that have no row yet, in the insert's
/// transaction; refuses to go past [`MAX_QUEUES`]. `known` holds the names
/// this process has seen stored (queues are never deleted), so an insert into
/// a known queue sends no statement for it.
pub(super) fn ensure_queues<'a>(
    c: &Connection,
    known: &Mutex<HashSet<String>>,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<String>, StoreError> {
    let op = "steps_insert";
    let mut added = false;
    let names: Vec<&str> = {
        let known = known.lock().expect("known queues");
        names.filter(|n| !known.contains(*n)).collect()
    };
    for name in &names {
        let n = c
            .prepare_cached("INSERT OR IGNORE INTO QUEUES (name) VALUES (?1)")
            .and_then(|mut st| st.execute([*name]))
            .map_err(|e| map_err(op, e))?;
        added |= n > 0;
    }
    if added {
        let count: i64 = c
            .query_row("SELECT COUNT(*) FROM QUEUES", [], |r| r.get(0))
            .map_err(|e| map_err(op, e))?;
        if count as usize > MAX_QUEUES {
            return Err(StoreError::fatal(
                op,
                format!("a store holds at most {MAX_QUEUES} queues"),
            ));
        }
    }
    // Remembered once the transaction commits (see the caller).
    Ok(names.into_iter().map(str::to_string).collect())
}

/// The defaults of the queues `names` (those that set any), read in the
/// insert's transaction: one primary-key read per queue.
pub(super) fn defaults(
    c: &Connection,
    names: &[&str],
) -> Result<HashMap<String, QueueDefaults>, StoreError> {
    let mut out = HashMap::new();
    let mut st = c
        .prepare_cached(
            "SELECT max_retries, timeout_ms, backoff_ms, backoff_max_ms FROM QUEUES \
             WHERE name = ?1",
        )
        .map_err(|e| map_err("steps_insert", e))?;
    for name in names {
        let d = st
            .query_row([name], |r| {
                Ok(QueueDefaults {
                    max_retries: r.get(0)?,
                    timeout_ms: r.get(1)?,
                    backoff_ms: r.get(2)?,
                    backoff_max_ms: r.get(3)?,
                })
            })
            .optional()
            .map_err(|e| map_err("steps_insert", e))?;
        if let Some(d) = d {
            out.insert(name.to_string(), d);
        }
    }
    Ok(out)
}

/// Starts in the last minute, estimated from the two one-minute counters:
/// all of this minute's, and the part of the previous minute's that the
/// sliding minute still covers.
fn started_last_minute(minute: Option<i64>, now_count: i64, prev: i64, now_ms: i64) -> u64 {
    let m = now_ms / 60_000;
    let covered = 1.0 - (now_ms % 60_000) as f64 / 60_000.0;
    let est = match minute {
        Some(x) if x == m => now_count as f64 + prev as f64 * covered,
        Some(x) if x == m - 1 => now_count as f64 * covered,
        _ => 0.0,
    };
    est.round().max(0.0) as u64
}

/// Every queue with its settings and live counts (live rows only).
pub(super) fn list(c: &Connection, now: i64) -> rusqlite::Result<Vec<QueueInfo>> {
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut st = c.prepare_cached(&format!(
        "SELECT queue, status, COUNT(*) FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
         WHERE {LIVE} GROUP BY status, queue"
    ))?;
    for row in st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (q, s, n) = row?;
        counts.insert((q, s), n.max(0) as u64);
    }
    let mut st = c.prepare_cached(
        "SELECT name, paused, max_concurrency, rate_per_second, burst, max_retries, timeout_ms, \
         backoff_ms, backoff_max_ms, started_minute, started_now, started_prev \
         FROM QUEUES ORDER BY name",
    )?;
    let dur = |v: Option<i64>| v.map(|m| Duration::from_millis(m.max(0) as u64));
    let rows = st.query_map([], |r| {
        let settings = QueueSettings {
            name: r.get(0)?,
            paused: r.get::<_, i64>(1)? != 0,
            max_concurrency: r.get::<_, Option<i64>>(2)?.map(|m| m.max(0) as u32),
            rate_per_second: r.get(3)?,
            burst: r.get::<_, Option<i64>>(4)?.map(|m| m.max(0) as u32),
            max_retries: r.get::<_, Option<i64>>(5)?.map(|m| m.max(0) as u32),
            timeout: dur(r.get(6)?),
            backoff: dur(r.get(7)?),
            backoff_max: dur(r.get(8)?),
        };
        let started = started_last_minute(r.get(9)?, r.get(10)?, r.get(11)?, now);
        Ok((settings, started))
    })?;
    rows.map(|row| {
        let (s, started_last_minute) = row?;
        let get = |status: &str| {
            counts
                .get(&(s.name.clone(), status.to_string()))
                .copied()
                .unwrap_or(0)
        };
        Ok(QueueInfo {
            pending: get("pending"),
            claimed: get("claimed"),
            started_last_minute,
            settings: s,
        })
    })
    .collect()
}

fn refuse_past_max(c: &Connection, op: &'static str, name: &str) -> Result<(), StoreError> {
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM QUEUES WHERE name <> ?1",
            [name],
            |r| r.get(0),
        )
        .map_err(|e| map_err(op, e))?;
    if n as usize >= MAX_QUEUES {
        return Err(StoreError::fatal(
            op,
            format!("a store holds at most {MAX_QUEUES} queues"),
        ));
    }
    Ok(())
}

/// Upserts a queue's settings. A changed rate or burst starts the bucket
/// full; an unchanged one keeps its level.
pub(super) fn put(c: &Connection, now: i64, s: &QueueSettings) -> Result<(), StoreError> {
    let op = "queue_put";
    refuse_past_max(c, op, &s.name)?;
    let ms_of = |d: Option<Duration>| d.map(ms);
    c.prepare_cached(
        "INSERT INTO QUEUES (name, paused, max_concurrency, updated_ts, rate_per_second, burst, \
           max_retries, timeout_ms, backoff_ms, backoff_max_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, \
         max_concurrency = excluded.max_concurrency, updated_ts = excluded.updated_ts, \
         tokens = CASE WHEN rate_per_second IS excluded.rate_per_second \
           AND burst IS excluded.burst THEN tokens ELSE NULL END, \
         rate_per_second = excluded.rate_per_second, burst = excluded.burst, \
         max_retries = excluded.max_retries, timeout_ms = excluded.timeout_ms, \
         backoff_ms = excluded.backoff_ms, backoff_max_ms = excluded.backoff_max_ms",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.name,
            i64::from(s.paused),
            s.max_concurrency.map(i64::from),
            now,
            s.rate_per_second,
            s.burst.map(i64::from),
            s.max_retries.map(i64::from),
            ms_of(s.timeout),
            ms_of(s.backoff),
            ms_of(s.backoff_max),
        ])
    })
    .map_err(|e| map_err(op, e))?;
    Ok(())
}

/// Pauses or resumes one queue (made with the defaults if it has no row).
pub(super) fn pause(c: &Connection, now: i64, name: &str, paused: bool) -> Result<(), StoreError> {
    let op = "queue_pause";
    refuse_past_max(c, op, name)?;
    c.prepare_cached(
        "INSERT INTO QUEUES (name, paused, updated_ts) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_ts = excluded.updated_ts",
    )
    .and_then(|mut st| st.execute(params![name, i64::from(paused), now]))
    .map_err(|e| map_err(op, e))?;
    Ok(())
}
