//! One trace from the HTTP request to the stored audit row, on real
//! processes: a private Postgres, nsqlookupd and nsqd, accounts-api and
//! audit-consumer in this test process (same `Application`, same config
//! parsing as in production), exporting to a real OTLP/HTTP receiver
//! (testkit's) the way they export to Jaeger.

// A failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value};
use testkit::{OtlpReceiver, ReceivedSpan};
use uuid::Uuid;

mod stack;

const SECRET: &str = "tracing-test-secret-0123456789abcdef";
/// OTLP's span kinds.
const SERVER: i64 = 2;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

/// The pipeline, with pools to read what it wrote.
struct Pipeline {
    stack: stack::Stack,
    api_base: String,
    accounts: sqlx::PgPool,
    audit: sqlx::PgPool,
}

/// The whole pipeline; each service gets `api_tracing` / `consumer_tracing`
/// (OTEL_* variables) on top of its usual configuration.
async fn spawn_stack(
    api_tracing: &[(&str, String)],
    consumer_tracing: &[(&str, String)],
) -> Pipeline {
    let stack = stack::spawn_stack(SECRET, api_tracing, consumer_tracing).await;
    Pipeline {
        api_base: stack.api_base.clone(),
        accounts: sqlx::PgPool::connect(&stack.accounts_url).await.unwrap(),
        audit: sqlx::PgPool::connect(&stack.audit_url).await.unwrap(),
        stack,
    }
}

fn tracing_to(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]
}

impl Pipeline {
    /// Opens a new account as alice; returns its id and the `event_id`.
    async fn open_account(&self, request_id: &str, headers: &[(&str, &str)]) -> (Uuid, Uuid) {
        let account = Uuid::new_v4();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "alice", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut request = reqwest::Client::new()
            .post(format!("{}/accounts/{account}/actions", self.api_base))
            .bearer_auth(token)
            .header("X-Request-Id", request_id)
            .json(&json!({"action": "open", "params": {"name": "Traced Ltd"}}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        let event_id = body["event_id"].as_str().unwrap().parse().unwrap();
        (account, event_id)
    }

    /// The stored row's `traceparent` (`None`: stored without one), once
    /// the consumer has stored it.
    async fn stored_traceparent(&self, event_id: Uuid) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row: Option<(Option<String>,)> =
                sqlx::query_as("SELECT traceparent FROM audit_logs WHERE event_id = $1")
                    .bind(event_id)
                    .fetch_optional(&self.audit)
                    .await
                    .unwrap();
            if let Some((traceparent,)) = row {
                return traceparent;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "event {event_id} not stored within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.accounts.close().await;
        self.audit.close().await;
        self.stack.stop().await;
    }
}

fn find(spans: &[ReceivedSpan], what: impl Fn(&ReceivedSpan) -> bool) -> Option<&ReceivedSpan> {
    spans.iter().find(|span| what(span))
}

fn request_span<'a>(spans: &'a [ReceivedSpan], request_id: &str) -> Option<&'a ReceivedSpan> {
    find(spans, |s| {
        s.service_name == "accounts-api"
            && s.kind == SERVER
            && s.attribute_str("request.id") == Some(request_id)
    })
}

fn event_span(spans: &[ReceivedSpan], event_id: Uuid) -> Option<&ReceivedSpan> {
    let id = event_id.to_string();
    find(spans, |s| {
        s.service_name == "audit-consumer"
            && s.name == "store audit event"
            && s.attribute_str("audit.event_id") == Some(id.as_str())
    })
}

