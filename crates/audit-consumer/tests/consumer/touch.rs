//! A slow database: the batch writer keeps its messages alive with TOUCH.

use std::time::Duration;

use crate::helpers::{bodies, eventually, spawn_app_with, Options};

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_held_by_a_slow_database_is_touched_so_nsqd_never_times_it_out() {
    // nsqd redelivers a message it has not heard about for 2 s.
    let app = spawn_app_with(Options::default().var("NSQ_MSG_TIMEOUT_MS", 2000)).await;

    // Every INSERT into audit_logs waits for this transaction: a database
    // that answers, slowly.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query!("LOCK TABLE audit_logs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    app.publish_together(&bodies("alice", 50)).await;
    eventually(
        "the batch to be in hand",
        Duration::from_secs(10),
        || async { app.channel_stats().in_flight == 50 },
    )
    .await;
    // Three message timeouts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = app.channel_stats();
    assert_eq!(
        (stats.in_flight, stats.timed_out, stats.requeued),
        (50, 0, 0),
        "{stats:?}"
    );
    assert!(
        app.metrics()
            .await
            .get("audit_consumer_messages_touched_total")
            >= 50.0 * 3.0
    );

    lock.rollback().await.unwrap();
    app.wait_for_audit_logs(50).await;
    app.wait_until_channel_is_drained().await;
    let stats = app.channel_stats();
    assert_eq!((stats.timed_out, stats.requeued), (0, 0), "{stats:?}");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("audit_consumer_events_stored_total"), 50.0);
    assert_eq!(metrics.get("audit_consumer_duplicates_skipped_total"), 0.0);
    // A batch took longer than the message timeout to commit.
    let batches = metrics.get("audit_consumer_store_duration_seconds_count");
    let quick = metrics.get(r#"audit_consumer_store_duration_seconds_bucket{le="5"}"#);
    assert!(
        batches - quick >= 1.0,
        "{batches} batches, {quick} under 5 s"
    );
}
