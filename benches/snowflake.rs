//! Snowflake statement economy: statements per 1,000 steps at saturation, through
//! the production client against the local Snowflake protocol peer (fakesnow,
//! installed by tests/snowflake/setup.sh). Every statement of the run counts:
//! submits, claims, finishes, heartbeats, leader checks and recovery.
//!
//! ```sh
//! cargo bench --bench snowflake
//! cargo bench --bench snowflake -- "16 slots"   # only the rows naming 16 slots
//! ```
//!
//! Absolute time on the emulator means nothing (it runs one statement at a time in
//! Python); the statement count is the figure, and it is what real Snowflake bills
//! in warehouse time and table-lock turns.

#[path = "support/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::testkit::steps;
use fleet_q_actors::{HandlerRegistry, Pod, PodConfig, Store};

/// Statements per 1,000 steps for a pod with `capacity` slots and `batch` claims.
fn run(
    port: u16,
    capacity: u32,
    batch: u32,
    economy: Economy,
    n: usize,
) -> (f64, f64, Vec<(&'static str, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async move {
        let store = Arc::new(
            SnowflakeStore::open(
                &emulator::settings(port, 10, Duration::from_secs(30)),
                fleet_q_actors::Backoff::default(),
            )
            .unwrap(),
        );
        store.schema_init().await.unwrap();
        let mut h = HandlerRegistry::new();
        h.register("noop", fleet_q::handlers::Noop);
        let cfg = PodConfig {
            pod_id: format!("bench-{capacity}"),
            max_capacity: capacity,
            claim_batch: batch,
            claim_min_free: economy.min_free(capacity),
            claim_ahead: economy.ahead(capacity),
            finish_linger: economy.linger(),
            ledger_path: Some(dir.path().join("ledger.db")),
            ..Default::default() // default intervals: heartbeat 30 s, claim 5 s, …
        };
        let pod = Pod::start(cfg, store.clone(), h).unwrap();
        while !pod.state().heartbeat_healthy() {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let done_before = store.queue_stats().await.unwrap().counts.completed;
        let before = store.statement_count();
        let ops_before = store.statements_by_op();
        let t0 = Instant::now();
        pod.submit(steps("noop", n)).await.unwrap();
        loop {
            if store.queue_stats().await.unwrap().counts.completed >= done_before + n as u64 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
        // The progress polls above are the bench's own statements: not counted.
        let polls = store
            .statements_by_op()
            .iter()
            .find(|(op, _)| *op == "queue_stats")
            .map_or(0, |x| x.1)
            - ops_before
                .iter()
                .find(|(op, _)| *op == "queue_stats")
                .map_or(0, |x| x.1);
        let stmts = store.statement_count() - before - polls;
        let secs = t0.elapsed().as_secs_f64();
        let by_op: Vec<(&'static str, u64)> = store
            .statements_by_op()
            .into_iter()
            .map(|(op, v)| {
                (
                    op,
                    v - ops_before.iter().find(|(o, _)| *o == op).map_or(0, |x| x.1),
                )
            })
            .filter(|(op, v)| *v > 0 && *op != "queue_stats")
            .collect();
        pod.shutdown().await;
        (stmts as f64 * 1000.0 / n as f64, n as f64 / secs, by_op)
    })
}

/// Store operations alone at batch sizes 1, 10 and 100: insert + claim + complete,
/// as statements per step (the figure Snowflake bills) and wall time per batch
/// on the emulator.
fn store_ops(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SnowflakeStore::open(
        &emulator::settings(port, 10, Duration::from_secs(30)),
        fleet_q_actors::Backoff::default(),
    )
    .unwrap();
    rt.block_on(store.schema_init()).unwrap();
    for batch in [1usize, 10, 100] {
        let rounds = (200 / batch).max(3);
        let before = store.statement_count();
        let t0 = Instant::now();
        for _ in 0..rounds {
            rt.block_on(async {
                store.steps_insert(steps("noop", batch)).await.unwrap();
                let claimed = store
                    .steps_claim(fleet_q_actors::ClaimParams {
                        pod_id: "bench".into(),
                        limit: batch as u32,
                        queues: None,
                    })
                    .await
                    .unwrap();
                let finishes = claimed
                    .iter()
                    .map(|s| fleet_q_actors::Finish {
                        lease: fleet_q_actors::Lease::of(s).unwrap(),
                        outcome: fleet_q_actors::Outcome::Complete {
                            result: serde_json::Value::Null,
                        },
                    })
                    .collect();
                store
                    .steps_finish(fleet_q_actors::FinishParams {
                        finishes,
                        backoff: Default::default(),
                    })
                    .await
                    .unwrap();
            });
        }
        let stmts = store.statement_count() - before;
        println!(
            "snowflake store, insert+claim+complete at batch {batch}: {:.2} statements per step, {:.1} ms per batch on the emulator",
            stmts as f64 / (rounds * batch) as f64,
            t0.elapsed().as_secs_f64() * 1000.0 / rounds as f64
        );
    }
}

/// Which statement economy settings a run uses.
#[derive(Clone, Copy)]
enum Economy {
    /// The engine's own defaults: every freed slot claims, every outcome is
    /// written at once, no claim-ahead.
    Off,
    /// The Snowflake defaults of `fleet-q serve` before claim-ahead
    /// (`FLEET_Q_CLAIM_AHEAD=0`): min free half the capacity, linger 200 ms.
    NoAhead,
    /// The Snowflake defaults of `fleet-q serve` (every `auto`): claim-ahead
    /// the capacity, min free the larger of half the capacity and the
    /// claim-ahead, linger 200 ms.
    Defaults,
}

impl Economy {
    fn ahead(self, capacity: u32) -> u32 {
        match self {
            Economy::Defaults => capacity,
            _ => 0,
        }
    }
    fn min_free(self, capacity: u32) -> u32 {
        match self {
            Economy::Off => 1,
            _ => capacity.div_ceil(2).max(self.ahead(capacity)),
        }
    }
    fn linger(self) -> Duration {
        match self {
            Economy::Off => Duration::ZERO,
            _ => Duration::from_millis(200),
        }
    }
}

fn main() {
    let (mut child, port) = emulator::start(&[]);
    // `cargo bench --bench snowflake -- 16` runs only the rows whose label
    // contains "16".
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.is_none() {
        store_ops(port);
    }
    for (label, capacity, batch, economy) in [
        (
            "defaults (8 slots, claim batch 100), no economy",
            8,
            100,
            Economy::Off,
        ),
        (
            "defaults (8 slots, claim batch 100), economy without claim-ahead",
            8,
            100,
            Economy::NoAhead,
        ),
        (
            "defaults (8 slots, claim batch 100), Snowflake economy defaults",
            8,
            100,
            Economy::Defaults,
        ),
        (
            "seed production (16 slots), no economy",
            16,
            100,
            Economy::Off,
        ),
        (
            "seed production (16 slots), economy without claim-ahead",
            16,
            100,
            Economy::NoAhead,
        ),
        (
            "seed production (16 slots), Snowflake economy defaults",
            16,
            100,
            Economy::Defaults,
        ),
        (
            "tuned (1000 slots, claim batch 500)",
            1000,
            500,
            Economy::Off,
        ),
    ] {
        if only.as_ref().is_some_and(|o| !label.contains(o.as_str())) {
            continue;
        }
        let (per_k, rate, ops) = run(port, capacity, batch, economy, 1000);
        println!("snowflake {label}: {per_k:.1} statements per 1,000 steps ({rate:.0} steps/s on the emulator); by operation: {ops:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
