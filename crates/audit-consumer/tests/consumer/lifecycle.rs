use std::time::Duration;

use crate::helpers::{bodies, spawn_app_with, Options};

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stores_the_batch_in_hand_before_exiting() {
    // A long batch window: the messages are received and waiting in the
    // batch when the shutdown comes.
    let mut app = spawn_app_with(
        Options::default()
            .var("BATCH_SIZE", 100)
            .var("BATCH_MAX_WAIT_MS", 5000),
    )
    .await;
    app.publish_together(&bodies("alice", 20)).await;
    crate::helpers::eventually(
        "the batch to be in hand",
        Duration::from_secs(10),
        || async { app.channel_stats().in_flight == 20 },
    )
    .await;
    // nsqd has sent them; give the batch a moment to take them in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.audit_log_count().await, 0, "the batch window is 5 s");

    app.stop().await.unwrap();
    assert_eq!(app.audit_log_count().await, 20);
    let stats = app.channel_stats();
    assert_eq!((stats.depth, stats.in_flight, stats.deferred), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_mid_stream_leaves_every_message_stored_or_back_in_the_queue() {
    let mut app = spawn_app_with(
        Options::default()
            .var("BATCH_SIZE", 5)
            .var("NSQ_MAX_IN_FLIGHT", 50),
    )
    .await;
    app.publish_together(&bodies("alice", 200)).await;
    crate::helpers::eventually("some rows", Duration::from_secs(10), || async {
        app.audit_log_count().await > 0
    })
    .await;

    app.stop().await.unwrap();
    let stored = app.audit_log_count().await as u64;
    let stats = app.channel_stats();
    assert_eq!(
        stats.in_flight, 0,
        "a message was left in flight: {stats:?}"
    );
    assert_eq!(
        stats.deferred, 0,
        "shutdown requeues without delay: {stats:?}"
    );
    assert_eq!(stored + stats.depth, 200, "{stored} stored, {stats:?}");
}
