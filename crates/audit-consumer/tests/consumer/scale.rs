//! Horizontal scale: consumers sharing one channel through nsqlookupd.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::{
    assert_stored_exactly_once, channel_stats, eventually, start_processes, wait_for_rows,
    wait_until_lookupd_knows_the_topic,
};
use crate::process::{publish_in_background, ConsumerProcess};

#[tokio::test(flavor = "multi_thread")]
async fn killing_one_of_two_consumers_under_load_loses_nothing_and_stores_nothing_twice() {
    let (postgres, nsqd, lookupd) = start_processes(true).await;
    let lookupd = lookupd.unwrap();
    let database_url = postgres.create_database("audit").unwrap();
    wait_until_lookupd_knows_the_topic(&reqwest::Client::new(), &lookupd.http_address()).await;
    let vars = [
        ("DATABASE_URL", database_url.clone()),
        ("NSQLOOKUPD_HTTP_ADDRESSES", lookupd.http_address()),
        // nsqd gives the messages a killed consumer held to the other one
        // once this has passed.
        ("NSQ_MSG_TIMEOUT_MS", "3000".to_owned()),
        ("NSQ_MAX_IN_FLIGHT", "200".to_owned()),
        ("BATCH_SIZE", "50".to_owned()),
        // Batches wait a little to fill, so each consumer always holds some.
        ("BATCH_MAX_WAIT_MS", "200".to_owned()),
    ];
    let mut doomed = ConsumerProcess::start(&vars);
    let mut survivor = ConsumerProcess::start(&vars);
    doomed.wait_until_ready().await;
    survivor.wait_until_ready().await;
    eventually(
        "both consumers on the channel",
        Duration::from_secs(10),
        || async { channel_stats(&nsqd).clients == 2 },
    )
    .await;

    let producer = nsq::Producer::new(
        nsqd.tcp_address(),
        nsq::ProducerConfig::default(),
        telemetry::test_logger(),
    );
    // 4,000 events over about 4 s.
    let load = publish_in_background(producer, 4000, 50, Duration::from_millis(50));
    // Both take part before one dies.
    eventually(
        "both consumers to store events",
        Duration::from_secs(10),
        || async {
            doomed
                .metrics()
                .await
                .get("audit_consumer_events_stored_total")
                > 0.0
                && survivor
                    .metrics()
                    .await
                    .get("audit_consumer_events_stored_total")
                    > 0.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.kill();

    let published = load.await.unwrap();
    let pool = PgPool::connect(&database_url).await.unwrap();
    wait_for_rows(&pool, published.len(), Duration::from_secs(30)).await;
    assert_stored_exactly_once(&pool, &published).await;
    eventually(
        "the channel to be drained",
        Duration::from_secs(15),
        || async {
            let stats = channel_stats(&nsqd);
            stats.depth == 0 && stats.in_flight == 0 && stats.deferred == 0
        },
    )
    .await;
    let stats = channel_stats(&nsqd);
    assert!(
        stats.timed_out > 0,
        "the killed consumer held no message, so nothing was handed over: {stats:?}"
    );
    assert_eq!(stats.clients, 1);
    assert!(survivor.is_running(), "{}", survivor.output());
    let dead_letters: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_dead_letters"#)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dead_letters, 0);
}
