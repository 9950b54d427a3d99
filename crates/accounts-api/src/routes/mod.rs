//! HTTP routes and what they share.

mod actions;
mod health;
mod metrics;

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpResponse, ResponseError};
use slog::Logger;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::auth::Verifier;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What every handler may use; one per process, shared by all workers.
pub struct AppState {
    pub pool: PgPool,
    pub verifier: Verifier,
    pub max_body_bytes: usize,
    /// Signalled after every commit that wrote an outbox row, so the relay
    /// publishes at once instead of at its next poll.
    pub outbox_written: Arc<Notify>,
    /// The relay's counters, rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    pub logger: Logger,
}

/// Registers every route. Unknown paths and wrong methods get problem+json
/// like every other error, not actix's empty or HTML bodies.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/accounts/{id}/actions")
                .route(web::post().to(actions::post))
                .default_service(web::to(method_not_allowed("POST"))),
        )
        .service(
            web::resource("/healthz")
                .route(web::get().to(health::healthz))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource("/readyz")
                .route(web::get().to(health::readyz))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics::metrics))
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
