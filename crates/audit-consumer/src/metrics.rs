//! `/metrics`: what the consumer has done, in the Prometheus text exposition
//! format 0.0.4.
//!
//! Hand-written rather than built on `prometheus-client`: the consumer
//! exposes a dozen series with fixed names, one of them with a label of four
//! known values, and two histograms with fixed buckets. Atomics cover that
//! without a lock on the hot path, the text format is a few `writeln!`s, and
//! the unit tests below pin the output. A registry crate would bring its
//! own encoding machinery (and one more dependency to audit) for less code
//! than it replaces. Should the service grow labelled families or many
//! more series, switching is local to this module.
//!
//! Counters only grow (`_total`), from process start; Prometheus handles the
//! reset at a restart. Gauges (connections, paused) are read when scraped.
//! With tracing on, the span export counters follow
//! (`audit_consumer_trace_…`, see `telemetry::trace::ExportStats`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use telemetry::trace::Tracing;

use crate::store::Failure;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of the batch size histogram (messages per batch): from a
/// lone message up to the largest `BATCH_SIZE` the configuration accepts.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2500.0, 10000.0,
];

/// Bucket bounds of the store latency histogram, in seconds: a healthy batch
/// commits in milliseconds; the top buckets show a database that is slow
/// enough for the writer to TOUCH its messages (or give up at 30 s).
const STORE_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every failure class, in the order they are exposed.
const FAILURES: [Failure; 4] = [
    Failure::Unavailable,
    Failure::Refused,
    Failure::Configuration,
    Failure::Other,
];

/// The consumer's counters and histograms, shared by the batch writer (which
/// records) and the HTTP handler (which renders).
#[derive(Debug)]
pub struct Metrics {
    received: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    requeued: AtomicU64,
    dead_lettered: AtomicU64,
    touched: AtomicU64,
    pauses: AtomicU64,
    store_failures: [AtomicU64; FAILURES.len()],
    batch_size: Histogram,
    store_seconds: Histogram,
    /// Whose span export counters to show; disabled shows none.
    tracing: Tracing,
}

