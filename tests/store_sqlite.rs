//! The store conformance suite against the embedded SQLite store: each case gets a
//! fresh database file in its own temp dir, opened twice (two independent writers,
//! as two pod processes would have).

use std::sync::Arc;

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::Store;

async fn open() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fleet-q.db");
    let a = SqliteStore::open(&path, SqliteOptions::default()).expect("open a");
    a.schema_init().await.expect("schema a");
    let b = SqliteStore::open(&path, SqliteOptions::default()).expect("open b");
    b.schema_init().await.expect("schema b");
    Harness {
        a: Arc::new(a),
        b: Arc::new(b),
        guard: Box::new(dir),
        lacks: Vec::new(),
    }
}

fleet_q_actors::conformance_suite!(open);

/// A file written before STEP_TOTALS existed gets it filled once from the steps
/// it holds, so stats are right from the first call after an upgrade.
#[test]
fn an_older_file_gets_its_totals_from_its_steps() {
    use fleet_q_actors::{ClaimParams, NewStep, StepSpec};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet-q.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let steps = (0..10)
            .map(|i| {
                NewStep::new(StepSpec {
                    step_type: if i % 2 == 0 { "even" } else { "odd" }.into(),
                    max_retries: Some(0),
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        s.steps_insert(steps).await.unwrap();
        let claimed = s
            .steps_claim(ClaimParams {
                pod_id: "p".into(),
                limit: 4,
                queues: None,
            })
            .await
            .unwrap();
        s.steps_finish(fleet_q_actors::testkit::finishes(&claimed, 1))
            .await
            .unwrap();
        let before = s.queue_stats().await.unwrap();
        assert_eq!(
            (
                before.counts.pending,
                before.counts.completed,
                before.counts.failed
            ),
            (6, 3, 1)
        );
        drop(s);
        // What an older version left behind: the steps, no totals.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE STEP_TOTALS").unwrap();
        drop(c);
        let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let after = s.queue_stats().await.unwrap();
        assert_eq!(after.counts, before.counts);
        assert_eq!(after.by_type, before.by_type);
        assert_eq!(
            after.by_type["odd"].pending + after.by_type["even"].pending,
            6
        );
        // A second start does not count them again.
        s.schema_init().await.unwrap();
        assert_eq!(s.queue_stats().await.unwrap().counts, before.counts);
    });
}

/// Clients choose step types: with more types than statistics keep by name, the
/// counts stay exact, `by_type` stays bounded, and the types beyond it are summed
/// under one name.
#[test]
fn statistics_stay_bounded_and_exact_with_more_types_than_they_list() {
    use fleet_q_actors::{ClaimParams, NewStep, StatusCounts, StepSpec, OTHER_TYPES, STATS_TYPES};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(dir.path().join("types.db"), SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let n = STATS_TYPES + 200;
        let steps: Vec<NewStep> = (0..n)
            .map(|i| {
                NewStep::new(StepSpec {
                    step_type: format!("type-{i}"),
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        s.steps_insert(steps).await.unwrap();
        let claimed = s
            .steps_claim(ClaimParams {
                pod_id: "p".into(),
                limit: 600,
                queues: None,
            })
            .await
            .unwrap();
        s.steps_finish(fleet_q_actors::testkit::finishes(&claimed, 100))
            .await
            .unwrap();
        let stats = s.queue_stats().await.unwrap();
        let want = StatusCounts {
            pending: (n - 600) as u64,
            completed: 500,
            failed: 100,
            ..Default::default()
        };
        assert_eq!(stats.counts, want);
        assert!(
            stats.by_type.len() <= STATS_TYPES,
            "{}",
            stats.by_type.len()
        );
        assert!(stats.by_type.contains_key(OTHER_TYPES));
        let mut sum = StatusCounts::default();
        for c in stats.by_type.values() {
            sum.merge(c);
        }
        assert_eq!(sum, want, "by_type sums to the counts");
    });
}

/// Statements are counted by the connection itself (SQLite's profile hook),
/// on the writer and on every reader: a write transaction is at least BEGIN,
/// its statement and COMMIT; a read at least its query.
#[test]
fn statements_are_counted_by_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(dir.path().join("fleet-q.db"), SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let before = s.statement_count();
        let step = fleet_q_actors::NewStep::new(fleet_q_actors::StepSpec {
            step_type: "noop".into(),
            ..Default::default()
        })
        .unwrap();
        let id = s.steps_insert(vec![step]).await.unwrap()[0].step_id;
        let after_insert = s.statement_count();
        assert!(after_insert >= before + 3, "{before} -> {after_insert}");
        s.step_get(id).await.unwrap().unwrap();
        assert!(s.statement_count() > after_insert);
    });
}
