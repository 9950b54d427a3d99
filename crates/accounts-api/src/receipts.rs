//! Delivery receipts: the consumer's word that events are stored, which
//! confirms their outbox rows and stops their republication.
//!
//! After each COMMIT the audit consumer publishes one message to
//! `NSQ_RECEIPTS_TOPIC`, `{"event_ids": ["…", …]}`, naming every event of the
//! batch that is now in `audit_logs` (stored by it, or found there already).
//! Every relay subscribes to the topic on one shared channel
//! (`RELAY_RECEIPTS_CHANNEL`), so each receipt is handled by one of them.
//!
//! Receipts are at least once and idempotent: confirming a confirmed (or
//! deleted, or unknown) row changes nothing. A lost receipt only delays
//! confirmation until the row is republished, stored again as a duplicate,
//! and receipted again. So:
//! - a receipt is FINed only after the COMMIT that confirmed its rows; on a
//!   database error it is requeued;
//! - a malformed receipt is logged and FINed: it carries nothing worth
//!   keeping, and the rows it meant are republished and receipted again.
//!
//! The relay subscribes even when republication is off
//! (`RELAY_REPUBLISH_AFTER_SECS=0`), so receipts never pile up in nsqd.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use slog::Logger;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ReceiptsConfig;
use crate::metrics::Metrics;
use crate::outbox;

/// Receipts handled in one database statement at most. Each names up to a
/// consumer batch of events (500 by default), so this bounds one UPDATE to
/// a few tens of thousands of rows.
const RECEIPTS_PER_STATEMENT: usize = 50;

/// Most event ids accepted in one receipt: more than any consumer batch
/// (`BATCH_SIZE` is at most 10 000), and well under nsqd's message limit.
pub const MAX_EVENT_IDS: usize = 20_000;

/// Bound on one confirmation statement; a slower database is treated as
/// unavailable and the receipts are requeued.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Requeue delays while the database fails: from the first, doubling, to
/// the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A receipt as it travels. Unknown fields are accepted, so consumers can
/// add to it without breaking older relays.
#[derive(Debug, Deserialize)]
struct Receipt {
    event_ids: Vec<Uuid>,
}

/// Why a receipt was dropped.
#[derive(Debug, thiserror::Error)]
pub enum MalformedReceipt {
    #[error("not a receipt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} event ids, more than the {MAX_EVENT_IDS} a receipt may carry")]
    TooMany(usize),
}

/// Reads a receipt's event ids.
pub fn parse(body: &[u8]) -> Result<Vec<Uuid>, MalformedReceipt> {
    let receipt: Receipt = serde_json::from_slice(body)?;
    if receipt.event_ids.len() > MAX_EVENT_IDS {
        return Err(MalformedReceipt::TooMany(receipt.event_ids.len()));
    }
    Ok(receipt.event_ids)
}

/// What one [`handle`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handled {
    /// Receipts FINed.
    pub receipts: usize,
    /// Rows newly confirmed by them.
    pub confirmed: u64,
    /// Malformed receipts among them (FINed too).
    pub malformed: usize,
}

/// Confirms the rows of a group of receipts in one statement and FINs them
/// after it commits. On a database error (or a statement slower than
/// [`CONFIRM_TIMEOUT`]) nothing is FINed: the caller requeues them.
pub async fn handle(
    pool: &PgPool,
    messages: &[nsq::Message],
    logger: &Logger,
) -> anyhow::Result<Handled> {
    let mut event_ids = BTreeSet::new();
    let mut malformed = 0;
    for message in messages {
        match parse(&message.body) {
            Ok(ids) => event_ids.extend(ids),
            Err(error) => {
                malformed += 1;
                // Never the body: it is not ours to log, and may be large.
                slog::warn!(logger, "dropping a malformed delivery receipt";
                    "message_id" => %message.id, "body_bytes" => message.body.len(),
                    "error" => %error);
            }
        }
    }
    let event_ids: Vec<Uuid> = event_ids.into_iter().collect();
    let confirmed = if event_ids.is_empty() {
        0
    } else {
        tokio::time::timeout(CONFIRM_TIMEOUT, outbox::confirm(pool, &event_ids))
            .await
            .map_err(|_| anyhow::anyhow!("confirming took longer than {CONFIRM_TIMEOUT:?}"))?
            .context("confirming outbox rows")?
    };
    for message in messages {
        if let Err(gone) = message.fin() {
            // nsqd redelivers it; confirming again changes nothing.
            slog::debug!(logger, "could not FIN a receipt"; "message_id" => %message.id,
                "error" => %gone);
        }
    }
    Ok(Handled {
        receipts: messages.len(),
        confirmed,
        malformed,
    })
}