/// Values read at scrape time rather than counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// nsqd connections currently subscribed.
    pub nsq_connections: usize,
    /// Whether the consumer holds RDY 0 (database away, cooling down, or
    /// stopping).
    pub paused: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            received: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            touched: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            store_failures: Default::default(),
            batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
            store_seconds: Histogram::new(STORE_SECONDS_BUCKETS),
            tracing: Tracing::disabled(),
        }
    }

    /// Shows the span export counters of `tracing` too.
    pub fn with_tracing(mut self, tracing: Tracing) -> Metrics {
        self.tracing = tracing;
        self
    }

    /// Messages taken from nsqd.
    pub fn received(&self, n: usize) {
        add(&self.received, n);
    }

    /// Rows newly inserted into `audit_logs`.
    pub fn stored(&self, n: u64) {
        self.stored.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages finished whose event was already stored (a redelivery, a
    /// republication, or the same event twice in one batch).
    pub fn duplicates(&self, n: usize) {
        add(&self.duplicates, n);
    }

    /// Messages handed back to nsqd (REQ) for a later attempt.
    pub fn requeued(&self, n: usize) {
        add(&self.requeued, n);
    }

    /// Messages finished because they are in `audit_dead_letters`.
    pub fn dead_lettered(&self, n: usize) {
        add(&self.dead_lettered, n);
    }

    /// TOUCH commands sent while a slow batch held its messages.
    pub fn touched(&self, n: usize) {
        add(&self.touched, n);
    }

    /// The writer stopped taking messages (RDY 0) until the database answers.
    pub fn paused_for_database(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// A store transaction failed.
    pub fn store_failed(&self, failure: Failure) {
        if let Some(i) = FAILURES.iter().position(|f| *f == failure) {
            self.store_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch of `n` messages was taken.
    pub fn batch(&self, n: usize) {
        self.batch_size.observe(n as f64);
    }

    /// A store transaction committed after `elapsed`.
    pub fn store_latency(&self, elapsed: Duration) {
        self.store_seconds.observe(elapsed.as_secs_f64());
    }

    /// The exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "audit_consumer_messages_received_total",
                "Messages received from nsqd.",
                &self.received,
            ),
            (
                "audit_consumer_events_stored_total",
                "Events newly stored in audit_logs.",
                &self.stored,
            ),
            (
                "audit_consumer_duplicates_skipped_total",
                "Messages finished whose event_id was already stored.",
                &self.duplicates,
            ),
            (
                "audit_consumer_messages_requeued_total",
                "Messages handed back to nsqd (REQ) for a later attempt.",
                &self.requeued,
            ),
            (
                "audit_consumer_messages_dead_lettered_total",
                "Messages finished because they were written to audit_dead_letters.",
                &self.dead_lettered,
            ),
            (
                "audit_consumer_messages_touched_total",
                "TOUCH commands sent to keep messages of a slow batch from timing out.",
                &self.touched,
            ),
            (
                "audit_consumer_database_pauses_total",
                "Times the consumer stopped taking messages until the database answered again.",
                &self.pauses,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }

        let name = "audit_consumer_store_failures_total";
        header(
            &mut out,
            name,
            "Store transactions that failed, by class: unavailable (retried after a pause), \
             refused (the row is dead-lettered), configuration (schema or permissions), other.",
            "counter",
        );
        for (failure, value) in FAILURES.iter().zip(&self.store_failures) {
            let _ = writeln!(
                out,
                "{name}{{class=\"{}\"}} {}",
                failure.as_str(),
                value.load(Ordering::Relaxed)
            );
        }

        self.batch_size.render(
            &mut out,
            "audit_consumer_batch_size",
            "Messages per batch taken from nsqd.",
        );
        self.store_seconds.render(
            &mut out,
            "audit_consumer_store_duration_seconds",
            "Time to store a batch, from BEGIN to COMMIT (committed transactions).",
        );

        let gauges: [(&str, &str, u64); 2] = [
            (
                "audit_consumer_nsq_connections",
                "nsqd connections currently subscribed.",
                u64::try_from(gauges.nsq_connections).unwrap_or(u64::MAX),
            ),
            (
                "audit_consumer_paused",
                "1 while the consumer takes no messages (RDY 0), else 0.",
                u64::from(gauges.paused),
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        self.tracing.render_metrics("audit_consumer", &mut out);
        out
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A histogram with fixed upper bounds. Buckets are counted one by one and
/// summed up when rendered, so an observation costs two atomic adds and a
/// compare-and-swap on the sum.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` counts; the last one is above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// `_bucket` lines are cumulative, and `_count` equals the `+Inf`
    /// bucket, as the format requires, even while observations race.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counters_and_gauges_are_rendered_with_help_and_type() {
        let metrics = Metrics::new();
        metrics.received(12);
        metrics.stored(9);
        metrics.duplicates(1);
        metrics.requeued(2);
        metrics.dead_lettered(1);
        metrics.store_failed(Failure::Refused);
        metrics.store_failed(Failure::Refused);
        let text = metrics.render(Gauges {
            nsq_connections: 2,
            paused: true,
        });
        assert_eq!(value(&text, "audit_consumer_messages_received_total"), 12.0);
        assert_eq!(value(&text, "audit_consumer_events_stored_total"), 9.0);
        assert_eq!(value(&text, "audit_consumer_duplicates_skipped_total"), 1.0);
        assert_eq!(value(&text, "audit_consumer_messages_requeued_total"), 2.0);
        assert_eq!(
            value(&text, "audit_consumer_messages_dead_lettered_total"),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"audit_consumer_store_failures_total{class="refused"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"audit_consumer_store_failures_total{class="unavailable"}"#
            ),
            0.0
        );
        assert_eq!(value(&text, "audit_consumer_nsq_connections"), 2.0);
        assert_eq!(value(&text, "audit_consumer_paused"), 1.0);
        assert!(text.contains("# TYPE audit_consumer_messages_received_total counter\n"));
        assert!(text.contains("# TYPE audit_consumer_paused gauge\n"));
        // Every sample line is `name[{labels}] value`; every name is ours.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, number) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("audit_consumer_"), "{line}");
            number.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn histograms_are_cumulative_and_count_every_observation() {
        let metrics = Metrics::new();
        for n in [1, 3, 3, 500, 20_000] {
            metrics.batch(n);
        }
        metrics.store_latency(Duration::from_millis(4));
        metrics.store_latency(Duration::from_secs(40));
        let text = metrics.render(Gauges {
            nsq_connections: 0,
            paused: false,
        });
        let batch = "audit_consumer_batch_size";
        assert!(text.contains(&format!("# TYPE {batch} histogram\n")));
        assert_eq!(value(&text, &format!(r#"{batch}_bucket{{le="1"}}"#)), 1.0);
        assert_eq!(value(&text, &format!(r#"{batch}_bucket{{le="2"}}"#)), 1.0);
        assert_eq!(value(&text, &format!(r#"{batch}_bucket{{le="5"}}"#)), 3.0);
        assert_eq!(value(&text, &format!(r#"{batch}_bucket{{le="500"}}"#)), 4.0);
        assert_eq!(
            value(&text, &format!(r#"{batch}_bucket{{le="10000"}}"#)),
            4.0
        );
        assert_eq!(
            value(&text, &format!(r#"{batch}_bucket{{le="+Inf"}}"#)),
            5.0
        );
        assert_eq!(value(&text, &format!("{batch}_count")), 5.0);
        assert_eq!(value(&text, &format!("{batch}_sum")), 20_507.0);

        let store = "audit_consumer_store_duration_seconds";
        assert_eq!(
            value(&text, &format!(r#"{store}_bucket{{le="0.0025"}}"#)),
            0.0
        );
        assert_eq!(
            value(&text, &format!(r#"{store}_bucket{{le="0.005"}}"#)),
            1.0
        );
        assert_eq!(value(&text, &format!(r#"{store}_bucket{{le="30"}}"#)), 1.0);
        assert_eq!(
            value(&text, &format!(r#"{store}_bucket{{le="+Inf"}}"#)),
            2.0
        );
        assert!((value(&text, &format!("{store}_sum")) - 40.004).abs() < 1e-9);
    }
}
