//! HTTP routes and what they share: the state, the gate every audited route
//! starts with (token, then rate limit), and the recording of refusals.

mod account;
mod actions;
mod health;
mod metrics;
mod openapi;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, Method};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use slog::{o, Logger};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::audit::{self, Attempt, RecordError};
use crate::auth::Verifier;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::rate_limit::{self, RateLimiter};
use crate::request_id::RequestId;

/// What every handler may use; one per process, shared by all workers.
pub struct AppState {
    pub pool: PgPool,
    pub verifier: Verifier,
    pub max_body_bytes: usize,
    /// `None` when `RATE_LIMIT_PER_SECOND` is 0.
    pub rate_limiter: Option<RateLimiter>,
    /// `AUDIT_READS`.
    pub audit_reads: bool,
    /// `IDEMPOTENCY_KEY_TTL_HOURS`.
    pub idempotency_key_ttl: Duration,
    /// The OpenAPI document, rendered once.
    pub openapi: Bytes,
    /// Signalled after every commit that wrote an outbox row, so the relay
    /// publishes at once instead of at its next poll.
    pub outbox_written: Arc<Notify>,
    /// The relay's counters, rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    pub logger: Logger,
}

/// The resource type of the audited routes, and the prefix of their actions.
pub const RESOURCE_TYPE: &str = "account";

/// One operation of the API: what `configure` registers and the OpenAPI
/// document describes, from this one table (see `openapi.rs` for the
/// document and the test that keeps the two together).
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: Method,
    /// The path, with `{name}` for a path parameter, as actix and OpenAPI
    /// both write it.
    pub path: &'static str,
    /// Whether it needs a bearer token.
    pub authenticated: bool,
    /// Every problem it can answer with, besides the limits on the request
    /// head ([`HEAD_ERRORS`]) that apply to every route.
    pub errors: &'static [ErrorKind],
}

/// What any request can be refused with before it is routed.
pub const HEAD_ERRORS: &[ErrorKind] = &[ErrorKind::UriTooLong, ErrorKind::HeadersTooLarge];

pub const POST_ACTIONS: Operation = Operation {
    method: Method::POST,
    path: "/accounts/{id}/actions",
    authenticated: true,
    errors: actions::ERRORS,
};
pub const GET_ACCOUNT: Operation = Operation {
    method: Method::GET,
    path: "/accounts/{id}",
    authenticated: true,
    errors: account::ERRORS,
};
pub const GET_HEALTHZ: Operation = Operation {
    method: Method::GET,
    path: "/healthz",
    authenticated: false,
    errors: &[],
};
pub const GET_READYZ: Operation = Operation {
    method: Method::GET,
    path: "/readyz",
    authenticated: false,
    errors: &[ErrorKind::Unavailable],
};
pub const GET_METRICS: Operation = Operation {
    method: Method::GET,
    path: "/metrics",
    authenticated: false,
    errors: &[],
};
pub const GET_OPENAPI: Operation = Operation {
    method: Method::GET,
    path: "/openapi.json",
    authenticated: false,
    errors: &[],
};

/// Every operation, in the order the document lists them.
pub const OPERATIONS: &[Operation] = &[
    POST_ACTIONS,
    GET_ACCOUNT,
    GET_HEALTHZ,
    GET_READYZ,
    GET_METRICS,
    GET_OPENAPI,
];

/// Registers every route. Unknown paths and wrong methods get problem+json
/// like every other error, not actix's empty or HTML bodies.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource(POST_ACTIONS.path)
                .route(web::post().to(actions::post))
                .default_service(web::to(method_not_allowed("POST"))),
        )
        .service(
            web::resource(GET_ACCOUNT.path)
                .route(web::get().to(account::get))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource(GET_HEALTHZ.path)
                .route(web::get().to(health::healthz))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource(GET_READYZ.path)
                .route(web::get().to(health::readyz))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource(GET_METRICS.path)
                .route(web::get().to(metrics::metrics))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource(GET_OPENAPI.path)
                .route(web::get().to(openapi::document))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    ApiError::RouteNotFound.error_response()
}

fn method_not_allowed(
    allow: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || {
        let mut response = ApiError::MethodNotAllowed.error_response();
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        std::future::ready(response)
    }
}

