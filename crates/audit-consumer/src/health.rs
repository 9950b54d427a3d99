//! The consumer's HTTP port: liveness, readiness and metrics.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use sqlx::PgPool;

use crate::metrics::{self, Gauges, Metrics};
use crate::store::{self, Failure};

/// A readiness check must answer quickly even when the database hangs.
const READINESS_DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers need, shared by every worker.
pub struct State {
    pub pool: PgPool,
    pub consumer: Arc<nsq::Consumer>,
    pub metrics: Arc<Metrics>,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// The process is up and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
struct Readiness {
    /// `"up"`; `"down"` when it does not answer; `"misconfigured"` when it
    /// answers but the consumer cannot write its tables (missing tables or
    /// privileges, wrong credentials).
    database: &'static str,
    /// Open connections to nsqd instances.
    nsq_connections: usize,
    /// Whether the consumer is holding RDY 0 (waiting for the database,
    /// cooling down after failures, or stopping).
    paused: bool,
}

/// Ready when messages can flow end to end: the database could store a
/// batch and at least one nsqd connection is open. 503 otherwise, with each
/// fact in the body so an operator sees which side is missing. The reason
/// itself is in the logs, not here: this port is unauthenticated.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let database = match store::check(&state.pool, READINESS_DATABASE_TIMEOUT).await {
        Ok(()) => "up",
        Err(e) if e.kind == Failure::Configuration => "misconfigured",
        Err(_) => "down",
    };
    let body = Readiness {
        database,
        nsq_connections: state.consumer.connection_count(),
        paused: state.consumer.is_paused(),
    };
    if body.database == "up" && body.nsq_connections > 0 {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The Prometheus exposition (see [`crate::metrics`]).
async fn metrics(state: web::Data<State>) -> HttpResponse {
    let text = state.metrics.render(Gauges {
        nsq_connections: state.consumer.connection_count(),
        paused: state.consumer.is_paused(),
    });
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(text)
}
