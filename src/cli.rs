//! The command-line client: talks to a running pod over its HTTP API.
//!
//! `--url` picks the pod (default `http://localhost:8000`); the admin token comes
//! from `FLEET_Q_ADMIN_TOKEN`. Output is for people by default, JSON with `--json`.
//! Errors print the API's `detail` and exit non-zero.

use std::time::Duration;

use serde_json::{json, Value};

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// The pod to talk to.
    #[arg(long, default_value = "http://localhost:8000")]
    pub url: String,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// A request to run against a pod: the client subcommands of `fleet-q`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Submit a step to a running pod.
    Submit {
        /// Step type.
        #[arg(long = "type")]
        step_type: String,
        /// Handler arguments as a JSON object.
        #[arg(long)]
        args: Option<String>,
        /// Priority (-1000 to 1000).
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i64>,
        /// Retries allowed (0 to 10).
        #[arg(long)]
        max_retries: Option<i64>,
        /// Client dedupe key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Seconds before it may run.
        #[arg(long)]
        delay_seconds: Option<f64>,
        /// Queue (default: `default`).
        #[arg(long)]
        queue: Option<String>,
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a step.
    Status {
        /// Step id.
        step_id: String,
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Queue depth and fleet capacity (admin).
    Queue {
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Who leads the fleet (admin).
    Leader {
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Every queue: paused, limits, pending, claimed, starts in the last minute (admin).
    Queues {
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Pause a queue fleet-wide: no pod claims its steps (admin).
    Pause {
        /// Queue name.
        name: String,
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Resume a paused queue (admin).
    Resume {
        /// Queue name.
        name: String,
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Every schedule: timing, next fire, last fire, counts (admin).
    Schedules {
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Act on one schedule, by id or name (admin): `show`, `pause`, `resume`,
    /// `trigger` (fire once now), `delete`, or `put` (create or replace it
    /// from `--body`, the JSON of `PUT /admin/schedules/{id}`).
    Schedule {
        /// What to do.
        #[arg(value_enum)]
        action: ScheduleAction,
        /// Schedule id or name.
        name: String,
        /// For `put`: the schedule as JSON, e.g.
        /// `{"every_seconds": 60, "step": {"type": "noop"}}`.
        #[arg(long)]
        body: Option<String>,
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run a recovery cycle on the leader (admin).
    Recover {
        /// Report what would be recovered without writing.
        #[arg(long)]
        dry_run: bool,
        /// Which pod, and the output form.
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// What `fleet-q schedule` does.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    /// Print it.
    Show,
    /// Stop it firing.
    Pause,
    /// Fire again from its next tick.
    Resume,
    /// Fire its step once, now.
    Trigger,
    /// Delete it (its steps are kept).
    Delete,
    /// Create or replace it from `--body`.
    Put,
}

impl ClientCommand {
    fn opts(&self) -> &ClientOpts {
        match self {
            ClientCommand::Submit { client, .. }
            | ClientCommand::Status { client, .. }
            | ClientCommand::Queue { client }
            | ClientCommand::Leader { client }
            | ClientCommand::Queues { client }
            | ClientCommand::Pause { client, .. }
            | ClientCommand::Resume { client, .. }
            | ClientCommand::Schedules { client }
            | ClientCommand::Schedule { client, .. }
            | ClientCommand::Recover { client, .. } => client,
        }
    }
}

/// Runs `cmd` against its pod and prints the answer; an error carries the
/// API's `detail`.
pub fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = std::env::var("FLEET_Q_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let o = cmd.opts();
    let v = rt
        .block_on(call(o.url.trim_end_matches('/'), token.as_deref(), &cmd))
        .map_err(anyhow::Error::msg)?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", human(&cmd, &v));
    }
    Ok(())
}

async fn call(url: &str, token: Option<&str>, cmd: &ClientCommand) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let req = match cmd {
        ClientCommand::Submit {
            step_type,
            args,
            priority,
            max_retries,
            idempotency_key,
            delay_seconds,
            queue,
            ..
        } => {
            let args: Option<Value> = args
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| format!("--args is not JSON: {e}"))?;
            let mut body = json!({ "type": step_type });
            let put = |b: &mut Value, k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    b[k] = v;
                }
            };
            put(&mut body, "args", args);
            put(&mut body, "priority", priority.map(Value::from));
            put(&mut body, "max_retries", max_retries.map(Value::from));
            put(
                &mut body,
                "idempotency_key",
                idempotency_key.clone().map(Value::from),
            );
            put(&mut body, "delay_seconds", delay_seconds.map(Value::from));
            put(&mut body, "queue", queue.clone().map(Value::from));
            client.post(format!("{url}/submit")).json(&body)
        }
        ClientCommand::Status { step_id, .. } => client.get(format!("{url}/status/{step_id}")),
        ClientCommand::Queue { .. } => client.get(format!("{url}/admin/queue")),
        ClientCommand::Leader { .. } => client.get(format!("{url}/admin/leader")),
        ClientCommand::Queues { .. } => client.get(format!("{url}/admin/queues")),
        ClientCommand::Pause { name, .. } => {
            client.post(format!("{url}/admin/queues/{}/pause", path_segment(name)?))
        }
        ClientCommand::Resume { name, .. } => {
            client.post(format!("{url}/admin/queues/{}/resume", path_segment(name)?))
        }
        ClientCommand::Schedules { .. } => client.get(format!("{url}/admin/schedules")),
        ClientCommand::Schedule {
            action, name, body, ..
        } => {
            let base = format!("{url}/admin/schedules/{}", schedule_segment(name)?);
            match action {
                ScheduleAction::Show => client.get(base),
                ScheduleAction::Pause => client.post(format!("{base}/pause")),
                ScheduleAction::Resume => client.post(format!("{base}/resume")),
                ScheduleAction::Trigger => client.post(format!("{base}/trigger")),
                ScheduleAction::Delete => client.delete(base),
                ScheduleAction::Put => {
                    let body: Value = body
                        .as_deref()
                        .ok_or("put needs --body with the schedule as JSON")
                        .and_then(|b| serde_json::from_str(b).map_err(|_| "--body is not JSON"))
                        .map_err(|e| e.to_string())?;
                    client.put(base).json(&body)
                }
            }
        }
        ClientCommand::Recover { dry_run, .. } => client
            .post(format!("{url}/admin/recovery/run"))
            .json(&json!({ "dry_run": dry_run })),
    };
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(json!({"message": "done"}));
    }
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("{url} answered {status} without JSON: {e}"))?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!(
            "{status}: {} ({})",
            v["detail"].as_str().unwrap_or("request failed"),
            v["error_type"].as_str().unwrap_or("unknown")
        ))
    }
}

