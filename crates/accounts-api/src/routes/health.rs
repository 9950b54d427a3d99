//! Liveness and readiness.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

/// How long readiness waits for the database before saying no.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The process is up and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database answers `SELECT 1` within a second.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let check = sqlx::query_scalar!("SELECT 1 AS one").fetch_one(&state.pool);
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Ok(Err(error)) => {
            slog::warn!(state.logger, "not ready: database error"; "error" => %error);
            not_ready("the database is unavailable")
        }
        Err(_) => {
            slog::warn!(state.logger, "not ready: database did not answer in time");
            not_ready("the database did not answer in time")
        }
    }
}

fn not_ready(detail: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .content_type(crate::error::PROBLEM_JSON)
        // Like every other `unavailable` problem.
        .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
        .json(json!({
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": detail,
            "code": "unavailable",
        }))
}
