//! Discovery through nsqlookupd: which nsqd nodes carry the topic.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use slog::{debug, warn, Logger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::names::Topic;

/// Bound on one lookup request; a hung nsqlookupd must not stall discovery.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon to look again while no nsqd carries the topic yet. A consumer
/// usually starts before the first event is published; it should find the
/// topic within a second of its creation, not a whole `poll_interval` later.
const EAGER_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Polls every nsqlookupd each `poll_interval` (the first time at once) and
/// sends the union of the nsqd TCP addresses they report. When none of them
/// answers, nothing is sent: an nsqlookupd outage must not close healthy
/// connections.
pub(crate) async fn poll(
    http_addresses: Vec<String>,
    poll_interval: Duration,
    topic: Topic,
    found: mpsc::Sender<BTreeSet<String>>,
    cancel: CancellationToken,
    logger: Logger,
) {
    let client = match reqwest::Client::builder()
        .timeout(LOOKUP_TIMEOUT)
        .connect_timeout(LOOKUP_TIMEOUT)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            slog::error!(logger, "cannot build the HTTP client for nsqlookupd; discovery is off";
                "error" => %error);
            return;
        }
    };
    loop {
        let lookup = lookup_all(&client, &http_addresses, &topic, &logger);
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = lookup => result,
        };
        let none_yet = result.as_ref().is_none_or(BTreeSet::is_empty);
        if let Some(addresses) = result {
            // Raced with cancellation: once shutting down, the supervisor no
            // longer receives, and a send into the full channel would block
            // its wait for this task forever.
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = found.send(addresses) => if sent.is_err() { return },
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(if none_yet { poll_interval.min(EAGER_POLL_INTERVAL) } else { poll_interval }) => {}
        }
    }
}

async fn lookup_all(
    client: &reqwest::Client,
    http_addresses: &[String],
    topic: &Topic,
    logger: &Logger,
) -> Option<BTreeSet<String>> {
    let mut union = BTreeSet::new();
    let mut answered = false;
    for http_address in http_addresses {
        match lookup(client, http_address, topic).await {
            Ok(addresses) => {
                debug!(logger, "nsqlookupd answered";
                    "nsqlookupd" => http_address, "producers" => addresses.len());
                answered = true;
                union.extend(addresses);
            }
            Err(error) => {
                warn!(logger, "nsqlookupd lookup failed";
                    "nsqlookupd" => http_address, "error" => error);
            }
        }
    }
    answered.then_some(union)
}

async fn lookup(
    client: &reqwest::Client,
    http_address: &str,
    topic: &Topic,
) -> Result<Vec<String>, String> {
    let url = lookup_url(http_address, topic)?;
    let response = client
        .get(url)
        .header("Accept", "application/vnd.nsq; version=1.0")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    parse_lookup_response(status, &body)
}

/// `http://<address>/lookup?topic=<topic>`; the topic is percent-encoded,
/// since `#ephemeral` would otherwise start a fragment.
fn lookup_url(http_address: &str, topic: &Topic) -> Result<reqwest::Url, String> {
    let base = if http_address.contains("://") {
        http_address.to_owned()
    } else {
        format!("http://{http_address}")
    };
    let mut url = reqwest::Url::parse(&base)
        .map_err(|e| format!("invalid nsqlookupd address {http_address:?}: {e}"))?;
    url.set_path("/lookup");
    url.query_pairs_mut()
        .clear()
        .append_pair("topic", topic.as_str());
    Ok(url)
}

#[derive(Deserialize)]
struct LookupBody {
    producers: Option<Vec<LookupProducer>>,
    /// nsqlookupd before 1.0 wrapped the answer: `{"status_code":200,"data":{..}}`.
    data: Option<Box<LookupBody>>,
}

#[derive(Deserialize)]
struct LookupProducer {
    broadcast_address: String,
    tcp_port: u16,
}

