//! `POST /accounts/{id}/actions`: the audited change.
//!
//! Order of checks: the token and the rate limit first (see
//! [`super::admit`]; neither is audited); from then on every outcome is
//! audited. The body is read here from the raw payload, not through an
//! extractor, because an extractor's rejection would happen before this
//! handler runs and escape the audit. Then the `Idempotency-Key`, if any:
//! a retry of a stored request is answered from the store; then the outcome.
//!
//! One transaction per request writes its outcome: the change with its
//! event, or, for a refusal, the event alone, and the idempotency key with
//! the response. A refused change has nothing to undo: the accounts
//! functions decide before they write (see `accounts`), so no savepoint is
//! needed around them — which saves two of the transaction's round trips
//! to Postgres. When the database is unavailable nothing is written and the
//! client gets 503.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Serialize;
use slog::Logger;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{parse_account_id, record_error, reject, AppState};
use crate::accounts::{self, Account, ChangeError, Transition};
use crate::audit::{self, Attempt};
use crate::command::{self, ActionName, BodyErrorKind, Command};
use crate::error::{ApiError, ErrorKind};
use crate::idempotency::{self, IdempotencyKey, Reply};

/// Every problem this route answers with (the OpenAPI document lists them).
pub const ERRORS: &[ErrorKind] = &[
    ErrorKind::Unauthorized,
    ErrorKind::RateLimited,
    ErrorKind::InvalidId,
    ErrorKind::MalformedJson,
    ErrorKind::InvalidIdempotencyKey,
    ErrorKind::PayloadTooLarge,
    ErrorKind::UnsupportedMediaType,
    ErrorKind::InvalidAction,
    ErrorKind::InvalidParams,
    ErrorKind::IdempotencyKeyReused,
    ErrorKind::NotFound,
    // An empty id, or one holding a `/`, never reaches the route.
    ErrorKind::RouteNotFound,
    ErrorKind::AlreadyExists,
    ErrorKind::InvalidTransition,
    ErrorKind::IdempotencyKeyInFlight,
    ErrorKind::Unavailable,
    ErrorKind::Internal,
];

/// After refusing an oversized body, read (and discard) up to this much more
/// before answering, so that a client still sending gets to read the 413
/// instead of a reset connection.
const DRAIN_LIMIT: usize = 1024 * 1024;

#[derive(Serialize)]
pub struct Success<'a> {
    pub account: &'a Account,
    pub event_id: Uuid,
}

pub async fn post(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (attempt, logger) = match super::admit(&request, &state) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.error_response(),
    };
    match handle(&request, payload, &state, &attempt, &logger).await {
        Ok(response) => response,
        Err(error) => super::fail(&logger, &error),
    }
}

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    attempt: &Attempt,
    logger: &Logger,
) -> Result<HttpResponse, ApiError> {
    let body = match read_body(request, payload, state.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => return reject(state, attempt, "unknown", json_object(), error, logger).await,
    };
    let parsed = parse(request, &body);
    // What the event of a refusal names: the action and its validated
    // params, as far as the body got.
    let (verb, details) = match &parsed {
        Ok((_, command)) => (command.action().as_str(), command.details()),
        Err(refusal) => (
            refusal.action.map_or("unknown", ActionName::as_str),
            refusal.details.clone(),
        ),
    };
    let key = match request.headers().get(idempotency::HEADER) {
        None => None,
        Some(value) => match IdempotencyKey::parse(value) {
            Some(key) => Some(key),
            None => {
                let error = ApiError::InvalidIdempotencyKey;
                return reject(state, attempt, verb, details, error, logger).await;
            }
        },
    };

    let mut tx = state.pool.begin().await?;
    let stored_as = match key {
        None => None,
        Some(key) => {
            let hash = idempotency::request_hash(
                request.method().as_str(),
                request.uri().path_and_query().map_or("", |pq| pq.as_str()),
                &body,
            );
            match check_key(&mut tx, state, attempt, &key, &hash).await? {
                KeyCheck::Fresh => Some((key, hash)),
                KeyCheck::Replay(reply) => {
                    tx.rollback().await?;
                    slog::info!(logger, "idempotent replay"; "status" => reply.status.as_u16());
                    return Ok(reply.to_replay());
                }
                KeyCheck::Refused(error) => {
                    tx.rollback().await?;
                    return reject(state, attempt, verb, details, error, logger).await;
                }
            }
        }
    };

    let (event, reply) = match parsed {
        Err(refusal) => {
            let event_error = refusal.error.audit_error();
            let Some(event_error) = event_error else {
                return Err(refusal.error);
            };
            let event = attempt.rejected(verb, event_error, details);
            (event, refusal.error.to_reply())
        }
        Ok((id, command)) => {
            // From here on the event names the account by its canonical id,
            // so that every record of one account carries the same text
            // whatever letter case the client used.
            let attempt = &Attempt {
                resource_id: id.to_string(),
                ..attempt.clone()
            };
            match apply(&mut tx, id, &command).await {
                Ok(account) => {
                    let event = attempt.succeeded(verb, account.version, details);
                    let status = match command {
                        Command::Open { .. } => StatusCode::CREATED,
                        _ => StatusCode::OK,
                    };
                    let body = serde_json::to_vec(&Success {
                        account: &account,
                        event_id: event.event_id,
                    })
                    .map_err(|e| ApiError::Internal(e.into()))?;
                    (event, Reply::json(status, "application/json", body))
                }
                Err(ChangeError::Database(error)) => return Err(ApiError::Unavailable(error)),
                Err(refusal) => {
                    let error = ApiError::from(refusal);
                    let event_error = error
                        .audit_error()
                        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unaudited refusal")))?;
                    (
                        attempt.rejected(verb, event_error, details),
                        error.to_reply(),
                    )
                }
            }
        }
    };

    audit::record(&mut tx, &event).await.map_err(record_error)?;
    if let Some((key, hash)) = &stored_as {
        idempotency::store(&mut tx, &attempt.actor, key, hash, &reply).await?;
    }
    tx.commit().await?;
    state.outbox_written.notify_one();

    slog::info!(logger, "attempt recorded";
        "action" => &event.action, "resource_id" => &event.resource.id,
        "outcome" => event.outcome.as_str(), "status" => reply.status.as_u16(),
        "sequence" => event.sequence, "event_id" => %event.event_id,
        "idempotency_key" => stored_as.is_some());
    Ok(reply.to_response())
}

