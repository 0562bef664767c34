//! HTTP submit throughput, each beside its ceiling measured in the same run.
//!
//! ```sh
//! cargo bench --bench http
//! ```
//!
//! - ceiling: a bare actix-web route answering 201 with a small JSON body, same
//!   worker count, same client;
//! - `POST /submit`: one step per request, 32 concurrent keep-alive connections,
//!   into the embedded SQLite store (group commit);
//! - `POST /submit/batch`: 1,000 `noop` steps per request, 4 connections;
//! - stalled bodies: 5,000 connections that send a request head and part of a body,
//!   against a fresh pod with the default limits. `/health` latency is sampled every
//!   20 ms throughout (the target: every answer within 100 ms), and the pod's RSS
//!   before, at the peak and 25 s after the connections close.
//!
//! The load generator runs in this process (tokio + reqwest); server and client
//! share the machine's cores, for the ceiling and for fleet-q alike.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

const RUN: Duration = Duration::from_secs(5);

fn bare_server() -> (String, actix_web::dev::ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let srv = HttpServer::new(|| {
                App::new().route(
                    "/submit",
                    web::post().to(|_body: web::Json<serde_json::Value>| async {
                        HttpResponse::Created()
                            .json(json!({"step_id": "0", "status": "submitted", "message": "ok"}))
                    }),
                )
            })
            .workers(2)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            tx.send(srv.handle()).unwrap();
            srv.await.unwrap();
        });
    });
    (url, rx.recv().unwrap())
}

fn fleet_q_server(dir: &std::path::Path) -> (String, std::process::Child) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("fleet-q");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("FLEET_Q_SQLITE_DB_PATH", dir.join("http.db"))
        .env("FLEET_Q_LEDGER_PATH", ":memory:")
        .env("FLEET_Q_LOG_LEVEL", "WARN")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get(format!("{url}/health")).send().is_err() {
        assert!(Instant::now() < deadline, "fleet-q did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (url, child)
}

/// Drives `conns` connections posting `body` to `url` for [`RUN`]; returns
/// (successful requests per second, non-2xx answers).
fn load(url: &str, body: serde_json::Value, conns: usize) -> (f64, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let body = Arc::new(serde_json::to_vec(&body).unwrap());
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = url.to_string();
    let elapsed = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conns)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (client, url, body, ok, bad, stop) = (
                    client.clone(),
                    url.clone(),
                    body.clone(),
                    ok.clone(),
                    bad.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.as_ref().clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(RUN).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        t0.elapsed()
    });
    (
        ok.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        bad.load(Ordering::Relaxed),
    )
}

fn main() {
    let (bare, handle) = bare_server();
    let (ceiling, bad) = load(&format!("{bare}/submit"), json!({"type": "noop"}), 32);
    println!(
        "ceiling: bare actix-web route, 32 connections: {ceiling:.0} requests/s ({bad} errors)"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(handle.stop(false));

    let dir = tempfile::tempdir().unwrap();
    let (url, mut child) = fleet_q_server(dir.path());
    let (single, bad) = load(&format!("{url}/submit"), json!({"type": "noop"}), 32);
    println!(
        "POST /submit, 32 connections: {single:.0} requests/s ({:.0} % of the ceiling, {bad} errors)",
        100.0 * single / ceiling
    );
    let steps: Vec<_> = (0..1000)
        .map(|i| json!({"type": "noop", "args": {"i": i}}))
        .collect();
    let (batches, bad) = load(&format!("{url}/submit/batch"), json!({ "steps": steps }), 4);
    println!(
        "POST /submit/batch of 1,000, 4 connections: {:.0} steps/s ({batches:.1} requests/s, {bad} errors)",
        batches * 1000.0
    );
    let _ = child.kill();
    let _ = child.wait();

    stalled_bodies(5_000);
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Opens `n` connections with stalled bodies against a fresh pod while sampling
/// `/health`; reports probe latency and memory.
fn stalled_bodies(n: usize) {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (url, mut child) = fleet_q_server(dir.path());
    let pid = child.id();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let before = rss_mib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let c = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut lat = Vec::new();
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match c.get(format!("{url}/health")).send() {
                    Ok(r) if r.status().is_success() => lat.push(t.elapsed().as_secs_f64() * 1e3),
                    _ => failures += 1,
                }
                std::thread::sleep(Duration::from_millis(20)); // sampling period
            }
            (lat, failures)
        })
    };
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut peak = before;
    for i in 0..n {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(
                b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":",
            );
            conns.push(s);
        }
        if i % 500 == 0 {
            peak = peak.max(rss_mib(pid));
        }
    }
    let opened = t0.elapsed();
    // Read every answer (408 after the body deadline, or 503 past the cap).
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for s in &mut conns {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 64];
        let got = s.read(&mut buf).unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..got]).to_string();
        let status = head.split(' ').nth(1).unwrap_or("none").to_string();
        *answers.entry(status).or_default() += 1;
        if answers.values().sum::<usize>() % 500 == 0 {
            peak = peak.max(rss_mib(pid));
        }
    }
    drop(conns);
    let during = t0.elapsed();
    std::thread::sleep(Duration::from_secs(25)); // jemalloc returns freed pages over ~10-20 s
    stop.store(true, Ordering::Relaxed);
    let (mut lat, failures) = prober.join().unwrap();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let after = rss_mib(pid);
    println!(
        "stalled bodies: {n} connections opened in {:.1} s, all answered in {:.1} s: {answers:?}",
        opened.as_secs_f64(),
        during.as_secs_f64()
    );
    println!(
        "  /health during the attack: {} probes, {failures} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("  pod RSS: {before:.1} MiB before, {peak:.1} MiB peak, {after:.1} MiB 25 s after the connections closed");
    let _ = child.kill();
    let _ = child.wait();
}
