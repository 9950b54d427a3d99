//! A small OTLP/HTTP trace receiver: what a collector such as Jaeger does with
//! `POST /v1/traces`, minus the storage, so tests can assert on the spans a
//! service exported.
//!
//! It speaks HTTP/1.1 with keep-alive over `std::net`, one thread per
//! connection, and accepts the JSON encoding of OTLP (`application/json`,
//! the encoding our exporter uses); a protobuf body is answered 415, which
//! an exporter reports as a failed export. Received spans are kept in
//! memory, flattened: each with the `service.name` of its resource.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Largest request accepted (an exporter batch of 512 spans is far below).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How often a connection waiting for its next request checks for the
/// receiver's end.
const POLL: Duration = Duration::from_millis(200);

/// One span as received, with the name of the service that sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the span's resource.
    pub service_name: String,
    /// Lowercase hex, 32 characters.
    pub trace_id: String,
    /// Lowercase hex, 16 characters.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// OTLP's `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Attribute values as JSON: strings, numbers (integers as i64), booleans, arrays.
    pub attributes: BTreeMap<String, Value>,
    pub events: Vec<ReceivedEvent>,
    /// Linked spans: (trace id, span id).
    pub links: Vec<(String, String)>,
    /// OTLP's `StatusCode`: 0 unset, 1 ok, 2 error.
    pub status_code: i64,
}

/// An event (a timestamped annotation) of a span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_unix_nanos: u64,
    pub attributes: BTreeMap<String, Value>,
}

impl ReceivedSpan {
    /// A string attribute.
    pub fn attribute_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)?.as_str()
    }

    /// An integer attribute.
    pub fn attribute_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key)?.as_i64()
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Requests it could not read, with the reason, in order.
    errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Received>,
    changed: Condvar,
    requests: AtomicUsize,
    stopping: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An OTLP/HTTP receiver on a free loopback port, until dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    pub fn start() -> Result<OtlpReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept(&listener, &shared)
            })
            .context("starting the OTLP receiver thread")?;
        Ok(OtlpReceiver {
            address,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it
    /// (`http://127.0.0.1:PORT`; spans go to `/v1/traces` under it).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// Export requests received so far (valid or not).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests that were not valid OTLP/JSON, with the reason.
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    /// Waits until `done` holds for the spans received, and returns them;
    /// an error quoting what arrived if it does not within `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        let mut received = self.shared.lock();
        loop {
            if done(&received.spans) {
                return Ok(received.spans.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                let names: Vec<String> = received
                    .spans
                    .iter()
                    .map(|s| format!("{}: {}", s.service_name, s.name))
                    .collect();
                bail!(
                    "the expected spans did not arrive within {timeout:?}; received {} spans {names:?}, errors {:?}",
                    names.len(),
                    received.errors
                );
            }
            received = self
                .shared
                .changed
                .wait_timeout(received, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // Connection threads end with their connection, or soon after the
        // receiver is dropped (they poll `stopping`).
        let _ = std::thread::Builder::new()
            .name("otlp-connection".into())
            .spawn(move || {
                let _ = serve(stream, &shared);
            });
    }
}

/// Serves the requests of one keep-alive connection.
fn serve(stream: TcpStream, shared: &Shared) -> Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        // Wait for the next request, or the end of the connection.
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            match reader.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(_) => break,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        let request = read_request(&mut reader)?;
        reader.get_ref().set_read_timeout(Some(POLL))?;
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let (status, body) = handle(&request, shared);
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
        if request.close {
            return Ok(());
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

struct Request {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
    close: bool,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Request> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD_BYTES {
            bail!("request head over {MAX_HEAD_BYTES} bytes");
        }
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            bail!("connection closed inside a request head");
        }
    }
    let head = String::from_utf8(head).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, path) = match (parts.next(), parts.next()) {
        (Some(method), Some(path)) => (method.to_owned(), path.to_owned()),
        _ => bail!("bad request line {request_line:?}"),
    };
    let mut length = 0usize;
    let mut content_type = String::new();
    let mut close = request_line.ends_with("HTTP/1.0");
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header line {line:?}"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().context("bad Content-Length")?,
            "content-type" => content_type = value.to_ascii_lowercase(),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "transfer-encoding" => bail!("chunked bodies are not supported"),
            _ => {}
        }
    }
    if length > MAX_BODY_BYTES {
        bail!("body of {length} bytes is over {MAX_BODY_BYTES}");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        content_type,
        body,
        close,
    })
}

