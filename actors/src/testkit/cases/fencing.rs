//! Fencing: stale pods and attempts are rejected; outcomes are stored.

use super::*;

/// A stale pod or a stale attempt can neither complete, fail nor release.
pub(crate) async fn fencing_rejects_stale_pod_and_stale_attempt(h: Harness) {
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
pub(crate) async fn complete_stores_result(h: Harness) {
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

/// A success clears the error an earlier attempt left: a completed step shows no
/// `last_error`.
pub(crate) async fn a_success_clears_the_last_error(h: Harness) {
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
