//! The HTTP API over real HTTP against a real pod process: every endpoint, every
//! error path, admin authentication, metrics after real traffic, the OpenAPI
//! document, the CLI client, and a property test of random requests.

mod support;

use std::process::Command;
use std::time::Duration;

use fleet_q::api::ROUTES;
use proptest::prelude::*;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

fn start(dir: &std::path::Path, extra: &[(&str, String)]) -> PodProc {
    let mut env = vec![
        ("FLEET_Q_ADMIN_TOKEN", TOKEN.to_string()),
        ("FLEET_Q_MAX_PAYLOAD_BYTES", "65536".to_string()),
    ];
    env.extend(extra.iter().cloned());
    PodProc::start(dir, &dir.join("api.db"), "api-pod", &env)
}

fn admin(c: &Client, method: reqwest::Method, url: String) -> reqwest::blocking::RequestBuilder {
    c.request(method, url).bearer_auth(TOKEN)
}

fn assert_error_body(v: &Value, error_type: &str, path: &str) {
    assert_eq!(v["error_type"], json!(error_type), "{v}");
    assert_eq!(v["path"], json!(path), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    assert!(
        v["timestamp"]
            .as_str()
            .is_some_and(|t| t.parse::<chrono::DateTime<chrono::Utc>>().is_ok()),
        "{v}"
    );
}

fn expect(r: reqwest::blocking::Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(got, status, "body: {v}");
    v
}

#[test]
fn every_endpoint_answers_in_the_seed_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let u = |p: &str| pod.url(p);

    // Submit and dedupe.
    let v = expect(
        c.post(u("/submit"))
            .json(&json!({"type": "noop", "args": {"a": 1}, "metadata": {"m": "x"}, "priority": 7, "max_retries": 2, "idempotency_key": "k-1"}))
            .send()
            .unwrap(),
        201,
    );
    assert_eq!(v["status"], json!("submitted"));
    let id = v["step_id"].as_str().unwrap().to_string();
    let again = expect(
        c.post(u("/submit"))
            .json(&json!({"type": "noop", "idempotency_key": "k-1"}))
            .send()
            .unwrap(),
        200,
    );
    assert_eq!(again["step_id"], json!(id));

    // Batch: ids in order.
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"type": "noop", "args": {"i": i}}))
        .collect();
    let v = expect(
        c.post(u("/submit/batch"))
            .json(&json!({"steps": batch}))
            .send()
            .unwrap(),
        201,
    );
    let ids = v["step_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(v["created"], json!([true, true, true, true, true]));
    for (i, sid) in ids.iter().enumerate() {
        let s = expect(
            c.get(u(&format!("/status/{}", sid.as_str().unwrap())))
                .send()
                .unwrap(),
            200,
        );
        assert_eq!(s["payload"]["args"]["i"], json!(i));
    }

    // Status has every seed field and the design's.
    let s = wait_for("the step to complete", Duration::from_secs(20), || {
        let s: Value = c
            .get(u(&format!("/status/{id}")))
            .send()
            .ok()?
            .json()
            .ok()?;
        (s["status"] == json!("completed")).then_some(s)
    });
    for f in [
        "step_id",
        "status",
        "claimed_by",
        "last_update_ts",
        "retry_count",
        "priority",
        "created_ts",
        "max_retries",
        "payload",
        "attempt",
        "run_at",
        "last_error",
        "result",
    ] {
        assert!(s.get(f).is_some(), "status lacks {f}: {s}");
    }
    assert_eq!(
        s["payload"],
        json!({"type": "noop", "args": {"a": 1}, "metadata": {"m": "x"}})
    );
    assert_eq!(
        (
            s["priority"].as_i64(),
            s["max_retries"].as_i64(),
            s["attempt"].as_i64()
        ),
        (Some(7), Some(2), Some(1))
    );

    // Idempotency key handlers get.
    let k = expect(c.get(u(&format!("/idempotency/{id}"))).send().unwrap(), 200);
    assert_eq!(k, json!({"step_id": id, "idempotency_key": "k-1"}));
    let other = ids[0].as_str().unwrap();
    let k = expect(
        c.get(u(&format!("/idempotency/{other}"))).send().unwrap(),
        200,
    );
    assert_eq!(k["idempotency_key"], json!(format!("fleet-q:{other}")));

    // Cancel: pending (delayed) only.
    let delayed = expect(
        c.post(u("/submit"))
            .json(&json!({"type": "noop", "delay_seconds": 3600}))
            .send()
            .unwrap(),
        201,
    )["step_id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = expect(
        admin(&c, reqwest::Method::DELETE, u(&format!("/steps/{delayed}")))
            .send()
            .unwrap(),
        200,
    );
    assert_eq!(v["status"], json!("cancelled"));
    let v = expect(
        admin(&c, reqwest::Method::DELETE, u(&format!("/steps/{delayed}")))
            .send()
            .unwrap(),
        409,
    );
    assert_error_body(&v, "conflict", &format!("/steps/{delayed}"));
    let missing = uuid::Uuid::now_v7().to_string();
    let v = expect(
        admin(&c, reqwest::Method::DELETE, u(&format!("/steps/{missing}")))
            .send()
            .unwrap(),
        404,
    );
    assert_error_body(&v, "not_found", &format!("/steps/{missing}"));

    // Failed steps, paged, and retried.
    let failing: Vec<String> = (0..3)
        .map(|_| {
            expect(
                c.post(u("/submit"))
                    .json(&json!({"type": "no-such-handler"}))
                    .send()
                    .unwrap(),
                201,
            )["step_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let listed = wait_for("three failed steps", Duration::from_secs(20), || {
        let v: Value = admin(&c, reqwest::Method::GET, u("/admin/failed?limit=2"))
            .send()
            .ok()?
            .json()
            .ok()?;
        let first = v["steps"].as_array()?.clone();
        let after = v["next_after"].as_str()?.to_string();
        let v2: Value = admin(
            &c,
            reqwest::Method::GET,
            u(&format!("/admin/failed?limit=2&after={after}")),
        )
        .send()
        .ok()?
        .json()
        .ok()?;
        let mut all = first;
        all.extend(v2["steps"].as_array()?.clone());
        (all.len() == 3).then_some(all)
    });
    let mut listed_ids: Vec<String> = listed
        .iter()
        .map(|s| s["step_id"].as_str().unwrap().to_string())
        .collect();
    let mut want = failing.clone();
    listed_ids.sort();
    want.sort();
    assert_eq!(listed_ids, want);
    let v = expect(
        admin(
            &c,
            reqwest::Method::POST,
            u(&format!("/admin/steps/{}/retry", failing[0])),
        )
        .send()
        .unwrap(),
        200,
    );
    assert_eq!(v["status"], json!("pending"));
    let v = expect(
        admin(
            &c,
            reqwest::Method::POST,
            u(&format!("/admin/steps/{id}/retry")),
        )
        .send()
        .unwrap(),
        409,
    );
    assert_error_body(&v, "conflict", &format!("/admin/steps/{id}/retry"));

    // Leader and queue.
    let l = expect(
        admin(&c, reqwest::Method::GET, u("/admin/leader"))
            .send()
            .unwrap(),
        200,
    );
    assert_eq!(l["current_leader"], json!(pod.id));
    assert_eq!(l["active_pods"], json!(1));
    assert!(l["leader_birth_ts"].is_string() && l["last_election_check"].is_string());
    let pods = l["election_details"]["eligible_pods"].as_array().unwrap();
    assert_eq!(pods[0]["pod_id"], json!(pod.id));
    assert_eq!(pods[0]["is_leader"], json!(true));
    assert!(pods[0]["birth_ts"].is_string() && pods[0]["last_heartbeat_ts"].is_string());
    let q = wait_for("fresh queue statistics", Duration::from_secs(10), || {
        let q: Value = admin(&c, reqwest::Method::GET, u("/admin/queue"))
            .send()
            .ok()?
            .json()
            .ok()?;
        (q["cancelled_steps"] == json!(1)).then_some(q)
    });
    for f in [
        "pending_steps",
        "claimed_steps",
        "completed_steps",
        "failed_steps",
        "active_pods",
        "current_leader",
        "queue_depth_by_priority",
        "steps_by_type",
        "pod_capacity",
        "oldest_pending_age_seconds",
    ] {
        assert!(q.get(f).is_some(), "queue lacks {f}: {q}");
    }
    assert_eq!(q["pod_capacity"][&pod.id]["max"], json!(8));
    assert!(q["steps_by_type"]["noop"]["completed"].as_u64().unwrap() >= 6);

    // Recovery on demand (this pod leads), and its history. A periodic cycle
    // (every second here) may be running: the API answers 409 then, so retry.
    let run_cycle = |body: Option<Value>| {
        wait_for(
            "a recovery cycle to run on demand",
            Duration::from_secs(20),
            || {
                let mut req = admin(&c, reqwest::Method::POST, u("/admin/recovery/run"));
                if let Some(b) = &body {
                    req = req.json(b);
                }
                let r = req.send().ok()?;
                match r.status().as_u16() {
                    409 => None,
                    200 => r.json::<Value>().ok(),
                    other => panic!("recovery run answered {other}"),
                }
            },
        )
    };
    let v = run_cycle(Some(json!({"force": true, "dry_run": true})));
    let summary = &v["recovery_summary"];
    for f in [
        "cycle_id",
        "dead_pods_found",
        "orphaned_steps_found",
        "steps_requeued",
        "steps_marked_terminal",
        "duration_ms",
        "dead_pods",
        "requeued_steps",
        "terminal_steps",
    ] {
        assert!(summary.get(f).is_some(), "summary lacks {f}: {v}");
    }
    assert_eq!(summary["dry_run"], json!(true));
    let v = run_cycle(None);
    assert_eq!(v["recovery_summary"]["dry_run"], json!(false));
    let h = expect(
        admin(&c, reqwest::Method::GET, u("/admin/recovery?limit=5"))
            .send()
            .unwrap(),
        200,
    );
    assert!(h["cycles"].as_array().unwrap().len() >= 2);

    // Probes.
    let v = expect(c.get(u("/ready")).send().unwrap(), 200);
    assert_eq!(v["status"], json!("ready"));
    let v = expect(c.get(u("/health")).send().unwrap(), 200);
    for f in [
        "pod_id",
        "status",
        "uptime_seconds",
        "current_capacity",
        "max_capacity",
        "is_leader",
        "version",
        "actors",
    ] {
        assert!(v.get(f).is_some(), "health lacks {f}: {v}");
    }
    for a in [
        "storage",
        "heartbeat",
        "leader",
        "claimer",
        "executor",
        "recovery",
    ] {
        assert_eq!(v["actors"][a]["state"], json!("running"), "{v}");
        assert_eq!(v["actors"][a]["restarts"], json!(0), "{v}");
    }
}

#[test]
fn metrics_after_real_traffic_and_openapi_covering_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let id = expect(
        c.post(pod.url("/submit"))
            .json(&json!({"type": "noop"}))
            .send()
            .unwrap(),
        201,
    )["step_id"]
        .as_str()
        .unwrap()
        .to_string();
    expect(
        c.post(pod.url("/submit"))
            .json(&json!({"type": "missing-type"}))
            .send()
            .unwrap(),
        201,
    );
    let later = expect(
        c.post(pod.url("/submit"))
            .json(&json!({"type": "noop", "delay_seconds": 600}))
            .send()
            .unwrap(),
        201,
    );
    let later = later["step_id"].as_str().unwrap();
    expect(
        admin(
            &c,
            reqwest::Method::DELETE,
            pod.url(&format!("/steps/{later}")),
        )
        .send()
        .unwrap(),
        200,
    );
    wait_for("the step to complete", Duration::from_secs(20), || {
        let s: Value = c
            .get(pod.url(&format!("/status/{id}")))
            .send()
            .ok()?
            .json()
            .ok()?;
        (s["status"] == json!("completed")).then_some(())
    });
    let text = wait_for(
        "metrics with the finished steps",
        Duration::from_secs(10),
        || {
            let t = c.get(pod.url("/metrics")).send().ok()?.text().ok()?;
            // A type with no handler is counted under `other`: clients never mint labels.
            t.contains("fleet_q_steps_finished_total{outcome=\"failed\",type=\"other\"} 1")
                .then_some(t)
        },
    );
    for name in [
        "fleet_q_pending_steps",
        "fleet_q_queue_steps",
        "fleet_q_queue_oldest_pending_age_seconds",
        "fleet_q_active_pods",
        "fleet_q_steps_submitted_total",
        "fleet_q_steps_claimed_total",
        "fleet_q_steps_finished_total",
        "fleet_q_steps_cancelled_total",
        "fleet_q_step_duration_seconds",
        "fleet_q_step_start_latency_seconds",
        "fleet_q_claim_batch_size",
        "fleet_q_capacity_in_use",
        "fleet_q_capacity_max",
        "fleet_q_steps_waiting_local",
        "fleet_q_is_leader",
        "fleet_q_leadership_changes_total",
        "fleet_q_recovery_cycles_total",
        "fleet_q_recovery_steps_total",
        "fleet_q_fenced_results_total",
        "fleet_q_store_statements_total",
        "fleet_q_store_calls_total",
        "fleet_q_store_latency_seconds",
        "fleet_q_actor_restarts_total",
        "fleet_q_http_requests_total",
        "fleet_q_http_request_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "/metrics lacks {name}"
        );
    }
    assert!(text.contains("fleet_q_is_leader 1"));
    assert!(text.contains("fleet_q_steps_submitted_total{type=\"noop\"} 2"));
    assert!(text.contains("fleet_q_steps_cancelled_total{type=\"noop\"} 1"));
    assert!(text.contains(
        "fleet_q_http_requests_total{method=\"POST\",route=\"/submit\",status=\"201\"} 3"
    ));

    let doc = expect(c.get(pod.url("/openapi.json")).send().unwrap(), 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "/openapi.json lacks {method} {path}");
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        ROUTES
            .iter()
            .map(|r| r.1)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
}

