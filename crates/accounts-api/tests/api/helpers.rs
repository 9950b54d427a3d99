//! `spawn_app()`: a fresh Postgres cluster, the service bound to port 0, and
//! helpers to drive it and read what it wrote.

use std::time::Duration;

use accounts_api::config::JwtSecret;
use accounts_api::{issue_token, Application, Config};
use audit_event::{ActorType, AuditEvent};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// A pool of the test's own, for reading what the service wrote.
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub config: Config,
    /// Kept for tests that stop and restart the database.
    pub postgres: Option<testkit::Postgres>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the service with the relay off: outbox rows stay where tests can
/// count them.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the service after `adjust` has changed its configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_logging_to(adjust, telemetry::test_logger()).await
}

/// Starts the service with its logs going to `logger`.
pub async fn spawn_app_logging_to(
    adjust: impl FnOnce(&mut Config),
    logger: slog::Logger,
) -> TestApp {
    let postgres = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap()
        .expect("starting Postgres");
    let url = postgres.create_database("accounts").unwrap();
    let mut config = Config::from_vars([
        ("DATABASE_URL", url.as_str()),
        ("AUTH_JWT_SECRET", SECRET),
        ("API_BIND", "127.0.0.1:0"),
        ("RELAY_ENABLED", "false"),
        ("RELAY_POLL_INTERVAL_MS", "50"),
    ])
    .unwrap();
    adjust(&mut config);

    let application = Application::build(config.clone(), logger)
        .await
        .expect("building the application");
    let port = application.port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        pool,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        config,
        postgres: Some(postgres),
        shutdown,
        server: Some(server),
    }
}

/// Turns the relay on, publishing to and taking receipts from `nsqd`.
pub fn relay_to(config: &mut Config, nsqd_tcp_address: String) {
    config.relay.enabled = true;
    config.relay.receipts.discovery = nsq::Discovery::Direct {
        tcp_addresses: vec![nsqd_tcp_address.clone()],
    };
    config.relay.nsqd_tcp_address = nsqd_tcp_address;
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One account row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub version: i64,
}

impl TestApp {
    pub fn secret(&self) -> &JwtSecret {
        &self.config.auth.secret
    }

    /// A valid token for `actor` (a user), with the configured iss/aud.
    pub fn token(&self, actor: &str) -> String {
        self.token_of(actor, ActorType::User)
    }

    pub fn token_of(&self, actor: &str, actor_type: ActorType) -> String {
        issue_token(
            self.secret(),
            actor,
            actor_type,
            Duration::from_secs(600),
            self.config.auth.issuer.as_deref(),
            self.config.auth.audience.as_deref(),
        )
    }

    pub fn actions_url(&self, id: &str) -> String {
        format!("{}/accounts/{id}/actions", self.address)
    }

    /// A POST to the actions route with a valid token for `alice`; no body yet.
    pub fn post(&self, id: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.actions_url(id))
            .bearer_auth(self.token("alice"))
    }

    /// Sends `body` as JSON with a valid token.
    pub async fn act(&self, id: impl ToString, body: Value) -> reqwest::Response {
        self.post(&id.to_string())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Opens an account and returns its id.
    pub async fn open_account(&self, name: &str) -> Uuid {
        let id = Uuid::new_v4();
        let response = self
            .act(
                id,
                serde_json::json!({"action": "open", "params": {"name": name}}),
            )
            .await;
        assert_eq!(response.status().as_u16(), 201);
        id
    }

    pub fn account_url(&self, id: &str) -> String {
        format!("{}/accounts/{id}", self.address)
    }

    /// `GET /accounts/{id}` with a valid token for `alice`.
    pub async fn read(&self, id: impl ToString) -> reqwest::Response {
        self.client
            .get(self.account_url(&id.to_string()))
            .bearer_auth(self.token("alice"))
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Every event in the outbox, oldest first, parsed (which validates it).
    pub async fn outbox_events(&self) -> Vec<AuditEvent> {
        sqlx::query_scalar!("SELECT payload FROM outbox ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|payload| {
                let event = AuditEvent::parse(payload.as_bytes()).expect("a valid event");
                event.validate().unwrap();
                event
            })
            .collect()
    }

    pub async fn outbox_count(&self) -> i64 {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox"#)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Rows published and still waiting for their receipt.
    pub async fn unconfirmed_count(&self) -> i64 {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM outbox
               WHERE published_at IS NOT NULL AND confirmed_at IS NULL"#
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub async fn pending_count(&self) -> i64 {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox WHERE published_at IS NULL"#)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn accounts(&self) -> Vec<AccountRow> {
        sqlx::query_as!(
            AccountRow,
            "SELECT id, name, status, version FROM accounts ORDER BY id"
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn account(&self, id: Uuid) -> Option<AccountRow> {
        self.accounts().await.into_iter().find(|a| a.id == id)
    }
}

/// The value of a series in a Prometheus exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// Waits up to `timeout` for `check` to hold.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of a problem+json response, after checking its content type.
pub async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "status {}",
        response.status()
    );
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail", "code"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
    body
}

/// The OpenAPI document's promise for one answer of one operation:
/// the status is documented, the content type is the documented one, the
/// documented required headers are there and valid, and the body matches
/// the documented schema. Returns the body.
pub async fn conforms(
    document: &Value,
    method: &str,
    path: &str,
    response: reqwest::Response,
) -> Value {
    let status = response.status().as_u16().to_string();
    let described = &document["paths"][path][method.to_ascii_lowercase()]["responses"][&status];
    assert!(
        described.is_object(),
        "{method} {path}: status {status} is not documented"
    );
    let resolve = |value: &Value| -> Value {
        match value["$ref"].as_str() {
            Some(pointer) => document
                .pointer(pointer.trim_start_matches('#'))
                .cloned()
                .unwrap(),
            None => value.clone(),
        }
    };
    let validator = |schema: &Value| {
        // Refs inside the schema point into the document's components.
        let root = serde_json::json!({
            "components": document["components"],
            "allOf": [schema],
        });
        jsonschema::validator_for(&root).unwrap()
    };
    for (name, header) in described["headers"].as_object().into_iter().flatten() {
        let header = resolve(header);
        let value = response.headers().get(name.as_str());
        if header["required"] == true {
            assert!(value.is_some(), "{method} {path} {status}: no {name}");
        }
        if let Some(value) = value {
            let value = Value::String(value.to_str().unwrap().to_owned());
            let validator = validator(&header["schema"]);
            assert!(
                validator.is_valid(&value),
                "{method} {path} {status}: {name} {value}"
            );
        }
    }
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let media_type = content_type.split(';').next().unwrap().trim().to_owned();
    let content = &described["content"][&media_type];
    assert!(
        content.is_object(),
        "{method} {path} {status}: content type {content_type} is not documented"
    );
    let text = response.text().await.unwrap();
    if media_type.ends_with("json") {
        let body: Value = serde_json::from_str(&text).unwrap();
        let validator = validator(&content["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {body} does not match: {errors:?}"
        );
        body
    } else {
        Value::String(text)
    }
}
