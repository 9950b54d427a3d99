//! Tracing in the API: a server span per request, the `traceparent` each
//! audit event carries, and the relay's publish spans.
//!
//! - [`middleware`] starts the server span of a request (continuing the
//!   caller's trace when it sends a valid `traceparent` header) and makes it
//!   the current span while the request is handled, so log lines carry its
//!   ids and the audit step finds it.
//! - The audit step writes [`current_traceparent`] into the event, in the
//!   transaction that writes the outbox row; [`annotate_event`] adds who did
//!   what to which resource to the span.
//! - [`PublishSpans`] covers one relay batch: a span for the batch, linked
//!   to the request span of every event it carries, and per event a
//!   producer span under that request span, so the request's trace shows
//!   when its event was published.
//!
//! With tracing off (no `OTEL_EXPORTER_OTLP_ENDPOINT`) none of this makes a
//! span, and events carry no `traceparent`.

use std::collections::HashMap;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpRequest};
use audit_event::AuditEvent;
use serde::Deserialize;
use telemetry::opentelemetry::context::FutureExt as _;
use telemetry::opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt as _, Tracer as _};
use telemetry::opentelemetry::{Context, KeyValue};
use telemetry::trace::{self as otel, Tracing};
use uuid::Uuid;

use crate::outbox::Pending;
use crate::request_id;

/// Probes that would bury the interesting traces under their own: the
/// orchestrator's health checks and Prometheus' scrapes.
const UNTRACED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// Longest path recorded on a span, in bytes.
const MAX_PATH_BYTES: usize = 256;

/// Starts the server span of each request; registered with
/// `from_fn(trace::middleware)`, outside the request id middleware so that
/// the id is known when the span ends. Reads the [`Tracing`] from the app
/// data; without one, or with tracing off, it only passes the request on.
pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let tracer = request
        .app_data::<web::Data<Tracing>>()
        .and_then(|tracing| tracing.tracer().cloned());
    let Some(tracer) = tracer.filter(|_| !UNTRACED_PATHS.contains(&request.path())) else {
        return next.call(request).await;
    };

    // A caller's trace is continued; an invalid header is ignored.
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(otel::remote_context)
        .unwrap_or_default();
    let method = request.method().as_str().to_owned();
    let span = tracer
        .span_builder(method.clone())
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", truncate(request.path(), MAX_PATH_BYTES)),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);

    let result = next.call(request).with_context(cx.clone()).await;

    let span = cx.span();
    let (status, request_id) = match &result {
        Ok(response) => {
            let route = response.request().match_pattern();
            if let Some(route) = &route {
                span.update_name(format!("{method} {route}"));
                span.set_attribute(KeyValue::new("http.route", route.clone()));
            }
            if let Some(id) = account_id(response.request(), route.as_deref()) {
                span.set_attribute(KeyValue::new("account.id", id.to_string()));
            }
            (response.status(), header_text(response.headers()))
        }
        Err(error) => {
            let response = error.error_response();
            (response.status(), header_text(response.headers()))
        }
    };
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if let Some(id) = request_id {
        span.set_attribute(KeyValue::new("request.id", id));
    }
    if status.is_server_error() {
        span.set_status(Status::error(
            status.canonical_reason().unwrap_or("server error"),
        ));
    }
    span.end();
    result
}

/// The request id the request id middleware put on the response.
fn header_text(headers: &actix_web::http::header::HeaderMap) -> Option<String> {
    let value = headers.get(request_id::HEADER)?.to_str().ok()?;
    Some(value.to_owned())
}