/// The status line's status and the JSON body of the answer.
fn handle(request: &Request, shared: &Shared) -> (&'static str, String) {
    if request.path != "/v1/traces" {
        return ("404 Not Found", r#"{"message":"only /v1/traces"}"#.into());
    }
    if request.method != "POST" {
        return (
            "405 Method Not Allowed",
            r#"{"message":"POST only"}"#.into(),
        );
    }
    if !request.content_type.starts_with("application/json") {
        shared.lock().errors.push(format!(
            "unsupported content type {:?}",
            request.content_type
        ));
        shared.changed.notify_all();
        return (
            "415 Unsupported Media Type",
            r#"{"message":"this receiver reads OTLP/JSON only"}"#.into(),
        );
    }
    match parse_export(&request.body) {
        Ok(spans) => {
            shared.lock().spans.extend(spans);
            shared.changed.notify_all();
            // An ExportTraceServiceResponse with no partial success.
            ("200 OK", "{}".into())
        }
        Err(error) => {
            let message = format!("{error:#}");
            shared.lock().errors.push(message.clone());
            shared.changed.notify_all();
            (
                "400 Bad Request",
                serde_json::json!({ "message": message }).to_string(),
            )
        }
    }
}

/// An `ExportTraceServiceRequest` in the OTLP/JSON encoding, flattened.
fn parse_export(body: &[u8]) -> Result<Vec<ReceivedSpan>> {
    let request: Value = serde_json::from_slice(body).context("body is not JSON")?;
    let mut spans = Vec::new();
    for resource_spans in array(&request, "resourceSpans") {
        let resource_attributes = attributes(&resource_spans["resource"]);
        let service_name = resource_attributes
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for scope_spans in array(resource_spans, "scopeSpans") {
            for span in array(scope_spans, "spans") {
                spans.push(parse_span(span, &service_name)?);
            }
        }
    }
    Ok(spans)
}

fn parse_span(span: &Value, service_name: &str) -> Result<ReceivedSpan> {
    let parent = text(span, "parentSpanId");
    Ok(ReceivedSpan {
        service_name: service_name.to_owned(),
        trace_id: hex_id(span, "traceId", 32)?,
        span_id: hex_id(span, "spanId", 16)?,
        parent_span_id: if parent.is_empty() {
            None
        } else {
            Some(hex_id(span, "parentSpanId", 16)?)
        },
        name: text(span, "name").to_owned(),
        kind: span["kind"].as_i64().unwrap_or(0),
        start_unix_nanos: nanos(&span["startTimeUnixNano"])?,
        end_unix_nanos: nanos(&span["endTimeUnixNano"])?,
        attributes: attributes(span),
        events: array(span, "events")
            .map(|event| {
                Ok(ReceivedEvent {
                    name: text(event, "name").to_owned(),
                    time_unix_nanos: nanos(&event["timeUnixNano"])?,
                    attributes: attributes(event),
                })
            })
            .collect::<Result<_>>()?,
        links: array(span, "links")
            .map(|link| Ok((hex_id(link, "traceId", 32)?, hex_id(link, "spanId", 16)?)))
            .collect::<Result<_>>()?,
        status_code: span["status"]["code"].as_i64().unwrap_or(0),
    })
}

fn array<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value[key].as_array().into_iter().flatten()
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

/// OTLP/JSON writes ids as lowercase hex (not base64 as generic protobuf
/// JSON would).
fn hex_id(value: &Value, key: &str, len: usize) -> Result<String> {
    let id = text(value, key);
    if id.len() != len || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{key} {id:?} is not {len} hex digits");
    }
    Ok(id.to_ascii_lowercase())
}

