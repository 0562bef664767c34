//! Named queues: every step belongs to one (`default` unless the submit names
//! another), and each queue's settings live in the store (the `QUEUES` table),
//! so every pod claims by the same rules at once.
//!
//! # What a claim obeys
//! Enforced by the store inside the claim itself (its transaction on SQLite,
//! its one `UPDATE` on Snowflake), never by a pod's own count:
//! - a **paused** queue gives no steps (recovered and due retries included);
//! - a queue's claimed steps across the fleet never exceed its
//!   **`max_concurrency`**;
//! - a queue with a **`rate_per_second`** starts at most as many steps as a
//!   token bucket of that rate and **`burst`** allows, by the store's clock:
//!   in every window of `w` seconds, at most `burst + rate × w` starts
//!   (see [`bucket_tokens`] and "Rate limits" below);
//! - a pod serving a subset of queues (`FLEET_Q_QUEUES`) claims only from those.
//!
//! Steps requeued by recovery and retries coming due are claimed like any
//! other step, so every limit holds for them too.
//!
//! # Rate limits
//! A claim is a step's start: its `started_ts` is set by the claim.
//! - **SQLite** keeps each limited queue's bucket in its `QUEUES` row
//!   (`tokens`, `tokens_ts`) and spends it in the claim's write transaction,
//!   which no other pod's claim can interleave with: exact.
//! - **Snowflake** cannot change two tables in one statement, and the claim
//!   must stay one `UPDATE`. The bucket is derived in that statement from the
//!   queue's own recent starts instead ([`bucket_tokens`] over the starts of
//!   the last [`RATE_HORIZON_SECS`] seconds), under the table lock the
//!   `UPDATE` holds. Every window of up to that horizon obeys the bucket
//!   exactly; a window longer than it may see at most one extra `burst` per
//!   horizon. A step started and then requeued (its pod died) is counted at
//!   its latest start only.
//!
//! # Per-queue defaults
//! `max_retries`, `timeout` and the retry backoff (`backoff`, `backoff_max`)
//! a queue sets apply to steps submitted to it that do not set their own,
//! resolved by the store when the step is inserted: a change to a queue's
//! defaults applies to steps submitted afterwards. Unset, what applies without
//! queues applies: 3 retries, the running pod's `FLEET_Q_STEP_TIMEOUT_SECONDS`,
//! and the pod's step backoff (`FLEET_Q_DEFAULT_BASE_DELAY_MS`,
//! `FLEET_Q_DEFAULT_MAX_DELAY_MS`).
//!
//! # Fairness
//! Eligible queues share a claim round-robin: each gets an equal share of the
//! claim's limit in turn (SQLite: a share per queue, leftovers to those with
//! more, starting from a different queue each claim; Snowflake: the first step
//! of every queue, then the second of every queue, …), so one busy queue cannot
//! starve another. Within a queue, higher priority first, then older.
//!
//! # Queues on first use
//! By default (`FLEET_Q_CREATE_QUEUES=on`) a submit to a queue that has no row
//! creates it with the defaults (not paused, no limit) in the same transaction
//! as the insert (SQLite) or just before it (Snowflake). With
//! `FLEET_Q_CREATE_QUEUES=off` a submit naming a queue that does not exist is
//! refused (HTTP 400) and nothing is stored: queues are then made only by
//! `PUT /admin/queues/{name}`. At most [`MAX_QUEUES`] queues exist; a submit
//! that would create more is refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::step::{MAX_RETRIES_RANGE, MAX_TIMEOUT};

/// The queue of a step whose submit names none.
pub const DEFAULT_QUEUE: &str = "default";

/// Most queues a store holds (each claim visits every eligible one).
pub const MAX_QUEUES: usize = 1000;

/// Longest queue name (bytes).
pub const MAX_QUEUE_NAME: usize = 64;

/// Largest `max_concurrency`.
pub const MAX_CONCURRENCY: u32 = 1_000_000;

/// Largest `rate_per_second` and `burst`.
pub const MAX_RATE: f64 = 100_000.0;

/// Largest `burst`.
pub const MAX_BURST: u32 = 100_000;

