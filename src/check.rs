//! `fleet-q check`: connects to the configured store and reports what works, one
//! line per check, so an operator can tell a network problem from a credentials
//! problem from a missing table. `fleet-q schema` prints (or applies) the DDL.

use std::time::Instant;

use serde_json::{json, Value};

use crate::config::{Settings, StorageMode};

/// One check's outcome.
struct Line {
    name: String,
    ok: bool,
    detail: String,
    ms: f64,
}

/// Runs the checks (and with `smoke`, [`crate::smoke`]) and prints them; an
/// error when any failed.
pub fn run(settings: &Settings, json_out: bool, smoke: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut lines = rt.block_on(checks(settings));
    if smoke && lines.iter().all(|l| l.ok) {
        lines.extend(
            rt.block_on(crate::smoke::smoke(settings))
                .into_iter()
                .map(|l| Line {
                    name: format!("smoke: {}", l.name),
                    ok: l.ok,
                    detail: l.detail,
                    ms: l.ms,
                }),
        );
    }
    let ok = lines.iter().all(|l| l.ok);
    if json_out {
        let v: Vec<Value> = lines
            .iter()
            .map(|l| json!({"check": l.name, "ok": l.ok, "detail": l.detail, "ms": l.ms}))
            .collect();
        println!("{}", json!({"ok": ok, "checks": v}));
    } else {
        for l in &lines {
            println!(
                "{}  {:<28} {:>8.1} ms  {}",
                if l.ok { "ok  " } else { "FAIL" },
                l.name,
                l.ms,
                l.detail
            );
        }
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    anyhow::ensure!(ok, "{failed} check(s) failed");
    Ok(())
}

async fn checks(settings: &Settings) -> Vec<Line> {
    let mut out = Vec::new();
    let mut push = |name: &str, t0: Instant, r: Result<String, String>| {
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let ok = r.is_ok();
        out.push(Line {
            name: name.into(),
            ok,
            detail: r.unwrap_or_else(|e| e),
            ms,
        });
        ok
    };
    let t0 = Instant::now();
    let target = match settings.storage_mode {
        StorageMode::Sqlite => format!("sqlite {}", settings.sqlite_db_path.display()),
        StorageMode::Snowflake => format!(
            "snowflake account {} database {}.{}",
            settings.snowflake.account, settings.snowflake.database, settings.snowflake.schema
        ),
    };
    push("settings", t0, Ok(format!("valid; store: {target}")));
    let t0 = Instant::now();
    // Opening initialises the schema (idempotent: creates missing tables only).
    let store = match crate::serve::open_store(settings).await {
        Ok(s) => {
            push(
                "connect and schema",
                t0,
                Ok("connected; tables present".into()),
            );
            s
        }
        Err(e) => {
            push("connect and schema", t0, Err(e.to_string()));
            return out;
        }
    };
    if settings.storage_mode == StorageMode::Snowflake {
        let t0 = Instant::now();
        match crate::storage::snowflake::SnowflakeStore::open(
            &settings.snowflake,
            settings.store_retry().backoff,
        ) {
            Ok(sf) => {
                let r = sf.session_report_line().await;
                push("session parameters", t0, r.map_err(|e| e.to_string()));
                let t0 = Instant::now();
                let r = match sf.collated_columns().await {
                    Ok(c) if c.is_empty() => Ok("none (binary comparison)".to_string()),
                    Ok(c) => Err(format!(
                        "columns with a collation (DEFAULT_DDL_COLLATION was set when the tables were created; recreate them without it): {}",
                        c.join(", ")
                    )),
                    Err(e) => Err(e.to_string()),
                };
                push("column collations", t0, r);
            }
            Err(e) => {
                push("session parameters", t0, Err(e.to_string()));
            }
        };
    }
    let t0 = Instant::now();
    let r = store.now().await.map(|n| format!("store time {n}"));
    push("store clock", t0, r.map_err(|e| e.to_string()));
    let t0 = Instant::now();
    let r = store.queue_stats().await.map(|s| {
        format!(
            "{} steps: {} pending, {} claimed, {} completed, {} failed",
            s.counts.total(),
            s.counts.pending,
            s.counts.claimed,
            s.counts.completed,
            s.counts.failed
        )
    });
    push("read STEP_TRACKER", t0, r.map_err(|e| e.to_string()));
    let t0 = Instant::now();
    let threshold = settings.dead_pod_threshold;
    let r = store.pods_list().await.map(|pods| {
        let live: Vec<&str> = pods
            .iter()
            .filter(|p| p.is_alive(threshold))
            .map(|p| p.pod_id.as_str())
            .collect();
        let leader = fleet_q_actors::eldest_live_pod(&pods, threshold)
            .map_or("none".to_string(), |p| p.pod_id.clone());
        format!(
            "{} rows, {} live ({}); leader {leader}",
            pods.len(),
            live.len(),
            live.join(", ")
        )
    });
    push("read POD_HEALTH", t0, r.map_err(|e| e.to_string()));
    out
}

/// `fleet-q schema`: prints the DDL, or applies it with `apply`.
pub fn schema(settings: &Settings, apply: bool) -> anyhow::Result<()> {
    match settings.storage_mode {
        StorageMode::Sqlite => {
            if !apply {
                println!("{}", crate::storage::sqlite::schema_ddl().trim());
                return Ok(());
            }
        }
        StorageMode::Snowflake => {
            if !apply {
                for ddl in crate::storage::snowflake::DDL {
                    println!("{ddl};\n");
                }
                return Ok(());
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::serve::open_store(settings))?;
    match settings.storage_mode {
        StorageMode::Sqlite => {
            println!("schema applied to {}", settings.sqlite_db_path.display())
        }
        StorageMode::Snowflake => println!(
            "schema applied to {}.{}",
            settings.snowflake.database, settings.snowflake.schema
        ),
    }
    Ok(())
}
