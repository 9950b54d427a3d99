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
//!   `NSQ_MAX_ATTEMPTS` times. While the database is unreachable or
//!   misconfigured nothing is dead-lettered: messages are requeued with a
//!   growing delay and the consumer pauses (RDY 0) until
//!   [`store::check`] passes again.
//! - Every message received is answered (FIN or REQ), also at shutdown, and
//!   every message held while the database is slow is kept alive with TOUCH,
//!   so nsqd does not time it out and hand it to another consumer.
//!
//! The steps of the loop ([`Writer::collect`], [`Writer::write_batch`]) are
//! methods that take everything they touch as arguments.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::OnceLock;
use std::time::Duration;

use audit_event::AuditEvent;
use slog::{debug, error, info, o, warn, Logger};
use sqlx::PgPool;
use telemetry::opentelemetry::context::FutureExt as _;
use telemetry::trace::Tracing;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::receipts::Receipts;
use crate::store::{self, DatabaseError, DeadLetter, Failure};
use crate::trace;

/// A batch transaction that takes longer than this is abandoned and treated
/// as a database outage. Its messages are touched meanwhile, so nsqd's
/// message timeout does not bound it.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the wait between two checks of a database that is away.
const PROBE_FIRST_WAIT: Duration = Duration::from_millis(250);
const PROBE_MAX_WAIT: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// While paused, a reminder that the consumer is still waiting this often.
const PAUSED_REMINDER: Duration = Duration::from_secs(30);

/// After a batch in which some messages failed for an unexpected reason, the
/// consumer rests for a while (growing with each such batch, up to this) so a
/// broken table does not turn into a hot loop of failing statements and logs.
const COOL_DOWN_MAX: Duration = Duration::from_secs(5);

/// After a shutdown is requested, how long the batch in hand may still take
/// to commit. Past it the transaction is abandoned and its messages are
/// requeued, so a hung database cannot hold the process beyond its stop
/// timeout (10 s in Docker and systemd's default is longer).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the writer batches, when it gives up on a message, and how often it
/// touches the messages it holds.
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
    /// How often held messages are touched: see [`touch_interval`].
    pub touch_interval: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            batch_size: config.batch_size,
            max_wait: config.batch_max_wait,
            max_attempts: config.nsq_max_attempts,
            touch_interval: touch_interval(config.nsq_msg_timeout),
        }
    }
}

/// A quarter of nsqd's message timeout. A message can wait up to one
/// interval in the receiver before the writer takes (and first touches) it,
/// and then one more until the next touch: half the timeout in the worst
/// case, which leaves the other half for a busy scheduler or connection.
pub fn touch_interval(msg_timeout: Duration) -> Duration {
    msg_timeout / 4
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
    /// Messages in the batch.
    pub received: usize,
    /// Rows newly inserted into `audit_logs`.
    pub inserted: u64,
    /// Messages finished because their event is stored (now or before).
    pub stored: usize,
    /// Messages finished because they are in `audit_dead_letters`.
    pub dead_lettered: usize,
    /// Messages handed back to nsqd for a later attempt.
    pub requeued: usize,
    /// Set when the database is away (`Unavailable`) or not usable
    /// (`Configuration`): the caller should stop taking messages until
    /// [`store::check`] passes.
    pub pause_for: Option<DatabaseError>,
}

/// The batch writer's collaborators.
pub struct Writer<'a> {
    pub pool: &'a PgPool,
    pub consumer: &'a nsq::Consumer,
    pub metrics: &'a Metrics,
    pub settings: Settings,
    /// Where the event ids of each committed batch go (delivery receipts);
    /// `None` when receipts are off.
    pub receipts: Option<&'a Receipts>,
    /// Spans of batches and events; disabled makes none.
    pub tracing: &'a Tracing,
    pub logger: &'a Logger,
}

/// Where messages come from: the consumer's receiver, and the messages taken
/// from it early, while a slow batch was being stored, so that they could be
/// touched too. The next batch starts with those.
pub struct Inbox<'a> {
    receiver: &'a mut mpsc::Receiver<nsq::Message>,
    early: Vec<nsq::Message>,
    metrics: &'a Metrics,
}

impl<'a> Inbox<'a> {
    pub fn new(receiver: &'a mut mpsc::Receiver<nsq::Message>, metrics: &'a Metrics) -> Self {
        Inbox {
            receiver,
            early: Vec::new(),
            metrics,
        }
    }

