//! LeaderElector: the eldest live pod leads.
//!
//! Every leader-check interval (and whenever this pod's heartbeat health changes) it
//! reads POD_HEALTH and computes the leader as the live pod with the earliest
//! `birth_ts` (ties by id), liveness judged by the store's clock. This pod acts as
//! leader only while it is that pod *and* its own heartbeat is healthy. Two pods
//! may briefly both believe they lead (each reads at a different moment); that is
//! harmless because every recovery write is fenced and idempotent.
//!
//! Failover: once a leader's heartbeat is older than the dead-pod threshold, the next
//! check of any other pod (within one leader-check interval) elects the next eldest.
//! While the pod is quiet (`crate::quiet`) it checks at wakes only, and at once
//! when the pod wakes up.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::jittered;
use super::storage::{ListPods, StorageActor};
use crate::messages::{HeartbeatHealthChanged, LeadershipChanged, QuietChanged};
use crate::quiet::Gate;
use crate::records::eldest_live_pod;
use crate::state::{PodState, Term};
use crate::supervision::{guarded, SupervisedActor};

use std::sync::LazyLock;

use prometheus::{IntCounter, IntGauge};

static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    crate::metrics::gauge(
        "fleet_q_is_leader",
        "1 while this process acts as the fleet's leader.",
    )
});
static CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    crate::metrics::counter(
        "fleet_q_leadership_changes_total",
        "Times this process became or stopped being the leader.",
    )
});

/// Forces registration of this module's metrics (so `/metrics` lists them at 0).
pub fn register_metrics() {
    LazyLock::force(&IS_LEADER);
    LazyLock::force(&CHANGES);
}

/// LeaderElector settings.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Period (default 60 s, `FLEET_Q_LEADER_CHECK_INTERVAL_SECONDS`).
    pub check_interval: Duration,
    /// Liveness threshold (default 180 s).
    pub dead_threshold: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            check_interval: crate::defaults::LEADER_CHECK_INTERVAL,
            dead_threshold: crate::defaults::DEAD_POD_THRESHOLD,
        }
    }
}

impl LeaderConfig {
    /// Adds a line to `problems` for each value this actor cannot run with.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if self.check_interval.is_zero() {
            problems.push("leader: check_interval must be above zero".into());
        }
        if self.dead_threshold.is_zero() {
            problems.push("leader: dead_threshold must be above zero".into());
        }
    }
}

/// The actor.
pub struct LeaderElector {
    cfg: LeaderConfig,
    state: Arc<PodState>,
    storage: Addr<StorageActor>,
    subscribers: Vec<Recipient<LeadershipChanged>>,
    checking: bool,
    again: bool,
    last: Option<(bool, Option<Term>)>,
    timer: Option<SpawnHandle>,
    /// The leader whose differing liveness settings were already warned about.
    warned_settings: Option<String>,
    gate: Gate,
}

impl LeaderElector {
    /// An elector publishing changes to `subscribers`.
    pub fn new(
        cfg: LeaderConfig,
        state: Arc<PodState>,
        storage: Addr<StorageActor>,
        subscribers: Vec<Recipient<LeadershipChanged>>,
    ) -> Self {
        LeaderElector {
            cfg,
            state,
            storage,
            subscribers,
            checking: false,
            again: false,
            last: None,
            timer: None,
            warned_settings: None,
            gate: Gate::default(),
        }
    }

    /// Logs once per leader when the leader's declared liveness settings differ
    /// from this pod's: each pod is judged by its own declaration, so this is not a
    /// fault, but it is rarely intended.
    fn warn_on_settings(&mut self, pods: &[crate::records::PodRecord], term: Option<&Term>) {
        let me = self.state.pod_id();
        let (Some(term), Some(mine)) = (term, pods.iter().find(|p| p.pod_id == me)) else {
            return;
        };
        let Some(leader) = pods.iter().find(|p| p.pod_id == term.pod_id) else {
            return;
        };
        if leader.pod_id == me || self.warned_settings.as_deref() == Some(leader.pod_id.as_str()) {
            return;
        }
        if leader.dead_after != mine.dead_after
            || leader.heartbeat_interval != mine.heartbeat_interval
        {
            self.warned_settings = Some(leader.pod_id.clone());
            tracing::warn!(
                leader = %leader.pod_id,
                leader_heartbeat_interval_ms = leader.heartbeat_interval.map(|d| d.as_millis() as u64),
                leader_dead_after_ms = leader.dead_after.map(|d| d.as_millis() as u64),
                heartbeat_interval_ms = mine.heartbeat_interval.map(|d| d.as_millis() as u64),
                dead_after_ms = mine.dead_after.map(|d| d.as_millis() as u64),
                "this pod's heartbeat settings differ from the leader's; each pod is judged by its own, but check the fleet's configuration"
            );
        }
    }

