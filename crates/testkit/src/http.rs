//! A minimal blocking HTTP/1.0 client for the NSQ daemons' admin API.
//!
//! HTTP/1.0 keeps it tiny: the server answers with a plain body (no chunked encoding) and
//! closes the connection, so the response is "read until EOF". Pulling in an async client and
//! a runtime for a handful of loopback calls would make testkit awkward to use from inside
//! `#[tokio::test]`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A response with its status code and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` to `addr` ("127.0.0.1:PORT") with an empty body.
pub(crate) fn request(addr: &str, method: &str, path: &str) -> Result<Response> {
    let socket: SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not an IP:port address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .with_context(|| format!("sending {method} {path} to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to {method} {path} from {addr}"))?;
    parse_response(&raw).with_context(|| format!("{method} http://{addr}{path}"))
}

/// Like [`request`], but an answer other than 2xx is an error quoting the body.
pub(crate) fn request_ok(addr: &str, method: &str, path: &str) -> Result<Response> {
    let response = request(addr, method, path)?;
    if !(200..300).contains(&response.status) {
        bail!(
            "{method} http://{addr}{path} answered {}: {}",
            response.status,
            response.body_text().trim()
        );
    }
    Ok(response)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).context("HTTP response head is not UTF-8")?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 status line: {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no status code in {status_line:?}"))?;
    Ok(Response {
        status,
        body: raw[split + 4..].to_vec(),
    })
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass through).
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_split_into_status_and_body() {
        let response = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"OK");
    }

    #[test]
    fn a_truncated_or_foreign_response_is_rejected() {
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query_value("audit.v1#ephemeral"),
            "audit.v1%23ephemeral"
        );
        assert_eq!(encode_query_value("a b&c"), "a%20b%26c");
    }
}
