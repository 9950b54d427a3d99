//! The outbox relay: moves committed audit events from the `outbox` table to
//! nsqd, and keeps publishing each one until a delivery receipt confirms it.
//!
//! # Concurrency
//!
//! Any number of relays (in any number of processes) may run at once: each
//! batch is claimed with `FOR UPDATE SKIP LOCKED` inside one transaction that
//! also marks the rows, so a row is held by one relay at a time, a claim
//! never takes more than its batch (the ids are chosen in a materialized
//! CTE), and a relay that dies mid-batch leaves its rows due for the next
//! (its transaction rolls back). There is no cursor on `id`: a cursor would
//! skip rows whose transaction commits late with a lower id.
//!
//! # Delivery
//!
//! nsqd's `OK` means a message is in nsqd's memory, which a `kill -9` of
//! nsqd loses. So a published row is not finished: it stays due again
//! `RELAY_REPUBLISH_AFTER_SECS` later (doubling with each publication, at
//! most [`MAX_REPUBLISH_WAIT`]), until a receipt from the consumer — sent
//! after its COMMIT, see [`crate::receipts`] — confirms it. Republication
//! and redelivery both produce duplicates, which the consumer absorbs by
//! deduplicating on `event_id`. A row nsqd can never accept (over its
//! message size limit) is parked, with the reason, instead of retried
//! forever. MPUBs are split under nsqd's message and body limits by
//! [`nsq::Producer::multi_publish`].
//!
//! # Latency
//!
//! A commit in this process wakes the relay at once through an in-process
//! [`Notify`]; rows written by other processes are found by polling every
//! `RELAY_POLL_INTERVAL_MS` (their own relay normally takes them first).
//! LISTEN/NOTIFY would wake every relay for every commit, but Postgres
//! queues notifications in one shared queue, and a notifying transaction
//! takes a global lock on it at commit and holds it until the commit is
//! done: every request of every API process would commit one at a time, to
//! save a fraction of a poll interval on rows another process wrote. Not
//! worth it unless measurements say otherwise.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use slog::Logger;
use sqlx::PgPool;
use telemetry::trace::Tracing;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox;
use crate::trace::PublishSpans;

/// The longest wait for a receipt before republishing, however many times a
/// row was published (unless `RELAY_REPUBLISH_AFTER_SECS` is longer).
pub const MAX_REPUBLISH_WAIT: Duration = Duration::from_secs(3600);

/// What one [`publish_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Rows claimed from the outbox.
    pub claimed: usize,
    /// Rows published for the first time, acknowledged by nsqd.
    pub published: usize,
    /// Rows published again for want of a receipt, acknowledged by nsqd.
    pub republished: usize,
    /// Rows nsqd can never accept, now parked.
    pub parked: usize,
}

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topic: nsq::Topic,
    pub batch_size: u32,
    /// Fallback for rows written by other processes, which cannot wake us.
    pub poll_interval: Duration,
    /// How long a published row waits for its receipt before it is
    /// published again; `None` takes nsqd's `OK` as the confirmation.
    pub republish_after: Option<Duration>,
    /// Spans of each published batch; disabled makes none.
    pub tracing: Tracing,
}

impl Settings {
    fn max_republish_wait(&self) -> Duration {
        self.republish_after
            .map_or(MAX_REPUBLISH_WAIT, |after| after.max(MAX_REPUBLISH_WAIT))
    }
}

