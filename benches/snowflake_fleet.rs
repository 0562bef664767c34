//! A fleet on the Snowflake warehouse model: N pods (in this process, each with
//! its own store and sessions) on the local protocol peer run with
//! `--compile-ms` and `--latency-ms`, so every statement takes the modelled
//! time and DML on a table runs one statement at a time behind its lock, with
//! Snowflake's 20-waiter abort (tests/snowflake/README.md).
//!
//! ```sh
//! cargo bench --bench snowflake_fleet                 # the whole matrix (~25 min)
//! cargo bench --bench snowflake_fleet -- --quick      # 150 ms only, 1/3/10 pods
//! cargo bench --bench snowflake_fleet -- --latency 150 --pods 10 --settings economy
//! cargo bench --bench snowflake_fleet -- --latency 150 --pods 3 --offered 25
//! ```
//!
//! `--offered RATE` offers RATE steps/s instead of the default. Where the
//! fleet cannot start what is offered, the fleet, the table lock or the
//! emulator saturated; two columns say which: how much of the window
//! STEP_TRACKER's lock was held, and the emulator's CPU (100 % = one core,
//! all of it on this 2-core machine shared with the pods).
//!
//! Each run: `sleep` steps of 200 ms offered at a steady rate (what the fleet's
//! handler slots could run, at most 150 steps/s, see `MAX_OFFERED`) for 20 s, submitted
//! in a batch every 250 ms through the pods in turn; then the backlog is
//! drained. It reports steps/s completed in the window, submit→start p50/p99
//! (from each step's store creation time to its handler starting), statements
//! per second and per 1,000 steps (every statement of every pod: submits,
//! claims, finishes, heartbeats, leader checks, recovery), and the lock-wait
//! aborts the emulator sent.
//!
//! Settings: `today` is the seed's production settings as they ran before the
//! economy changes (max parallelism 20 × threshold 0.8 = 16 slots, claim batch
//! 100, every freed slot claims, every outcome written at once); `economy` is
//! the same with this version's Snowflake defaults (`FLEET_Q_CLAIM_AHEAD` the
//! capacity, 16; `FLEET_Q_CLAIM_MIN_FREE` the larger of half the capacity and
//! the claim-ahead, 16; `FLEET_Q_FINISH_LINGER_MS` 200); `tuned` is 100 slots,
//! claim batch 200, min free 50, linger 200, no claim-ahead.
//!
//! `--claim-ahead N` sets every setup's claim-ahead to `N` and raises its min
//! free to at least `N` (it keeps the setup's own min free otherwise:
//! `--claim-ahead 0` on `economy` is min free 16 without claim-ahead).
//!
//! The emulator is one Python process: above a few hundred statements per
//! second it, not the modelled warehouse, is the limit. The figures are the
//! model's, not a real account's.

#[path = "support/emulator.rs"]
mod emulator;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::handler::{HandlerError, StepContext, StepHandler};
use fleet_q_actors::{HandlerRegistry, NewStep, Pod, PodConfig, StepSpec, Store};
use serde_json::Value;

const STEP_MS: u64 = 200;
const WINDOW: Duration = Duration::from_secs(20);
/// The most steps/s offered by default. Above about this the emulator's own
/// work for the submits (one Python process translating and running every
/// statement on this 2-core machine) starts to crowd out the claims and
/// finishes under test: offering 300 steps/s to 3 pods left it too busy to
/// serve them at all.
const MAX_OFFERED: f64 = 150.0;

fn model_stats(port: u16) -> Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /debug/stats?since=9e12 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("{}");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Sleeps 200 ms, recording how long after its creation (store time) the step
/// started.
struct Timed(Arc<Mutex<Vec<f64>>>);

#[async_trait]
impl StepHandler for Timed {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        let waited = (chrono::Utc::now() - ctx.step.created_ts).num_milliseconds() as f64 / 1000.0;
        self.0.lock().unwrap().push(waited);
        tokio::time::sleep(Duration::from_millis(STEP_MS)).await;
        Ok(Value::Null)
    }
}

#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    capacity: u32,
    batch: u32,
    min_free: u32,
    linger_ms: u64,
    /// Claimed steps a pod may hold beyond its slots (`FLEET_Q_CLAIM_AHEAD`).
    ahead: u32,
}

