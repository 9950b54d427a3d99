use std::future::Future;
use std::time::Duration;

use nsq::{Channel, ConsumerConfig, Discovery, Message, Producer, ProducerConfig, Topic};
use serde_json::Value;
use testkit::{Nsqd, NsqdOptions};
use tokio::sync::mpsc::Receiver;

/// Long enough for anything that should happen, short enough to fail fast.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn topic() -> Topic {
    Topic::new("audit.events").unwrap()
}

pub fn channel() -> Channel {
    Channel::new("audit-store").unwrap()
}

pub fn nsqd() -> Nsqd {
    Nsqd::start(NsqdOptions::default()).unwrap()
}

/// nsqd with a short server-side message timeout. nsqd notices timeouts
/// (and REQ delays) of a new channel only from its next queue-scan refresh,
/// every 5 s, so the tests that wait for one take about that long.
pub fn nsqd_with_msg_timeout(timeout: Duration) -> Nsqd {
    Nsqd::start(NsqdOptions {
        msg_timeout: Some(timeout),
        ..NsqdOptions::default()
    })
    .unwrap()
}

pub fn producer(nsqd: &Nsqd) -> Producer {
    producer_for(&nsqd.tcp_address())
}

pub fn producer_for(address: &str) -> Producer {
    Producer::new(
        address.to_owned(),
        ProducerConfig::default(),
        telemetry::test_logger(),
    )
}

/// A consumer config tuned for tests: quick reconnects, 1 s heartbeats (so
/// heartbeat handling is exercised in every test that runs for seconds).
pub fn direct_config(addresses: &[String]) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(
        topic(),
        channel(),
        Discovery::Direct {
            tcp_addresses: addresses.to_vec(),
        },
    );
    tune(&mut config);
    config
}

pub fn tune(config: &mut ConsumerConfig) {
    config.max_in_flight = 10;
    config.heartbeat_interval = Duration::from_secs(1);
    config.reconnect_backoff_min = Duration::from_millis(50);
    config.reconnect_backoff_max = Duration::from_millis(500);
    config.close_timeout = Duration::from_secs(1);
}

/// The next message, failing the test if none comes within [`PATIENCE`].
pub async fn next(messages: &mut Receiver<Message>) -> Message {
    tokio::time::timeout(PATIENCE, messages.recv())
        .await
        .expect("no message arrived in time")
        .expect("the consumer stopped")
}

/// Asserts that no message arrives within `window`.
pub async fn assert_quiet(messages: &mut Receiver<Message>, window: Duration) {
    if let Ok(Some(message)) = tokio::time::timeout(window, messages.recv()).await {
        panic!(
            "unexpected message {} (attempt {})",
            message.id, message.attempts
        );
    }
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs a blocking testkit call off the runtime's threads, so consumer tasks
/// keep running meanwhile.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The stats of our topic's channel on `nsqd`, or `None` while it does not exist.
pub fn channel_stats(nsqd: &Nsqd) -> Option<Value> {
    let stats = nsqd.stats().unwrap();
    // nsqd before 1.0 wrapped its answers in {"data": ...}.
    let stats = stats.get("data").cloned().unwrap_or(stats);
    let topic = stats["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic_name"] == topic().as_str())?
        .clone();
    topic["channels"]
        .as_array()?
        .iter()
        .find(|c| c["channel_name"] == channel().as_str())
        .cloned()
}

/// A counter of our channel (`in_flight_count`, `timeout_count`, ...), 0 while
/// the channel does not exist.
pub fn channel_count(nsqd: &Nsqd, field: &str) -> u64 {
    channel_stats(nsqd)
        .and_then(|c| c[field].as_u64())
        .unwrap_or(0)
}

/// The clients subscribed to our channel.
pub fn channel_clients(nsqd: &Nsqd) -> Vec<Value> {
    channel_stats(nsqd)
        .and_then(|c| c["clients"].as_array().cloned())
        .unwrap_or_default()
}

/// How many messages the topic has received, 0 while it does not exist.
pub fn topic_message_count(nsqd: &Nsqd) -> u64 {
    let stats = nsqd.stats().unwrap();
    let stats = stats.get("data").cloned().unwrap_or(stats);
    stats["topics"]
        .as_array()
        .and_then(|topics| {
            topics
                .iter()
                .find(|t| t["topic_name"] == topic().as_str())
                .and_then(|t| t["message_count"].as_u64())
        })
        .unwrap_or(0)
}
