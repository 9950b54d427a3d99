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

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("the account id must be a UUID")]
    InvalidId,
    #[error("{0}")]
    MalformedJson(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    InvalidAction(String),
    #[error("{0}")]
    InvalidParams(String),
    #[error("no account with this id")]
    NotFound,
    #[error("an account with this id already exists")]
    AlreadyExists,
    #[error("{0}")]
    InvalidTransition(String),
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
    /// The stable, machine-readable name of the problem.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::InvalidId => "invalid_id",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::InvalidAction(_) => "invalid_action",
            ApiError::InvalidParams(_) => "invalid_params",
            ApiError::NotFound => "not_found",
            ApiError::AlreadyExists => "already_exists",
            ApiError::InvalidTransition(_) => "invalid_transition",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// The `error` of the audit event, for the rejections that are audited:
    /// those that reached the route with a valid token and were refused
    /// because of what the client asked. `None` for everything else.
    pub fn audit_error(&self) -> Option<EventError> {
        match self {
            ApiError::InvalidId
            | ApiError::MalformedJson(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType
            | ApiError::InvalidAction(_)
            | ApiError::InvalidParams(_)
            | ApiError::NotFound
            | ApiError::AlreadyExists
            | ApiError::InvalidTransition(_) => Some(EventError {
                status: self.status_code().as_u16(),
                code: self.code().to_owned(),
            }),
            ApiError::Unauthorized(_)
            | ApiError::Unavailable(_)
            | ApiError::Internal(_)
            | ApiError::RouteNotFound
            | ApiError::MethodNotAllowed => None,
        }
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
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::InvalidId | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidAction(_) | ApiError::InvalidParams(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists | ApiError::InvalidTransition(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
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
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let ApiError::Unauthorized(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let ApiError::Unavailable(_) = self {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        response.body(serde_json::to_string(&problem).unwrap_or_default())
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
