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

/// A database written before the finished-step counters existed is counted once
/// when a newer version opens it; from then on the triggers keep the counts, and
/// the stats read no finished row.
#[tokio::test]
async fn counters_are_backfilled_for_an_older_database_and_stats_skip_history() {
    use fleet_q_actors::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.schema_init().await.unwrap();
    let steps: Vec<NewStep> = (0..6)
        .map(|_| {
            NewStep::new(StepSpec {
                step_type: "t".into(),
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    store.steps_insert(steps).await.unwrap();
    let claimed = store
        .steps_claim(ClaimParams {
            pod_id: "p".into(),
            limit: 4,
        })
        .await
        .unwrap();
    store
        .steps_finish(FinishParams {
            finishes: claimed
                .iter()
                .map(|s| Finish {
                    lease: Lease::of(s).unwrap(),
                    outcome: Outcome::Complete {
                        result: serde_json::json!(1),
                    },
                })
                .collect(),
            backoff: Backoff::default(),
        })
        .await
        .unwrap();
    drop(store);
    // Make it look like an older version's file: no counters.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("DROP TABLE STEP_COUNTS").unwrap();
    // The stats plan reads live rows through the live index and finished ones
    // from the counters: never a scan of STEP_TRACKER.
    drop(raw);
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.schema_init().await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.counts.completed, stats.counts.pending), (4, 2));
    let raw = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = raw
        .prepare(
            "EXPLAIN QUERY PLAN SELECT status, step_type, priority, COUNT(*) \
             FROM STEP_TRACKER INDEXED BY step_tracker_live WHERE status IN ('pending', 'claimed') \
             GROUP BY status, step_type, priority",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|l| l.contains("step_tracker_live"))
            && !plan
                .iter()
                .any(|l| l.starts_with("SCAN STEP_TRACKER") && !l.contains("INDEX")),
        "{plan:?}"
    );
}
