//! Getting finished spans to the collector without ever making a request
//! wait for it.
//!
//! [`QueueProcessor`] is a batch span processor with the two properties the
//! SDK's own `BatchSpanProcessor` does not expose: every span it cannot
//! deliver is counted ([`ExportStats`], shown on `/metrics`), and it logs a
//! collector that goes away and comes back. Ending a span only pushes it
//! onto a bounded queue under a short lock, or drops it when the queue is
//! full; one thread per service takes batches off the queue and exports
//! them, each export bounded by a timeout. A slow or unreachable collector
//! therefore costs dropped spans, never request latency.
//!
//! The export thread runs its own single-threaded tokio runtime for the
//! exporter's HTTP client, so it depends on nothing of the service's
//! runtime, and flushing at shutdown works after that runtime is gone.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use slog::Logger;

/// How the queue and the export thread behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Spans held at most; beyond it, ended spans are dropped (and counted).
    pub max_queue: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill before it is exported.
    pub delay: Duration,
    /// The longest one export may take; past it the batch counts as failed.
    pub export_timeout: Duration,
}

impl Default for QueueSettings {
    /// The specification's queue and batch sizes; a shorter delay than its
    /// 5 s, so a trace shows up in Jaeger about a second after it ends.
    fn default() -> Self {
        QueueSettings {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// What happened to the spans this process finished (sampled ones only).
/// Counts since the start of the process.
#[derive(Debug, Default)]
pub struct ExportStats {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    failed_exports: AtomicU64,
}

impl ExportStats {
    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped because the queue was full (the collector slow or away).
    pub fn dropped_queue_full(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
    }

    /// Spans lost with an export request that failed or timed out.
    pub fn dropped_export_failed(&self) -> u64 {
        self.dropped_export_failed.load(Ordering::Relaxed)
    }

    /// Export requests that failed or timed out.
    pub fn failed_exports(&self) -> u64 {
        self.failed_exports.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format, named `{prefix}_trace_…`.
    pub fn render(&self, prefix: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {prefix}_trace_spans_exported_total Spans accepted by the OTLP collector.\n\
             # TYPE {prefix}_trace_spans_exported_total counter\n\
             {prefix}_trace_spans_exported_total {}",
            self.exported()
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_trace_spans_dropped_total Spans never exported: the queue was full \
             (collector slow or away) or their export failed.\n\
             # TYPE {prefix}_trace_spans_dropped_total counter\n\
             {prefix}_trace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
             {prefix}_trace_spans_dropped_total{{reason=\"export_failed\"}} {}",
            self.dropped_queue_full(),
            self.dropped_export_failed()
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_trace_export_failures_total OTLP export requests that failed or timed out.\n\
             # TYPE {prefix}_trace_export_failures_total counter\n\
             {prefix}_trace_export_failures_total {}",
            self.failed_exports()
        );
    }
}

/// The queue between the threads that end spans and the export thread.
#[derive(Debug, Default)]
struct Queue {
    spans: VecDeque<SpanData>,
    /// Callers of `force_flush`/`shutdown` waiting for the queue to empty.
    flushes: Vec<mpsc::SyncSender<()>>,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Arc<ExportStats>,
    settings: QueueSettings,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a queue of plain data;
        // tracing is not worth stopping the service for.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batch span processor with a bounded queue and counted drops.
#[derive(Debug)]
pub struct QueueProcessor<E: SpanExporter + 'static> {
    shared: Arc<Shared>,
    exporter: Arc<Mutex<E>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<E: SpanExporter + 'static> QueueProcessor<E> {
    /// Starts the export thread. Fails only if the thread or its runtime
    /// cannot be created.
    pub fn start(
        exporter: E,
        settings: QueueSettings,
        stats: Arc<ExportStats>,
        logger: Logger,
    ) -> std::io::Result<QueueProcessor<E>> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats,
            settings,
        });
        let exporter = Arc::new(Mutex::new(exporter));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let worker = std::thread::Builder::new()
            .name("span-export".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let exporter = Arc::clone(&exporter);
                move || export_loop(&shared, &exporter, &runtime, &logger)
            })?;
        Ok(QueueProcessor {
            shared,
            exporter,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Asks the export thread to send everything queued now, and waits for
    /// it (at most `timeout`).
    fn flush(&self, timeout: Duration, shutdown: bool) -> OTelSdkResult {
        let (done, wait) = mpsc::sync_channel(1);
        {
            let mut queue = self.shared.lock();
            if queue.shutdown && !shutdown {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            queue.flushes.push(done);
            queue.shutdown |= shutdown;
        }
        self.shared.wake.notify_all();
        match wait.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            // The thread has ended (a second shutdown): nothing is left.
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

impl<E: SpanExporter + 'static> SpanProcessor for QueueProcessor<E> {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // Unsampled spans are not recorded; only sampled ones reach here,
        // but the check keeps the promise local.
        if !span.span_context.is_sampled() {
            return;
        }
        let mut queue = self.shared.lock();
        if queue.shutdown || queue.spans.len() >= self.shared.settings.max_queue {
            drop(queue);
            self.shared
                .stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.spans.push_back(span);
        let full_batch = queue.spans.len() >= self.shared.settings.max_batch;
        drop(queue);
        if full_batch {
            self.shared.wake.notify_all();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(self.shared.settings.export_timeout * 2, false)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let flushed = self.flush(timeout, true);
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Joined only once the thread said it is done, so this cannot hang.
        // When the flush timed out, the thread is left to finish its last
        // export on its own (bounded by the export timeout), and holds the
        // exporter until then.
        if let (Ok(()), Some(worker)) = (&flushed, worker) {
            let _ = worker.join();
            let mut exporter = self.exporter.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = exporter.shutdown_with_timeout(timeout);
        }
        flushed
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_resource(resource);
    }
}

/// The export thread: waits for a full batch, the delay, a flush or the
/// shutdown; exports; repeats. On shutdown it exports what is left and
/// ends.
fn export_loop<E: SpanExporter>(
    shared: &Shared,
    exporter: &Mutex<E>,
    runtime: &tokio::runtime::Runtime,
    logger: &Logger,
) {
    let settings = shared.settings;
    let mut failing = false;
    loop {
        let (batch, flushes, shutdown) = {
            let mut queue = shared.lock();
            let deadline = Instant::now() + settings.delay;
            loop {
                let now = Instant::now();
                if queue.spans.len() >= settings.max_batch
                    || !queue.flushes.is_empty()
                    || queue.shutdown
                    || now >= deadline
                {
                    break;
                }
                queue = shared
                    .wake
                    .wait_timeout(queue, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // A flush empties the whole queue, in batches; otherwise one
            // batch goes out per turn.
            let draining = !queue.flushes.is_empty() || queue.shutdown;
            let take = if draining {
                queue.spans.len()
            } else {
                queue.spans.len().min(settings.max_batch)
            };
            let batch: Vec<SpanData> = queue.spans.drain(..take).collect();
            (batch, std::mem::take(&mut queue.flushes), queue.shutdown)
        };
        for chunk in chunks(batch, settings.max_batch) {
            export(shared, exporter, runtime, chunk, &mut failing, logger);
        }
        for done in flushes {
            let _ = done.try_send(());
        }
        if shutdown {
            return;
        }
    }
}

fn chunks(mut spans: Vec<SpanData>, size: usize) -> Vec<Vec<SpanData>> {
    let mut chunks = Vec::new();
    while spans.len() > size {
        let rest = spans.split_off(size);
        chunks.push(std::mem::replace(&mut spans, rest));
    }
    if !spans.is_empty() {
        chunks.push(spans);
    }
    chunks
}

fn export<E: SpanExporter>(
    shared: &Shared,
    exporter: &Mutex<E>,
    runtime: &tokio::runtime::Runtime,
    batch: Vec<SpanData>,
    failing: &mut bool,
    logger: &Logger,
) {
    let n = batch.len() as u64;
    let timeout = shared.settings.export_timeout;
    let result = {
        let exporter = exporter.lock().unwrap_or_else(PoisonError::into_inner);
        runtime.block_on(async {
            match tokio::time::timeout(timeout, exporter.export(batch)).await {
                Ok(result) => result,
                Err(_) => Err(OTelSdkError::Timeout(timeout)),
            }
        })
    };
    let stats = &shared.stats;
    match result {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
            if *failing {
                *failing = false;
                slog::info!(logger, "span export works again");
            }
        }
        Err(error) => {
            stats.failed_exports.fetch_add(1, Ordering::Relaxed);
            stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
            if !*failing {
                *failing = true;
                // Once per outage: the counters on /metrics tell the rest.
                slog::warn!(logger, "cannot export spans to the OTLP collector; dropping them until it answers";
                    "error" => %error, "spans" => n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use std::sync::atomic::AtomicBool;

    /// Records what it was given; optionally blocks each export until
    /// released, like a collector that does not answer.
    #[derive(Debug, Default)]
    struct Recorder {
        spans: Arc<Mutex<Vec<String>>>,
        stuck: Arc<AtomicBool>,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            while self.stuck.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut spans = self.spans.lock().unwrap();
            spans.extend(batch.into_iter().map(|s| s.name.into_owned()));
            Ok(())
        }
    }

    fn provider(
        recorder: Recorder,
        settings: QueueSettings,
    ) -> (SdkTracerProvider, Arc<ExportStats>) {
        let stats = Arc::new(ExportStats::default());
        let processor =
            QueueProcessor::start(recorder, settings, Arc::clone(&stats), crate::test_logger())
                .unwrap();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        (provider, stats)
    }

    #[test]
    fn ended_spans_are_exported_on_flush_and_at_shutdown() {
        let recorder = Recorder::default();
        let spans = Arc::clone(&recorder.spans);
        let settings = QueueSettings {
            delay: Duration::from_secs(60),
            ..QueueSettings::default()
        };
        let (provider, stats) = provider(recorder, settings);
        let tracer = provider.tracer("test");
        tracer.start("first").end();
        provider.force_flush().unwrap();
        assert_eq!(*spans.lock().unwrap(), ["first"]);
        tracer.start("second").end();
        provider.shutdown().unwrap();
        assert_eq!(*spans.lock().unwrap(), ["first", "second"]);
        assert_eq!(stats.exported(), 2);
        assert_eq!(stats.dropped_queue_full(), 0);
    }

    #[test]
    fn a_collector_that_does_not_answer_costs_dropped_spans_not_time() {
        let recorder = Recorder::default();
        let stuck = Arc::clone(&recorder.stuck);
        stuck.store(true, Ordering::Relaxed);
        let settings = QueueSettings {
            max_queue: 100,
            max_batch: 10,
            delay: Duration::from_millis(10),
            export_timeout: Duration::from_millis(300),
        };
        let (provider, stats) = provider(recorder, settings);
        let tracer = provider.tracer("test");

        let started = Instant::now();
        for _ in 0..1000 {
            tracer.start("request").end();
        }
        // A thousand spans end in well under the export timeout, although
        // not one export has finished.
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        assert!(stats.dropped_queue_full() >= 800, "{stats:?}");

        // Stuck exports time out and their spans are counted as lost.
        std::thread::sleep(Duration::from_millis(700));
        assert!(stats.failed_exports() >= 1, "{stats:?}");
        assert!(stats.dropped_export_failed() >= 10, "{stats:?}");

        stuck.store(false, Ordering::Relaxed);
        let _ = provider.shutdown();
        let ended = stats.exported() + stats.dropped_queue_full() + stats.dropped_export_failed();
        assert_eq!(ended, 1000, "every span is exported or counted: {stats:?}");
    }

    #[test]
    fn the_counters_render_as_prometheus_counters() {
        let stats = ExportStats::default();
        stats.dropped_queue_full.store(3, Ordering::Relaxed);
        let mut out = String::new();
        stats.render("svc", &mut out);
        assert!(out.contains("# TYPE svc_trace_spans_dropped_total counter\n"));
        assert!(out.contains("svc_trace_spans_dropped_total{reason=\"queue_full\"} 3\n"));
        assert!(out.contains("svc_trace_spans_exported_total 0\n"));
        assert!(out.ends_with('\n'));
    }
}
