//! The `fleet-q` command line: parse arguments, load settings, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
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
    #[command(flatten)]
    Client(fleet_q::cli::ClientCommand),
    /// Load-test pods: throughput, latency, statements, memory (see BENCHMARKS.md).
    Bench(bench::BenchOpts),
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

/// Loads the settings; exit 2 listing every problem.
fn load(cli_config: Option<&std::path::Path>) -> Result<config::Settings, ExitCode> {
    config::load(&Sources::from_process(cli_config)).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Exit 0, or 1 with the error on stderr.
fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-q: {e:#}");
            ExitCode::from(1)
        }
    }
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
    let settings = || load(cli.config.as_deref());
    match cli.command {
        Command::Client(cmd) => exit(fleet_q::cli::run(cmd)),
        Command::Bench(o) => exit(bench::run(o)),
        Command::Check { json, smoke } => match settings() {
            Ok(s) => exit(fleet_q::check::run(&s, json, smoke)),
            Err(code) => code,
        },
        Command::Schema { apply } => match settings() {
            Ok(s) => exit(fleet_q::check::schema(&s, apply)),
            Err(code) => code,
        },
        Command::Serve { port, host } => match settings() {
            Ok(s) => serve(s, port, host),
            Err(code) => code,
        },
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
            let settings = match settings() {
                Ok(s) => s,
                Err(code) => return code,
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
