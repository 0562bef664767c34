//! Statistics: exact counts through every transition.

use super::*;

/// Stats stay exact through every transition (complete, retryable and terminal
/// failure, cancel, release, orphan requeue, manual retry, prune): after each
/// phase the counts by status and by type equal a recount of every step.
pub(crate) async fn stats_stay_exact_through_every_transition(h: Harness) {
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
pub(crate) async fn stats_match_a_recount_after_random_transitions(h: Harness) {
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
pub(crate) async fn stats_count_by_status_priority_and_type(h: Harness) {
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
