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