/// Longest per-queue retry backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// How far back a Snowflake claim reads a rate-limited queue's starts to
/// derive its bucket (see "Rate limits" above).
pub const RATE_HORIZON_SECS: u32 = 10;

/// Why a queue name is not valid, if it is not: 1-64 of `A-Z a-z 0-9 . _ -`.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Some(format!("must be 1 to {MAX_QUEUE_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("may hold only A-Z a-z 0-9 . _ -".into());
    }
    None
}

/// One queue's settings, as the store keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// The name.
    pub name: String,
    /// No step of a paused queue is claimed.
    pub paused: bool,
    /// Most steps of this queue claimed at once across the fleet (`None`: no
    /// limit).
    pub max_concurrency: Option<u32>,
    /// Steps started per second across the fleet, on average (`None`: no
    /// limit).
    pub rate_per_second: Option<f64>,
    /// Most steps started at once after a quiet spell (the bucket's size);
    /// `None` with a rate: [`QueueSettings::burst_or_default`].
    pub burst: Option<u32>,
    /// Retries for steps submitted without `max_retries`.
    pub max_retries: Option<u32>,
    /// Handler timeout for steps submitted without one.
    pub timeout: Option<Duration>,
    /// Delay before the first retry of this queue's steps (doubling per
    /// retry); `None`: the pod's step backoff.
    pub backoff: Option<Duration>,
    /// Cap on this queue's retry delays; `None`: the pod's.
    pub backoff_max: Option<Duration>,
}

impl QueueSettings {
    /// A queue with the defaults: running, no limit, the pod's defaults.
    pub fn new(name: impl Into<String>) -> QueueSettings {
        QueueSettings {
            name: name.into(),
            paused: false,
            max_concurrency: None,
            rate_per_second: None,
            burst: None,
            max_retries: None,
            timeout: None,
            backoff: None,
            backoff_max: None,
        }
    }

    /// The bucket's size: `burst` when set, else the rate rounded up (at
    /// least 1), so a queue limited to 20/s may start 20 at once.
    pub fn burst_or_default(&self) -> Option<u32> {
        let rate = self.rate_per_second?;
        Some(self.burst.unwrap_or_else(|| default_burst(rate)))
    }
}

impl QueueSettings {
    /// Why these settings cannot be stored, if they cannot (every backend
    /// refuses them alike).
    pub fn problem(&self) -> Option<String> {
        if let Some(why) = name_problem(&self.name) {
            return Some(format!("queue name {why}"));
        }
        let mut problems = Vec::new();
        if self
            .max_concurrency
            .is_some_and(|m| m == 0 || m > MAX_CONCURRENCY)
        {
            problems.push(format!(
                "max_concurrency must be 1 to {MAX_CONCURRENCY} (pause the queue to stop it)"
            ));
        }
        if let Some(r) = self.rate_per_second {
            if !(r.is_finite() && r > 0.0 && r <= MAX_RATE) {
                problems.push(format!(
                    "rate_per_second must be more than 0 and at most {MAX_RATE}"
                ));
            }
        }
        match self.burst {
            Some(b) if b == 0 || b > MAX_BURST => {
                problems.push(format!("burst must be 1 to {MAX_BURST}"))
            }
            Some(_) if self.rate_per_second.is_none() => {
                problems.push("burst needs a rate_per_second".into())
            }
            _ => {}
        }
        if let Some(m) = self.max_retries {
            if !MAX_RETRIES_RANGE.contains(&m) {
                problems.push(format!(
                    "max_retries must be {} to {}",
                    MAX_RETRIES_RANGE.start(),
                    MAX_RETRIES_RANGE.end()
                ));
            }
        }
        if self.timeout.is_some_and(|t| t.is_zero() || t > MAX_TIMEOUT) {
            problems.push(format!(
                "timeout_seconds must be more than 0 and at most {}",
                MAX_TIMEOUT.as_secs()
            ));
        }
        for (what, d) in [
            ("retry_backoff_seconds", self.backoff),
            ("retry_backoff_max_seconds", self.backoff_max),
        ] {
            if d.is_some_and(|d| d < Duration::from_millis(1) || d > MAX_BACKOFF) {
                problems.push(format!(
                    "{what} must be at least 0.001 and at most {}",
                    MAX_BACKOFF.as_secs()
                ));
            }
        }
        if let (Some(b), Some(m)) = (self.backoff, self.backoff_max) {
            if m < b {
                problems.push(
                    "retry_backoff_max_seconds must be at least retry_backoff_seconds".into(),
                );
            }
        }
        if problems.is_empty() {
            None
        } else {
            Some(problems.join("; "))
        }
    }
}

