//! Distributed tracing with OpenTelemetry, exported over OTLP/HTTP (JSON
//! bodies) to a collector such as Jaeger.
//!
//! Invariant: with `OTEL_EXPORTER_OTLP_ENDPOINT` unset, a [`Tracing`] is
//! disabled and makes no span at all, so tracing off costs nothing; with it
//! set, ending a span never waits for the collector ([`export`]).
//!
//! A service builds one [`Tracing`] at start ([`Tracing::start`]) and
//! passes it down like its logger: there is no global tracer provider, so
//! two services can run in one process (the end-to-end tests do) and still
//! export under their own names. Spans are made with the OpenTelemetry API
//! directly (re-exported as [`crate::opentelemetry`]); the parent of a span
//! is an OpenTelemetry [`Context`], either the current one (attached to a
//! future with `FutureExt::with_context`) or one rebuilt from a W3C
//! `traceparent` ([`remote_context`]), which is how a trace crosses the
//! outbox and NSQ.
//!
//! Log lines join traces through [`SpanIds`], the drain that adds
//! `trace_id` and `span_id` to every line written while a span is current.
//!
//! Layout: `config` (the `OTEL_*` variables), `export` (the bounded queue
//! and the export thread), `log` (the drain).

mod config;
mod export;
mod log;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use slog::Logger;

pub use config::{
    RootSampler, Sampler, TraceConfig, TraceConfigError, ENDPOINT, SAMPLER, SAMPLER_ARG,
    SERVICE_NAME,
};
pub use export::{ExportStats, QueueProcessor, QueueSettings};
pub use log::SpanIds;

/// How long stopping waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection to the collector that takes longer than this is given up;
/// the batch counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Links per span at most. A relay batch links to every event it carries;
/// the default of 128 would cut the default batch of 500.
const MAX_LINKS_PER_SPAN: u32 = 1024;

/// The tracer of one service, or nothing when tracing is off. Cheap to
/// clone; clones share the exporter.
#[derive(Clone, Default)]
pub struct Tracing {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    stats: Arc<ExportStats>,
    service_name: String,
}

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot start the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Tracing {
    /// Makes no spans and exports nothing.
    pub fn disabled() -> Tracing {
        Tracing { inner: None }
    }

    /// Starts exporting to the configured collector, or returns a disabled
    /// handle when no endpoint is configured. `default_name` is the
    /// service name used unless `OTEL_SERVICE_NAME` is set. The collector
    /// is not contacted here: a collector that is away at start is like one
    /// that goes away later (spans are dropped and counted, and it is
    /// logged).
    pub fn start(
        config: &TraceConfig,
        default_name: &str,
        logger: &Logger,
    ) -> Result<Tracing, TraceError> {
        let Some(url) = config.traces_url() else {
            return Ok(Tracing::disabled());
        };
        let settings = QueueSettings::default();
        let client = reqwest::Client::builder()
            .timeout(settings.export_timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let stats = Arc::new(ExportStats::default());
        let service_name = config
            .service_name
            .clone()
            .unwrap_or_else(|| default_name.to_owned());
        let processor = QueueProcessor::start(
            exporter,
            settings,
            Arc::clone(&stats),
            logger.new(slog::o!("component" => "tracing")),
        )?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sdk_sampler(config.sampler))
            .with_max_links_per_span(MAX_LINKS_PER_SPAN)
            // The resource is built here, not from OTEL_RESOURCE_ATTRIBUTES
            // and OTEL_SERVICE_NAME by the SDK: each service in a process
            // gets its own name.
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer(service_name.clone());
        slog::info!(logger, "tracing on: exporting spans over OTLP/HTTP";
            "traces_url" => &url, "service_name" => &service_name,
            "sampler" => %config.sampler);
        Ok(Tracing {
            inner: Some(Arc::new(Inner {
                provider,
                tracer,
                stats,
                service_name,
            })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The tracer to start spans with; `None` when tracing is off.
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.inner.as_deref().map(|inner| &inner.tracer)
    }

    /// What became of the spans; `None` when tracing is off.
    pub fn stats(&self) -> Option<&ExportStats> {
        self.inner.as_deref().map(|inner| inner.stats.as_ref())
    }

    /// Appends the export counters to a Prometheus exposition, named
    /// `{prefix}_trace_…`; nothing when tracing is off.
    pub fn render_metrics(&self, prefix: &str, out: &mut String) {
        if let Some(stats) = self.stats() {
            stats.render(prefix, out);
        }
    }

    /// Exports the spans still queued (waiting at most a few seconds for
    /// the collector) and stops the export thread. Spans ended afterwards
    /// are dropped.
    pub async fn shutdown(&self, logger: &Logger) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        // Blocks until the export thread is done: not on a runtime worker.
        let result = tokio::task::spawn_blocking(move || {
            inner.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        })
        .await;
        match result {
            Ok(Ok(())) => slog::debug!(logger, "tracing stopped; queued spans exported"),
            Ok(Err(error)) => {
                slog::warn!(logger, "tracing stopped; some spans may not have been exported";
                    "error" => %error)
            }
            Err(error) => slog::warn!(logger, "tracing did not stop cleanly"; "error" => %error),
        }
    }
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Tracing(disabled)"),
            Some(inner) => f
                .debug_struct("Tracing")
                .field("service_name", &inner.service_name)
                .field("stats", &inner.stats)
                .finish(),
        }
    }
}

