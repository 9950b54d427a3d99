//! The batch writer: takes messages from the NSQ consumer, stores them in
//! batches, and answers nsqd for each message only once its fate is
//! committed.
//!
//! Invariants:
//! - FIN is sent only after the COMMIT that stored the event, or the dead
//!   letter, of that message. A crash before COMMIT means redelivery, and
//!   `ON CONFLICT (event_id) DO NOTHING` makes redelivery harmless.
//! - A message is dead-lettered only for a reason that retrying cannot fix:
//!   it is not a valid event, the database refuses its row, or it has failed
//!   `NSQ_MAX_ATTEMPTS` times. While the database is unreachable nothing is
//!   dead-lettered; messages are requeued and the consumer pauses.
//! - Every message received is answered (FIN or REQ), also at shutdown.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use audit_event::AuditEvent;
use slog::{debug, error, info, o, warn, Logger};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{self, DeadLetter, Failure};

/// A batch transaction that takes longer than this is abandoned and treated
/// as a database outage. It stays well under nsqd's default message timeout
/// (60 s), after which nsqd would redeliver the messages anyway.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the wait between two probes of a database that is away.
const PROBE_FIRST_WAIT: Duration = Duration::from_millis(250);
const PROBE_MAX_WAIT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a batch in which some messages failed for an unexpected reason, the
/// consumer rests for a while (growing with each such batch, up to this) so a
/// broken table does not turn into a hot loop of failing statements and logs.
const COOL_DOWN_MAX: Duration = Duration::from_secs(5);

/// How the writer batches and when it gives up on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages per transaction at most (`BATCH_SIZE`).
    pub batch_size: usize,
    /// How long a batch waits for more messages after its first
    /// (`BATCH_MAX_WAIT_MS`).
    pub max_wait: Duration,
    /// Deliveries after which a message that still cannot be stored is
    /// dead-lettered (`NSQ_MAX_ATTEMPTS`).
    pub max_attempts: u16,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            batch_size: config.batch_size,
            max_wait: config.batch_max_wait,
            max_attempts: config.nsq_max_attempts,
        }
    }
}

/// The delay of a REQ for a message delivered `attempts` times: 1 s, 2 s,
/// 4 s, … up to 60 s, so a message that keeps failing comes back less often.
pub fn requeue_delay(attempts: u16) -> Duration {
    let exponent = u32::from(attempts.saturating_sub(1)).min(6);
    Duration::from_secs(1 << exponent).min(Duration::from_secs(60))
}

/// What happened to one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Messages received.
    pub received: usize,
    /// Rows newly inserted into `audit_logs`.
    pub inserted: u64,
    /// Messages finished because their event is stored (now or before).
    pub stored: usize,
    /// Messages finished because they are in `audit_dead_letters`.
    pub dead_lettered: usize,
    /// Messages handed back to nsqd for a later attempt.
    pub requeued: usize,
    /// The database could not be reached: the caller should stop taking
    /// messages until it answers again.
    pub database_unavailable: bool,
}

