//! The OTLP exporter against a real receiver (testkit's), and against a
//! collector that is not there.

// Helpers outside the test functions fail the test loudly too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use telemetry::opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
use telemetry::opentelemetry::{Context, KeyValue};
use telemetry::trace::{self, TraceConfig, Tracing};

fn config(endpoint: &str, extra: &[(&str, &str)]) -> TraceConfig {
    let mut vars = vec![(trace::ENDPOINT, endpoint)];
    vars.extend_from_slice(extra);
    TraceConfig::from_vars(vars).unwrap()
}

#[tokio::test]
async fn spans_reach_the_receiver_with_their_service_name_parent_and_attributes() {
    let receiver = testkit::OtlpReceiver::start().unwrap();
    let logger = telemetry::test_logger();
    let tracing = Tracing::start(&config(&receiver.endpoint(), &[]), "svc", &logger).unwrap();
    let tracer = tracing.tracer().unwrap();

    let parent = tracer
        .span_builder("request")
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("actor.id", "alice")])
        .start(tracer);
    let cx = Context::current_with_span(parent);
    let header = trace::traceparent(&cx).unwrap();
    let mut child = tracer.start_with_context("store", &trace::remote_context(&header).unwrap());
    child.set_attribute(KeyValue::new("rows", 3));
    child.end();
    cx.span().end();
    tracing.shutdown(&logger).await;

    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| spans.len() == 2)
        .unwrap();
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    let store = spans.iter().find(|s| s.name == "store").unwrap();
    assert_eq!(request.service_name, "svc");
    assert_eq!(request.kind, 2);
    assert_eq!(request.attribute_str("actor.id"), Some("alice"));
    assert_eq!(store.trace_id, request.trace_id);
    assert_eq!(
        store.parent_span_id.as_deref(),
        Some(request.span_id.as_str())
    );
    assert_eq!(store.attribute_i64("rows"), Some(3));
    assert_eq!(
        header,
        format!("00-{}-{}-01", request.trace_id, request.span_id)
    );
    assert_eq!(tracing.stats().unwrap().exported(), 2);
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
}

#[tokio::test]
async fn otel_service_name_overrides_the_default_and_always_off_exports_nothing() {
    let receiver = testkit::OtlpReceiver::start().unwrap();
    let logger = telemetry::test_logger();
    let named = Tracing::start(
        &config(&receiver.endpoint(), &[(trace::SERVICE_NAME, "renamed")]),
        "svc",
        &logger,
    )
    .unwrap();
    named.tracer().unwrap().start("kept").end();
    named.shutdown(&logger).await;
    let off = Tracing::start(
        &config(&receiver.endpoint(), &[(trace::SAMPLER, "always_off")]),
        "svc",
        &logger,
    )
    .unwrap();
    off.tracer().unwrap().start("not sampled").end();
    off.shutdown(&logger).await;

    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].service_name, "renamed");
    assert_eq!(off.stats().unwrap().exported(), 0);
}

#[tokio::test]
async fn an_unreachable_collector_is_counted_and_never_waited_for() {
    // A port nothing listens on: every export fails at once.
    let endpoint = format!("http://127.0.0.1:{}", testkit::free_port());
    let logger = telemetry::test_logger();
    let tracing = Tracing::start(&config(&endpoint, &[]), "svc", &logger).unwrap();
    let tracer = tracing.tracer().unwrap();
    let started = Instant::now();
    for _ in 0..5000 {
        tracer.start("request").end();
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    tracing.shutdown(&logger).await;

    let stats = tracing.stats().unwrap();
    assert_eq!(stats.exported(), 0);
    assert!(stats.failed_exports() >= 1, "{stats:?}");
    assert_eq!(
        stats.dropped_queue_full() + stats.dropped_export_failed(),
        5000,
        "{stats:?}"
    );
    let mut metrics = String::new();
    tracing.render_metrics("svc", &mut metrics);
    assert!(
        metrics.contains("svc_trace_export_failures_total "),
        "{metrics}"
    );
}
