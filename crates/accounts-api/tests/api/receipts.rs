//! Delivery receipts through a real nsqd: they confirm outbox rows, stop
//! their republication, and are harmless when repeated or malformed.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{eventually, metric, relay_to, spawn_app_with, TestApp};
use crate::relay::{message_count, producer, send_mixed_requests, start_nsqd, TOPIC};

const RECEIPTS: &str = "audit.receipts";

async fn event_ids(app: &TestApp) -> Vec<Uuid> {
    sqlx::query_scalar!("SELECT event_id FROM outbox ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn send_receipt(producer: &nsq::Producer, body: &str) {
    producer
        .publish(&nsq::Topic::new(RECEIPTS).unwrap(), body.as_bytes())
        .await
        .unwrap();
}

fn receipt(ids: &[Uuid]) -> String {
    json!({ "event_ids": ids }).to_string()
}

/// Depth plus in-flight of the relays' receipts channel: 0 once every
/// receipt is answered.
fn receipts_unanswered(nsqd: &testkit::Nsqd) -> u64 {
    let stats = nsqd.stats().unwrap();
    stats["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["topic_name"] == RECEIPTS)
        .flat_map(|t| t["channels"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["channel_name"] == "outbox-relay")
        .map(|c| c["depth"].as_u64().unwrap_or(0) + c["in_flight_count"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn a_receipt_confirms_its_rows_and_ends_their_republication() {
    let nsqd = start_nsqd().await;
    let address = nsqd.tcp_address();
    let app = spawn_app_with(|config| {
        relay_to(config, address);
        config.relay.republish_after = Some(Duration::from_secs(1));
    })
    .await;
    let sent = send_mixed_requests(&app).await as u64;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.pending_count().await == 0
        })
        .await
    );

    // No consumer, so no receipt: the rows are published again.
    assert!(
        eventually(Duration::from_secs(10), || async {
            message_count(&nsqd, TOPIC) >= 2 * sent
        })
        .await,
        "rows were not republished"
    );
    let text = app.metrics().await;
    assert!(metric(&text, "accounts_api_outbox_republished_total").unwrap() >= sent as f64);

    send_receipt(
        &producer(nsqd.tcp_address()),
        &receipt(&event_ids(&app).await),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.unconfirmed_count().await == 0
        })
        .await,
        "the receipt did not confirm the rows"
    );
    // Anything claimed before the receipt landed is out by now; after that,
    // nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = message_count(&nsqd, TOPIC);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(message_count(&nsqd, TOPIC), published);

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "accounts_api_outbox_confirmed_total"),
        Some(sent as f64)
    );
    assert_eq!(
        metric(&text, "accounts_api_outbox_unconfirmed_rows"),
        Some(0.0)
    );
    assert_eq!(metric(&text, "accounts_api_outbox_pending_rows"), Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn repeated_unknown_and_malformed_receipts_are_answered_and_change_nothing_else() {
    let nsqd = start_nsqd().await;
    let address = nsqd.tcp_address();
    let app = spawn_app_with(|config| relay_to(config, address)).await;
    send_mixed_requests(&app).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.pending_count().await == 0
        })
        .await
    );
    let ids = event_ids(&app).await;
    let producer = producer(nsqd.tcp_address());
    send_receipt(&producer, &receipt(&ids[..2])).await;
    send_receipt(&producer, &receipt(&ids[..2])).await;
    send_receipt(&producer, &receipt(&[Uuid::now_v7()])).await;
    send_receipt(&producer, "not a receipt").await;
    send_receipt(&producer, r#"{"event_ids": ["nope"]}"#).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            let text = app.metrics().await;
            metric(&text, "accounts_api_outbox_receipts_total") == Some(5.0)
        })
        .await,
        "receipts not handled: {}",
        app.metrics().await
    );
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "accounts_api_outbox_receipts_malformed_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "accounts_api_outbox_confirmed_total"),
        Some(2.0)
    );
    assert_eq!(app.unconfirmed_count().await, ids.len() as i64 - 2);
    assert!(
        eventually(Duration::from_secs(5), || async {
            receipts_unanswered(&nsqd) == 0
        })
        .await,
        "receipts left in nsqd"
    );
    app.stop().await;
}