/// The bucket size of a queue limited to `rate` per second that names no
/// `burst`: the rate rounded up, at least 1.
pub fn default_burst(rate: f64) -> u32 {
    rate.ceil().clamp(1.0, MAX_RATE) as u32
}

/// The tokens a bucket of `rate` per second and size `burst` holds `now_ms`,
/// given the queue's starts as `(started_ms, rank)`: rank 1 the latest start,
/// 2 the one before, … (ties ranked in any order). It is the least of `burst`
/// and, over every start, `burst + rate × (now − start) − rank`: the bucket
/// was at most full before that start, refilled since, and paid one token for
/// it and for every later one. With every start since the bucket was last full
/// in the list, this is exactly the bucket's level; with only recent starts it
/// is exact for every window that fits in them (the Snowflake claim computes
/// the same expression in SQL).
pub fn bucket_tokens(rate: f64, burst: u32, now_ms: i64, starts: &[(i64, u64)]) -> f64 {
    let b = f64::from(burst);
    starts
        .iter()
        .map(|&(at, rank)| b + rate * (now_ms - at).max(0) as f64 / 1000.0 - rank as f64)
        .fold(b, f64::min)
}

/// A stored bucket refilled to `now_ms`: `tokens` at `at_ms` (`None`: never
/// spent, so full), plus `rate` per second, at most `burst`.
pub fn bucket_refill(rate: f64, burst: u32, tokens: Option<f64>, at_ms: i64, now_ms: i64) -> f64 {
    let b = f64::from(burst);
    match tokens {
        None => b,
        Some(t) => (t + rate * (now_ms - at_ms).max(0) as f64 / 1000.0).min(b),
    }
}

/// A queue as `GET /admin/queues` shows it: its settings and its live counts
/// (read through the live index: live rows only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Settings.
    pub settings: QueueSettings,
    /// Steps waiting (due or not).
    pub pending: u64,
    /// Steps claimed now.
    pub claimed: u64,
    /// Steps started in the last minute (SQLite: estimated from two one-minute
    /// counters kept by the claims; Snowflake: counted from the steps' start
    /// times, the last minute's rows only).
    pub started_last_minute: u64,
}