/// Runs the writer until `shutdown` is cancelled or the consumer stops
/// delivering. On the way out it pauses the consumer, stores the batch in
/// hand and requeues (delay 0) whatever it received but did not store. The
/// caller then closes the consumer.
pub async fn run(
    pool: &PgPool,
    consumer: &nsq::Consumer,
    messages: &mut mpsc::Receiver<nsq::Message>,
    settings: Settings,
    shutdown: &CancellationToken,
    logger: &Logger,
) {
    let mut failing_batches: u32 = 0;
    loop {
        let batch = collect(messages, settings, shutdown).await;
        if shutdown.is_cancelled() {
            consumer.pause();
        }
        if batch.is_empty() {
            if !shutdown.is_cancelled() {
                error!(logger, "the NSQ consumer stopped delivering messages");
            }
            break;
        }
        let report = write_batch(pool, batch, settings, logger).await;
        debug!(logger, "batch done";
            "received" => report.received, "inserted" => report.inserted,
            "stored" => report.stored, "dead_lettered" => report.dead_lettered,
            "requeued" => report.requeued);
        if shutdown.is_cancelled() {
            break;
        }
        if report.database_unavailable {
            failing_batches = failing_batches.saturating_add(1);
            let recovered =
                wait_for_database(pool, consumer, messages, shutdown, failing_batches, logger)
                    .await;
            if !recovered {
                break;
            }
            failing_batches = 0;
        } else if report.requeued > 0 {
            failing_batches = failing_batches.saturating_add(1);
            if !cool_down(consumer, shutdown, failing_batches, logger).await {
                break;
            }
        } else {
            failing_batches = 0;
        }
    }
    consumer.pause();
    let requeued = requeue_remaining(messages, logger);
    info!(logger, "batch writer stopped"; "requeued_at_shutdown" => requeued);
}

/// Waits for the first message, then gathers more until the batch is full or
/// `max_wait` has passed since the first one. Returns early (possibly empty)
/// on shutdown, and empty when the consumer has stopped.
pub async fn collect(
    messages: &mut mpsc::Receiver<nsq::Message>,
    settings: Settings,
    shutdown: &CancellationToken,
) -> Vec<nsq::Message> {
    let mut batch = Vec::with_capacity(settings.batch_size.min(1024));
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => return batch,
        first = messages.recv() => match first {
            Some(message) => batch.push(message),
            None => return batch,
        },
    }
    let deadline = Instant::now() + settings.max_wait;
    while batch.len() < settings.batch_size {
        // `timeout_at` polls the receiver before looking at the clock, so
        // with a zero wait the batch still takes what is already queued.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout_at(deadline, messages.recv()) => match next {
                Ok(Some(message)) => batch.push(message),
                Ok(None) | Err(_) => break,
            },
        }
    }
    batch
}

/// A received message and what it turned out to be.
struct Item {
    message: nsq::Message,
    content: Content,
}

enum Content {
    Event(Box<AuditEvent>),
    /// Cannot be stored as an event; the text says why, for the dead letter.
    DeadLetter(String),
}

/// What we will answer nsqd for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Undecided,
    Finish,
    Requeue(Duration),
}