/// The subscription's settings.
pub fn consumer_config(config: &ReceiptsConfig) -> nsq::ConsumerConfig {
    let mut consumer = nsq::ConsumerConfig::new(
        config.topic.clone(),
        config.channel.clone(),
        config.discovery.clone(),
    );
    consumer.max_in_flight = 200;
    // A restarted nsqd is found again within seconds rather than half a
    // minute: receipts that wait only cause republications.
    consumer.reconnect_backoff_max = Duration::from_secs(5);
    consumer
}

/// Handles receipts until `shutdown` is cancelled, then closes the
/// subscription (receipts not yet handled are requeued for another relay).
pub async fn run(
    pool: PgPool,
    config: ReceiptsConfig,
    metrics: Arc<Metrics>,
    logger: Logger,
    shutdown: CancellationToken,
) {
    slog::info!(logger, "listening for delivery receipts";
        "topic" => config.topic.as_str(), "channel" => config.channel.as_str());
    let (consumer, mut receiver) = nsq::Consumer::start(consumer_config(&config), logger.clone());
    let mut retry = RETRY_FIRST;
    let mut failing = false;
    loop {
        let Some(batch) = next_batch(&mut receiver, &shutdown).await else {
            if !shutdown.is_cancelled() {
                // Rows will be republished until they age out of their
                // backoff; the process should be restarted.
                slog::error!(logger, "the receipt subscription stopped delivering");
            }
            break;
        };
        match handle(&pool, &batch, &logger).await {
            Ok(handled) => {
                metrics.receipts(handled.receipts, handled.confirmed);
                metrics.receipts_malformed(handled.malformed);
                if failing {
                    slog::info!(logger, "confirming delivery receipts again");
                    failing = false;
                    retry = RETRY_FIRST;
                }
            }
            Err(error) => {
                if !failing {
                    slog::warn!(logger, "cannot confirm delivery receipts; requeueing them";
                        "error" => format!("{error:#}"));
                    failing = true;
                }
                for message in &batch {
                    let _ = message.req(retry);
                }
                // Take no more while the database is away; those already
                // received wait in the receiver for the next attempt.
                consumer.pause();
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = shutdown.cancelled() => break,
                }
                consumer.resume();
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    // Unanswered messages still in the receiver are requeued when dropped.
    drop(receiver);
    consumer.close().await;
    slog::info!(logger, "stopped listening for delivery receipts");
}

/// The next receipt and whatever else is already waiting, up to
/// [`RECEIPTS_PER_STATEMENT`]; `None` on shutdown or when the subscription
/// has stopped.
async fn next_batch(
    receiver: &mut mpsc::Receiver<nsq::Message>,
    shutdown: &CancellationToken,
) -> Option<Vec<nsq::Message>> {
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return None,
        first = receiver.recv() => first?,
    };
    let mut batch = vec![first];
    while batch.len() < RECEIPTS_PER_STATEMENT {
        match receiver.try_recv() {
            Ok(message) => batch.push(message),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_is_a_list_of_event_ids_and_may_carry_more_fields() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let body = format!(r#"{{"event_ids": ["{a}", "{b}"], "consumer": "x"}}"#);
        assert_eq!(parse(body.as_bytes()).unwrap(), [a, b]);
        assert!(parse(br#"{"event_ids": []}"#).unwrap().is_empty());
    }

    #[test]
    fn anything_else_is_malformed() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            br#"{"event_ids": "x"}"#,
            br#"{"event_ids": ["not-a-uuid"]}"#,
            br#"{"event_ids": [1]}"#,
            b"\xff\xfe",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_receipt_with_too_many_ids_is_refused() {
        let ids: Vec<String> = (0..=MAX_EVENT_IDS)
            .map(|_| format!("\"{}\"", Uuid::nil()))
            .collect();
        let body = format!(r#"{{"event_ids": [{}]}}"#, ids.join(","));
        assert!(matches!(
            parse(body.as_bytes()),
            Err(MalformedReceipt::TooMany(n)) if n == MAX_EVENT_IDS + 1
        ));
    }
}
