//! Property-based fuzzing (proptest; cargo-fuzz needs a nightly toolchain, which
//! this project's machines do not have) of the three parsers that take outside
//! input: step validation, the Snowflake SQL literal encoder, and settings. The
//! HTTP routes are fuzzed over real HTTP in tests/api.rs.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use fleet_q::config::{self, Sources, KEYS};
use fleet_q::storage::snowflake::sql;
use fleet_q_actors::step::MAX_PAYLOAD_BYTES;
use fleet_q_actors::{NewStep, RunAt, StepSpec};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,30}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::hash_map("\\PC{0,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Validation never panics; what it accepts satisfies every documented bound,
    /// and every rejection names a known field.
    #[test]
    fn step_validation(
        step_type in "\\PC{0,140}",
        args in prop::option::of(arb_value()),
        metadata in prop::option::of(arb_value()),
        priority in prop::option::of(any::<i32>()),
        max_retries in prop::option::of(any::<u32>()),
        delay in prop::option::of(0u64..400 * 86_400),
        key in prop::option::of("\\PC{0,300}"),
        timeout_ms in prop::option::of(0u64..100_000_000),
        queue in prop::option::of("\\PC{0,80}"),
    ) {
        let spec = StepSpec {
            step_type: step_type.clone(),
            args,
            metadata,
            priority,
            max_retries,
            run_at: delay.map_or(RunAt::Now, |d| RunAt::After(Duration::from_secs(d))),
            idempotency_key: key,
            timeout: timeout_ms.map(Duration::from_millis),
            queue: queue.clone(),
        };
        match NewStep::new(spec) {
            Ok(s) => {
                prop_assert!(fleet_q_actors::queue::name_problem(s.queue()).is_none());
                prop_assert!(!step_type.is_empty() && step_type.len() <= 128);
                prop_assert!((-1000..=1000).contains(&s.priority()));
                prop_assert!(s.max_retries().unwrap_or(0) <= 10);
                prop_assert!(s.payload_json().len() <= MAX_PAYLOAD_BYTES);
                let back: Value = serde_json::from_str(s.payload_json()).unwrap();
                prop_assert_eq!(&back["type"], &json!(step_type));
            }
            Err(e) => {
                prop_assert!(!e.0.is_empty());
                for p in &e.0 {
                    prop_assert!(
                        ["type", "args", "metadata", "priority", "max_retries", "delay_seconds", "run_at",
                         "idempotency_key", "timeout_seconds", "payload", "queue"].contains(&p.field.as_str()),
                        "unknown field {}", p.field
                    );
                }
            }
        }
    }

    /// Decoding what the encoder produced gives the input back, and its output is
    /// exactly one literal of the base64 alphabet: nothing can escape it.
    #[test]
    fn sql_literal_encoder(s in "\\PC{0,200}|[\\x00-\\x7f]{0,200}") {
        let lit = sql::text(&s);
        let inner = lit.strip_prefix("BASE64_DECODE_STRING('").and_then(|r| r.strip_suffix("')"));
        prop_assert!(inner.is_some(), "{lit}");
        let inner = inner.unwrap();
        prop_assert!(inner.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)), "{lit}");
        let back = base64::engine::general_purpose::STANDARD.decode(inner).unwrap();
        prop_assert_eq!(String::from_utf8(back).unwrap(), s.clone());
        let b = sql::b64_lit(&s);
        prop_assert!(b.starts_with('\'') && b.ends_with('\'') && b[1..b.len() - 1].chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)));
    }

    /// Settings parsing never panics; every problem names its variable; secrets
    /// never appear in the error text.
    #[test]
    fn settings_parsing(values in prop::collection::vec((0..KEYS.len(), "\\PC{0,20}"), 0..12)) {
        let mut env = HashMap::new();
        for (i, v) in &values {
            env.insert(KEYS[*i].env(), v.clone());
        }
        env.insert("FLEET_Q_ADMIN_TOKEN".into(), "zz-secret-token-zz".into());
        match config::load(&Sources { file: None, env }) {
            Ok(s) => {
                prop_assert!(s.max_capacity() >= 1);
                prop_assert!(s.dead_pod_threshold > s.heartbeat_interval * 2);
            }
            Err(e) => {
                prop_assert!(!e.0.is_empty());
                for p in &e.0 {
                    prop_assert!(p.contains("FLEET_Q_"), "{p}");
                }
                prop_assert!(!e.to_string().contains("zz-secret-token-zz"));
            }
        }
    }
}