/// Hands a claim of `limit` steps out among queues in turn: `wants[i]` is how
/// many queue `i` can give (its due steps, bounded by its concurrency room),
/// `start` rotates who goes first. Each queue gets an equal share in turn;
/// shares a queue cannot use go to the others. Returns each queue's count.
pub fn round_robin(wants: &[u64], limit: u64, start: usize) -> Vec<u64> {
    let n = wants.len();
    let mut got = vec![0u64; n];
    if n == 0 {
        return got;
    }
    let mut left = limit;
    loop {
        let open: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| got[i] < wants[i])
            .collect();
        if left == 0 || open.is_empty() {
            return got;
        }
        let k = open.len() as u64;
        let (base, mut extra) = (left / k, left % k);
        for i in open {
            let share = base + u64::from(extra > 0);
            extra = extra.saturating_sub(1);
            let take = share.min(wants[i] - got[i]);
            got[i] += take;
            left -= take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(name_problem("default").is_none());
        assert!(name_problem("gpu.jobs_v2-eu").is_none());
        assert!(name_problem("").is_some());
        assert!(name_problem("a b").is_some());
        assert!(name_problem(&"x".repeat(65)).is_some());
        assert!(name_problem("q'; DROP TABLE").is_some());
    }

    #[test]
    fn a_claim_is_shared_in_turn_and_leftovers_go_to_queues_with_more() {
        // A busy queue and a small one: the small one gets all it has.
        assert_eq!(round_robin(&[10_000, 10], 100, 0), vec![90, 10]);
        assert_eq!(round_robin(&[10_000, 10], 100, 1), vec![90, 10]);
        // Three busy queues: equal shares (the odd one to whoever starts).
        assert_eq!(round_robin(&[50, 50, 50], 10, 0), vec![4, 3, 3]);
        assert_eq!(round_robin(&[50, 50, 50], 10, 1), vec![3, 4, 3]);
        // Less wanted than the limit: everything.
        assert_eq!(round_robin(&[2, 0, 3], 100, 2), vec![2, 0, 3]);
        assert_eq!(round_robin(&[], 100, 0), Vec::<u64>::new());
        assert_eq!(round_robin(&[5], 0, 0), vec![0]);
    }

    #[test]
    fn the_bucket_starts_full_and_refills_at_its_rate() {
        // 20/s, burst 5: nothing started yet, full.
        assert_eq!(bucket_tokens(20.0, 5, 1_000, &[]), 5.0);
        // Five started at t=0: empty at 0, one token per 50 ms after.
        let five: Vec<(i64, u64)> = (1..=5).map(|r| (0, r)).collect();
        assert_eq!(bucket_tokens(20.0, 5, 0, &five), 0.0);
        assert_eq!(bucket_tokens(20.0, 5, 100, &five), 2.0);
        // Full again after 250 ms, and never above the burst.
        assert_eq!(bucket_tokens(20.0, 5, 10_000, &five), 5.0);
        // Steady 20/s for a second after the burst: still empty.
        let mut steady = five.clone();
        for k in 1..=20i64 {
            steady.push((k * 50, 0));
        }
        steady.sort_by_key(|s| std::cmp::Reverse(s.0));
        let ranked: Vec<(i64, u64)> = steady
            .iter()
            .enumerate()
            .map(|(i, &(at, _))| (at, i as u64 + 1))
            .collect();
        assert!(bucket_tokens(20.0, 5, 1_000, &ranked).abs() < 1e-9);
        // The stored form agrees.
        assert_eq!(bucket_refill(20.0, 5, None, 0, 0), 5.0);
        assert_eq!(bucket_refill(20.0, 5, Some(0.0), 0, 100), 2.0);
        assert_eq!(bucket_refill(20.0, 5, Some(0.0), 0, 60_000), 5.0);
    }

    #[test]
    fn settings_problems_are_all_listed() {
        let ok = QueueSettings {
            rate_per_second: Some(20.0),
            burst: Some(5),
            max_retries: Some(2),
            timeout: Some(Duration::from_secs(30)),
            backoff: Some(Duration::from_secs(1)),
            backoff_max: Some(Duration::from_secs(60)),
            ..QueueSettings::new("q")
        };
        assert_eq!(ok.problem(), None);
        assert_eq!(ok.burst_or_default(), Some(5));
        let default_burst = QueueSettings {
            burst: None,
            rate_per_second: Some(0.5),
            ..ok.clone()
        };
        assert_eq!(default_burst.burst_or_default(), Some(1));
        let bad = QueueSettings {
            max_concurrency: Some(0),
            rate_per_second: Some(f64::NAN),
            burst: Some(0),
            max_retries: Some(11),
            timeout: Some(Duration::ZERO),
            backoff: Some(Duration::from_secs(10)),
            backoff_max: Some(Duration::from_secs(1)),
            ..QueueSettings::new("q")
        };
        let why = bad.problem().unwrap();
        for field in [
            "max_concurrency",
            "rate_per_second",
            "burst",
            "max_retries",
            "timeout_seconds",
            "retry_backoff_max_seconds must be at least",
        ] {
            assert!(why.contains(field), "{field} missing from {why}");
        }
        let lone_burst = QueueSettings {
            burst: Some(3),
            ..QueueSettings::new("q")
        };
        assert!(lone_burst.problem().unwrap().contains("needs a rate"));
    }
}
