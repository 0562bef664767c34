//! The six actors of a pod, one file each: configuration with documented defaults,
//! the actor, the messages it owns above their handlers, then its tests.
//!
//! The actor modules and their messages are private to the engine: code outside
//! it drives a pod through [`crate::Pod`] and reads it through
//! [`crate::PodState`]. What it may name is re-exported here (actor names) and at
//! the crate root ([`crate::RecoveryError`]).

pub(crate) mod claimer;
pub(crate) mod executor;
pub(crate) mod heartbeat;
pub(crate) mod leader;
pub(crate) mod recovery;
pub(crate) mod storage;

use std::time::Duration;

use crate::supervision::SupervisedActor;

/// The pod's actors by name, in start order: the one list metrics, `/health`,
/// fault injection and the tests use (each name is the actor's
/// [`SupervisedActor::NAME`]).
pub const ACTOR_NAMES: [&str; 6] = [STORAGE, HEARTBEAT, LEADER, CLAIMER, EXECUTOR, RECOVERY];

/// The StorageActor's name.
pub const STORAGE: &str = storage::StorageActor::NAME;
/// The HeartbeatActor's name.
pub const HEARTBEAT: &str = heartbeat::HeartbeatActor::NAME;
/// The LeaderElector's name.
pub const LEADER: &str = leader::LeaderElector::NAME;
/// The ClaimerActor's name.
pub const CLAIMER: &str = claimer::ClaimerActor::NAME;
/// The ExecutorPool's name.
pub const EXECUTOR: &str = executor::ExecutorPool::NAME;
/// The RecoveryActor's name.
pub const RECOVERY: &str = recovery::RecoveryActor::NAME;

/// `d` shortened or lengthened by up to `frac` at random, so that pods started
/// together do not beat in lockstep.
pub(crate) fn jittered(d: Duration, frac: f64) -> Duration {
    let f = 1.0 + frac * (rand::random::<f64>() * 2.0 - 1.0);
    d.mul_f64(f.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::jittered;
    use std::time::Duration;

    #[test]
    fn jitter_stays_within_its_fraction() {
        let d = Duration::from_secs(10);
        for _ in 0..1000 {
            let j = jittered(d, 0.1);
            assert!(
                j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
                "{j:?}"
            );
        }
    }
}
