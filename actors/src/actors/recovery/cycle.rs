//! One recovery cycle: mark dead pods down, find their orphans, stage them in
//! the ledger, requeue or fail them (fenced), and record the summary.

use super::*;

/// Pods still marked up whose heartbeat is older than the threshold (never `me`).
pub(super) fn dead_pods(
    pods: &[crate::records::PodRecord],
    me: &str,
    dead_threshold: Duration,
) -> Vec<String> {
    pods.iter()
        .filter(|p| p.status == PodStatus::Up && p.pod_id != me && !p.is_alive(dead_threshold))
        .map(|p| p.pod_id.clone())
        .collect()
}

pub(super) async fn run_cycle(
    cfg: RecoveryConfig,
    me: String,
    storage: Addr<StorageActor>,
    ledger: Ledger,
    dry_run: bool,
    pruned: Arc<std::sync::atomic::AtomicU64>,
) -> Result<RecoverySummary, RecoveryError> {
    let t0 = Instant::now();
    let fail = |e: String| RecoveryError::Failed(e);
    let mailbox = |e: MailboxError| RecoveryError::Failed(format!("storage unavailable: {e}"));
    let (pods, now) = storage
        .send(ListPods)
        .await
        .map_err(mailbox)?
        .map_err(|e| fail(e.to_string()))?;
    let cycle_id = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        uuid::Uuid::now_v7().simple()
    );
    let mut summary = RecoverySummary {
        cycle_id: cycle_id.clone(),
        leader_pod: me.clone(),
        started_at: Some(now),
        dry_run,
        ..Default::default()
    };
    let dead = dead_pods(&pods, &me, cfg.dead_threshold);
    summary.dead_pods = dead.clone();
    summary.dead_pods_found = dead.len();
    if !dry_run && !dead.is_empty() {
        let marked = storage
            .send(MarkPodsDown(MarkDownParams {
                pod_ids: dead.clone(),
                dead_threshold: cfg.dead_threshold,
            }))
            .await
            .map_err(mailbox)?
            .map_err(|e| fail(e.to_string()))?;
        if !marked.is_empty() {
            tracing::warn!(pods = %marked.join(","), "marked dead pods down");
        }
    }
    let orphans = storage
        .send(FindOrphans(OrphanParams {
            // A real cycle has marked the dead pods down; a dry run has not.
            presumed_down: if dry_run { dead.clone() } else { Vec::new() },
            limit: cfg.orphan_batch,
        }))
        .await
        .map_err(mailbox)?
        .map_err(|e| fail(e.to_string()))?;
    // A live pod's own claims are never orphans (ours included: we are live).
    let orphans: Vec<_> = orphans
        .into_iter()
        .filter(|s| s.claimed_by.as_deref() != Some(me.as_str()))
        .collect();
    summary.orphaned_steps_found = orphans.len();
    // The ledger is the audit record, not a precondition: a ledger that cannot be
    // written (full or read-only disk) never stops the requeue.
    if let Err(e) = ledger.stage(cycle_id.clone(), orphans.clone()).await {
        crate::ledger::count_error("stage");
        tracing::error!(cycle_id = %cycle_id, error = %e, orphans = orphans.len(),
            "could not stage this cycle's orphans in the recovery ledger; recovering without the audit record");
        summary.error = Some(format!("ledger: {e}"));
    }
    if !dry_run && !orphans.is_empty() {
        let holders: std::collections::BTreeSet<String> = orphans
            .iter()
            .filter_map(|s| s.claimed_by.clone())
            .collect();
        let report = storage
            .send(RequeueOrphans(RequeueParams {
                leases: orphans.iter().filter_map(Lease::of).collect(),
                reason: format!(
                    "requeued by recovery: holder {} presumed dead",
                    holders.into_iter().collect::<Vec<_>>().join(", ")
                ),
                backoff: cfg.backoff,
            }))
            .await
            .map_err(mailbox)?
            .map_err(|e| fail(e.to_string()))?;
        for (id, status) in report.applied {
            match status {
                StepStatus::Pending => summary.requeued_steps.push(id),
                _ => summary.terminal_steps.push(id),
            }
        }
        summary.steps_skipped = report.rejected.len();
    } else if dry_run {
        for s in &orphans {
            if s.retry_count < s.max_retries {
                summary.requeued_steps.push(s.step_id);
            } else {
                summary.terminal_steps.push(s.step_id);
            }
        }
    }
    summary.steps_requeued = summary.requeued_steps.len();
    summary.steps_marked_terminal = summary.terminal_steps.len();
    if !dry_run {
        // Pruning runs on its own cadence; the summary reports what it deleted
        // since the previous cycle.
        summary.steps_pruned = pruned.swap(0, std::sync::atomic::Ordering::Relaxed);
    }
    summary.duration_ms = t0.elapsed().as_millis() as u64;
    if let Err(e) = ledger.record(summary.clone()).await {
        crate::ledger::count_error("record");
        tracing::error!(cycle_id = %summary.cycle_id, error = %e,
            "could not record this cycle's summary in the recovery ledger file; it is kept in memory only");
    }
    if summary.orphaned_steps_found > 0 || summary.dead_pods_found > 0 {
        tracing::warn!(
            cycle_id = %summary.cycle_id, dry_run, dead_pods = %summary.dead_pods.join(","),
            orphaned = summary.orphaned_steps_found, requeued = summary.steps_requeued,
            terminal = summary.steps_marked_terminal, skipped = summary.steps_skipped,
            pruned = summary.steps_pruned, duration_ms = summary.duration_ms,
            "recovery cycle"
        );
    } else {
        tracing::info!(
            cycle_id = %summary.cycle_id, dry_run, pruned = summary.steps_pruned,
            duration_ms = summary.duration_ms, "recovery cycle: nothing to recover"
        );
    }
    Ok(summary)
}
