//! Shared test support: real pod processes, a recording step service, and waits
//! on observable state with deadlines (never fixed sleeps).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

/// Polls `check` every few milliseconds until it returns `Some`, or panics with
/// `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
    match poll_until(Instant::now() + limit, check) {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every few milliseconds until it returns `Some`, or returns
/// `None` once `deadline` has passed (for callers that build their own failure
/// message). Every test wait for observable state goes through here.
pub fn poll_until<T>(deadline: Instant, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

/// The last `n` lines of a pod's log, headed by its path, for failure messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    format!("--- last {n} lines of {} ---\n{tail}\n", log.display())
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A blocking HTTP client for tests.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Fast timings so cluster behaviour shows within seconds.
pub fn fast_env() -> Vec<(&'static str, String)> {
    vec![
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "1".into()),
        ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "3".into()),
        ("FLEET_Q_LEADER_CHECK_INTERVAL_SECONDS", "1".into()),
        ("FLEET_Q_RECOVERY_INTERVAL_SECONDS", "1".into()),
        ("FLEET_Q_CLAIM_INTERVAL_SECONDS", "1".into()),
        ("FLEET_Q_DEFAULT_BASE_DELAY_MS", "50".into()),
        ("FLEET_Q_DEFAULT_MAX_DELAY_MS", "500".into()),
        ("FLEET_Q_LOG_FORMAT", "json".into()),
        ("FLEET_Q_LOG_LEVEL", "INFO".into()),
    ]
}

/// One `fleet-q serve` process.
pub struct PodProc {
    /// The configured id prefix.
    pub name: String,
    /// The pod's actual id (prefix + incarnation suffix), from `/health`.
    pub id: String,
    pub port: u16,
    pub child: Child,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

impl PodProc {
    /// Starts `fleet-q serve` on the database `db`, with `env` on top of the fast
    /// timings.
    pub fn start(dir: &Path, db: &Path, name: &str, env: &[(&str, String)]) -> PodProc {
        Self::start_with(dir, db, name, env, |_| {})
    }

    /// [`PodProc::start`], with `tweak` applied to the command last. A port
    /// taken between [`free_port`] and the pod's bind (another test's pod got
    /// the same one) is retried on a new port, so parallel tests never meet
    /// each other's pods.
    pub fn start_with(
        dir: &Path,
        db: &Path,
        name: &str,
        env: &[(&str, String)],
        tweak: impl Fn(&mut Command),
    ) -> PodProc {
        let mut log = dir.join(format!("{name}.log"));
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-q"));
            cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("FLEET_Q_SQLITE_DB_PATH", db)
                .env("FLEET_Q_POD_ID", name)
                .env("FLEET_Q_LEDGER_PATH", dir.join(format!("{name}-ledger.db")))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::options().append(true).open(&log).unwrap());
            for (k, v) in fast_env() {
                cmd.env(k, v);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            tweak(&mut cmd);
            let child = cmd.spawn().expect("spawn fleet-q serve");
            let mut p = PodProc {
                name: name.to_string(),
                id: String::new(),
                port,
                child,
                log,
                exited: None,
            };
            match p.wait_own_health() {
                Some(h) => {
                    p.id = h["pod_id"].as_str().unwrap_or_default().to_string();
                    return p;
                }
                None => {
                    let text = p.log_text();
                    assert!(
                        text.contains("in use"),
                        "{name} exited before becoming healthy:\n{}",
                        log_tail(&p.log, 20)
                    );
                    log = p.log.clone();
                    eprintln!("{name}: port {port} was taken meanwhile; trying another");
                }
            }
        }
        panic!("{name}: no free port in 5 tries");
    }

