//! Submitting: payloads, schema, insert order and times, idempotency keys, hostile strings.

use super::*;

/// Stored payloads come back exactly: quotes, backslashes, `$$`, SQL comment and
/// quote tricks, unicode, and a payload just under the 1 MiB limit.
pub(crate) async fn payload_round_trip_is_byte_exact(h: Harness) {
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
pub(crate) async fn schema_init_twice(h: Harness) {
    let ids = insert(&h.a, vec![step("noop")]).await;
    h.a.schema_init().await.expect("second init");
    h.b.schema_init()
        .await
        .expect("third init from another handle");
    assert_eq!(get(&h.a, ids[0]).await.status, StepStatus::Pending);
}

/// Inserting many answers in input order, with store-clock timestamps.
pub(crate) async fn insert_answers_in_order_with_store_times(h: Harness) {
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

/// Concurrent submits with the same idempotency key, through two handles, create
/// one step; every caller gets its id.
pub(crate) async fn idempotency_key_dedupe_under_concurrent_submits(h: Harness) {
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

/// Hostile strings in every free-text field are stored and returned verbatim, and
/// the store keeps working afterwards.
pub(crate) async fn store_rejects_nothing_valid_and_survives_hostile_strings(h: Harness) {
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