/// Stores one batch and answers nsqd for every message in it: decodes each
/// body, writes the valid events (and the dead letters of the invalid ones)
/// in one transaction, and FINs them after COMMIT. When the database refuses
/// the batch, it is split in halves until the offending messages are
/// isolated, so the good events in it are still stored.
pub async fn write_batch(
    pool: &PgPool,
    batch: Vec<nsq::Message>,
    settings: Settings,
    logger: &Logger,
) -> Report {
    let mut items: Vec<Item> = batch.into_iter().map(|m| decode(m, logger)).collect();
    let mut answers = vec![Answer::Undecided; items.len()];
    let mut report = Report {
        received: items.len(),
        ..Report::default()
    };

    // Ranges of `items` still to store. Popped from the end, so halves are
    // pushed second-half first to keep the messages roughly in order.
    let mut pending: Vec<Range<usize>> = Vec::new();
    pending.push(0..items.len());
    while let Some(range) = pending.pop() {
        let failure = match store(pool, &items[range.clone()]).await {
            Ok(inserted) => {
                report.inserted += inserted;
                answers[range].fill(Answer::Finish);
                continue;
            }
            Err(failure) => failure,
        };
        if failure.kind == Failure::Unavailable {
            warn!(logger, "database unavailable, requeueing the batch";
                "error" => &failure.message, "messages" => items.len());
            report.database_unavailable = true;
            break;
        }
        if range.len() > 1 {
            // Only the first failure of a batch is worth a line; the
            // splitting that follows is logged through its outcome.
            if range.len() == items.len() {
                warn!(logger, "database refused the batch, isolating the offending messages";
                    "error" => &failure.message, "messages" => range.len());
            }
            let middle = range.start + range.len() / 2;
            pending.push(middle..range.end);
            pending.push(range.start..middle);
            continue;
        }
        let index = range.start;
        let item = &mut items[index];
        let attempts = item.message.attempts;
        let log = logger.new(o!("message_id" => item.message.id.to_string(),
            "attempts" => attempts, "body_bytes" => item.message.body.len()));
        match (&item.content, failure.kind) {
            (Content::Event(_), Failure::Refused) => {
                warn!(log, "database refused an event, dead-lettering it"; "error" => &failure.message);
                item.content = Content::DeadLetter(format!(
                    "the database refused the event: {}",
                    failure.message
                ));
                pending.push(range);
            }
            (Content::Event(_), _) if attempts >= settings.max_attempts => {
                warn!(log, "event still not stored after the last attempt, dead-lettering it";
                    "error" => &failure.message);
                item.content = Content::DeadLetter(format!(
                    "not stored after {attempts} attempts: {}",
                    failure.message
                ));
                pending.push(range);
            }
            _ => {
                let delay = requeue_delay(attempts);
                error!(log, "could not store a message, requeueing it";
                    "error" => &failure.message, "delay_ms" => delay.as_millis());
                answers[index] = Answer::Requeue(delay);
            }
        }
    }

    for (item, answer) in items.into_iter().zip(answers) {
        let Item { message, content } = item;
        let id = message.id;
        let result = match answer {
            Answer::Finish => {
                match content {
                    Content::Event(_) => report.stored += 1,
                    Content::DeadLetter(_) => report.dead_lettered += 1,
                }
                message.fin()
            }
            Answer::Requeue(delay) => {
                report.requeued += 1;
                message.req(delay)
            }
            // Left undecided only when the database went away mid-batch.
            Answer::Undecided => {
                report.requeued += 1;
                let delay = requeue_delay(message.attempts);
                message.req(delay)
            }
        };
        if let Err(gone) = result {
            // nsqd redelivers it after its timeout; storing it again is a
            // no-op thanks to ON CONFLICT, so this only costs a delay.
            debug!(logger, "could not answer nsqd for a message"; "message_id" => %id, "error" => %gone);
        }
    }
    report
}

/// Parses a message body into an event, or says why it is not one.
fn decode(message: nsq::Message, logger: &Logger) -> Item {
    let content = match AuditEvent::parse(&message.body) {
        Ok(event) => Content::Event(Box::new(event)),
        Err(e) => {
            // The body itself is never logged: it can be large and it is
            // kept, byte for byte, in the dead-letter table.
            warn!(logger, "message is not a valid audit event, dead-lettering it";
                "message_id" => %message.id, "attempts" => message.attempts,
                "body_bytes" => message.body.len(), "error" => %e);
            Content::DeadLetter(e.to_string())
        }
    };
    Item { message, content }
}

/// Why a store failed, classified, with the text of the error.
struct StoreFailure {
    kind: Failure,
    message: String,
}

