//! The graceful shutdown ([`Pod::shutdown`]): stop claiming, release the
//! claimed steps waiting for a slot, let running steps finish within the
//! grace, write their outcomes, release the rest without spending a retry, and
//! send a final `down` heartbeat, waiting for the store at most
//! [`SHUTDOWN_STORE_WAIT`] beyond the grace in all.

use std::time::Duration;

use crate::actors::executor::{Drain, TakeWaiting};
use crate::actors::heartbeat::FinalHeartbeat;
use crate::actors::storage::{Flush, ReleaseSteps};
use crate::store::Lease;

use super::Pod;

/// How long a graceful shutdown waits for the store beyond
/// `FLEET_Q_SHUTDOWN_GRACE_SECONDS`, in all: half of it for releasing the
/// claimed steps waiting for a slot (before the grace), the rest for writing
/// outcomes, releasing unfinished steps and the final `down` heartbeat
/// (after it). A store that answers takes milliseconds; one that stalls would
/// otherwise hold each of them for its retry budget, and the pod past
/// Kubernetes' termination grace (30 s, against a 20 s shutdown grace plus
/// this plus 5 s for HTTP requests in flight). What the store did not answer
/// is left to recovery: nothing is lost, it only starts later.
pub const SHUTDOWN_STORE_WAIT: Duration = Duration::from_secs(4);

/// What a graceful shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Steps still running at the end of the grace period, released to pending.
    pub released: usize,
    /// Claimed steps that were waiting for a slot (claim-ahead), released to
    /// pending at the start of shutdown.
    pub released_waiting: usize,
    /// Whether the final `down` heartbeat was written.
    pub final_heartbeat: bool,
}

impl Pod {
    /// Releases `leases` to pending without spending a retry (shutdown), and
    /// logs what happened to `what`. Waits at most `limit` for the store: past
    /// it the release goes on in the StorageActor while the pod stops, and
    /// whatever it did not release, recovery requeues.
    async fn release(&self, leases: Vec<Lease>, what: &str, limit: Duration) {
        if leases.is_empty() {
            return;
        }
        match tokio::time::timeout(limit, self.storage.send(ReleaseSteps(leases))).await {
            Ok(Ok(Ok(r))) => tracing::info!(
                released = r.applied.len(),
                fenced = r.rejected.len(),
                "released {what}"
            ),
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "could not release {what}; recovery will requeue them")
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not release {what}; recovery will requeue them")
            }
            Err(_) => tracing::error!(
                limit_ms = limit.as_millis() as u64,
                "the store did not answer the release of {what} in time; recovery will requeue what it did not release"
            ),
        }
    }

    /// Graceful shutdown; see the module docs.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.state.begin_shutdown();
        tracing::info!(
            running = self.state.running.len(),
            grace_ms = self.cfg.shutdown_grace.as_millis() as u64,
            "shutting down: claiming stopped, draining"
        );
        // The store work of a shutdown fits in SHUTDOWN_STORE_WAIT beyond the
        // grace, whether or not the store answers (see its docs).
        let end = tokio::time::Instant::now() + self.cfg.shutdown_grace + SHUTDOWN_STORE_WAIT;
        let left = || end.saturating_duration_since(tokio::time::Instant::now());
        // Claimed steps still waiting for a slot go back first, so other pods
        // start them while running steps finish.
        let waiting = self.executor.send(TakeWaiting).await.unwrap_or_default();
        let released_waiting = waiting.len();
        self.release(
            waiting,
            "claimed steps that were waiting for a slot",
            SHUTDOWN_STORE_WAIT / 2,
        )
        .await;
        let leftover = self
            .executor
            .send(Drain {
                grace: self.cfg.shutdown_grace,
            })
            .await
            .unwrap_or_default();
        // Outcomes of the steps that did finish are written before anything else.
        let _ = tokio::time::timeout(left(), self.storage.send(Flush)).await;
        let mut report = ShutdownReport {
            released: leftover.len(),
            released_waiting,
            ..Default::default()
        };
        self.release(leftover, "unfinished steps", left()).await;
        report.final_heartbeat = matches!(
            tokio::time::timeout(left(), self.heartbeat.send(FinalHeartbeat)).await,
            Ok(Ok(Ok(())))
        );
        if !report.final_heartbeat {
            tracing::warn!("no final heartbeat: the pod is presumed dead after the dead threshold, and recovery requeues what it still holds");
        }
        // The ledger is scratch for this run of the pod.
        self.ledger.remove_files();
        tracing::info!(
            released = report.released,
            final_heartbeat = report.final_heartbeat,
            "shutdown complete"
        );
        report
    }
}
