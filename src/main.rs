//! The `fleet-q` command line: parse arguments, load settings, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_q::config::{self, Sources, KEYS};

/// jemalloc gives freed memory back to the OS within seconds of its being freed
/// (one background thread, see `main`), so a pod's RSS falls again after a burst
/// (thousands of connections, a large backlog); glibc's malloc keeps it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "fleet-q",
    version,
    about = "A brokerless distributed step queue"
)]
struct Cli {
    /// Optional TOML settings file (keys as in `fleet-q config`, lower case, without
    /// the FLEET_Q_ prefix); FLEET_Q_* environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pod: claim and run steps, serve the HTTP API.
    Serve {
        /// HTTP port (overrides FLEET_Q_API_PORT).
        #[arg(long)]
        port: Option<u16>,
        /// Bind address (overrides FLEET_Q_API_HOST).
        #[arg(long)]
        host: Option<String>,
    },
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
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a step.
    Status {
        /// Step id.
        step_id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Queue depth and fleet capacity (admin).
    Queue {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Who leads the fleet (admin).
    Leader {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run a recovery cycle on the leader (admin).
    Recover {
        /// Report what would be recovered without writing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Load-test pods: throughput, latency, statements, memory (see BENCHMARKS.md).
    Bench {
        /// A running pod to drive; without it, pods are started.
        #[arg(long)]
        url: Option<String>,
        /// Local pods to start on one store.
        #[arg(long, default_value_t = 1)]
        pods: usize,
        /// Store for started pods: sqlite (a temporary file) or snowflake (the
        /// configured account).
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "snowflake"])]
        store: String,
        /// Steps to submit.
        #[arg(long, default_value_t = 10_000)]
        steps: usize,
        /// Step type: noop or sleep.
        #[arg(long = "type", default_value = "noop")]
        step_type: String,
        /// Milliseconds per sleep step.
        #[arg(long, default_value_t = 10)]
        sleep_ms: u64,
        /// Steps per request (1: POST /submit; more: POST /submit/batch).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Comma-separated priorities to draw from.
        #[arg(
            long,
            default_value = "0",
            value_delimiter = ',',
            allow_hyphen_values = true
        )]
        priorities: Vec<i32>,
        /// FLEET_Q_MAX_PARALLELISM for started pods.
        #[arg(long)]
        max_parallelism: Option<u32>,
        /// FLEET_Q_CLAIM_BATCH_SIZE for started pods.
        #[arg(long)]
        claim_batch: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Connect to the configured store and report what works.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also run every statement shape the store sends, once, in a scratch
        /// schema that is dropped afterwards (the first thing to run against a
        /// new Snowflake account; leaves the configured schema untouched).
        #[arg(long)]
        smoke: bool,
    },
    /// Print the store's DDL (STEP_TRACKER, POD_HEALTH), or apply it.
    Schema {
        /// Create missing tables and indexes in the configured store.
        #[arg(long)]
        apply: bool,
    },
    /// Print the effective settings (secrets redacted) after validating them.
    Config {
        /// Print JSON instead of FLEET_Q_NAME=value lines.
        #[arg(long)]
        json: bool,
        /// List every setting with its default and meaning instead.
        #[arg(long)]
        describe: bool,
    },
}

