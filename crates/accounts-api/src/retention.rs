//! Retention: confirmed outbox rows are deleted `OUTBOX_RETENTION_HOURS`
//! after their confirmation, so the table holds the backlog plus a window
//! for inspection, not the whole history (that is `audit_logs`' job).
//!
//! Deletes go in small batches, each its own short statement that skips
//! rows locked by someone else, with a pause in between: no long lock, no
//! long transaction holding back vacuum, and every relay process can run
//! this loop at once. Parked rows are never deleted: they wait for an
//! operator.

use std::sync::Arc;
use std::time::Duration;

use slog::Logger;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox;

/// Rows per DELETE.
pub const BATCH: i64 = 1000;
/// Rest between two batches of one sweep.
const PAUSE: Duration = Duration::from_millis(50);
/// Time between sweeps. The window is hours, so minutes of slack are fine.
const INTERVAL: Duration = Duration::from_secs(60);

/// Deletes one batch of expired rows; returns how many (fewer than
/// [`BATCH`] means the sweep is done).
pub async fn delete_once(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    outbox::delete_confirmed(pool, retention, BATCH).await
}

/// Sweeps every [`INTERVAL`] until `shutdown` is cancelled, stopping only
/// between batches.
pub async fn run(
    pool: PgPool,
    retention: Duration,
    metrics: Arc<Metrics>,
    logger: Logger,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let mut swept = 0;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match delete_once(&pool, retention).await {
                Ok(deleted) => {
                    failing = false;
                    metrics.deleted(deleted);
                    swept += deleted;
                    if deleted < BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    if !failing {
                        slog::warn!(logger, "cannot delete expired outbox rows; retrying later";
                            "error" => %error);
                        failing = true;
                    }
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(PAUSE) => {}
                () = shutdown.cancelled() => return,
            }
        }
        if swept > 0 {
            slog::debug!(logger, "deleted expired outbox rows"; "deleted" => swept);
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
