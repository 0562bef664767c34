//! The conformance cases. Each takes a fresh [`Harness`] and panics on a violation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Harness;
use crate::records::{PodStatus, StatusCounts};
use crate::step::{NewStep, RunAt, Step, StepId, StepSpec, StepStatus};
use crate::store::*;

const NO_JITTER: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_millis(30_000),
    jitter: 0.0,
};

/// A retry policy that makes retries due at once.
const IMMEDIATE: Backoff = Backoff {
    base: Duration::ZERO,
    max: Duration::ZERO,
    jitter: 0.0,
};

fn step(t: &str) -> NewStep {
    NewStep::new(StepSpec {
        step_type: t.into(),
        ..Default::default()
    })
    .expect("valid step")
}

fn step_with(f: impl FnOnce(&mut StepSpec)) -> NewStep {
    let mut spec = StepSpec {
        step_type: "noop".into(),
        ..Default::default()
    };
    f(&mut spec);
    NewStep::new(spec).expect("valid step")
}

async fn insert(store: &Arc<dyn Store>, steps: Vec<NewStep>) -> Vec<StepId> {
    store
        .steps_insert(steps)
        .await
        .expect("insert")
        .into_iter()
        .map(|i| i.step_id)
        .collect()
}

async fn claim(store: &Arc<dyn Store>, pod: &str, limit: u32) -> Vec<Step> {
    store
        .steps_claim(ClaimParams {
            pod_id: pod.into(),
            limit,
        })
        .await
        .expect("claim")
}

async fn get(store: &Arc<dyn Store>, id: StepId) -> Step {
    store.step_get(id).await.expect("get").expect("step exists")
}

async fn heartbeat(store: &Arc<dyn Store>, pod: &str) -> crate::PodRecord {
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

async fn finish(store: &Arc<dyn Store>, lease: Lease, outcome: Outcome) -> FencedReport {
    store
        .steps_finish(FinishParams {
            finishes: vec![Finish { lease, outcome }],
            backoff: IMMEDIATE,
        })
        .await
        .expect("finish")
}

fn fail(retryable: bool) -> Outcome {
    Outcome::Fail {
        error: "boom".into(),
        retryable,
    }
}

/// Polls `check` until it returns `Some`, or panics after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
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
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stored payloads come back exactly: quotes, backslashes, `$$`, SQL comment and
/// quote tricks, unicode, and a payload just under the 1 MiB limit.
pub async fn payload_round_trip_is_byte_exact(h: Harness) {
    let hostile = [
        "it's \"quoted\"",
        r"back\slash \\ \n \u0000-not-a-nul",
        "$$ dollar $$ quoting $tag$",
        "'; DROP TABLE STEP_TRACKER; --",
        "unicode: żółć 日本語 🚀 \u{202e}rtl",
        "",
    ];
    let mut ids = Vec::new();
    let mut wanted = Vec::new();
    for (i, s) in hostile.iter().enumerate() {
        let args = json!({ "s": s, "n": i, "nested": { "k'ey": [s, 1.5, null, true] } });
        let metadata = json!({ "m\"": s });
        let ns = step_with(|spec| {
            spec.step_type = format!("t-{i} ${{}}'\"");
            spec.args = Some(args.clone());
            spec.metadata = Some(metadata.clone());
        });
        wanted.push((ns.step_id(), ns.payload().clone()));
        ids.push(ns);
    }
    // Each repeat serializes to 7 bytes (`x\"\\'$`): land just under the 1 MiB limit.
    let big = "x\"\\'$".repeat((1024 * 1024 - 200) / 7);
    let big_step = step_with(|s| s.args = Some(json!({ "big": big })));
    assert!(big_step.payload_json().len() > 1024 * 1024 - 300);
    wanted.push((big_step.step_id(), big_step.payload().clone()));
    ids.push(big_step);
    insert(&h.a, ids).await;
    for (id, payload) in &wanted {
        let got = get(&h.b, *id).await;
        assert_eq!(
            &got.payload, payload,
            "payload of {id} changed in the store"
        );
        assert_eq!(got.payload.to_json(), payload.to_json());
    }
    // Claimed steps carry the same payload, byte for byte.
    let claimed = claim(&h.a, "pod-a", 100).await;
    assert_eq!(claimed.len(), hostile.len() + 1);
    for s in &claimed {
        let (_, payload) = wanted
            .iter()
            .find(|(id, _)| *id == s.step_id)
            .expect("a claimed step was inserted here");
        assert_eq!(
            &s.payload, payload,
            "the claim changed {}'s payload",
            s.step_id
        );
        assert_eq!(s.payload.to_json(), payload.to_json());
    }
}

/// Initialising the schema again changes nothing and loses nothing.
pub async fn schema_init_twice(h: Harness) {
    let ids = insert(&h.a, vec![step("noop")]).await;
    h.a.schema_init().await.expect("second init");
    h.b.schema_init()
        .await
        .expect("third init from another handle");
    assert_eq!(get(&h.a, ids[0]).await.status, StepStatus::Pending);
}

/// Inserting many answers in input order, with store-clock timestamps.
pub async fn insert_answers_in_order_with_store_times(h: Harness) {
    let before = h.a.now().await.unwrap();
    let steps: Vec<NewStep> = (0..50).map(|_| step("noop")).collect();
    let want: Vec<StepId> = steps.iter().map(|s| s.step_id()).collect();
    let got = h.a.steps_insert(steps).await.unwrap();
    assert_eq!(got.iter().map(|i| i.step_id).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|i| i.created));
    let after = h.a.now().await.unwrap();
    let s = get(&h.a, want[0]).await;
    assert_eq!(s.status, StepStatus::Pending);
    assert_eq!((s.attempt, s.retry_count), (0, 0));
    assert!(s.claimed_by.is_none());
    assert!(s.created_ts >= before && s.created_ts <= after);
    assert!(s.run_at >= before && s.run_at <= after);
    assert!(h.a.steps_insert(vec![]).await.unwrap().is_empty());
    assert!(h.a.step_get(StepId::generate()).await.unwrap().is_none());
}

