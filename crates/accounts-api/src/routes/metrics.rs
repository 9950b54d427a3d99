//! `GET /metrics`: the relay's counters and the outbox backlog.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::metrics::CONTENT_TYPE;
use crate::outbox;

/// Bound on the backlog query, enforced by the database
/// (`statement_timeout`), so scrapes cannot pile up on a slow database.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let backlog = match outbox::backlog(&state.pool, BACKLOG_TIMEOUT).await {
        Ok(backlog) => Some(backlog),
        Err(error) => {
            slog::warn!(state.logger, "metrics: cannot read the outbox backlog"; "error" => %error);
            None
        }
    };
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(state.metrics.render(backlog))
}
