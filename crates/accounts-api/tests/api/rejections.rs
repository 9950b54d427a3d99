//! Each refusal: the right status and problem+json, exactly one outbox event
//! with the right error code, and nothing else changed.

use audit_event::{AuditEvent, EventError, Outcome};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{problem, spawn_app, spawn_app_with, TestApp};

/// Sends `request`, expects the refusal, and returns its event.
async fn expect_rejected(
    app: &TestApp,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &str,
    action: &str,
) -> AuditEvent {
    let accounts_before = app.accounts().await;
    let outbox_before = app.outbox_count().await;

    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), status);
    let body = problem(response).await;
    assert_eq!(body["code"], code, "{body}");

    assert_eq!(app.accounts().await, accounts_before, "an account changed");
    assert_eq!(app.outbox_count().await, outbox_before + 1);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.outcome, Outcome::Rejected);
    assert_eq!(
        event.error,
        Some(EventError {
            status,
            code: code.into()
        })
    );
    assert_eq!(event.sequence, None);
    assert_eq!(event.action, action);
    assert_eq!(event.actor.id, "alice");
    event
}

fn json_request(app: &TestApp, id: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
    app.post(id)
        .header("content-type", "application/json")
        .body(body.to_string())
}

#[tokio::test]
async fn opening_an_existing_account_is_409_already_exists() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let event = expect_rejected(
        &app,
        json_request(
            &app,
            &id.to_string(),
            json!({"action": "open", "params": {"name": "Other"}}),
        ),
        409,
        "already_exists",
        "account.open",
    )
    .await;
    assert_eq!(event.details, json!({"name": "Other"}));
    assert_eq!(event.resource.id, id.to_string());
    assert_eq!(app.account(id).await.unwrap().name, "Acme");
}

#[tokio::test]
async fn changing_a_missing_account_is_404_for_every_action() {
    let app = spawn_app().await;
    for body in [
        json!({"action": "rename", "params": {"name": "X"}}),
        json!({"action": "suspend", "params": {"reason": "r"}}),
        json!({"action": "reactivate"}),
        json!({"action": "close"}),
    ] {
        let action = format!("account.{}", body["action"].as_str().unwrap());
        expect_rejected(
            &app,
            json_request(&app, &Uuid::new_v4().to_string(), body),
            404,
            "not_found",
            &action,
        )
        .await;
    }
}

#[tokio::test]
async fn transitions_the_state_machine_forbids_are_409_invalid_transition() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let path = id.to_string();
    // Active: reactivate is refused.
    expect_rejected(
        &app,
        json_request(&app, &path, json!({"action": "reactivate"})),
        409,
        "invalid_transition",
        "account.reactivate",
    )
    .await;
    // Suspended: suspend again is refused.
    assert_eq!(
        app.act(id, json!({"action": "suspend", "params": {"reason": "r"}}))
            .await
            .status(),
        200
    );
    expect_rejected(
        &app,
        json_request(
            &app,
            &path,
            json!({"action": "suspend", "params": {"reason": "again"}}),
        ),
        409,
        "invalid_transition",
        "account.suspend",
    )
    .await;
    // Closed: rename, suspend, reactivate and close are all refused.
    assert_eq!(app.act(id, json!({"action": "close"})).await.status(), 200);
    for (body, action) in [
        (
            json!({"action": "rename", "params": {"name": "N"}}),
            "account.rename",
        ),
        (
            json!({"action": "suspend", "params": {"reason": "r"}}),
            "account.suspend",
        ),
        (json!({"action": "reactivate"}), "account.reactivate"),
        (json!({"action": "close"}), "account.close"),
    ] {
        expect_rejected(
            &app,
            json_request(&app, &path, body),
            409,
            "invalid_transition",
            action,
        )
        .await;
    }
    assert_eq!(app.account(id).await.unwrap().version, 3);
}

