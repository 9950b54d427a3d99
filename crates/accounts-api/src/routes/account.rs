//! `GET /accounts/{id}`: the account, and — unless `AUDIT_READS=false` — an
//! `account.read` event that records who looked at it.
//!
//! The read and its event commit in one transaction, so an account is never
//! shown without its event: if the event cannot be written the client gets
//! 503 and no data. A refusal (400 for a bad id, 404 for a missing account)
//! is recorded as a `rejected` read. The token and the rate limit come
//! first, as on every audited route, and neither refusal is audited.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use slog::Logger;

use super::{parse_account_id, record_error, reject, AppState};
use crate::accounts::{self, Account};
use crate::audit::{self, Attempt};
use crate::error::{ApiError, ErrorKind};

/// Every problem this route answers with (the OpenAPI document lists them).
pub const ERRORS: &[ErrorKind] = &[
    ErrorKind::Unauthorized,
    ErrorKind::RateLimited,
    ErrorKind::InvalidId,
    ErrorKind::NotFound,
    // An empty id, or one holding a `/`, never reaches the route.
    ErrorKind::RouteNotFound,
    ErrorKind::Unavailable,
    ErrorKind::Internal,
];

/// The event's action: `account.read`.
const VERB: &str = "read";

#[derive(Serialize)]
pub struct Found<'a> {
    pub account: &'a Account,
}

pub async fn get(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (attempt, logger) = match super::admit(&request, &state) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.error_response(),
    };
    match handle(&request, &state, &attempt, &logger).await {
        Ok(response) => response,
        Err(error) => super::fail(&logger, &error),
    }
}

async fn handle(
    request: &HttpRequest,
    state: &AppState,
    attempt: &Attempt,
    logger: &Logger,
) -> Result<HttpResponse, ApiError> {
    let raw_id = request.match_info().get("id").unwrap_or_default();
    let Some(id) = parse_account_id(raw_id) else {
        return refuse(state, attempt, ApiError::InvalidId, logger).await;
    };
    let attempt = &Attempt {
        resource_id: id.to_string(),
        ..attempt.clone()
    };

    if !state.audit_reads {
        let mut connection = state.pool.acquire().await?;
        return match accounts::find(&mut connection, id).await? {
            Some(account) => Ok(HttpResponse::Ok().json(Found { account: &account })),
            None => Err(ApiError::NotFound),
        };
    }

    let mut tx = state.pool.begin().await?;
    let Some(account) = accounts::find(&mut tx, id).await? else {
        tx.rollback().await?;
        return refuse(state, attempt, ApiError::NotFound, logger).await;
    };
    let event = attempt.succeeded(VERB, account.version, serde_json::json!({}));
    audit::record(&mut tx, &event).await.map_err(record_error)?;
    tx.commit().await?;
    state.outbox_written.notify_one();
    slog::debug!(logger, "account read";
        "account_id" => %account.id, "version" => account.version, "event_id" => %event.event_id);
    Ok(HttpResponse::Ok().json(Found { account: &account }))
}

/// A refused read: audited as a rejected `account.read` when reads are
/// audited, else just answered.
async fn refuse(
    state: &AppState,
    attempt: &Attempt,
    error: ApiError,
    logger: &Logger,
) -> Result<HttpResponse, ApiError> {
    if !state.audit_reads {
        return Err(error);
    }
    reject(state, attempt, VERB, serde_json::json!({}), error, logger).await
}
