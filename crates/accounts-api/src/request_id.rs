//! `X-Request-Id`: the client's id is kept when it is 1–128 visible ASCII
//! characters, otherwise one is generated. It is echoed on every response
//! (errors and unknown routes included) and recorded in the audit event.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest};
use uuid::Uuid;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client id kept, in bytes (visible ASCII: one byte each).
pub const MAX_LEN: usize = 128;

/// The id of the current request, stored in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id the middleware assigned; a fresh one if the middleware did not
    /// run (which only a misconfigured app could cause).
    pub fn of(request: &HttpRequest) -> RequestId {
        request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate)
    }

    fn generate() -> RequestId {
        RequestId(Uuid::new_v4().to_string())
    }

    fn from_client(value: &HeaderValue) -> Option<RequestId> {
        let bytes = value.as_bytes();
        let valid =
            (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic());
        // Visible ASCII is valid UTF-8, so the conversion cannot fail here.
        valid
            .then(|| std::str::from_utf8(bytes).ok())
            .flatten()
            .map(|s| RequestId(s.to_owned()))
    }
}

pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(RequestId::from_client)
        .unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(id.clone());
    let header = HeaderValue::from_str(&id.0).ok();
    match next.call(request).await {
        Ok(mut response) => {
            if let Some(value) = header {
                response.headers_mut().insert(HEADER, value);
            }
            Ok(response.map_into_boxed_body())
        }
        // An error from further in becomes its response only after this
        // middleware; render it now so that it carries the header too. (The
        // request cannot be cloned up front: routing needs it unshared.)
        Err(error) => {
            let mut response = error.error_response();
            if let Some(value) = header {
                response.headers_mut().insert(HEADER, value);
            }
            Err(InternalError::from_response(error, response).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(value: &[u8]) -> Option<RequestId> {
        RequestId::from_client(&HeaderValue::from_bytes(value).unwrap())
    }

    #[test]
    fn visible_ascii_ids_up_to_128_characters_are_kept() {
        assert_eq!(client(b"abc-123_!~").unwrap().0, "abc-123_!~");
        assert!(client(&[b'x'; 128]).is_some());
    }

    #[test]
    fn other_ids_are_replaced() {
        for bad in [
            &b""[..],
            &[b'x'; 129],
            b"has space",
            b"tab\there",
            b"caf\xc3\xa9",
        ] {
            assert!(client(bad).is_none(), "{bad:?}");
        }
    }
}
