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
//! - a pod serving a subset of queues (`FLEET_Q_QUEUES`) claims only from those.
//!
//! # Fairness
//! Eligible queues share a claim round-robin: each gets an equal share of the
//! claim's limit in turn (SQLite: a share per queue, leftovers to those with
//! more, starting from a different queue each claim; Snowflake: the first step
//! of every queue, then the second of every queue, …), so one busy queue cannot
//! starve another. Within a queue, higher priority first, then older.
//!
//! # Queues on first use
//! A submit to a queue that has no row creates it with the defaults (not
//! paused, no limit) in the same transaction as the insert (SQLite) or just
//! before it (Snowflake). At most [`MAX_QUEUES`] queues exist; a submit that
//! would create more is refused.

use serde::{Deserialize, Serialize};

/// The queue of a step whose submit names none.
pub const DEFAULT_QUEUE: &str = "default";

/// Most queues a store holds (each claim visits every eligible one).
pub const MAX_QUEUES: usize = 1000;

/// Longest queue name (bytes).
pub const MAX_QUEUE_NAME: usize = 64;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// The name.
    pub name: String,
    /// No step of a paused queue is claimed.
    pub paused: bool,
    /// Most steps of this queue claimed at once across the fleet (`None`: no
    /// limit).
    pub max_concurrency: Option<u32>,
}

impl QueueSettings {
    /// A queue with the defaults: running, no limit.
    pub fn new(name: impl Into<String>) -> QueueSettings {
        QueueSettings {
            name: name.into(),
            paused: false,
            max_concurrency: None,
        }
    }
}

impl QueueSettings {
    /// Why these settings cannot be stored, if they cannot (every backend
    /// refuses them alike).
    pub fn problem(&self) -> Option<String> {
        if let Some(why) = name_problem(&self.name) {
            return Some(format!("queue name {why}"));
        }
        if self.max_concurrency == Some(0) {
            return Some("max_concurrency must be at least 1 (pause the queue instead)".into());
        }
        None
    }
}

/// A queue as `GET /admin/queues` shows it: its settings and its live counts
/// (read through the live index: live rows only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Settings.
    pub settings: QueueSettings,
    /// Steps waiting (due or not).
    pub pending: u64,
    /// Steps claimed now.
    pub claimed: u64,
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
}
