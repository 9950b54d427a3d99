//! Retention: confirmed rows go in batches once their window has passed;
//! pending, unconfirmed and parked rows stay.

use std::time::Duration;

use accounts_api::retention::{delete_once, BATCH};

use crate::helpers::{metric, spawn_app};
use crate::relay::insert_rows;

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn expired_confirmed_rows_are_deleted_in_batches_and_nothing_else() {
    let app = spawn_app().await;
    insert_rows(&app, 2500 + 10 + 5 + 3 + 1).await;
    // 2500 confirmed 25 hours ago, 10 an hour ago, 5 pending, 3 published
    // long ago and unconfirmed, 1 parked long ago.
    sqlx::query!(
        r#"
        WITH ranked AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM outbox)
        UPDATE outbox o SET
            published_at = CASE WHEN n <= 2513 THEN now() - interval '26 hours' END,
            confirmed_at = CASE WHEN n <= 2500 THEN now() - interval '25 hours'
                                WHEN n <= 2510 THEN now() - interval '1 hour' END,
            parked_at = CASE WHEN n > 2518 THEN now() - interval '30 hours' END,
            due_at = CASE WHEN n <= 2510 OR n > 2518 THEN NULL
                          WHEN n <= 2513 THEN now() - interval '1 hour'
                          ELSE now() END
        FROM ranked r WHERE o.id = r.id
        "#
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let mut batches = Vec::new();
    loop {
        let deleted = delete_once(&app.pool, DAY).await.unwrap();
        batches.push(deleted);
        if deleted < BATCH as u64 {
            break;
        }
    }
    assert_eq!(batches, [1000, 1000, 500]);
    assert_eq!(app.outbox_count().await, 10 + 5 + 3 + 1);

    // A window of zero takes every confirmed row, still nothing else.
    assert_eq!(delete_once(&app.pool, Duration::ZERO).await.unwrap(), 10);
    assert_eq!(app.outbox_count().await, 5 + 3 + 1);
    assert_eq!(app.pending_count().await, 5 + 1);
    assert_eq!(app.unconfirmed_count().await, 3);
}

#[tokio::test]
async fn metrics_show_the_backlog_of_the_outbox() {
    let app = spawn_app().await;
    insert_rows(&app, 10).await;
    // 3 published and unconfirmed, 1 parked, 6 pending (created a minute ago).
    sqlx::query!(
        r#"
        WITH ranked AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM outbox)
        UPDATE outbox o SET
            created_at = now() - interval '60 seconds',
            published_at = CASE WHEN n <= 3 THEN now() END,
            due_at = CASE WHEN n = 4 THEN NULL WHEN n <= 3 THEN now() + interval '1 minute'
                          ELSE due_at END,
            parked_at = CASE WHEN n = 4 THEN now() END
        FROM ranked r WHERE o.id = r.id
        "#
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let text = app.metrics().await;
    assert_eq!(metric(&text, "accounts_api_outbox_backlog_up"), Some(1.0));
    assert_eq!(metric(&text, "accounts_api_outbox_pending_rows"), Some(6.0));
    assert_eq!(
        metric(&text, "accounts_api_outbox_unconfirmed_rows"),
        Some(3.0)
    );
    assert_eq!(metric(&text, "accounts_api_outbox_parked_rows"), Some(1.0));
    for series in [
        "accounts_api_outbox_oldest_pending_seconds",
        "accounts_api_outbox_oldest_unconfirmed_seconds",
    ] {
        let age = metric(&text, series).unwrap();
        assert!((60.0..120.0).contains(&age), "{series} {age}");
    }
    assert_eq!(
        metric(&text, "accounts_api_outbox_published_total"),
        Some(0.0)
    );
}
