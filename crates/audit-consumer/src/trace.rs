//! Tracing in the consumer: a span per stored batch, and per event a span
//! under the request span its `traceparent` names, so one trace runs from
//! the API's request to the row in `audit_logs`.
//!
//! The event span starts when nsqd received the message (its timestamp, the
//! relay's publish) and ends when the batch is answered, with events for
//! the moment the consumer took the batch and for the COMMIT; attributes
//! give the waits in milliseconds: in the outbox (from the event's
//! `occurred_at` to nsqd), in nsqd, and end to end. In a trace view the gap
//! between the request span and the event span is the outbox wait.
//!
//! With tracing off these functions do nothing; the consumer follows the
//! API's sampling decision through the `traceparent`'s flags.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audit_event::AuditEvent;
use telemetry::opentelemetry::trace::{
    Link, Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use telemetry::opentelemetry::{Context, KeyValue};
use telemetry::trace::{self as otel, Tracing};

use crate::batch::Report;

/// When the batch was taken from the receiver, kept in the batch's context.
#[derive(Debug, Clone, Copy)]
struct BatchStarted(SystemTime);

/// What became of an event's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its event is in `audit_logs` (stored now or before), and it was FINed.
    Stored,
    /// Handed back to nsqd for a later attempt.
    Requeued,
}

impl Fate {
    fn as_str(self) -> &'static str {
        match self {
            Fate::Stored => "stored",
            Fate::Requeued => "requeued",
        }
    }
}

/// Starts the span of a batch of `messages` messages, as a new trace; the
/// context to run the batch in. `None` with tracing off.
pub fn start_batch(tracing: &Tracing, messages: usize) -> Option<Context> {
    let tracer = tracing.tracer()?;
    let now = SystemTime::now();
    let span = tracer
        .span_builder("store batch")
        .with_kind(SpanKind::Consumer)
        .with_start_time(now)
        .with_attributes([
            KeyValue::new("messaging.system", "nsq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.batch.message_count", messages as i64),
        ])
        .start_with_context(tracer, &Context::new());
    Some(Context::new().with_span(span).with_value(BatchStarted(now)))
}

/// Ends the batch span with what the batch did.
pub fn end_batch(cx: &Context, report: &Report) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("batch.inserted", report.inserted as i64));
    span.set_attribute(KeyValue::new("batch.stored", report.stored as i64));
    span.set_attribute(KeyValue::new(
        "batch.dead_lettered",
        report.dead_lettered as i64,
    ));
    span.set_attribute(KeyValue::new("batch.requeued", report.requeued as i64));
    if let Some(cause) = &report.pause_for {
        span.set_status(Status::error(format!(
            "database {}: {}",
            cause.kind.as_str(),
            cause.message
        )));
    }
    span.end();
}

/// Records the span of each event that carries a `traceparent`, once the
/// batch's fate is known; runs in the batch's context (see [`start_batch`]),
/// which the spans link to. Does nothing with tracing off.
pub fn record_events<'a>(
    tracing: &Tracing,
    events: impl Iterator<Item = (&'a nsq::Message, &'a AuditEvent, Fate)>,
) {
    let Some(tracer) = tracing.tracer() else {
        return;
    };
    let batch = Context::current();
    let answered = SystemTime::now();
    let received = batch
        .get::<BatchStarted>()
        .map_or(answered, |started| started.0);
    let batch_link = batch
        .has_active_span()
        .then(|| Link::with_context(batch.span().span_context().clone()));

    for (message, event, fate) in events {
        let Some(parent) = event.traceparent.as_deref().and_then(otel::remote_context) else {
            continue;
        };
        let occurred = SystemTime::from(event.occurred_at);
        // nsqd's clock, or a message from a clock ahead of ours: never let
        // the span start after it ended.
        let published = nsq_time(message.timestamp_ns).map_or(received, |t| t.min(received));
        let mut attributes = vec![
            KeyValue::new("messaging.system", "nsq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.message.id", message.id.to_string()),
            KeyValue::new("nsq.attempts", i64::from(message.attempts)),
            KeyValue::new("audit.event_id", event.event_id.to_string()),
            KeyValue::new("audit.action", event.action.clone()),
            KeyValue::new("store.result", fate.as_str()),
            KeyValue::new("queue.outbox_wait_ms", millis_between(occurred, published)),
            KeyValue::new("queue.nsq_wait_ms", millis_between(published, received)),
        ];
        if fate == Fate::Stored {
            attributes.push(KeyValue::new(
                "queue.end_to_end_ms",
                millis_between(occurred, answered),
            ));
        }
        let mut span = tracer
            .span_builder("store audit event")
            .with_kind(SpanKind::Consumer)
            .with_start_time(published)
            .with_attributes(attributes)
            .with_links(batch_link.iter().cloned().collect())
            .start_with_context(tracer, &parent);
        span.add_event_with_timestamp("taken by the consumer", received, vec![]);
        match fate {
            Fate::Stored => span.add_event_with_timestamp("committed", answered, vec![]),
            Fate::Requeued => span.set_status(Status::error("not stored; requeued")),
        }
        span.end_with_timestamp(answered);
    }
}

/// nsqd's timestamp (nanoseconds since the epoch) as a time.
fn nsq_time(timestamp_ns: i64) -> Option<SystemTime> {
    let nanos = u64::try_from(timestamp_ns).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// Whole milliseconds from `from` to `to`; 0 when clocks disagree.
fn millis_between(from: SystemTime, to: SystemTime) -> i64 {
    to.duration_since(from)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsq_timestamps_become_times_and_waits_never_go_negative() {
        let t = nsq_time(1_700_000_000_123_000_000).unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_nanos(1_700_000_000_123_000_000)
        );
        assert_eq!(nsq_time(-1), None);
        let later = t + Duration::from_millis(1500);
        assert_eq!(millis_between(t, later), 1500);
        assert_eq!(millis_between(later, t), 0);
    }

    #[test]
    fn with_tracing_off_no_batch_span_is_started() {
        assert!(start_batch(&Tracing::disabled(), 3).is_none());
    }
}
