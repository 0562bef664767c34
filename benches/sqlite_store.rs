//! The SQLite store alone: insert + claim + complete, at batch sizes 1, 10 and 100.
//!
//! One iteration submits `batch` steps in one call, claims them in one call and
//! completes them in one call: the same work per step as `sqlite-limit` (insert,
//! claim with `UPDATE … RETURNING`, fenced complete), through the real store (group
//! commit writer, validation, JSON payloads, fencing reports). Criterion reports
//! steps/s as "elements/s"; compare the batch-100 figure with
//! `sqlite-limit 100000 100` measured in the same run (see BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::{NewStep, Store};

#[path = "support/store.rs"]
mod support;
use support::{claim_complete, noop_steps, noop_steps_in};

/// Inserts `steps`, then claims and completes up to as many. Returns how many it
/// completed (concurrent callers may take each other's steps).
async fn pipeline(store: &SqliteStore, steps: Vec<NewStep>) -> usize {
    let batch = steps.len();
    store.steps_insert(steps).await.expect("insert");
    claim_complete(store, batch).await
}

fn fresh_store(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        SqliteStore::open(dir.path().join("bench.db"), SqliteOptions::default()).expect("open");
    rt.block_on(store.schema_init()).expect("schema");
    (dir, Arc::new(store))
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("sqlite_store/insert_claim_complete");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for batch in [1usize, 10, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                // Each sample gets a fresh database (as sqlite-limit does), and its
                // validated steps are made before the clock starts: validation is
                // the API's work; this measures the store.
                let (_dir, store) = fresh_store(&rt);
                let batches: Vec<Vec<NewStep>> = (0..iters).map(|_| noop_steps(batch)).collect();
                rt.block_on(async {
                    let t0 = Instant::now();
                    for steps in batches {
                        assert_eq!(pipeline(&store, steps).await, batch);
                    }
                    t0.elapsed()
                })
            })
        });
    }
    // Queues with limits: batch 100 in the default queue under a
    // max_concurrency (so each claim also counts the queue's claimed steps),
    // and spread over four queues (each claim serves them in turn).
    for (name, queues, limit, rate) in [
        ("100_limited_queue", vec!["default"], Some(10_000u32), None),
        // A rate far above what the bench reaches: the bucket's bookkeeping
        // alone (read, refill, spend in the claim's transaction).
        (
            "100_rate_limited_queue",
            vec!["default"],
            None,
            Some(100_000.0),
        ),
        ("100_four_queues", vec!["q0", "q1", "q2", "q3"], None, None),
    ] {
        group.throughput(Throughput::Elements(100));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (_dir, store) = fresh_store(&rt);
                for q in &queues {
                    rt.block_on(store.queue_put(fleet_q_actors::QueueSettings {
                        max_concurrency: limit,
                        rate_per_second: rate,
                        ..fleet_q_actors::QueueSettings::new(*q)
                    }))
                    .expect("queue");
                }
                let batches: Vec<Vec<NewStep>> =
                    (0..iters).map(|_| noop_steps_in(100, &queues)).collect();
                rt.block_on(async {
                    let t0 = Instant::now();
                    for steps in batches {
                        assert_eq!(pipeline(&store, steps).await, 100);
                    }
                    t0.elapsed()
                })
            })
        });
    }
    // Four callers at once (four pods' worth of claimers in one process): group
    // commit lets their writes share transactions.
    const CALLERS: usize = 4;
    group.throughput(Throughput::Elements((100 * CALLERS) as u64));
    group.bench_function("100x4_concurrent", |b| {
        b.iter_custom(|iters| {
            let (_dir, store) = fresh_store(&rt);
            let work: Vec<Vec<Vec<NewStep>>> = (0..CALLERS)
                .map(|_| (0..iters).map(|_| noop_steps(100)).collect())
                .collect();
            rt.block_on(async {
                let t0 = Instant::now();
                let tasks: Vec<_> = work
                    .into_iter()
                    .map(|batches| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let mut done = 0;
                            for steps in batches {
                                done += pipeline(&store, steps).await;
                            }
                            done
                        })
                    })
                    .collect();
                let mut done = 0;
                for t in tasks {
                    done += t.await.expect("pipeline task");
                }
                // Whatever a caller left for another is completed inside the clock.
                while done < CALLERS * 100 * iters as usize {
                    let n = claim_complete(&store, 100).await;
                    assert!(n > 0, "steps lost");
                    done += n;
                }
                t0.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