/// The properties an OpenAPI schema names, following a `$ref` into the
/// document's components.
fn schema_properties(doc: &Value, schema: &Value) -> std::collections::BTreeSet<String> {
    let schema = match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").expect("local ref");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    };
    schema["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every 2xx of every route is described by a schema, and the bodies a real pod
/// sends have exactly the properties their schema lists.
#[test]
fn openapi_gives_a_schema_for_every_success_body_and_bodies_match_it() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let doc = expect(c.get(pod.url("/openapi.json")).send().unwrap(), 200);
    let mut checked = 0;
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        let responses = op["responses"].as_object().expect("responses");
        let ok: Vec<_> = responses
            .iter()
            .filter(|(code, _)| code.starts_with('2'))
            .collect();
        assert!(!ok.is_empty(), "{method} {path} documents no 2xx");
        for (code, r) in ok {
            let content = r["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {code}: no content"));
            assert!(!content.is_empty(), "{method} {path} {code}: no content");
            for (media, m) in content {
                assert!(
                    m["schema"].is_object(),
                    "{method} {path} {code} {media}: no schema"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= ROUTES.len());

    // Real bodies against their schemas.
    let id = expect(
        c.post(pod.url("/submit"))
            .json(&json!({"type": "noop"}))
            .send()
            .unwrap(),
        201,
    )["step_id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = |p: &str| pod.url(p);
    let mut bodies: Vec<(&str, &str, Value)> = vec![
        (
            "get",
            "/health",
            expect(c.get(url("/health")).send().unwrap(), 200),
        ),
        (
            "get",
            "/ready",
            expect(c.get(url("/ready")).send().unwrap(), 200),
        ),
        (
            "get",
            "/status/{step_id}",
            expect(c.get(url(&format!("/status/{id}"))).send().unwrap(), 200),
        ),
        (
            "get",
            "/idempotency/{step_id}",
            expect(
                c.get(url(&format!("/idempotency/{id}"))).send().unwrap(),
                200,
            ),
        ),
        (
            "get",
            "/admin/leader",
            expect(
                admin(&c, reqwest::Method::GET, url("/admin/leader"))
                    .send()
                    .unwrap(),
                200,
            ),
        ),
        (
            "get",
            "/admin/queue",
            expect(
                admin(&c, reqwest::Method::GET, url("/admin/queue"))
                    .send()
                    .unwrap(),
                200,
            ),
        ),
        (
            "get",
            "/admin/failed",
            expect(
                admin(&c, reqwest::Method::GET, url("/admin/failed"))
                    .send()
                    .unwrap(),
                200,
            ),
        ),
        (
            "get",
            "/admin/recovery",
            expect(
                admin(&c, reqwest::Method::GET, url("/admin/recovery"))
                    .send()
                    .unwrap(),
                200,
            ),
        ),
    ];
    bodies.push((
        "post",
        "/submit/batch",
        expect(
            c.post(url("/submit/batch"))
                .json(&json!({"steps": [{"type": "noop"}]}))
                .send()
                .unwrap(),
            201,
        ),
    ));
    // Schedules: create, list, one, trigger, delete.
    let made = expect(
        admin(&c, reqwest::Method::POST, url("/admin/schedules"))
            .json(&json!({"name": "doc", "every_seconds": 60, "step": {"type": "noop"}}))
            .send()
            .unwrap(),
        201,
    );
    bodies.push(("post", "/admin/schedules", made));
    for (method, path, route, code) in [
        ("get", "/admin/schedules", "/admin/schedules", 200),
        ("get", "/admin/schedules/doc", "/admin/schedules/{id}", 200),
        (
            "post",
            "/admin/schedules/doc/trigger",
            "/admin/schedules/{id}/trigger",
            202,
        ),
        (
            "delete",
            "/admin/schedules/doc",
            "/admin/schedules/{id}",
            200,
        ),
    ] {
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        bodies.push((
            method,
            route,
            expect(admin(&c, m, url(path)).send().unwrap(), code),
        ));
    }
    for (method, path, body) in bodies {
        let responses = &doc["paths"][path][method]["responses"];
        let code = ["200", "201", "202"]
            .into_iter()
            .find(|c| responses[*c].is_object())
            .unwrap();
        let schema = &responses[code]["content"]["application/json"]["schema"];
        let want = schema_properties(&doc, schema);
        let got: std::collections::BTreeSet<String> =
            body.as_object().unwrap().keys().cloned().collect();
        // Optional fields may be left out of a body, never added to it.
        assert!(
            got.is_subset(&want),
            "{method} {path}: body has {got:?}, schema lists {want:?}"
        );
        let required: std::collections::BTreeSet<String> = {
            let s = match schema["$ref"].as_str() {
                Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
                None => schema,
            };
            s["required"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert!(
            required.is_subset(&got),
            "{method} {path}: body {got:?} lacks required {required:?}"
        );
    }
}

#[test]
fn bad_input_gets_a_clear_4xx_with_the_error_body_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let u = |p: &str| pod.url(p);
    let cases: Vec<(reqwest::blocking::RequestBuilder, u16, &str, &str)> = vec![
        (
            c.post(u("/submit"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
            "/submit",
        ),
        (
            c.post(u("/submit"))
                .json(&json!({"type": "noop", "args": {"blob": "x".repeat(70_000)}})),
            413,
            "payload_too_large",
            "/submit",
        ),
        (
            c.post(u("/submit"))
                .json(&json!({"type": "noop", "priority": "high"})),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit"))
                .json(&json!({"type": "noop", "priority": 5000})),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit"))
                .json(&json!({"type": "noop", "unknown_field": 1})),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit")).json(&json!({"type": "", "args": [1]})),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit")).json(
                &json!({"type": "noop", "delay_seconds": 1, "run_at": "2030-01-01T00:00:00Z"}),
            ),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit")).json(&json!([1, 2])),
            400,
            "validation_error",
            "/submit",
        ),
        (
            c.post(u("/submit/batch")).json(&json!({"steps": []})),
            400,
            "validation_error",
            "/submit/batch",
        ),
        (
            c.get(u("/status/not-a-uuid")),
            400,
            "validation_error",
            "/status/not-a-uuid",
        ),
        (
            c.get(u(&format!("/status/{}", uuid::Uuid::now_v7()))),
            404,
            "not_found",
            "",
        ),
        (
            c.get(u("/no/such/route")),
            404,
            "not_found",
            "/no/such/route",
        ),
        (c.get(u("/submit")), 405, "not_found", "/submit"),
        (c.put(u("/health")), 405, "not_found", "/health"),
        (
            admin(&c, reqwest::Method::GET, u("/admin/failed?limit=0")),
            400,
            "validation_error",
            "/admin/failed",
        ),
        (
            admin(&c, reqwest::Method::GET, u("/admin/failed?limit=abc")),
            400,
            "validation_error",
            "/admin/failed",
        ),
        (
            admin(&c, reqwest::Method::POST, u("/admin/recovery/run"))
                .header("content-type", "application/json")
                .body("{\"dry_run\": 3}"),
            400,
            "validation_error",
            "/admin/recovery/run",
        ),
    ];
    for (req, status, kind, path) in cases {
        let r = req.send().unwrap();
        let p = r.url().path().to_string();
        let v = expect(r, status);
        assert_error_body(&v, kind, if path.is_empty() { &p } else { path });
        let text = v.to_string();
        assert!(
            !text.contains("STEP_TRACKER")
                && !text.contains("SELECT")
                && !text.contains("panicked"),
            "{text}"
        );
    }
    // A batch with one bad step stores nothing.
    let steps: Vec<Value> = (0..10)
        .map(|i| {
            if i == 7 {
                json!({"type": "noop", "max_retries": 99})
            } else {
                json!({"type": "noop"})
            }
        })
        .collect();
    let v = expect(
        c.post(u("/submit/batch"))
            .json(&json!({"steps": steps}))
            .send()
            .unwrap(),
        400,
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("steps[7].max_retries"),
        "{v}"
    );
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"type": "noop"})).collect();
    expect(
        c.post(u("/submit/batch"))
            .json(&json!({"steps": too_many}))
            .send()
            .unwrap(),
        400,
    );
    let obs = Observer::open(&dir.path().join("api.db"));
    assert_eq!(obs.stats().counts.total(), 0, "bad input changed nothing");
    // Hostile strings are stored and returned verbatim.
    let evil = "'); DROP TABLE STEP_TRACKER; -- $$ \\ \" 🚀";
    let id = expect(
        c.post(u("/submit")).json(&json!({"type": "noop", "args": {"s": evil}, "metadata": {evil: evil}, "idempotency_key": evil})).send().unwrap(),
        201,
    )["step_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = expect(c.get(u(&format!("/status/{id}"))).send().unwrap(), 200);
    assert_eq!(s["payload"]["args"]["s"], json!(evil));
    assert_eq!(s["payload"]["metadata"][evil], json!(evil));
    assert_eq!(s["idempotency_key"], json!(evil));
}

#[test]
fn admin_routes_require_the_token_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let some_id = uuid::Uuid::now_v7();
    let admin_routes = [
        (reqwest::Method::GET, "/admin/leader".to_string()),
        (reqwest::Method::GET, "/admin/queue".to_string()),
        (reqwest::Method::POST, "/admin/recovery/run".to_string()),
        (reqwest::Method::GET, "/admin/recovery".to_string()),
        (reqwest::Method::GET, "/admin/failed".to_string()),
        (
            reqwest::Method::POST,
            format!("/admin/steps/{some_id}/retry"),
        ),
        (reqwest::Method::DELETE, format!("/steps/{some_id}")),
    ];
    for (m, p) in &admin_routes {
        let r = c.request(m.clone(), pod.url(p)).send().unwrap();
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
        let v = expect(r, 401);
        assert_error_body(&v, "unauthorized", p);
        let v = expect(
            c.request(m.clone(), pod.url(p))
                .bearer_auth("wrong-token")
                .send()
                .unwrap(),
            403,
        );
        assert_error_body(&v, "permission_denied", p);
        let v = expect(
            c.request(m.clone(), pod.url(p))
                .header("authorization", "Basic Zm9vOmJhcg==")
                .send()
                .unwrap(),
            403,
        );
        assert_error_body(&v, "permission_denied", p);
        let r = c
            .request(m.clone(), pod.url(p))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert!(
            ![401, 403].contains(&r.status().as_u16()),
            "{m} {p} refused the right token"
        );
    }
    for p in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(
            c.get(pod.url(p)).send().unwrap().status().as_u16(),
            200,
            "{p}"
        );
    }
    // The token never appears in anything the pod answers or logs.
    let health = c.get(pod.url("/health")).send().unwrap().text().unwrap();
    assert!(!health.contains(TOKEN));
    assert!(
        !pod.log_text().contains(TOKEN),
        "the admin token was logged"
    );
}

