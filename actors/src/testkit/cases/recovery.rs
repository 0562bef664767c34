//! Recovery: orphans of dead, down and replaced pods, and requeueing them.

use super::*;

/// Orphans are claimed steps whose holder is marked down or has no row at all.
/// A holder that is merely late (heartbeat older than any threshold, row still
/// `up`) keeps its claims until a mark-down, fenced on staleness, lands: so a pod
/// whose steps are requeued always finds its row down and rejoins.
pub(crate) async fn orphans_found_for_down_and_unknown_pods_only(h: Harness) {
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
pub(crate) async fn steps_held_lists_one_pods_claims(h: Harness) {
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
pub(crate) async fn orphan_requeue_by_two_leaders_is_harmless(h: Harness) {
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
pub(crate) async fn orphan_requeue_spends_retries_then_fails(h: Harness) {
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

/// A heartbeat from a new incarnation of a pod id restarts the row's birth time,
/// and the claims the earlier incarnation made become orphans, though the id is
/// alive; the new incarnation's own claims are held.
pub(crate) async fn a_new_incarnation_orphans_the_old_ones_claims(h: Harness) {
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
