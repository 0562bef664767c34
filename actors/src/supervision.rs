//! Fault isolation for actors, as actix really behaves.
//!
//! An actix [`actix::Supervisor`] restarts an actor only when the actor *stops*; a
//! panic inside a handler instead unwinds out of the actor's task and kills it
//! silently, leaving an address whose messages go nowhere. So every handler body
//! (and every continuation of an actor's own futures) runs inside [`guarded`], which
//! catches the panic, records the fault and stops the actor; the supervisor then
//! calls [`actix::Supervised::restarting`] and starts the same actor again behind the
//! same address. Fatal (non-retryable) errors in an actor's own work take the same
//! path through [`SupervisedActor::fault`].
//!
//! Restarts are budgeted ([`RestartBudget`], default 5 within 30 s across the pod):
//! past the budget the pod is not healthy enough to keep running, so the actix system
//! stops with exit code [`EXIT_RESTART_BUDGET`] and the orchestrator replaces the
//! process.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Context, Supervised};
use serde::Serialize;

use crate::state::PodState;

/// Actor restarts, by actor.
pub(crate) static RESTARTS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        crate::metrics::counter_vec(
            "fleet_q_actor_restarts_total",
            "Actor restarts after a panic or fatal error, by actor.",
            &["actor"],
        )
    });

/// Process exit code when the restart budget is exhausted.
pub const EXIT_RESTART_BUDGET: i32 = 70;

/// Restarts allowed within a window, across all of a pod's actors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartBudget {
    /// Restarts allowed in the window (default 5).
    pub max_restarts: u32,
    /// The window (default 30 s).
    pub window: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        RestartBudget {
            max_restarts: 5,
            window: Duration::from_secs(30),
        }
    }
}

/// Sliding-window accounting of restarts.
#[derive(Debug)]
pub(crate) struct RestartWindow {
    budget: RestartBudget,
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    pub(crate) fn new(budget: RestartBudget) -> Self {
        RestartWindow {
            budget,
            recent: VecDeque::new(),
        }
    }

    /// Records one restart at `now`; false once the budget is exceeded.
    pub(crate) fn record(&mut self, now: Instant) -> bool {
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.budget.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() as u32 <= self.budget.max_restarts
    }
}

/// Lifecycle of one actor as `/health` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    /// Started and handling messages.
    Running,
    /// Stopped after a fault; the supervisor is starting it again.
    Restarting,
    /// Stopped for good (shutdown).
    Stopped,
}

/// One actor's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActorStatus {
    /// Lifecycle state.
    pub state: ActorState,
    /// Restarts since the pod started.
    pub restarts: u32,
    /// The last fault, if any.
    pub last_fault: Option<String>,
}

/// An actor run under fleet-q's supervision.
pub trait SupervisedActor: Actor<Context = Context<Self>> + Supervised {
    /// Name shown in `/health`, logs and metrics.
    const NAME: &'static str;

    /// The pod's shared state (restart accounting lives there).
    fn pod_state(&self) -> &Arc<PodState>;

    /// Records a fault and stops the actor so its supervisor restarts it.
    fn fault(&mut self, ctx: &mut Context<Self>, why: String) {
        tracing::error!(actor = Self::NAME, fault = %why, "actor fault; restarting the actor");
        self.pod_state().record_fault(Self::NAME, why);
        ctx.stop();
    }
}

/// Text of a caught panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Runs `f` for `act`, turning a panic into a supervised restart. Returns `None`
/// when `f` panicked.
pub fn guarded<A, R>(
    act: &mut A,
    ctx: &mut Context<A>,
    f: impl FnOnce(&mut A, &mut Context<A>) -> R,
) -> Option<R>
where
    A: SupervisedActor,
{
    match catch_unwind(AssertUnwindSafe(|| f(act, ctx))) {
        Ok(r) => Some(r),
        Err(p) => {
            let why = format!("panic: {}", panic_message(p.as_ref()));
            act.fault(ctx, why);
            None
        }
    }
}

/// Whether fault injection is compiled in (feature `failpoints`: test builds only).
pub const FAILPOINTS_ENABLED: bool = cfg!(feature = "failpoints");

/// A fault to inject into an actor (only effective with feature `failpoints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Panic inside the actor's handler.
    Panic,
    /// A fatal error reported by the actor.
    Fatal,
}

/// Injects a fault into the receiving actor (feature `failpoints`, tests only).
#[cfg(feature = "failpoints")]
#[derive(actix::Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct InjectFault(pub FaultKind);

/// Implements the `InjectFault` handler for an actor (feature `failpoints`).
#[macro_export]
#[doc(hidden)]
macro_rules! impl_inject_fault {
    ($actor:ty) => {
        #[cfg(feature = "failpoints")]
        impl actix::Handler<$crate::supervision::InjectFault> for $actor {
            type Result = ();
            fn handle(
                &mut self,
                msg: $crate::supervision::InjectFault,
                ctx: &mut actix::Context<Self>,
            ) {
                match msg.0 {
                    $crate::supervision::FaultKind::Panic => {
                        $crate::supervision::guarded(self, ctx, |_, _| panic!("injected panic"));
                    }
                    $crate::supervision::FaultKind::Fatal => {
                        <Self as $crate::supervision::SupervisedActor>::fault(
                            self,
                            ctx,
                            "injected fatal error".into(),
                        )
                    }
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_max_restarts_per_window() {
        let mut l = RestartWindow::new(RestartBudget {
            max_restarts: 2,
            window: Duration::from_secs(30),
        });
        let t = Instant::now();
        assert!(l.record(t));
        assert!(l.record(t + Duration::from_secs(1)));
        assert!(!l.record(t + Duration::from_secs(2)));
        // Old restarts leave the window.
        let mut l = RestartWindow::new(RestartBudget {
            max_restarts: 2,
            window: Duration::from_secs(30),
        });
        assert!(l.record(t));
        assert!(l.record(t + Duration::from_secs(1)));
        assert!(l.record(t + Duration::from_secs(40)));
    }

    #[test]
    fn panic_messages_are_read() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "static");
    }
}
