//! Pods as the store sees them (the seed's POD_HEALTH table) and queue statistics.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::step::ValidationError;

/// A pod's own view of itself, written with every heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodStatus {
    /// Running and heartbeating.
    Up,
    /// Shut down, or presumed dead and marked down by the leader. A down pod never
    /// becomes `up` again under the same id: it rejoins under a new identity.
    Down,
}

impl PodStatus {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            PodStatus::Up => "up",
            PodStatus::Down => "down",
        }
    }
}

impl fmt::Display for PodStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PodStatus {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(PodStatus::Up),
            "down" => Ok(PodStatus::Down),
            other => Err(ValidationError::new(
                "pod_status",
                format!("unknown pod status {other:?}"),
            )),
        }
    }
}

/// One row of POD_HEALTH, with its heartbeat age measured by the store's clock at
/// the time it was read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Unique per process (and per rejoin).
    pub pod_id: String,
    /// First heartbeat of this identity; the eldest live pod leads.
    pub birth_ts: DateTime<Utc>,
    /// Latest heartbeat, by the store's clock.
    pub last_heartbeat_ts: DateTime<Utc>,
    /// `up` or `down`.
    pub status: PodStatus,
    /// Steps it was running at its last heartbeat.
    pub capacity_in_use: u32,
    /// Steps it may run at once.
    pub max_capacity: u32,
    /// Free-form JSON the pod reports (version, host, address).
    pub meta: serde_json::Value,
    /// Store time at read minus `last_heartbeat_ts`.
    pub heartbeat_age: Duration,
    /// The heartbeat interval the pod declared (rows written by older versions
    /// declare none).
    #[serde(default)]
    pub heartbeat_interval: Option<Duration>,
    /// How long after its last heartbeat the pod may be presumed dead, as the pod
    /// itself declared it: its own dead threshold, never less than
    /// [`MIN_HEARTBEATS_BEFORE_DEAD`] of its heartbeat intervals.
    #[serde(default)]
    pub dead_after: Option<Duration>,
}

/// A pod is never presumed dead before it has missed this many heartbeats, whatever
/// thresholds are configured.
pub const MIN_HEARTBEATS_BEFORE_DEAD: u32 = 3;

/// The silence after which a pod that heartbeats every `interval` with dead
/// threshold `threshold` may be presumed dead: the threshold, but never less than
/// [`MIN_HEARTBEATS_BEFORE_DEAD`] intervals.
pub fn dead_after(interval: Duration, threshold: Duration) -> Duration {
    threshold.max(interval * MIN_HEARTBEATS_BEFORE_DEAD)
}

impl PodRecord {
    /// How long this pod may stay silent before it is presumed dead: what it
    /// declared in its row, or `default` (the judging pod's own threshold) for a
    /// row that declares nothing. Each pod is judged by its own settings, so pods
    /// with different heartbeat settings can share one store.
    pub fn dead_threshold(&self, default: Duration) -> Duration {
        self.dead_after.unwrap_or(default)
    }

    /// Alive: marked up, with a heartbeat younger than its dead threshold (see
    /// [`PodRecord::dead_threshold`]) by store time. (A zero threshold therefore
    /// makes every pod that declares none dead.)
    pub fn is_alive(&self, default_threshold: Duration) -> bool {
        self.status == PodStatus::Up && self.heartbeat_age < self.dead_threshold(default_threshold)
    }
}

/// The leader among `pods`: the live pod with the earliest birth time, ties broken
/// by pod id. Every pod computes the same answer from the same rows.
pub fn eldest_live_pod(pods: &[PodRecord], dead_threshold: Duration) -> Option<&PodRecord> {
    pods.iter()
        .filter(|p| p.is_alive(dead_threshold))
        .min_by(|a, b| (a.birth_ts, &a.pod_id).cmp(&(b.birth_ts, &b.pod_id)))
}

/// Step counts by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Waiting.
    pub pending: u64,
    /// Running.
    pub claimed: u64,
    /// Done.
    pub completed: u64,
    /// Failed terminally.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl StatusCounts {
    /// Adds `n` to the counter of `status`.
    pub fn add(&mut self, status: crate::StepStatus, n: u64) {
        use crate::StepStatus::*;
        match status {
            Pending => self.pending += n,
            Claimed => self.claimed += n,
            Completed => self.completed += n,
            Failed => self.failed += n,
            Cancelled => self.cancelled += n,
        }
    }

    /// All steps counted.
    pub fn total(&self) -> u64 {
        self.pending + self.claimed + self.completed + self.failed + self.cancelled
    }

    /// Adds every counter of `other` to these.
    pub fn merge(&mut self, other: &StatusCounts) {
        self.pending += other.pending;
        self.claimed += other.claimed;
        self.completed += other.completed;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
    }
}

/// Step types statistics keep by name; the rest are summed under
/// [`OTHER_TYPES`]. Clients choose step types, so no statistic may hold one
/// entry per type a client ever sent.
pub const STATS_TYPES: usize = 1000;

