//! End-to-end pod throughput, memory and start-up (not criterion: each figure is
//! one timed run of a real workload, printed as a table row).
//!
//! ```sh
//! cargo bench --bench pod_e2e            # all
//! cargo bench --bench pod_e2e -- inproc  # only the in-process pod
//! ```
//!
//! - `inproc`: one pod in this process; `noop` steps submitted through
//!   `Pod::submit` in batches of 1,000 while the pod runs them; steps/s from the
//!   first submit to the last completion.
//! - `pods`: a queue prefilled with `noop` steps, drained by 1 and then 3
//!   `fleet-q serve` processes on the same file; steps/s from the moment the pods
//!   are started to the last completion.
//! - `idle`: a pod process's time to answer `/health` after spawn, time to its
//!   first heartbeat, and its RSS after idling.
//!
//! Settings used for throughput (see BENCHMARKS.md, tuning): max parallelism 1000,
//! capacity threshold 1.0, claim batch 500.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::{HandlerRegistry, NewStep, Pod, PodConfig, Store};

/// `n` validated `noop` steps.
fn noop_steps(n: usize) -> Vec<NewStep> {
    fleet_q_actors::testkit::steps("noop", n)
}

fn pod_config(dir: &Path, id: &str) -> PodConfig {
    PodConfig {
        pod_id: id.into(),
        max_capacity: 1000,
        claim_batch: 500,
        claim_interval: Duration::from_secs(1),
        heartbeat_interval: Duration::from_secs(5),
        dead_pod_threshold: Duration::from_secs(30),
        ledger_path: Some(dir.join(format!("{id}-ledger.db"))),
        ..Default::default()
    }
}

fn inproc(n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let sys = actix_rt::System::new();
    sys.block_on(async {
        let store =
            SqliteStore::open(dir.path().join("bench.db"), SqliteOptions::default()).unwrap();
        store.schema_init().await.unwrap();
        let store = Arc::new(store);
        let mut handlers = HandlerRegistry::new();
        handlers.register("noop", fleet_q::handlers::Noop);
        let pod = Pod::start(pod_config(dir.path(), "bench"), store.clone(), handlers).unwrap();
        while !pod.state().heartbeat_healthy() {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        let batches: Vec<Vec<NewStep>> = (0..n / 1000).map(|_| noop_steps(1000)).collect();
        let t0 = Instant::now();
        for b in batches {
            pod.submit(b).await.unwrap();
        }
        loop {
            let s = store.queue_stats().await.unwrap();
            if s.counts.completed == n as u64 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        pod.shutdown().await;
        n as f64 / secs
    })
}

fn fleet_q_bin() -> std::path::PathBuf {
    // benches run from target/<profile>/deps; the binary is one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("fleet-q");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release (looked for {})",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_pod(db: &Path, dir: &Path, id: &str, port: u16) -> std::process::Child {
    Command::new(fleet_q_bin())
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("FLEET_Q_SQLITE_DB_PATH", db)
        .env("FLEET_Q_POD_ID", id)
        .env("FLEET_Q_LEDGER_PATH", dir.join(format!("{id}-ledger.db")))
        .env("FLEET_Q_MAX_PARALLELISM", "1000")
        .env("FLEET_Q_CAPACITY_THRESHOLD", "1")
        .env("FLEET_Q_CLAIM_BATCH_SIZE", "500")
        .env("FLEET_Q_CLAIM_INTERVAL_SECONDS", "1")
        .env("FLEET_Q_LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn drain_with_pods(n: usize, k: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
    rt.block_on(async {
        store.schema_init().await.unwrap();
        for _ in 0..n / 1000 {
            store.steps_insert(noop_steps(1000)).await.unwrap();
        }
    });
    let t0 = Instant::now();
    let mut children: Vec<_> = (0..k)
        .map(|i| spawn_pod(&db, dir.path(), &format!("pod-{i}"), free_port()))
        .collect();
    rt.block_on(async {
        loop {
            if store.queue_stats().await.unwrap().counts.completed == n as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    n as f64 / secs
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn idle() -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idle.db");
    let port = free_port();
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    let t0 = Instant::now();
    let mut child = spawn_pod(&db, dir.path(), "idle", port);
    let mut answered = None;
    let ready = loop {
        if let Ok(r) = client.get(&url).send() {
            let at = t0.elapsed();
            answered.get_or_insert(at);
            if let Ok(v) = r.json::<serde_json::Value>() {
                if v["heartbeat_healthy"] == serde_json::json!(true) {
                    break at;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Idle for a while (heartbeats, leader checks, a recovery cycle).
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (
        answered.unwrap().as_secs_f64() * 1000.0,
        ready.as_secs_f64() * 1000.0,
        rss,
    )
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if want("inproc") {
        let r = inproc(100_000);
        println!(
            "inproc: one pod, 100,000 noop steps submitted in batches of 1,000: {r:.0} steps/s"
        );
    }
    if want("pods") {
        let one = drain_with_pods(100_000, 1);
        println!("pods: 1 pod process drains 100,000 noop steps: {one:.0} steps/s");
        let three = drain_with_pods(100_000, 3);
        println!(
            "pods: 3 pod processes drain 100,000 noop steps: {three:.0} steps/s ({:.2} x one pod)",
            three / one
        );
    }
    if want("idle") {
        let (answer_ms, ready_ms, rss) = idle();
        println!("idle: /health answers {answer_ms:.1} ms after spawn; first heartbeat at {ready_ms:.1} ms; RSS after 5 s idle {:.1} MiB", rss as f64 / 1024.0);
    }
}
