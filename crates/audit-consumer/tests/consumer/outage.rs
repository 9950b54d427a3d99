use std::time::Duration;

use tokio::time::Instant;

use crate::helpers::{assert_stored_exactly_once, spawn_app, wait_for_rows};
use crate::process::publish_in_background;

async fn readiness(app: &crate::helpers::TestApp) -> (u16, serde_json::Value) {
    let response = app.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_database_outage_mid_stream_stores_every_event_exactly_once_without_a_restart()
{
    let mut app = spawn_app().await;
    // About 3,000 events over 15 s, before, during and after the outage.
    let load = publish_in_background(app.producer.clone(), 3000, 20, Duration::from_millis(100));
    crate::helpers::eventually(
        "rows before the outage",
        Duration::from_secs(10),
        || async { app.audit_log_count().await > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    tokio::task::block_in_place(|| app.postgres.stop()).unwrap();
    let stopped = Instant::now();
    let mut paused_seen = false;
    while stopped.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(app.is_running(), "the consumer stopped during the outage");
        paused_seen |= app.metrics().await.get("audit_consumer_paused") == 1.0;
    }
    assert!(
        paused_seen,
        "the consumer kept taking messages (RDY) while the database was down"
    );
    let (_, body) = readiness(&app).await;
    assert_eq!(body["database"], "down");
    tokio::task::block_in_place(|| app.postgres.start_again()).unwrap();

    let published = load.await.unwrap();
    wait_for_rows(&app.pool, published.len(), Duration::from_secs(45)).await;
    assert_stored_exactly_once(&app.pool, &published).await;
    assert_eq!(
        app.dead_letter_count().await,
        0,
        "an outage is no reason to dead-letter"
    );
    app.wait_until_channel_is_drained().await;
    assert!(app.is_running(), "the consumer stopped after the outage");

    let metrics = app.metrics().await;
    assert!(metrics.get("audit_consumer_database_pauses_total") >= 1.0);
    assert!(metrics.get("audit_consumer_messages_requeued_total") >= 1.0);
    assert!(metrics.get(r#"audit_consumer_store_failures_total{class="unavailable"}"#) >= 1.0);
    // A commit whose answer was lost to the outage is stored but counted
    // as a duplicate when its messages come back.
    let stored = metrics.get("audit_consumer_events_stored_total");
    let duplicates = metrics.get("audit_consumer_duplicates_skipped_total");
    assert!(
        stored <= 3000.0 && stored + duplicates >= 3000.0,
        "{stored} + {duplicates}"
    );
    assert_eq!(metrics.get("audit_consumer_paused"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_reports_the_database_and_the_nsq_connections() {
    let mut app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);

    crate::helpers::eventually("readiness", Duration::from_secs(10), || async {
        readiness(&app).await.0 == 200
    })
    .await;
    let (_, body) = readiness(&app).await;
    assert_eq!(body["database"], "up");
    assert!(body["nsq_connections"].as_u64().unwrap() >= 1, "{body}");

    tokio::task::block_in_place(|| app.postgres.stop()).unwrap();
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["database"], "down");
    assert!(body["nsq_connections"].as_u64().unwrap() >= 1, "{body}");
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);

    tokio::task::block_in_place(|| app.postgres.start_again()).unwrap();
    crate::helpers::eventually("readiness again", Duration::from_secs(10), || async {
        readiness(&app).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_without_an_nsqd_connection() {
    let mut app = spawn_app().await;
    crate::helpers::eventually("readiness", Duration::from_secs(10), || async {
        readiness(&app).await.0 == 200
    })
    .await;
    tokio::task::block_in_place(|| app.nsqd.stop()).unwrap();
    crate::helpers::eventually("unreadiness", Duration::from_secs(10), || async {
        let (status, body) = readiness(&app).await;
        status == 503 && body["nsq_connections"] == 0 && body["database"] == "up"
    })
    .await;
}
