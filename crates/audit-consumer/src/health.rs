//! The consumer's HTTP port: liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use sqlx::PgPool;

use crate::store;

/// A readiness check must answer quickly even when the database hangs.
const READINESS_DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers need, shared by every worker.
pub struct State {
    pub pool: PgPool,
    pub consumer: Arc<nsq::Consumer>,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// The process is up and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
struct Readiness {
    /// `"up"` or `"down"`.
    database: &'static str,
    /// Open connections to nsqd instances.
    nsq_connections: usize,
}

/// Ready when messages can flow end to end: the database answers and at
/// least one nsqd connection is open. 503 otherwise, with both facts in the
/// body so an operator sees which side is missing.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let database_up = store::ping(&state.pool, READINESS_DATABASE_TIMEOUT)
        .await
        .is_ok();
    let nsq_connections = state.consumer.connection_count();
    let body = Readiness {
        database: if database_up { "up" } else { "down" },
        nsq_connections,
    };
    if database_up && nsq_connections > 0 {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
