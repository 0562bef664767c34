//! Admin operations: cancel, manual retry, the failed list, pruning.

use super::*;

/// Only pending steps can be cancelled; cancelled steps are never claimed.
pub(crate) async fn cancel_only_pending(h: Harness) {
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
pub(crate) async fn retry_failed_step(h: Harness) {
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
pub(crate) async fn failed_list_pages(h: Harness) {
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

/// Prune deletes only finished steps older than the retention, by store time.
pub(crate) async fn prune_deletes_only_old_finished_steps(h: Harness) {
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
    wait_aged(&h.a, done_at, retention * 2).await;
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

/// A prune chunk (larger than a backend's internal slice, where it has one)
/// deletes exactly the expired rows even when live rows sit
/// between them in id order, returns its limit while more remain, and leaves
/// the counts exact.
pub(crate) async fn prune_chunks_step_over_live_rows(h: Harness) {
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
        h.a.steps_finish(crate::testkit::finishes(&claimed, 10))
            .await
            .expect("finish");
    assert_eq!(report.applied.len(), 100);
    let retention = Duration::from_millis(100);
    let done_at = get(&h.a, claimed[99].step_id).await.last_update_ts;
    wait_aged(&h.a, done_at, retention * 2).await;
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
