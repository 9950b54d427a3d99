//! `X-Request-Id`: kept when valid, replaced otherwise, echoed on every
//! response, recorded in the event.

use serde_json::json;
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_valid_request_id_is_echoed_and_recorded() {
    let app = spawn_app().await;
    let response = app
        .post(&Uuid::new_v4().to_string())
        .header("content-type", "application/json")
        .header("x-request-id", "trace-42/abc:DEF")
        .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "trace-42/abc:DEF");
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.request.id, "trace-42/abc:DEF");
}

#[tokio::test]
async fn an_invalid_request_id_is_replaced_by_a_generated_one() {
    let app = spawn_app().await;
    for bad in ["has spaces", &"x".repeat(129), "tab\tinside"] {
        let response = app
            .post(&Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .header("x-request-id", bad)
            .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_ne!(echoed, bad);
        assert!(Uuid::parse_str(&echoed).is_ok(), "{echoed}");
        assert_eq!(app.outbox_events().await.pop().unwrap().request.id, echoed);
    }
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_echoed_on_every_response() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    let responses = [
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap(),
        app.client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap(),
        app.client
            .get(format!("{}/missing", app.address))
            .send()
            .await
            .unwrap(),
        app.client.get(app.actions_url(&id)).send().await.unwrap(),
        app.client.post(app.actions_url(&id)).send().await.unwrap(),
        app.post(&id).body("{}").send().await.unwrap(),
    ];
    for response in responses {
        let echoed = response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(
            echoed
                .as_deref()
                .is_some_and(|id| Uuid::parse_str(id).is_ok()),
            "{} {}: {echoed:?}",
            response.status(),
            response.url()
        );
    }
    // On an error too, a client's id is kept.
    let response = app
        .client
        .post(app.actions_url(&id))
        .header("x-request-id", "mine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], "mine");
}