/// A queue name as a URL path segment: names are `A-Z a-z 0-9 . _ -`, so
/// anything else is refused here rather than sent.
fn path_segment(name: &str) -> Result<&str, String> {
    match fleet_q_actors::queue::name_problem(name) {
        Some(why) => Err(format!("queue name {why}")),
        None => Ok(name),
    }
}

/// A schedule id or name as a URL path segment (ids are hex, names
/// `A-Z a-z 0-9 . _ -`).
fn schedule_segment(name: &str) -> Result<&str, String> {
    match fleet_q_actors::queue::name_problem(name) {
        Some(why) => Err(format!("schedule id or name {why}")),
        None => Ok(name),
    }
}

fn schedule_line(v: &Value) -> String {
    let timing = match (&v["cron"], &v["every_seconds"]) {
        (Value::String(c), _) => format!("cron {c} {}", s(&v["time_zone"])),
        (_, n) => format!("every {}s", s(n)),
    };
    let last = v["recent"]
        .get(0)
        .map(|f| format!("{} -> {}", s(&f["tick"]), s(&f["step_id"])))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<24} {:<8} {:<34} next {:<30} fires {:<6} skipped {:<6} last {}\n",
        s(&v["name"]),
        if v["paused"] == json!(true) {
            "paused"
        } else {
            "active"
        },
        timing,
        s(&v["next_run_at"]),
        s(&v["fires"]),
        s(&v["skipped"]),
        last
    )
}

