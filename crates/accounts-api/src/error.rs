//! One error type for the HTTP layer, mapped to a response in one place.
//!
//! Client mistakes are typed variants with a stable `code` (the same code
//! goes into the audit event). Database trouble becomes an opaque 503 whose
//! cause is logged by the caller, never sent.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use audit_event::EventError;
use serde::Serialize;

use crate::accounts::ChangeError;
use crate::auth::AuthError;
use crate::idempotency::Reply;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Declares [`ErrorKind`] with its status and code in one table, and
/// [`ErrorKind::ALL`] from the same list, so that the OpenAPI document can
/// never miss a kind.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $kind:ident => $status:ident, $code:literal;)*) => {
        /// Every problem the API answers with, without its details: what the
        /// OpenAPI document lists and the audit event's `error.code` names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorKind {
            $($(#[$doc])* $kind,)*
        }

        impl ErrorKind {
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind,)*];

            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorKind::$kind => StatusCode::$status,)*
                }
            }

            /// The stable, machine-readable name of the problem.
            pub fn code(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $code,)*
                }
            }
        }
    };
}

error_kinds! {
    Unauthorized => UNAUTHORIZED, "unauthorized";
    InvalidId => BAD_REQUEST, "invalid_id";
    MalformedJson => BAD_REQUEST, "malformed_json";
    InvalidIdempotencyKey => BAD_REQUEST, "invalid_idempotency_key";
    PayloadTooLarge => PAYLOAD_TOO_LARGE, "payload_too_large";
    UnsupportedMediaType => UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type";
    InvalidAction => UNPROCESSABLE_ENTITY, "invalid_action";
    InvalidParams => UNPROCESSABLE_ENTITY, "invalid_params";
    IdempotencyKeyReused => UNPROCESSABLE_ENTITY, "idempotency_key_reused";
    NotFound => NOT_FOUND, "not_found";
    AlreadyExists => CONFLICT, "already_exists";
    InvalidTransition => CONFLICT, "invalid_transition";
    IdempotencyKeyInFlight => CONFLICT, "idempotency_key_in_flight";
    RateLimited => TOO_MANY_REQUESTS, "rate_limited";
    UriTooLong => URI_TOO_LONG, "uri_too_long";
    HeadersTooLarge => REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large";
    Unavailable => SERVICE_UNAVAILABLE, "unavailable";
    Internal => INTERNAL_SERVER_ERROR, "internal";
    RouteNotFound => NOT_FOUND, "route_not_found";
    MethodNotAllowed => METHOD_NOT_ALLOWED, "method_not_allowed";
}

impl ErrorKind {
    /// Whether a request refused with this kind, having reached an audited
    /// route with a valid token, leaves a `rejected` audit event: the
    /// refusals caused by what the client asked. Not audited: no valid token
    /// (there is no actor), the rate limit (a limiter that wrote a row per
    /// refusal would protect nothing), the size limits of the request head
    /// (refused before any route), and our own failures (nothing could be
    /// written).
    pub fn is_audited(self) -> bool {
        match self {
            ErrorKind::InvalidId
            | ErrorKind::MalformedJson
            | ErrorKind::InvalidIdempotencyKey
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::InvalidAction
            | ErrorKind::InvalidParams
            | ErrorKind::IdempotencyKeyReused
            | ErrorKind::NotFound
            | ErrorKind::AlreadyExists
            | ErrorKind::InvalidTransition
            | ErrorKind::IdempotencyKeyInFlight => true,
            ErrorKind::Unauthorized
            | ErrorKind::RateLimited
            | ErrorKind::UriTooLong
            | ErrorKind::HeadersTooLarge
            | ErrorKind::Unavailable
            | ErrorKind::Internal
            | ErrorKind::RouteNotFound
            | ErrorKind::MethodNotAllowed => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("the account id must be a UUID")]
    InvalidId,
    #[error("{0}")]
    MalformedJson(String),
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    InvalidAction(String),
    #[error("{0}")]
    InvalidParams(String),
    #[error(
        "this Idempotency-Key was used for a different request (another method, path or body)"
    )]
    IdempotencyKeyReused,
    #[error("no account with this id")]
    NotFound,
    #[error("an account with this id already exists")]
    AlreadyExists,
    #[error("{0}")]
    InvalidTransition(String),
    #[error("a request with this Idempotency-Key is still being processed; retry later")]
    IdempotencyKeyInFlight,
    #[error("too many requests from this actor; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the request URI is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request headers are larger than {limit} bytes or more than {count} fields")]
    HeadersTooLarge { limit: usize, count: usize },
    /// The database could not be reached or did not answer in time.
    #[error("the service is temporarily unavailable; try again")]
    Unavailable(#[source] sqlx::Error),
    /// A bug on our side (e.g. an event that fails its own validation).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    #[error("no such resource")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Unavailable(error)
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::NotFound => ApiError::NotFound,
            ChangeError::AlreadyExists => ApiError::AlreadyExists,
            transition @ ChangeError::InvalidTransition { .. } => {
                ApiError::InvalidTransition(transition.to_string())
            }
            ChangeError::Database(error) => ApiError::Unavailable(error),
        }
    }
}

