//! Claims that obey the queues (`fleet_q_actors::queue`), and the queue
//! settings. A claim runs in one write transaction, which SQLite makes
//! exclusive across every process on the file: the pause flags, concurrency
//! counts and claims it reads and writes cannot interleave with another pod's.

use super::*;

use fleet_q_actors::queue::{QueueInfo, QueueSettings, MAX_QUEUES};

/// The claim statement for one queue: its `?4` oldest-highest due steps.
fn claim_sql() -> String {
    format!(
        "UPDATE STEP_TRACKER SET status = 'claimed', claimed_by = ?1, \
         attempt = attempt + 1, last_update_ts = ?2 \
         WHERE rowid IN (SELECT rowid FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
           WHERE status = 'pending' AND {LIVE} AND queue = ?3 AND run_at <= ?2 \
           ORDER BY priority DESC, created_ts, step_id LIMIT ?4) \
         RETURNING {STEP_COLS}"
    )
}

/// Claims up to `p.limit` steps, shared round-robin among the eligible queues
/// starting at `start` (see the fairness rule in `fleet_q_actors::queue`).
pub(super) fn claim(
    c: &Connection,
    now: i64,
    p: &ClaimParams,
    start: usize,
) -> Result<Vec<Step>, StoreError> {
    let op = "steps_claim";
    let err = |e| map_err(op, e);
    // Eligible queues and their room under max_concurrency.
    let mut queues: Vec<(String, u64)> = Vec::new();
    {
        let mut st = c
            .prepare_cached(
                "SELECT name, max_concurrency FROM QUEUES WHERE paused = 0 ORDER BY name",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .map_err(err)?;
        for row in rows {
            let (name, max) = row.map_err(err)?;
            if p.queues.as_ref().is_some_and(|only| !only.contains(&name)) {
                continue;
            }
            let room = match max {
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
            if room > 0 {
                queues.push((name, room));
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
            let share = (base + u64::from(extra > 0)).min(queues[i].1);
            extra = extra.saturating_sub(1);
            if share == 0 {
                still.push(i);
                continue;
            }
            let got: Vec<Step> = st
                .query_map(
                    params![p.pod_id, now, queues[i].0, share as i64],
                    step_from_row,
                )
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(err)?;
            let g = got.len() as u64;
            left -= g;
            queues[i].1 = queues[i].1.saturating_sub(g);
            steps.extend(got);
            // A queue that filled its share may have more; one that did not is
            // done for this claim.
            if g == share && queues[i].1 > 0 {
                still.push(i);
            }
        }
        // Every round claims a step or closes a queue (a share of 0 happens
        // only when fewer steps are left than queues, and then the first
        // queues get 1 each), so the rounds end.
        open = still;
    }
    // RETURNING order is unspecified: hand steps back in claim order.
    steps.sort_by(|a, b| {
        (b.priority, a.created_ts, a.step_id).cmp(&(a.priority, b.created_ts, b.step_id))
    });
    Ok(steps)
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

/// Every queue with its settings and live counts (live rows only).
pub(super) fn list(c: &Connection) -> rusqlite::Result<Vec<QueueInfo>> {
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
    let mut st =
        c.prepare_cached("SELECT name, paused, max_concurrency FROM QUEUES ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok(QueueSettings {
            name: r.get(0)?,
            paused: r.get::<_, i64>(1)? != 0,
            max_concurrency: r.get::<_, Option<i64>>(2)?.map(|m| m.max(0) as u32),
        })
    })?;
    rows.map(|s| {
        let s = s?;
        let get = |status: &str| {
            counts
                .get(&(s.name.clone(), status.to_string()))
                .copied()
                .unwrap_or(0)
        };
        Ok(QueueInfo {
            pending: get("pending"),
            claimed: get("claimed"),
            settings: s,
        })
    })
    .collect()
}

/// Upserts a queue's settings.
pub(super) fn put(c: &Connection, now: i64, s: &QueueSettings) -> Result<(), StoreError> {
    let op = "queue_put";
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM QUEUES WHERE name <> ?1",
            [&s.name],
            |r| r.get(0),
        )
        .map_err(|e| map_err(op, e))?;
    if n as usize >= MAX_QUEUES {
        return Err(StoreError::fatal(
            op,
            format!("a store holds at most {MAX_QUEUES} queues"),
        ));
    }
    c.prepare_cached(
        "INSERT INTO QUEUES (name, paused, max_concurrency, updated_ts) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, \
         max_concurrency = excluded.max_concurrency, updated_ts = excluded.updated_ts",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.name,
            i64::from(s.paused),
            s.max_concurrency.map(i64::from),
            now
        ])
    })
    .map_err(|e| map_err(op, e))?;
    Ok(())
}