/// Follows parent links from `span` up; true if `ancestor` is on the way.
fn descends_from(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut current = span;
    for _ in 0..spans.len() {
        let Some(parent) = &current.parent_span_id else {
            return false;
        };
        if *parent == ancestor.span_id {
            return current.trace_id == ancestor.trace_id;
        }
        match find(spans, |s| s.span_id == *parent) {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_is_one_trace_from_the_api_request_span_to_the_stored_row() {
    let receiver = OtlpReceiver::start().unwrap();
    let stack = spawn_stack(&tracing_to(&receiver), &tracing_to(&receiver)).await;
    let (account, event_id) = stack.open_account("trace-me", &[]).await;
    let stored = stack.stored_traceparent(event_id).await;
    // Probes are not traced.
    let healthz = reqwest::get(format!("{}/healthz", stack.api_base))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    let spans = receiver
        .wait_for(Duration::from_secs(30), |spans| {
            request_span(spans, "trace-me").is_some() && event_span(spans, event_id).is_some()
        })
        .expect("spans from both services");
    let request = request_span(&spans, "trace-me").unwrap();
    let event = event_span(&spans, event_id).unwrap();

    // The API's server span: the route, the status, who and what.
    assert_eq!(request.name, "POST /accounts/{id}/actions");
    assert_eq!(request.parent_span_id, None);
    assert_eq!(
        request.attribute_str("http.route"),
        Some("/accounts/{id}/actions")
    );
    assert_eq!(
        request.attribute_i64("http.response.status_code"),
        Some(201)
    );
    assert_eq!(request.attribute_str("actor.id"), Some("alice"));
    assert_eq!(
        request.attribute_str("account.id"),
        Some(account.to_string().as_str())
    );
    assert_eq!(
        request.attribute_str("audit.event_id"),
        Some(event_id.to_string().as_str())
    );

    // The event, in the outbox and in audit_logs, names that span.
    let expected = format!("00-{}-{}-01", request.trace_id, request.span_id);
    assert_eq!(stored.as_deref(), Some(expected.as_str()));
    let (payload,): (String,) = sqlx::query_as("SELECT payload FROM outbox WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&stack.accounts)
        .await
        .unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["traceparent"], json!(expected));

    // The consumer's event span continues the trace, under the request.
    assert_eq!(event.trace_id, request.trace_id);
    assert_eq!(event.kind, CONSUMER);
    assert!(descends_from(&spans, event, request), "{event:#?}");
    assert_eq!(event.attribute_str("store.result"), Some("stored"));
    let events: Vec<&str> = event.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["taken by the consumer", "committed"]);
    // Queueing is visible: the span starts when nsqd took the message, after
    // the request began, and the waits are recorded.
    assert!(event.start_unix_nanos >= request.start_unix_nanos);
    assert!(event.end_unix_nanos >= event.start_unix_nanos);
    for wait in [
        "queue.outbox_wait_ms",
        "queue.nsq_wait_ms",
        "queue.end_to_end_ms",
    ] {
        assert!(
            event.attribute_i64(wait).is_some_and(|ms| ms >= 0),
            "{wait}: {event:#?}"
        );
    }

    // The event span links to its batch span, which is a trace of its own.
    let (batch_trace, batch_span) = event.links.first().expect("a link to the batch");
    let batch = find(&spans, |s| s.span_id == *batch_span).expect("the consumer's batch span");
    assert_eq!(batch.name, "store batch");
    assert_eq!(&batch.trace_id, batch_trace);
    assert!(batch.attribute_i64("batch.stored").is_some_and(|n| n >= 1));

    // The relay's publish: a producer span under the request, linked to the
    // batch span that links back to the request.
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            find(spans, |s| {
                s.name == "publish audit.events" && s.trace_id == request.trace_id
            })
            .is_some()
        })
        .expect("the relay's span");
    let publish = find(&spans, |s| {
        s.name == "publish audit.events" && s.trace_id == request.trace_id
    })
    .unwrap();
    assert_eq!(publish.service_name, "accounts-api");
    assert_eq!(publish.kind, PRODUCER);
    assert_eq!(
        publish.parent_span_id.as_deref(),
        Some(request.span_id.as_str())
    );
    let (_, relay_batch) = publish.links.first().expect("a link to the relay batch");
    let relay_batch = find(&spans, |s| s.span_id == *relay_batch).expect("the relay's batch span");
    assert_eq!(relay_batch.name, "relay publish batch");
    assert!(relay_batch
        .links
        .contains(&(request.trace_id.clone(), request.span_id.clone())));

    assert!(!spans
        .iter()
        .any(|s| s.attribute_str("url.path") == Some("/healthz")));
    let metrics = reqwest::get(format!("{}/metrics", stack.api_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\naccounts_api_trace_spans_dropped_total{reason=\"queue_full\"} 0\n"),
        "{metrics}"
    );
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_traceparent_is_continued_and_its_sampling_decision_followed_to_the_consumer() {
    let receiver = OtlpReceiver::start().unwrap();
    let stack = spawn_stack(&tracing_to(&receiver), &tracing_to(&receiver)).await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let (_, kept) = stack
        .open_account("sampled", &[("traceparent", sampled.as_str())])
        .await;
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (_, dropped) = stack
        .open_account("unsampled", &[("traceparent", unsampled)])
        .await;
    stack.stored_traceparent(kept).await;
    let stored_unsampled = stack.stored_traceparent(dropped).await;

    let spans = receiver
        .wait_for(Duration::from_secs(30), |spans| {
            event_span(spans, kept).is_some()
        })
        .expect("the sampled request's spans");
    let request = request_span(&spans, "sampled").unwrap();
    assert_eq!(request.trace_id, caller_trace);
    assert_eq!(request.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert!(descends_from(
        &spans,
        event_span(&spans, kept).unwrap(),
        request
    ));

    // Not sampled by the caller: the event still carries the trace (flags
    // 00), and neither service exports a span of it.
    let stored_unsampled = stored_unsampled.expect("an unsampled trace is still propagated");
    assert!(stored_unsampled.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert!(stored_unsampled.ends_with("-00"));
    // Give the exporters time for a batch that would contain them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spans = receiver.spans();
    assert!(request_span(&spans, "unsampled").is_none());
    assert!(event_span(&spans, dropped).is_none());
    assert!(!spans
        .iter()
        .any(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tracing_off_no_span_is_exported_and_events_are_still_stored() {
    // A receiver nobody is told about: it must hear nothing.
    let receiver = OtlpReceiver::start().unwrap();
    let stack = spawn_stack(&[], &[]).await;
    let (_, event_id) = stack.open_account("untraced", &[]).await;
    assert_eq!(stack.stored_traceparent(event_id).await, None);
    let (payload,): (String,) = sqlx::query_as("SELECT payload FROM outbox WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&stack.accounts)
        .await
        .unwrap();
    assert!(!payload.contains("traceparent"), "{payload}");
    stack.stop().await;
    assert_eq!(receiver.requests(), 0);
}
