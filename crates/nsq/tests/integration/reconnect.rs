use nsq::Consumer;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_producer_recover_by_themselves_when_nsqd_restarts() {
    let mut nsqd = nsqd();
    let address = nsqd.tcp_address();
    let producer = producer(&nsqd);
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer.publish(&topic(), b"before").await.unwrap();
    let before = next(&mut messages).await;
    before.fin().unwrap();
    eventually("the message is finished", || async {
        channel_clients(&nsqd)
            .first()
            .is_some_and(|c| c["finish_count"] == 1)
    })
    .await;

    nsqd = blocking(move || {
        nsqd.kill().unwrap();
        nsqd
    })
    .await;
    eventually("the consumer notices", || async {
        consumer.connection_count() == 0
    })
    .await;
    // A producer that tries while nsqd is down fails fast...
    let other_producer = crate::helpers::producer_for(&address);
    assert!(other_producer.publish(&topic(), b"lost").await.is_err());

    let _nsqd = blocking(move || {
        nsqd.start_again().unwrap();
        nsqd
    })
    .await;
    // ...and succeeds on its next call. The idle producer's first call after
    // the restart succeeds too: its dead connection is noticed before use.
    other_producer.publish(&topic(), b"retried").await.unwrap();
    producer.publish(&topic(), b"after").await.unwrap();
    let retried = next(&mut messages).await;
    assert_eq!(&retried.body[..], b"retried");
    retried.fin().unwrap();
    let after = next(&mut messages).await;
    assert_eq!(&after.body[..], b"after");
    after.fin().unwrap();
    assert_eq!(consumer.connection_count(), 1);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_started_before_nsqd_connects_once_it_is_up() {
    let mut nsqd = nsqd();
    let address = nsqd.tcp_address();
    nsqd = blocking(move || {
        nsqd.kill().unwrap();
        nsqd
    })
    .await;
    let (consumer, mut messages) =
        Consumer::start(direct_config(&[address]), telemetry::test_logger());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(consumer.connection_count(), 0);

    let nsqd = blocking(move || {
        nsqd.start_again().unwrap();
        nsqd
    })
    .await;
    producer(&nsqd).publish(&topic(), b"hello").await.unwrap();
    next(&mut messages).await.fin().unwrap();
    consumer.close().await;
}
