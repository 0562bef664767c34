//! Queues: pause, fleet-wide concurrency, serving a subset, fairness, and
//! queues made on first use (`crate::queue`).

use super::*;
use crate::queue::{QueueSettings, DEFAULT_QUEUE};
use crate::step::DEFAULT_MAX_RETRIES;

fn in_queue(q: &str) -> NewStep {
    step_with(|s| s.queue = Some(q.into()))
}

async fn claim_from(
    store: &Arc<dyn Store>,
    pod: &str,
    limit: u32,
    only: Option<&[&str]>,
) -> Vec<Step> {
    store
        .steps_claim(ClaimParams {
            pod_id: pod.into(),
            limit,
            queues: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
        })
        .await
        .expect("claim")
}

async fn put(store: &Arc<dyn Store>, name: &str, paused: bool, max: Option<u32>) {
    store
        .queue_put(QueueSettings {
            paused,
            max_concurrency: max,
            ..QueueSettings::new(name)
        })
        .await
        .expect("queue_put");
}

/// A submit to a new queue makes it (running, no limit); steps carry their
/// queue; the list shows live counts per queue.
pub(crate) async fn queues_are_made_on_first_use_and_listed(h: Harness) {
    let ids = insert(&h.a, vec![in_queue("mail"), in_queue("mail"), step("noop")]).await;
    assert_eq!(get(&h.b, ids[0]).await.queue, "mail");
    assert_eq!(get(&h.b, ids[2]).await.queue, DEFAULT_QUEUE);
    claim_from(&h.a, "pod-a", 1, Some(&["mail"])).await;
    let list = h.b.queues_list().await.unwrap();
    let mail = list
        .iter()
        .find(|q| q.settings.name == "mail")
        .expect("mail listed");
    assert_eq!((mail.pending, mail.claimed), (1, 1));
    assert!(!mail.settings.paused && mail.settings.max_concurrency.is_none());
    assert!(list.iter().any(|q| q.settings.name == DEFAULT_QUEUE));
    // Statistics carry the live counts per queue.
    let stats = h.b.queue_stats().await.unwrap();
    let mail = &stats.by_queue["mail"];
    assert_eq!((mail.pending, mail.claimed), (1, 1));
    assert_eq!(stats.by_queue[DEFAULT_QUEUE].pending, 1);
    for bad in [
        QueueSettings::new("no spaces"),
        QueueSettings {
            max_concurrency: Some(0),
            ..QueueSettings::new("q")
        },
    ] {
        assert!(h.a.queue_put(bad).await.is_err());
    }
}

/// No step of a paused queue is claimed, by any claimer; resumed, it runs.
pub(crate) async fn a_paused_queue_gives_no_steps(h: Harness) {
    insert(
        &h.a,
        (0..3)
            .map(|_| in_queue("a"))
            .chain((0..3).map(|_| in_queue("b")))
            .collect(),
    )
    .await;
    put(&h.b, "a", true, None).await;
    let got = claim_from(&h.a, "pod-a", 10, None).await;
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|s| s.queue == "b"), "only the running queue");
    assert!(claim_from(&h.b, "pod-b", 10, Some(&["a"])).await.is_empty());
    let listed = h.a.queues_list().await.unwrap();
    assert!(
        listed
            .iter()
            .find(|q| q.settings.name == "a")
            .unwrap()
            .settings
            .paused
    );
    put(&h.b, "a", false, None).await;
    let got = claim_from(&h.a, "pod-a", 10, None).await;
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|s| s.queue == "a"));
}

/// A queue's claimed steps never exceed its `max_concurrency`, whichever
/// store claims; finishing one makes room for one.
pub(crate) async fn max_concurrency_holds_across_claimers(h: Harness) {
    put(&h.a, "q", false, Some(2)).await;
    insert(&h.a, (0..5).map(|_| in_queue("q")).collect()).await;
    let first = claim_from(&h.a, "pod-a", 10, None).await;
    assert_eq!(first.len(), 2);
    assert!(
        claim_from(&h.b, "pod-b", 10, None).await.is_empty(),
        "no room left"
    );
    finish(
        &h.a,
        Lease::of(&first[0]).unwrap(),
        Outcome::Complete {
            result: json!(null),
        },
    )
    .await;
    assert_eq!(claim_from(&h.b, "pod-b", 10, None).await.len(), 1);
    assert!(claim_from(&h.a, "pod-a", 10, None).await.is_empty());
}

