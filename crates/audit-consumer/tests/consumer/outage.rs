use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{event, spawn_app, spawn_app_with, Options};

async fn readiness(app: &crate::helpers::TestApp) -> (u16, serde_json::Value) {
    let response = app.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_published_while_the_database_is_down_are_all_stored_once_it_is_back() {
    let mut app = spawn_app_with(Options::default().var("BATCH_SIZE", 20)).await;
    let before: Vec<_> = (0..10).map(|_| event("alice")).collect();
    for event in &before {
        app.publish(event).await;
    }
    app.wait_for_audit_logs(10).await;

    tokio::task::block_in_place(|| app.postgres.stop()).unwrap();
    let during: Vec<_> = (0..30).map(|_| event("bob")).collect();
    for event in &during {
        app.publish(event).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        app.is_running(),
        "the consumer gave up while the database was down"
    );
    tokio::task::block_in_place(|| app.postgres.start_again()).unwrap();

    app.wait_for_audit_logs(40).await;
    let stored: Vec<Uuid> = sqlx::query_scalar!("SELECT event_id FROM audit_logs")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let expected: HashSet<Uuid> = before.iter().chain(&during).map(|e| e.event_id).collect();
    assert_eq!(stored.len(), 40);
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(
        app.dead_letter_count().await,
        0,
        "an outage is no reason to dead-letter"
    );
    app.wait_until_channel_is_drained().await;
    assert!(app.is_running());
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
