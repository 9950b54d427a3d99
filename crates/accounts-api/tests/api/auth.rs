//! Requests without a valid token: 401 with `WWW-Authenticate: Bearer`,
//! problem+json, and no audit event.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use accounts_api::config::JwtSecret;
use accounts_api::issue_token;
use audit_event::ActorType;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{problem, spawn_app, spawn_app_with, TestApp, SECRET};

async fn expect_unauthorized(app: &TestApp, authorization: Option<String>) {
    let mut request = app
        .client
        .post(app.actions_url(&Uuid::new_v4().to_string()))
        .header("content-type", "application/json")
        .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string());
    if let Some(value) = &authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 401, "{authorization:?}");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(problem(response).await["code"], "unauthorized");
    assert_eq!(
        app.outbox_count().await,
        0,
        "{authorization:?} wrote an event"
    );
    assert!(app.accounts().await.is_empty());
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: &Value, algorithm: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// base64url without padding, for hand-made tokens.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_missing_or_malformed_authorization_header_is_401() {
    let app = spawn_app().await;
    expect_unauthorized(&app, None).await;
    expect_unauthorized(&app, Some("Basic YWxpY2U6c2VjcmV0".into())).await;
    expect_unauthorized(&app, Some("Bearer".into())).await;
    expect_unauthorized(&app, Some("Bearer not.a.jwt".into())).await;
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_401() {
    let app = spawn_app().await;
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let forged = sign(
        &claims,
        Algorithm::HS256,
        b"another-secret-another-secret-000",
    );
    expect_unauthorized(&app, Some(format!("Bearer {forged}"))).await;
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let app = spawn_app().await;
    let claims = json!({"sub": "alice", "exp": now() - 3600});
    let expired = sign(&claims, Algorithm::HS256, SECRET.as_bytes());
    expect_unauthorized(&app, Some(format!("Bearer {expired}"))).await;
}

#[tokio::test]
async fn a_token_without_exp_or_sub_is_401() {
    let app = spawn_app().await;
    let no_exp = sign(
        &json!({"sub": "alice"}),
        Algorithm::HS256,
        SECRET.as_bytes(),
    );
    expect_unauthorized(&app, Some(format!("Bearer {no_exp}"))).await;
    let no_sub = sign(
        &json!({"exp": now() + 600}),
        Algorithm::HS256,
        SECRET.as_bytes(),
    );
    expect_unauthorized(&app, Some(format!("Bearer {no_sub}"))).await;
}

#[tokio::test]
async fn alg_none_and_other_algorithms_are_401() {
    let app = spawn_app().await;
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    expect_unauthorized(&app, Some(format!("Bearer {unsigned}"))).await;
    for algorithm in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign(&claims, algorithm, SECRET.as_bytes());
        expect_unauthorized(&app, Some(format!("Bearer {token}"))).await;
    }
}

#[tokio::test]
async fn bad_subjects_and_actor_types_are_401() {
    let app = spawn_app().await;
    let exp = now() + 600;
    for claims in [
        json!({"sub": "", "exp": exp}),
        json!({"sub": "a\u{0}b", "exp": exp}),
        json!({"sub": "x".repeat(256), "exp": exp}),
        json!({"sub": "alice", "exp": exp, "actor_type": "admin"}),
        json!({"sub": 42, "exp": exp}),
    ] {
        let token = sign(&claims, Algorithm::HS256, SECRET.as_bytes());
        expect_unauthorized(&app, Some(format!("Bearer {token}"))).await;
    }
}

#[tokio::test]
async fn wrong_issuer_or_audience_is_401_when_configured() {
    let app = spawn_app_with(|config| {
        config.auth.issuer = Some("https://issuer.example".into());
        config.auth.audience = Some("accounts-api".into());
    })
    .await;
    let secret = JwtSecret::new(SECRET).unwrap();
    for (issuer, audience) in [
        (Some("https://other.example"), Some("accounts-api")),
        (Some("https://issuer.example"), Some("other-api")),
        (None, Some("accounts-api")),
        (Some("https://issuer.example"), None),
    ] {
        let token = issue_token(
            &secret,
            "alice",
            ActorType::User,
            Duration::from_secs(600),
            issuer,
            audience,
        );
        expect_unauthorized(&app, Some(format!("Bearer {token}"))).await;
    }
    // The configured pair is accepted.
    let response = app
        .act(
            Uuid::new_v4(),
            json!({"action": "open", "params": {"name": "Acme"}}),
        )
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.actions_url(&Uuid::new_v4().to_string()))
        .header("authorization", format!("bearer {}", app.token("alice")))
        .header("content-type", "application/json")
        .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn authentication_comes_before_every_other_check() {
    let app = spawn_app().await;
    // Wrong id, wrong content type and a huge body: still 401, no event.
    let response = app
        .client
        .post(app.actions_url("not-a-uuid"))
        .header("content-type", "text/plain")
        .body("x".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.outbox_count().await, 0);
}