#[test]
fn the_cli_client_talks_to_a_running_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let url = pod.url("");
    let run = |args: &[&str], token: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-q"));
        cmd.args(args)
            .args(["--url", &url])
            .env_remove("FLEET_Q_ADMIN_TOKEN");
        if token {
            cmd.env("FLEET_Q_ADMIN_TOKEN", TOKEN);
        }
        cmd.output().unwrap()
    };
    let out = run(
        &[
            "submit",
            "--type",
            "noop",
            "--args",
            "{\"x\": 1}",
            "--priority",
            "-3",
            "--json",
        ],
        false,
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["step_id"].as_str().unwrap().to_string();
    wait_for(
        "completion seen by the CLI",
        Duration::from_secs(20),
        || {
            let out = run(&["status", &id], false);
            String::from_utf8(out.stdout)
                .unwrap()
                .contains("completed")
                .then_some(())
        },
    );
    let out = run(&["status", &id, "--json"], false);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["priority"], json!(-3));
    let out = run(&["queue"], true);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && text.contains("completed 1"),
        "{text}"
    );
    let out = run(&["leader"], true);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains(&format!("leader {}", pod.id)));
    // A periodic cycle may be running (409): retry like a person would.
    wait_for("a dry run through the CLI", Duration::from_secs(20), || {
        let out = run(&["recover", "--dry-run"], true);
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("dry run")
            .then_some(())
    });
    // Without the token an admin command fails with the API's reason.
    let out = run(&["queue"], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("unauthorized"));
    let out = run(&["submit", "--type", "noop", "--args", "not json"], false);
    assert_eq!(out.status.code(), Some(1));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("noop")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("args".to_string()),
                    Just("priority".to_string()),
                    Just("max_retries".to_string()),
                    Just("steps".to_string()),
                    Just("delay_seconds".to_string()),
                    Just("run_at".to_string()),
                    Just("dry_run".to_string()),
                    ".{0,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn random_requests_never_get_a_5xx_and_errors_always_have_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let paths: Vec<String> = ROUTES
        .iter()
        .map(|(_, p)| p.replace("{step_id}", &uuid::Uuid::now_v7().to_string()))
        .chain(
            [
                "/",
                "/status/",
                "/status/x%00y",
                "/admin",
                "/steps/../../etc/passwd",
                "/submit?x=1",
            ]
            .map(String::from),
        )
        .collect();
    let methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD"];
    let cfg = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(
        pi in 0..paths.len(),
        mi in 0..methods.len(),
        body in prop_oneof![arb_json().prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..200)],
        ctype in prop_oneof![Just("application/json"), Just("text/plain"), Just("application/x-www-form-urlencoded"), Just("")],
        auth in prop_oneof![Just(None), Just(Some(format!("Bearer {TOKEN}"))), ".{0,30}".prop_map(Some)],
        junk in "[a-zA-Z0-9%/._-]{0,20}",
    )| {
        let mut path = paths[pi].clone();
        if junk.len() % 3 == 0 {
            path.push_str(&junk);
        }
        let m = reqwest::Method::from_bytes(methods[mi].as_bytes()).unwrap();
        let mut req = c.request(m.clone(), pod.url(&path)).body(body);
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        if let Some(a) = auth {
            if let Ok(h) = reqwest::header::HeaderValue::from_str(&a) {
                req = req.header("authorization", h);
            }
        }
        let r = req.send().expect("the pod answers");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        prop_assert!(status < 500, "{m} {path} -> {status}: {text}");
        if status >= 400 && m != reqwest::Method::HEAD {
            let v: Value = serde_json::from_str(&text).map_err(|_| TestCaseError::fail(format!("{m} {path} -> {status} without JSON: {text}")))?;
            for f in ["detail", "error_type", "timestamp", "path"] {
                prop_assert!(v.get(f).is_some(), "{m} {path} -> {status}: {text}");
            }
        }
    });
    // Still alive and well.
    let h: Value = c.get(pod.url("/health")).send().unwrap().json().unwrap();
    assert_eq!(h["status"], json!("healthy"));
}

