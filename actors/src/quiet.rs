//! Idle-quiet mode: an idle fleet stops talking to its store, so a warehouse
//! that bills while it runs (Snowflake suspends after `AUTO_SUSPEND` seconds
//! without a query) can suspend.
//!
//! # The rule
//! A pod goes quiet when it holds nothing and its store says the fleet has no
//! work: no step is claimed anywhere and no pending step in an unpaused queue
//! is due (the idle probe, [`crate::Store::steps_idle_probe`], one read of the
//! live rows). The claimer asks after [`PROBE_AFTER_EMPTY`] empty claims in a
//! row, and less often (doubling, up to one per wake period) while the answer
//! is "other pods are busy".
//!
//! While quiet, every periodic store call of the pod (claim poll, heartbeat,
//! leader check, the leader's recovery cycle, prune pass and schedule check,
//! the shared-statistics refresh) runs only at **wakes**: instants every
//! `period` (`FLEET_Q_IDLE_POLL_MAX_SECONDS`) of store time since the Unix
//! epoch, plus this pod's place in a short window ([`wake_window`], a
//! hash of its id). Every pod of a fleet therefore talks at the same few
//! seconds of each period and is silent in between: with the defaults on
//! Snowflake (360 s, a window of 30 s) the store hears nothing for at least
//! 329 s at a stretch, longer than `AUTO_SUSPEND = 300`. Why aligned wakes
//! and not a per-pod backoff: three pods each polling every 360 s at their
//! own phase leave gaps of 120 s on average; the warehouse would never
//! suspend.
//!
//! At a wake the claimer probes instead of claiming (one `SELECT` instead of
//! an `UPDATE` that takes the table lock). A pending step due later than now
//! (a delayed submit, a retry backoff) is remembered, and every quiet pod
//! wakes for it at its due time.
//!
//! # Leaving quiet
//! A local submit, a schedule fire on the leader, a probe that finds work, or
//! a due step the probe saw earlier rouses the pod: its heartbeat first
//! declares the normal interval again (and must land), then it claims. So a
//! submit still starts on the pod that took it at once (one heartbeat write
//! later), and other quiet pods find remaining work at their next wake. The
//! rouse is broadcast to the pod's actors, which pick their normal cadence up
//! at once (the leader runs a recovery cycle at once).
//!
//! # Heartbeats and liveness
//! A quiet pod beats at each wake and declares, in its POD_HEALTH row, an
//! interval of `period` and a dead-after of [`quiet_dead_after`]
//! (2 × period + the dead-pod threshold), by which the leader judges it.
//! It holds no claims, so being judged late costs nothing but a slower
//! failover of a quiet leader (schedules fire late by up to that much when
//! a quiet leader dies). A pod that claims has declared the normal interval
//! first, so recovery bounds for pods holding claims are unchanged as long
//! as `period` + the window ≤ dead threshold + recovery interval (the
//! defaults: 390 s ≤ 480 s), because a quiet leader's next wake finds the
//! claim and rouses it. Readiness follows the declared interval too.
//!
//! Off by default on SQLite (a local file costs nothing idle), on by
//! default on Snowflake.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// Empty claims in a row (with nothing running) before the claimer asks the
/// store whether the fleet is idle.
pub const PROBE_AFTER_EMPTY: u32 = 3;

/// The most a pod's wake is offset from the period's instant.
pub const MAX_WAKE_WINDOW: Duration = Duration::from_secs(30);

/// How long after its wake instant a timer fires, so the wake index has
/// advanced by then.
const TIMER_SLACK: Duration = Duration::from_millis(10);

/// The window in which the pods of a fleet spread their wakes: a twelfth of
/// the period, at most [`MAX_WAKE_WINDOW`] (30 pods writing POD_HEALTH at the
/// same instant would queue behind its table lock).
pub fn wake_window(period: Duration) -> Duration {
    (period / 12).min(MAX_WAKE_WINDOW)
}

/// The dead-after a quiet pod declares: two missed wakes and the normal
/// threshold on top.
pub fn quiet_dead_after(period: Duration, dead_threshold: Duration) -> Duration {
    period * 2 + dead_threshold
}