fn sdk_sampler(sampler: Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as Sdk;
    let root = match sampler.root {
        RootSampler::AlwaysOn => Sdk::AlwaysOn,
        RootSampler::AlwaysOff => Sdk::AlwaysOff,
        RootSampler::TraceIdRatio(ratio) => Sdk::TraceIdRatioBased(ratio),
    };
    if sampler.parent_based {
        Sdk::ParentBased(Box::new(root))
    } else {
        root
    }
}

/// The W3C `traceparent` of the span current in `cx`
/// (`00-<trace id>-<span id>-<flags>`), or `None` when there is no span:
/// tracing off, or outside any span.
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.has_active_span() {
        return None;
    }
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// The span context a `traceparent` names, as a remote parent; `None` for
/// anything that is not a valid W3C `traceparent` (version 00, or a later
/// version read as 00 allows: the first four fields).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut fields = value.split('-');
    let (version, trace_id, span_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let rest = fields.next();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace_id, 32) || !hex(span_id, 16) {
        return None;
    }
    if !hex(flags, 2) || (version == "00" && rest.is_some()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    // Only the sampled bit is defined; the others are not carried over.
    let flags = u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8();
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// A context whose parent is the span a `traceparent` names, for starting
/// the spans of work that continues a trace from elsewhere (an HTTP
/// caller, an event in the outbox).
pub fn remote_context(traceparent: &str) -> Option<Context> {
    parse_traceparent(traceparent).map(|parent| Context::new().with_remote_span_context(parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::Tracer as _;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_survives_the_round_trip() {
        let cx = remote_context(PARENT).unwrap();
        assert_eq!(traceparent(&cx).as_deref(), Some(PARENT));
        let parent = parse_traceparent(PARENT).unwrap();
        assert!(parent.is_sampled() && parent.is_remote());
        let unsampled = parse_traceparent(&PARENT.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn anything_but_a_valid_traceparent_is_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may append fields.
        let future = format!("{}-what-comes-next", PARENT.replacen("00", "01", 1));
        assert!(parse_traceparent(&future).is_some());
    }

    #[test]
    fn no_span_means_no_traceparent() {
        assert_eq!(traceparent(&Context::new()), None);
        let tracing =
            Tracing::start(&TraceConfig::disabled(), "svc", &crate::test_logger()).unwrap();
        assert!(!tracing.is_enabled());
        assert!(tracing.tracer().is_none());
    }

    #[test]
    fn the_sampler_decides_new_traces_and_parents_decide_the_rest() {
        let provider = |sampler| {
            SdkTracerProvider::builder()
                .with_sampler(sdk_sampler(sampler))
                .build()
        };
        let off = provider(Sampler {
            parent_based: true,
            root: RootSampler::AlwaysOff,
        });
        let tracer = off.tracer("t");
        let root = tracer.start_with_context("root", &Context::new());
        assert!(!opentelemetry::trace::Span::span_context(&root).is_sampled());
        let child = tracer.start_with_context("child", &remote_context(PARENT).unwrap());
        assert!(opentelemetry::trace::Span::span_context(&child).is_sampled());

        let on = provider(Sampler::default());
        let unsampled_parent = remote_context(&PARENT.replace("-01", "-00")).unwrap();
        let child = on
            .tracer("t")
            .start_with_context("child", &unsampled_parent);
        assert!(!opentelemetry::trace::Span::span_context(&child).is_sampled());
    }
}
