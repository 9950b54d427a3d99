//! `Idempotency-Key`: replays without a new change or event, 422 for
//! another request under the same key, 409 while the first is running, no
//! key left behind by a 503 or a lost connection, expiry.

use std::time::{Duration, Instant};

use audit_event::{ActorType, Outcome};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{problem, spawn_app, spawn_app_with, TestApp};

/// A POST with a valid token for `actor`, the key and a JSON body.
fn keyed(
    app: &TestApp,
    actor: &str,
    id: impl ToString,
    key: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    app.client
        .post(app.actions_url(&id.to_string()))
        .bearer_auth(app.token(actor))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
}

async fn key_count(app: &TestApp) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM idempotency_keys"#)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_body_replays_the_first_response_without_a_new_event() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let body = json!({"action": "open", "params": {"name": "Acme"}});

    let first = keyed(&app, "alice", id, "open-acme-1", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();
    assert_eq!(app.outbox_count().await, 1);
    assert_eq!(key_count(&app).await, 1);

    for _ in 0..3 {
        let retry = keyed(&app, "alice", id, "open-acme-1", &body)
            .header("x-request-id", "the-retry")
            .send()
            .await
            .unwrap();
        assert_eq!(retry.status(), 201);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.headers()["content-type"], "application/json");
        // The retry's own request id, the first answer's body.
        assert_eq!(retry.headers()["x-request-id"], "the-retry");
        assert_eq!(retry.text().await.unwrap(), first_body);
    }
    assert_eq!(app.outbox_count().await, 1, "a replay wrote an event");
    assert_eq!(app.account(id).await.unwrap().version, 1);

    // Without the key, the same body is a new request: 409, audited.
    let again = app.act(id, body).await;
    assert_eq!(again.status(), 409);
    assert_eq!(app.outbox_count().await, 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_or_path_is_422_and_audited() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let rename = json!({"action": "rename", "params": {"name": "B"}});
    let response = keyed(&app, "alice", id, "k-1", &rename)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = app.outbox_count().await;

    let other_body = json!({"action": "rename", "params": {"name": "C"}});
    let response = keyed(&app, "alice", id, "k-1", &other_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(problem(response).await["code"], "idempotency_key_reused");
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.outcome, Outcome::Rejected);
    assert_eq!(event.action, "account.rename");
    assert_eq!(event.error.unwrap().code, "idempotency_key_reused");

    // Same body, another account: another request too.
    let response = keyed(&app, "alice", Uuid::new_v4(), "k-1", &rename)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(app.outbox_count().await, events + 2);
    let account = app.account(id).await.unwrap();
    assert_eq!((account.name.as_str(), account.version), ("B", 2));
}

