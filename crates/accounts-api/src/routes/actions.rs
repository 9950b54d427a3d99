//! `POST /accounts/{id}/actions`: the audited route.
//!
//! Order of checks: the token first (no valid token, no audit event); from
//! then on every outcome is audited. The body is read here from the raw
//! payload, not through an extractor, because an extractor's rejection would
//! happen before this handler runs and escape the audit.
//!
//! A change and its event commit in one transaction. A refusal writes its
//! event in a transaction of its own and nothing else. When the database is
//! unavailable nothing is written and the client gets 503.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Serialize;
use slog::{o, Logger};
use uuid::Uuid;

use super::AppState;
use crate::accounts::{self, Account, ChangeError, Transition};
use crate::audit::{self, Attempt, RecordError};
use crate::command::{self, ActionName, BodyErrorKind, Command};
use crate::error::ApiError;
use crate::request_id::RequestId;

/// The resource type in events and the prefix of their actions.
const RESOURCE_TYPE: &str = "account";

/// After refusing an oversized body, read (and discard) up to this much more
/// before answering, so that a client still sending gets to read the 413
/// instead of a reset connection.
const DRAIN_LIMIT: usize = 1024 * 1024;

#[derive(Serialize)]
struct Success<'a> {
    account: &'a Account,
    event_id: Uuid,
}

pub async fn post(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let request_id = RequestId::of(&request);
    let ip = request
        .peer_addr()
        .map(|a| a.ip().to_canonical().to_string());
    let logger = state.logger.new(o!(
        "request_id" => request_id.0.clone(),
        "ip" => ip.clone().unwrap_or_default(),
    ));

    let actor = match state.verifier.authenticate(&request) {
        Ok(actor) => actor,
        Err(error) => {
            // Logged for operators; never the token itself.
            slog::info!(logger, "request refused: not authenticated"; "reason" => %error);
            return ApiError::from(error).error_response();
        }
    };
    let logger = logger.new(o!("actor" => actor.id.clone()));

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

    match handle(&request, payload, &state, &attempt, &logger).await {
        Ok(response) => response,
        Err(error) => {
            match &error {
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
    }
}

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    attempt: &Attempt,
    logger: &Logger,
) -> Result<HttpResponse, ApiError> {
    let (id, command) = match parse(request, payload, state.max_body_bytes).await {
        Ok(parsed) => parsed,
        Err(refusal) => {
            let verb = refusal.action.map_or("unknown", ActionName::as_str);
            return reject(state, attempt, verb, refusal.details, refusal.error, logger).await;
        }
    };
    // From here on the event names the account by its canonical id, so that
    // every record of one account carries the same text whatever letter case
    // the client used.
    let attempt = &Attempt {
        resource_id: id.to_string(),
        ..attempt.clone()
    };
    let verb = command.action().as_str();

    let mut tx = state.pool.begin().await?;
    let changed = match &command {
        Command::Open { name } => accounts::open(&mut tx, id, name).await,
        Command::Rename { name } => accounts::rename(&mut tx, id, name).await,
        Command::Suspend { .. } => accounts::transition(&mut tx, id, Transition::Suspend).await,
        Command::Reactivate => accounts::transition(&mut tx, id, Transition::Reactivate).await,
        Command::Close { .. } => accounts::transition(&mut tx, id, Transition::Close).await,
    };
    let account = match changed {
        Ok(account) => account,
        Err(ChangeError::Database(error)) => return Err(ApiError::Unavailable(error)),
        Err(refusal) => {
            // Nothing was changed, but the row lock is released before the
            // refusal is recorded on its own.
            tx.rollback().await?;
            let error = ApiError::from(refusal);
            return reject(state, attempt, verb, command.details(), error, logger).await;
        }
    };

    let event = attempt.succeeded(verb, account.version, command.details());
    audit::record(&mut tx, &event).await.map_err(record_error)?;
    tx.commit().await?;
    state.outbox_written.notify_one();

    slog::info!(logger, "account changed";
        "action" => &event.action, "account_id" => %account.id,
        "version" => account.version, "event_id" => %event.event_id);
    let status = match command {
        Command::Open { .. } => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok(HttpResponse::build(status).json(Success {
        account: &account,
        event_id: event.event_id,
    }))
}

/// Records a refused attempt in its own transaction, then answers with the
/// refusal. If the record cannot be written the client gets 503 instead:
/// a 4xx must never be sent without its event.
async fn reject(
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

fn record_error(error: RecordError) -> ApiError {
    match error {
        RecordError::Database(error) => ApiError::Unavailable(error),
        invalid @ RecordError::Invalid(_) => ApiError::Internal(invalid.into()),
    }
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
            details: serde_json::json!({}),
            error,
        }
    }
}

/// Turns the request into an account id and a valid command, in the order
/// of the checks: size, content type, body, id.
async fn parse(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<(Uuid, Command), Refusal> {
    let body = read_body(request, payload, limit)
        .await
        .map_err(Refusal::before_command)?;
    if !is_json(request) {
        return Err(Refusal::before_command(ApiError::UnsupportedMediaType));
    }
    let command = command::parse(&body).map_err(|e| Refusal {
        action: e.action,
        details: serde_json::json!({}),
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

/// Only the hyphenated 36-character form: the braced, URN and unhyphenated
/// spellings `Uuid::try_parse` also takes would give one account several
/// names in the URL space.
fn parse_account_id(raw: &str) -> Option<Uuid> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse(raw).ok()
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
