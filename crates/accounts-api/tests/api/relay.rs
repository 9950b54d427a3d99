//! The relay against a real nsqd: rows published and marked, rows kept while
//! nsqd is away, no row published twice by racing relays, oversized rows
//! parked, unconfirmed rows published again.

use std::time::Duration;

use accounts_api::relay::{publish_once, Published, Settings};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{eventually, relay_to, spawn_app, spawn_app_with, TestApp};

pub const TOPIC: &str = "audit.events";

pub async fn start_nsqd() -> testkit::Nsqd {
    tokio::task::spawn_blocking(|| testkit::Nsqd::start(testkit::NsqdOptions::default()))
        .await
        .unwrap()
        .expect("starting nsqd")
}

/// How many messages nsqd has received on `topic` since it started.
pub fn message_count(nsqd: &testkit::Nsqd, topic: &str) -> u64 {
    let stats = nsqd.stats().unwrap();
    stats["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["topic_name"] == topic)
        .and_then(|t| t["message_count"].as_u64())
        .unwrap_or(0)
}

pub fn producer(address: String) -> nsq::Producer {
    nsq::Producer::new(
        address,
        nsq::ProducerConfig::default(),
        telemetry::test_logger(),
    )
}

pub fn topic() -> nsq::Topic {
    nsq::Topic::new(TOPIC).unwrap()
}

/// Relay settings for calling `publish_once` directly.
pub fn settings(batch_size: u32) -> Settings {
    Settings {
        topic: topic(),
        batch_size,
        poll_interval: Duration::from_millis(50),
        republish_after: Some(Duration::from_secs(60)),
        tracing: telemetry::trace::Tracing::disabled(),
    }
}

/// Writes `n` small pending rows straight into the outbox.
pub async fn insert_rows(app: &TestApp, n: i32) {
    sqlx::query!(
        "INSERT INTO outbox (event_id, payload)
         SELECT gen_random_uuid(), '{\"n\":' || i || '}' FROM generate_series(1, $1::int) AS i",
        n
    )
    .execute(&app.pool)
    .await
    .unwrap();
}

pub async fn send_mixed_requests(app: &TestApp) -> usize {
    let id = app.open_account("Acme").await;
    app.act(
        id,
        json!({"action": "rename", "params": {"name": "Acme 2"}}),
    )
    .await;
    app.act(id, json!({"action": "reactivate"})).await; // 409, audited
    app.act("nope", json!({"action": "close"})).await; // 400, audited
    4
}

/// Reads `n` messages from `topic` through a fresh channel.
async fn consume(nsqd: &testkit::Nsqd, channel: &str, n: usize) -> Vec<String> {
    let config = nsq::ConsumerConfig::new(
        topic(),
        nsq::Channel::new(channel).unwrap(),
        nsq::Discovery::Direct {
            tcp_addresses: vec![nsqd.tcp_address()],
        },
    );
    let (consumer, mut messages) = nsq::Consumer::start(config, telemetry::test_logger());
    let mut bodies = Vec::new();
    while bodies.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .expect("a message in time")
            .expect("the consumer is running");
        message.fin().unwrap();
        bodies.push(String::from_utf8(message.body.to_vec()).unwrap());
    }
    consumer.close().await;
    bodies
}

#[tokio::test]
async fn the_relay_publishes_committed_events_and_marks_them() {
    let nsqd = start_nsqd().await;
    // The channel exists before anything is published, so it gets every message.
    nsqd.create_topic(TOPIC).unwrap();
    nsqd.create_channel(TOPIC, "check").unwrap();
    let address = nsqd.tcp_address();
    let app = spawn_app_with(|config| relay_to(config, address)).await;
    let sent = send_mixed_requests(&app).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            app.pending_count().await == 0
        })
        .await,
        "rows still pending"
    );
    assert_eq!(app.outbox_count().await, sent as i64);
    assert_eq!(message_count(&nsqd, TOPIC), sent as u64);
    let attempts = sqlx::query_scalar!("SELECT publish_attempts FROM outbox")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");

    // What nsqd delivers is exactly what the outbox holds, in order.
    let mut received = consume(&nsqd, "check", sent).await;
    let mut stored = sqlx::query_scalar!("SELECT payload FROM outbox ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    received.sort();
    stored.sort();
    assert_eq!(received, stored);
    app.stop().await;
}

