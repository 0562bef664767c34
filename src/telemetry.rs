//! Logging: `tracing` to stdout as JSON lines (the seed's default) or console text,
//! at `FLEET_Q_LOG_LEVEL`. `RUST_LOG`, when set, overrides the level with a full
//! filter (e.g. `fleet_q=debug,actix_web=info`). Every HTTP request is logged once,
//! when it ends, with a `request_id` (tracing-actix-web).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber once; later calls are ignored.
pub fn init(settings: &Settings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            let lvl = settings.log_level.to_ascii_lowercase();
            EnvFilter::new(format!(
                "{lvl},actix_server=warn,actix_web=warn,h2=warn,hyper=warn,reqwest=warn"
            ))
        });
    // Span-close events give one log line per HTTP request (tracing-actix-web's
    // request span, with its request id, route, status and duration).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stdout);
    let _ = match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Console => builder.try_init(),
    };
}