impl ApiError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Unauthorized(_) => ErrorKind::Unauthorized,
            ApiError::InvalidId => ErrorKind::InvalidId,
            ApiError::MalformedJson(_) => ErrorKind::MalformedJson,
            ApiError::InvalidIdempotencyKey => ErrorKind::InvalidIdempotencyKey,
            ApiError::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            ApiError::UnsupportedMediaType => ErrorKind::UnsupportedMediaType,
            ApiError::InvalidAction(_) => ErrorKind::InvalidAction,
            ApiError::InvalidParams(_) => ErrorKind::InvalidParams,
            ApiError::IdempotencyKeyReused => ErrorKind::IdempotencyKeyReused,
            ApiError::NotFound => ErrorKind::NotFound,
            ApiError::AlreadyExists => ErrorKind::AlreadyExists,
            ApiError::InvalidTransition(_) => ErrorKind::InvalidTransition,
            ApiError::IdempotencyKeyInFlight => ErrorKind::IdempotencyKeyInFlight,
            ApiError::RateLimited { .. } => ErrorKind::RateLimited,
            ApiError::UriTooLong { .. } => ErrorKind::UriTooLong,
            ApiError::HeadersTooLarge { .. } => ErrorKind::HeadersTooLarge,
            ApiError::Unavailable(_) => ErrorKind::Unavailable,
            ApiError::Internal(_) => ErrorKind::Internal,
            ApiError::RouteNotFound => ErrorKind::RouteNotFound,
            ApiError::MethodNotAllowed => ErrorKind::MethodNotAllowed,
        }
    }

    /// The stable, machine-readable name of the problem.
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The `error` of the audit event, for the rejections that are audited
    /// (see [`ErrorKind::is_audited`]); `None` for everything else.
    pub fn audit_error(&self) -> Option<EventError> {
        let kind = self.kind();
        kind.is_audited().then(|| EventError {
            status: kind.status().as_u16(),
            code: kind.code().to_owned(),
        })
    }
}

/// RFC 9457 problem details. `type` is `about:blank` (the status says what
/// kind of problem it is); `code` is an extension member that tells the
/// problems with the same status apart.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'static str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind().status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.to_reply().to_response();
        let headers = response.headers_mut();
        if let ApiError::Unauthorized(_) = self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        match self {
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

impl ApiError {
    /// Status, content type and problem+json body: what an idempotency key
    /// stores. The headers some problems add (`WWW-Authenticate`,
    /// `Retry-After`) belong to answers that are never stored.
    pub fn to_reply(&self) -> Reply {
        let status = self.status_code();
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            // `Display` of the opaque variants is a fixed sentence: the
            // cause stays in the log.
            detail: self.to_string(),
            code: self.code(),
        };
        Reply::json(
            status,
            PROBLEM_JSON,
            serde_json::to_vec(&problem).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_rejections_carry_their_status_and_code() {
        let error = ApiError::InvalidTransition("the account is closed".into());
        assert_eq!(
            error.audit_error(),
            Some(EventError {
                status: 409,
                code: "invalid_transition".into()
            })
        );
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 1 }
                .audit_error()
                .unwrap()
                .status,
            413
        );
    }

    #[test]
    fn every_kind_is_a_client_or_server_error_with_its_own_code() {
        let mut codes = std::collections::BTreeSet::new();
        for kind in ErrorKind::ALL {
            assert!(
                kind.status().is_client_error() || kind.status().is_server_error(),
                "{kind:?}"
            );
            assert!(codes.insert(kind.code()), "{kind:?} repeats a code");
            // Only refusals caused by what the client asked are audited.
            if kind.is_audited() {
                assert!(kind.status().is_client_error(), "{kind:?}");
            }
        }
    }

    #[test]
    fn a_rate_limited_answer_says_when_to_retry() {
        let response = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "3");
        assert!(ApiError::RateLimited {
            retry_after_secs: 1
        }
        .audit_error()
        .is_none());
    }

    #[test]
    fn unauthorized_and_unavailable_are_never_audited() {
        assert!(ApiError::Unauthorized(AuthError::Missing)
            .audit_error()
            .is_none());
        assert!(ApiError::Unavailable(sqlx::Error::PoolTimedOut)
            .audit_error()
            .is_none());
    }

    #[test]
    fn a_database_error_is_a_503_that_does_not_reveal_its_cause() {
        let error = ApiError::from(sqlx::Error::Protocol("secret internals".into()));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!error.to_string().contains("secret internals"));
    }
}
