//! Every action's success: the response, the account row, and exactly one
//! outbox event with `sequence` = the new version.

use audit_event::{ActorType, Outcome};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

/// Sends `body`, expects `status`, and checks the response against the
/// stored account and the one new outbox event.
async fn expect_success(app: &TestApp, id: Uuid, body: Value, status: u16) -> Value {
    let before = app.outbox_count().await;
    let response = app.act(id, body.clone()).await;
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let response: Value = response.json().await.unwrap();

    let account = app.account(id).await.expect("the account row");
    assert_eq!(response["account"]["id"], id.to_string());
    assert_eq!(response["account"]["name"], account.name);
    assert_eq!(response["account"]["status"], account.status);
    assert_eq!(response["account"]["version"], account.version);
    assert!(response["account"]["created_at"].is_string());
    assert!(response["account"]["updated_at"].is_string());

    assert_eq!(app.outbox_count().await, before + 1);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(response["event_id"], event.event_id.to_string());
    assert_eq!(event.outcome, Outcome::Succeeded);
    assert_eq!(event.error, None);
    assert_eq!(event.sequence, Some(account.version));
    assert_eq!(
        event.action,
        format!("account.{}", body["action"].as_str().unwrap())
    );
    assert_eq!(event.resource.kind, "account");
    assert_eq!(event.resource.id, id.to_string());
    assert_eq!(event.actor.id, "alice");
    assert_eq!(event.actor.kind, ActorType::User);
    assert_eq!(event.request.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(event.event_id.get_version_num(), 7);
    response
}

#[tokio::test]
async fn open_creates_an_active_account_at_version_1() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let response = expect_success(
        &app,
        id,
        json!({"action": "open", "params": {"name": "  Acme Ltd  "}}),
        201,
    )
    .await;
    assert_eq!(response["account"]["name"], "Acme Ltd");
    assert_eq!(response["account"]["status"], "active");
    assert_eq!(response["account"]["version"], 1);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.details, json!({"name": "Acme Ltd"}));
}

#[tokio::test]
async fn rename_sets_the_name_and_bumps_the_version() {
    let app = spawn_app().await;
    let id = app.open_account("Old").await;
    let response = expect_success(
        &app,
        id,
        json!({"action": "rename", "params": {"name": "New"}}),
        200,
    )
    .await;
    assert_eq!(response["account"]["name"], "New");
    assert_eq!(response["account"]["version"], 2);
    assert_eq!(
        app.outbox_events().await.pop().unwrap().details,
        json!({"name": "New"})
    );
}

#[tokio::test]
async fn suspend_reactivate_and_close_walk_the_state_machine() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;

    let r = expect_success(
        &app,
        id,
        json!({"action": "suspend", "params": {"reason": "unpaid invoice"}}),
        200,
    )
    .await;
    assert_eq!(r["account"]["status"], "suspended");
    assert_eq!(
        app.outbox_events().await.pop().unwrap().details,
        json!({"reason": "unpaid invoice"})
    );

    let r = expect_success(&app, id, json!({"action": "reactivate"}), 200).await;
    assert_eq!(r["account"]["status"], "active");
    assert_eq!(app.outbox_events().await.pop().unwrap().details, json!({}));

    let r = expect_success(
        &app,
        id,
        json!({"action": "close", "params": {"reason": "customer left"}}),
        200,
    )
    .await;
    assert_eq!(r["account"]["status"], "closed");
    assert_eq!(r["account"]["version"], 4);
}

#[tokio::test]
async fn a_suspended_account_can_be_closed_without_a_reason() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    expect_success(
        &app,
        id,
        json!({"action": "suspend", "params": {"reason": ""}}),
        200,
    )
    .await;
    let r = expect_success(&app, id, json!({"action": "close", "params": {}}), 200).await;
    assert_eq!(r["account"]["status"], "closed");
    assert_eq!(app.outbox_events().await.pop().unwrap().details, json!({}));
}

#[tokio::test]
async fn the_actor_type_and_user_agent_are_recorded() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.actions_url(&Uuid::new_v4().to_string()))
        .bearer_auth(app.token_of("billing-service", ActorType::Service))
        .header("content-type", "application/json; charset=utf-8")
        .header("user-agent", "billing/2.1")
        .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.actor.id, "billing-service");
    assert_eq!(event.actor.kind, ActorType::Service);
    assert_eq!(event.request.user_agent.as_deref(), Some("billing/2.1"));
}

#[tokio::test]
async fn the_published_payload_is_exactly_the_event_json() {
    let app = spawn_app().await;
    app.open_account("Acme").await;
    let payload = sqlx::query_scalar!("SELECT payload FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let event = audit_event::AuditEvent::parse(payload.as_bytes()).unwrap();
    assert_eq!(event.to_json(), payload);
    let event_id = sqlx::query_scalar!("SELECT event_id FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(event.event_id, event_id);
}

#[tokio::test]
async fn an_uppercase_id_names_the_same_account_in_canonical_form() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let upper = id.to_string().to_uppercase();
    let response = app
        .post(&upper)
        .header("content-type", "application/json")
        .body(json!({"action": "rename", "params": {"name": "B"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.resource.id, id.to_string());
}