/// The first steps of an audited route: the token (401), then the actor's
/// rate limit (429). Neither refusal is audited. What passes is an attempt
/// with an actor, which from here on leaves exactly one event (or a 503).
pub(crate) fn admit(
    request: &HttpRequest,
    state: &AppState,
) -> Result<(Attempt, Logger), ApiError> {
    let request_id = RequestId::of(request);
    let ip = request
        .peer_addr()
        .map(|a| a.ip().to_canonical().to_string());
    let logger = state.logger.new(o!(
        "request_id" => request_id.0.clone(),
        "ip" => ip.clone().unwrap_or_default(),
    ));

    let actor = state.verifier.authenticate(request).map_err(|error| {
        // Logged for operators; never the token itself.
        slog::info!(logger, "request refused: not authenticated"; "reason" => %error);
        ApiError::from(error)
    })?;
    let logger = logger.new(o!("actor" => actor.id.clone()));

    if let Some(limiter) = &state.rate_limiter {
        if let Err(wait) = limiter.check(&actor) {
            // Debug, not info: a client over its limit sends many of these.
            slog::debug!(logger, "request refused: rate limited"; "wait_ms" => wait.as_millis());
            return Err(ApiError::RateLimited {
                retry_after_secs: rate_limit::retry_after_secs(wait),
            });
        }
    }

    let raw_id = request.match_info().get("id").unwrap_or_default();
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let attempt = Attempt::new(
        actor,
        RESOURCE_TYPE,
        raw_id,
        request_id.0,
        ip,
        user_agent.as_deref(),
    );
    Ok((attempt, logger))
}

/// The answer to an audited route's failure: logs what the client is not
/// told.
pub(crate) fn fail(logger: &Logger, error: &ApiError) -> HttpResponse {
    match error {
        ApiError::Unavailable(cause) => {
            slog::warn!(logger, "database unavailable; nothing written"; "error" => %cause)
        }
        ApiError::Internal(cause) => {
            slog::error!(logger, "internal error; nothing written"; "error" => format!("{cause:#}"))
        }
        _ => {}
    }
    error.error_response()
}

/// Records a refused attempt in a transaction of its own, then answers with
/// the refusal. If the record cannot be written the client gets 503 instead:
/// a 4xx must never be sent without its event.
pub(crate) async fn reject(
    state: &AppState,
    attempt: &Attempt,
    verb: &str,
    details: serde_json::Value,
    error: ApiError,
    logger: &Logger,
) -> Result<HttpResponse, ApiError> {
    let Some(event_error) = error.audit_error() else {
        return Err(error);
    };
    let event = attempt.rejected(verb, event_error, details);
    let mut tx = state.pool.begin().await?;
    audit::record(&mut tx, &event).await.map_err(record_error)?;
    tx.commit().await?;
    state.outbox_written.notify_one();
    slog::info!(logger, "attempt rejected";
        "action" => &event.action, "resource_id" => &attempt.resource_id,
        "code" => error.code(), "event_id" => %event.event_id);
    Ok(error.error_response())
}

pub(crate) fn record_error(error: RecordError) -> ApiError {
    match error {
        RecordError::Database(error) => ApiError::Unavailable(error),
        invalid @ RecordError::Invalid(_) => ApiError::Internal(invalid.into()),
    }
}

/// Only the hyphenated 36-character form: the braced, URN and unhyphenated
/// spellings `Uuid::try_parse` also takes would give one account several
/// names in the URL space.
pub(crate) fn parse_account_id(raw: &str) -> Option<Uuid> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_must_be_hyphenated_uuids() {
        let id = "0192f1c2-7d3e-7a10-8b2c-1234567890ab";
        assert!(parse_account_id(id).is_some());
        assert_eq!(parse_account_id(&id.to_uppercase()), parse_account_id(id));
        for bad in [
            "0192f1c27d3e7a108b2c1234567890ab",
            "{0192f1c2-7d3e-7a10-8b2c-1234567890ab}",
            "urn:uuid:0192f1c2-7d3e-7a10-8b2c-1234567890ab",
            "0192f1c2-7d3e-7a10-8b2c-1234567890a",
            "",
        ] {
            assert!(parse_account_id(bad).is_none(), "{bad}");
        }
    }
}
