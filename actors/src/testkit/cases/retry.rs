//! Retries: backoff, exactly `max_retries`, terminal failures, releases.

use super::*;

/// Retryable failures back off exponentially (by store time) and happen exactly
/// `max_retries` times before the step fails with its last error kept.
pub(crate) async fn retry_backoff_and_exact_max_retries(h: Harness) {
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
pub(crate) async fn terminal_failure_skips_retries(h: Harness) {
    insert(&h.a, vec![step_with(|s| s.max_retries = Some(5))]).await;
    let s = claim(&h.a, "pod-a", 1).await.remove(0);
    let r = finish(&h.a, Lease::of(&s).unwrap(), fail(false)).await;
    assert_eq!(r.applied, vec![(s.step_id, StepStatus::Failed)]);
    let after = get(&h.a, s.step_id).await;
    assert_eq!((after.status, after.retry_count), (StepStatus::Failed, 0));
    assert_eq!(after.last_error.as_deref(), Some("boom"));
}

/// Release (graceful shutdown) returns steps to pending without spending a retry.
pub(crate) async fn release_spends_no_retry(h: Harness) {
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