    /// The next message; `None` once the consumer has stopped.
    async fn recv(&mut self) -> Option<nsq::Message> {
        let message = self.receiver.recv().await;
        if message.is_some() {
            self.metrics.received(1);
        }
        message
    }

    /// Moves every message waiting in the receiver to `early`.
    fn take_waiting(&mut self) {
        let before = self.early.len();
        while let Ok(message) = self.receiver.try_recv() {
            self.early.push(message);
        }
        self.metrics.received(self.early.len() - before);
    }

    /// Everything held (early) and everything waiting, for answering at once.
    fn drain_all(&mut self) -> Vec<nsq::Message> {
        self.take_waiting();
        std::mem::take(&mut self.early)
    }
}

/// A shutdown in two steps: `requested` stops taking messages; the batch in
/// hand is abandoned [`SHUTDOWN_GRACE`] later if it has not committed.
struct Stop<'a> {
    requested: &'a CancellationToken,
    abandon_at: OnceLock<Instant>,
}

impl Stop<'_> {
    fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// Completes [`SHUTDOWN_GRACE`] after the shutdown was first noticed.
    async fn abandon(&self) {
        self.requested.cancelled().await;
        let at = *self
            .abandon_at
            .get_or_init(|| Instant::now() + SHUTDOWN_GRACE);
        sleep_until(at).await;
    }
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