    fn publish(&mut self, is_leader: bool, term: Option<Term>) {
        self.state.set_leader(is_leader, term.clone());
        let now = (is_leader, term.clone());
        if self.last.as_ref() != Some(&now) {
            let was = self.last.as_ref().map(|(l, _)| *l).unwrap_or(false);
            IS_LEADER.set(i64::from(is_leader));
            if was != is_leader {
                CHANGES.inc();
                tracing::info!(
                    is_leader,
                    leader = term.as_ref().map_or("none", |t| t.pod_id.as_str()),
                    "leadership changed"
                );
            }
            self.last = Some(now);
            for s in &self.subscribers {
                s.do_send(LeadershipChanged {
                    is_leader,
                    term: term.clone(),
                });
            }
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.checking {
            self.again = true;
            return;
        }
        self.checking = true;
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.storage
            .send(ListPods)
            .into_actor(self)
            .map(|res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.checking = false;
                    match res {
                        Ok(Ok((pods, now))) => {
                            act.state.quiet.observe_store_time(now);
                            act.state.set_election_check(now);
                            act.state.set_pods_seen(pods.clone(), now);
                            let (is_leader, term) = decide(
                                &pods,
                                &act.state.pod_id(),
                                act.state.heartbeat_healthy(),
                                act.cfg.dead_threshold,
                            );
                            act.warn_on_settings(&pods, term.as_ref());
                            act.publish(is_leader, term);
                        }
                        Ok(Err(e)) => {
                            // Without a fresh view we cannot know we still lead.
                            tracing::warn!(error = %e, "leader check failed; not acting as leader");
                            let term = act.state.leader();
                            act.publish(false, term);
                        }
                        Err(e) => tracing::warn!(error = %e, "leader check: storage unavailable"),
                    }
                    if std::mem::take(&mut act.again) {
                        act.check(ctx);
                    } else {
                        act.arm(ctx);
                    }
                });
            })
            .spawn(ctx);
    }
}

impl LeaderElector {
    /// Arms the next check: the check interval, or while quiet no later than
    /// the next wake.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let next = self
            .state
            .quiet
            .wait(jittered(self.cfg.check_interval, 0.1));
        self.timer = Some(ctx.notify_later(Check, next));
    }
}

/// Who leads, and whether that is `me`: the eldest live pod leads, and `me` acts
/// as leader only while its own heartbeat is healthy.
fn decide(
    pods: &[crate::records::PodRecord],
    me: &str,
    my_heartbeat_healthy: bool,
    dead_threshold: Duration,
) -> (bool, Option<Term>) {
    let term = eldest_live_pod(pods, dead_threshold).map(|p| Term {
        pod_id: p.pod_id.clone(),
        birth_ts: p.birth_ts,
    });
    let is_leader = my_heartbeat_healthy && term.as_ref().is_some_and(|t| t.pod_id == me);
    (is_leader, term)
}

impl Actor for LeaderElector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.state.actor_started(Self::NAME);
        self.checking = false;
        self.timer = None;
        self.check(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.actor_stopped(Self::NAME);
    }
}

impl Supervised for LeaderElector {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.checking = false;
        self.timer = None;
    }
}

impl SupervisedActor for LeaderElector {
    const NAME: &'static str = "leader";
    fn pod_state(&self) -> &Arc<PodState> {
        &self.state
    }
}

crate::impl_inject_fault!(LeaderElector);

/// The periodic tick.
#[derive(Message)]
#[rtype(result = "()")]
struct Check;

impl Handler<Check> for LeaderElector {
    type Result = ();
    fn handle(&mut self, _: Check, ctx: &mut Context<Self>) {
        self.timer = None;
        guarded(self, ctx, |act, ctx| {
            if act.gate.open(&act.state.quiet) {
                act.check(ctx)
            } else {
                act.arm(ctx)
            }
        });
    }
}

impl Handler<QuietChanged> for LeaderElector {
    type Result = ();
    fn handle(&mut self, msg: QuietChanged, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            act.gate = Gate::default();
            if msg.quiet {
                // The check that just ran counts for the wake in progress.
                let _ = act.gate.open(&act.state.quiet);
                if !act.checking {
                    act.arm(ctx);
                }
            } else {
                act.check(ctx);
            }
        });
    }
}

impl Handler<HeartbeatHealthChanged> for LeaderElector {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatHealthChanged, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            if !msg.healthy && act.state.is_leader() {
                // Step down at once; the check confirms who leads now.
                let term = act.state.leader();
                act.publish(false, term);
            }
            act.check(ctx);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{PodRecord, PodStatus};
    use chrono::DateTime;

    fn pod(id: &str, birth: i64, age_s: u64) -> PodRecord {
        PodRecord {
            pod_id: id.into(),
            birth_ts: DateTime::from_timestamp(birth, 0).unwrap(),
            last_heartbeat_ts: DateTime::from_timestamp(birth, 0).unwrap(),
            status: PodStatus::Up,
            capacity_in_use: 0,
            max_capacity: 1,
            meta: serde_json::Value::Null,
            heartbeat_age: Duration::from_secs(age_s),
            heartbeat_interval: None,
            dead_after: None,
        }
    }

    #[test]
    fn the_eldest_live_pod_leads_only_with_a_healthy_heartbeat() {
        let t = Duration::from_secs(180);
        let pods = vec![pod("old-dead", 1, 500), pod("me", 5, 1), pod("young", 9, 1)];
        let (lead, term) = decide(&pods, "me", true, t);
        assert!(lead);
        assert_eq!(term.unwrap().pod_id, "me");
        let (lead, term) = decide(&pods, "me", false, t);
        assert!(!lead, "an unhealthy heartbeat never leads");
        assert_eq!(
            term.unwrap().pod_id,
            "me",
            "but others still see it as the term"
        );
        let (lead, _) = decide(&pods, "young", true, t);
        assert!(!lead);
        assert_eq!(decide(&[], "me", true, t), (false, None));
    }
}
