//! `fleet-q bench`: a load generator for sizing and tuning.
//!
//! It drives a running pod (`--url`) or pods it starts itself (`--pods K` local
//! `fleet-q serve` processes on one SQLite file, or on the configured Snowflake
//! store with `--store snowflake`), submits N steps (single or batched, C at a time,
//! with a priority mix), waits for every one to reach a terminal status, and
//! reports:
//! - the drain rate (first submit to last completion, by the store's clock) as the
//!   headline, the submit rate, and the time the status verification took apart;
//! - submit→complete latency p50/p90/p99/max per step (store timestamps);
//! - submit→start latency p50/p90/p99 from the pods' own histogram
//!   (`fleet_q_step_start_latency_seconds`, as bucket upper bounds);
//! - store statements per 1,000 steps (`fleet_q_store_statements_total`);
//! - peak RSS per pod it started (`VmHWM`);
//! - errors, and any step that did not reach a terminal status.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `fleet-q bench`: what to run.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOpts {
    /// A running pod to drive; without it, pods are started.
    #[arg(long)]
    pub url: Option<String>,
    /// Local pods to start on one store.
    #[arg(long, default_value_t = 1)]
    pub pods: usize,
    /// Store for started pods: sqlite (a temporary file) or snowflake (the
    /// configured account).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "snowflake"])]
    pub store: String,
    /// Steps to submit.
    #[arg(long, default_value_t = 10_000)]
    pub steps: usize,
    /// Step type: noop or sleep.
    #[arg(long = "type", default_value = "noop")]
    pub step_type: String,
    /// Milliseconds per sleep step.
    #[arg(long, default_value_t = 10)]
    pub sleep_ms: u64,
    /// Steps per request (1: POST /submit; more: POST /submit/batch).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Comma-separated priorities to draw from.
    #[arg(
        long,
        default_value = "0",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub priorities: Vec<i32>,
    /// FLEET_Q_MAX_PARALLELISM for started pods.
    #[arg(long)]
    pub max_parallelism: Option<u32>,
    /// FLEET_Q_CLAIM_BATCH_SIZE for started pods.
    #[arg(long)]
    pub claim_batch: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchOpts {
    /// Extra `FLEET_Q_*` settings for started pods.
    fn pod_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(p) = self.max_parallelism {
            env.push(("FLEET_Q_MAX_PARALLELISM".to_string(), p.to_string()));
            env.push(("FLEET_Q_CAPACITY_THRESHOLD".to_string(), "1".to_string()));
        }
        if let Some(b) = self.claim_batch {
            env.push(("FLEET_Q_CLAIM_BATCH_SIZE".to_string(), b.to_string()));
        }
        env
    }
}