/// Eight concurrent claimers over two handles: every step is claimed exactly once.
pub async fn exclusive_claims_with_concurrent_claimers(h: Harness) {
    const N: usize = 400;
    for chunk in 0..4 {
        let steps = (0..N / 4)
            .map(|i| step(&format!("t{}", (chunk + i) % 3)))
            .collect();
        insert(&h.a, steps).await;
    }
    let mut tasks = Vec::new();
    for c in 0..8 {
        let store = if c % 2 == 0 { h.a.clone() } else { h.b.clone() };
        tasks.push(tokio::spawn(async move {
            let pod = format!("pod-{c}");
            let mut mine = Vec::new();
            loop {
                let got = store
                    .steps_claim(ClaimParams {
                        pod_id: pod.clone(),
                        limit: 7,
                    })
                    .await
                    .expect("claim");
                if got.is_empty() {
                    break;
                }
                for s in &got {
                    assert_eq!(s.status, StepStatus::Claimed);
                    assert_eq!(s.claimed_by.as_deref(), Some(pod.as_str()));
                    assert_eq!(s.attempt, 1);
                }
                mine.extend(got.into_iter().map(|s| s.step_id));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "step {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), N, "every step claimed once");
    assert_eq!(h.a.queue_stats().await.unwrap().counts.claimed, N as u64);
}

/// Claims come in `priority DESC, created_ts ASC` order.
pub async fn claim_order_priority_then_age(h: Harness) {
    let mut expected: Vec<(i32, StepId)> = Vec::new();
    for p in [0, 5, -3, 5, 1000, 0, -1000] {
        let ns = step_with(|s| s.priority = Some(p));
        expected.push((p, ns.step_id()));
        insert(&h.a, vec![ns]).await;
    }
    // Stable sort: equal priorities keep insertion (creation) order.
    expected.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    let mut got = Vec::new();
    loop {
        let c = claim(&h.a, "pod-a", 2).await;
        if c.is_empty() {
            break;
        }
        got.extend(c.into_iter().map(|s| (s.priority, s.step_id)));
    }
    assert_eq!(got, expected);
}

/// Steps are not claimable before `run_at`.
pub async fn claim_respects_run_at(h: Harness) {
    let later = step_with(|s| s.run_at = RunAt::After(Duration::from_secs(3600)));
    let later_id = later.step_id();
    // Seconds, not milliseconds: the first claim below must come before this is
    // due, also against a slow store (the Python emulator).
    let soon = step_with(|s| s.run_at = RunAt::After(Duration::from_secs(3)));
    let soon_id = soon.step_id();
    let past = step_with(|s| {
        s.run_at = RunAt::At(chrono::Utc::now() - chrono::Duration::seconds(60));
        s.priority = Some(-5)
    });
    let now_step = step("noop");
    let now_id = now_step.step_id();
    let past_id = past.step_id();
    insert(&h.a, vec![later, soon, past, now_step]).await;
    let first: Vec<StepId> = claim(&h.a, "p", 10)
        .await
        .iter()
        .map(|s| s.step_id)
        .collect();
    assert_eq!(
        first,
        vec![now_id, past_id],
        "only due steps, priority order"
    );
    let s = get(&h.a, later_id).await;
    let delay = s.run_at - s.created_ts;
    assert!(delay >= chrono::Duration::seconds(3599) && delay <= chrono::Duration::seconds(3601));
    let got = wait_for(
        "the delayed step to become due",
        Duration::from_secs(30),
        || {
            let store = h.a.clone();
            async move {
                let c = claim(&store, "p", 10).await;
                (!c.is_empty()).then_some(c)
            }
        },
    )
    .await;
    assert_eq!(
        got.iter().map(|s| s.step_id).collect::<Vec<_>>(),
        vec![soon_id]
    );
    assert_eq!(get(&h.a, later_id).await.status, StepStatus::Pending);
}

/// A stale pod or a stale attempt can neither complete, fail nor release.
pub async fn fencing_rejects_stale_pod_and_stale_attempt(h: Harness) {
    insert(&h.a, vec![step("noop")]).await;
    let s = claim(&h.a, "pod-a", 1).await.remove(0);
    let lease = Lease::of(&s).unwrap();
    let wrong_pod = Lease {
        pod_id: "pod-b".into(),
        ..lease.clone()
    };
    let wrong_attempt = Lease {
        attempt: lease.attempt + 1,
        ..lease.clone()
    };
    let old_attempt = Lease {
        attempt: lease.attempt - 1,
        ..lease.clone()
    };
    for bad in [&wrong_pod, &wrong_attempt, &old_attempt] {
        for outcome in [
            Outcome::Complete { result: json!(1) },
            fail(true),
            fail(false),
        ] {
            let r = finish(&h.b, bad.clone(), outcome).await;
            assert!(r.applied.is_empty());
            assert_eq!(r.rejected, vec![bad.clone()]);
        }
        let r = h.b.steps_release(vec![bad.clone()]).await.unwrap();
        assert_eq!(r.rejected, vec![bad.clone()]);
    }
    let unchanged = get(&h.a, s.step_id).await;
    assert_eq!(unchanged, s, "rejected transitions changed nothing");

    // After a requeue the old holder's lease is stale even though it names the
    // same pod: a new claim bumps the attempt.
    h.a.steps_release(vec![lease.clone()]).await.unwrap();
    let again = claim(&h.a, "pod-a", 1).await.remove(0);
    assert_eq!(again.attempt, lease.attempt + 1);
    let r = finish(&h.a, lease.clone(), Outcome::Complete { result: json!(1) }).await;
    assert_eq!(r.rejected, vec![lease]);
    // Finished steps reject every further transition.
    let new_lease = Lease::of(&again).unwrap();
    let ok = finish(
        &h.a,
        new_lease.clone(),
        Outcome::Complete { result: json!(2) },
    )
    .await;
    assert_eq!(ok.applied, vec![(again.step_id, StepStatus::Completed)]);
    let r = finish(&h.a, new_lease.clone(), fail(true)).await;
    assert_eq!(r.rejected, vec![new_lease.clone()]);
    let r = h.a.steps_release(vec![new_lease]).await.unwrap();
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(get(&h.a, again.step_id).await.result, Some(json!(2)));
}

/// Completion stores the result and keeps the holder.
pub async fn complete_stores_result(h: Harness) {
    insert(&h.a, vec![step("noop"), step("noop")]).await;
    let claimed = claim(&h.a, "pod-a", 2).await;
    let result = json!({"ok": true, "text": "it's \"done\" \\ $$"});
    let finishes = claimed
        .iter()
        .map(|s| Finish {
            lease: Lease::of(s).unwrap(),
            outcome: Outcome::Complete {
                result: result.clone(),
            },
        })
        .collect();
    let r =
        h.a.steps_finish(FinishParams {
            finishes,
            backoff: NO_JITTER,
        })
        .await
        .unwrap();
    assert_eq!(r.applied.len(), 2);
    assert!(r.rejected.is_empty());
    for s in claimed {
        let done = get(&h.b, s.step_id).await;
        assert_eq!(done.status, StepStatus::Completed);
        assert_eq!(done.result, Some(result.clone()));
        assert_eq!(done.claimed_by.as_deref(), Some("pod-a"));
        assert!(done.last_update_ts >= s.last_update_ts);
    }
}

/// Retryable failures back off exponentially (by store time) and happen exactly
/// `max_retries` times before the step fails with its last error kept.
pub async fn retry_backoff_and_exact_max_retries(h: Harness) {
    let ns = step_with(|s| s.max_retries = Some(3));
    let id = ns.step_id();
    insert(&h.a, vec![ns]).await;
    let backoff = Backoff {
        base: Duration::from_millis(400),
        max: Duration::from_millis(700),
        jitter: 0.0,
    };
    let mut runs = 0;
    for retry in 0..=3u32 {
        let s = wait_for("the retry to become due", Duration::from_secs(20), || {
            let store = h.a.clone();
            async move { claim(&store, "pod-a", 1).await.pop() }
        })
        .await;
        runs += 1;
        assert_eq!((s.retry_count, s.attempt), (retry, retry + 1));
        let r =
            h.a.steps_finish(FinishParams {
                finishes: vec![Finish {
                    lease: Lease::of(&s).unwrap(),
                    outcome: Outcome::Fail {
                        error: format!("err {retry}"),
                        retryable: true,
                    },
                }],
                backoff,
            })
            .await
            .unwrap();
        let after = get(&h.a, id).await;
        assert_eq!(after.last_error, Some(format!("err {retry}")));
        if retry < 3 {
            assert_eq!(r.applied, vec![(id, StepStatus::Pending)]);
            assert_eq!(after.status, StepStatus::Pending);
            assert_eq!(after.retry_count, retry + 1);
            assert!(after.claimed_by.is_none());
            let want = chrono::Duration::from_std(backoff.delay(retry)).unwrap();
            let got = after.run_at - after.last_update_ts;
            assert!(
                (got - want).num_milliseconds().abs() <= 2,
                "retry {retry}: run_at is {got} after the failure, wanted {want}"
            );
            // Anything claimed now must already be due by the store's clock.
            let early = claim(&h.a, "pod-a", 1).await;
            if let Some(e) = early.first() {
                assert!(
                    h.a.now().await.unwrap() >= e.run_at,
                    "claimed before run_at"
                );
                h.a.steps_release(vec![Lease::of(e).unwrap()])
                    .await
                    .unwrap();
            }
        } else {
            assert_eq!(r.applied, vec![(id, StepStatus::Failed)]);
            assert_eq!(after.status, StepStatus::Failed);
            assert_eq!(after.retry_count, 3);
        }
    }
    assert_eq!(runs, 4, "one first run plus exactly max_retries retries");
    assert!(claim(&h.a, "pod-a", 1).await.is_empty());
}

/// A terminal (non-retryable) failure fails at once, whatever retries remain.
pub async fn terminal_failure_skips_retries(h: Harness) {
    insert(&h.a, vec![step_with(|s| s.max_retries = Some(5))]).await;
    let s = claim(&h.a, "pod-a", 1).await.remove(0);
    let r = finish(&h.a, Lease::of(&s).unwrap(), fail(false)).await;
    assert_eq!(r.applied, vec![(s.step_id, StepStatus::Failed)]);
    let after = get(&h.a, s.step_id).await;
    assert_eq!((after.status, after.retry_count), (StepStatus::Failed, 0));
    assert_eq!(after.last_error.as_deref(), Some("boom"));
}

/// Release (graceful shutdown) returns steps to pending without spending a retry.
pub async fn release_spends_no_retry(h: Harness) {
    insert(&h.a, vec![step_with(|s| s.max_retries = Some(0))]).await;
    for attempt in 1..=3 {
        let s = claim(&h.a, "pod-a", 1).await.remove(0);
        assert_eq!(s.attempt, attempt);
        let r =
            h.a.steps_release(vec![Lease::of(&s).unwrap()])
                .await
                .unwrap();
        assert_eq!(r.applied, vec![(s.step_id, StepStatus::Pending)]);
        let after = get(&h.a, s.step_id).await;
        assert_eq!(after.status, StepStatus::Pending);
        assert_eq!(after.retry_count, 0);
        assert!(after.claimed_by.is_none());
    }
}

async fn stale_pod(h: &Harness, pod: &str) -> Duration {
    // Wait (on store state, with a deadline) until `pod`'s heartbeat is measurably
    // old by the store's clock; return an age threshold it has exceeded. A whole
    // second, so that a fresh heartbeat read back through a slow store (the Python
    // emulator) is still well under it.
    let threshold = Duration::from_secs(1);
    let store = h.a.clone();
    let pod = pod.to_string();
    wait_for("a heartbeat to age", Duration::from_secs(10), move || {
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

/// Orphans are claimed steps whose holder is marked down or has no row at all.
/// A holder that is merely late (heartbeat older than any threshold, row still
/// `up`) keeps its claims until a mark-down, fenced on staleness, lands: so a pod
/// whose steps are requeued always finds its row down and rejoins.
pub async fn orphans_found_for_down_and_unknown_pods_only(h: Harness) {
    insert(&h.a, (0..4).map(|_| step("noop")).collect()).await;
    for pod in ["late", "down", "ghost", "live"] {
        if pod != "ghost" {
            heartbeat(&h.a, pod).await;
        }
        claim(&h.a, pod, 1).await;
    }
    h.a.pod_heartbeat(HeartbeatParams {
        pod_id: "down".into(),
        status: PodStatus::Down,
        capacity_in_use: 0,
        max_capacity: 8,
        meta: json!({}),
        ..Default::default()
    })
    .await
    .unwrap();
    let threshold = stale_pod(&h, "late").await;
    heartbeat(&h.a, "live").await;
    let holders = |orphans: Vec<Step>| -> HashSet<String> {
        orphans
            .iter()
            .filter_map(|s| s.claimed_by.clone())
            .collect()
    };
    let orphans =
        h.b.steps_orphaned(OrphanParams {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        holders(orphans),
        ["down", "ghost"].map(String::from).into(),
        "a late pod that is not marked down keeps its claims"
    );
    let dry = OrphanParams {
        limit: 100,
        presumed_down: vec!["late".into(), "o'brien\"; --".into()],
    };
    let orphans = h.b.steps_orphaned(dry).await.unwrap();
    assert_eq!(
        holders(orphans),
        ["late", "down", "ghost"].map(String::from).into(),
        "a dry run sees the steps of the pods it would mark down"
    );
    let marked =
        h.b.pods_mark_down(MarkDownParams {
            pod_ids: vec!["late".into(), "live".into()],
            dead_threshold: threshold,
        })
        .await
        .unwrap();
    assert_eq!(marked, ["late"], "only the stale pod is marked");
    let orphans =
        h.b.steps_orphaned(OrphanParams {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        holders(orphans),
        ["late", "down", "ghost"].map(String::from).into()
    );
    let late = heartbeat(&h.a, "late").await;
    assert_eq!(
        late.status,
        PodStatus::Down,
        "the late pod learns it was marked down"
    );
}

/// `steps_held` lists the claims one pod holds, with their claim times and the
/// store's time, and nothing of other pods or finished steps.
pub async fn steps_held_lists_one_pods_claims(h: Harness) {
    insert(&h.a, (0..3).map(|_| step("noop")).collect()).await;
    let mine = claim(&h.a, "me", 2).await;
    let theirs = claim(&h.a, "them", 1).await;
    assert_eq!((mine.len(), theirs.len()), (2, 1));
    let (held, now) = h.b.steps_held("me", 100).await.unwrap();
    let mut got: Vec<Lease> = held.iter().map(|h| h.lease.clone()).collect();
    got.sort_by_key(|l| l.step_id);
    let mut want: Vec<Lease> = mine.iter().filter_map(Lease::of).collect();
    want.sort_by_key(|l| l.step_id);
    assert_eq!(got, want);
    for h in &held {
        assert!(h.claimed_at <= now, "claim times are store times");
    }
    h.a.steps_finish(FinishParams {
        finishes: vec![Finish {
            lease: Lease::of(&mine[0]).unwrap(),
            outcome: Outcome::Complete { result: json!(1) },
        }],
        backoff: IMMEDIATE,
    })
    .await
    .unwrap();
    let (held, _) = h.b.steps_held("me", 100).await.unwrap();
    assert_eq!(held.len(), 1, "a finished step is no longer held");
    assert!(h.b.steps_held("nobody", 100).await.unwrap().0.is_empty());
}

/// Two leaders requeueing the same orphans at once: each step is requeued once and
/// spends exactly one retry.
pub async fn orphan_requeue_by_two_leaders_is_harmless(h: Harness) {
    insert(&h.a, (0..30).map(|_| step("noop")).collect()).await;
    heartbeat(&h.a, "victim").await;
    let held = claim(&h.a, "victim", 30).await;
    h.a.pods_mark_down(MarkDownParams {
        pod_ids: vec!["victim".into()],
        dead_threshold: Duration::ZERO,
    })
    .await
    .unwrap();
    let params = OrphanParams {
        limit: 1000,
        ..Default::default()
    };
    let seen_a = h.a.steps_orphaned(params.clone()).await.unwrap();
    let seen_b = h.b.steps_orphaned(params.clone()).await.unwrap();
    assert_eq!(seen_a.len(), 30);
    assert_eq!(seen_b.len(), 30);
    let req = |orphans: Vec<Step>| RequeueParams {
        leases: orphans.iter().filter_map(Lease::of).collect(),
        reason: "pod victim presumed dead".into(),
        backoff: IMMEDIATE,
    };
    let (ra, rb) = tokio::join!(
        h.a.steps_requeue_orphaned(req(seen_a)),
        h.b.steps_requeue_orphaned(req(seen_b))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.applied.len() + rb.applied.len(),
        30,
        "each requeued once"
    );
    assert_eq!(ra.rejected.len() + rb.rejected.len(), 30, "the rest fenced");
    for s in held {
        let after = get(&h.a, s.step_id).await;
        assert_eq!(after.status, StepStatus::Pending);
        assert_eq!(after.retry_count, 1);
        assert!(after.last_error.unwrap().contains("presumed dead"));
    }
    assert!(h.a.steps_orphaned(params).await.unwrap().is_empty());
}

/// Requeueing an orphan spends a retry; with none left the step fails.
pub async fn orphan_requeue_spends_retries_then_fails(h: Harness) {
    let ns = step_with(|s| s.max_retries = Some(1));
    let id = ns.step_id();
    insert(&h.a, vec![ns]).await;
    for (pod, want) in [("p1", StepStatus::Pending), ("p2", StepStatus::Failed)] {
        claim(&h.a, pod, 1).await;
        h.a.pod_heartbeat(HeartbeatParams {
            pod_id: pod.into(),
            status: PodStatus::Down,
            capacity_in_use: 0,
            max_capacity: 1,
            meta: Value::Null,
            ..Default::default()
        })
        .await
        .unwrap();
        let orphans =
            h.a.steps_orphaned(OrphanParams {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let r =
            h.a.steps_requeue_orphaned(RequeueParams {
                leases: orphans.iter().filter_map(Lease::of).collect(),
                reason: format!("pod {pod} died"),
                backoff: IMMEDIATE,
            })
            .await
            .unwrap();
        assert_eq!(r.applied, vec![(id, want)]);
    }
    let s = get(&h.a, id).await;
    assert_eq!((s.status, s.retry_count), (StepStatus::Failed, 1));
    assert_eq!(s.last_error.as_deref(), Some("pod p2 died"));
}

/// Heartbeats keep the birth time, and ages are measured by the store's clock.
pub async fn heartbeat_keeps_birth_and_ages_by_store_time(h: Harness) {
    let first = heartbeat(&h.a, "pod-a").await;
    assert_eq!(first.status, PodStatus::Up);
    assert_eq!(first.birth_ts, first.last_heartbeat_ts);
    let threshold = stale_pod(&h, "pod-a").await;
    let pods = h.b.pods_list().await.unwrap();
    let p = pods.iter().find(|p| p.pod_id == "pod-a").unwrap();
    assert!(!p.is_alive(threshold));
    assert!(p.is_alive(Duration::from_secs(3600)));
    let second =
        h.b.pod_heartbeat(HeartbeatParams {
            pod_id: "pod-a".into(),
            status: PodStatus::Up,
            capacity_in_use: 3,
            max_capacity: 8,
            meta: json!({"version": "x"}),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.birth_ts, first.birth_ts, "birth time kept");
    assert!(second.last_heartbeat_ts > first.last_heartbeat_ts);
    assert_eq!((second.capacity_in_use, second.max_capacity), (3, 8));
    assert_eq!(second.meta, json!({"version": "x"}));
    let pods = h.a.pods_list().await.unwrap();
    let p = pods.iter().find(|p| p.pod_id == "pod-a").unwrap();
    assert!(
        p.heartbeat_age < threshold,
        "fresh again: {:?}",
        p.heartbeat_age
    );
    assert!(p.is_alive(threshold));
}

/// A pod marked down stays down: its heartbeats do not revive it.
pub async fn down_pod_is_not_revived_by_heartbeat(h: Harness) {
    heartbeat(&h.a, "zombie").await;
    let marked =
        h.b.pods_mark_down(MarkDownParams {
            pod_ids: vec!["zombie".into()],
            dead_threshold: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(marked, vec!["zombie".to_string()]);
    let again = heartbeat(&h.a, "zombie").await;
    assert_eq!(
        again.status,
        PodStatus::Down,
        "the pod learns it was marked down"
    );
    let pods = h.a.pods_list().await.unwrap();
    assert_eq!(
        pods.iter().find(|p| p.pod_id == "zombie").unwrap().status,
        PodStatus::Down
    );
}

/// Marking down is fenced on staleness at write time.
pub async fn mark_down_spares_fresh_pods(h: Harness) {
    heartbeat(&h.a, "fresh").await;
    heartbeat(&h.a, "stale").await;
    let threshold = stale_pod(&h, "stale").await;
    heartbeat(&h.a, "fresh").await;
    let marked =
        h.b.pods_mark_down(MarkDownParams {
            pod_ids: vec!["fresh".into(), "stale".into(), "unknown".into()],
            dead_threshold: threshold,
        })
        .await
        .unwrap();
    assert_eq!(marked, vec!["stale".to_string()]);
    let again =
        h.b.pods_mark_down(MarkDownParams {
            pod_ids: vec!["stale".into()],
            dead_threshold: threshold,
        })
        .await
        .unwrap();
    assert!(again.is_empty(), "already down: not marked twice");
}

/// The eldest live pod by store time leads; when it dies the next eldest does.
pub async fn eldest_live_pod_leads(h: Harness) {
    for pod in ["p-old", "p-mid", "p-young"] {
        heartbeat(&h.a, pod).await;
        // Births must differ by the store's clock: wait until it has moved on.
        let born = h.a.now().await.unwrap();
        wait_for("the store clock to advance", Duration::from_secs(5), || {
            let store = h.a.clone();
            async move { (store.now().await.unwrap() > born).then_some(()) }
        })
        .await;
    }
    let pods = h.b.pods_list().await.unwrap();
    let leader = crate::eldest_live_pod(&pods, Duration::from_secs(3600)).unwrap();
    assert_eq!(leader.pod_id, "p-old");
    h.a.pod_heartbeat(HeartbeatParams {
        pod_id: "p-old".into(),
        status: PodStatus::Down,
        capacity_in_use: 0,
        max_capacity: 1,
        meta: Value::Null,
        ..Default::default()
    })
    .await
    .unwrap();
    let pods = h.b.pods_list().await.unwrap();
    let leader = crate::eldest_live_pod(&pods, Duration::from_secs(3600)).unwrap();
    assert_eq!(leader.pod_id, "p-mid");
}

/// Only pending steps can be cancelled; cancelled steps are never claimed.
pub async fn cancel_only_pending(h: Harness) {
    let ids = insert(&h.a, vec![step("noop"), step("noop")]).await;
    assert_eq!(
        h.b.step_cancel(ids[0]).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        h.b.step_cancel(ids[0]).await.unwrap(),
        CancelOutcome::NotPending(StepStatus::Cancelled)
    );
    let s = claim(&h.a, "pod-a", 10).await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].step_id, ids[1]);
    assert_eq!(
        h.b.step_cancel(ids[1]).await.unwrap(),
        CancelOutcome::NotPending(StepStatus::Claimed)
    );
    assert_eq!(get(&h.a, ids[1]).await.status, StepStatus::Claimed);
    assert_eq!(
        h.b.step_cancel(StepId::generate()).await.unwrap(),
        CancelOutcome::NotFound
    );
}

/// A failed step can be retried by an operator with a fresh retry budget.
pub async fn retry_failed_step(h: Harness) {
    let ids = insert(&h.a, vec![step_with(|s| s.max_retries = Some(0))]).await;
    assert_eq!(
        h.a.step_retry(ids[0]).await.unwrap(),
        RetryOutcome::NotFailed(StepStatus::Pending)
    );
    let s = claim(&h.a, "pod-a", 1).await.remove(0);
    finish(&h.a, Lease::of(&s).unwrap(), fail(true)).await;
    assert_eq!(get(&h.a, ids[0]).await.status, StepStatus::Failed);
    assert_eq!(
        h.b.step_retry(ids[0]).await.unwrap(),
        RetryOutcome::Requeued
    );
    let again = claim(&h.a, "pod-b", 1).await.remove(0);
    assert_eq!((again.retry_count, again.attempt), (0, 2));
    assert_eq!(
        h.a.step_retry(StepId::generate()).await.unwrap(),
        RetryOutcome::NotFound
    );
}

/// Failed steps are listed a page at a time in id order.
pub async fn failed_list_pages(h: Harness) {
    let n = 25;
    insert(
        &h.a,
        (0..n)
            .map(|_| step_with(|s| s.max_retries = Some(0)))
            .collect(),
    )
    .await;
    insert(&h.a, vec![step("other")]).await;
    let claimed = claim(&h.a, "pod-a", 100).await;
    let finishes = claimed
        .iter()
        .filter(|s| s.step_type() == "noop")
        .map(|s| Finish {
            lease: Lease::of(s).unwrap(),
            outcome: fail(false),
        })
        .collect();
    h.a.steps_finish(FinishParams {
        finishes,
        backoff: IMMEDIATE,
    })
    .await
    .unwrap();
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page =
            h.b.steps_failed_list(PageParams { limit: 10, after })
                .await
                .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().map(|s| s.step_id);
        all.extend(page);
    }
    assert_eq!(all.len(), n);
    assert!(all.iter().all(|s| s.status == StepStatus::Failed));
    assert!(all.windows(2).all(|w| w[0].step_id < w[1].step_id));
}

/// Concurrent submits with the same idempotency key, through two handles, create
/// one step; every caller gets its id.
pub async fn idempotency_key_dedupe_under_concurrent_submits(h: Harness) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { h.a.clone() } else { h.b.clone() };
        tasks.push(tokio::spawn(async move {
            let ns = step_with(|s| s.idempotency_key = Some("order-42 'x'".into()));
            let other = step_with(|s| s.idempotency_key = Some(format!("unique-{i}")));
            store.steps_insert(vec![ns, other]).await.expect("insert")
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        ids.insert(r[0].step_id);
        created += r[0].created as usize;
        assert!(r[1].created);
    }
    assert_eq!(ids.len(), 1, "one step for one key");
    assert_eq!(created, 1, "exactly one submit created it");
    let stats = h.a.queue_stats().await.unwrap();
    assert_eq!(stats.counts.pending, 17);
    // Within one batch, a repeated key also dedupes.
    let x = step_with(|s| s.idempotency_key = Some("twice".into()));
    let y = step_with(|s| s.idempotency_key = Some("twice".into()));
    let r = h.a.steps_insert(vec![x, y]).await.unwrap();
    assert_eq!(r[0].step_id, r[1].step_id);
    assert!(r[0].created && !r[1].created);
    let id = *ids.iter().next().unwrap();
    assert_eq!(
        get(&h.a, id).await.idempotency_key.as_deref(),
        Some("order-42 'x'")
    );
}

/// Prune deletes only finished steps older than the retention, by store time.
pub async fn prune_deletes_only_old_finished_steps(h: Harness) {
    let ids = insert(&h.a, (0..5).map(|_| step("noop")).collect()).await;
    let claimed = claim(&h.a, "pod-a", 3).await;
    finish(
        &h.a,
        Lease::of(&claimed[0]).unwrap(),
        Outcome::Complete { result: json!(1) },
    )
    .await;
    finish(&h.a, Lease::of(&claimed[1]).unwrap(), fail(false)).await;
    h.a.step_cancel(ids[3]).await.unwrap();
    // Long retention: nothing is old enough.
    let n =
        h.a.steps_prune(PruneParams {
            retention: Duration::from_secs(3600),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Wait until the finished rows are measurably old, then prune with a short one.
    let retention = Duration::from_millis(100);
    let done_at = get(&h.a, ids[3]).await.last_update_ts;
    wait_for("finished steps to age", Duration::from_secs(10), || {
        let store = h.a.clone();
        async move {
            let now = store.now().await.unwrap();
            ((now - done_at).to_std().unwrap_or_default() > retention * 2).then_some(())
        }
    })
    .await;
    let n =
        h.b.steps_prune(PruneParams {
            retention,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(n, 2, "limit respected");
    let n =
        h.b.steps_prune(PruneParams {
            retention,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let left: Vec<StepStatus> = {
        let mut v = Vec::new();
        for id in &ids {
            if let Some(s) = h.a.step_get(*id).await.unwrap() {
                v.push(s.status);
            }
        }
        v
    };
    assert_eq!(left, vec![StepStatus::Claimed, StepStatus::Pending]);
}

/// A prune chunk larger than a backend's internal slice (SQLite deletes 64 rows
/// per writer job) deletes exactly the expired rows even when live rows sit
/// between them in id order, returns its limit while more remain, and leaves
/// the counts exact.
pub async fn prune_chunks_step_over_live_rows(h: Harness) {
    // Interleaved in id order: even steps will finish, odd ones stay pending
    // (a lower priority keeps them out of the claim).
    let steps: Vec<NewStep> = (0..200)
        .map(|i| step_with(|s| s.priority = Some(if i % 2 == 0 { 0 } else { -1 })))
        .collect();
    insert(&h.a, steps).await;
    let claimed = claim(&h.a, "pod-a", 100).await;
    assert_eq!(claimed.len(), 100);
    assert!(claimed.iter().all(|s| s.priority == 0));
    let report =
        h.a.steps_finish(super::finishes(&claimed, 10))
            .await
            .expect("finish");
    assert_eq!(report.applied.len(), 100);
    let retention = Duration::from_millis(100);
    let done_at = get(&h.a, claimed[99].step_id).await.last_update_ts;
    wait_for("finished steps to age", Duration::from_secs(10), || {
        let store = h.a.clone();
        async move {
            let now = store.now().await.unwrap();
            ((now - done_at).to_std().unwrap_or_default() > retention * 2).then_some(())
        }
    })
    .await;
    let prune = |limit| {
        let store = h.b.clone();
        async move {
            store
                .steps_prune(PruneParams { retention, limit })
                .await
                .expect("prune")
        }
    };
    assert_eq!(prune(70).await, 70, "a full chunk while more remain");
    assert_eq!(prune(1000).await, 30, "the rest, then short");
    assert_eq!(prune(1000).await, 0);
    let stats = h.a.queue_stats().await.unwrap();
    assert_eq!(stats.counts.pending, 100);
    assert_eq!(stats.counts.total(), 100, "{stats:?}");
    for s in &claimed {
        assert!(h.a.step_get(s.step_id).await.unwrap().is_none());
    }
}

/// Stats stay exact through every transition (complete, retryable and terminal
/// failure, cancel, release, orphan requeue, manual retry, prune): after each
/// phase the counts by status and by type equal a recount of every step.
pub async fn stats_stay_exact_through_every_transition(h: Harness) {
    let mut ids = Vec::new();
    let mut steps = Vec::new();
    for (i, t) in ["a", "b", "c"].iter().cycle().take(24).enumerate() {
        let s = step_with(|s| {
            s.step_type = (*t).into();
            s.max_retries = Some(u32::from(i % 2 == 0));
        });
        ids.push(s.step_id());
        steps.push(s);
    }
    insert(&h.a, steps).await;
    let check = |phase: &'static str| {
        let (a, b, ids) = (h.a.clone(), h.b.clone(), ids.clone());
        async move {
            let mut want = StatusCounts::default();
            let mut want_by: BTreeMap<String, StatusCounts> = BTreeMap::new();
            for id in &ids {
                if let Some(s) = a.step_get(*id).await.unwrap() {
                    want.add(s.status, 1);
                    want_by
                        .entry(s.step_type().to_string())
                        .or_default()
                        .add(s.status, 1);
                }
            }
            let got = b.queue_stats().await.unwrap();
            assert_eq!(got.counts, want, "{phase}: counts");
            let got_by: BTreeMap<String, StatusCounts> = got
                .by_type
                .into_iter()
                .filter(|(_, c)| c.total() > 0)
                .collect();
            assert_eq!(got_by, want_by, "{phase}: counts by type");
        }
    };
    check("inserted").await;
    let first = claim(&h.a, "p1", 12).await;
    check("claimed").await;
    for (i, s) in first.iter().enumerate() {
        let outcome = match i % 3 {
            0 => Outcome::Complete { result: json!(i) },
            1 => Outcome::Fail {
                error: "retry me".into(),
                retryable: true,
            },
            _ => Outcome::Fail {
                error: "no".into(),
                retryable: false,
            },
        };
        finish(&h.a, Lease::of(s).unwrap(), outcome).await;
    }
    check("finished").await;
    let pending: Vec<StepId> = {
        let mut v = Vec::new();
        for id in &ids {
            if get(&h.a, *id).await.status == StepStatus::Pending {
                v.push(*id);
            }
        }
        v
    };
    for id in pending.iter().take(3) {
        assert_eq!(
            h.a.step_cancel(*id).await.unwrap(),
            CancelOutcome::Cancelled
        );
    }
    check("cancelled").await;
    let second = claim(&h.a, "p2", 6).await;
    h.a.steps_release(second.iter().take(2).filter_map(Lease::of).collect())
        .await
        .unwrap();
    heartbeat(&h.a, "p2").await;
    h.a.pods_mark_down(MarkDownParams {
        pod_ids: vec!["p2".into()],
        dead_threshold: Duration::ZERO,
    })
    .await
    .unwrap();
    let orphans =
        h.a.steps_orphaned(OrphanParams {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    h.a.steps_requeue_orphaned(RequeueParams {
        leases: orphans.iter().filter_map(Lease::of).collect(),
        reason: "gone".into(),
        backoff: IMMEDIATE,
    })
    .await
    .unwrap();
    check("released and requeued").await;
    let failed =
        h.a.steps_failed_list(PageParams {
            limit: 100,
            after: None,
        })
        .await
        .unwrap();
    assert!(!failed.is_empty());
    assert_eq!(
        h.a.step_retry(failed[0].step_id).await.unwrap(),
        RetryOutcome::Requeued
    );
    check("retried by hand").await;
    let pruned =
        h.a.steps_prune(PruneParams {
            retention: Duration::ZERO,
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(pruned > 0);
    check("pruned").await;
}

/// Stats equal a full recount after a random mix of every transition: inserts
/// (keyed duplicates included), claims, completions, retried and terminal
/// failures, releases, cancels, manual retries, orphan requeues and prunes. The
/// seed is printed so a failure can be replayed with `FLEET_Q_TEST_SEED`.
pub async fn stats_match_a_recount_after_random_transitions(h: Harness) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("FLEET_Q_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("stats_match_a_recount_after_random_transitions: FLEET_Q_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ids: Vec<StepId> = Vec::new();
    let mut held: Vec<Step> = Vec::new();
    let types = ["a", "b", "c"];
    for round in 0..40 {
        match rng.random_range(0..10) {
            0 | 1 => {
                let n = rng.random_range(1..6);
                let steps = (0..n)
                    .map(|_| {
                        let t = types[rng.random_range(0..3)];
                        let key = rng
                            .random_bool(0.3)
                            .then(|| format!("k{}", rng.random_range(0..6)));
                        let retries = rng.random_range(0..2);
                        step_with(|s| {
                            s.step_type = t.into();
                            s.idempotency_key = key;
                            s.max_retries = Some(retries);
                        })
                    })
                    .collect();
                ids.extend(insert(&h.a, steps).await);
            }
            2 | 3 => held.extend(claim(&h.a, "p1", rng.random_range(1..5)).await),
            4 | 5 if !held.is_empty() => {
                let s = held.swap_remove(rng.random_range(0..held.len()));
                let outcome = match rng.random_range(0..3) {
                    0 => Outcome::Complete {
                        result: json!(round),
                    },
                    1 => fail(true),
                    _ => fail(false),
                };
                finish(&h.a, Lease::of(&s).unwrap(), outcome).await;
            }
            6 if !held.is_empty() => {
                let s = held.swap_remove(rng.random_range(0..held.len()));
                h.a.steps_release(vec![Lease::of(&s).unwrap()])
                    .await
                    .unwrap();
            }
            7 if !ids.is_empty() => {
                let id = ids[rng.random_range(0..ids.len())];
                let _ = h.a.step_cancel(id).await.unwrap();
                let _ = h.a.step_retry(id).await.unwrap();
                if rng.random_bool(0.5) {
                    let _ = h.a.step_cancel(id).await.unwrap();
                }
            }
            8 if !held.is_empty() => {
                // Requeue what p1 holds as a recovery would.
                let leases: Vec<Lease> = held.drain(..).filter_map(|s| Lease::of(&s)).collect();
                h.a.steps_requeue_orphaned(RequeueParams {
                    leases,
                    reason: "gone".into(),
                    backoff: IMMEDIATE,
                })
                .await
                .unwrap();
            }
            9 => {
                h.a.steps_prune(PruneParams {
                    retention: Duration::ZERO,
                    limit: rng.random_range(1..4),
                })
                .await
                .unwrap();
            }
            _ => {}
        }
        if round % 5 == 4 || round == 39 {
            let mut want = StatusCounts::default();
            let mut want_by: BTreeMap<String, StatusCounts> = BTreeMap::new();
            let unique: HashSet<StepId> = ids.iter().copied().collect();
            for id in unique {
                if let Some(s) = h.a.step_get(id).await.unwrap() {
                    want.add(s.status, 1);
                    want_by
                        .entry(s.step_type().to_string())
                        .or_default()
                        .add(s.status, 1);
                }
            }
            let got = h.b.queue_stats().await.unwrap();
            assert_eq!(got.counts, want, "seed {seed}, round {round}: counts");
            let got_by: BTreeMap<String, StatusCounts> = got
                .by_type
                .into_iter()
                .filter(|(_, c)| c.total() > 0)
                .collect();
            assert_eq!(got_by, want_by, "seed {seed}, round {round}: by type");
        }
    }
}

/// Stats count by status, pending by priority and by type, and age the oldest
/// due pending step by store time.
pub async fn stats_count_by_status_priority_and_type(h: Harness) {
    let empty = h.a.queue_stats().await.unwrap();
    assert_eq!(empty.counts.total(), 0);
    assert!(empty.oldest_pending_age.is_none());
    let mut steps = Vec::new();
    for (t, p, n) in [("email", 5, 3), ("email", 0, 2), ("resize", 0, 4)] {
        for _ in 0..n {
            steps.push(step_with(|s| {
                s.step_type = t.into();
                s.priority = Some(p)
            }));
        }
    }
    steps.push(step_with(|s| {
        s.step_type = "later".into();
        s.run_at = RunAt::After(Duration::from_secs(3600))
    }));
    insert(&h.a, steps).await;
    let claimed = claim(&h.a, "pod-a", 2).await; // the two priority-5 emails first
    finish(
        &h.a,
        Lease::of(&claimed[0]).unwrap(),
        Outcome::Complete { result: json!(1) },
    )
    .await;
    let s = h.b.queue_stats().await.unwrap();
    assert_eq!(s.counts.pending, 8);
    assert_eq!(s.counts.claimed, 1);
    assert_eq!(s.counts.completed, 1);
    assert_eq!(s.counts.total(), 10);
    assert_eq!(
        s.pending_by_priority,
        BTreeMap::from([(0, 7u64), (5, 1u64)])
    );
    let by_type: HashMap<&str, (u64, u64, u64)> = s
        .by_type
        .iter()
        .map(|(k, c)| (k.as_str(), (c.pending, c.claimed, c.completed)))
        .collect();
    assert_eq!(by_type["email"], (3, 1, 1));
    assert_eq!(by_type["resize"], (4, 0, 0));
    assert_eq!(by_type["later"], (1, 0, 0));
    assert!(s.oldest_pending_age.is_some());
    assert!(s.oldest_pending_age.unwrap() < Duration::from_secs(600));
    assert!(s.as_of.is_some());
}

/// Hostile strings in every free-text field are stored and returned verbatim, and
/// the store keeps working afterwards.
pub async fn store_rejects_nothing_valid_and_survives_hostile_strings(h: Harness) {
    let evil = "x'); DELETE FROM STEP_TRACKER; -- $$ \\' \" `";
    let ns = step_with(|s| {
        s.step_type = evil.into();
        s.idempotency_key = Some(evil.into());
        s.args = Some(json!({ evil: evil }));
    });
    let id = ns.step_id();
    insert(&h.a, vec![ns]).await;
    let s = claim(&h.a, evil, 1).await.remove(0);
    assert_eq!(s.claimed_by.as_deref(), Some(evil));
    heartbeat(&h.a, evil).await;
    finish(
        &h.a,
        Lease::of(&s).unwrap(),
        Outcome::Fail {
            error: evil.into(),
            retryable: false,
        },
    )
    .await;
    let got = get(&h.b, id).await;
    assert_eq!(got.step_type(), evil);
    assert_eq!(got.idempotency_key.as_deref(), Some(evil));
    assert_eq!(got.last_error.as_deref(), Some(evil));
    assert_eq!(got.payload.args[evil], json!(evil));
    let pods = h.a.pods_list().await.unwrap();
    assert!(pods.iter().any(|p| p.pod_id == evil));
    assert_eq!(h.a.queue_stats().await.unwrap().counts.failed, 1);
}

/// Each pod is judged by the dead threshold it declared in its own row: a pod that
/// declared a long one is alive (and its claims held) where a pod that declared
/// none is dead by the judge's threshold. A pod marked down reports no capacity.
pub async fn pods_are_judged_by_their_own_declared_threshold(h: Harness) {
    insert(&h.a, (0..2).map(|_| step("noop")).collect()).await;
    for (pod, declared) in [("slow", Some(Duration::from_secs(3600))), ("plain", None)] {
        h.a.pod_heartbeat(HeartbeatParams {
            pod_id: pod.into(),
            capacity_in_use: 1,
            max_capacity: 8,
            heartbeat_interval: declared.map(|d| d / 10),
            dead_after: declared,
            ..Default::default()
        })
        .await
        .unwrap();
        claim(&h.a, pod, 1).await;
    }
    let threshold = stale_pod(&h, "slow").await;
    let threshold = threshold.max(stale_pod(&h, "plain").await);
    let pods = h.b.pods_list().await.unwrap();
    let slow = pods.iter().find(|p| p.pod_id == "slow").unwrap();
    assert_eq!(slow.dead_after, Some(Duration::from_secs(3600)));
    assert_eq!(slow.heartbeat_interval, Some(Duration::from_secs(360)));
    assert!(slow.is_alive(threshold), "judged by its own declaration");
    let plain = pods.iter().find(|p| p.pod_id == "plain").unwrap();
    assert_eq!(plain.dead_after, None);
    assert!(!plain.is_alive(threshold), "judged by the default");
    let orphans =
        h.b.steps_orphaned(OrphanParams {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(orphans.is_empty(), "no holder is marked down yet");
    let marked =
        h.b.pods_mark_down(MarkDownParams {
            pod_ids: vec!["slow".into(), "plain".into()],
            dead_threshold: threshold,
        })
        .await
        .unwrap();
    assert_eq!(marked, ["plain"]);
    let pods = h.a.pods_list().await.unwrap();
    let plain = pods.iter().find(|p| p.pod_id == "plain").unwrap();
    assert_eq!(plain.status, PodStatus::Down);
    assert_eq!(plain.capacity_in_use, 0, "a down pod runs nothing");
    let orphans =
        h.b.steps_orphaned(OrphanParams {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let holders: Vec<_> = orphans
        .iter()
        .filter_map(|s| s.claimed_by.clone())
        .collect();
    assert_eq!(holders, ["plain"]);
}

/// A heartbeat from a new incarnation of a pod id restarts the row's birth time,
/// and the claims the earlier incarnation made become orphans, though the id is
/// alive; the new incarnation's own claims are held.
pub async fn a_new_incarnation_orphans_the_old_ones_claims(h: Harness) {
    insert(&h.a, (0..2).map(|_| step("noop")).collect()).await;
    let beat = |inc: &'static str| HeartbeatParams {
        pod_id: "reused".into(),
        max_capacity: 8,
        incarnation: inc.into(),
        ..Default::default()
    };
    let first = h.a.pod_heartbeat(beat("one")).await.unwrap();
    let old = claim(&h.a, "reused", 1).await;
    assert_eq!(old.len(), 1);
    let again = h.a.pod_heartbeat(beat("one")).await.unwrap();
    assert_eq!(
        again.birth_ts, first.birth_ts,
        "same incarnation, same birth"
    );
    let generous = OrphanParams {
        limit: 10,
        ..Default::default()
    };
    assert!(h
        .b
        .steps_orphaned(generous.clone())
        .await
        .unwrap()
        .is_empty());
    // Let the store's clock pass the claim, then a new run of the id heartbeats.
    let claimed_at = old[0].last_update_ts;
    let store = h.a.clone();
    wait_for(
        "store time to pass the claim",
        Duration::from_secs(10),
        move || {
            let store = store.clone();
            async move { (store.now().await.unwrap() > claimed_at).then_some(()) }
        },
    )
    .await;
    let second = h.b.pod_heartbeat(beat("two")).await.unwrap();
    assert!(second.birth_ts > first.birth_ts, "a new run is born anew");
    let orphans = h.b.steps_orphaned(generous.clone()).await.unwrap();
    assert_eq!(
        orphans.iter().map(|s| s.step_id).collect::<Vec<_>>(),
        [old[0].step_id],
        "the earlier run's claim is an orphan"
    );
    let mine = claim(&h.b, "reused", 1).await;
    assert_eq!(mine.len(), 1);
    let orphans = h.b.steps_orphaned(generous).await.unwrap();
    assert!(
        orphans.iter().all(|s| s.step_id != mine[0].step_id),
        "the new run's claim is held"
    );
}

/// A success clears the error an earlier attempt left: a completed step shows no
/// `last_error`.
pub async fn a_success_clears_the_last_error(h: Harness) {
    let ns = step_with(|s| s.max_retries = Some(2));
    let id = ns.step_id();
    insert(&h.a, vec![ns]).await;
    let first = claim(&h.a, "pod-a", 1).await;
    let r = finish(
        &h.a,
        Lease::of(&first[0]).unwrap(),
        Outcome::Fail {
            error: "boom: requeued by recovery".into(),
            retryable: true,
        },
    )
    .await;
    assert_eq!(r.applied, vec![(id, StepStatus::Pending)]);
    assert_eq!(
        get(&h.b, id).await.last_error.as_deref(),
        Some("boom: requeued by recovery")
    );
    let store = h.a.clone();
    let again = wait_for("the retry to be due", Duration::from_secs(10), move || {
        let store = store.clone();
        async move {
            let s = claim(&store, "pod-a", 1).await;
            (!s.is_empty()).then_some(s)
        }
    })
    .await;
    let r = finish(
        &h.a,
        Lease::of(&again[0]).unwrap(),
        Outcome::Complete { result: json!(1) },
    )
    .await;
    assert_eq!(r.applied, vec![(id, StepStatus::Completed)]);
    let done = get(&h.b, id).await;
    assert_eq!(done.status, StepStatus::Completed);
    assert_eq!(done.last_error, None, "a success clears the last error");
    assert_eq!(done.retry_count, 1);
}
