//! The six phases, and the preloading they share.
//!
//! 1. [`throughput`]: the API under closed-loop load against pgbench
//!    running its transaction.
//! 2. [`latency`]: commit-to-stored latency under open-loop load.
//! 3. [`consumer`]: draining a preloaded channel against a raw INSERT;
//!    5. the same with two consumers.
//! 4. [`relay`]: draining an outbox backlog against the raw claim-and-mark.
//! 6. [`memory`]: the peak RSS measured during 1 and 3.

pub mod consumer;
pub mod latency;
pub mod memory;
pub mod relay;
pub mod throughput;

use anyhow::Context;
use audit_event::AuditEvent;
use uuid::Uuid;

use crate::services::Database;

/// Accounts `1..=n` (ids from [`crate::events::account_id`]), all active.
pub async fn preload_accounts(database: &Database, n: u64) -> anyhow::Result<()> {
    let n = i64::try_from(n).context("too many accounts")?;
    sqlx::query!(
        r#"
        INSERT INTO accounts (id, name, status, version, created_at, updated_at)
        SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
               'Account ' || n, 'active', 1, now(), now()
        FROM generate_series(1::int8, $1::int8) AS n
        "#,
        n,
    )
    .execute(&database.pool)
    .await
    .context("preloading accounts")?;
    analyze(database).await
}

/// Fresh statistics, so the planner treats the preloaded tables as the
/// services will find them.
pub async fn analyze(database: &Database) -> anyhow::Result<()> {
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&database.pool)
        .await
        .with_context(|| format!("VACUUM ANALYZE of {}", database.name))?;
    Ok(())
}

/// Appends `events` to the outbox as the API would, in one transaction:
/// they all become due at its COMMIT.
pub async fn insert_outbox(database: &Database, events: &[AuditEvent]) -> anyhow::Result<()> {
    let mut tx = database.pool.begin().await?;
    for chunk in events.chunks(10_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|e| e.event_id).collect();
        let payloads: Vec<String> = chunk.iter().map(AuditEvent::to_json).collect();
        sqlx::query!(
            "INSERT INTO outbox (event_id, payload) SELECT * FROM UNNEST($1::uuid[], $2::text[])",
            &ids,
            &payloads,
        )
        .execute(&mut *tx)
        .await
        .context("preloading the outbox")?;
    }
    tx.commit().await.context("committing the outbox backlog")?;
    Ok(())
}

pub fn mib(bytes: u64) -> f64 {
    crate::procfs::round(bytes as f64 / (1u64 << 20) as f64, 1)
}
