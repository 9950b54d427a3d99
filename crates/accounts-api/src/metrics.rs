//! `/metrics`: the outbox and its relay, in the Prometheus text exposition
//! format 0.0.4.
//!
//! Hand-written, like the consumer's (see its `metrics` module for why): a
//! handful of fixed series. Counters are atomics the relay, the receipt
//! handler and the retention loop add to; they count this process only, from
//! its start, so with several API processes Prometheus sums them. The
//! backlog gauges describe the shared outbox and are read by SQL at scrape
//! time ([`outbox::backlog`](crate::outbox::backlog)), bounded by a
//! statement timeout; when that query fails the gauges are left out and
//! `accounts_api_outbox_backlog_up` says 0.
//!
//! Published per second is `rate(accounts_api_outbox_published_total[1m])`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use telemetry::trace::Tracing;

use crate::outbox::Backlog;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The relay's counters, shared by the background tasks (which count) and
/// the HTTP handler (which renders).
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    republished: AtomicU64,
    parked: AtomicU64,
    publish_failures: AtomicU64,
    confirmed: AtomicU64,
    receipts: AtomicU64,
    receipts_malformed: AtomicU64,
    deleted: AtomicU64,
    /// Whose span export counters to show; disabled shows none.
    tracing: Tracing,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Shows the span export counters of `tracing` too
    /// (`accounts_api_trace_…`, see `telemetry::trace::ExportStats`).
    pub fn with_tracing(mut self, tracing: Tracing) -> Metrics {
        self.tracing = tracing;
        self
    }

    /// Rows published for the first time.
    pub fn published(&self, n: usize) {
        add(&self.published, n);
    }

    /// Rows published again because no receipt came in time.
    pub fn republished(&self, n: usize) {
        add(&self.republished, n);
    }

    /// Rows parked because nsqd can never accept them.
    pub fn parked(&self, n: usize) {
        add(&self.parked, n);
    }

    /// Relay batches that failed (nsqd or the database away) and were
    /// rolled back, to be retried.
    pub fn publish_failed(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Receipts handled (FINed), and the rows they newly confirmed.
    pub fn receipts(&self, receipts: usize, confirmed: u64) {
        add(&self.receipts, receipts);
        self.confirmed.fetch_add(confirmed, Ordering::Relaxed);
    }

    /// Receipts that were not valid (logged and dropped).
    pub fn receipts_malformed(&self, n: usize) {
        add(&self.receipts_malformed, n);
    }

    /// Confirmed rows deleted after the retention window.
    pub fn deleted(&self, n: u64) {
        self.deleted.fetch_add(n, Ordering::Relaxed);
    }

    /// The exposition; `backlog` is `None` when it could not be read.
    pub fn render(&self, backlog: Option<Backlog>) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &AtomicU64); 8] = [
            (
                "accounts_api_outbox_published_total",
                "Outbox rows published to nsqd for the first time (acknowledged by nsqd).",
                &self.published,
            ),
            (
                "accounts_api_outbox_republished_total",
                "Outbox rows published again because their delivery receipt did not come in time.",
                &self.republished,
            ),
            (
                "accounts_api_outbox_parked_total",
                "Outbox rows parked because nsqd can never accept them (too large).",
                &self.parked,
            ),
            (
                "accounts_api_outbox_publish_failures_total",
                "Relay batches rolled back because nsqd or the database failed; retried.",
                &self.publish_failures,
            ),
            (
                "accounts_api_outbox_confirmed_total",
                "Outbox rows confirmed by a delivery receipt.",
                &self.confirmed,
            ),
            (
                "accounts_api_outbox_receipts_total",
                "Delivery receipts handled.",
                &self.receipts,
            ),
            (
                "accounts_api_outbox_receipts_malformed_total",
                "Delivery receipts dropped because they were not valid.",
                &self.receipts_malformed,
            ),
            (
                "accounts_api_outbox_deleted_total",
                "Confirmed outbox rows deleted after the retention window.",
                &self.deleted,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }

        let name = "accounts_api_outbox_backlog_up";
        header(
            &mut out,
            name,
            "1 if the backlog gauges below could be read from the database, else 0.",
            "gauge",
        );
        let _ = writeln!(out, "{name} {}", u8::from(backlog.is_some()));
        if let Some(backlog) = backlog {
            let gauges: [(&str, &str, f64); 5] = [
                (
                    "accounts_api_outbox_pending_rows",
                    "Outbox rows not yet published.",
                    backlog.pending as f64,
                ),
                (
                    "accounts_api_outbox_unconfirmed_rows",
                    "Outbox rows published and waiting for their delivery receipt.",
                    backlog.unconfirmed as f64,
                ),
                (
                    "accounts_api_outbox_parked_rows",
                    "Outbox rows parked for an operator (nsqd can never accept them).",
                    backlog.parked as f64,
                ),
                (
                    "accounts_api_outbox_oldest_pending_seconds",
                    "Age of the oldest outbox row not yet published (0 when none).",
                    backlog.oldest_pending_seconds,
                ),
                (
                    "accounts_api_outbox_oldest_unconfirmed_seconds",
                    "Age of the oldest outbox row published but not yet confirmed (0 when none).",
                    backlog.oldest_unconfirmed_seconds,
                ),
            ];
            for (name, help, value) in gauges {
                header(&mut out, name, help, "gauge");
                let _ = writeln!(out, "{name} {value}");
            }
        }
        self.tracing.render_metrics("accounts_api", &mut out);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn counters_and_the_backlog_are_rendered_with_help_and_type() {
        let metrics = Metrics::new();
        metrics.published(7);
        metrics.republished(2);
        metrics.parked(1);
        metrics.receipts(3, 9);
        metrics.receipts_malformed(1);
        metrics.deleted(1000);
        metrics.publish_failed();
        let text = metrics.render(Some(Backlog {
            pending: 4,
            unconfirmed: 5,
            parked: 1,
            oldest_pending_seconds: 1.5,
            oldest_unconfirmed_seconds: 61.0,
        }));
        for (series, expected) in [
            ("accounts_api_outbox_published_total", 7.0),
            ("accounts_api_outbox_republished_total", 2.0),
            ("accounts_api_outbox_parked_total", 1.0),
            ("accounts_api_outbox_publish_failures_total", 1.0),
            ("accounts_api_outbox_confirmed_total", 9.0),
            ("accounts_api_outbox_receipts_total", 3.0),
            ("accounts_api_outbox_receipts_malformed_total", 1.0),
            ("accounts_api_outbox_deleted_total", 1000.0),
            ("accounts_api_outbox_backlog_up", 1.0),
            ("accounts_api_outbox_pending_rows", 4.0),
            ("accounts_api_outbox_unconfirmed_rows", 5.0),
            ("accounts_api_outbox_parked_rows", 1.0),
            ("accounts_api_outbox_oldest_pending_seconds", 1.5),
            ("accounts_api_outbox_oldest_unconfirmed_seconds", 61.0),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series}\n{text}");
        }
        assert!(text.contains("# TYPE accounts_api_outbox_published_total counter\n"));
        assert!(text.contains("# TYPE accounts_api_outbox_pending_rows gauge\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, number) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("accounts_api_outbox_"), "{line}");
            number.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn an_unreadable_backlog_leaves_its_gauges_out() {
        let text = Metrics::new().render(None);
        assert_eq!(value(&text, "accounts_api_outbox_backlog_up"), Some(0.0));
        assert_eq!(value(&text, "accounts_api_outbox_pending_rows"), None);
        assert_eq!(
            value(&text, "accounts_api_outbox_published_total"),
            Some(0.0)
        );
    }
}