/// What a key says about this request.
enum KeyCheck {
    /// Never used (or expired): run the request and store its response.
    Fresh,
    /// The same request was answered before: send that answer again.
    Replay(Reply),
    /// The key is busy (409) or was used for another request (422).
    Refused(ApiError),
}

/// Takes the key's lock in `tx` and looks for a stored response.
async fn check_key(
    tx: &mut PgConnection,
    state: &AppState,
    attempt: &Attempt,
    key: &IdempotencyKey,
    hash: &[u8; 32],
) -> Result<KeyCheck, ApiError> {
    let lock = idempotency::lock_id(&attempt.actor, key);
    if !idempotency::try_lock(tx, lock).await? {
        return Ok(KeyCheck::Refused(ApiError::IdempotencyKeyInFlight));
    }
    let stored = idempotency::find(tx, &attempt.actor, key, state.idempotency_key_ttl).await?;
    Ok(match stored {
        None => KeyCheck::Fresh,
        Some(stored) if stored.request_hash == hash.as_slice() => KeyCheck::Replay(stored.reply),
        Some(_) => KeyCheck::Refused(ApiError::IdempotencyKeyReused),
    })
}

/// The domain change of a command, in the caller's transaction.
async fn apply(tx: &mut PgConnection, id: Uuid, command: &Command) -> Result<Account, ChangeError> {
    match command {
        Command::Open { name } => accounts::open(tx, id, name).await,
        Command::Rename { name } => accounts::rename(tx, id, name).await,
        Command::Suspend { .. } => accounts::transition(tx, id, Transition::Suspend).await,
        Command::Reactivate => accounts::transition(tx, id, Transition::Reactivate).await,
        Command::Close { .. } => accounts::transition(tx, id, Transition::Close).await,
    }
}

fn json_object() -> serde_json::Value {
    serde_json::json!({})
}

/// A request refused before it reached the accounts.
struct Refusal {
    /// The action, when the body named a known one.
    action: Option<ActionName>,
    /// The validated params, when they were valid.
    details: serde_json::Value,
    error: ApiError,
}

impl Refusal {
    fn before_command(error: ApiError) -> Refusal {
        Refusal {
            action: None,
            details: json_object(),
            error,
        }
    }
}

/// Turns the request into an account id and a valid command, in the order
/// of the checks: content type, body, id.
fn parse(request: &HttpRequest, body: &[u8]) -> Result<(Uuid, Command), Refusal> {
    if !is_json(request) {
        return Err(Refusal::before_command(ApiError::UnsupportedMediaType));
    }
    let command = command::parse(body).map_err(|e| Refusal {
        action: e.action,
        details: json_object(),
        error: match e.kind {
            BodyErrorKind::Malformed(detail) => ApiError::MalformedJson(detail),
            BodyErrorKind::InvalidAction(detail) => ApiError::InvalidAction(detail),
            BodyErrorKind::InvalidParams(detail) => ApiError::InvalidParams(detail),
        },
    })?;
    let raw_id = request.match_info().get("id").unwrap_or_default();
    let id = parse_account_id(raw_id).ok_or_else(|| Refusal {
        action: Some(command.action()),
        details: command.details(),
        error: ApiError::InvalidId,
    })?;
    Ok((id, command))
}

/// The body, up to `limit` bytes.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(payload).await;
        return Err(too_large);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::MalformedJson("the request body could not be read completely".into())
        })?;
        if body.len() + chunk.len() > limit {
            drain(payload).await;
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

async fn drain(mut payload: web::Payload) {
    let mut discarded = 0usize;
    while let Some(Ok(chunk)) = payload.next().await {
        discarded += chunk.len();
        if discarded > DRAIN_LIMIT {
            break;
        }
    }
}

/// `application/json`, optionally with `charset=utf-8`; nothing else.
fn is_json(request: &HttpRequest) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((key, value)) => {
            key.trim().eq_ignore_ascii_case("charset")
                && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn json_content_types_are_recognized_strictly() {
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON", true),
            ("application/json; charset=utf-8", true),
            ("application/json;charset=\"UTF-8\"", true),
            ("application/json; charset=latin1", false),
            ("application/json; boundary=x", false),
            ("application/jsonx", false),
            ("text/plain", false),
            ("application/problem+json", false),
        ] {
            let request = TestRequest::default()
                .insert_header((header::CONTENT_TYPE, value))
                .to_http_request();
            assert_eq!(is_json(&request), ok, "{value}");
        }
        assert!(!is_json(&TestRequest::default().to_http_request()));
    }
}