#[tokio::test]
async fn rows_wait_while_nsqd_is_down_and_are_published_when_it_returns() {
    let mut nsqd = start_nsqd().await;
    let address = nsqd.tcp_address();
    let nsqd = tokio::task::spawn_blocking(move || {
        nsqd.stop().unwrap();
        nsqd
    })
    .await
    .unwrap();
    let app = spawn_app_with(|config| relay_to(config, address)).await;
    let sent = send_mixed_requests(&app).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.pending_count().await, sent as i64);

    let nsqd = tokio::task::spawn_blocking(move || {
        let mut nsqd = nsqd;
        nsqd.start_again().unwrap();
        nsqd
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.pending_count().await == 0
        })
        .await,
        "rows were not published after nsqd came back"
    );
    assert_eq!(message_count(&nsqd, TOPIC), sent as u64);
    app.stop().await;
}

#[tokio::test]
async fn publish_once_with_nsqd_unreachable_leaves_rows_pending() {
    let app = spawn_app().await;
    insert_rows(&app, 5).await;
    let unreachable = producer(format!("127.0.0.1:{}", testkit::free_port()));
    let result = publish_once(
        &app.pool,
        &unreachable,
        &settings(100),
        &telemetry::test_logger(),
    )
    .await;
    assert!(result.is_err());
    assert_eq!(app.pending_count().await, 5);
    let attempts: i64 = sqlx::query_scalar!(r#"SELECT sum(publish_attempts) AS "n!" FROM outbox"#)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0);
}

#[tokio::test]
async fn racing_publish_once_calls_never_publish_a_row_twice() {
    let nsqd = start_nsqd().await;
    let app = spawn_app().await;
    const ROWS: i32 = 600;
    insert_rows(&app, ROWS).await;

    let relay = |producer: nsq::Producer| {
        let pool = app.pool.clone();
        async move {
            let mut total = 0;
            loop {
                let published =
                    publish_once(&pool, &producer, &settings(25), &telemetry::test_logger())
                        .await
                        .unwrap();
                if published.claimed == 0 {
                    return total;
                }
                total += published.published;
            }
        }
    };
    let (a, b, c) = tokio::join!(
        relay(producer(nsqd.tcp_address())),
        relay(producer(nsqd.tcp_address())),
        relay(producer(nsqd.tcp_address())),
    );
    assert_eq!(a + b + c, ROWS as usize, "{a} + {b} + {c}");
    assert_eq!(message_count(&nsqd, TOPIC), ROWS as u64);
    assert_eq!(app.pending_count().await, 0);
    let twice: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox WHERE publish_attempts <> 1"#)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(twice, 0);
}

#[tokio::test]
async fn publish_once_skips_rows_another_relay_has_claimed() {
    let nsqd = start_nsqd().await;
    let app = spawn_app().await;
    insert_rows(&app, 30).await;
    let producer = producer(nsqd.tcp_address());

    // Another relay's open transaction holds the 10 oldest rows.
    let mut other = app.pool.begin().await.unwrap();
    let held = accounts_api::outbox::claim(&mut other, 10).await.unwrap();
    assert_eq!(held.len(), 10);

    let published = publish_once(
        &app.pool,
        &producer,
        &settings(100),
        &telemetry::test_logger(),
    )
    .await
    .unwrap();
    assert_eq!(
        published,
        Published {
            claimed: 20,
            published: 20,
            republished: 0,
            parked: 0
        }
    );
    other.rollback().await.unwrap();

    let published = publish_once(
        &app.pool,
        &producer,
        &settings(100),
        &telemetry::test_logger(),
    )
    .await
    .unwrap();
    assert_eq!(published.published, 10);
    assert_eq!(message_count(&nsqd, TOPIC), 30);
}

#[tokio::test]
async fn a_row_too_large_for_nsqd_is_parked_and_the_rest_published() {
    let nsqd = start_nsqd().await;
    let app = spawn_app().await;
    insert_rows(&app, 3).await;
    let huge = "x".repeat(2 * 1024 * 1024);
    sqlx::query!(
        "INSERT INTO outbox (event_id, payload) VALUES ($1, $2)",
        Uuid::now_v7(),
        huge
    )
    .execute(&app.pool)
    .await
    .unwrap();
    insert_rows(&app, 3).await;
    let producer = producer(nsqd.tcp_address());

    let published = publish_once(
        &app.pool,
        &producer,
        &settings(100),
        &telemetry::test_logger(),
    )
    .await
    .unwrap();
    assert_eq!(
        published,
        Published {
            claimed: 7,
            published: 6,
            republished: 0,
            parked: 1
        }
    );
    assert_eq!(message_count(&nsqd, TOPIC), 6);
    let parked = sqlx::query!(
        "SELECT length(payload) AS len, last_error, publish_attempts FROM outbox WHERE parked_at IS NOT NULL"
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].len, Some(huge.len() as i32));
    assert!(parked[0].last_error.as_deref().unwrap().contains("bytes"));
    assert_eq!(parked[0].publish_attempts, 1);

    // It is not claimed again.
    let again = publish_once(
        &app.pool,
        &producer,
        &settings(100),
        &telemetry::test_logger(),
    )
    .await
    .unwrap();
    assert_eq!(again, Published::default());
}