struct Pods {
    urls: Vec<String>,
    children: Vec<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_pods(o: &BenchOpts) -> Result<Pods, String> {
    if let Some(u) = &o.url {
        return Ok(Pods {
            urls: vec![u.trim_end_matches('/').to_string()],
            children: Vec::new(),
            _dir: None,
        });
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spawn = |i: usize| -> Result<(Child, String, PathBuf), String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        // The pod's log, kept for the error if it never becomes healthy.
        let log = dir.path().join(format!("pod-{i}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&exe);
        cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .env("FLEET_Q_POD_ID", format!("bench-{i}"))
            .env(
                "FLEET_Q_LEDGER_PATH",
                dir.path().join(format!("ledger-{i}.db")),
            )
            .env("FLEET_Q_LOG_LEVEL", "WARN")
            .env_remove("FLEET_Q_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log_file);
        if o.store == "sqlite" {
            cmd.env("FLEET_Q_STORAGE_MODE", "sqlite")
                .env("FLEET_Q_SQLITE_DB_PATH", dir.path().join("bench.db"));
        } else {
            cmd.env("FLEET_Q_STORAGE_MODE", "snowflake");
        }
        for (k, v) in &o.pod_env() {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a pod: {e}"))?;
        Ok((child, format!("http://127.0.0.1:{port}"), log))
    };
    let mut pods = Vec::new();
    for i in 0..o.pods.max(1) {
        pods.push(spawn(i)?);
    }
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, pod) in pods.iter_mut().enumerate() {
        // A pod whose port another process took between our pick and its
        // bind exits at once: it gets a new port, a few times.
        let mut respawns = 0;
        loop {
            let ok = client
                .get(format!("{}/health", pod.1))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["heartbeat_healthy"] == json!(true));
            if ok {
                break;
            }
            let exited = pod.0.try_wait().ok().flatten();
            let log = || std::fs::read_to_string(&pod.2).unwrap_or_default();
            if let Some(status) = exited {
                let text = log();
                if text.contains("in use") && respawns < 3 {
                    respawns += 1;
                    *pod = spawn(i)?;
                    continue;
                }
                return Err(format!("pod {} exited ({status}): {}", pod.1, tail(&text)));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pod {} did not become healthy in 60 s: {}",
                    pod.1,
                    tail(&log())
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (children, urls): (Vec<Child>, Vec<String>) =
        pods.into_iter().map(|(c, u, _)| (c, u)).unzip();
    Ok(Pods {
        urls,
        children,
        _dir: Some(dir),
    })
}

/// The last lines of a pod's log, for an error message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Sums of selected series over every pod's `/metrics`.
#[derive(Default, Clone)]
struct Scrape {
    statements: f64,
    start_buckets: BTreeMap<String, f64>,
}

fn scrape(client: &reqwest::blocking::Client, urls: &[String]) -> Scrape {
    let mut s = Scrape::default();
    for u in urls {
        let Ok(text) = client
            .get(format!("{u}/metrics"))
            .send()
            .and_then(|r| r.text())
        else {
            continue;
        };
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if name.starts_with("fleet_q_store_statements_total") {
                s.statements += v;
            } else if name.starts_with("fleet_q_step_start_latency_seconds_bucket") {
                if let Some(le) = name.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                    *s.start_buckets.entry(le.to_string()).or_default() += v;
                }
            }
        }
    }
    s
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}

/// Upper bounds (seconds) of the buckets holding the p50, p90 and p99 of the
/// observations added between two scrapes.
fn bucket_percentiles(before: &Scrape, after: &Scrape) -> Vec<(String, Option<f64>)> {
    let mut cum: Vec<(f64, f64)> = after
        .start_buckets
        .iter()
        .map(|(le, v)| {
            let le_v = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (
                le_v,
                v - before.start_buckets.get(le).copied().unwrap_or(0.0),
            )
        })
        .collect();
    cum.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = cum.last().map_or(0.0, |c| c.1);
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        .into_iter()
        .map(|(name, q)| {
            let v = (total > 0.0)
                .then(|| cum.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le))
                .flatten();
            (name.to_string(), v)
        })
        .collect()
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn step_body(o: &BenchOpts, i: usize) -> Value {
    let prio = o.priorities[i % o.priorities.len().max(1)];
    if o.step_type == "sleep" {
        json!({"type": "sleep", "args": {"ms": o.sleep_ms}, "priority": prio})
    } else {
        json!({"type": o.step_type, "priority": prio})
    }
}

/// Runs the benchmark and prints its report; an error when a step was lost or
/// failed, or the run could not be made.
pub fn run(o: BenchOpts) -> anyhow::Result<()> {
    let (report, ok) = run_inner(&o).map_err(|e| anyhow::anyhow!("bench: {e}"))?;
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_human(&report);
    }
    anyhow::ensure!(ok, "bench: a step was lost or failed (see the report)");
    Ok(())
}

fn run_inner(o: &BenchOpts) -> Result<(Value, bool), String> {
    let pods = start_pods(o)?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let before = scrape(&client, &pods.urls);
    let interactive = std::io::stderr().is_terminal() && !o.json;
    let bar = if interactive {
        let b = indicatif::ProgressBar::new(o.steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message("submitting");
        Some(b)
    } else {
        None
    };

    // Submit: C threads share a cursor over the steps.
    let batch = o.batch.max(1);
    let cursor = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let t0 = Instant::now();
    let threads: Vec<_> = (0..o.concurrency.max(1))
        .map(|w| {
            let (cursor, errors, ids, o, urls, bar) = (
                cursor.clone(),
                errors.clone(),
                ids.clone(),
                o.clone(),
                pods.urls.clone(),
                bar.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let url = &urls[w % urls.len()];
                loop {
                    let start = cursor.fetch_add(batch, Ordering::SeqCst);
                    if start >= o.steps {
                        break;
                    }
                    let end = (start + batch).min(o.steps);
                    let r = if batch == 1 {
                        client
                            .post(format!("{url}/submit"))
                            .json(&step_body(&o, start))
                            .send()
                    } else {
                        let steps: Vec<Value> = (start..end).map(|i| step_body(&o, i)).collect();
                        client
                            .post(format!("{url}/submit/batch"))
                            .json(&json!({ "steps": steps }))
                            .send()
                    };
                    match r
                        .ok()
                        .filter(|r| r.status().is_success())
                        .and_then(|r| r.json::<Value>().ok())
                    {
                        Some(v) => {
                            let mut got = Vec::new();
                            if let Some(id) = v["step_id"].as_str() {
                                got.push(id.to_string());
                            }
                            for id in v["step_ids"].as_array().into_iter().flatten() {
                                got.extend(id.as_str().map(String::from));
                            }
                            ids.lock().expect("ids").extend(got);
                        }
                        None => {
                            errors.fetch_add((end - start) as u64, Ordering::Relaxed);
                        }
                    }
                    if let Some(b) = &bar {
                        b.inc((end - start) as u64);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let submit_secs = t0.elapsed().as_secs_f64();
    let ids = Arc::try_unwrap(ids)
        .map(|m| m.into_inner().unwrap_or_default())
        .unwrap_or_default();
    if !interactive && !o.json {
        eprintln!("submitted {} steps in {submit_secs:.2}s", ids.len());
    }

    // Wait for every submitted step to reach a terminal status.
    if let Some(b) = &bar {
        b.set_position(0);
        b.set_message("completing");
    }
    let mut pending: Vec<String> = ids.clone();
    let mut finished: BTreeMap<String, Value> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (i, id) in pending.iter().enumerate() {
            let url = &pods.urls[i % pods.urls.len()];
            match client
                .get(format!("{url}/status/{id}"))
                .send()
                .and_then(|r| r.json::<Value>())
            {
                Ok(v)
                    if ["completed", "failed", "cancelled"]
                        .contains(&v["status"].as_str().unwrap_or("")) =>
                {
                    finished.insert(id.clone(), v);
                }
                _ => still.push(id.clone()),
            }
        }
        if let Some(b) = &bar {
            b.set_position(finished.len() as u64);
        }
        if !still.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        pending = still;
    }
    let total_secs = t0.elapsed().as_secs_f64();
    let verify_secs = total_secs - submit_secs;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let after = scrape(&client, &pods.urls);

    let mut lat: Vec<f64> = finished
        .values()
        .filter_map(|v| {
            let c = v["created_ts"]
                .as_str()?
                .parse::<chrono::DateTime<chrono::Utc>>()
                .ok()?;
            let d = v["last_update_ts"]
                .as_str()?
                .parse::<chrono::DateTime<chrono::Utc>>()
                .ok()?;
            Some((d - c).num_microseconds()? as f64 / 1e6)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    // The headline: how fast the pods drained the work, by the store's clock, from
    // the first step accepted to the last one finished. The status checks that
    // verify every step afterwards are timed apart (they measure this client).
    let ts = |v: &Value, k: &str| {
        v[k].as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
    };
    let first_created = finished.values().filter_map(|v| ts(v, "created_ts")).min();
    let last_finished = finished
        .values()
        .filter_map(|v| ts(v, "last_update_ts"))
        .max();
    let drain_secs = match (first_created, last_finished) {
        (Some(a), Some(b)) => (b - a).num_microseconds().map(|us| us as f64 / 1e6),
        _ => None,
    };
    let drain_rate = drain_secs
        .filter(|s| *s > 0.0)
        .map(|s| finished.len() as f64 / s);
    let failed = finished
        .values()
        .filter(|v| v["status"] != json!("completed"))
        .count();
    let statements = after.statements - before.statements;
    let rss: Vec<Value> = pods
        .children
        .iter()
        .map(|c| json!({"pid": c.id(), "peak_rss_mib": vm_kib(c.id(), "VmHWM:").map(|k| k as f64 / 1024.0), "rss_mib": vm_kib(c.id(), "VmRSS:").map(|k| k as f64 / 1024.0)}))
        .collect();
    let ms = |v: Option<f64>| v.map(|s| (s * 1e6).round() / 1e3);
    let report = json!({
        "target": if o.url.is_some() { "url" } else { o.store.as_str() },
        "pods": pods.urls.len(),
        "steps": o.steps,
        "step_type": o.step_type,
        "batch": batch,
        "concurrency": o.concurrency,
        "submitted": ids.len(),
        "submit_errors": errors.load(Ordering::Relaxed),
        "submit_rate_per_s": ids.len() as f64 / submit_secs,
        "drain_rate_per_s": drain_rate,
        "drain_secs": drain_secs,
        "completion_rate_per_s": finished.len() as f64 / total_secs,
        "verify_secs": verify_secs,
        "terminal": finished.len(),
        "not_terminal": pending,
        "failed_or_cancelled": failed,
        "submit_to_complete_ms": {"p50": ms(percentile(&lat, 0.5)), "p90": ms(percentile(&lat, 0.9)), "p99": ms(percentile(&lat, 0.99)), "max": ms(lat.last().copied())},
        "submit_to_start_ms_at_most": bucket_percentiles(&before, &after).into_iter().map(|(k, v)| (k, json!(ms(v)))).collect::<serde_json::Map<_, _>>(),
        "store_statements_per_1000_steps": if ids.is_empty() { Value::Null } else { json!(statements * 1000.0 / ids.len() as f64) },
        "pod_memory": rss,
    });
    let ok = pending_is_empty(&report) && failed == 0 && errors.load(Ordering::Relaxed) == 0;
    Ok((report, ok))
}

fn pending_is_empty(r: &Value) -> bool {
    r["not_terminal"].as_array().is_some_and(|a| a.is_empty())
}

fn print_human(r: &Value) {
    let f = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::Number(n) => n.as_f64().map_or(n.to_string(), |x| format!("{x:.1}")),
        other => other.to_string(),
    };
    println!(
        "fleet-q bench: {} {} steps, batch {}, concurrency {}, {} pod(s) on {}",
        r["steps"],
        r["step_type"].as_str().unwrap_or(""),
        r["batch"],
        r["concurrency"],
        r["pods"],
        r["target"].as_str().unwrap_or("")
    );
    println!(
        "  drained              {} steps/s ({} steps, first submit to last completion by store time: {} s)",
        f(&r["drain_rate_per_s"]),
        r["terminal"],
        f(&r["drain_secs"])
    );
    println!(
        "  submitted            {} ({} errors), {} steps/s",
        r["submitted"],
        r["submit_errors"],
        f(&r["submit_rate_per_s"])
    );
    println!(
        "  verified             {} terminal ({} failed or cancelled) by /status; verification took {} s after the submits",
        r["terminal"],
        r["failed_or_cancelled"],
        f(&r["verify_secs"])
    );
    let l = &r["submit_to_complete_ms"];
    println!(
        "  submit→complete ms   p50 {}  p90 {}  p99 {}  max {}",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"])
    );
    let s = &r["submit_to_start_ms_at_most"];
    println!(
        "  submit→start ms ≤    p50 {}  p90 {}  p99 {}",
        f(&s["p50"]),
        f(&s["p90"]),
        f(&s["p99"])
    );
    println!(
        "  statements/1k steps  {}",
        f(&r["store_statements_per_1000_steps"])
    );
    for p in r["pod_memory"].as_array().into_iter().flatten() {
        println!(
            "  pod pid {}            peak RSS {} MiB",
            p["pid"],
            f(&p["peak_rss_mib"])
        );
    }
    let missing = r["not_terminal"].as_array().map_or(0, Vec::len);
    if missing > 0 {
        println!(
            "  NOT TERMINAL         {missing} steps: {}",
            r["not_terminal"]
        );
    }
}
