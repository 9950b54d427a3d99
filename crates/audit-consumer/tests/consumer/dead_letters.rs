//! `audit-consumer dead-letters list | replay`, run as the operator would.

use std::process::Command;

use crate::helpers::{bodies, event, spawn_app, TestApp, TOPIC};

/// Runs `audit-consumer dead-letters …` against the app's database and nsqd.
async fn dead_letters(app: &TestApp, args: &[&str]) -> (i32, String) {
    let args: Vec<String> = ["dead-letters"]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect();
    let vars = [
        ("DATABASE_URL", app.database_url.clone()),
        ("NSQD_TCP_ADDRESS", app.nsqd.tcp_address()),
        ("NSQ_TOPIC", TOPIC.to_owned()),
        ("LOG_LEVEL", "warn".to_owned()),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_audit-consumer"))
            .args(&args)
            .env_clear()
            .envs(vars)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr, "", "nothing on stderr");
    (output.status.code().unwrap(), stdout)
}

/// The id of the dead letter holding `body` and not yet replayed.
async fn pending_id(app: &TestApp, body: &[u8]) -> i64 {
    sqlx::query_scalar!(
        "SELECT id FROM audit_dead_letters WHERE body = $1 AND replayed_at IS NULL",
        body
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn is_replayed(app: &TestApp, id: i64) -> bool {
    sqlx::query_scalar!(
        r#"SELECT replayed_at IS NOT NULL AS "replayed!" FROM audit_dead_letters WHERE id = $1"#,
        id
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_the_newest_dead_letters_with_their_size_attempts_and_error() {
    let app = spawn_app().await;
    let (code, out) = dead_letters(&app, &["list"]).await;
    assert_eq!((code, out.as_str()), (0, "no dead letters\n"));

    let junk: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    app.publish_raw(b"not json at all").await;
    app.wait_for_dead_letters(1).await;
    app.publish_raw(&junk).await;
    app.wait_for_dead_letters(2).await;
    let first = pending_id(&app, b"not json at all").await;
    let second = pending_id(&app, &junk).await;

    let (code, out) = dead_letters(&app, &["list"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("id "), "{out}");
    let row = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Newest first: id, first seen, last seen, attempts, bytes, replayed, error…
    let newest = row(lines[1]);
    assert_eq!(newest[0], second.to_string());
    assert_eq!(&newest[3..6], ["1", &(900 * 1024).to_string(), "-"]);
    assert_eq!(&newest[6..9], ["not", "valid", "JSON:"]);
    let oldest = row(lines[2]);
    assert_eq!(oldest[0], first.to_string());
    assert_eq!(&oldest[3..6], ["1", "15", "-"]);

    let (code, out) = dead_letters(&app, &["list", "--limit", "1"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with(&second.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_republishes_dead_letters_once_the_cause_is_fixed_and_marks_them_replayed() {
    let app = spawn_app().await;
    app.postgres
        .psql(
            "audit",
            "ALTER TABLE audit_logs ADD CONSTRAINT no_mallory CHECK (actor_id <> 'mallory')",
        )
        .unwrap();
    let refused = bodies("mallory", 3);
    app.publish_together(&refused).await;
    app.publish_raw(b"not json at all").await;
    app.wait_for_dead_letters(4).await;
    app.wait_until_channel_is_drained().await;
    let ids = [
        pending_id(&app, &refused[0]).await,
        pending_id(&app, &refused[1]).await,
        pending_id(&app, &refused[2]).await,
    ];
    let poison = pending_id(&app, b"not json at all").await;

    // The cause is fixed; one event goes through again first.
    app.postgres
        .psql("audit", "ALTER TABLE audit_logs DROP CONSTRAINT no_mallory")
        .unwrap();
    let (code, out) = dead_letters(&app, &["replay", &ids[0].to_string()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("replayed 1 dead letter(s) to topic audit.events"),
        "{out}"
    );
    app.wait_for_audit_logs(1).await;
    assert!(is_replayed(&app, ids[0]).await);
    assert!(!is_replayed(&app, ids[1]).await);

    // Then the rest, poison included: it fails again and gets a new row.
    let (code, out) = dead_letters(&app, &["replay", "--all"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 3 dead letter(s)"), "{out}");
    app.wait_for_audit_logs(3).await;
    app.wait_for_dead_letters(5).await;
    app.wait_until_channel_is_drained().await;
    for id in [ids[1], ids[2], poison] {
        assert!(is_replayed(&app, id).await, "{id}");
    }
    let again = pending_id(&app, b"not json at all").await;
    assert!(again > poison);

    // Already replayed: said so, nothing published. Unknown: an error.
    let (code, out) = dead_letters(&app, &["replay", &ids[0].to_string()]).await;
    assert_eq!(code, 0, "{out}");
    let expected = format!("dead letter {}: already replayed at ", ids[0]);
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("replayed 0 dead letter(s)"), "{out}");
    let (code, out) = dead_letters(&app, &["replay", "999999"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("dead letter 999999: not found"), "{out}");

    // Every event stored once; the replayed poison dead-lettered again.
    app.publish(&event("bob")).await;
    app.wait_for_audit_logs(4).await;
    assert_eq!(app.dead_letter_count().await, 5);
}