/// A 64-bit integer: a string in OTLP/JSON, but a number is accepted too.
fn nanos(value: &Value) -> Result<u64> {
    match value {
        Value::String(s) => s.parse().with_context(|| format!("bad time {s:?}")),
        Value::Number(n) => n.as_u64().ok_or_else(|| anyhow!("bad time {n}")),
        Value::Null => Ok(0),
        other => bail!("bad time {other}"),
    }
}

/// The `attributes` list of a resource, span or event, as a map.
fn attributes(value: &Value) -> BTreeMap<String, Value> {
    array(value, "attributes")
        .filter_map(|kv| Some((kv["key"].as_str()?.to_owned(), any_value(&kv["value"]))))
        .collect()
}

/// An OTLP `AnyValue` as plain JSON.
fn any_value(value: &Value) -> Value {
    if let Some(s) = value.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = value.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = value.get("intValue") {
        return match i {
            Value::String(s) => s.parse::<i64>().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    if let Some(d) = value.get("doubleValue") {
        return d.clone();
    }
    if let Some(values) = value["arrayValue"]["values"].as_array() {
        return Value::Array(values.iter().map(any_value).collect());
    }
    if let Some(values) = value["kvlistValue"]["values"].as_array() {
        return Value::Object(
            values
                .iter()
                .filter_map(|kv| Some((kv["key"].as_str()?.to_owned(), any_value(&kv["value"]))))
                .collect(),
        );
    }
    Value::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"accounts-api"}}]},
      "scopeSpans":[{"scope":{"name":"x"},"spans":[{
        "traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7",
        "parentSpanId":"","name":"POST /accounts/{id}/actions","kind":2,
        "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000500000000",
        "attributes":[{"key":"http.response.status_code","value":{"intValue":"201"}},
                      {"key":"actor.id","value":{"stringValue":"alice"}}],
        "events":[{"timeUnixNano":"1700000000100000000","name":"committed","attributes":[]}],
        "links":[{"traceId":"4bf92f3577b34da6a3ce929d0e0e4737","spanId":"00f067aa0ba902b8"}],
        "status":{"code":1}}]}]}]}"#;

    fn post(receiver: &OtlpReceiver, content_type: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(receiver.address).unwrap();
        write!(
            stream,
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn an_otlp_json_export_is_received_flattened() {
        let receiver = OtlpReceiver::start().unwrap();
        let response = post(&receiver, "application/json", EXPORT);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        let spans = receiver
            .wait_for(Duration::from_secs(5), |s| !s.is_empty())
            .unwrap();
        let span = &spans[0];
        assert_eq!(span.service_name, "accounts-api");
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.kind, 2);
        assert_eq!(span.attribute_i64("http.response.status_code"), Some(201));
        assert_eq!(span.attribute_str("actor.id"), Some("alice"));
        assert_eq!(span.end_unix_nanos - span.start_unix_nanos, 500_000_000);
        assert_eq!(span.events[0].name, "committed");
        assert_eq!(span.links[0].1, "00f067aa0ba902b8");
        assert_eq!(span.status_code, 1);
        assert_eq!(receiver.requests(), 1);
        assert!(receiver.errors().is_empty());
    }

    #[test]
    fn protobuf_and_malformed_bodies_are_refused_and_recorded() {
        let receiver = OtlpReceiver::start().unwrap();
        let response = post(&receiver, "application/x-protobuf", "\u{1}");
        assert!(response.starts_with("HTTP/1.1 415 "), "{response}");
        let response = post(
            &receiver,
            "application/json",
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"short"}]}]}]}"#,
        );
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        assert_eq!(receiver.errors().len(), 2, "{:?}", receiver.errors());
        assert!(receiver.spans().is_empty());
        let waited = receiver.wait_for(Duration::from_millis(50), |s| !s.is_empty());
        assert!(waited.is_err());
    }
}