/// The account a request is about: the `{id}` of an `/accounts/{id}…`
/// route, when it is a UUID (in its canonical form).
fn account_id(request: &HttpRequest, route: Option<&str>) -> Option<Uuid> {
    if !route?.starts_with("/accounts/{id}") {
        return None;
    }
    Uuid::try_parse(request.match_info().get("id")?).ok()
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The `traceparent` of the current span: the request's, inside a traced
/// request; `None` with tracing off. What the audit step writes into the
/// event.
pub fn current_traceparent() -> Option<String> {
    otel::traceparent(&Context::current())
}

/// Adds the audited facts to the current span (the request's): who, what,
/// on which resource, with what outcome, and the event's id.
pub fn annotate_event(event: &AuditEvent) {
    let cx = Context::current();
    if !cx.has_active_span() {
        return;
    }
    let span = cx.span();
    span.set_attribute(KeyValue::new("actor.id", event.actor.id.clone()));
    span.set_attribute(KeyValue::new("actor.type", event.actor.kind.as_str()));
    span.set_attribute(KeyValue::new(
        format!("{}.id", event.resource.kind),
        event.resource.id.clone(),
    ));
    span.set_attribute(KeyValue::new("audit.event_id", event.event_id.to_string()));
    span.set_attribute(KeyValue::new("audit.action", event.action.clone()));
    span.set_attribute(KeyValue::new("audit.outcome", event.outcome.as_str()));
}

/// The fields of an outbox payload the relay's spans need; the rest of the
/// event is not parsed.
#[derive(Deserialize)]
struct Carried {
    event_id: Option<Uuid>,
    traceparent: Option<String>,
}

/// The spans of one relay batch. They end when it is dropped: as published
/// after [`PublishSpans::published`], as failed otherwise (the batch was
/// rolled back and its rows are due again).
#[derive(Default)]
pub struct PublishSpans {
    batch: Option<Context>,
    /// Per outbox row id, the producer span under the event's request span.
    events: HashMap<i64, Context>,
    published: bool,
}

impl PublishSpans {
    /// Starts the batch's spans; does nothing with tracing off.
    pub fn start(tracing: &Tracing, topic: &nsq::Topic, rows: &[Pending]) -> PublishSpans {
        let Some(tracer) = tracing.tracer() else {
            return PublishSpans::default();
        };
        let messaging = [
            KeyValue::new("messaging.system", "nsq"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.as_str().to_owned()),
        ];
        let carried: Vec<(&Pending, Option<Uuid>, Option<Context>)> = rows
            .iter()
            .map(|row| {
                let carried = serde_json::from_str::<Carried>(&row.payload).ok();
                let (event_id, parent) = carried.map_or((None, None), |c| {
                    (
                        c.event_id,
                        c.traceparent.as_deref().and_then(otel::remote_context),
                    )
                });
                (row, event_id, parent)
            })
            .collect();
        let links = carried
            .iter()
            .filter_map(|(_, _, parent)| parent.as_ref())
            .map(|parent| Link::with_context(parent.span().span_context().clone()))
            .collect();
        let republished = rows.iter().filter(|row| row.republish).count();
        let batch_span = tracer
            .span_builder("relay publish batch")
            .with_kind(SpanKind::Producer)
            .with_attributes(messaging.iter().cloned().chain([
                KeyValue::new("messaging.batch.message_count", rows.len() as i64),
                KeyValue::new("outbox.republished", republished as i64),
            ]))
            .with_links(links)
            .start_with_context(tracer, &Context::new());
        let batch = Context::new().with_span(batch_span);
        let batch_link = Link::with_context(batch.span().span_context().clone());

        let mut events = HashMap::new();
        for (row, event_id, parent) in carried {
            let Some(parent) = parent else { continue };
            let mut attributes = messaging.to_vec();
            attributes.push(KeyValue::new("outbox.id", row.id));
            attributes.push(KeyValue::new("outbox.republish", row.republish));
            if let Some(id) = event_id {
                attributes.push(KeyValue::new("audit.event_id", id.to_string()));
            }
            let span = tracer
                .span_builder(format!("publish {}", topic.as_str()))
                .with_kind(SpanKind::Producer)
                .with_attributes(attributes)
                .with_links(vec![batch_link.clone()])
                .start_with_context(tracer, &parent);
            events.insert(row.id, parent.with_span(span));
        }
        PublishSpans {
            batch: Some(batch),
            events,
            published: false,
        }
    }

    /// The row was parked: nsqd can never accept it.
    pub fn parked(&mut self, outbox_id: i64, reason: &str) {
        if let Some(cx) = self.events.remove(&outbox_id) {
            let span = cx.span();
            span.set_status(Status::error(format!("parked: {reason}")));
            span.end();
        }
        if let Some(batch) = &self.batch {
            batch.span().add_event(
                "outbox row parked",
                vec![KeyValue::new("outbox.id", outbox_id)],
            );
        }
    }

    /// The batch is published and its rows are marked (committed).
    pub fn published(mut self) {
        self.published = true;
    }
}

impl Drop for PublishSpans {
    fn drop(&mut self) {
        let contexts = self.events.values().chain(self.batch.as_ref());
        for cx in contexts {
            let span = cx.span();
            if !self.published {
                span.set_status(Status::error(
                    "not published: the batch was rolled back and its rows are due again",
                ));
            }
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn only_uuid_ids_of_account_routes_are_recorded() {
        let id = "0192F1C2-7D3E-7A10-8B2C-1234567890AB";
        let request = TestRequest::with_uri(&format!("/accounts/{id}/actions"))
            .param("id", id)
            .to_http_request();
        assert_eq!(
            account_id(&request, Some("/accounts/{id}/actions")).map(|u| u.to_string()),
            Some(id.to_lowercase())
        );
        assert_eq!(account_id(&request, Some("/other/{id}")), None);
        assert_eq!(account_id(&request, None), None);
        let request = TestRequest::with_uri("/accounts/x/actions")
            .param("id", "not-a-uuid")
            .to_http_request();
        assert_eq!(account_id(&request, Some("/accounts/{id}/actions")), None);
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let path = format!("/{}", "é".repeat(200));
        let cut = truncate(&path, MAX_PATH_BYTES);
        assert!(cut.len() <= MAX_PATH_BYTES);
        assert!(path.starts_with(&cut));
        assert_eq!(truncate("/short", MAX_PATH_BYTES), "/short");
    }

    #[test]
    fn the_service_configuration_reads_the_otel_variables() {
        let base = [
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"),
            ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        let config = crate::Config::from_vars(base).unwrap();
        assert!(!config.tracing.is_enabled());
        let config = crate::Config::from_vars(
            base.into_iter()
                .chain([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")]),
        )
        .unwrap();
        assert_eq!(
            config.tracing.traces_url().as_deref(),
            Some("http://jaeger:4318/v1/traces")
        );
        let err = crate::Config::from_vars(
            base.into_iter()
                .chain([("OTEL_TRACES_SAMPLER", "sometimes")]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.starts_with("invalid OTEL_TRACES_SAMPLER: "), "{err}");
    }

    #[test]
    fn with_tracing_off_a_batch_makes_no_span() {
        let rows = [Pending {
            id: 1,
            payload: r#"{"event_id":"0192f1c2-7d3e-7a10-8b2c-1234567890ab","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#.into(),
            republish: false,
        }];
        let topic = nsq::Topic::new("audit.events").unwrap();
        let spans = PublishSpans::start(&Tracing::disabled(), &topic, &rows);
        assert!(spans.batch.is_none() && spans.events.is_empty());
        assert_eq!(current_traceparent(), None);
    }
}
