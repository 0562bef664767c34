//! The `fleet-q` command line: parse arguments, load settings, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_q::config::{self, Sources, KEYS};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { json, describe } => {
            if describe {
                for k in KEYS {
                    println!(
                        "{:<44} default {:<14} {}",
                        k.env(),
                        format!("{:?}", k.default),
                        k.doc
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
