//! Queues: pause, fleet-wide concurrency, serving a subset, fairness, and
//! queues made on first use (`crate::queue`).

use super::*;
use crate::queue::{QueueSettings, DEFAULT_QUEUE};

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
            name: name.into(),
            paused,
            max_concurrency: max,
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
