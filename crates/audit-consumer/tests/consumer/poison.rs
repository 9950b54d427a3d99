use chrono::{TimeZone, Utc};

use crate::helpers::{bodies, event, spawn_app, spawn_app_with, Options};

/// A stored dead letter, as the tests look at it.
struct DeadLetter {
    body: Vec<u8>,
    error: String,
    attempts: i32,
}

async fn dead_letters(pool: &sqlx::PgPool) -> Vec<DeadLetter> {
    sqlx::query_as!(
        DeadLetter,
        "SELECT body, error, attempts FROM audit_dead_letters ORDER BY id"
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn letter_for<'a>(letters: &'a [DeadLetter], body: &[u8]) -> &'a DeadLetter {
    let matching: Vec<_> = letters.iter().filter(|l| l.body == body).collect();
    assert_eq!(matching.len(), 1, "dead letters for one body");
    matching[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_poison_message_becomes_one_dead_letter_and_the_good_events_around_it_are_stored() {
    let app = spawn_app().await;
    let mut wrong_version = serde_json::to_value(event("alice")).unwrap();
    wrong_version["schema_version"] = 2.into();
    let nul_in_a_field = event("ali\u{0}ce").to_json().into_bytes();
    let junk: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "not valid JSON"),
        (
            wrong_version.to_string().into_bytes(),
            "unknown schema_version 2",
        ),
        (nul_in_a_field, "field actor.id contains a NUL character"),
        (junk, "not valid JSON"),
        (
            br#"{"schema_version": 1, "event_id": 42, "hello": "world"}"#.to_vec(),
            "does not match schema version 1",
        ),
    ];
    let good = bodies("alice", poison.len() + 1);

    // Good, poison, good, poison, … in one MPUB, so they share batches.
    let mut interleaved = Vec::new();
    for (i, good) in good.iter().enumerate() {
        interleaved.push(good.clone());
        if let Some((body, _)) = poison.get(i) {
            interleaved.push(body.clone());
        }
    }
    app.publish_together(&interleaved).await;
    // The same poison again, alone: still one dead letter.
    app.publish_raw(b"not json at all").await;

    app.wait_for_audit_logs(good.len() as i64).await;
    app.wait_for_dead_letters(poison.len() as i64).await;
    app.wait_until_channel_is_drained().await;
    let letters = dead_letters(&app.pool).await;
    for (body, expected_error) in &poison {
        let letter = letter_for(&letters, body);
        assert!(
            letter.error.contains(expected_error),
            "expected {expected_error:?} in {:?}",
            letter.error
        );
        assert_eq!(letter.attempts, 1);
    }

    // Still consuming.
    assert!(app.is_running());
    app.publish(&event("bob")).await;
    app.wait_for_audit_logs(good.len() as i64 + 1).await;
    app.wait_until_channel_is_drained().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_the_database_refuses_is_dead_lettered_and_the_rest_of_its_batch_is_stored() {
    let app = spawn_app_with(Options::default().var("BATCH_MAX_WAIT_MS", 500)).await;
    app.postgres
        .psql(
            "audit",
            "ALTER TABLE audit_logs ADD CONSTRAINT no_mallory CHECK (actor_id <> 'mallory')",
        )
        .unwrap();
    let refused = bodies("mallory", 2);
    // A valid event that Postgres cannot hold: timestamptz starts at 4713 BC.
    let mut ancient = event("alice");
    ancient.occurred_at = Utc.with_ymd_and_hms(-5000, 1, 1, 0, 0, 0).unwrap();
    let ancient = ancient.to_json().into_bytes();
    let mut batch = bodies("alice", 10);
    batch.insert(3, refused[0].clone());
    batch.insert(6, ancient.clone());
    batch.insert(10, refused[1].clone());
    app.publish_together(&batch).await;

    app.wait_for_audit_logs(10).await;
    app.wait_for_dead_letters(3).await;
    app.wait_until_channel_is_drained().await;
    let letters = dead_letters(&app.pool).await;
    for (body, expected_error) in [
        (&refused[0], "no_mallory"),
        (&refused[1], "no_mallory"),
        (&ancient, "out of range"),
    ] {
        let letter = letter_for(&letters, body);
        assert!(letter.error.contains(expected_error), "{}", letter.error);
        assert_eq!(letter.attempts, 1, "refused at once, without retries");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_failing_is_dead_lettered_after_nsq_max_attempts() {
    let app = spawn_app_with(Options::default().var("NSQ_MAX_ATTEMPTS", 3)).await;
    // An error that is neither an outage nor a refused value: it might go
    // away, so the consumer retries before giving up.
    app.postgres
        .psql(
            "audit",
            "CREATE FUNCTION refuse_mallory() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF NEW.actor_id = 'mallory' THEN RAISE EXCEPTION 'mallory is not welcome'; END IF; \
               RETURN NEW; \
             END $$; \
             CREATE TRIGGER refuse_mallory BEFORE INSERT ON audit_logs \
             FOR EACH ROW EXECUTE FUNCTION refuse_mallory();",
        )
        .unwrap();
    let mallory = event("mallory").to_json().into_bytes();
    let mut batch = bodies("alice", 4);
    batch.insert(2, mallory.clone());
    app.publish_together(&batch).await;

    app.wait_for_audit_logs(4).await;
    // Attempts 1 and 2 are requeued (after 1 s, then 2 s); attempt 3 is the last.
    app.wait_for_dead_letters(1).await;
    app.wait_until_channel_is_drained().await;
    let letters = dead_letters(&app.pool).await;
    let letter = letter_for(&letters, &mallory);
    assert_eq!(letter.attempts, 3);
    assert!(
        letter.error.contains("not stored after 3 attempts"),
        "{}",
        letter.error
    );
    assert!(
        letter.error.contains("mallory is not welcome"),
        "{}",
        letter.error
    );
}
