use std::time::Duration;

use nsq::Consumer;
use testkit::{Nsqd, NsqdOptions};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_redelivers_with_one_more_attempt() {
    let nsqd = nsqd();
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer(&nsqd).publish(&topic(), b"again").await.unwrap();

    let first = next(&mut messages).await;
    assert_eq!(first.attempts, 1);
    first.req(Duration::ZERO).unwrap();
    let second = next(&mut messages).await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, 2);
    assert_eq!(&second.body[..], b"again");
    second.fin().unwrap();

    eventually("the message is finished", || async {
        channel_count(&nsqd, "in_flight_count") == 0
            && channel_clients(&nsqd)
                .first()
                .is_some_and(|c| c["finish_count"] == 1)
    })
    .await;
    assert_eq!(channel_count(&nsqd, "requeue_count"), 1);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_delay_holds_the_message_back() {
    let nsqd = nsqd();
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer(&nsqd).publish(&topic(), b"later").await.unwrap();

    let first = next(&mut messages).await;
    first.req(Duration::from_millis(1500)).unwrap();
    assert_quiet(&mut messages, Duration::from_millis(1000)).await;
    let second = next(&mut messages).await;
    assert_eq!(second.attempts, 2);
    second.fin().unwrap();
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dropped_without_an_answer_is_requeued_at_once() {
    let nsqd = nsqd();
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer(&nsqd).publish(&topic(), b"dropped").await.unwrap();

    let first = next(&mut messages).await;
    let id = first.id;
    drop(first);
    // nsqd's timeout is 60 s; this comes back long before.
    let second = next(&mut messages).await;
    assert_eq!(second.id, id);
    assert_eq!(second.attempts, 2);
    second.fin().unwrap();
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_message_comes_back_after_msg_timeout() {
    let nsqd = nsqd_with_msg_timeout(Duration::from_secs(1));
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer(&nsqd).publish(&topic(), b"slow").await.unwrap();

    // Held, not answered: nsqd gives up on it after a second.
    let first = next(&mut messages).await;
    let second = next(&mut messages).await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, 2);
    assert_eq!(channel_count(&nsqd, "timeout_count"), 1);
    second.fin().unwrap();
    drop(first);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identify_msg_timeout_applies_to_this_consumer() {
    let nsqd = nsqd();
    let mut config = direct_config(&[nsqd.tcp_address()]);
    config.msg_timeout = Some(Duration::from_secs(1));
    let (consumer, mut messages) = Consumer::start(config, telemetry::test_logger());
    producer(&nsqd).publish(&topic(), b"slow").await.unwrap();

    let first = next(&mut messages).await;
    let second = next(&mut messages).await;
    assert_eq!((second.id, second.attempts), (first.id, 2));
    second.fin().unwrap();
    drop(first);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_extends_the_timeout() {
    let nsqd = nsqd_with_msg_timeout(Duration::from_secs(1));
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer(&nsqd)
        .publish(&topic(), b"long job")
        .await
        .unwrap();

    let message = next(&mut messages).await;
    // Twice the timeout, touching every 400 ms: never redelivered.
    for _ in 0..5 {
        assert_quiet(&mut messages, Duration::from_millis(400)).await;
        message.touch().unwrap();
    }
    message.fin().unwrap();
    eventually("the message is finished", || async {
        channel_count(&nsqd, "in_flight_count") == 0
    })
    .await;
    assert_eq!(channel_count(&nsqd, "timeout_count"), 0);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_timed_out_message_does_not_break_the_connection() {
    let nsqd = nsqd_with_msg_timeout(Duration::from_secs(1));
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    let producer = producer(&nsqd);
    producer.publish(&topic(), b"late").await.unwrap();

    let late = next(&mut messages).await;
    let connected_at = channel_clients(&nsqd)[0]["connect_ts"].clone();
    // Paused, so the timed-out message is not redelivered under the same id
    // (which would make the late FIN succeed).
    consumer.pause();
    eventually("nsqd times the message out", || async {
        channel_count(&nsqd, "timeout_count") == 1
    })
    .await;
    late.fin().unwrap(); // nsqd answers E_FIN_FAILED
    consumer.resume();

    let again = next(&mut messages).await;
    assert_eq!((again.id, again.attempts), (late.id, 2));
    again.fin().unwrap();
    producer.publish(&topic(), b"next").await.unwrap();
    let next_message = next(&mut messages).await;
    assert_eq!(&next_message.body[..], b"next");
    next_message.fin().unwrap();

    let clients = channel_clients(&nsqd);
    assert_eq!(clients.len(), 1);
    assert_eq!(
        clients[0]["connect_ts"], connected_at,
        "the connection was replaced"
    );
    assert_eq!(consumer.connection_count(), 1);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_deliveries_and_resume_restores_them() {
    let nsqd = nsqd();
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    let producer = producer(&nsqd);
    producer.publish(&topic(), b"one").await.unwrap();
    let held = next(&mut messages).await;

    consumer.pause();
    eventually("nsqd sees RDY 0", || async {
        channel_clients(&nsqd)
            .first()
            .is_some_and(|c| c["ready_count"] == 0)
    })
    .await;
    producer.publish(&topic(), b"two").await.unwrap();
    assert_quiet(&mut messages, Duration::from_millis(500)).await;
    // Held messages can still be answered while paused.
    held.fin().unwrap();

    consumer.resume();
    assert_eq!(&next(&mut messages).await.body[..], b"two");
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_consumer_answers_heartbeats_and_stays_connected() {
    let nsqd = nsqd();
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    eventually("subscribed", || async { consumer.connection_count() == 1 }).await;
    let connected_at = channel_clients(&nsqd)[0]["connect_ts"].clone();

    // Heartbeats every second; nsqd drops a client after two unanswered.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let clients = channel_clients(&nsqd);
    assert_eq!(clients.len(), 1);
    assert_eq!(
        clients[0]["connect_ts"], connected_at,
        "the connection was replaced"
    );
    producer(&nsqd)
        .publish(&topic(), b"still here")
        .await
        .unwrap();
    next(&mut messages).await.fin().unwrap();
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdy_is_spread_over_two_nsqds_within_max_in_flight() {
    let (first, second) = (nsqd(), nsqd());
    let mut config = direct_config(&[first.tcp_address(), second.tcp_address()]);
    config.max_in_flight = 4;
    let (consumer, mut messages) = Consumer::start(config, telemetry::test_logger());
    eventually("both nsqds have RDY 2", || async {
        consumer.connection_count() == 2
            && [&first, &second].iter().all(|nsqd| {
                channel_clients(nsqd)
                    .first()
                    .is_some_and(|c| c["ready_count"] == 2)
            })
    })
    .await;
    for nsqd in [&first, &second] {
        let producer = producer(nsqd);
        let bodies: Vec<&[u8]> = vec![b"m"; 10];
        producer.multi_publish(&topic(), &bodies).await.unwrap();
    }

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next(&mut messages).await);
    }
    assert_quiet(&mut messages, Duration::from_millis(500)).await;
    for nsqd in [&first, &second] {
        assert_eq!(channel_count(nsqd, "in_flight_count"), 2);
        assert_eq!(channel_clients(nsqd)[0]["ready_count"], 2);
    }

    // Finishing makes room on the connection the message came from; the
    // oldest is finished whenever 4 are held or nothing more arrives (a
    // connection with both its messages held cannot send more).
    let mut finished = 0;
    while finished < 20 {
        if held.len() < 4 {
            if let Ok(received) =
                tokio::time::timeout(Duration::from_millis(200), messages.recv()).await
            {
                held.push(received.expect("the consumer stopped"));
                continue;
            }
        }
        assert!(!held.is_empty(), "stalled after {finished} messages");
        held.remove(0).fin().unwrap();
        finished += 1;
    }
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_the_answers_given_before_it() {
    let nsqd = nsqd();
    let (consumer, mut messages) = Consumer::start(
        direct_config(&[nsqd.tcp_address()]),
        telemetry::test_logger(),
    );
    producer(&nsqd).publish(&topic(), b"last").await.unwrap();
    let message = next(&mut messages).await;
    message.fin().unwrap();
    consumer.close().await;

    assert_eq!(channel_count(&nsqd, "in_flight_count"), 0);
    assert_eq!(channel_count(&nsqd, "depth"), 0);
    // After close the way back is gone.
    assert!(message.fin().is_err());
}

/// nsqd buffers what it writes to a consumer and flushes when the buffer
/// fills, when it sends a heartbeat, or when its `--output-buffer-timeout`
/// ticks; a lone message waits for the first of those. Here both tick every
/// 30 s unless the consumer asks for less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_message_arrives_within_the_output_buffer_timeout_asked_for() {
    let nsqd = Nsqd::start(NsqdOptions {
        extra_args: vec!["--output-buffer-timeout=30s".to_owned()],
        ..NsqdOptions::default()
    })
    .unwrap();
    let mut config = direct_config(&[nsqd.tcp_address()]);
    config.heartbeat_interval = Duration::from_secs(30);
    config.output_buffer_timeout = Some(Duration::from_millis(25));
    let (consumer, mut messages) = Consumer::start(config, telemetry::test_logger());
    eventually("the consumer is subscribed", || async {
        channel_clients(&nsqd).len() == 1
    })
    .await;

    producer(&nsqd).publish(&topic(), b"prompt").await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(2), messages.recv())
        .await
        .expect("nsqd held the message for its own 30 s timeout")
        .expect("the consumer stopped");
    assert_eq!(&message.body[..], b"prompt");
    message.fin().unwrap();
    consumer.close().await;
}
