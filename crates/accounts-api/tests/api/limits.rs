//! The limits: per-actor rate (429 with `Retry-After`, not audited), the
//! size of the request head (414, 431), and a bounded database pool (503
//! when exhausted, quickly, not a hang).

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn an_actor_over_its_rate_is_429_with_retry_after_and_nothing_is_recorded() {
    let app = spawn_app_with(|config| {
        config.rate_limit = Some(accounts_api::rate_limit::Settings {
            per_second: 1,
            burst: 3,
        })
    })
    .await;
    let id = Uuid::new_v4();
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for n in 0..5 {
            let response = app
                .act(
                    id,
                    json!({"action": "rename", "params": {"name": format!("N{n}")}}),
                )
                .await;
            statuses.push(response.status().as_u16());
            if response.status() == 429 {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&retry_after), "{retry_after}");
                assert!(response.headers().contains_key("x-request-id"));
                assert_eq!(problem(response).await["code"], "rate_limited");
            }
        }
        statuses
    };
    // Three admitted (404: no such account, audited), two refused.
    assert_eq!(statuses, [404, 404, 404, 429, 429]);
    assert_eq!(app.outbox_count().await, 3);

    // Reads count against the same allowance.
    assert_eq!(app.read(id).await.status(), 429);
    // Another actor has an allowance of its own.
    let response = app
        .client
        .get(app.account_url(&id.to_string()))
        .bearer_auth(app.token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // A second later, one more request of alice's is admitted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.read(id).await.status(), 404);
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_before_the_rate_limit() {
    let app = spawn_app_with(|config| {
        config.rate_limit = Some(accounts_api::rate_limit::Settings {
            per_second: 1,
            burst: 1,
        })
    })
    .await;
    for _ in 0..3 {
        let response = app
            .client
            .get(app.account_url(&Uuid::new_v4().to_string()))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    // Forged tokens used none of alice's allowance.
    assert_eq!(app.read(Uuid::new_v4()).await.status(), 404);
}

#[tokio::test]
async fn a_uri_over_the_limit_is_414_problem_json_and_not_recorded() {
    let app = spawn_app().await;
    let long = "x".repeat(accounts_api::limits::MAX_URI_BYTES);
    let response = app
        .post(&long)
        .header("content-type", "application/json")
        .body(json!({"action": "close"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(problem(response).await["code"], "uri_too_long");
    assert_eq!(app.outbox_count().await, 0);
}

#[tokio::test]
async fn headers_over_the_limit_are_431_problem_json_and_not_recorded() {
    let app = spawn_app().await;
    // One large header.
    let response = app
        .post(&Uuid::new_v4().to_string())
        .header("content-type", "application/json")
        .header(
            "x-padding",
            "p".repeat(accounts_api::limits::MAX_HEADER_BYTES),
        )
        .body(json!({"action": "close"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(problem(response).await["code"], "headers_too_large");
    // Many small ones.
    let mut request = app
        .post(&Uuid::new_v4().to_string())
        .header("content-type", "application/json");
    for n in 0..accounts_api::limits::MAX_HEADER_COUNT {
        request = request.header(format!("x-h{n}"), "v");
    }
    let response = request
        .body(json!({"action": "close"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    problem(response).await;
    assert_eq!(app.outbox_count().await, 0);
    // Ordinary requests are untouched.
    assert_eq!(app.read(Uuid::new_v4()).await.status(), 404);
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_quickly_and_recovers() {
    let app = spawn_app_with(|config| {
        config.database.max_connections = 1;
        config.database.acquire_timeout = Duration::from_millis(500);
    })
    .await;
    let id = app.open_account("Acme").await;
    // The service's one connection waits for a row lock the test holds.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query!("SELECT id FROM accounts WHERE id = $1 FOR UPDATE", id)
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    let held = tokio::spawn(
        app.post(&id.to_string())
            .header("content-type", "application/json")
            .body(json!({"action": "rename", "params": {"name": "Held"}}).to_string())
            .send(),
    );
    let mut waiting = false;
    for _ in 0..200 {
        let n = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM pg_stat_activity WHERE wait_event_type = 'Lock'"#
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the first request never took the connection");

    for request in [
        app.post(&Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(json!({"action": "open", "params": {"name": "B"}}).to_string()),
        app.client
            .get(app.account_url(&id.to_string()))
            .bearer_auth(app.token("alice")),
    ] {
        let started = Instant::now();
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(problem(response).await["code"], "unavailable");
    }
    // Nothing was written for the 503s.
    assert_eq!(app.outbox_count().await, 1);

    lock.rollback().await.unwrap();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    assert_eq!(app.read(id).await.status(), 200);
    assert_eq!(app.outbox_count().await, 3);
}