#[tokio::test]
async fn keys_belong_to_their_actor() {
    let app = spawn_app().await;
    let body = json!({"action": "open", "params": {"name": "Acme"}});
    let alice = keyed(&app, "alice", Uuid::new_v4(), "shared", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(alice.status(), 201);
    // Another actor, another body, the same key: its own request.
    let bob = keyed(&app, "bob", Uuid::new_v4(), "shared", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 201);
    assert!(bob.headers().get("idempotent-replayed").is_none());
    // A service actor of the same name is another actor too.
    let service = app
        .client
        .post(app.actions_url(&Uuid::new_v4().to_string()))
        .bearer_auth(app.token_of("alice", ActorType::Service))
        .header("content-type", "application/json")
        .header("idempotency-key", "shared")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(service.status(), 201);
    assert_eq!(key_count(&app).await, 3);
}

#[tokio::test]
async fn a_refusal_is_stored_and_replayed_too() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let reactivate = json!({"action": "reactivate"});
    let first = keyed(&app, "alice", id, "r-1", &reactivate)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 409);
    let first = problem(first).await;
    assert_eq!(app.outbox_count().await, 2);

    let retry = keyed(&app, "alice", id, "r-1", &reactivate)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 409);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(problem(retry).await, first);
    assert_eq!(app.outbox_count().await, 2);

    // A malformed body under a key is replayed as well.
    let bad = keyed(&app, "alice", id, "r-2", &json!({"action": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let retry = keyed(&app, "alice", id, "r-2", &json!({"action": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 422);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(app.outbox_count().await, 3);
}

#[tokio::test]
async fn an_invalid_key_is_400_and_audited() {
    let app = spawn_app().await;
    let body = json!({"action": "open", "params": {"name": "Acme"}});
    for bad in ["has space", &"k".repeat(256), ""] {
        let response = keyed(&app, "alice", Uuid::new_v4(), bad, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad:?}");
        assert_eq!(problem(response).await["code"], "invalid_idempotency_key");
        let event = app.outbox_events().await.pop().unwrap();
        assert_eq!(event.action, "account.open");
        assert_eq!(event.error.unwrap().code, "invalid_idempotency_key");
    }
    assert!(app.accounts().await.is_empty());
    assert_eq!(key_count(&app).await, 0);
}

/// Holds the row lock of `id` from the test's own pool, so that a change of
/// that account waits inside its transaction.
async fn hold_row_lock(app: &TestApp, id: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query!("SELECT id FROM accounts WHERE id = $1 FOR UPDATE", id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until a backend of the service waits for a lock.
async fn wait_until_blocked(app: &TestApp) -> i32 {
    for _ in 0..200 {
        let blocked = sqlx::query_scalar!(
            r#"SELECT pid AS "pid!" FROM pg_stat_activity
               WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"#
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        if let Some(pid) = blocked {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the first request never waited for the row lock");
}

#[tokio::test]
async fn a_retry_while_the_first_request_runs_is_409_and_the_first_then_completes() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let rename = json!({"action": "rename", "params": {"name": "Slow"}});
    let lock = hold_row_lock(&app, id).await;

    let first = tokio::spawn(keyed(&app, "alice", id, "slow-1", &rename).send());
    wait_until_blocked(&app).await;

    let started = Instant::now();
    let retry = keyed(&app, "alice", id, "slow-1", &rename)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 409);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the retry waited"
    );
    assert_eq!(problem(retry).await["code"], "idempotency_key_in_flight");
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.error.unwrap().code, "idempotency_key_in_flight");

    lock.rollback().await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    let replay = keyed(&app, "alice", id, "slow-1", &rename)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // open, the 409, the rename.
    assert_eq!(app.outbox_count().await, 3);
    assert_eq!(app.account(id).await.unwrap().version, 2);
}

#[tokio::test]
async fn a_request_that_dies_mid_way_leaves_its_key_free() {
    let app = spawn_app().await;
    let id = app.open_account("Acme").await;
    let rename = json!({"action": "rename", "params": {"name": "Lost"}});
    let lock = hold_row_lock(&app, id).await;

    let first = tokio::spawn(keyed(&app, "alice", id, "lost-1", &rename).send());
    let pid = wait_until_blocked(&app).await;
    // The request's connection dies as in a crash of its process.
    sqlx::query!("SELECT pg_terminate_backend($1)", pid)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 503);
    lock.rollback().await.unwrap();

    assert_eq!(key_count(&app).await, 0);
    let retry = keyed(&app, "alice", id, "lost-1", &rename)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.account(id).await.unwrap().name, "Lost");
}

#[tokio::test]
async fn a_503_stores_no_key_and_the_retry_runs() {
    // One connection, held by a request that waits for a row lock: the next
    // request cannot get a connection.
    let app = spawn_app_with(|config| {
        config.database.max_connections = 1;
        config.database.acquire_timeout = Duration::from_millis(300);
    })
    .await;
    let id = app.open_account("Acme").await;
    let lock = hold_row_lock(&app, id).await;
    let blocked = tokio::spawn(
        app.post(&id.to_string())
            .header("content-type", "application/json")
            .body(json!({"action": "rename", "params": {"name": "X"}}).to_string())
            .send(),
    );
    wait_until_blocked(&app).await;

    let open = json!({"action": "open", "params": {"name": "Other"}});
    let other = Uuid::new_v4();
    let response = keyed(&app, "alice", other, "o-1", &open)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(key_count(&app).await, 0);

    lock.rollback().await.unwrap();
    assert_eq!(blocked.await.unwrap().unwrap().status(), 200);
    let retry = keyed(&app, "alice", other, "o-1", &open)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn an_expired_key_is_forgotten_and_deleted_by_the_sweep() {
    let app = spawn_app().await;
    let body = json!({"action": "open", "params": {"name": "Acme"}});
    let first = Uuid::new_v4();
    assert_eq!(
        keyed(&app, "alice", first, "old", &body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        keyed(&app, "alice", Uuid::new_v4(), "fresh", &body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    sqlx::query!(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'"
    )
    .execute(&app.pool)
    .await
    .unwrap();

    // Past the 24 h, the key is free: another request under it runs.
    let second = Uuid::new_v4();
    let response = keyed(&app, "alice", second, "old", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(app.account(second).await.is_some());

    sqlx::query!(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'"
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let ttl = app.config.idempotency_key_ttl;
    assert_eq!(
        accounts_api::idempotency::delete_expired_once(&app.pool, ttl)
            .await
            .unwrap(),
        1
    );
    let left: Vec<String> = sqlx::query_scalar!("SELECT key FROM idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["fresh"]);
}
