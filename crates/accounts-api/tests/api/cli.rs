//! The binary: configuration errors, `token`, `migrate`, `--help`.

use std::process::{Command, Output};

use serde_json::json;
use uuid::Uuid;

use std::time::Duration;

use crate::helpers::{spawn_app, SECRET};
use crate::pipeline::ApiProcess;

const BIN: &str = env!("CARGO_BIN_EXE_accounts-api");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_variable_stops_the_service_with_exit_code_2_and_one_line() {
    let output = run(&[], &[("AUTH_JWT_SECRET", SECRET)]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr(&output), "accounts-api: missing DATABASE_URL\n");
}

#[test]
fn a_bad_value_is_reported_naming_its_variable() {
    let output = run(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x"),
            ("AUTH_JWT_SECRET", SECRET),
            ("API_BIND", "not-an-address"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.starts_with("accounts-api: invalid API_BIND: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_short_secret_is_refused_without_being_printed() {
    let output = run(
        &[],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x"),
            ("AUTH_JWT_SECRET", "short-secret-value"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("invalid AUTH_JWT_SECRET"), "{err}");
    assert!(!err.contains("short-secret-value"), "{err}");
}

#[test]
fn help_is_printed_and_unknown_commands_are_refused() {
    let output = run(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("token <actor>"));
    let output = run(&["frobnicate"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn token_needs_only_the_secret() {
    let output = run(&["token", "alice"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr(&output), "accounts-api: missing AUTH_JWT_SECRET\n");
}

#[tokio::test]
async fn a_token_printed_by_the_binary_is_accepted_by_the_service() {
    let app = spawn_app().await;
    let output = run(
        &["token", "ops-bot", "--service", "--ttl", "120"],
        &[("AUTH_JWT_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).unwrap();
    let response = app
        .client
        .post(app.actions_url(&Uuid::new_v4().to_string()))
        .bearer_auth(token.trim())
        .header("content-type", "application/json")
        .body(json!({"action": "open", "params": {"name": "Acme"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let event = app.outbox_events().await.pop().unwrap();
    assert_eq!(event.actor.id, "ops-bot");
    assert_eq!(event.actor.kind, audit_event::ActorType::Service);
}

#[tokio::test]
async fn migrate_applies_the_schema_and_tolerates_another_services_migrations() {
    let postgres = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap()
        .unwrap();
    let url = postgres.create_database("shared").unwrap();
    let env = [("DATABASE_URL", url.as_str()), ("LOG_FORMAT", "text")];
    let output = run(&["migrate"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    // Another service's migration recorded in the same database.
    postgres
        .psql(
            "shared",
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (2001, 'audit logs', true, '\\x00', 1)",
        )
        .unwrap();
    let output = run(&["migrate"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    accounts_api::migrator().run(&pool).await.unwrap();
    let tables = postgres
        .psql(
            "shared",
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
        )
        .unwrap();
    assert_eq!(tables, "_sqlx_migrations,accounts,idempotency_keys,outbox");
}

fn serve_env(database_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("AUTH_JWT_SECRET", SECRET),
        ("RELAY_ENABLED", "false"),
        ("LOG_FORMAT", "text"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_at_start_is_waited_for_not_fatal() {
    let mut postgres = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap()
        .unwrap();
    let url = postgres.create_database("later").unwrap();
    tokio::task::block_in_place(|| postgres.stop()).unwrap();

    let mut api = ApiProcess::spawn(serve_env(&url));
    // Each attempt lasts DATABASE_ACQUIRE_TIMEOUT_MS (3 s); wait for two.
    let retried = crate::helpers::eventually(Duration::from_secs(20), || {
        let output = api.output();
        async move { output.matches("the database is not reachable yet").count() >= 2 }
    })
    .await;
    assert!(retried, "{}", api.output());
    assert!(api.is_running(), "{}", api.output());

    tokio::task::block_in_place(|| postgres.start_again()).unwrap();
    api.wait_until_ready(Duration::from_secs(30)).await;
    assert!(
        api.output().contains("migrations applied"),
        "{}",
        api.output()
    );
}

#[tokio::test]
async fn a_database_that_refuses_the_service_stops_it_with_exit_code_2_and_one_line() {
    let postgres = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap()
        .unwrap();
    let missing = postgres.url("no_such_database");
    let mut api = ApiProcess::spawn(serve_env(&missing));
    assert_eq!(api.exit_code(Duration::from_secs(20)).await, Some(2));
    let output = api.output();
    let lines: Vec<&str> = output.lines().filter(|l| l.contains("CRIT")).collect();
    assert_eq!(lines.len(), 1, "{output}");
    assert!(lines[0].contains("accounts-api cannot start"), "{output}");
    assert!(
        lines[0].contains("database \"no_such_database\" does not exist"),
        "{output}"
    );
}