/// The name the step types beyond [`STATS_TYPES`] are summed under.
pub const OTHER_TYPES: &str = "(other types)";

/// Keeps the `keep` entries of `map` with the largest `size` (ties by name),
/// adding the rest into one entry named [`OTHER_TYPES`]; the sum over all
/// entries is unchanged.
pub fn fold_types<V: Default>(
    map: &mut BTreeMap<String, V>,
    keep: usize,
    size: impl Fn(&V) -> u64,
    add: impl Fn(&mut V, &V),
) {
    fold_named(map, keep, OTHER_TYPES, size, add)
}

/// [`fold_types`] with the name the rest is summed under (`other`).
pub fn fold_named<V: Default>(
    map: &mut BTreeMap<String, V>,
    keep: usize,
    other_name: &str,
    size: impl Fn(&V) -> u64,
    add: impl Fn(&mut V, &V),
) {
    if map.len() <= keep {
        return;
    }
    let mut other = map.remove(other_name).unwrap_or_default();
    let mut by_size: Vec<(u64, String)> = map.iter().map(|(k, v)| (size(v), k.clone())).collect();
    by_size.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, k) in by_size.into_iter().skip(keep.saturating_sub(1)) {
        if let Some(v) = map.remove(&k) {
            add(&mut other, &v);
        }
    }
    map.insert(other_name.to_string(), other);
}

/// A snapshot of the queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Counts by status over every stored step.
    pub counts: StatusCounts,
    /// Pending steps by priority.
    pub pending_by_priority: BTreeMap<i32, u64>,
    /// Counts by status for each step type.
    pub by_type: BTreeMap<String, StatusCounts>,
    /// Live counts (pending, claimed) for each queue that has live steps.
    #[serde(default)]
    pub by_queue: BTreeMap<String, StatusCounts>,
    /// Age of the oldest pending step that is due (`run_at <= now`), by store time.
    pub oldest_pending_age: Option<Duration>,
    /// Store time of the snapshot.
    pub as_of: Option<DateTime<Utc>>,
}

impl QueueStats {
    /// Bounds [`QueueStats::by_type`] to [`STATS_TYPES`] entries (see
    /// [`fold_types`]).
    pub fn fold_types(&mut self) {
        fold_types(
            &mut self.by_type,
            STATS_TYPES,
            StatusCounts::total,
            StatusCounts::merge,
        );
        fold_named(
            &mut self.by_queue,
            STATS_TYPES,
            "(other queues)",
            StatusCounts::total,
            StatusCounts::merge,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_beyond_the_limit_are_summed_under_one_name() {
        let mut m: BTreeMap<String, u64> = (0..10).map(|i| (format!("t{i}"), i)).collect();
        fold_types(&mut m, 4, |v| *v, |a, b| *a += b);
        assert_eq!(m.len(), 4);
        assert_eq!((m["t9"], m["t8"], m["t7"]), (9, 8, 7));
        assert_eq!(m[OTHER_TYPES], (0..7).sum::<u64>());
        m.insert("t10".into(), 1);
        let before: u64 = m.values().sum();
        fold_types(&mut m, 4, |v| *v, |a, b| *a += b);
        assert_eq!(m.len(), 4);
        assert_eq!(m.values().sum::<u64>(), before, "folding keeps the sum");
    }

    fn pod(id: &str, birth_s: i64, age_s: u64, status: PodStatus) -> PodRecord {
        PodRecord {
            pod_id: id.into(),
            birth_ts: DateTime::from_timestamp(birth_s, 0).unwrap(),
            last_heartbeat_ts: DateTime::from_timestamp(birth_s, 0).unwrap(),
            status,
            capacity_in_use: 0,
            max_capacity: 8,
            meta: serde_json::Value::Null,
            heartbeat_age: Duration::from_secs(age_s),
            heartbeat_interval: None,
            dead_after: None,
        }
    }

    #[test]
    fn eldest_live_pod_skips_dead_and_down_and_breaks_ties_by_id() {
        let t = Duration::from_secs(180);
        let pods = vec![
            pod("a", 10, 500, PodStatus::Up), // dead: stale heartbeat
            pod("b", 11, 5, PodStatus::Down), // down
            pod("d", 20, 5, PodStatus::Up),   // live, born later
            pod("c", 20, 5, PodStatus::Up),   // same birth as d: c wins by id
            pod("e", 30, 179, PodStatus::Up), // just inside the threshold
            pod("f", 1, 180, PodStatus::Up),  // exactly at the threshold: dead
        ];
        assert_eq!(eldest_live_pod(&pods, t).unwrap().pod_id, "c");
        assert!(pods[4].is_alive(t));
        assert!(!pods[5].is_alive(t));
        assert!(eldest_live_pod(&pods[..2], t).is_none());
    }
}
