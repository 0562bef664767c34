//! The one Prometheus registry `/metrics` serves, and helpers to define metrics
//! next to the code that updates them (names `fleet_q_<subsystem>_<name>_<unit>`).
//!
//! Metrics are process-wide: several pods in one process (tests, embedders) add
//! up in the same series.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Step types that may appear as a metric label: the types this process has
/// handlers for. Steps carry client-chosen types, so any other type is folded into
/// [`OTHER_TYPE`]; without that, a client could grow `/metrics` without bound.
static KNOWN_TYPES: LazyLock<std::sync::RwLock<std::collections::HashSet<String>>> =
    LazyLock::new(Default::default);

/// The label value every step type without a registered handler is counted under.
pub const OTHER_TYPE: &str = "other";

/// Adds `types` to the step types that may be metric labels (a pod's handler
/// types, at start).
pub fn allow_type_labels<'a>(types: impl IntoIterator<Item = &'a str>) {
    let mut known = KNOWN_TYPES.write().expect("type labels lock");
    known.extend(types.into_iter().map(str::to_string));
}

/// The label value for step type `t`: `t` when a handler is registered for it,
/// else [`OTHER_TYPE`].
pub fn type_label(t: &str) -> &str {
    if KNOWN_TYPES.read().expect("type labels lock").contains(t) {
        t
    } else {
        OTHER_TYPE
    }
}

/// The registry behind `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registering the same name twice is a programming error caught by tests.
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// A counter.
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric"))
}

/// A labelled counter.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A gauge.
pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric"))
}

/// A labelled gauge.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A histogram with `buckets`.
pub fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

/// A labelled histogram with `buckets`.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

/// Latency buckets in seconds, 100 µs … 60 s.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ]
}

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buf)
        .expect("text encoding into memory");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// Registers every engine metric, so `/metrics` lists each series (at zero) before
/// the first event.
pub fn register_all() {
    crate::actors::storage::register_metrics();
    crate::actors::executor::register_metrics();
    crate::actors::leader::register_metrics();
    crate::actors::claimer::register_metrics();
    crate::actors::recovery::register_metrics();
    crate::ledger::register_metrics();
    for a in crate::actors::ACTOR_NAMES {
        let _ = crate::supervision::RESTARTS.get_metric_with_label_values(&[a]);
    }
}
