//! Search (filters, keyset pages, the bounded window) and bulk actions.

use super::*;
use crate::search::{BulkAction, SearchParams, StepFilter};

/// Every match of `filter`, following the cursor page by page.
async fn search_all(
    store: &Arc<dyn Store>,
    filter: &StepFilter,
    limit: u32,
    scan: u32,
) -> Vec<StepId> {
    let mut out = Vec::new();
    let mut before = None;
    for _ in 0..1000 {
        let page = store
            .steps_search(SearchParams {
                filter: filter.clone(),
                before,
                limit,
                scan_limit: scan,
            })
            .await
            .expect("search");
        assert!(
            page.steps.len() <= limit as usize,
            "a page holds at most its limit"
        );
        assert!(
            page.scanned <= u64::from(scan),
            "a page examines at most its window"
        );
        out.extend(page.steps.iter().map(|s| s.step_id));
        match page.next {
            Some(n) => before = Some(n),
            None => return out,
        }
    }
    panic!("the search never ended");
}

/// Each filter finds exactly the steps the reference filter
/// ([`StepFilter::matches`]) picks among every step, newest first, whatever the
/// page and window sizes.
pub(crate) async fn search_finds_exactly_what_each_filter_matches(h: Harness) {
    let mut steps = Vec::new();
    for i in 0..12 {
        steps.push(step_with(|s| {
            s.step_type = if i % 3 == 0 { "mail" } else { "noop" }.into();
            s.args = Some(json!({ "word": format!("needle-{i}") }));
            s.priority = Some(i % 2);
            s.max_retries = Some(0);
            if i == 5 {
                s.idempotency_key = Some("key-five".into());
            }
            if i % 4 == 1 {
                s.queue = Some("mail".into());
            }
        }));
    }
    let ids = insert(&h.a, steps).await;
    // Some claimed, two failed with distinct errors, one cancelled.
    let claimed = claim(&h.a, "pod-a", 4).await;
    for (s, e) in claimed
        .iter()
        .take(2)
        .zip(["disk full on /var", "timeout talking to smtp"])
    {
        let r = finish(
            &h.a,
            Lease::of(s).unwrap(),
            Outcome::Fail {
                error: e.into(),
                retryable: false,
            },
        )
        .await;
        assert_eq!(r.applied.len(), 1);
    }
    let pending: Vec<StepId> = {
        let mut v = Vec::new();
        for id in &ids {
            if get(&h.a, *id).await.status == StepStatus::Pending {
                v.push(*id);
            }
        }
        v
    };
    assert_eq!(
        h.b.step_cancel(pending[0]).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let mut all = Vec::new();
    for id in &ids {
        all.push(get(&h.a, *id).await);
    }
    all.sort_by_key(|s| std::cmp::Reverse(s.step_id));
    let now = h.a.now().await.unwrap();
    let filters = vec![
        StepFilter::default(),
        StepFilter {
            step_type: Some("mail".into()),
            ..Default::default()
        },
        StepFilter {
            text: Some("needle-1".into()),
            ..Default::default()
        },
        StepFilter {
            text: Some("smtp".into()),
            ..Default::default()
        },
        StepFilter {
            status: Some(StepStatus::Pending),
            ..Default::default()
        },
        StepFilter {
            status: Some(StepStatus::Claimed),
            ..Default::default()
        },
        StepFilter {
            status: Some(StepStatus::Failed),
            ..Default::default()
        },
        StepFilter {
            status: Some(StepStatus::Cancelled),
            ..Default::default()
        },
        StepFilter {
            status: Some(StepStatus::Completed),
            ..Default::default()
        },
        StepFilter {
            priority: Some(1),
            step_type: Some("noop".into()),
            ..Default::default()
        },
        StepFilter {
            idempotency_key: Some("key-five".into()),
            ..Default::default()
        },
        StepFilter {
            step_id: Some(ids[7]),
            ..Default::default()
        },
        StepFilter {
            step_id: Some(ids[7]),
            status: Some(StepStatus::Cancelled),
            ..Default::default()
        },
        StepFilter {
            created_from: Some(now + chrono::Duration::hours(2)),
            ..Default::default()
        },
        StepFilter {
            created_to: Some(now + chrono::Duration::hours(2)),
            text: Some("needle".into()),
            ..Default::default()
        },
        StepFilter {
            created_to: Some(now - chrono::Duration::hours(2)),
            ..Default::default()
        },
        StepFilter {
            text: Some("no such text anywhere".into()),
            ..Default::default()
        },
        StepFilter {
            queue: Some("mail".into()),
            ..Default::default()
        },
        StepFilter {
            queue: Some("default".into()),
            status: Some(StepStatus::Pending),
            ..Default::default()
        },
    ];
    for f in &filters {
        let want: Vec<StepId> = all
            .iter()
            .filter(|s| f.matches(s))
            .map(|s| s.step_id)
            .collect();
        for (limit, scan) in [(100, 1000), (2, 1000), (3, 4), (1, 1)] {
            let got = search_all(&h.b, f, limit, scan).await;
            assert_eq!(got, want, "filter {f:?}, limit {limit}, window {scan}");
        }
    }
    // A page's steps are whole rows.
    let page =
        h.a.steps_search(SearchParams {
            filter: StepFilter {
                text: Some("disk full".into()),
                ..Default::default()
            },
            before: None,
            limit: 10,
            scan_limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(page.steps.len(), 1);
    assert_eq!(
        page.steps[0].last_error.as_deref(),
        Some("disk full on /var")
    );
    assert_eq!(page.steps[0].status, StepStatus::Failed);
}

/// A filter that matches nothing near the cursor costs one window, not the
/// table: the page comes back empty with a cursor to look further back.
pub(crate) async fn search_examines_a_bounded_window(h: Harness) {
    let rare = insert(&h.a, vec![step("rare")]).await[0];
    insert(&h.a, (0..30).map(|_| step("common")).collect()).await;
    let filter = StepFilter {
        step_type: Some("rare".into()),
        ..Default::default()
    };
    let first =
        h.a.steps_search(SearchParams {
            filter: filter.clone(),
            before: None,
            limit: 5,
            scan_limit: 10,
        })
        .await
        .unwrap();
    assert!(first.steps.is_empty());
    assert_eq!(first.scanned, 10);
    assert!(first.next.is_some(), "more rows remain to examine");
    assert_eq!(search_all(&h.a, &filter, 5, 10).await, vec![rare]);
}

/// A bulk action changes exactly the given steps that are in the status it
/// applies to, leaves the rest, and keeps the statistics exact.
pub(crate) async fn bulk_changes_only_steps_in_the_right_status(h: Harness) {
    let ids = insert(
        &h.a,
        (0..6)
            .map(|_| step_with(|s| s.max_retries = Some(0)))
            .collect(),
    )
    .await;
    let claimed = claim(&h.a, "pod-a", 3).await;
    for s in &claimed {
        finish(&h.a, Lease::of(s).unwrap(), fail(false)).await;
    }
    let failed: Vec<StepId> = claimed.iter().map(|s| s.step_id).collect();
    let pending: Vec<StepId> = ids
        .iter()
        .copied()
        .filter(|i| !failed.contains(i))
        .collect();
    let mut given: Vec<StepId> = ids.clone();
    given.push(StepId::generate());
    let mut retried =
        h.b.steps_bulk(BulkAction::Retry, given.clone())
            .await
            .unwrap();
    retried.sort();
    let mut want = failed.clone();
    want.sort();
    assert_eq!(retried, want, "only the failed steps are retried");
    for id in &failed {
        let s = get(&h.a, *id).await;
        assert_eq!((s.status, s.retry_count), (StepStatus::Pending, 0));
    }
    let mut cancelled =
        h.b.steps_bulk(BulkAction::Cancel, pending.clone())
            .await
            .unwrap();
    cancelled.sort();
    let mut want = pending.clone();
    want.sort();
    assert_eq!(cancelled, want);
    assert!(
        h.a.steps_bulk(BulkAction::Cancel, pending.clone())
            .await
            .unwrap()
            .is_empty(),
        "a second cancel changes nothing"
    );
    assert!(h
        .a
        .steps_bulk(BulkAction::Retry, Vec::new())
        .await
        .unwrap()
        .is_empty());
    let stats = h.a.queue_stats().await.unwrap();
    assert_eq!(
        (
            stats.counts.pending,
            stats.counts.cancelled,
            stats.counts.failed
        ),
        (3, 3, 0)
    );
}