/// Options of the client commands.
#[derive(clap::Args, Clone)]
struct ClientOpts {
    /// The pod to talk to.
    #[arg(long, default_value = "http://localhost:8000")]
    url: String,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

fn client(o: ClientOpts, cmd: fleet_q::cli::ClientCommand) -> ExitCode {
    code(fleet_q::cli::run(&o.url, o.json, cmd))
}

/// Loads the settings (exit 2 listing every problem) and runs `f` with them.
fn with_settings(
    cli_config: Option<&std::path::Path>,
    f: impl FnOnce(config::Settings) -> ExitCode,
) -> ExitCode {
    match load(cli_config) {
        Ok(s) => f(s),
        Err(code) => code,
    }
}

/// 0 is success; any other code is 1.
fn code(c: i32) -> ExitCode {
    if c == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn load(cli_config: Option<&std::path::Path>) -> Result<config::Settings, ExitCode> {
    config::load(&Sources::from_process(cli_config)).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn serve(mut settings: config::Settings, port: Option<u16>, host: Option<String>) -> ExitCode {
    if let Some(p) = port {
        settings.api_port = p;
    }
    if let Some(h) = host {
        settings.api_host = h;
    }
    fleet_q::telemetry::init(&settings);
    let addr = format!("{}:{}", settings.api_host, settings.api_port);
    let listener = match std::net::TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let sys = actix_rt::System::new();
    sys.block_on(async move {
        actix_rt::spawn(async move {
            let r = fleet_q::serve::run(settings, listener, fleet_q::serve::signals()).await;
            let code = match r {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "pod failed");
                    eprintln!("fleet-q: {e:#}");
                    1
                }
            };
            actix_rt::System::current().stop_with_code(code);
        });
    });
    match sys.run_with_code() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("fleet-q: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    // One jemalloc background thread returns freed pages to the OS on a timer,
    // also while the pod is idle (without it, pages are returned only as the
    // process allocates). One, not one per core: several pods share a machine.
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    match cli.command {
        Command::Submit {
            step_type,
            args,
            priority,
            max_retries,
            idempotency_key,
            delay_seconds,
            client: o,
        } => client(
            o,
            fleet_q::cli::ClientCommand::Submit {
                step_type,
                args,
                priority,
                max_retries,
                idempotency_key,
                delay_seconds,
            },
        ),
        Command::Status { step_id, client: o } => {
            client(o, fleet_q::cli::ClientCommand::Status { step_id })
        }
        Command::Queue { client: o } => client(o, fleet_q::cli::ClientCommand::Queue),
        Command::Leader { client: o } => client(o, fleet_q::cli::ClientCommand::Leader),
        Command::Recover { dry_run, client: o } => {
            client(o, fleet_q::cli::ClientCommand::Recover { dry_run })
        }
        Command::Bench {
            url,
            pods,
            store,
            steps,
            step_type,
            sleep_ms,
            batch,
            concurrency,
            priorities,
            max_parallelism,
            claim_batch,
            json,
        } => {
            let mut pod_env = Vec::new();
            if let Some(p) = max_parallelism {
                pod_env.push(("FLEET_Q_MAX_PARALLELISM".to_string(), p.to_string()));
                pod_env.push(("FLEET_Q_CAPACITY_THRESHOLD".to_string(), "1".to_string()));
            }
            if let Some(b) = claim_batch {
                pod_env.push(("FLEET_Q_CLAIM_BATCH_SIZE".to_string(), b.to_string()));
            }
            let code = fleet_q::bench::run(fleet_q::bench::BenchOpts {
                url,
                pods,
                store,
                steps,
                step_type,
                sleep_ms,
                batch,
                concurrency,
                priorities,
                pod_env,
                json,
            });
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Check { json, smoke } => with_settings(cli.config.as_deref(), |s| {
            code(fleet_q::check::run(&s, json, smoke))
        }),
        Command::Schema { apply } => with_settings(cli.config.as_deref(), |s| {
            code(fleet_q::check::schema(&s, apply))
        }),
        Command::Serve { port, host } => {
            with_settings(cli.config.as_deref(), |s| serve(s, port, host))
        }
        Command::Config { json, describe } => {
            if describe {
                for k in KEYS {
                    println!(
                        "{:<44} default {:<14} {} ({})",
                        k.env(),
                        format!("{:?}", k.default),
                        k.doc,
                        k.kind
                    );
                }
                return ExitCode::SUCCESS;
            }
            let settings = match config::load(&Sources::from_process(cli.config.as_deref())) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if json {
                let map: serde_json::Map<String, serde_json::Value> = settings
                    .entries()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&map).expect("json"));
            } else {
                for (k, v) in settings.entries() {
                    println!("{k}={v}");
                }
            }
            ExitCode::SUCCESS
        }
    }
}
