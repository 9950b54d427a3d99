use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use nsq::{Consumer, Error, Producer, ProducerConfig};
use testkit::{Nsqd, NsqdOptions};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_is_consumed_and_finished() {
    let nsqd = nsqd();
    let producer = producer(&nsqd);
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );

    producer.publish(&topic(), b"hello").await.unwrap();
    let message = next(&mut messages).await;
    assert_eq!(&message.body[..], b"hello");
    assert_eq!(message.attempts, 1);
    assert!(message.timestamp_ns > 0);
    message.fin().unwrap();

    eventually("nsqd counts the message finished", || async {
        let clients = channel_clients(&nsqd);
        clients.len() == 1 && clients[0]["finish_count"] == 1
    })
    .await;
    assert_eq!(channel_count(&nsqd, "in_flight_count"), 0);
    assert_eq!(channel_count(&nsqd, "depth"), 0);
    assert_eq!(channel_count(&nsqd, "requeue_count"), 0);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_publish_splits_a_batch_over_nsqds_body_limit() {
    // 100 messages of 100 bytes need about 10 KB; nsqd takes 1 KB per MPUB,
    // so this only succeeds if the batch is split.
    let nsqd = Nsqd::start(NsqdOptions {
        extra_args: vec!["--max-body-size=1024".into(), "--max-msg-size=512".into()],
        ..NsqdOptions::default()
    })
    .unwrap();
    let config = ProducerConfig {
        max_message_bytes: 512,
        max_body_bytes: 1024,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(nsqd.tcp_address(), config, telemetry::test_logger());
    let bodies: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("{i:0>100}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();

    producer.multi_publish(&topic(), &refs).await.unwrap();
    assert_eq!(topic_message_count(&nsqd), 100);

    let mut config = direct_config(&[nsqd.tcp_address()]);
    config.max_in_flight = 100;
    let (consumer, mut messages) = Consumer::start(config, telemetry::test_logger());
    let mut received = BTreeSet::new();
    for _ in 0..100 {
        let message = next(&mut messages).await;
        received.insert(message.body.to_vec());
        message.fin().unwrap();
    }
    assert_eq!(received, bodies.into_iter().collect::<BTreeSet<_>>());
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_fails_the_batch_before_anything_is_sent() {
    let nsqd = nsqd();
    let producer = producer(&nsqd);
    let small = vec![b'a'; 10];
    let huge = vec![b'b'; 1024 * 1024 + 1];

    let err = producer
        .multi_publish(&topic(), &[&small, &huge, &small])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                index: 1,
                size: 1_048_577,
                max: 1_048_576
            }
        ),
        "{err}"
    );
    let err = producer
        .multi_publish(&topic(), &[&small, b""])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EmptyMessage { index: 1 }), "{err}");
    assert_eq!(topic_message_count(&nsqd), 0);

    producer.multi_publish(&topic(), &[]).await.unwrap();
    producer.multi_publish(&topic(), &[&small]).await.unwrap();
    assert_eq!(topic_message_count(&nsqd), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsqd_error_fails_the_call_and_the_next_call_reconnects() {
    // The producer believes in nsqd's default 1 MiB; this nsqd takes 100 bytes.
    let nsqd = Nsqd::start(NsqdOptions {
        extra_args: vec!["--max-msg-size=100".into()],
        ..NsqdOptions::default()
    })
    .unwrap();
    let producer = producer(&nsqd);

    let err = producer.publish(&topic(), &[b'x'; 101]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Nsqd { code, .. } if code == "E_BAD_MESSAGE"),
        "{err}"
    );
    producer.publish(&topic(), b"fits").await.unwrap();
    assert_eq!(topic_message_count(&nsqd), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nsqd_is_a_timeout_not_a_hang() {
    let nsqd = nsqd();
    let config = ProducerConfig {
        response_timeout: Duration::from_millis(300),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(nsqd.tcp_address(), config, telemetry::test_logger());
    producer.publish(&topic(), b"before").await.unwrap();

    let pid = nsqd.pid().unwrap().to_string();
    signal("STOP", &pid);
    let started = Instant::now();
    let result = producer.publish(&topic(), b"while hung").await;
    let waited = started.elapsed();
    signal("CONT", &pid);

    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // The half-answered connection was dropped; a fresh one works.
    producer.publish(&topic(), b"after").await.unwrap();
}

fn signal(name: &str, pid: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}
