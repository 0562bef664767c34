//! Pods: heartbeats, store time, marking down, leadership, declared thresholds.

use super::*;

/// Heartbeats keep the birth time, and ages are measured by the store's clock.
pub(crate) async fn heartbeat_keeps_birth_and_ages_by_store_time(h: Harness) {
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
pub(crate) async fn down_pod_is_not_revived_by_heartbeat(h: Harness) {
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
pub(crate) async fn mark_down_spares_fresh_pods(h: Harness) {
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
pub(crate) async fn eldest_live_pod_leads(h: Harness) {
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

/// Each pod is judged by the dead threshold it declared in its own row: a pod that
/// declared a long one is alive (and its claims held) where a pod that declared
/// none is dead by the judge's threshold. A pod marked down reports no capacity.
pub(crate) async fn pods_are_judged_by_their_own_declared_threshold(h: Harness) {
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
