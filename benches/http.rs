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
//! - `POST /submit/batch`: 1,000 `noop` steps per request, 4 connections.
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
}