/// A pod serving a subset claims only from it.
pub(crate) async fn a_subset_claims_only_its_queues(h: Harness) {
    insert(&h.a, vec![in_queue("gpu"), in_queue("cpu"), step("noop")]).await;
    let got = claim_from(&h.a, "pod-a", 10, Some(&["gpu"])).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].queue, "gpu");
    let rest = claim_from(&h.b, "pod-b", 10, None).await;
    assert_eq!(rest.len(), 2);
}

/// One busy queue cannot starve another: a small queue submitted after a big
/// one gets its steps in the first claim.
pub(crate) async fn queues_share_a_claim_fairly(h: Harness) {
    insert(&h.a, (0..30).map(|_| in_queue("big")).collect()).await;
    insert(&h.a, (0..3).map(|_| in_queue("small")).collect()).await;
    let got = claim_from(&h.b, "pod-b", 10, None).await;
    assert_eq!(got.len(), 10);
    assert_eq!(
        got.iter().filter(|s| s.queue == "small").count(),
        3,
        "the small queue is served at once"
    );
    // Within a queue, priority still orders.
    insert(
        &h.a,
        vec![
            step_with(|s| {
                s.queue = Some("p".into());
                s.priority = Some(-5);
            }),
            step_with(|s| {
                s.queue = Some("p".into());
                s.priority = Some(5);
            }),
        ],
    )
    .await;
    let got = claim_from(&h.a, "pod-a", 1, Some(&["p"])).await;
    assert_eq!(got[0].priority, 5);
}