    /// `/health` of this process once its heartbeat is healthy, or `None`
    /// when it exited first. An answer from another process on the port (its
    /// id lacks this pod's prefix) is not this pod's.
    fn wait_own_health(&mut self) -> Option<Value> {
        let c = client();
        wait_for(
            &format!("{} to be healthy", self.name),
            Duration::from_secs(90),
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.exited = Some(status);
                    return Some(None);
                }
                let h: Value = c.get(self.url("/health")).send().ok()?.json().ok()?;
                let ours = h["pod_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&self.name));
                (ours && h["heartbeat_healthy"] == json!(true)).then_some(Some(h))
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/health` once the pod answers and its heartbeat is healthy.
    pub fn wait_healthy(&self) -> Value {
        let c = client();
        // A pod is healthy after its schema check and first heartbeat. On the
        // Snowflake emulator the schema check's DDL runs alone (each waits for
        // every other statement to finish): a pod restarted in the middle of a
        // chaos test on a loaded 2-core machine was seen to need over 30 s.
        wait_for(
            &format!("{} to be healthy", self.name),
            Duration::from_secs(90),
            || {
                let h: Value = c.get(self.url("/health")).send().ok()?.json().ok()?;
                (h["heartbeat_healthy"] == json!(true)).then_some(h)
            },
        )
    }

    pub fn health(&self) -> Option<Value> {
        client().get(self.url("/health")).send().ok()?.json().ok()
    }

    pub fn is_leader(&self) -> bool {
        self.health().is_some_and(|h| h["is_leader"] == json!(true))
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    pub fn kill9(&mut self) {
        self.signal("-KILL");
        self.exited = Some(self.child.wait().unwrap());
    }

    pub fn term(&self) {
        self.signal("-TERM");
    }

    pub fn stop(&self) {
        self.signal("-STOP");
    }

    pub fn cont(&self) {
        self.signal("-CONT");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let child = &mut self.child;
        let s = wait_for("the pod to exit", limit, || child.try_wait().unwrap());
        self.exited = Some(s);
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Submits one step through the HTTP API, returning its id.
pub fn submit(c: &reqwest::blocking::Client, pod: &PodProc, body: Value) -> String {
    let r = c.post(pod.url("/submit")).json(&body).send().unwrap();
    assert!(r.status().is_success(), "submit failed: {}", r.status());
    let v: Value = r.json().unwrap();
    v["step_id"].as_str().unwrap().to_string()
}

/// Submits `bodies` from several threads, returning ids in submission order.
pub fn submit_many(pod: &PodProc, bodies: Vec<Value>, threads: usize) -> Vec<String> {
    let url = pod.url("/submit");
    let chunks: Vec<Vec<(usize, Value)>> = {
        let mut c: Vec<Vec<(usize, Value)>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, b) in bodies.into_iter().enumerate() {
            c[i % threads].push((i, b));
        }
        c
    };
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = client();
                chunk
                    .into_iter()
                    .map(|(i, b)| {
                        let r = c.post(&url).json(&b).send().unwrap();
                        assert!(r.status().is_success(), "submit failed: {}", r.status());
                        let v: Value = r.json().unwrap();
                        (i, v["step_id"].as_str().unwrap().to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(usize, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    all.into_iter().map(|(_, id)| id).collect()
}

/// A second handle on a pod fleet's database, for observing state.
pub struct Observer {
    pub store: SqliteStore,
    rt: tokio::runtime::Runtime,
}

impl Observer {
    pub fn open(db: &Path) -> Observer {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = SqliteStore::open(db, SqliteOptions::default()).unwrap();
        Observer { store, rt }
    }

    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn stats(&self) -> fleet_q_actors::QueueStats {
        use fleet_q_actors::Store;
        self.block(self.store.queue_stats()).unwrap()
    }

    pub fn step(&self, id: &str) -> fleet_q_actors::Step {
        use fleet_q_actors::Store;
        self.block(self.store.step_get(id.parse().unwrap()))
            .unwrap()
            .unwrap()
    }

    /// Waits until step `id` is completed; returns it.
    pub fn wait_completed(&self, id: &str, limit: Duration) -> fleet_q_actors::Step {
        wait_for(&format!("step {id} to complete"), limit, || {
            let s = self.step(id);
            (s.status == fleet_q_actors::StepStatus::Completed).then_some(s)
        })
    }

    /// Waits until every step is in a terminal status; returns the stats.
    pub fn wait_all_terminal(&self, total: u64, limit: Duration) -> fleet_q_actors::QueueStats {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.stats();
            let done = s.counts.completed + s.counts.failed + s.counts.cancelled;
            if done == total && s.counts.pending == 0 && s.counts.claimed == 0 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for every step to reach a terminal status: \
                 expected {total} steps, the store holds {:?}",
                s.counts
            );
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }
}

/// One call the recorder received.
#[derive(Clone, Debug)]
pub struct Call {
    pub step_id: String,
    pub attempt: u32,
    pub pod_id: String,
    pub at: Instant,
    /// The recorder answered 2xx (a successful run).
    pub ok: bool,
    /// The `Idempotency-Key` header the pod sent.
    pub idempotency_key: String,
}

/// A step service the pods call through their `http` handler. It records every
/// execution, then behaves as the step's `args` say:
/// `{"sleep_ms": n}` waits first; `{"status": 400}` answers that status.
pub struct Recorder {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    healed: Arc<std::sync::atomic::AtomicBool>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let healed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let h2 = healed.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/run", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = calls.clone();
        let thread = std::thread::spawn(move || {
            let sys = actix_rt::System::new();
            sys.block_on(async move {
                let calls = c2;
                let healed = h2;
                let server = HttpServer::new(move || {
                    let calls = calls.clone();
                    let healed = healed.clone();
                    App::new().route(
                        "/run",
                        web::post().to(move |req: HttpRequest, body: web::Json<Value>| {
                            let calls = calls.clone();
                            let healed = healed.clone();
                            async move {
                                let h = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_string()
                                };
                                let args = &body["args"];
                                let attempt: u32 = h("x-fleet-q-attempt").parse().unwrap_or(0);
                                let retry_count = body["retry_count"].as_u64().unwrap_or(0);
                                // `fail_first: n` answers 500 to the first n runs.
                                // `fail_until_healed: true` answers 500 until
                                // `Recorder::heal`.
                                let sick = args["fail_until_healed"] == true
                                    && !healed.load(std::sync::atomic::Ordering::SeqCst);
                                let status = if sick
                                    || args["fail_first"].as_u64().is_some_and(|n| retry_count < n)
                                {
                                    500
                                } else {
                                    args["status"].as_u64().unwrap_or(200) as u16
                                };
                                let call = Call {
                                    step_id: h("x-fleet-q-step-id"),
                                    attempt,
                                    pod_id: h("x-fleet-q-pod-id"),
                                    at: Instant::now(),
                                    ok: (200..300).contains(&status),
                                    idempotency_key: h("idempotency-key"),
                                };
                                calls.lock().unwrap().push(call.clone());
                                if let Some(ms) = args["sleep_ms"].as_u64() {
                                    // The service's own work: it takes `sleep_ms`
                                    // to answer (the workload, not a wait for state).
                                    actix_rt::time::sleep(Duration::from_millis(ms)).await;
                                }
                                // `redirect_to: url` answers 307 to it.
                                if let Some(to) = args["redirect_to"].as_str() {
                                    return HttpResponse::TemporaryRedirect()
                                        .insert_header(("location", to))
                                        .finish();
                                }
                                // `big_body_bytes: n` answers 200 with an n-byte body.
                                if let Some(n) = args["big_body_bytes"].as_u64() {
                                    return HttpResponse::Ok()
                                        .content_type("application/json")
                                        .body(format!("\"{}\"", "x".repeat(n as usize)));
                                }
                                HttpResponse::build(
                                    actix_web::http::StatusCode::from_u16(status).unwrap(),
                                )
                                .json(json!({
                                    "pod": call.pod_id,
                                    "attempt": call.attempt,
                                    "echo": args,
                                }))
                            }
                        }),
                    )
                })
                .workers(2)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
                tx.send(server.handle()).unwrap();
                server.await.unwrap();
            });
        });
        let handle = rx.recv().unwrap();
        Recorder {
            url,
            calls,
            healed,
            handle,
            thread: Some(thread),
        }
    }

    /// Steps with `fail_until_healed` succeed from now on.
    pub fn heal(&self) {
        self.healed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Executions per step id.
    pub fn executions(&self) -> HashMap<String, Vec<Call>> {
        let mut m: HashMap<String, Vec<Call>> = HashMap::new();
        for c in self.calls() {
            m.entry(c.step_id.clone()).or_default().push(c);
        }
        m
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let h = self.handle.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(h.stop(false));
        })
        .join()
        .ok();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Submits `bodies` through `pod` in batches of `chunk`; returns the ids in order.
pub fn submit_batches(
    c: &reqwest::blocking::Client,
    pod: &PodProc,
    bodies: &[Value],
    chunk: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(bodies.len());
    for part in bodies.chunks(chunk) {
        // A batch on the Snowflake emulator of a machine that is also building
        // can take well over the client's usual 10 s; this bound only stops a
        // hang.
        let r = c
            .post(pod.url("/submit/batch"))
            .timeout(Duration::from_secs(120))
            .json(&json!({ "steps": part }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "batch submit failed");
        let v: Value = r.json().unwrap();
        ids.extend(
            v["step_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string()),
        );
    }
    ids
}

/// [`submit_batches`] for batches whose steps all carry an idempotency key: a
/// batch answered 503 (the store slow or briefly unavailable, e.g. a loaded
/// machine past the store's timeout) is sent again until it is accepted or
/// `deadline` passes. The keys make a resend of a batch that was in fact stored
/// return the same steps instead of new ones.
pub fn submit_keyed_batches(
    c: &reqwest::blocking::Client,
    pod: &PodProc,
    bodies: &[Value],
    chunk: usize,
    deadline: Duration,
) -> Vec<String> {
    assert!(
        bodies.iter().all(|b| b["idempotency_key"].is_string()),
        "every step needs an idempotency key to be resent safely"
    );
    let mut ids = Vec::with_capacity(bodies.len());
    for part in bodies.chunks(chunk) {
        let v = wait_for("a batch to be accepted", deadline, || {
            let r = c
                .post(pod.url("/submit/batch"))
                .timeout(Duration::from_secs(120))
                .json(&json!({ "steps": part }))
                .send()
                .ok()?;
            match r.status().as_u16() {
                201 => r.json::<Value>().ok(),
                503 => None,
                other => panic!("batch submit answered {other}: {:?}", r.text()),
            }
        });
        ids.extend(
            v["step_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string()),
        );
    }
    ids
}

/// The chaos tests' fault schedule: the next kill comes once the fleet has
/// made between `steps` and twice `steps` more progress (at random) since the
/// last one, as `progress` counts it (finished steps, executions), so kills
/// follow the work however fast this machine runs it. `progress` returns
/// `None` once nothing is left to run, which ends the wait at once. A fleet
/// that makes no such progress within 60 s fails the test.
pub fn fault_after(steps: u64, mut progress: impl FnMut() -> Option<u64>) {
    let Some(start) = progress() else { return };
    let target = start + steps + rand::random::<u64>() % steps.max(1);
    let what = format!(
        "{} more steps of progress between two kills",
        target - start
    );
    wait_for(&what, Duration::from_secs(60), || match progress() {
        Some(n) if n < target => None,
        _ => Some(()),
    });
}

/// SIGKILLs `pods[victim]`, records its id in `killed`, and starts it again under
/// the same configured name (a new incarnation id).
pub fn kill_and_restart(
    pods: &mut [PodProc],
    victim: usize,
    dir: &Path,
    db: &Path,
    env: &[(&str, String)],
    killed: &mut std::collections::HashSet<String>,
) {
    let old_id = pods[victim].id.clone();
    killed.insert(old_id.clone());
    pods[victim].kill9();
    let name = pods[victim].name.clone();
    pods[victim] = PodProc::start(dir, db, &name, env);
    assert_ne!(
        pods[victim].id, old_id,
        "the restarted pod must run under a new incarnation"
    );
}

/// True when every pod's `/ready` answers `ready` (2xx) or, with `false`, 503.
pub fn all_ready(c: &reqwest::blocking::Client, pods: &[PodProc], ready: bool) -> bool {
    pods.iter().all(|p| {
        c.get(p.url("/ready"))
            .send()
            .map(|r| {
                if ready {
                    r.status().is_success()
                } else {
                    r.status().as_u16() == 503
                }
            })
            .unwrap_or(false)
    })
}

/// Asserts every step ran successfully at least once, and that any earlier
/// successful run of a step was on a pod in `killed`. Returns how many steps ran
/// successfully more than once.
pub fn assert_duplicates_only_from_killed(
    rec: &Recorder,
    ids: &[String],
    killed: &std::collections::HashSet<String>,
) -> usize {
    assert_duplicates_only_from_lost_pods(rec, ids, killed, &[])
}

/// Pod ids the store shows were presumed dead and rejoined (a row `<id>` marked
/// down with a successor row `<id>-r<n>`): a starved pod may lose its lease
/// without being killed, and its steps then legitimately run again.
pub fn rejoined_pods(rows: &[fleet_q_actors::PodRecord]) -> Vec<String> {
    rows.iter()
        .filter(|p| p.status == fleet_q_actors::PodStatus::Down)
        .filter(|p| {
            rows.iter()
                .any(|q| q.pod_id.starts_with(&format!("{}-r", p.pod_id)))
        })
        .map(|p| p.pod_id.clone())
        .collect()
}

/// The ids under which live pod processes were presumed dead and rejoined, from
/// their `/health` (`generation` n means ids `<id>`, `<id>-r1` … `<id>-r(n-1)`
/// were given up).
pub fn rejoined_processes(pods: &[PodProc]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pods {
        let g = p
            .health()
            .and_then(|h| h["generation"].as_u64())
            .unwrap_or(0);
        if g >= 1 {
            out.push(p.id.clone());
            out.extend((1..g).map(|i| format!("{}-r{i}", p.id)));
        }
    }
    out
}

/// Like [`assert_duplicates_only_from_killed`], also allowing earlier runs on the
/// pods in `rejoined` (presumed dead, see [`rejoined_pods`]).
pub fn assert_duplicates_only_from_lost_pods(
    rec: &Recorder,
    ids: &[String],
    killed: &std::collections::HashSet<String>,
    rejoined: &[String],
) -> usize {
    let execs = rec.executions();
    let mut duplicated = 0;
    for id in ids {
        let calls = execs
            .get(id)
            .unwrap_or_else(|| panic!("step {id} never ran"));
        let ok: Vec<&Call> = calls.iter().filter(|c| c.ok).collect();
        if ok.len() > 1 {
            duplicated += 1;
            for c in &ok[..ok.len() - 1] {
                assert!(
                    killed.contains(&c.pod_id) || rejoined.contains(&c.pod_id),
                    "step {id} succeeded twice; the earlier run was on {}, which was never killed nor presumed dead",
                    c.pod_id
                );
            }
        }
    }
    duplicated
}

/// Another process holding a SQLite database's write lock (`BEGIN IMMEDIATE`; in WAL
/// mode readers go on) until [`WriteLock::release`] or drop: every write of the
/// pods on that file waits out its busy timeout and fails.
pub struct WriteLock {
    child: Child,
}

impl WriteLock {
    /// Takes the lock; returns once it is held.
    pub fn hold(db: &Path) -> WriteLock {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n\
                 c.execute('COMMIT')",
            ])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the lock holder");
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        WriteLock { child }
    }

    /// Commits and lets go of the lock.
    pub fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `GET path` on `pod`: status and JSON body (Null when the body is not JSON).
/// The sum of the samples in Prometheus `text` whose line starts with
/// `series` (a name, or a name and its first labels).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn get_json(c: &reqwest::blocking::Client, pod: &PodProc, path: &str) -> (u16, Value) {
    let r = c.get(pod.url(path)).send().unwrap();
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

/// A 4 s step that `pod` runs first, and that first run. A submit wakes the
/// submitting pod's claimer at once, while other pods claim on their 1 s tick,
/// so `pod` almost always takes its own step; if another pod wins the race,
/// that step finishes normally and another is tried.
pub fn a_step_run_by(
    c: &reqwest::blocking::Client,
    rec: &Recorder,
    pod: &PodProc,
) -> (String, Call) {
    (0..5)
        .find_map(|_| {
            let id = submit(
                c,
                pod,
                json!({"type": "rec", "args": {"sleep_ms": 4000}, "max_retries": 3}),
            );
            let first = wait_for("the step's first run", Duration::from_secs(20), || {
                rec.executions().get(&id).map(|v| v[0].clone())
            });
            (first.pod_id == pod.id).then_some((id, first))
        })
        .unwrap_or_else(|| panic!("{} claimed none of five steps it was submitted", pod.name))
}

/// `/health` of a pod resumed after being presumed dead, once it counted a
/// fenced (late) result and rejoined as `<id>-r1` (healthy again: the new
/// identity's first heartbeat was written), waiting at most `limit`.
pub fn rejoined_after_a_fenced_result(pod: &PodProc, limit: Duration) -> Value {
    wait_for(
        &format!("{} to rejoin and count a fenced result", pod.name),
        limit,
        || {
            let h = pod.health()?;
            (h["fenced_results"].as_u64()? >= 1
                && h["pod_id"] == json!(format!("{}-r1", pod.id))
                && h["heartbeat_healthy"] == json!(true))
            .then_some(h)
        },
    )
}

/// Asserts `pod`'s late result was counted as fenced
/// (`fleet_q_fenced_results_total` at least 1) and never as a completion (no
/// non-zero `fleet_q_steps_finished_total{outcome="completed"}` series).
pub fn assert_late_result_fenced(c: &reqwest::blocking::Client, pod: &PodProc) {
    let metrics = c.get(pod.url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metric(&metrics, "fleet_q_fenced_results_total ") >= 1.0,
        "fenced counted:\n{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("fleet_q_steps_finished_total{")
                && l.contains("outcome=\"completed\"")
                && !l.ends_with(" 0")),
        "{} completed nothing that stood:\n{metrics}",
        pod.name
    );
}