#[test]
fn with_the_store_unavailable_requests_get_503_and_the_pod_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[("FLEET_Q_DEFAULT_MAX_ATTEMPTS", "1".into())]);
    let c = client();
    // Another connection holds the write lock longer than the busy timeout (5 s).
    let db = dir.path().join("api.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    locked_rx.recv().unwrap();
    // Writes queued behind others each wait out the busy timeout: allow for that.
    let slow = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = slow
        .post(pod.url("/submit"))
        .json(&json!({"type": "noop"}))
        .send()
        .unwrap();
    let v = expect(r, 503);
    assert_error_body(&v, "database_error", "/submit");
    assert!(!v["detail"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("select"));
    // Liveness does not depend on the store; readiness does.
    assert_eq!(
        c.get(pod.url("/health")).send().unwrap().status().as_u16(),
        200
    );
    wait_for("readiness to fail", Duration::from_secs(20), || {
        (c.get(pod.url("/ready")).send().ok()?.status().as_u16() == 503).then_some(())
    });
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // Work resumes.
    wait_for("submits to succeed again", Duration::from_secs(20), || {
        (c.post(pod.url("/submit"))
            .json(&json!({"type": "noop"}))
            .send()
            .ok()?
            .status()
            .as_u16()
            == 201)
            .then_some(())
    });
    wait_for("readiness to return", Duration::from_secs(20), || {
        (c.get(pod.url("/ready")).send().ok()?.status().as_u16() == 200).then_some(())
    });
}

/// Logs are JSON lines; step events carry `pod_id`, `step_id` and `attempt` as
/// fields, and every HTTP request is logged once with a `request_id`.
#[test]
fn logs_are_structured_with_step_fields_and_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[("FLEET_Q_LOG_FORMAT", "json".into())]);
    let c = client();
    let id = expect(
        c.post(pod.url("/submit"))
            .json(&json!({"type": "no-such-type"}))
            .send()
            .unwrap(),
        201,
    )["step_id"]
        .as_str()
        .unwrap()
        .to_string();
    let lines: Vec<Value> = wait_for(
        "the step's failure to be logged",
        Duration::from_secs(20),
        || {
            let lines: Vec<Value> = pod
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines
                .iter()
                .any(|l| l["step_id"] == json!(id))
                .then_some(lines)
        },
    );
    let step = lines.iter().find(|l| l["step_id"] == json!(id)).unwrap();
    assert_eq!(step["message"], json!("step failed"), "{step}");
    assert_eq!(step["pod_id"], json!(pod.id), "{step}");
    assert_eq!(step["attempt"], json!(1), "{step}");
    assert_eq!(step["level"], json!("INFO"), "{step}");
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["http.route"] == json!("/submit"))
        .collect();
    assert_eq!(requests.len(), 1, "one log line per request");
    let r = requests[0];
    assert!(
        r["span"]["request_id"]
            .as_str()
            .is_some_and(|s| s.len() >= 32),
        "{r}"
    );
    assert_eq!(r["span"]["http.status_code"], json!(201), "{r}");
}

