//! Events shared by several actors. Commands an actor owns are defined beside it.

use actix::Message;

use crate::state::Term;

/// Leadership of this pod changed (from the [`crate::actors::leader::LeaderElector`]).
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LeadershipChanged {
    /// Whether this pod now leads.
    pub is_leader: bool,
    /// The term now in force, if any pod leads.
    pub term: Option<Term>,
}

/// This pod's own heartbeat became healthy or unhealthy (failing, stale, or the
/// pod was marked down and is rejoining).
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct HeartbeatHealthChanged {
    /// Healthy: the last heartbeat succeeded and is recent.
    pub healthy: bool,
}

/// Why the claimer should look for work now rather than at its next tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimTrigger {
    /// A step was submitted through this pod.
    Submitted,
    /// A slot freed up.
    SlotFreed,
}

/// Something happened that may let the claimer take work now (a submit, a
/// freed slot): it looks at once instead of at its next
/// tick.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct ClaimTriggered(pub ClaimTrigger);

/// This pod went quiet or woke up (from the [`crate::actors::claimer::ClaimerActor`];
/// see [`crate::quiet`]). Actors with periodic store calls re-plan their
/// timers: to the next wake when quiet, to their normal cadence (starting now)
/// when not.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct QuietChanged {
    /// Quiet now.
    pub quiet: bool,
}

/// Asks the heartbeat to declare the normal interval again (leaving quiet):
/// answers once a beat saying so has landed, or with the error of the beat
/// that failed. A pod never claims while its row still declares the quiet
/// interval, so recovery bounds for pods holding claims are unchanged.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), crate::store::StoreError>")]
pub struct Rouse;