fn queue_line(q: &Value) -> String {
    let rate = match (&q["rate_per_second"], &q["burst"]) {
        (Value::Null, _) => "-".to_string(),
        (r, b) => format!("{}/s burst {}", s(r), s(b)),
    };
    format!(
        "{:<30} {:<8} limit {:<8} rate {:<18} pending {:<8} claimed {:<8} started/min {}\n",
        s(&q["name"]),
        if q["paused"] == json!(true) {
            "paused"
        } else {
            "running"
        },
        s(&q["max_concurrency"]),
        rate,
        s(&q["pending"]),
        s(&q["claimed"]),
        s(&q["started_last_minute"])
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn human(cmd: &ClientCommand, v: &Value) -> String {
    match cmd {
        ClientCommand::Submit { .. } => format!("{}\t{}\n", s(&v["step_id"]), s(&v["message"])),
        ClientCommand::Status { .. } => {
            let mut out = String::new();
            for k in [
                "step_id",
                "status",
                "claimed_by",
                "attempt",
                "retry_count",
                "max_retries",
                "priority",
                "created_ts",
                "run_at",
                "last_update_ts",
                "last_error",
                "result",
            ] {
                out.push_str(&format!("{k:<15} {}\n", s(&v[k])));
            }
            out.push_str(&format!("{:<15} {}\n", "type", s(&v["payload"]["type"])));
            out
        }
        ClientCommand::Queue { .. } => {
            let mut out = format!(
                "pending {}  claimed {}  completed {}  failed {}  cancelled {}\n",
                s(&v["pending_steps"]),
                s(&v["claimed_steps"]),
                s(&v["completed_steps"]),
                s(&v["failed_steps"]),
                s(&v["cancelled_steps"])
            );
            out.push_str(&format!(
                "active pods {}  leader {}  oldest pending {}s\n",
                s(&v["active_pods"]),
                s(&v["current_leader"]),
                s(&v["oldest_pending_age_seconds"])
            ));
            if let Some(m) = v["pod_capacity"].as_object() {
                for (pod, c) in m {
                    out.push_str(&format!(
                        "  {pod:<40} {}/{}\n",
                        s(&c["current"]),
                        s(&c["max"])
                    ));
                }
            }
            out
        }
        ClientCommand::Queues { .. } => v["queues"]
            .as_array()
            .map(|qs| qs.iter().map(queue_line).collect())
            .unwrap_or_default(),
        ClientCommand::Pause { .. } | ClientCommand::Resume { .. } => queue_line(v),
        ClientCommand::Schedules { .. } => v["schedules"]
            .as_array()
            .map(|all| all.iter().map(schedule_line).collect())
            .unwrap_or_default(),
        ClientCommand::Schedule { action, .. } => match action {
            ScheduleAction::Trigger => format!("{}\n", s(&v["step_id"])),
            ScheduleAction::Delete => "deleted\n".into(),
            _ => schedule_line(v),
        },
        ClientCommand::Leader { .. } => {
            let mut out = format!(
                "leader {} (born {})  active pods {}\n",
                s(&v["current_leader"]),
                s(&v["leader_birth_ts"]),
                s(&v["active_pods"])
            );
            if let Some(pods) = v["election_details"]["eligible_pods"].as_array() {
                for p in pods {
                    let mark = if p["is_leader"] == json!(true) {
                        "*"
                    } else {
                        " "
                    };
                    out.push_str(&format!(
                        "{mark} {:<40} born {}  last heartbeat {}\n",
                        s(&p["pod_id"]),
                        s(&p["birth_ts"]),
                        s(&p["last_heartbeat_ts"])
                    ));
                }
            }
            out
        }
        ClientCommand::Recover { .. } => {
            let r = &v["recovery_summary"];
            format!(
                "{}\ncycle {}: dead pods {} {}, orphaned {}, requeued {}, failed {}, {} ms\n",
                s(&v["message"]),
                s(&r["cycle_id"]),
                s(&r["dead_pods_found"]),
                s(&r["dead_pods"]),
                s(&r["orphaned_steps_found"]),
                s(&r["steps_requeued"]),
                s(&r["steps_marked_terminal"]),
                s(&r["duration_ms"])
            )
        }
    }
}
