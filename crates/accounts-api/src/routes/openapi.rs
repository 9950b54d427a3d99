//! `GET /openapi.json`: the document of [`crate::openapi`], rendered once at
//! start-up.

use actix_web::{web, HttpResponse};

use super::AppState;

pub async fn document(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}