const TODAY: Setup = Setup {
    name: "today",
    capacity: 16,
    batch: 100,
    min_free: 1,
    linger_ms: 0,
    ahead: 0,
};
const ECONOMY: Setup = Setup {
    name: "economy",
    capacity: 16,
    batch: 100,
    min_free: 16,
    linger_ms: 200,
    ahead: 16,
};
const TUNED: Setup = Setup {
    name: "tuned",
    capacity: 100,
    batch: 200,
    min_free: 50,
    linger_ms: 200,
    ahead: 0,
};

struct Outcome {
    /// Fraction of the window STEP_TRACKER's lock was held (DML running).
    lock_busy: f64,
    /// Emulator CPU seconds per second of the window (1.0 = one core).
    emulator_cpu: f64,
    steps_per_s: f64,
    offered: f64,
    p50: f64,
    p99: f64,
    stmts_per_s: f64,
    per_k: f64,
    aborts: u64,
    by_op: Vec<(&'static str, u64)>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// What the bench offers: the default (the fleet's handler rate, at most
/// [`MAX_OFFERED`]), or a rate in steps/s.
#[derive(Clone, Copy)]
enum Offer {
    Default,
    Rate(f64),
}

fn lock_held(stats: &Value) -> f64 {
    stats["lock_held_s"]["STEP_TRACKER"].as_f64().unwrap_or(0.0)
}

fn run(latency_ms: u64, pods: usize, s: Setup, offer: Offer) -> Outcome {
    let jitter = |ms: u64| format!("{ms}:{}", ms * 3 / 10);
    let (compile, exec) = (jitter(latency_ms / 3), jitter(latency_ms - latency_ms / 3));
    // The translation cache (tests/snowflake/shapes.py) halves the emulator's
    // CPU per statement, so the model, not the emulator, saturates first.
    let (mut child, port) = emulator::start(&[
        "--compile-ms",
        &compile,
        "--latency-ms",
        &exec,
        "--translation-cache",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let waits = Arc::new(Mutex::new(Vec::new()));
    let out = actix_rt::System::new().block_on(async {
        let mut fleet = Vec::new();
        for i in 0..pods {
            let store = Arc::new(
                SnowflakeStore::open(&emulator::settings(port, 4, Duration::from_secs(60)), fleet_q_actors::Backoff::default()).unwrap(),
            );
            if i == 0 {
                store.schema_init().await.unwrap();
            }
            let mut h = HandlerRegistry::new();
            h.register("sleep", Timed(waits.clone()));
            let cfg = PodConfig {
                pod_id: format!("fleet-{i}"),
                max_capacity: s.capacity,
                claim_batch: s.batch,
                claim_min_free: s.min_free,
                claim_ahead: s.ahead,
                finish_linger: Duration::from_millis(s.linger_ms),
                ledger_path: Some(dir.path().join(format!("ledger-{i}.db"))),
                // The seed's production intervals: heartbeat 30 s, claim 5 s.
                ..Default::default()
            };
            fleet.push((
                std::rc::Rc::new(Pod::start(cfg, store.clone(), h).unwrap()),
                store,
            ));
        }
        for (p, _) in &fleet {
            while !p.state().heartbeat_healthy() {
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let count = |fleet: &[(std::rc::Rc<Pod>, Arc<SnowflakeStore>)]| -> u64 {
            fleet.iter().map(|(_, s)| s.statement_count()).sum()
        };
        let model0 = model_stats(port);
        let aborts0 = model0["lock_aborts"].as_u64().unwrap_or(0);
        let stmts0 = count(&fleet);
        let ops = |fleet: &[(std::rc::Rc<Pod>, Arc<SnowflakeStore>)]| -> std::collections::BTreeMap<&'static str, u64> {
            let mut m = std::collections::BTreeMap::new();
            for (_, s) in fleet {
                for (op, n) in s.statements_by_op() {
                    *m.entry(op).or_insert(0) += n;
                }
            }
            m
        };
        let ops0 = ops(&fleet);
        let handler_rate = pods as f64 * f64::from(s.capacity) * 1000.0 / STEP_MS as f64;
        let offered = match offer {
            Offer::Default => handler_rate.min(MAX_OFFERED),
            Offer::Rate(r) => r,
        };
        let per_tick = offered / 4.0;
        let t0 = Instant::now();
        let mut submitted = 0.0f64;
        let mut sent = 0u64;
        let accepted = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut turn = 0;
        waits.lock().unwrap().clear();
        while t0.elapsed() < WINDOW {
            submitted += per_tick;
            let n = submitted as u64 - sent;
            if n > 0 {
                let steps: Vec<NewStep> = (0..n)
                    .map(|_| {
                        NewStep::new(StepSpec {
                            step_type: "sleep".into(),
                            ..Default::default()
                        })
                        .unwrap()
                    })
                    .collect();
                // Submitted without waiting, so the offered rate holds however
                // slow the statements are; a submit that fails (a lock-wait
                // abort after retries) is counted as not offered.
                sent += n;
                let pod = fleet[turn % pods].0.clone();
                let accepted = accepted.clone();
                actix_rt::spawn(async move {
                    if pod.submit(steps).await.is_ok() {
                        accepted.set(accepted.get() + n);
                    }
                });
                turn += 1;
            }
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let started_in_window = waits.lock().unwrap().len();
        let stmts = count(&fleet) - stmts0;
        let model1 = model_stats(port);
        let aborts = model1["lock_aborts"].as_u64().unwrap_or(0) - aborts0;
        let lock_busy = (lock_held(&model1) - lock_held(&model0)) / elapsed;
        let emulator_cpu = (model1["cpu_s"].as_f64().unwrap_or(0.0)
            - model0["cpu_s"].as_f64().unwrap_or(0.0))
            / elapsed;
        let by_op: Vec<(&'static str, u64)> = ops(&fleet)
            .into_iter()
            .map(|(op, n)| (op, n - ops0.get(op).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (p, _) in &fleet {
            p.shutdown().await;
        }
        let mut w = waits.lock().unwrap().clone();
        Outcome {
            lock_busy,
            emulator_cpu,
            steps_per_s: started_in_window as f64 / elapsed,
            offered: accepted.get().min(sent) as f64 / elapsed,
            p50: pct(&mut w, 0.5),
            p99: pct(&mut w, 0.99),
            stmts_per_s: stmts as f64 / elapsed,
            per_k: stmts as f64 * 1000.0 / started_in_window.max(1) as f64,
            aborts,
            by_op,
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let latencies: Vec<u64> = match arg("--latency") {
        Some(l) => vec![l.parse().unwrap()],
        None if quick => vec![150],
        None => vec![50, 150, 400],
    };
    let pod_counts: Vec<usize> = match arg("--pods") {
        Some(p) => vec![p.parse().unwrap()],
        None if quick => vec![1, 3, 10],
        None => vec![1, 3, 10, 30],
    };
    let setups: Vec<Setup> = match arg("--settings").as_deref() {
        Some("today") => vec![TODAY],
        Some("economy") => vec![ECONOMY],
        Some("tuned") => vec![TUNED],
        _ => vec![TODAY, ECONOMY, TUNED],
    };
    let setups: Vec<Setup> = match arg("--claim-ahead") {
        None => setups,
        Some(a) => {
            let ahead: u32 = a.parse().expect("--claim-ahead: steps");
            setups
                .into_iter()
                .map(|s| Setup {
                    ahead,
                    min_free: s.min_free.max(ahead),
                    ..s
                })
                .collect()
        }
    };
    let offer = match arg("--offered").as_deref() {
        None => Offer::Default,
        Some(r) => Offer::Rate(r.parse().expect("--offered: steps/s")),
    };
    println!(
        "| latency ms | pods | settings | offered steps/s | started steps/s | submit→start p50 / p99 s | statements/s | statements per 1,000 steps | lock-wait aborts | STEP_TRACKER lock busy | emulator CPU |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &l in &latencies {
        for &n in &pod_counts {
            for &s in &setups {
                let o = run(l, n, s, offer);
                println!(
                    "| {l} | {n} | {} | {:.1} | {:.1} | {:.2} / {:.2} | {:.1} | {:.0} | {} | {:.0} % | {:.0} % |",
                    s.name,
                    o.offered,
                    o.steps_per_s,
                    o.p50,
                    o.p99,
                    o.stmts_per_s,
                    o.per_k,
                    o.aborts,
                    o.lock_busy * 100.0,
                    o.emulator_cpu * 100.0
                );
                eprintln!("  statements by operation: {:?}", o.by_op);
            }
        }
    }
}