impl Writer<'_> {
    /// Runs until `shutdown` is cancelled or the consumer stops delivering.
    /// On the way out it pauses the consumer (RDY 0), stores the batch in
    /// hand (for at most [`SHUTDOWN_GRACE`]) and requeues, without delay,
    /// whatever it received but did not store. The caller then closes the
    /// consumer.
    pub async fn run(
        &self,
        messages: &mut mpsc::Receiver<nsq::Message>,
        shutdown: &CancellationToken,
    ) {
        let stop = Stop {
            requested: shutdown,
            abandon_at: OnceLock::new(),
        };
        let mut inbox = Inbox::new(messages, self.metrics);
        let mut failing_batches: u32 = 0;
        loop {
            let batch = self.collect(&mut inbox, shutdown).await;
            if stop.is_requested() {
                self.consumer.pause();
            }
            if batch.is_empty() {
                if !stop.is_requested() {
                    error!(self.logger, "the NSQ consumer stopped delivering messages");
                }
                break;
            }
            // The batch's span is current while it is written: its log
            // lines carry the span's ids, and event spans link to it.
            let report = match trace::start_batch(self.tracing, batch.len()) {
                Some(cx) => {
                    let report = self
                        .write_batch(batch, &mut inbox, &stop)
                        .with_context(cx.clone())
                        .await;
                    trace::end_batch(&cx, &report);
                    report
                }
                None => self.write_batch(batch, &mut inbox, &stop).await,
            };
            debug!(self.logger, "batch done";
                "received" => report.received, "inserted" => report.inserted,
                "stored" => report.stored, "dead_lettered" => report.dead_lettered,
                "requeued" => report.requeued);
            if stop.is_requested() {
                break;
            }
            if let Some(cause) = report.pause_for {
                failing_batches = failing_batches.saturating_add(1);
                if !self
                    .wait_for_database(&mut inbox, shutdown, &cause, failing_batches)
                    .await
                {
                    break;
                }
                failing_batches = 0;
            } else if report.requeued > 0 {
                failing_batches = failing_batches.saturating_add(1);
                if !self.cool_down(&mut inbox, shutdown, failing_batches).await {
                    break;
                }
            } else {
                failing_batches = 0;
            }
        }
        self.consumer.pause();
        let left = inbox.drain_all();
        let requeued = self.requeue(left, |_| Duration::ZERO);
        info!(self.logger, "batch writer stopped"; "requeued_at_shutdown" => requeued);
    }

    /// Starts with the messages taken early, else waits for the first one,
    /// then gathers more until the batch is full or `max_wait` has passed.
    /// Returns early (possibly empty) on shutdown, and empty when the
    /// consumer has stopped. Touches the batch if `max_wait` outlasts the
    /// touch interval.
    async fn collect(
        &self,
        inbox: &mut Inbox<'_>,
        shutdown: &CancellationToken,
    ) -> Vec<nsq::Message> {
        let settings = self.settings;
        let take = inbox.early.len().min(settings.batch_size);
        let mut batch: Vec<nsq::Message> = inbox.early.drain(..take).collect();
        if batch.is_empty() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return batch,
                first = inbox.recv() => match first {
                    Some(message) => batch.push(message),
                    None => return batch,
                },
            }
        } else {
            // Their last touch may be an interval old; restart their clock
            // with the batch's.
            self.touch(batch.iter());
        }
        let deadline = Instant::now() + settings.max_wait;
        let mut next_touch = Instant::now() + settings.touch_interval;
        while batch.len() < settings.batch_size {
            // `timeout_at` polls the receiver before looking at the clock, so
            // with a zero wait the batch still takes what is already queued.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = tokio::time::timeout_at(deadline, inbox.recv()) => match next {
                    Ok(Some(message)) => batch.push(message),
                    Ok(None) | Err(_) => break,
                },
                () = sleep_until(next_touch) => {
                    self.touch(batch.iter());
                    next_touch = Instant::now() + settings.touch_interval;
                }
            }
        }
        batch
    }

    /// Stores one batch and answers nsqd for every message in it: decodes
    /// each body, writes the valid events (and the dead letters of the
    /// invalid ones) in one transaction, and FINs them after COMMIT. When
    /// the database refuses the batch, it is split in halves until the
    /// offending messages are isolated, so the good events in it are still
    /// stored.
    async fn write_batch(
        &self,
        batch: Vec<nsq::Message>,
        inbox: &mut Inbox<'_>,
        stop: &Stop<'_>,
    ) -> Report {
        self.metrics.batch(batch.len());
        let mut items: Vec<Item> = batch.into_iter().map(|m| self.decode(m)).collect();
        let mut answers = vec![Answer::Undecided; items.len()];
        let mut report = Report {
            received: items.len(),
            ..Report::default()
        };
        let mut next_touch = Instant::now() + self.settings.touch_interval;

        // Ranges of `items` still to store. Popped from the end, so halves
        // are pushed second-half first to keep the messages roughly in order.
        let mut pending: Vec<Range<usize>> = Vec::new();
        pending.push(0..items.len());
        while let Some(range) = pending.pop() {
            let stored = self
                .store_touching(
                    &items,
                    range.clone(),
                    &answers,
                    inbox,
                    &mut next_touch,
                    stop,
                )
                .await;
            let failure = match stored {
                Ok(inserted) => {
                    report.inserted += inserted;
                    answers[range].fill(Answer::Finish);
                    continue;
                }
                Err(failure) => failure,
            };
            if matches!(failure.kind, Failure::Unavailable | Failure::Configuration) {
                // Nothing is wrong with the messages: all of them go back.
                report.pause_for = Some(failure);
                break;
            }
            if range.len() > 1 {
                // Only the first failure of a batch is worth a line; the
                // splitting that follows is logged through its outcome.
                if range.len() == items.len() {
                    warn!(self.logger, "database refused the batch, isolating the offending messages";
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
            let log = self
                .logger
                .new(o!("message_id" => item.message.id.to_string(),
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
                (Content::Event(_), _) if attempts >= self.settings.max_attempts => {
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

        if let Some(cause) = &report.pause_for {
            let log = self.logger.new(o!("error" => cause.message.clone(),
                "class" => cause.kind.as_str(), "messages" => items.len()));
            match cause.kind {
                Failure::Configuration => {
                    error!(
                        log,
                        "the database is not usable as configured, requeueing the batch"
                    )
                }
                _ => warn!(log, "database unavailable, requeueing the batch"),
            }
        }

        trace::record_events(
            self.tracing,
            items.iter().zip(&answers).filter_map(|(item, answer)| {
                let Content::Event(event) = &item.content else {
                    return None;
                };
                let fate = match answer {
                    Answer::Finish => trace::Fate::Stored,
                    Answer::Requeue(_) | Answer::Undecided => trace::Fate::Requeued,
                };
                Some((&item.message, event.as_ref(), fate))
            }),
        );

        // Events now in audit_logs, stored by this batch or before it.
        let mut stored_ids = Vec::new();
        for (item, answer) in items.into_iter().zip(answers) {
            let Item { message, content } = item;
            let id = message.id;
            let result = match answer {
                Answer::Finish => {
                    match content {
                        Content::Event(event) => {
                            report.stored += 1;
                            stored_ids.push(event.event_id);
                        }
                        Content::DeadLetter(_) => report.dead_lettered += 1,
                    }
                    message.fin()
                }
                Answer::Requeue(delay) => {
                    report.requeued += 1;
                    message.req(delay)
                }
                // Left undecided only when the database went away mid-batch
                // (or the shutdown gave up on it: then another consumer may
                // take it at once).
                Answer::Undecided => {
                    report.requeued += 1;
                    let delay = if stop.is_requested() {
                        Duration::ZERO
                    } else {
                        requeue_delay(message.attempts)
                    };
                    message.req(delay)
                }
            };
            if let Err(gone) = result {
                // nsqd redelivers it after its timeout; storing it again is a
                // no-op thanks to ON CONFLICT, so this only costs a delay.
                debug!(self.logger, "could not answer nsqd for a message"; "message_id" => %id, "error" => %gone);
            }
        }
        if let Some(receipts) = self.receipts {
            // Only after their COMMIT, and without waiting.
            receipts.send(stored_ids);
        }
        self.metrics.stored(report.inserted);
        self.metrics.duplicates(
            report
                .stored
                .saturating_sub(usize::try_from(report.inserted).unwrap_or(usize::MAX)),
        );
        self.metrics.dead_lettered(report.dead_lettered);
        self.metrics.requeued(report.requeued);
        report
    }

    /// Parses a message body into an event, or says why it is not one.
    fn decode(&self, message: nsq::Message) -> Item {
        let content = match AuditEvent::parse(&message.body) {
            Ok(event) => Content::Event(Box::new(event)),
            Err(e) => {
                // The body itself is never logged: it can be large and it is
                // kept, byte for byte, in the dead-letter table.
                warn!(self.logger, "message is not a valid audit event, dead-lettering it";
                    "message_id" => %message.id, "attempts" => message.attempts,
                    "body_bytes" => message.body.len(), "error" => %e);
                Content::DeadLetter(e.to_string())
            }
        };
        Item { message, content }
    }

    /// Stores `items[range]` in one transaction. While it runs, every
    /// message of the batch still undecided, and every message waiting in
    /// the receiver (taken early for it), is touched each interval. Gives up
    /// [`SHUTDOWN_GRACE`] after a shutdown request.
    async fn store_touching(
        &self,
        items: &[Item],
        range: Range<usize>,
        answers: &[Answer],
        inbox: &mut Inbox<'_>,
        next_touch: &mut Instant,
        stop: &Stop<'_>,
    ) -> Result<u64, DatabaseError> {
        let started = Instant::now();
        let store = store(self.pool, &items[range]);
        tokio::pin!(store);
        let result = loop {
            tokio::select! {
                biased;
                result = &mut store => break result,
                // RDY 0 as soon as the shutdown comes, not after this batch.
                _ = stop.requested.cancelled(), if !self.consumer.is_paused() => {
                    self.consumer.pause();
                }
                () = stop.abandon() => {
                    break Err(DatabaseError {
                        kind: Failure::Unavailable,
                        message: format!(
                            "shutting down: the batch did not commit within {SHUTDOWN_GRACE:?}"
                        ),
                    });
                }
                () = sleep_until(*next_touch) => {
                    inbox.take_waiting();
                    let undecided = items
                        .iter()
                        .zip(answers)
                        .filter(|(_, answer)| **answer == Answer::Undecided)
                        .map(|(item, _)| &item.message);
                    let touched = self.touch(undecided.chain(&inbox.early));
                    debug!(self.logger, "the database is slow; touched the messages held";
                        "touched" => touched, "store_ms" => started.elapsed().as_millis());
                    *next_touch = Instant::now() + self.settings.touch_interval;
                }
            }
        };
        match &result {
            Ok(_) => self.metrics.store_latency(started.elapsed()),
            Err(failure) => self.metrics.store_failed(failure.kind),
        }
        result
    }

    /// Sends TOUCH for each message; returns how many.
    fn touch<'m>(&self, messages: impl Iterator<Item = &'m nsq::Message>) -> usize {
        let mut touched = 0;
        for message in messages {
            // A message whose connection is gone cannot be kept; nsqd
            // redelivers it, and storing it twice is a no-op.
            if message.touch().is_ok() {
                touched += 1;
            }
        }
        self.metrics.touched(touched);
        touched
    }

    /// REQs each message with the delay `delay` gives it; returns how many.
    fn requeue(
        &self,
        messages: Vec<nsq::Message>,
        delay: impl Fn(&nsq::Message) -> Duration,
    ) -> usize {
        let n = messages.len();
        for message in messages {
            if let Err(gone) = message.req(delay(&message)) {
                // nsqd redelivers it after its timeout anyway.
                debug!(self.logger, "could not requeue a message";
                    "message_id" => %message.id, "error" => %gone);
            }
        }
        self.metrics.requeued(n);
        n
    }

    /// Keeps the consumer paused until [`store::check`] passes again,
    /// requeueing (with their usual delay) the messages already on their
    /// way. Returns false when shutdown was requested first.
    async fn wait_for_database(
        &self,
        inbox: &mut Inbox<'_>,
        shutdown: &CancellationToken,
        cause: &DatabaseError,
        failing_batches: u32,
    ) -> bool {
        self.consumer.pause();
        self.metrics.paused_for_database();
        let held = inbox.drain_all();
        self.requeue(held, |m| requeue_delay(m.attempts));
        warn!(self.logger, "paused taking messages until the database answers";
            "class" => cause.kind.as_str());
        let started = Instant::now();
        let mut reminder = started + PAUSED_REMINDER;
        // A database that passes the check but fails every batch (a missing
        // column, say) is probed less and less often.
        let mut wait = (PROBE_FIRST_WAIT
            * 2u32.saturating_pow(failing_batches.saturating_sub(1).min(8)))
        .min(PROBE_MAX_WAIT);
        loop {
            let wake = Instant::now() + wait;
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return false,
                    Some(message) = inbox.recv() => {
                        self.requeue(vec![message], |m| requeue_delay(m.attempts));
                    }
                    () = sleep_until(wake) => break,
                }
            }
            let probe = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                probe = store::check(self.pool, PROBE_TIMEOUT) => probe,
            };
            match probe {
                Ok(()) => {
                    info!(self.logger, "database answers again, resuming";
                        "paused_ms" => started.elapsed().as_millis(),
                        "failed_batches" => failing_batches);
                    self.consumer.resume();
                    return true;
                }
                Err(e) => {
                    if Instant::now() >= reminder {
                        warn!(self.logger, "still paused: the database is not usable";
                            "error" => &e.message, "class" => e.kind.as_str(),
                            "paused_s" => started.elapsed().as_secs());
                        reminder = Instant::now() + PAUSED_REMINDER;
                    } else {
                        debug!(self.logger, "database still not usable"; "error" => &e.message);
                    }
                    wait = (wait * 2).min(PROBE_MAX_WAIT);
                }
            }
        }
    }

    /// Rests after a batch in which messages failed for an unexpected
    /// reason, touching the messages taken early meanwhile. Returns false
    /// when shutdown was requested first.
    async fn cool_down(
        &self,
        inbox: &mut Inbox<'_>,
        shutdown: &CancellationToken,
        failing_batches: u32,
    ) -> bool {
        let rest =
            (PROBE_FIRST_WAIT * 2u32.saturating_pow(failing_batches.min(8))).min(COOL_DOWN_MAX);
        debug!(self.logger, "resting after a failing batch"; "rest_ms" => rest.as_millis());
        self.consumer.pause();
        let until = Instant::now() + rest;
        loop {
            let next_touch = (Instant::now() + self.settings.touch_interval).min(until);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                () = sleep_until(next_touch) => {
                    inbox.take_waiting();
                    self.touch(inbox.early.iter());
                    if Instant::now() >= until {
                        break;
                    }
                }
            }
        }
        self.consumer.resume();
        true
    }
}

/// Stores a slice of a batch in one transaction: the dead letters, then the
/// events. Duplicates inside the slice are dropped first, because one
/// statement cannot insert (or upsert) the same key twice.
async fn store(pool: &PgPool, items: &[Item]) -> Result<u64, DatabaseError> {
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
        Ok(Err(e)) => Err(DatabaseError::from_sqlx(&e)),
        Err(_) => Err(DatabaseError {
            kind: Failure::Unavailable,
            message: format!("the transaction took longer than {STORE_TIMEOUT:?}"),
        }),
    }
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

    #[test]
    fn messages_are_touched_four_times_per_message_timeout() {
        assert_eq!(
            touch_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            touch_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
    }
}
