//! What the store benchmarks share: validated `noop` steps and one
//! claim-and-complete round through the real SQLite store.

#![allow(dead_code)] // each bench uses its own part of this file

use fleet_q::storage::sqlite::SqliteStore;
use fleet_q_actors::{ClaimParams, NewStep, StepSpec, Store};

/// `n` validated `noop` steps, each with a small `args`.
pub fn noop_steps(n: usize) -> Vec<NewStep> {
    (0..n)
        .map(|i| {
            NewStep::new(StepSpec {
                step_type: "noop".into(),
                args: Some(serde_json::json!({ "n": i })),
                ..Default::default()
            })
            .expect("valid")
        })
        .collect()
}

/// `n` validated `noop` steps spread round-robin over `queues`.
pub fn noop_steps_in(n: usize, queues: &[&str]) -> Vec<NewStep> {
    (0..n)
        .map(|i| {
            NewStep::new(StepSpec {
                step_type: "noop".into(),
                args: Some(serde_json::json!({ "n": i })),
                queue: Some(queues[i % queues.len()].to_string()),
                ..Default::default()
            })
            .expect("valid")
        })
        .collect()
}

/// Claims up to `batch` steps and completes them all in one call; returns how
/// many completed (concurrent callers may take each other's steps).
pub async fn claim_complete(store: &SqliteStore, batch: usize) -> usize {
    let claimed = store
        .steps_claim(ClaimParams {
            pod_id: "bench".into(),
            limit: batch as u32,
            queues: None,
        })
        .await
        .expect("claim");
    if claimed.is_empty() {
        return 0;
    }
    let r = store
        .steps_finish(fleet_q_actors::testkit::finishes(&claimed, 0))
        .await
        .expect("finish");
    assert!(r.rejected.is_empty(), "a fresh claim was fenced");
    r.applied.len()
}