#[tokio::test]
async fn a_token_announcing_another_algorithm_family_is_401() {
    let app = spawn_app().await;
    let claims = json!({"sub": "alice", "exp": now() + 600});
    // The classic confusion: RS256 in the header, signed with the HMAC
    // secret as if it were a public key.
    for alg in ["RS256", "ES256", "PS256", "EdDSA", "HS256 "] {
        let header = json!({"alg": alg, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let genuine = sign(&claims, Algorithm::HS256, SECRET.as_bytes());
        let signature = genuine.rsplit('.').next().unwrap();
        expect_unauthorized(&app, Some(format!("Bearer {signing_input}.{signature}"))).await;
    }
}

/// The status of opening a new account with a token of these claims.
async fn open_with_claims(app: &TestApp, claims: &Value) -> u16 {
    let token = sign(claims, Algorithm::HS256, SECRET.as_bytes());
    app.client
        .post(app.actions_url(&Uuid::new_v4().to_string()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn exp_has_a_small_leeway_and_no_more() {
    let app = spawn_app().await;
    let just_expired = json!({"sub": "alice", "exp": now() - 5});
    assert_eq!(open_with_claims(&app, &just_expired).await, 201);
    let long_expired = sign(
        &json!({"sub": "alice", "exp": now() - 120}),
        Algorithm::HS256,
        SECRET.as_bytes(),
    );
    let response = app
        .client
        .get(app.account_url(&Uuid::new_v4().to_string()))
        .bearer_auth(&long_expired)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_token_not_valid_yet_is_401_beyond_the_leeway() {
    let app = spawn_app().await;
    let later = sign(
        &json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        Algorithm::HS256,
        SECRET.as_bytes(),
    );
    expect_unauthorized(&app, Some(format!("Bearer {later}"))).await;

    // A few seconds ahead of our clock is skew, not a future token.
    let skewed = json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 5});
    assert_eq!(open_with_claims(&app, &skewed).await, 201);
}

#[tokio::test]
async fn two_authorization_headers_are_401_even_if_one_is_valid() {
    let app = spawn_app().await;
    let alice = app.token("alice");
    let mallory = app.token("mallory");
    for (first, second) in [(&alice, &mallory), (&alice, &alice)] {
        let response = app
            .client
            .post(app.actions_url(&Uuid::new_v4().to_string()))
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
            .header("content-type", "application/json")
            .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(problem(response).await["code"], "unauthorized");
    }
    assert_eq!(app.outbox_count().await, 0);
    assert!(app.accounts().await.is_empty());
}

/// A slog drain that keeps every record as a line of JSON.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    use slog::Drain;
    let captured = Captured::default();
    let drain = slog_json::Json::default(captured.clone()).fuse();
    let logger = slog::Logger::root(std::sync::Mutex::new(drain).fuse(), slog::o!());
    let app = crate::helpers::spawn_app_logging_to(|_| {}, logger).await;

    let valid = app.token("alice");
    let forged = sign(
        &json!({"sub": "alice", "exp": now() + 600}),
        Algorithm::HS256,
        b"another-secret-another-secret-000",
    );
    let expired = sign(
        &json!({"sub": "alice", "exp": now() - 3600}),
        Algorithm::HS256,
        SECRET.as_bytes(),
    );
    for token in [&valid, &forged, &expired] {
        app.client
            .post(app.actions_url(&Uuid::new_v4().to_string()))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
            .send()
            .await
            .unwrap();
        app.client
            .get(app.account_url("nope"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    app.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("not authenticated"), "{logs}");
    for token in [&valid, &forged, &expired] {
        // Neither the token nor any of its three parts.
        for part in std::iter::once(token.as_str()).chain(token.split('.')) {
            assert!(!logs.contains(part), "a token part is in the logs:\n{logs}");
        }
    }
    assert!(!logs.contains(SECRET));
}