/// Publishes one batch of at most `batch_size` due rows.
///
/// On a publish error the transaction is rolled back and the rows stay due
/// (a prefix of the batch may have reached nsqd: duplicates, absorbed
/// downstream). A row nsqd would refuse for its size is parked (with the
/// reason) rather than retried forever, and the rest of the batch goes out.
pub async fn publish_once(
    pool: &PgPool,
    producer: &nsq::Producer,
    settings: &Settings,
    logger: &Logger,
) -> anyhow::Result<Published> {
    let mut tx = pool
        .begin()
        .await
        .context("starting the relay transaction")?;
    let mut rows = outbox::claim(&mut tx, i64::from(settings.batch_size))
        .await
        .context("claiming outbox rows")?;
    let claimed = rows.len();
    if rows.is_empty() {
        tx.commit().await.context("ending the relay transaction")?;
        return Ok(Published::default());
    }

    // Ended when dropped: as failed on any early return below.
    let mut spans = PublishSpans::start(&settings.tracing, &settings.topic, &rows);
    let mut parked = 0;
    while !rows.is_empty() {
        let bodies: Vec<&[u8]> = rows.iter().map(|row| row.payload.as_bytes()).collect();
        let (index, reason) = match producer.multi_publish(&settings.topic, &bodies).await {
            Ok(()) => break,
            // Both are refused before anything is sent, and would be refused
            // again on every retry.
            Err(error @ nsq::Error::MessageTooLarge { index, .. })
            | Err(error @ nsq::Error::EmptyMessage { index }) => (index, error.to_string()),
            Err(error) => {
                // Rolling back releases the claim; the rows are retried.
                let _ = tx.rollback().await;
                return Err(error).context("publishing to nsqd");
            }
        };
        let row = rows.remove(index);
        slog::error!(logger, "outbox row parked: nsqd can never accept it";
            "outbox_id" => row.id, "error" => &reason);
        spans.parked(row.id, &reason);
        outbox::park(&mut tx, row.id, &reason)
            .await
            .context("parking an outbox row")?;
        parked += 1;
    }

    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let republished = rows.iter().filter(|row| row.republish).count();
    if !ids.is_empty() {
        outbox::mark_published(
            &mut tx,
            &ids,
            settings.republish_after,
            settings.max_republish_wait(),
        )
        .await
        .context("marking outbox rows published")?;
    }
    tx.commit()
        .await
        .context("committing published outbox rows")?;
    spans.published();
    Ok(Published {
        claimed,
        published: ids.len() - republished,
        republished,
        parked,
    })
}

/// Publishes until `shutdown` is cancelled, stopping only between batches.
///
/// Wakes when `wake` is signalled (a local commit wrote an outbox row) or
/// every `poll_interval`; keeps going while batches come back full. While
/// nsqd or the database is unavailable it retries with a capped exponential
/// backoff, forever, logging only when the state changes.
pub async fn run(
    pool: PgPool,
    producer: nsq::Producer,
    settings: Settings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    logger: Logger,
    shutdown: CancellationToken,
) {
    slog::info!(logger, "relay started";
        "topic" => settings.topic.as_str(), "nsqd" => producer.address(),
        "batch_size" => settings.batch_size,
        "republish_after_s" => settings.republish_after.map_or(0, |d| d.as_secs()));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let result = publish_once(&pool, &producer, &settings, &logger).await;
        let pause = match result {
            Ok(published) => {
                if failing {
                    slog::info!(logger, "relay recovered; publishing again");
                    failing = false;
                    backoff.reset();
                }
                metrics.published(published.published);
                metrics.republished(published.republished);
                metrics.parked(published.parked);
                if published.republished > 0 {
                    // Normal after an nsqd crash or a consumer outage; a
                    // steady stream of these means receipts are not arriving.
                    slog::info!(logger, "republished outbox rows that had no receipt";
                        "republished" => published.republished);
                }
                if published.claimed > 0 {
                    slog::debug!(logger, "published outbox rows";
                        "published" => published.published,
                        "republished" => published.republished,
                        "parked" => published.parked);
                }
                if published.claimed >= settings.batch_size as usize {
                    // More may be waiting: drain before sleeping.
                    continue;
                }
                None
            }
            Err(error) => {
                metrics.publish_failed();
                if !failing {
                    slog::warn!(logger, "relay cannot publish; retrying until it can";
                        "error" => format!("{error:#}"));
                    failing = true;
                }
                Some(backoff.next_delay())
            }
        };
        match pause {
            Some(delay) => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
            }
            None => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(settings.poll_interval) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    slog::info!(logger, "relay stopped");
}

/// Capped exponential backoff: `initial`, doubling, at most `max`.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