/// Stores a slice of a batch in one transaction: the dead letters, then the
/// events. Duplicates inside the slice are dropped first, because one
/// statement cannot insert (or upsert) the same key twice.
async fn store(pool: &PgPool, items: &[Item]) -> Result<u64, StoreFailure> {
    let mut event_ids = HashSet::new();
    let events: Vec<&AuditEvent> = items
        .iter()
        .filter_map(|item| match &item.content {
            Content::Event(event) => Some(event.as_ref()),
            Content::DeadLetter(_) => None,
        })
        .filter(|event| event_ids.insert(event.event_id))
        .collect();
    let mut bodies = HashSet::new();
    let letters: Vec<DeadLetter<'_>> = items
        .iter()
        .filter_map(|item| match &item.content {
            Content::DeadLetter(error) => Some(DeadLetter {
                message_id: item.message.id.as_str(),
                body: &item.message.body,
                error,
                attempts: item.message.attempts,
            }),
            Content::Event(_) => None,
        })
        .filter(|letter| bodies.insert(letter.body))
        .collect();

    let transaction = async {
        let mut tx = pool.begin().await?;
        if !letters.is_empty() {
            store::insert_dead_letters(&mut tx, &letters).await?;
        }
        let inserted = if events.is_empty() {
            0
        } else {
            store::insert_events(&mut tx, &events).await?
        };
        tx.commit().await?;
        Ok::<u64, sqlx::Error>(inserted)
    };
    match tokio::time::timeout(STORE_TIMEOUT, transaction).await {
        Ok(Ok(inserted)) => Ok(inserted),
        Ok(Err(e)) => Err(StoreFailure {
            kind: Failure::of(&e),
            message: e.to_string(),
        }),
        Err(_) => Err(StoreFailure {
            kind: Failure::Unavailable,
            message: format!("the transaction took longer than {STORE_TIMEOUT:?}"),
        }),
    }
}

/// Keeps the consumer paused until the database answers again, requeueing
/// (with their usual delay) the messages that were already on their way.
/// Returns false when shutdown was requested first.
async fn wait_for_database(
    pool: &PgPool,
    consumer: &nsq::Consumer,
    messages: &mut mpsc::Receiver<nsq::Message>,
    shutdown: &CancellationToken,
    failing_batches: u32,
    logger: &Logger,
) -> bool {
    consumer.pause();
    warn!(logger, "paused taking messages until the database answers");
    let started = Instant::now();
    let mut wait = PROBE_FIRST_WAIT;
    loop {
        let wake = Instant::now() + wait;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                Some(message) = messages.recv() => {
                    let delay = requeue_delay(message.attempts);
                    // A message that cannot be answered is redelivered by
                    // nsqd after its timeout; nothing to do here.
                    let _ = message.req(delay);
                }
                _ = tokio::time::sleep_until(wake) => break,
            }
        }
        let probe = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            probe = store::ping(pool, PROBE_TIMEOUT) => probe,
        };
        match probe {
            Ok(()) => {
                info!(logger, "database answers again, resuming";
                    "paused_ms" => started.elapsed().as_millis(), "failed_batches" => failing_batches);
                consumer.resume();
                return true;
            }
            Err(e) => {
                debug!(logger, "database still unavailable"; "error" => %e);
                wait = (wait * 2).min(PROBE_MAX_WAIT);
            }
        }
    }
}

/// Rests after a batch in which messages failed for an unexpected reason.
/// Returns false when shutdown was requested first.
async fn cool_down(
    consumer: &nsq::Consumer,
    shutdown: &CancellationToken,
    failing_batches: u32,
    logger: &Logger,
) -> bool {
    let rest = (PROBE_FIRST_WAIT * 2u32.saturating_pow(failing_batches.min(8))).min(COOL_DOWN_MAX);
    debug!(logger, "resting after a failing batch"; "rest_ms" => rest.as_millis());
    consumer.pause();
    let rested = tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(rest) => true,
    };
    if rested {
        consumer.resume();
    }
    rested
}

/// Hands back to nsqd, for immediate redelivery to another consumer, what was
/// received but will not be stored by this process. Messages still on the
/// wire after this are requeued by dropping the receiver (see `nsq::Message`).
fn requeue_remaining(messages: &mut mpsc::Receiver<nsq::Message>, logger: &Logger) -> usize {
    let mut requeued = 0;
    while let Ok(message) = messages.try_recv() {
        if let Err(gone) = message.req(Duration::ZERO) {
            debug!(logger, "could not requeue a message at shutdown";
                "message_id" => %message.id, "error" => %gone);
        }
        requeued += 1;
    }
    requeued
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_delays_double_from_one_second_up_to_a_minute() {
        let delays: Vec<u64> = (0..=10).map(|a| requeue_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(requeue_delay(u16::MAX), Duration::from_secs(60));
    }
}
