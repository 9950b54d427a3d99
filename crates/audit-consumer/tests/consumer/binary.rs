//! The `audit-consumer` executable: command line, configuration errors,
//! `migrate`.

use std::process::{Command, Output};

fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audit-consumer"))
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn help_describes_the_commands_and_exits_zero() {
    let output = run(&["--help"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for word in ["serve", "migrate", "DATABASE_URL"] {
        assert!(text.contains(word), "{text}");
    }
}

#[test]
fn help_lists_the_dead_letter_commands() {
    let output = run(&["--help"], &[]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("dead-letters list [--limit N]"), "{text}");
    assert!(
        text.contains("dead-letters replay <ID>... | --all"),
        "{text}"
    );
}

#[test]
fn an_unknown_command_exits_two() {
    let output = run(&["replay-everything"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown command"));
}

#[test]
fn a_configuration_error_is_one_line_naming_the_variable_and_exits_two() {
    let output = run(&["serve"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "audit-consumer: DATABASE_URL is not set; it is required\n"
    );

    let output = run(
        &[],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/audit"),
            ("NSQ_MAX_IN_FLIGHT", "50"),
            ("BATCH_SIZE", "100"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("audit-consumer: BATCH_SIZE is invalid"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_creates_the_tables_next_to_another_services_migrations() {
    let postgres = tokio::task::spawn_blocking(|| testkit::Postgres::start().unwrap())
        .await
        .unwrap();
    let url = postgres.create_database("shared").unwrap();
    // The accounts service migrated this database first (versions 1xxx).
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/consumer/fixtures/other-service"
    )))
    .await
    .unwrap()
    .run(&pool)
    .await
    .unwrap();

    // Twice: the second run finds everything applied.
    for _ in 0..2 {
        let url = url.clone();
        let output = tokio::task::spawn_blocking(move || {
            run(
                &["migrate"],
                &[("DATABASE_URL", &url), ("LOG_FORMAT", "text")],
            )
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let tables: Vec<String> = sqlx::query_scalar!(
        r#"SELECT table_name AS "name!" FROM information_schema.tables
           WHERE table_schema = 'public' ORDER BY 1"#
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "audit_dead_letters",
            "audit_logs",
            "other_service_table"
        ]
    );
}

/// Runs `serve` against `database_url` (no nsqd is needed: a configuration
/// error stops it before it subscribes) and returns its exit code and the
/// lines it logged.
async fn serve_once(
    database_url: String,
    extra: &[(&'static str, &'static str)],
) -> (i32, Vec<String>) {
    let extra = extra.to_vec();
    let output = tokio::task::spawn_blocking(move || {
        let mut vars = vec![
            ("DATABASE_URL", database_url.as_str()),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info"),
            ("CONSUMER_BIND", "127.0.0.1:0"),
            ("NSQD_TCP_ADDRESSES", "127.0.0.1:1"),
        ];
        vars.extend(extra);
        run(&["serve"], &vars)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr, "", "nothing on stderr");
    (
        output.status.code().unwrap(),
        stdout.lines().map(str::to_owned).collect(),
    )
}

/// The one line of a failed start: a JSON log record at error level.
fn the_error(lines: &[String]) -> String {
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(record["level"], "ERRO", "{record}");
    assert_eq!(record["msg"], "audit-consumer cannot start", "{record}");
    record["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_errors_found_in_the_database_stop_the_consumer_with_one_clear_line() {
    let postgres = tokio::task::spawn_blocking(|| testkit::Postgres::start().unwrap())
        .await
        .unwrap();
    let empty = postgres.create_database("empty").unwrap();

    // Wrong credentials (the cluster trusts every existing user; this one
    // does not exist).
    let url = format!("postgres://nobody@127.0.0.1:{}/empty", postgres.port());
    let (code, lines) = serve_once(url, &[]).await;
    assert_eq!(code, 2);
    let error = the_error(&lines);
    assert!(error.contains(r#"role "nobody" does not exist"#), "{error}");
    assert!(
        error.contains("check the user and password in DATABASE_URL"),
        "{error}"
    );

    // No such database.
    let (code, lines) = serve_once(postgres.url("missing"), &[]).await;
    assert_eq!(code, 2);
    let error = the_error(&lines);
    assert!(
        error.contains(r#"database "missing" does not exist"#),
        "{error}"
    );
    assert!(
        error.contains("check the database name in DATABASE_URL"),
        "{error}"
    );

    // The tables are missing and migrations are off.
    let (code, lines) = serve_once(empty.clone(), &[("RUN_MIGRATIONS", "false")]).await;
    assert_eq!(code, 2);
    let error = the_error(&lines);
    assert!(
        error.contains(r#"relation "audit_logs" does not exist"#),
        "{error}"
    );
    assert!(error.contains("audit-consumer migrate"), "{error}");

    // The tables are there, but the user may not write them.
    postgres
        .psql(
            "empty",
            "CREATE ROLE reader LOGIN; \
             CREATE TABLE audit_logs (event_id uuid); \
             CREATE TABLE audit_dead_letters (id bigint); \
             GRANT SELECT ON audit_logs, audit_dead_letters TO reader;",
        )
        .unwrap();
    let url = format!("postgres://reader@127.0.0.1:{}/empty", postgres.port());
    let (code, lines) = serve_once(url, &[("RUN_MIGRATIONS", "false")]).await;
    assert_eq!(code, 2);
    let error = the_error(&lines);
    assert!(error.contains("lacks INSERT on audit_logs"), "{error}");
}
