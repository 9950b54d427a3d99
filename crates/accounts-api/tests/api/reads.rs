//! `GET /accounts/{id}`: the account, and an `account.read` event for who
//! looked (succeeded with the version it saw, or rejected for 400/404);
//! none without a valid token, none with `AUDIT_READS=false`.

use audit_event::{EventError, Outcome};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn reading_an_account_returns_it_and_records_who_read_which_version() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    app.act(
        id,
        json!({"action": "rename", "params": {"name": "Acme 2"}}),
    )
    .await;

    let response = app
        .client
        .get(app.account_url(&id.to_string()))
        .bearer_auth(app.token("auditor"))
        .header("x-request-id", "read-1")
        .header("user-agent", "console/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["account"]["id"], id.to_string());
    assert_eq!(body["account"]["name"], "Acme 2");
    assert_eq!(body["account"]["status"], "active");
    assert_eq!(body["account"]["version"], 2);

    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.action, "account.read");
    assert_eq!(event.outcome, Outcome::Succeeded);
    assert_eq!(event.sequence, Some(2));
    assert_eq!(event.actor.id, "auditor");
    assert_eq!(event.resource.id, id.to_string());
    assert_eq!(event.request.id, "read-1");
    assert_eq!(event.request.user_agent.as_deref(), Some("console/1.0"));
    assert_eq!(event.details, json!({}));
    // A read changes nothing.
    assert_eq!(app.account(id).await.unwrap().version, 2);
}

#[tokio::test]
async fn reading_a_missing_account_is_404_and_a_bad_id_400_both_recorded() {
    let app = spawn_app().await;
    let missing = Uuid::new_v4();
    let response = app.read(missing).await;
    assert_eq!(response.status(), 404);
    assert_eq!(problem(response).await["code"], "not_found");
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.action, "account.read");
    assert_eq!(event.outcome, Outcome::Rejected);
    assert_eq!(
        event.error,
        Some(EventError {
            status: 404,
            code: "not_found".into()
        })
    );
    assert_eq!(event.resource.id, missing.to_string());

    let response = app.read("not-a-uuid").await;
    assert_eq!(response.status(), 400);
    assert_eq!(problem(response).await["code"], "invalid_id");
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.error.unwrap().code, "invalid_id");
    assert_eq!(event.resource.id, "not-a-uuid");
    assert_eq!(app.outbox_count().await, 2);
}

#[tokio::test]
async fn reading_without_a_valid_token_is_401_and_not_recorded() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let response = app
        .client
        .get(app.account_url(&id.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    problem(response).await;
    assert_eq!(app.outbox_count().await, 1);
}

#[tokio::test]
async fn reads_are_not_recorded_when_audit_reads_is_off() {
    let app = spawn_app_with(|config| config.audit_reads = false).await;
    let id = app.open_account("Acme").await;
    assert_eq!(app.read(id).await.status(), 200);
    assert_eq!(app.read(Uuid::new_v4()).await.status(), 404);
    assert_eq!(app.read("nope").await.status(), 400);
    // Only the open.
    assert_eq!(app.outbox_count().await, 1);
}

#[tokio::test]
async fn other_methods_on_an_account_are_405_allowing_get() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(app.account_url(&Uuid::new_v4().to_string()))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    assert_eq!(problem(response).await["code"], "method_not_allowed");
    assert_eq!(app.outbox_count().await, 0);
}
