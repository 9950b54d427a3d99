use std::time::Duration;

use nsq::{Consumer, ConsumerConfig, Discovery};
use testkit::{Nsqd, NsqdOptions, Nsqlookupd};

use crate::helpers::*;

fn registered_nsqd(lookupd: &Nsqlookupd) -> Nsqd {
    Nsqd::start(NsqdOptions {
        lookupd_tcp_addresses: vec![lookupd.tcp_address()],
        ..NsqdOptions::default()
    })
    .unwrap()
}

fn lookupd_config(lookupd: &Nsqlookupd) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(
        topic(),
        channel(),
        Discovery::Lookupd {
            http_addresses: vec![lookupd.http_address()],
            poll_interval: Duration::from_millis(100),
        },
    );
    tune(&mut config);
    config.lookupd_grace = Duration::from_millis(300);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_finds_a_topic_through_lookupd_once_it_exists() {
    let lookupd = Nsqlookupd::start().unwrap();
    let nsqd = registered_nsqd(&lookupd);
    let (consumer, mut messages) =
        Consumer::start(lookupd_config(&lookupd), telemetry::test_logger());

    // No topic yet: lookupd answers TOPIC_NOT_FOUND, nothing to connect to.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(consumer.connection_count(), 0);

    // Publishing creates the topic, which nsqd registers with lookupd.
    producer(&nsqd).publish(&topic(), b"found").await.unwrap();
    let message = next(&mut messages).await;
    assert_eq!(&message.body[..], b"found");
    message.fin().unwrap();
    assert_eq!(consumer.connection_count(), 1);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_connects_to_every_nsqd_lookupd_reports() {
    let lookupd = Nsqlookupd::start().unwrap();
    let (first, second) = (registered_nsqd(&lookupd), registered_nsqd(&lookupd));
    for nsqd in [&first, &second] {
        nsqd.create_topic(topic().as_str()).unwrap();
    }
    let (consumer, mut messages) =
        Consumer::start(lookupd_config(&lookupd), telemetry::test_logger());
    eventually("connected to both", || async {
        consumer.connection_count() == 2
    })
    .await;

    for (nsqd, body) in [(&first, b"first"), (&second, b"other")] {
        producer(nsqd).publish(&topic(), body).await.unwrap();
    }
    let mut bodies = vec![
        next(&mut messages).await.body.to_vec(),
        next(&mut messages).await.body.to_vec(),
    ];
    bodies.sort();
    assert_eq!(bodies, vec![b"first".to_vec(), b"other".to_vec()]);
    drop(messages);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsqd_that_leaves_lookupd_is_disconnected() {
    let lookupd = Nsqlookupd::start().unwrap();
    let (staying, leaving) = (registered_nsqd(&lookupd), registered_nsqd(&lookupd));
    for nsqd in [&staying, &leaving] {
        nsqd.create_topic(topic().as_str()).unwrap();
    }
    let (consumer, _messages) = Consumer::start(lookupd_config(&lookupd), telemetry::test_logger());
    eventually("connected to both", || async {
        consumer.connection_count() == 2
    })
    .await;

    // nsqd keeps running but disconnects from lookupd, which then stops
    // reporting it: the consumer closes its healthy connection to it.
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}/config/nsqlookupd_tcp_addresses",
            leaving.http_address()
        ))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    eventually("the consumer left that nsqd", || async {
        channel_clients(&leaving).is_empty()
    })
    .await;
    assert_eq!(consumer.connection_count(), 1);
    assert_eq!(channel_clients(&staying).len(), 1);
    consumer.close().await;
}