#[tokio::test]
async fn an_id_that_is_not_a_uuid_is_400_and_recorded_as_sent() {
    let app = spawn_app().await;
    let event = expect_rejected(
        &app,
        json_request(
            &app,
            "not-a-uuid",
            json!({"action": "open", "params": {"name": "Acme"}}),
        ),
        400,
        "invalid_id",
        "account.open",
    )
    .await;
    assert_eq!(event.resource.id, "not-a-uuid");
    assert_eq!(event.details, json!({"name": "Acme"}));
}

#[tokio::test]
async fn a_hostile_path_id_is_sanitized_and_truncated_in_the_event() {
    let app = spawn_app().await;
    let long = "x".repeat(300);
    let event = expect_rejected(
        &app,
        json_request(&app, &format!("a%00b%0A{long}"), json!({"action": "close"})),
        400,
        "invalid_id",
        "account.close",
    )
    .await;
    assert!(!event.resource.id.contains('\0'));
    assert!(!event.resource.id.contains('\n'));
    assert_eq!(event.resource.id.chars().count(), 128);
}

#[tokio::test]
async fn malformed_json_is_400_with_an_unknown_action() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    for body in ["{\"action\": ", "", "not json", "{\"action\":\"open\",}"] {
        let event = expect_rejected(
            &app,
            app.post(&id)
                .header("content-type", "application/json")
                .body(body),
            400,
            "malformed_json",
            "account.unknown",
        )
        .await;
        assert_eq!(event.details, json!({}));
    }
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_400() {
    let app = spawn_app().await;
    let mut body = br#"{"action":"open","params":{"name":"A"#.to_vec();
    body.extend_from_slice(b"\xff\xfe\"}}");
    expect_rejected(
        &app,
        app.post(&Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(body),
        400,
        "malformed_json",
        "account.unknown",
    )
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app().await;
    let name = "x".repeat(70_000);
    expect_rejected(
        &app,
        json_request(
            &app,
            &Uuid::new_v4().to_string(),
            json!({"action": "open", "params": {"name": name}}),
        ),
        413,
        "payload_too_large",
        "account.unknown",
    )
    .await;
}

#[tokio::test]
async fn the_body_limit_is_configurable_and_applies_to_chunked_bodies() {
    let app = spawn_app_with(|config| config.max_body_bytes = 100).await;
    let id = Uuid::new_v4().to_string();
    // Exactly at the limit is fine (a 100-byte body).
    let name = "n".repeat(100 - r#"{"action":"open","params":{"name":""}}"#.len());
    let body = format!(r#"{{"action":"open","params":{{"name":"{name}"}}}}"#);
    assert_eq!(body.len(), 100);
    let response = app
        .post(&id)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // A chunked body (no Content-Length) is counted as it arrives.
    let outbox_before = app.outbox_count().await;
    let chunk = " ".repeat(60);
    let request = format!(
        "POST /accounts/{id}/actions HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         3c\r\n{chunk}\r\n3c\r\n{chunk}\r\n0\r\n\r\n",
        token = app.token("alice"),
    );
    let response = raw_http(app.port, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(app.outbox_count().await, outbox_before + 1);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.error.unwrap().code, "payload_too_large");
}

/// Sends raw bytes and returns everything the server answers.
async fn raw_http(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_wrong_or_missing_content_type_is_415() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    let body = json!({"action": "open", "params": {"name": "Acme"}}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
        None,
    ] {
        let mut request = app.post(&id).body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        expect_rejected(
            &app,
            request,
            415,
            "unsupported_media_type",
            "account.unknown",
        )
        .await;
    }
}

#[tokio::test]
async fn an_unknown_action_is_422_invalid_action() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    for body in [
        json!({"action": "delete", "params": {}}),
        json!({"params": {"name": "x"}}),
        json!([1, 2]),
    ] {
        expect_rejected(
            &app,
            json_request(&app, &id, body),
            422,
            "invalid_action",
            "account.unknown",
        )
        .await;
    }
}

#[tokio::test]
async fn invalid_params_are_422_naming_the_field() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    for (body, action, field) in [
        (
            json!({"action": "open", "params": {"name": "   "}}),
            "account.open",
            "params.name",
        ),
        (
            json!({"action": "open", "params": {"name": "x".repeat(201)}}),
            "account.open",
            "params.name",
        ),
        (
            json!({"action": "rename", "params": {"name": "x", "extra": 1}}),
            "account.rename",
            "extra",
        ),
        (
            json!({"action": "rename", "params": {"name": "x"}, "force": true}),
            "account.rename",
            "force",
        ),
        (json!({"action": "suspend"}), "account.suspend", "params"),
        (
            json!({"action": "close", "params": {"reason": "r".repeat(501)}}),
            "account.close",
            "params.reason",
        ),
    ] {
        let accounts_before = app.accounts().await;
        let response = json_request(&app, &id, body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 422, "{body}");
        let problem = problem(response).await;
        assert_eq!(problem["code"], "invalid_params");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{body}: {detail}");
        assert_eq!(app.accounts().await, accounts_before);
        let event = app.outbox_events().await.pop().unwrap();
        assert_eq!(event.action, action);
        assert_eq!(event.error.unwrap().code, "invalid_params");
        assert_eq!(event.details, json!({}));
    }
    assert_eq!(app.outbox_count().await, 6);
}

#[tokio::test]
async fn a_nul_character_in_a_name_is_422() {
    let app = spawn_app().await;
    expect_rejected(
        &app,
        app.post(&Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(r#"{"action":"open","params":{"name":"Ac\u0000me"}}"#),
        422,
        "invalid_params",
        "account.open",
    )
    .await;
}

#[tokio::test]
async fn a_rejection_of_a_known_account_records_the_validated_params() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    app.act(id, json!({"action": "close"})).await;
    let event = expect_rejected(
        &app,
        json_request(
            &app,
            &id.to_string(),
            json!({"action": "rename", "params": {"name": "  Trimmed  "}}),
        ),
        409,
        "invalid_transition",
        "account.rename",
    )
    .await;
    assert_eq!(event.details, json!({"name": "Trimmed"}));
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problem_json_and_write_nothing() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/nowhere", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(problem(response).await["code"], "route_not_found");

    let response = app
        .client
        .get(app.actions_url(&Uuid::new_v4().to_string()))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(problem(response).await["code"], "method_not_allowed");

    let response = app
        .client
        .post(format!("{}/accounts//actions", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    problem(response).await;
    assert_eq!(app.outbox_count().await, 0);
}

#[tokio::test]
async fn a_key_given_twice_or_deep_nesting_is_400_malformed_json() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    let deep = format!(
        r#"{{"action":"open","params":{{"name":{}"x"{}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    for body in [
        r#"{"action":"open","params":{"name":"A","name":"B"}}"#.to_owned(),
        r#"{"action":"open","action":"rename","params":{"name":"A"}}"#.to_owned(),
        r#"{"action":"open","params":{"name":"\ud800"}}"#.to_owned(),
        deep,
    ] {
        let event = expect_rejected(
            &app,
            app.post(&id)
                .header("content-type", "application/json")
                .body(body),
            400,
            "malformed_json",
            "account.unknown",
        )
        .await;
        assert_eq!(event.details, json!({}));
    }
}

#[tokio::test]
async fn a_number_where_a_string_belongs_is_422_naming_the_problem() {
    let app = spawn_app().await;
    for body in [
        json!({"action": "open", "params": {"name": 7}}),
        json!({"action": "suspend", "params": {"reason": ["r"]}}),
        json!({"action": "close", "params": {"reason": {"nested": "junk"}}}),
    ] {
        let response = json_request(&app, &Uuid::new_v4().to_string(), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{body}");
        let problem = problem(response).await;
        assert_eq!(problem["code"], "invalid_params");
        assert!(
            problem["detail"].as_str().unwrap().contains("invalid type"),
            "{problem}"
        );
    }
    assert_eq!(app.outbox_count().await, 3);
}
