use std::time::Duration;

use audit_consumer::batch::SHUTDOWN_GRACE;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::helpers::{
    assert_stored_exactly_once, bodies, channel_stats, eventually, spawn_app_with, start_processes,
    stored_event_ids, wait_for_rows, Options,
};
use crate::process::{publish_in_background, ConsumerProcess};

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

/// Direct to one nsqd, as a child process, with `vars` on top.
fn consumer_process(
    database_url: &str,
    nsqd: &testkit::Nsqd,
    vars: &[(&'static str, &str)],
) -> ConsumerProcess {
    let mut all = vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("NSQD_TCP_ADDRESSES", nsqd.tcp_address()),
    ];
    all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
    ConsumerProcess::start(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_exits_zero_promptly_and_loses_nothing() {
    let (postgres, nsqd, _) = start_processes(false).await;
    let database_url = postgres.create_database("audit").unwrap();
    let vars = [("BATCH_SIZE", "100"), ("NSQ_MAX_IN_FLIGHT", "300")];
    let mut first = consumer_process(&database_url, &nsqd, &vars);
    first.wait_until_ready().await;

    let producer = nsq::Producer::new(
        nsqd.tcp_address(),
        nsq::ProducerConfig::default(),
        telemetry::test_logger(),
    );
    // 3,000 events over about 3 s.
    let load = publish_in_background(producer, 3000, 50, Duration::from_millis(50));
    let pool = PgPool::connect(&database_url).await.unwrap();
    eventually("the first rows", Duration::from_secs(10), || async {
        stored_event_ids(&pool).await.len() >= 200
    })
    .await;

    let signalled = Instant::now();
    first.terminate();
    let status = first
        .wait_for_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", first.output()));
    let took = signalled.elapsed();
    assert!(status.success(), "{status}:\n{}", first.output());
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    // Every message it received was answered: stored and FINed, or
    // requeued without delay. None is left to time out.
    let stats = channel_stats(&nsqd);
    assert_eq!((stats.in_flight, stats.deferred), (0, 0), "{stats:?}");
    assert_eq!(stats.timed_out, 0, "{stats:?}");
    let stored_by_first = stored_event_ids(&pool).await.len();
    assert!(stored_by_first < 3000, "SIGTERM came after the load");

    // What the first did not store, a second one does.
    let published = load.await.unwrap();
    let mut second = consumer_process(&database_url, &nsqd, &vars);
    wait_for_rows(&pool, published.len(), Duration::from_secs(20)).await;
    assert_stored_exactly_once(&pool, &published).await;
    second.terminate();
    let status = second.wait_for_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{}", second.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_database_hangs_requeues_the_batch_and_exits_within_the_grace() {
    let (postgres, nsqd, _) = start_processes(false).await;
    let database_url = postgres.create_database("audit").unwrap();
    let mut consumer = consumer_process(&database_url, &nsqd, &[]);
    consumer.wait_until_ready().await;

    // Every INSERT into audit_logs now waits for this transaction.
    let pool = PgPool::connect(&database_url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query!("LOCK TABLE audit_logs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let producer = nsq::Producer::new(
        nsqd.tcp_address(),
        nsq::ProducerConfig::default(),
        telemetry::test_logger(),
    );
    let topic = nsq::Topic::new(crate::helpers::TOPIC).unwrap();
    let bodies = bodies("alice", 20);
    let slices: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    producer.multi_publish(&topic, &slices).await.unwrap();
    eventually(
        "the batch to be in hand",
        Duration::from_secs(10),
        || async { channel_stats(&nsqd).in_flight == 20 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    consumer.terminate();
    let status = consumer
        .wait_for_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", consumer.output()));
    let took = signalled.elapsed();
    assert!(status.success(), "{status}:\n{}", consumer.output());
    assert!(
        took >= SHUTDOWN_GRACE && took < SHUTDOWN_GRACE + Duration::from_secs(4),
        "took {took:?} to stop"
    );
    lock.rollback().await.unwrap();
    // Nothing stored, nothing lost: all 20 are back in the queue.
    let stats = channel_stats(&nsqd);
    assert_eq!(
        (stats.depth, stats.in_flight, stats.timed_out),
        (20, 0, 0),
        "{stats:?}"
    );
    assert!(stored_event_ids(&pool).await.is_empty());
}
