//! The conformance cases, by area. Each takes a fresh [`Harness`] and panics on
//! a violation. Cases are crate-private and reach the suite only through the
//! one list in [`crate::conformance_suite!`], which also builds [`registry`]:
//! a case left out of the list is unused, which fails the build (`dead_code`
//! under `-D warnings`), and a listed case that does not exist does not compile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Harness;
use crate::records::{PodStatus, StatusCounts};
use crate::step::{NewStep, RunAt, Step, StepId, StepSpec, StepStatus};
use crate::store::*;

pub(super) const NO_JITTER: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_millis(30_000),
    jitter: 0.0,
};

/// A retry policy that makes retries due at once.
pub(super) const IMMEDIATE: Backoff = Backoff {
    base: Duration::ZERO,
    max: Duration::ZERO,
    jitter: 0.0,
};

pub(super) use super::step;

pub(super) fn step_with(f: impl FnOnce(&mut StepSpec)) -> NewStep {
    let mut spec = StepSpec {
        step_type: "noop".into(),
        ..Default::default()
    };
    f(&mut spec);
    NewStep::new(spec).expect("valid step")
}

pub(super) async fn insert(store: &Arc<dyn Store>, steps: Vec<NewStep>) -> Vec<StepId> {
    store
        .steps_insert(steps)
        .await
        .expect("insert")
        .into_iter()
        .map(|i| i.step_id)
        .collect()
}

pub(super) async fn claim(store: &Arc<dyn Store>, pod: &str, limit: u32) -> Vec<Step> {
    store
        .steps_claim(ClaimParams {
            pod_id: pod.into(),
            limit,
            queues: None,
        })
        .await
        .expect("claim")
}

pub(super) async fn get(store: &Arc<dyn Store>, id: StepId) -> Step {
    store.step_get(id).await.expect("get").expect("step exists")
}

pub(super) async fn heartbeat(store: &Arc<dyn Store>, pod: &str) -> crate::PodRecord {
    store
        .pod_heartbeat(HeartbeatParams {
            pod_id: pod.into(),
            status: PodStatus::Up,
            capacity_in_use: 0,
            max_capacity: 8,
            meta: json!({}),
            ..Default::default()
        })
        .await
        .expect("heartbeat")
}

pub(super) async fn finish(store: &Arc<dyn Store>, lease: Lease, outcome: Outcome) -> FencedReport {
    store
        .steps_finish(FinishParams {
            finishes: vec![Finish { lease, outcome }],
            backoff: IMMEDIATE,
        })
        .await
        .expect("finish")
}

pub(super) fn fail(retryable: bool) -> Outcome {
    Outcome::Fail {
        error: "boom".into(),
        retryable,
    }
}

/// Polls `check` until it returns `Some`, or panics after `limit`.
pub(super) async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval (deadline above)
    }
}

pub(super) async fn stale_pod(h: &Harness, pod: &str) -> Duration {
    // Wait (on store state, with a deadline) until `pod`'s heartbeat is measurably
    // old by the store's clock; return an age threshold it has exceeded. Three
    // seconds, so that a fresh heartbeat followed by a mark-down through a slow
    // store (the Python emulator on a loaded 2-core machine: one second was seen
    // to pass between the two) is still well under it.
    let threshold = Duration::from_secs(3);
    let store = h.a.clone();
    let pod = pod.to_string();
    wait_for("a heartbeat to age", Duration::from_secs(20), move || {
        let store = store.clone();
        let pod = pod.clone();
        async move {
            let pods = store.pods_list().await.unwrap();
            let p = pods.iter().find(|p| p.pod_id == pod)?;
            (p.heartbeat_age > threshold).then_some(())
        }
    })
    .await;
    threshold
}

mod admin;
mod claim;
mod fencing;
mod pods;
mod queues;
mod recovery;
mod retry;
mod schedules;
mod search;
mod stats;
mod submit;

/// A case, boxed so the registry can hold them all.
pub type Case = fn(Harness) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

crate::conformance_suite!(@list (@registry));

/// Waits until more than `age` has passed on the store's clock since `since`.
pub(super) async fn wait_aged(
    store: &Arc<dyn Store>,
    since: chrono::DateTime<chrono::Utc>,
    age: Duration,
) {
    wait_for("finished steps to age", Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            let now = store.now().await.unwrap();
            ((now - since).to_std().unwrap_or_default() > age).then_some(())
        }
    })
    .await;
}