/// What the idle probe saw (see [`crate::Store::steps_idle_probe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleProbe {
    /// Steps claimed anywhere (counted up to a small bound; 0 means none).
    pub claimed: u64,
    /// Whether a pending step in an unpaused queue is due now.
    pub due_now: bool,
    /// The earliest `run_at` of a pending step in an unpaused queue that is
    /// not due yet.
    pub next_due: Option<DateTime<Utc>>,
    /// Store time of the probe.
    pub now: DateTime<Utc>,
}

impl IdleProbe {
    /// No work anywhere: nothing claimed, nothing due now.
    pub fn idle(&self) -> bool {
        self.claimed == 0 && !self.due_now
    }

    /// How long until the earliest step not yet due becomes due.
    pub fn until_next_due(&self) -> Option<Duration> {
        self.next_due
            .map(|t| (t - self.now).to_std().unwrap_or(Duration::ZERO))
    }
}

/// A pod's quiet mode: whether it is on, and the fleet-wide wake clock.
#[derive(Debug)]
pub struct Quiet {
    period: Option<Duration>,
    /// This pod's place in the wake window, in ms.
    offset_ms: i64,
    on: AtomicBool,
    /// Store time minus this pod's wall clock, in ms, as last seen.
    clock_offset_ms: AtomicI64,
    /// The heartbeat interval this pod's row declares now, in ms.
    declared_interval_ms: AtomicU64,
}

impl Quiet {
    /// Quiet mode with wakes every `period` (`None`: never quiet) for the pod
    /// `pod_id`, which beats every `heartbeat` while active.
    pub fn new(period: Option<Duration>, pod_id: &str, heartbeat: Duration) -> Self {
        let offset_ms = period.map_or(0, |p| {
            let w = wake_window(p).as_millis() as u64;
            if w == 0 {
                0
            } else {
                (fnv1a(pod_id.as_bytes()) % w) as i64
            }
        });
        Quiet {
            period,
            offset_ms,
            on: AtomicBool::new(false),
            clock_offset_ms: AtomicI64::new(0),
            declared_interval_ms: AtomicU64::new(heartbeat.as_millis() as u64),
        }
    }

