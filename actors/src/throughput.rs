//! Fleet throughput per minute over the last hour, without reading history.
//!
//! Each pod counts the step runs it finished and the store accepted
//! (completed, failed terminally, retried) in one bucket per minute of its own
//! clock, keeps the last [`MINUTES`] buckets, and writes them with every
//! heartbeat into its `POD_HEALTH.meta` (a few hundred bytes). Any pod shows
//! the fleet's last hour by summing the rows of `POD_HEALTH`, which it reads
//! anyway: one row per pod, never a row of `STEP_TRACKER`. A pod that restarts
//! starts its buckets empty, and a pod's last minute reaches the others with
//! its next heartbeat, so the chart is exact up to one heartbeat interval and
//! the runs of pods whose rows are gone.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::records::PodRecord;

/// Minutes kept and shown.
pub const MINUTES: usize = 60;

/// The key under which a pod's buckets sit in its heartbeat `meta`.
pub const META_KEY: &str = "throughput";

/// What a finished run counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Completed.
    Completed,
    /// Failed with no retry left (terminal).
    Failed,
    /// Failed and scheduled for another attempt.
    Retried,
}

impl Finished {
    /// From the outcome label of `fleet_q_steps_finished_total`.
    pub fn from_label(label: &str) -> Option<Finished> {
        match label {
            "completed" => Some(Finished::Completed),
            "failed" => Some(Finished::Failed),
            "retried" => Some(Finished::Retried),
            _ => None,
        }
    }
}

/// Per-minute counts, oldest first, ending at minute `last` (Unix minutes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The Unix minute of the last entry.
    pub last: i64,
    /// Completed runs per minute.
    pub completed: Vec<u64>,
    /// Terminal failures per minute.
    pub failed: Vec<u64>,
    /// Retries scheduled per minute.
    pub retried: Vec<u64>,
}

impl Series {
    /// An all-zero series of [`MINUTES`] minutes ending at `last`.
    pub fn empty(last: i64) -> Series {
        Series {
            last,
            completed: vec![0; MINUTES],
            failed: vec![0; MINUTES],
            retried: vec![0; MINUTES],
        }
    }

    /// Adds `other`, aligned by minute (minutes outside this series' window
    /// are dropped).
    pub fn add(&mut self, other: &Series) {
        let n = self.completed.len() as i64;
        for (i, ((c, f), r)) in other
            .completed
            .iter()
            .zip(&other.failed)
            .zip(&other.retried)
            .enumerate()
        {
            let minute = other.last - (other.completed.len() as i64 - 1 - i as i64);
            let at = n - 1 - (self.last - minute);
            if (0..n).contains(&at) {
                let at = at as usize;
                self.completed[at] += c;
                self.failed[at] += f;
                self.retried[at] += r;
            }
        }
    }

    /// The fleet's series: the sum of every pod's, as their rows carry them,
    /// aligned to the minute `now`.
    pub fn fleet(pods: &[PodRecord], now: i64) -> Series {
        let mut sum = Series::empty(now);
        for p in pods {
            if let Some(s) = p
                .meta
                .get(META_KEY)
                .and_then(|v| serde_json::from_value::<Series>(v.clone()).ok())
            {
                sum.add(&s);
            }
        }
        sum
    }
}

/// One pod's buckets.
#[derive(Debug, Default)]
pub struct Throughput {
    buckets: VecDeque<(i64, [u64; 3])>,
}

impl Throughput {
    /// Counts `n` runs of `kind` in minute `minute`.
    pub fn record(&mut self, minute: i64, kind: Finished, n: u64) {
        match self.buckets.back_mut() {
            Some((m, _)) if *m == minute => {}
            Some((m, _)) if *m > minute => {
                // The clock went back: count it in the newest bucket.
                let b = self.buckets.back_mut().expect("just matched");
                b.1[kind as usize] += n;
                return;
            }
            _ => self.buckets.push_back((minute, [0; 3])),
        }
        self.buckets.back_mut().expect("just pushed").1[kind as usize] += n;
        while self
            .buckets
            .front()
            .is_some_and(|(m, _)| *m <= minute - MINUTES as i64)
        {
            self.buckets.pop_front();
        }
    }

    /// The last [`MINUTES`] minutes up to `now`.
    pub fn series(&self, now: i64) -> Series {
        let mut s = Series::empty(now);
        for (m, counts) in &self.buckets {
            let at = MINUTES as i64 - 1 - (now - m);
            if (0..MINUTES as i64).contains(&at) {
                let at = at as usize;
                s.completed[at] = counts[0];
                s.failed[at] = counts[1];
                s.retried[at] = counts[2];
            }
        }
        s
    }

    /// `meta` with this pod's series under [`META_KEY`] (a non-object `meta`
    /// is kept under `"meta"`).
    pub fn into_meta(&self, meta: &Value, now: i64) -> Value {
        let mut obj = match meta {
            Value::Object(m) => m.clone(),
            Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("meta".into(), other.clone());
                m
            }
        };
        obj.insert(
            META_KEY.into(),
            serde_json::to_value(self.series(now)).unwrap_or(Value::Null),
        );
        Value::Object(obj)
    }
}

/// The current Unix minute by this pod's clock.
pub fn now_minute() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_roll_over_the_hour_and_sum_across_pods() {
        let mut a = Throughput::default();
        a.record(1000, Finished::Completed, 3);
        a.record(1000, Finished::Retried, 1);
        a.record(1030, Finished::Failed, 2);
        a.record(1059, Finished::Completed, 5);
        let s = a.series(1059);
        assert_eq!(s.completed.len(), MINUTES);
        assert_eq!(
            (s.completed[0], s.retried[0]),
            (3, 1),
            "minute 1000 is the first of the hour"
        );
        assert_eq!(s.failed[30], 2);
        assert_eq!(s.completed[59], 5);
        // A minute later the oldest bucket has left the window.
        a.record(1060, Finished::Completed, 1);
        let s = a.series(1060);
        assert_eq!(s.completed.iter().sum::<u64>(), 6);
        assert_eq!(a.buckets.len(), 3);

        let mut b = Throughput::default();
        b.record(1059, Finished::Completed, 10);
        let fleet = {
            let mut sum = Series::empty(1060);
            sum.add(&a.series(1060));
            sum.add(&b.series(1059));
            sum
        };
        assert_eq!(
            fleet.completed[58], 15,
            "aligned by minute, not by position"
        );
        assert_eq!(fleet.completed[59], 1);
    }

    #[test]
    fn the_series_rides_in_the_heartbeat_meta() {
        let mut t = Throughput::default();
        t.record(50, Finished::Completed, 2);
        let meta = t.into_meta(&serde_json::json!({"version": "1"}), 50);
        assert_eq!(meta["version"], "1");
        let s: Series = serde_json::from_value(meta[META_KEY].clone()).unwrap();
        assert_eq!(s.completed[59], 2);
    }
}
