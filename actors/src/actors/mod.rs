//! The six actors of a pod, one file each: configuration with documented defaults,
//! the actor, the messages it owns above their handlers, then its tests.

pub mod claimer;
pub mod executor;
pub mod heartbeat;
pub mod leader;
pub mod recovery;
pub mod storage;

use std::time::Duration;

use crate::supervision::SupervisedActor;

/// The pod's actors by name, in start order: the one list metrics, `/health`,
/// fault injection and the tests use (each name is the actor's
/// [`SupervisedActor::NAME`]).
pub const ACTOR_NAMES: [&str; 6] = [
    storage::StorageActor::NAME,
    heartbeat::HeartbeatActor::NAME,
    leader::LeaderElector::NAME,
    claimer::ClaimerActor::NAME,
    executor::ExecutorPool::NAME,
    recovery::RecoveryActor::NAME,
];

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