/// The nsqd TCP addresses in a lookup answer. A topic nsqlookupd has never
/// heard of (404 `TOPIC_NOT_FOUND`) simply has no producers yet.
fn parse_lookup_response(status: u16, body: &[u8]) -> Result<Vec<String>, String> {
    let not_found = body
        .windows(b"TOPIC_NOT_FOUND".len())
        .any(|w| w == b"TOPIC_NOT_FOUND");
    if not_found {
        return Ok(Vec::new());
    }
    if status != 200 {
        return Err(format!("nsqlookupd answered HTTP {status}"));
    }
    let mut parsed: LookupBody = serde_json::from_slice(body)
        .map_err(|e| format!("nsqlookupd answer is not the expected JSON: {e}"))?;
    if parsed.producers.is_none() {
        if let Some(inner) = parsed.data.take() {
            parsed = *inner;
        }
    }
    let producers = parsed
        .producers
        .ok_or("nsqlookupd answer has no producers list")?;
    producers
        .into_iter()
        .map(|producer| tcp_address(&producer.broadcast_address, producer.tcp_port))
        .collect()
}

fn tcp_address(host: &str, port: u16) -> Result<String, String> {
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != '@');
    if !valid || port == 0 {
        return Err(format!(
            "nsqlookupd reported an invalid producer address {host:?}:{port}"
        ));
    }
    // A bare IPv6 address needs brackets before the port.
    if host.contains(':') && !host.starts_with('[') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_become_tcp_addresses() {
        let body = br#"{"channels":["audit-store"],"producers":[
            {"remote_address":"127.0.0.1:5000","hostname":"a","broadcast_address":"nsqd-1","tcp_port":4150,"http_port":4151,"version":"1.3.0"},
            {"broadcast_address":"::1","tcp_port":4250}]}"#;
        assert_eq!(
            parse_lookup_response(200, body).unwrap(),
            vec!["nsqd-1:4150".to_owned(), "[::1]:4250".to_owned()]
        );
    }

    #[test]
    fn the_old_wrapped_answer_is_accepted() {
        let body = br#"{"status_code":200,"status_txt":"OK","data":{"channels":[],"producers":[{"broadcast_address":"10.0.0.7","tcp_port":4150}]}}"#;
        assert_eq!(
            parse_lookup_response(200, body).unwrap(),
            vec!["10.0.0.7:4150".to_owned()]
        );
    }

    #[test]
    fn an_unknown_topic_has_no_producers() {
        assert_eq!(
            parse_lookup_response(404, br#"{"message":"TOPIC_NOT_FOUND"}"#).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_lookup_response(
                500,
                br#"{"status_code":500,"status_txt":"TOPIC_NOT_FOUND","data":null}"#
            )
            .unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn anything_else_is_an_error_not_an_empty_list() {
        assert!(parse_lookup_response(404, b"404 page not found").is_err());
        assert!(parse_lookup_response(500, b"{}").is_err());
        assert!(parse_lookup_response(200, b"<html>").is_err());
        assert!(parse_lookup_response(200, b"{}").is_err());
        assert!(parse_lookup_response(
            200,
            br#"{"producers":[{"broadcast_address":"a b","tcp_port":4150}]}"#
        )
        .is_err());
        assert!(parse_lookup_response(
            200,
            br#"{"producers":[{"broadcast_address":"a","tcp_port":70000}]}"#
        )
        .is_err());
    }

    #[test]
    fn the_lookup_url_encodes_the_topic() {
        let topic = Topic::new("t#ephemeral").unwrap();
        assert_eq!(
            lookup_url("127.0.0.1:4161", &topic).unwrap().as_str(),
            "http://127.0.0.1:4161/lookup?topic=t%23ephemeral"
        );
        assert_eq!(
            lookup_url("http://lookupd:4161/", &topic).unwrap().as_str(),
            "http://lookupd:4161/lookup?topic=t%23ephemeral"
        );
    }
}
