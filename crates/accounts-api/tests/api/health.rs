//! `/healthz` and `/readyz`, and what a database outage does to requests.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{eventually, problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_all_is_well() {
    let app = spawn_app().await;
    for path in ["healthz", "readyz"] {
        let response = app
            .client
            .get(format!("{}/{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn readyz_is_503_while_the_database_is_down_and_200_after_it_returns() {
    let mut app = spawn_app().await;
    let readyz = format!("{}/readyz", app.address);
    let mut postgres = app.postgres.take().unwrap();
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.stop().unwrap();
        postgres
    })
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let response = app.client.get(&readyz).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    problem(response).await;
    let healthz = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    let postgres = tokio::task::spawn_blocking(move || {
        let mut postgres = postgres;
        postgres.start_again().unwrap();
        postgres
    })
    .await
    .unwrap();
    app.postgres = Some(postgres);
    let client = app.client.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let client = client.clone();
            let readyz = readyz.clone();
            async move { client.get(&readyz).send().await.unwrap().status() == 200 }
        })
        .await
    );
}

#[tokio::test]
async fn a_database_outage_gives_503_and_writes_nothing() {
    let mut app = spawn_app_with(|_| {}).await;
    let id = app.open_account("Acme").await;
    let mut postgres = app.postgres.take().unwrap();
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.stop().unwrap();
        postgres
    })
    .await
    .unwrap();

    for body in [
        json!({"action": "rename", "params": {"name": "During outage"}}),
        json!({"action": "bogus"}),
    ] {
        let response = app.act(id, body).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("x-request-id"));
        let body = problem(response).await;
        assert_eq!(body["code"], "unavailable");
    }
    let response = app
        .act(
            Uuid::new_v4(),
            json!({"action": "open", "params": {"name": "X"}}),
        )
        .await;
    assert_eq!(response.status(), 503);

    let postgres = tokio::task::spawn_blocking(move || {
        let mut postgres = postgres;
        postgres.start_again().unwrap();
        postgres
    })
    .await
    .unwrap();
    app.postgres = Some(postgres);
    // The test's own pool reconnects too; only the open of `id` is there.
    let mut count = 0;
    for _ in 0..50 {
        match sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox"#)
            .fetch_one(&app.pool)
            .await
        {
            Ok(n) => {
                count = n;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(count, 1);
    assert_eq!(app.account(id).await.unwrap().name, "Acme");
    // And the service recovers by itself.
    let response = app
        .act(id, json!({"action": "rename", "params": {"name": "After"}}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn after_a_database_restart_pooled_connections_are_replaced_unseen() {
    let mut app = spawn_app_with(|_| {}).await;
    // Several requests at once leave several connections in the pool.
    let ids: Vec<Uuid> = futures_util::future::join_all((0..4).map(|i| {
        let app = &app;
        async move { app.open_account(&format!("Acme {i}")).await }
    }))
    .await;
    let mut postgres = app.postgres.take().unwrap();
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.stop().unwrap();
        postgres.start_again().unwrap();
        postgres
    })
    .await
    .unwrap();
    app.postgres = Some(postgres);
    // The pooled connections died with the server; idle for over a second,
    // each is checked before use and replaced, so no request sees it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for id in ids {
        let response = app
            .act(id, json!({"action": "rename", "params": {"name": "After"}}))
            .await;
        assert_eq!(response.status(), 200);
    }
}
