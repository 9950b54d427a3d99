//! `/metrics`: the Prometheus exposition of what the consumer did.

use std::time::Duration;

use crate::helpers::{event, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_received_stored_duplicate_and_dead_lettered_messages() {
    let app = spawn_app().await;
    let events: Vec<_> = (0..5).map(|_| event("alice")).collect();
    for event in &events {
        app.publish(event).await;
    }
    app.publish_raw(b"not json").await;
    app.publish_raw(b"{}").await;
    app.wait_for_audit_logs(5).await;
    app.wait_for_dead_letters(2).await;
    // The same event again, once it is stored: a duplicate.
    app.publish(&events[0]).await;
    app.wait_until_channel_is_drained().await;

    let response = app.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for family in [
        "# TYPE audit_consumer_messages_received_total counter",
        "# TYPE audit_consumer_batch_size histogram",
        "# TYPE audit_consumer_store_duration_seconds histogram",
        "# TYPE audit_consumer_nsq_connections gauge",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }

    // The duplicate's FIN reaches nsqd before its batch is counted.
    crate::helpers::eventually(
        "the duplicate to be counted",
        Duration::from_secs(5),
        || async {
            app.metrics()
                .await
                .get("audit_consumer_duplicates_skipped_total")
                == 1.0
        },
    )
    .await;
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("audit_consumer_messages_received_total"), 8.0);
    assert_eq!(metrics.get("audit_consumer_events_stored_total"), 5.0);
    assert_eq!(metrics.get("audit_consumer_duplicates_skipped_total"), 1.0);
    assert_eq!(
        metrics.get("audit_consumer_messages_dead_lettered_total"),
        2.0
    );
    assert_eq!(metrics.get("audit_consumer_messages_requeued_total"), 0.0);
    let batches = metrics.get("audit_consumer_batch_size_count");
    assert!(batches >= 1.0);
    assert_eq!(metrics.get("audit_consumer_batch_size_sum"), 8.0);
    assert_eq!(
        metrics.get(r#"audit_consumer_batch_size_bucket{le="+Inf"}"#),
        batches
    );
    assert_eq!(
        metrics.get("audit_consumer_store_duration_seconds_count"),
        batches,
        "one committed transaction per batch"
    );
    assert_eq!(metrics.get("audit_consumer_nsq_connections"), 1.0);
    assert_eq!(metrics.get("audit_consumer_paused"), 0.0);
}
