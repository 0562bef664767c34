//! Claiming: exclusivity under concurrency, order, `run_at`.

use super::*;

/// Eight concurrent claimers over two handles: every step is claimed exactly once.
pub(crate) async fn exclusive_claims_with_concurrent_claimers(h: Harness) {
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
                        queues: None,
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
pub(crate) async fn claim_order_priority_then_age(h: Harness) {
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
pub(crate) async fn claim_respects_run_at(h: Harness) {
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