/// The small promises of the HTTP layer: the bearer scheme in any case, auth
/// before the query string, `limit=0` refused alike on every paged route, bodies
/// in an undecoded encoding refused, sub-millisecond timeouts refused, HEAD on
/// GET routes, and error bodies that quote only the start of a client's value.
#[test]
fn http_details_hold_for_hostile_and_careless_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let u = |p: &str| pod.url(p);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = c
            .get(u("/admin/queue"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "scheme {scheme}");
    }
    // No credentials: 401 whatever the query string holds.
    for p in ["/admin/failed?limit=abc", "/admin/recovery?limit=-1&x=1"] {
        let v = expect(c.get(u(p)).send().unwrap(), 401);
        assert_eq!(v["error_type"], json!("unauthorized"), "{p}");
    }
    for p in ["/admin/failed", "/admin/recovery"] {
        for bad in ["0", "1001"] {
            let v = expect(
                admin(&c, reqwest::Method::GET, u(&format!("{p}?limit={bad}")))
                    .send()
                    .unwrap(),
                400,
            );
            assert!(
                v["detail"].as_str().unwrap().contains("between 1 and 1000"),
                "{p} {v}"
            );
        }
        expect(
            admin(&c, reqwest::Method::GET, u(&format!("{p}?limit=1")))
                .send()
                .unwrap(),
            200,
        );
    }
    let v = expect(
        c.post(u("/submit"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(r#"{"type":"noop"}"#)
            .send()
            .unwrap(),
        415,
    );
    assert_eq!(v["error_type"], json!("unsupported_media_type"));
    for t in [0.0, 0.0004] {
        let v = expect(
            c.post(u("/submit"))
                .json(&json!({"type": "noop", "timeout_seconds": t}))
                .send()
                .unwrap(),
            400,
        );
        assert!(
            v["detail"].as_str().unwrap().contains("timeout_seconds"),
            "{v}"
        );
    }
    for p in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let r = c.head(u(p)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "HEAD {p}");
        assert!(r.bytes().unwrap().is_empty(), "HEAD {p} has no body");
    }
    let long = "z".repeat(20_000);
    for p in [format!("/status/{long}"), format!("/{long}")] {
        let r = c.get(u(&p)).send().unwrap();
        assert!(r.status().is_client_error());
        let text = r.text().unwrap();
        assert!(
            text.len() < 1000,
            "an error body echoed the path: {} bytes",
            text.len()
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error_type"].is_string());
    }
    // Requests the HTTP parser itself rejects get the JSON error body too.
    let raw = |req: Vec<u8>| -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", pod.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    };
    let many_headers: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    for (req, want) in [
        (b"GET /status/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (
            b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
            400,
        ),
        (format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(), 431),
        (format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(), 400),
    ] {
        let (status, v) = raw(req);
        assert_eq!(status, want, "{v}");
        assert_eq!(v["error_type"], json!("validation_error"), "{v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    }
    let obs = Observer::open(&dir.path().join("api.db"));
    assert_eq!(obs.stats().counts.total(), 0, "nothing above stored a step");
}

/// `GET /admin/steps` lists every bad field in one 400, pages newest first by
/// cursor, and `POST /admin/steps/bulk` acts on ids or on a filter (a dry run
/// first), changing only steps in the status its action applies to.
#[test]
fn step_search_and_bulk_actions_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let pod = start(dir.path(), &[]);
    let c = client();
    let get = |q: &str| -> (u16, Value) {
        let r = admin(
            &c,
            reqwest::Method::GET,
            pod.url(&format!("/admin/steps{q}")),
        )
        .send()
        .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    let bulk = |body: Value| -> (u16, Value) {
        let r = admin(&c, reqwest::Method::POST, pod.url("/admin/steps/bulk"))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    // Three that fail at once (no handler), two that wait an hour.
    let ghosts: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &c,
                &pod,
                json!({"type": "ghost", "args": {"i": i}, "max_retries": 0}),
            )
        })
        .collect();
    let later: Vec<String> = (0..2)
        .map(|i| {
            submit(
                &c,
                &pod,
                json!({"type": "noop", "args": {"i": i}, "delay_seconds": 3600}),
            )
        })
        .collect();
    wait_for("the ghosts to fail", Duration::from_secs(30), || {
        let (_, v) = get("?status=failed");
        (v["steps"].as_array().map_or(0, Vec::len) == 3).then_some(())
    });

    let (status, v) = get("?status=nope&priority=x&created_from=yesterday&limit=0&id=42");
    assert_eq!(status, 400);
    let detail = v["detail"].as_str().unwrap();
    for field in ["status", "priority", "created_from", "limit", "id"] {
        assert!(detail.contains(field), "{field} missing from {detail}");
    }
    assert_eq!(v["error_type"], "validation_error");

    let (_, page) = get("?type=ghost&limit=2");
    let first: Vec<&str> = page["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        vec![ghosts[2].as_str(), ghosts[1].as_str()],
        "newest first"
    );
    let next = page["next"].as_str().expect("a cursor");
    let (_, rest) = get(&format!("?type=ghost&limit=2&before={next}"));
    assert_eq!(rest["steps"][0]["step_id"], ghosts[0].as_str());
    assert!(rest["next"].is_null());
    let (_, by_text) = get("?text=%22i%22%3A1");
    assert_eq!(
        by_text["steps"].as_array().unwrap().len(),
        2,
        "\"i\":1 in two payloads"
    );

    let (status, v) =
        bulk(json!({"action": "retry", "filter": {"type": "ghost"}, "dry_run": true}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["matched"].as_u64(),
            v["changed"].as_u64(),
            v["complete"].as_bool()
        ),
        (Some(3), Some(0), Some(true))
    );
    assert_eq!(
        get("?status=failed").1["steps"].as_array().unwrap().len(),
        3,
        "a dry run changes nothing"
    );

    let (_, v) = bulk(json!({"action": "cancel", "step_ids": [later[0], later[1], ghosts[0]]}));
    assert_eq!(
        (v["matched"].as_u64(), v["changed"].as_u64()),
        (Some(3), Some(2)),
        "{v}"
    );
    for (body, why) in [
        (
            json!({"action": "cancel", "filter": {"status": "failed"}}),
            "a status the action does not apply to",
        ),
        (json!({"action": "retry"}), "neither ids nor a filter"),
        (json!({"action": "retry", "step_ids": ["nope"]}), "a bad id"),
        (
            json!({"action": "explode", "step_ids": [ghosts[0]]}),
            "an unknown action",
        ),
        (
            json!({"action": "retry", "filter": {"type": "ghost"}, "max": 0}),
            "max 0",
        ),
    ] {
        let (status, v) = bulk(body);
        assert_eq!(status, 400, "{why}: {v}");
    }
    let (_, v) = bulk(json!({"action": "retry", "filter": {"type": "ghost"}}));
    assert_eq!(v["changed"].as_u64(), Some(3), "{v}");
    // Without the token: refused.
    let r = c.get(pod.url("/admin/steps")).send().unwrap();
    assert_eq!(r.status(), 401);
}
