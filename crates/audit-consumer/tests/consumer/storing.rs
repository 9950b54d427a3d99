use std::collections::HashSet;
use std::time::Duration;

use audit_event::{EventError, Outcome};
use uuid::Uuid;

use crate::helpers::{bodies, event, spawn_app, spawn_app_with, Options};

#[tokio::test(flavor = "multi_thread")]
async fn valid_events_are_stored_once_with_every_column_as_sent() {
    let app = spawn_app().await;
    let succeeded = event("alice");
    let mut rejected = event("svc-billing");
    rejected.actor.kind = audit_event::ActorType::Service;
    rejected.action = "account.close".to_owned();
    rejected.resource.id = "not-a-uuid".to_owned();
    rejected.outcome = Outcome::Rejected;
    rejected.error = Some(EventError {
        status: 409,
        code: "invalid_transition".to_owned(),
    });
    rejected.request.ip = None;
    rejected.request.user_agent = None;
    rejected.sequence = None;
    rejected.details = serde_json::json!({});
    rejected.traceparent = None;

    app.publish(&succeeded).await;
    app.publish(&rejected).await;
    app.wait_for_audit_logs(2).await;

    for event in [&succeeded, &rejected] {
        let row = sqlx::query!(
            r#"SELECT event_id, schema_version, occurred_at, actor_id, actor_type, action,
                      resource_type, resource_id, outcome, error_status, error_code,
                      request_id, request_ip, user_agent, sequence, details, traceparent,
                      recorded_at
               FROM audit_logs WHERE event_id = $1"#,
            event.event_id
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(row.event_id, event.event_id);
        assert_eq!(row.schema_version, 1);
        assert_eq!(row.occurred_at, event.occurred_at);
        assert_eq!(row.actor_id, event.actor.id);
        assert_eq!(row.actor_type, event.actor.kind.as_str());
        assert_eq!(row.action, event.action);
        assert_eq!(row.resource_type, event.resource.kind);
        assert_eq!(row.resource_id, event.resource.id);
        assert_eq!(row.outcome, event.outcome.as_str());
        assert_eq!(
            row.error_status,
            event.error.as_ref().map(|e| i32::from(e.status))
        );
        assert_eq!(
            row.error_code.as_deref(),
            event.error.as_ref().map(|e| e.code.as_str())
        );
        assert_eq!(row.request_id, event.request.id);
        assert_eq!(row.request_ip, event.request.ip);
        assert_eq!(row.user_agent, event.request.user_agent);
        assert_eq!(row.sequence, event.sequence);
        assert_eq!(row.details, event.details);
        assert_eq!(row.traceparent, event.traceparent);
        assert!(row.recorded_at >= event.occurred_at);
    }
    app.wait_until_channel_is_drained().await;
    assert_eq!(app.dead_letter_count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_published_three_times_is_stored_once() {
    let app = spawn_app().await;
    let twice_in_one_batch = event("alice").to_json().into_bytes();
    // The first two arrive in one MPUB, so they share a batch (and must not
    // fail its statement); the third comes later, in a batch of its own.
    app.publish_together(&[twice_in_one_batch.clone(), twice_in_one_batch.clone()])
        .await;
    app.wait_for_audit_logs(1).await;
    app.publish_raw(&twice_in_one_batch).await;

    app.wait_until_channel_is_drained().await;
    assert_eq!(app.audit_log_count().await, 1);
    assert_eq!(app.dead_letter_count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_never_exceed_batch_size_and_fill_up_when_messages_wait() {
    let app = spawn_app_with(
        Options::default()
            .var("BATCH_SIZE", 10)
            .var("NSQ_MAX_IN_FLIGHT", 10)
            .var("BATCH_MAX_WAIT_MS", 1000),
    )
    .await;
    app.publish_together(&bodies("alice", 35)).await;
    app.wait_for_audit_logs(35).await;

    // Rows written by one transaction share its xmin: one group per batch.
    let sizes: Vec<i64> = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM audit_logs GROUP BY xmin::text ORDER BY 1 DESC"#
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        sizes.iter().all(|&n| n <= 10),
        "a batch exceeded BATCH_SIZE: {sizes:?}"
    );
    assert!(sizes.len() >= 4, "35 events in batches of 10: {sizes:?}");
    assert_eq!(
        sizes[0], 10,
        "no batch filled up although messages waited: {sizes:?}"
    );
    app.wait_until_channel_is_drained().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_event_is_stored_without_waiting_for_a_full_batch() {
    let app = spawn_app_with(Options::default().var("BATCH_MAX_WAIT_MS", 200)).await;
    let started = tokio::time::Instant::now();
    app.publish(&event("alice")).await;
    app.wait_for_audit_logs(1).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_finds_nsqd_through_nsqlookupd() {
    let app = spawn_app_with(Options {
        via_lookupd: true,
        ..Options::default()
    })
    .await;
    assert!(app.lookupd.is_some());
    let events: Vec<_> = (0..5).map(|_| event("alice")).collect();
    for event in &events {
        app.publish(event).await;
    }
    app.wait_for_audit_logs(5).await;
    let stored: HashSet<Uuid> = sqlx::query_scalar!("SELECT event_id FROM audit_logs")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(stored, events.iter().map(|e| e.event_id).collect());
    app.wait_until_channel_is_drained().await;
}