    /// The wake period, when quiet mode is enabled.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// Whether this pod is quiet now.
    pub fn is_quiet(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Turns quiet on or off; true when that changed it.
    pub(crate) fn set(&self, on: bool) -> bool {
        let on = on && self.period.is_some();
        self.on.swap(on, Ordering::SeqCst) != on
    }

    /// Learns the store's clock from a time it answered.
    pub(crate) fn observe_store_time(&self, store_now: DateTime<Utc>) {
        let offset = store_now.timestamp_millis() - wall_ms();
        self.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    /// The heartbeat interval this pod's row declares now.
    pub fn declared_interval(&self) -> Duration {
        Duration::from_millis(self.declared_interval_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_declared_interval(&self, d: Duration) {
        self.declared_interval_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn store_ms(&self) -> i64 {
        wall_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// While quiet: the index of the latest wake at or before now.
    pub fn wake_index(&self) -> Option<i64> {
        let p = self.period?;
        self.is_quiet()
            .then(|| wake_index_at(self.store_ms(), p.as_millis() as i64, self.offset_ms))
    }

    /// While quiet: the time until the next wake.
    pub fn until_next_wake(&self) -> Option<Duration> {
        let p = self.period?;
        self.is_quiet()
            .then(|| until_next_wake_at(self.store_ms(), p.as_millis() as i64, self.offset_ms))
    }

    /// How long a periodic actor waits before its next tick: `normal`, or
    /// while quiet no later than just after the next wake (a tick between
    /// wakes sends nothing; see [`Gate`]).
    pub fn wait(&self, normal: Duration) -> Duration {
        match self.until_next_wake() {
            Some(w) => normal.min(w + TIMER_SLACK),
            None => normal,
        }
    }
}

/// One periodic store call's gate: while quiet it opens once per wake.
#[derive(Debug, Default)]
pub struct Gate {
    served: Option<i64>,
}

impl Gate {
    /// Whether the call may run now: always while active; while quiet, once
    /// per wake, and not at the wake in progress when the pod went quiet
    /// (the call ran just before).
    pub fn open(&mut self, quiet: &Quiet) -> bool {
        match quiet.wake_index() {
            None => {
                self.served = None;
                true
            }
            Some(k) => match self.served {
                Some(s) if s >= k => false,
                None => {
                    self.served = Some(k);
                    false
                }
                Some(_) => {
                    self.served = Some(k);
                    true
                }
            },
        }
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn wake_index_at(store_ms: i64, period_ms: i64, offset_ms: i64) -> i64 {
    (store_ms - offset_ms).div_euclid(period_ms.max(1))
}

fn until_next_wake_at(store_ms: i64, period_ms: i64, offset_ms: i64) -> Duration {
    let p = period_ms.max(1);
    let next = (wake_index_at(store_ms, p, offset_ms) + 1) * p + offset_ms;
    Duration::from_millis((next - store_ms).max(0) as u64)
}

/// FNV-1a: a stable hash of the pod id (the standard hasher is seeded per
/// process, and a pod's place must not move when it restarts).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_are_aligned_to_the_period_plus_the_pods_offset() {
        let p = 360_000;
        assert_eq!(wake_index_at(720_000 + 5_000, p, 5_000), 2);
        assert_eq!(wake_index_at(720_000 + 4_999, p, 5_000), 1);
        assert_eq!(
            until_next_wake_at(720_000 + 5_000, p, 5_000),
            Duration::from_millis(360_000)
        );
        assert_eq!(
            until_next_wake_at(720_000, p, 5_000),
            Duration::from_millis(5_000)
        );
    }

    #[test]
    fn the_window_is_a_twelfth_of_the_period_at_most_30_s() {
        assert_eq!(
            wake_window(Duration::from_secs(360)),
            Duration::from_secs(30)
        );
        assert_eq!(wake_window(Duration::from_secs(60)), Duration::from_secs(5));
        let q = Quiet::new(
            Some(Duration::from_secs(360)),
            "pod-a",
            Duration::from_secs(30),
        );
        assert!(q.offset_ms < 30_000);
        let again = Quiet::new(
            Some(Duration::from_secs(360)),
            "pod-a",
            Duration::from_secs(30),
        );
        assert_eq!(q.offset_ms, again.offset_ms, "stable across restarts");
    }

    #[test]
    fn a_gate_opens_once_per_wake_and_not_at_the_one_quiet_began_in() {
        let q = Quiet::new(
            Some(Duration::from_secs(3600)),
            "p",
            Duration::from_secs(30),
        );
        let mut g = Gate::default();
        assert!(g.open(&q), "active: always open");
        assert!(g.open(&q));
        assert!(q.set(true));
        assert!(!g.open(&q), "just went quiet");
        assert!(!g.open(&q));
        // The next wake: pretend the clock moved on by a period.
        q.clock_offset_ms.store(3_600_000, Ordering::Relaxed);
        assert!(g.open(&q));
        assert!(!g.open(&q), "once per wake");
        assert!(q.set(false));
        assert!(g.open(&q));
    }

    #[test]
    fn quiet_needs_a_period_and_waits_no_later_than_the_next_wake() {
        let off = Quiet::new(None, "p", Duration::from_secs(30));
        assert!(!off.set(true));
        assert!(!off.is_quiet());
        assert_eq!(off.wait(Duration::from_secs(5)), Duration::from_secs(5));
        let q = Quiet::new(Some(Duration::from_secs(360)), "p", Duration::from_secs(30));
        assert_eq!(q.wait(Duration::from_secs(5)), Duration::from_secs(5));
        q.set(true);
        assert!(q.wait(Duration::from_secs(3600)) <= Duration::from_secs(361));
        assert_eq!(
            quiet_dead_after(Duration::from_secs(360), Duration::from_secs(180)),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn a_probe_is_idle_only_with_nothing_claimed_or_due() {
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let p = IdleProbe {
            claimed: 0,
            due_now: false,
            next_due: Some(now + chrono::Duration::seconds(40)),
            now,
        };
        assert!(p.idle());
        assert_eq!(p.until_next_due(), Some(Duration::from_secs(40)));
        assert!(!IdleProbe {
            claimed: 1,
            ..p.clone()
        }
        .idle());
        assert!(!IdleProbe { due_now: true, ..p }.idle());
    }
}
