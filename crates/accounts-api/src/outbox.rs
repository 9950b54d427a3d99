//! The SQL of the `outbox` table: appending events (the audit step) and
//! claiming, marking and parking them (the relay).

use audit_event::AuditEvent;
use sqlx::PgConnection;

/// A pending row, claimed by the relay's transaction.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub payload: String,
}

pub async fn append(tx: &mut PgConnection, event: &AuditEvent) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO outbox (event_id, payload) VALUES ($1, $2)",
        event.event_id,
        event.to_json(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Locks up to `limit` pending rows, oldest first, skipping rows another
/// relay holds. The ids are chosen in a CTE so that the lock and the result
/// agree: a LIMIT in a subquery re-evaluated under concurrency could claim
/// more rows than it returns.
pub async fn claim(tx: &mut PgConnection, limit: i64) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as!(
        Pending,
        r#"
        WITH picked AS (
            SELECT id FROM outbox
            WHERE published_at IS NULL AND parked_at IS NULL
            ORDER BY id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        SELECT o.id, o.payload
        FROM outbox o JOIN picked USING (id)
        ORDER BY o.id
        "#,
        limit,
    )
    .fetch_all(&mut *tx)
    .await
}

pub async fn mark_published(tx: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE outbox
        SET published_at = now(), publish_attempts = publish_attempts + 1
        WHERE id = ANY($1)
        "#,
        ids,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Takes a row out of the relay's way for good (nsqd will never accept it).
pub async fn park(tx: &mut PgConnection, id: i64, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE outbox
        SET parked_at = now(), publish_attempts = publish_attempts + 1, last_error = $2
        WHERE id = $1
        "#,
        id,
        error,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