#[tokio::test]
async fn shutdown_is_prompt_while_the_relay_is_backing_off() {
    let app =
        spawn_app_with(|config| relay_to(config, format!("127.0.0.1:{}", testkit::free_port())))
            .await;
    app.open_account("Acme").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the service did not stop");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_published_row_is_published_again_when_no_receipt_comes_and_not_after_one() {
    let nsqd = start_nsqd().await;
    let app = spawn_app().await;
    insert_rows(&app, 5).await;
    let producer = producer(nsqd.tcp_address());
    let logger = telemetry::test_logger();
    let settings = Settings {
        republish_after: Some(Duration::from_secs(1)),
        ..settings(100)
    };

    let first = publish_once(&app.pool, &producer, &settings, &logger)
        .await
        .unwrap();
    assert_eq!((first.published, first.republished), (5, 0));
    // Not due yet: nothing to claim.
    let early = publish_once(&app.pool, &producer, &settings, &logger)
        .await
        .unwrap();
    assert_eq!(early, Published::default());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = publish_once(&app.pool, &producer, &settings, &logger)
        .await
        .unwrap();
    assert_eq!((second.published, second.republished), (0, 5));
    assert_eq!(message_count(&nsqd, TOPIC), 10);

    // The wait doubles with each publication.
    let waits = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM due_at - published_at)::float8 AS "wait!"
           FROM outbox WHERE publish_attempts = 2"#
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(waits.len(), 5);
    assert!(waits.iter().all(|w| (*w - 2.0).abs() < 0.01), "{waits:?}");

    // A receipt for three of them: only the other two come back.
    let ids = sqlx::query_scalar!("SELECT event_id FROM outbox ORDER BY id LIMIT 3")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        accounts_api::outbox::confirm(&app.pool, &ids)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        accounts_api::outbox::confirm(&app.pool, &ids)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = publish_once(&app.pool, &producer, &settings, &logger)
        .await
        .unwrap();
    assert_eq!((third.claimed, third.republished), (2, 2));
    assert_eq!(message_count(&nsqd, TOPIC), 12);
}

#[tokio::test]
async fn with_republication_off_nsqds_ok_confirms_a_row() {
    let nsqd = start_nsqd().await;
    let app = spawn_app().await;
    insert_rows(&app, 4).await;
    let producer = producer(nsqd.tcp_address());
    let settings = Settings {
        republish_after: None,
        ..settings(100)
    };
    let published = publish_once(&app.pool, &producer, &settings, &telemetry::test_logger())
        .await
        .unwrap();
    assert_eq!(published.published, 4);
    assert_eq!(app.unconfirmed_count().await, 0);
    let due: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox WHERE due_at IS NOT NULL"#)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(due, 0);
}

#[tokio::test]
async fn a_claim_never_takes_more_rows_than_its_batch_while_others_claim_too() {
    let app = spawn_app().await;
    insert_rows(&app, 100).await;
    // Ten open transactions, each on its own connection, claim in turn;
    // each holds at most its batch, and no row is held twice.
    let mut connections = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let mut connection = sqlx::PgConnection::connect_with(&app.config.database.connect_options)
            .await
            .unwrap();
        sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
        let claimed = accounts_api::outbox::claim(&mut connection, 7)
            .await
            .unwrap();
        assert!(claimed.len() <= 7);
        for row in &claimed {
            assert!(seen.insert(row.id), "row {} claimed twice", row.id);
        }
        connections.push(connection);
    }
    assert_eq!(seen.len(), 70);
    let locked: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM outbox WHERE id IN
           (SELECT id FROM outbox FOR UPDATE SKIP LOCKED)"#
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(locked, 30, "exactly the claimed rows are locked");
}
