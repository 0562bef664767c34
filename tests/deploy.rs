//! Keeps `deploy/` and the Dockerfile honest: every manifest parses; every
//! `FLEET_Q_*` variable set anywhere is one the binary reads; every ConfigMap and
//! Secret key referenced exists; every probe path is a route; the metrics the HPA,
//! the alerts and the dashboard use are exported by a running pod after real
//! traffic; the container user matches the Dockerfile; the entrypoint is a real
//! subcommand; what the pod writes is on a mounted volume under a read-only root.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_q::api::ROUTES;
use fleet_q::config::KEYS;
use serde_json::{json, Value};
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

/// Every YAML document under deploy/, as JSON values, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut paths = Vec::new();
    files(&root().join("deploy"), "yaml", &mut paths);
    paths.sort();
    let mut docs = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", p.display()));
            if v.is_null() {
                continue;
            }
            let j: Value = serde_json::to_value(&v).unwrap();
            docs.push((p.clone(), j));
        }
    }
    docs
}

/// Visits every JSON object in `v`.
fn walk<'a>(v: &'a Value, f: &mut impl FnMut(&'a serde_json::Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            f(m);
            m.values().for_each(|x| walk(x, f));
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

#[test]
fn every_manifest_parses_and_every_kustomization_lists_real_files() {
    let docs = documents();
    assert!(docs.len() >= 20, "only {} documents", docs.len());
    let kinds: HashSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for k in [
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "Ingress",
        "ServiceAccount",
        "SecretStore",
        "ExternalSecret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Namespace",
        "ServiceMonitor",
        "PrometheusRule",
        "Kustomization",
    ] {
        assert!(kinds.contains(k), "deploy/ has no {k}");
    }
    for (p, d) in &docs {
        assert!(
            d["kind"].is_string(),
            "{} has a document without kind",
            p.display()
        );
        if d["kind"] == json!("Kustomization") {
            let dir = p.parent().unwrap();
            for key in ["resources", "patches"] {
                for r in d[key].as_array().into_iter().flatten() {
                    let rel = r.as_str().or_else(|| r["path"].as_str());
                    if let Some(rel) = rel {
                        assert!(
                            dir.join(rel).exists(),
                            "{} lists missing {rel}",
                            p.display()
                        );
                    }
                }
            }
            for g in d["configMapGenerator"].as_array().into_iter().flatten() {
                for f in g["files"].as_array().into_iter().flatten() {
                    let f = f.as_str().unwrap();
                    let text = std::fs::read_to_string(dir.join(f)).unwrap();
                    serde_json::from_str::<Value>(&text)
                        .unwrap_or_else(|e| panic!("{f} is not JSON: {e}"));
                }
            }
        }
    }
}

#[test]
fn every_fleet_q_variable_set_anywhere_is_read_by_the_binary() {
    let known: HashSet<String> = KEYS.iter().map(|k| k.env()).collect();
    let mut seen = BTreeSet::new();
    for (p, d) in documents() {
        walk(&d, &mut |m| {
            if let Some(name) = m.get("name").and_then(Value::as_str) {
                if name.starts_with("FLEET_Q_")
                    && (m.contains_key("value") || m.contains_key("valueFrom"))
                {
                    assert!(
                        known.contains(name),
                        "{} sets {name}, which fleet-q does not read",
                        p.display()
                    );
                    seen.insert(name.to_string());
                }
            }
        });
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for word in dockerfile.split(|c: char| c.is_whitespace() || c == '=' || c == '\\') {
        if word.starts_with("FLEET_Q_") {
            assert!(
                known.contains(word),
                "the Dockerfile sets {word}, which fleet-q does not read"
            );
        }
    }
    for must in [
        "FLEET_Q_POD_ID",
        "FLEET_Q_STORAGE_MODE",
        "FLEET_Q_SNOWFLAKE_ACCOUNT",
        "FLEET_Q_SNOWFLAKE_PASSWORD",
        "FLEET_Q_LEDGER_PATH",
    ] {
        assert!(seen.contains(must), "no manifest sets {must}");
    }
}

#[test]
fn every_configmap_and_secret_key_referenced_exists() {
    let docs = documents();
    let mut keys: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for (_, d) in &docs {
        let kind = d["kind"].as_str().unwrap_or("").to_string();
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let entry = |k: &str, n: &str| (k.to_string(), n.to_string());
        match kind.as_str() {
            "ConfigMap" => {
                let set = keys.entry(entry("ConfigMap", &name)).or_default();
                for field in ["data", "binaryData"] {
                    if let Some(m) = d[field].as_object() {
                        set.extend(m.keys().cloned());
                    }
                }
            }
            "Secret" => {
                let set = keys.entry(entry("Secret", &name)).or_default();
                for field in ["data", "stringData"] {
                    if let Some(m) = d[field].as_object() {
                        set.extend(m.keys().cloned());
                    }
                }
            }
            "ExternalSecret" => {
                let target = d["spec"]["target"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let set = keys.entry(entry("Secret", &target)).or_default();
                for item in d["spec"]["data"].as_array().into_iter().flatten() {
                    set.insert(item["secretKey"].as_str().unwrap().to_string());
                }
            }
            _ => {}
        }
    }
    let mut refs = 0;
    for (p, d) in &docs {
        walk(d, &mut |m| {
            for (field, kind) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")] {
                if let Some(r) = m.get(field) {
                    refs += 1;
                    let name = r["name"].as_str().unwrap();
                    let key = r["key"].as_str().unwrap();
                    if r["optional"] == json!(true) {
                        // May be absent by design (e.g. password or private key);
                        // it must still be documented in the Secret template.
                        let template = std::fs::read_to_string(
                            root().join("deploy/overlays/production/secret.template.yaml"),
                        )
                        .unwrap();
                        assert!(
                            template.contains(key),
                            "optional key {key} is not documented in the Secret template"
                        );
                        continue;
                    }
                    let have = keys
                        .get(&(kind.to_string(), name.to_string()))
                        .unwrap_or_else(|| {
                            panic!(
                                "{} refers to {kind} {name}, defined nowhere in deploy/",
                                p.display()
                            )
                        });
                    assert!(
                        have.contains(key),
                        "{} refers to {kind} {name} key {key}, which it lacks",
                        p.display()
                    );
                }
            }
        });
    }
    assert!(refs >= 15, "only {refs} references checked");
    // The seed ConfigMap's keys are all consumed by the Deployment.
    let cm = &keys[&("ConfigMap".to_string(), "fleet-q-config".to_string())];
    for k in [
        "snowflake-database",
        "snowflake-schema",
        "snowflake-warehouse",
        "max-parallelism",
        "capacity-threshold",
        "heartbeat-interval-seconds",
        "claim-interval-seconds",
        "recovery-interval-seconds",
        "dead-pod-threshold-seconds",
        "log-level",
        "log-format",
    ] {
        assert!(cm.contains(k), "the seed ConfigMap key {k} is missing");
    }
}

fn deployment() -> Value {
    documents()
        .into_iter()
        .find(|(p, d)| d["kind"] == json!("Deployment") && p.ends_with("base/deployment.yaml"))
        .unwrap()
        .1
}

#[test]
fn probes_are_routes_and_the_pod_shape_matches_the_image() {
    let dep = deployment();
    let spec = &dep["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let routes: HashSet<&str> = ROUTES
        .iter()
        .filter(|(m, _)| *m == "GET")
        .map(|(_, p)| *p)
        .collect();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let path = c[probe]["httpGet"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no {probe}"));
        assert!(
            routes.contains(path),
            "{probe} path {path} is not a GET route"
        );
        assert_eq!(c[probe]["httpGet"]["port"], json!(8000));
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], json!("/health"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], json!("/ready"));
    // Termination grace above the shutdown grace the ConfigMap sets.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let cm = documents()
        .into_iter()
        .find(|(_, d)| {
            d["kind"] == json!("ConfigMap") && d["metadata"]["name"] == json!("fleet-q-config")
        })
        .unwrap()
        .1;
    let shutdown: u64 = cm["data"]["shutdown-grace-seconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace > shutdown,
        "terminationGracePeriodSeconds {grace} <= shutdown grace {shutdown}"
    );
    // The user matches the Dockerfile's USER; the root filesystem is read-only and
    // everything fleet-q writes is on a mounted volume.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap()
        .trim();
    let (uid, gid) = user.split_once(':').unwrap();
    for sc in [&spec["securityContext"], &c["securityContext"]] {
        assert_eq!(sc["runAsUser"].as_u64().unwrap().to_string(), uid);
        assert_eq!(sc["runAsGroup"].as_u64().unwrap().to_string(), gid);
        assert_eq!(sc["runAsNonRoot"], json!(true));
    }
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], json!(true));
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"],
        json!(false)
    );
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for var in ["FLEET_Q_LEDGER_PATH", "FLEET_Q_SQLITE_DB_PATH"] {
        let v = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == json!(var))
            .unwrap();
        let path = v["value"].as_str().unwrap();
        assert!(
            mounts.iter().any(|m| path.starts_with(m)),
            "{var}={path} is not on a mounted volume"
        );
    }
    // The container port is the one the image exposes.
    assert!(dockerfile.contains("EXPOSE 8000"));
    assert_eq!(c["ports"][0]["containerPort"], json!(8000));
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_runs_a_real_subcommand() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        d.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(d.contains("--locked"), "builds from Cargo.lock");
    assert!(d.contains("org.opencontainers.image.title"), "OCI labels");
    assert!(root().join(".dockerignore").exists());
    let entry = d
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap();
    let cmd = d.lines().find_map(|l| l.strip_prefix("CMD ")).unwrap();
    let entry: Vec<String> = serde_json::from_str(entry).unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    assert_eq!(entry, ["fleet-q"]);
    // `fleet-q <cmd> --help` succeeds only for a real subcommand.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(&cmd)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`fleet-q {}` is not a subcommand",
        cmd.join(" ")
    );
    // The Deployment's args name the same subcommand.
    let dep = deployment();
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(cmd)
    );
}

