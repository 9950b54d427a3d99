//! Limits on the request head, checked before routing: a URI longer than
//! [`MAX_URI_BYTES`] gets 414, headers larger than [`MAX_HEADER_BYTES`] in
//! all or more than [`MAX_HEADER_COUNT`] fields get 431, both as
//! problem+json with the request id like every other error.
//!
//! The HTTP layer (actix-http, and the `http` crate under it) has harder
//! limits of its own — a request head of 128 KiB, 96 header fields, a
//! request target of about 64 KiB — past which it answers 431 or 400
//! itself, without a body; so does a head it cannot parse (a malformed
//! `Content-Length` or chunk size). Ours are lower, so that any head it
//! accepts and we do not gets our explained answer. A refused head reaches
//! no route, so it has no actor and no audit event.
//!
//! The body has its own limit (`API_MAX_BODY_BYTES`, 413), applied by the
//! routes that read one.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use crate::error::ApiError;

/// Longest accepted request target (path and query), in bytes. Our paths
/// are under 100 bytes.
pub const MAX_URI_BYTES: usize = 2048;
/// Largest accepted sum of header names and values, in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields accepted.
pub const MAX_HEADER_COUNT: usize = 64;

pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if let Some(error) = check(&request) {
        return Ok(request.into_response(error.error_response()));
    }
    next.call(request)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

fn check(request: &ServiceRequest) -> Option<ApiError> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong {
            limit: MAX_URI_BYTES,
        });
    }
    let headers = request.headers();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || size > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
            count: MAX_HEADER_COUNT,
        });
    }
    None
}