/// A rate-limited queue starts no more than its token bucket allows, across
/// claimers: at most `burst + rate × elapsed` by the store's clock, then one
/// more as the bucket refills; other queues are not held back. Claims stamp
/// each step's start, and the list counts the last minute's starts.
pub(crate) async fn a_rate_limited_queue_starts_what_its_bucket_allows(h: Harness) {
    let (rate, burst) = (2.0, 3u32);
    h.a.queue_put(QueueSettings {
        rate_per_second: Some(rate),
        burst: Some(burst),
        ..QueueSettings::new("slow")
    })
    .await
    .expect("queue_put");
    insert(&h.a, (0..10).map(|_| in_queue("slow")).collect()).await;
    insert(&h.a, (0..4).map(|_| in_queue("fast")).collect()).await;
    let t0 = h.a.now().await.unwrap();
    let first = claim_from(&h.a, "pod-a", 20, None).await;
    let slow = |v: &[Step]| v.iter().filter(|s| s.queue == "slow").count();
    assert_eq!(
        slow(&first),
        burst as usize,
        "a full bucket starts its burst"
    );
    assert_eq!(
        first.len() - slow(&first),
        4,
        "other queues are not held back"
    );
    assert!(
        first.iter().all(|s| s.started_ts.is_some()),
        "claims stamp starts"
    );
    let mut started = slow(&first);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut claimers = [(&h.b, "pod-b"), (&h.a, "pod-a")].into_iter().cycle();
    while started < burst as usize + 2 {
        let (store, pod) = claimers.next().unwrap();
        started += slow(&claim_from(store, pod, 20, Some(&["slow"])).await);
        let elapsed = (h.a.now().await.unwrap() - t0).num_milliseconds() as f64 / 1000.0;
        let allowed = f64::from(burst) + rate * elapsed;
        assert!(
            started as f64 <= allowed + 1e-6,
            "{started} started in {elapsed:.3} s, the bucket allows {allowed:.3}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket never refilled: {started} started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval (deadline above)
    }
    let list = h.b.queues_list().await.unwrap();
    let q = list.iter().find(|q| q.settings.name == "slow").unwrap();
    assert_eq!(q.settings.rate_per_second, Some(rate));
    assert_eq!(q.settings.burst, Some(burst));
    assert!(
        q.started_last_minute >= 1 && q.started_last_minute <= started as u64,
        "started in the last minute: {} (of {started})",
        q.started_last_minute
    );
}

/// A claim that empties a rate-limited queue's bucket says when its next token
/// is due, so a claimer can come back then; a claim no bucket bounded gives no
/// hint. SQLite must give the hint; a store that cannot tell answers `None`.
pub(crate) async fn a_dry_bucket_says_when_its_next_token_is_due(h: Harness) {
    let paced = |store: &Arc<dyn Store>, only: &str| {
        let store = store.clone();
        let only = only.to_string();
        async move {
            store
                .steps_claim_paced(ClaimParams {
                    pod_id: "pod-a".into(),
                    limit: 20,
                    queues: Some(vec![only]),
                })
                .await
                .expect("claim")
        }
    };
    h.a.queue_put(QueueSettings {
        rate_per_second: Some(4.0),
        burst: Some(2),
        ..QueueSettings::new("paced")
    })
    .await
    .expect("queue_put");
    insert(&h.a, (0..6).map(|_| in_queue("paced")).collect()).await;
    insert(&h.a, (0..3).map(|_| in_queue("free")).collect()).await;
    let free = paced(&h.a, "free").await;
    assert_eq!(free.steps.len(), 3);
    assert_eq!(free.next_token_in, None, "no bucket bounded this claim");
    let dry = paced(&h.a, "paced").await;
    assert_eq!(dry.steps.len(), 2, "the burst");
    let must_hint = h.a.backend() == "sqlite";
    for hint in [dry.next_token_in, paced(&h.b, "paced").await.next_token_in] {
        match hint {
            Some(d) => assert!(
                d > Duration::ZERO && d <= Duration::from_millis(250),
                "one token at 4/s is due within 250 ms, hinted {d:?}"
            ),
            None => assert!(!must_hint, "{} must hint", h.a.backend()),
        }
    }
}

/// A queue's defaults (retries, timeout, backoff) apply to steps submitted to
/// it without their own, on both insert paths; a step's own values win.
pub(crate) async fn queue_defaults_apply_to_steps_without_their_own(h: Harness) {
    h.a.queue_put(QueueSettings {
        max_retries: Some(2),
        timeout: Some(Duration::from_secs(7)),
        backoff: Some(Duration::from_secs(2)),
        backoff_max: Some(Duration::from_secs(4)),
        ..QueueSettings::new("d")
    })
    .await
    .expect("queue_put");
    let ids = insert(
        &h.b,
        vec![
            in_queue("d"),
            step_with(|s| {
                s.queue = Some("d".into());
                s.max_retries = Some(5);
                s.timeout = Some(Duration::from_secs(1));
            }),
            step_with(|s| {
                s.queue = Some("d".into());
                s.idempotency_key = Some("defaults-keyed".into());
            }),
            step("noop"),
        ],
    )
    .await;
    let (plain, own, keyed, other) = (
        get(&h.a, ids[0]).await,
        get(&h.a, ids[1]).await,
        get(&h.a, ids[2]).await,
        get(&h.a, ids[3]).await,
    );
    assert_eq!((plain.max_retries, plain.timeout_ms), (2, Some(7000)));
    assert_eq!((keyed.max_retries, keyed.timeout_ms), (2, Some(7000)));
    assert_eq!((own.max_retries, own.timeout_ms), (5, Some(1000)));
    assert_eq!(
        (other.max_retries, other.timeout_ms),
        (DEFAULT_MAX_RETRIES, None)
    );
    // A retryable failure waits the queue's backoff, not the pod's (here 0).
    let got = claim_from(&h.a, "pod-a", 10, None).await;
    for s in &got {
        finish(&h.a, Lease::of(s).unwrap(), fail(true)).await;
    }
    for (id, wait_ms) in [(ids[0], 2000), (ids[3], 0)] {
        let s = get(&h.b, id).await;
        assert_eq!(s.status, StepStatus::Pending);
        assert_eq!(
            (s.run_at - s.last_update_ts).num_milliseconds(),
            wait_ms,
            "retry delay of {}",
            s.queue
        );
    }
}

/// Pausing touches only the pause flag (a concurrent change of limits is not
/// undone), and pausing a queue that does not exist makes it, paused.
pub(crate) async fn pause_keeps_the_other_settings(h: Harness) {
    let limited = QueueSettings {
        max_concurrency: Some(2),
        rate_per_second: Some(5.0),
        max_retries: Some(1),
        ..QueueSettings::new("kept")
    };
    h.a.queue_put(limited.clone()).await.expect("queue_put");
    h.b.queue_pause("kept", true).await.expect("pause");
    h.b.queue_pause("fresh", true).await.expect("pause new");
    let list = h.a.queues_list().await.unwrap();
    let find = |n: &str| {
        list.iter()
            .find(|q| q.settings.name == n)
            .unwrap()
            .settings
            .clone()
    };
    assert_eq!(
        find("kept"),
        QueueSettings {
            paused: true,
            ..limited.clone()
        }
    );
    assert!(find("fresh").paused);
    h.a.queue_pause("kept", false).await.expect("resume");
    let list = h.b.queues_list().await.unwrap();
    let kept = list.iter().find(|q| q.settings.name == "kept").unwrap();
    assert_eq!(kept.settings, limited);
    assert!(h.a.queue_pause("not a name", true).await.is_err());
}

/// The idle probe of quiet mode (`crate::quiet`): idle on an empty store;
/// a due step in an unpaused queue is work, one in a paused queue is not; a
/// step due later is reported by its time; a claim anywhere is work.
pub(crate) async fn the_idle_probe_sees_live_work_only(h: Harness) {
    let p = h.a.steps_idle_probe().await.expect("probe");
    assert!(p.idle(), "{p:?}");
    assert_eq!(p.next_due, None);
    let skew = (p.now - chrono::Utc::now()).num_seconds().abs();
    assert!(skew < 60, "store time {} is far from now", p.now);

    // A paused queue's due step is not work; resumed, it is.
    put(&h.b, "held", true, None).await;
    insert(&h.a, vec![in_queue("held")]).await;
    assert!(h.b.steps_idle_probe().await.unwrap().idle());
    put(&h.b, "held", false, None).await;
    let p = h.b.steps_idle_probe().await.unwrap();
    assert!(p.due_now && !p.idle(), "{p:?}");

    // Claimed, it is still work (someone runs it); a delayed step is not
    // due now but is reported by its time.
    let later = step_with(|s| {
        s.queue = Some("later".into());
        s.run_at = RunAt::After(Duration::from_secs(600));
    });
    insert(&h.a, vec![later]).await;
    let claimed = claim_from(&h.a, "pod-a", 5, Some(&["held"])).await;
    assert_eq!(claimed.len(), 1);
    let p = h.b.steps_idle_probe().await.unwrap();
    assert_eq!((p.claimed, p.due_now), (1, false), "{p:?}");
    assert!(!p.idle());
    let ahead = p.until_next_due().expect("the delayed step is reported");
    assert!(
        ahead > Duration::from_secs(590) && ahead <= Duration::from_secs(600),
        "{ahead:?}"
    );
    // Finished, nothing is live: idle again, the delayed step still ahead.
    let lease = Lease::of(&claimed[0]).expect("a claimed step has a lease");
    let report = finish(
        &h.a,
        lease,
        Outcome::Complete {
            result: json!(null),
        },
    )
    .await;
    assert_eq!(report.applied.len(), 1);
    let p = h.b.steps_idle_probe().await.unwrap();
    assert!(p.idle(), "{p:?}");
    assert!(p.next_due.is_some());
}
