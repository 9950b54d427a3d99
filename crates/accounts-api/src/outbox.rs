//! The SQL of the `outbox` table: appending events (the audit step);
//! claiming, marking and parking them (the relay); confirming them (delivery
//! receipts); deleting them after the retention window; and the figures of
//! `/metrics`.
//!
//! A row's life: appended with `due_at` = now → claimed and published →
//! marked with the next `due_at` (republished each time it passes) →
//! confirmed by a receipt (`due_at` NULL) → deleted after the retention
//! window. A row nsqd can never accept is parked instead (`due_at` NULL,
//! kept for an operator). Migration 1003 explains the columns and indexes.
//!
//! Lock order: the claim locks with `SKIP LOCKED` and never waits; the
//! receipt update waits, but locks its rows in `id` order, so two receipts
//! covering the same rows cannot deadlock; retention skips locked rows.

use std::time::Duration;

use audit_event::AuditEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A due row, claimed by the relay's transaction.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub payload: String,
    /// Published before and still unconfirmed: this is a republication.
    pub republish: bool,
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

/// Locks up to `limit` due rows — never published, or published and
/// unconfirmed past their `due_at` — earliest first, skipping rows another
/// relay holds. The rows are chosen and locked in a materialized CTE, so the
/// lock and the result agree: a LIMIT in a subquery re-evaluated under
/// concurrency could lock more rows than it returns.
///
/// `statement_timestamp()` rather than `now()`: a row committed after this
/// transaction began (with a later `now()` of its own) is still due.
pub async fn claim(tx: &mut PgConnection, limit: i64) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as!(
        Pending,
        r#"
        WITH picked AS MATERIALIZED (
            SELECT id, payload, published_at FROM outbox
            WHERE due_at <= statement_timestamp()
            ORDER BY due_at, id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        SELECT id AS "id!", payload AS "payload!",
               published_at IS NOT NULL AS "republish!"
        FROM picked
        ORDER BY id
        "#,
        limit,
    )
    .fetch_all(&mut *tx)
    .await
}

/// Marks rows nsqd acknowledged. They stay due for a republication after
/// `republish_after` × 2^(earlier publications), at most `max_wait` (a
/// receipt clears that). With `republish_after` `None`, nsqd's `OK` is taken
/// as the confirmation.
pub async fn mark_published(
    tx: &mut PgConnection,
    ids: &[i64],
    republish_after: Option<Duration>,
    max_wait: Duration,
) -> Result<(), sqlx::Error> {
    let Some(after) = republish_after else {
        sqlx::query!(
            r#"
            UPDATE outbox
            SET published_at = now(), publish_attempts = publish_attempts + 1,
                confirmed_at = now(), due_at = NULL
            WHERE id = ANY($1)
            "#,
            ids,
        )
        .execute(&mut *tx)
        .await?;
        return Ok(());
    };
    // `publish_attempts` on the right-hand side is the value before this
    // update: the first wait is `after`, then 2×, 4×, … The exponent is
    // capped so that the power cannot overflow a double.
    sqlx::query!(
        r#"
        UPDATE outbox
        SET published_at = now(), publish_attempts = publish_attempts + 1,
            due_at = now() + make_interval(
                secs => least($2::float8 * power(2, least(publish_attempts, 40)), $3::float8))
        WHERE id = ANY($1)
        "#,
        ids,
        after.as_secs_f64(),
        max_wait.as_secs_f64(),
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
        SET parked_at = now(), due_at = NULL,
            publish_attempts = publish_attempts + 1, last_error = $2
        WHERE id = $1
        "#,
        id,
        error,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Confirms the rows of these events (a delivery receipt); returns how many
/// were newly confirmed. Unknown ids (deleted by retention, or written to
/// another outbox sharing the topic) and rows confirmed before are ignored,
/// which makes a repeated receipt harmless.
///
/// Waits for rows a relay holds (it is publishing them), locking in `id`
/// order so that concurrent receipts cannot deadlock each other.
pub async fn confirm(pool: &PgPool, event_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        WITH confirmed AS MATERIALIZED (
            SELECT id FROM outbox
            WHERE event_id = ANY($1) AND confirmed_at IS NULL
            ORDER BY id
            FOR UPDATE
        )
        UPDATE outbox o SET confirmed_at = now(), due_at = NULL
        FROM confirmed c
        WHERE o.id = c.id
        "#,
        event_ids,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes up to `limit` rows confirmed more than `retention` ago, oldest
/// first, skipping rows a receipt is touching; returns how many. One short
/// statement: callers pause between batches instead of holding locks.
pub async fn delete_confirmed(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        WITH doomed AS MATERIALIZED (
            SELECT id FROM outbox
            WHERE confirmed_at < statement_timestamp() - make_interval(secs => $1::float8)
            ORDER BY confirmed_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        DELETE FROM outbox o USING doomed d WHERE o.id = d.id
        "#,
        retention.as_secs_f64(),
        limit,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The backlog, as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows never published yet.
    pub pending: i64,
    /// Rows published and waiting for their receipt.
    pub unconfirmed: i64,
    /// Rows nsqd can never accept, waiting for an operator.
    pub parked: i64,
    /// Age in seconds of the oldest pending row (0 when there is none).
    pub oldest_pending_seconds: f64,
    /// Age in seconds of the oldest unconfirmed row (0 when there is none).
    pub oldest_unconfirmed_seconds: f64,
}

/// Counts the backlog through the partial indexes, so its cost follows the
/// backlog, not the table. `timeout` bounds it on the server
/// (`statement_timeout`): a scrape must not pile up work on a struggling
/// database.
pub async fn backlog(pool: &PgPool, timeout: Duration) -> Result<Backlog, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let millis = timeout.as_millis().max(1).to_string();
    sqlx::query!(
        "SELECT set_config('statement_timeout', $1, true) AS _set",
        millis
    )
    .fetch_one(&mut *tx)
    .await?;
    let backlog = sqlx::query_as!(
        Backlog,
        r#"
        SELECT
            count(*) FILTER (WHERE published_at IS NULL) AS "pending!",
            count(*) FILTER (WHERE published_at IS NOT NULL) AS "unconfirmed!",
            (SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL) AS "parked!",
            coalesce(extract(epoch FROM statement_timestamp()
                - min(created_at) FILTER (WHERE published_at IS NULL)), 0)::float8
                AS "oldest_pending_seconds!",
            coalesce(extract(epoch FROM statement_timestamp()
                - min(created_at) FILTER (WHERE published_at IS NOT NULL)), 0)::float8
                AS "oldest_unconfirmed_seconds!"
        FROM outbox
        WHERE due_at IS NOT NULL
        "#,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(backlog)
}