/// `fleet_q_*` metric names in a PromQL expression, without histogram suffixes.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("fleet_q_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = tail[..end].to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base.to_string();
            }
        }
        out.insert(name);
        rest = &tail[end..];
    }
}

#[test]
fn metrics_named_by_the_hpa_alerts_and_dashboard_are_exported_after_real_traffic() {
    let mut names = BTreeSet::new();
    for (_, d) in documents() {
        match d["kind"].as_str() {
            Some("HorizontalPodAutoscaler") => {
                for m in d["spec"]["metrics"].as_array().unwrap() {
                    names.insert(
                        m["external"]["metric"]["name"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                }
            }
            Some("PrometheusRule") => {
                for g in d["spec"]["groups"].as_array().unwrap() {
                    for r in g["rules"].as_array().unwrap() {
                        metric_names(r["expr"].as_str().unwrap(), &mut names);
                    }
                }
            }
            _ => {}
        }
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            metric_names(t["expr"].as_str().unwrap(), &mut names);
        }
    }
    assert!(names.contains("fleet_q_pending_steps"));
    assert!(names.len() >= 10, "{names:?}");

    // Real traffic through a real pod.
    let dir = tempfile::tempdir().unwrap();
    let pod = PodProc::start(dir.path(), &dir.path().join("m.db"), "metrics-pod", &[]);
    let c = client();
    let id = submit(&c, &pod, json!({"type": "noop"}));
    submit(&c, &pod, json!({"type": "unknown-type"}));
    let later = submit(&c, &pod, json!({"type": "noop", "delay_seconds": 600}));
    let r = c
        .delete(pod.url(&format!("/steps/{later}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "cancel");
    wait_for("the pod to lead", Duration::from_secs(20), || {
        pod.is_leader().then_some(())
    });
    let r = c.post(pod.url("/admin/recovery/run")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "recovery run");
    let obs = Observer::open(&dir.path().join("m.db"));
    obs.wait_completed(&id, Duration::from_secs(20));
    let text = c.get(pod.url("/metrics")).send().unwrap().text().unwrap();
    for n in &names {
        assert!(
            text.contains(&format!("# TYPE {n} ")),
            "{n} is used by deploy/ but not exported"
        );
    }
}

/// The build stage's instructions up to its first `COPY . .`, continuation lines
/// joined: `(instruction, arguments)`.
fn dependency_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut out = Vec::new();
    let mut in_build = false;
    for ins in joined {
        let (op, args) = ins.split_once(' ').unwrap_or((&ins, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            if in_build {
                break;
            }
            in_build = args.to_ascii_lowercase().contains(" as build");
            continue;
        }
        if !in_build {
            continue;
        }
        if op == "COPY" && args.trim() == ". ." {
            break;
        }
        out.push((op, args.trim().to_string()));
    }
    out
}

/// Replays the Dockerfile's dependency stage: the files its COPY lines bring in,
/// then its RUN lines, with `cargo build` swapped for `cargo fetch --locked` (which
/// reads every manifest and checks every declared target, as the build would,
/// without compiling; `cargo metadata` does not check targets). A
/// target declared in Cargo.toml but not stubbed makes cargo refuse the manifest
/// here exactly as it would in `docker build`.
/// Every `[[bin]]`, `[[bench]]`, `[[test]]` and `[[example]]` the workspace's
/// manifests declare, as paths from the workspace root (read with a TOML
/// parser, independently of docker/stub-targets.sh).
fn declared_targets() -> Vec<String> {
    let mut paths = Vec::new();
    for (dir, manifest) in [("", "Cargo.toml"), ("actors/", "actors/Cargo.toml")] {
        let text = std::fs::read_to_string(root().join(manifest)).unwrap();
        let m: toml::Table = text.parse().unwrap();
        for (kind, default_dir) in [
            ("bin", "src/bin"),
            ("bench", "benches"),
            ("test", "tests"),
            ("example", "examples"),
        ] {
            for t in m.get(kind).and_then(|v| v.as_array()).into_iter().flatten() {
                let path = match t.get("path").and_then(|p| p.as_str()) {
                    Some(p) => p.to_string(),
                    None => format!("{default_dir}/{}.rs", t["name"].as_str().unwrap()),
                };
                paths.push(format!("{dir}{path}"));
            }
        }
    }
    assert!(
        paths.iter().any(|p| p == "benches/history.rs"),
        "the benches are declared: {paths:?}"
    );
    paths
}

#[test]
fn the_dockerfile_dependency_stage_replays_with_cargo() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stage = dependency_stage(&dockerfile);
    assert!(
        stage
            .iter()
            .any(|(op, a)| op == "RUN" && a.contains("cargo build")),
        "the dependency stage builds: {stage:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut workdir = tmp.path().to_path_buf();
    for (op, args) in &stage {
        match op.as_str() {
            "WORKDIR" => {
                workdir = tmp.path().join(args.trim_start_matches('/'));
                std::fs::create_dir_all(&workdir).unwrap();
            }
            "COPY" => {
                let parts: Vec<&str> = args.split_whitespace().collect();
                assert!(!parts[0].starts_with("--"), "plain COPY only: {args}");
                let (dst, srcs) = parts.split_last().unwrap();
                for src in srcs {
                    let from = root().join(src);
                    assert!(from.is_file(), "COPY {src}: not a file in the repository");
                    let to = if dst.ends_with('/') || *dst == "." || srcs.len() > 1 {
                        workdir.join(dst).join(Path::new(src).file_name().unwrap())
                    } else {
                        workdir.join(dst)
                    };
                    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                    std::fs::copy(&from, &to).unwrap();
                }
            }
            "RUN" => {
                for seg in args.split("&&") {
                    let seg = seg.trim();
                    if seg.starts_with("cargo fetch") {
                        // The stand-ins are in place: one for every target the
                        // manifests declare, whatever the stub script parsed.
                        for path in declared_targets() {
                            assert!(
                                workdir.join(&path).is_file(),
                                "the dependency stage has no stand-in for {path}"
                            );
                        }
                    }
                    let seg = if seg.starts_with("cargo build") {
                        "cargo fetch --locked".to_string()
                    } else {
                        seg.to_string()
                    };
                    let out = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(&seg)
                        .current_dir(&workdir)
                        .env_remove("CARGO_TARGET_DIR")
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "the Dockerfile's dependency stage fails at `{seg}`:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            "ENV" | "ARG" | "LABEL" => {}
            other => panic!("the replay does not know {other} ({args})"),
        }
    }
    // Everything the final build needs is in the build context.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for needed in ["src/", "actors/", "benches/", "examples/", "docker/"] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            ".dockerignore drops {needed}, which the build needs"
        );
    }
}
