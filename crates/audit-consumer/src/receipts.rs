//! Delivery receipts: after each COMMIT, the event ids of the batch go to
//! `NSQ_RECEIPTS_TOPIC` as `{"event_ids": ["…", …]}`, so the accounts API's
//! relay can mark its outbox rows confirmed and stop republishing them.
//!
//! A receipt names every event of the batch that is now in `audit_logs`:
//! stored by this batch, or skipped as a duplicate (an earlier copy is
//! stored, which is what the relay needs to know).
//!
//! Receipts are a hint with a safety net, never on the batch's path: the
//! writer hands the ids over without waiting ([`Receipts::send`]) and one
//! background task publishes them. If nsqd is away, or the queue is full, a
//! receipt is dropped (and logged); the relay then republishes those events
//! after its interval, this consumer stores nothing new (`ON CONFLICT`), and
//! sends the receipt again. Receipts queued together are merged, so a slow
//! nsqd gets fewer, larger messages.

use std::time::Duration;

use slog::{debug, info, warn, Logger};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Event ids per receipt at most: about 390 KiB of JSON, under nsqd's 1 MiB
/// default message limit (and below the 20 000 the relay accepts).
pub const MAX_IDS_PER_RECEIPT: usize = 10_000;

/// Batches waiting to be receipted at most; beyond this, receipts are
/// dropped rather than held in memory while nsqd is away.
const QUEUE: usize = 256;

/// How long shutdown waits for queued receipts to go out.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's handle: cheap, non-blocking. Dropping it lets the publishing
/// task send what is queued and end.
#[derive(Debug)]
pub struct Receipts {
    queue: mpsc::Sender<Vec<Uuid>>,
    logger: Logger,
}

impl Receipts {
    /// Starts the publishing task (inside a tokio runtime).
    pub fn start(
        producer: nsq::Producer,
        topic: nsq::Topic,
        logger: Logger,
    ) -> (Receipts, JoinHandle<()>) {
        let (queue, received) = mpsc::channel(QUEUE);
        let task = tokio::spawn(publish(producer, topic, received, logger.clone()));
        (Receipts { queue, logger }, task)
    }

    /// Queues a receipt for these events, without waiting. Called after the
    /// COMMIT that stored them.
    pub fn send(&self, event_ids: Vec<Uuid>) {
        if event_ids.is_empty() {
            return;
        }
        let events = event_ids.len();
        if self.queue.try_send(event_ids).is_err() {
            // Republication covers it; see the module docs.
            debug!(self.logger, "delivery receipt dropped: the queue is full or closed";
                "events" => events);
        }
    }
}

/// The body of one receipt.
pub fn encode(event_ids: &[Uuid]) -> String {
    serde_json::json!({ "event_ids": event_ids }).to_string()
}

/// Publishes queued receipts until every [`Receipts`] handle is dropped and
/// the queue is empty. Logs when publishing starts and stops failing, not on
/// every failure.
async fn publish(
    producer: nsq::Producer,
    topic: nsq::Topic,
    mut received: mpsc::Receiver<Vec<Uuid>>,
    logger: Logger,
) {
    let mut failing = false;
    let mut dropped = 0usize;
    while let Some(mut event_ids) = received.recv().await {
        while event_ids.len() < MAX_IDS_PER_RECEIPT {
            match received.try_recv() {
                Ok(more) => event_ids.extend(more),
                Err(_) => break,
            }
        }
        for chunk in event_ids.chunks(MAX_IDS_PER_RECEIPT) {
            match producer.publish(&topic, encode(chunk).as_bytes()).await {
                Ok(()) => {
                    if failing {
                        info!(logger, "publishing delivery receipts again";
                            "events_without_receipt" => dropped);
                        failing = false;
                        dropped = 0;
                    }
                }
                Err(error) => {
                    if !failing {
                        warn!(logger, "cannot publish delivery receipts; dropping them \
                            (the relay republishes those events later)";
                            "error" => %error, "topic" => topic.as_str());
                        failing = true;
                    }
                    dropped += chunk.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_lists_the_event_ids() {
        let a = Uuid::now_v7();
        let body = encode(&[a, Uuid::nil()]);
        assert_eq!(
            body,
            format!(r#"{{"event_ids":["{a}","00000000-0000-0000-0000-000000000000"]}}"#)
        );
    }

    #[test]
    fn the_largest_receipt_fits_in_one_nsq_message() {
        let ids = vec![Uuid::now_v7(); MAX_IDS_PER_RECEIPT];
        assert!(encode(&ids).len() < 1024 * 1024);
    }
}
