//! The delivery promise end to end, on real processes: every committed event
//! reaches `audit_logs` exactly once whether nsqd is killed, nsqd is away,
//! the API is killed between publishing and marking, or several APIs relay
//! at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, metric};
use crate::pipeline::{api_metric, open_accounts, ApiProcess, Pipeline};

/// Short, so that what nsqd lost comes back within the test.
const REPUBLISH_AFTER: (&str, &str) = ("RELAY_REPUBLISH_AFTER_SECS", "2");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_of_nsqd_while_5000_events_flow_loses_none_and_stores_each_once() {
    const EVENTS: usize = 5000;
    let mut pipeline = Pipeline::start().await;
    let api = pipeline.start_api(&[REPUBLISH_AFTER]).await;

    let load = tokio::spawn({
        let api = api.clone();
        async move { open_accounts(&[api], EVENTS, 16).await }
    });
    // No consumer yet: whatever nsqd acknowledged is in its memory only.
    assert!(
        eventually(Duration::from_secs(60), || async {
            pipeline.published() >= 1000
        })
        .await,
        "the relay did not publish"
    );
    tokio::task::block_in_place(|| pipeline.nsqd.kill()).unwrap();
    // Once the marks of the last acknowledged batch are in, every row marked
    // published was in nsqd's memory only, and is lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lost = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM outbox WHERE published_at IS NOT NULL"#
    )
    .fetch_one(&pipeline.accounts)
    .await
    .unwrap();
    assert!(lost >= 1000, "{lost}");
    tokio::task::block_in_place(|| pipeline.nsqd.start_again()).unwrap();
    pipeline.start_consumer().await;

    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 201), "a request failed");
    pipeline.wait_until_delivered(Duration::from_secs(90)).await;
    pipeline.assert_stored_exactly_once(EVENTS).await;
    // The events nsqd lost came back through republication.
    let republished = api_metric(&api, "accounts_api_outbox_republished_total").await;
    assert!(republished >= lost as f64, "{republished} < {lost}");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nsqd_down_for_30_seconds_the_api_keeps_accepting_and_the_backlog_drains() {
    let mut pipeline = Pipeline::start().await;
    pipeline.start_consumer().await;
    let api = pipeline.start_api(&[REPUBLISH_AFTER]).await;

    // About 50 requests a second until told to stop.
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let load = tokio::spawn({
        let (api, statuses, stop) = (api.clone(), statuses.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                let batch = open_accounts(std::slice::from_ref(&api), 5, 5).await;
                statuses.lock().await.extend(batch);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pipeline.nsqd.kill()).unwrap();
    let before_outage = statuses.lock().await.len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during_outage = statuses.lock().await.len() - before_outage;
    tokio::task::block_in_place(|| pipeline.nsqd.start_again()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    load.await.unwrap();

    let statuses = statuses.lock().await.clone();
    assert!(statuses.iter().all(|s| *s == 201), "a request failed");
    assert!(
        during_outage >= 300,
        "only {during_outage} requests while nsqd was down"
    );
    let drain_started = Instant::now();
    pipeline.wait_until_delivered(Duration::from_secs(90)).await;
    pipeline.assert_stored_exactly_once(statuses.len()).await;
    eprintln!(
        "{} events, {during_outage} during the outage, drained {:?} after nsqd returned",
        statuses.len(),
        drain_started.elapsed() + Duration::from_secs(2)
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_of_the_api_between_publish_and_mark_still_delivers_each_event_once() {
    const EVENTS: usize = 50;
    let mut pipeline = Pipeline::start().await;
    // The mark waits while `relay_hold` has a row: the API dies holding
    // rows nsqd has acknowledged but the outbox does not know about.
    sqlx::raw_sql(
        r#"
        CREATE TABLE relay_hold (held boolean);
        INSERT INTO relay_hold VALUES (true);
        CREATE FUNCTION hold_relay_mark() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            WHILE EXISTS (SELECT 1 FROM relay_hold) LOOP
                PERFORM pg_sleep(0.05);
            END LOOP;
            RETURN NEW;
        END $$;
        CREATE TRIGGER hold_relay_mark BEFORE UPDATE OF published_at ON outbox
            FOR EACH ROW WHEN (OLD.published_at IS NULL) EXECUTE FUNCTION hold_relay_mark();
        "#,
    )
    .execute(&pipeline.accounts)
    .await
    .unwrap();

    // The events are written first (by an API without a relay), so that the
    // relay of the process about to die claims them all in one batch.
    let writer = pipeline.start_api(&[("RELAY_ENABLED", "false")]).await;
    let statuses = open_accounts(&[writer], EVENTS, 8).await;
    assert!(statuses.iter().all(|s| *s == 201));
    let mut first = ApiProcess::start(pipeline.api_vars(&[])).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            pipeline.published() >= EVENTS as u64
        })
        .await,
        "nsqd did not get the events: {}",
        first.output()
    );
    first.kill();

    // The dead process's session finishes its statement, finds its client
    // gone and rolls back, as a crashed client's session does.
    // (Tables the test makes are unknown to the query macros.)
    sqlx::raw_sql("DELETE FROM relay_hold")
        .execute(&pipeline.accounts)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "n!" FROM pg_stat_activity
                   WHERE state <> 'idle' AND pid <> pg_backend_pid()
                     AND query LIKE '%UPDATE outbox%SET published_at%'"#
            )
            .fetch_one(&pipeline.accounts)
            .await
            .unwrap()
                == 0
        })
        .await,
        "the killed API's session is still running"
    );
    sqlx::raw_sql("DROP TRIGGER hold_relay_mark ON outbox")
        .execute(&pipeline.accounts)
        .await
        .unwrap();
    let marked = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM outbox WHERE published_at IS NOT NULL"#
    )
    .fetch_one(&pipeline.accounts)
    .await
    .unwrap();
    assert_eq!(marked, 0, "the mark must not have committed");

    // A new process publishes them again; the consumer then receives every
    // event twice and stores it once.
    let second = ApiProcess::start(pipeline.api_vars(&[])).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            pipeline.published() >= 2 * EVENTS as u64
        })
        .await,
        "not republished: {}",
        second.output()
    );
    pipeline.start_consumer().await;
    pipeline.wait_until_delivered(Duration::from_secs(30)).await;
    pipeline.assert_stored_exactly_once(EVENTS).await;
    assert_eq!(pipeline.published(), 2 * EVENTS as u64);
    // The second copies arrive and are skipped (the receipt of the first
    // may have confirmed the rows before they were handled).
    assert!(
        eventually(Duration::from_secs(10), || async {
            let consumer = pipeline.consumer_metrics().await;
            metric(&consumer, "audit_consumer_duplicates_skipped_total") == Some(EVENTS as f64)
        })
        .await,
        "{}",
        pipeline.consumer_metrics().await
    );
    pipeline.assert_stored_exactly_once(EVENTS).await;
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_relay_under_load_without_duplicates_or_stuck_rows() {
    const EVENTS: usize = 2000;
    let mut pipeline = Pipeline::start().await;
    pipeline.start_consumer().await;
    let a = ApiProcess::start(pipeline.api_vars(&[])).await;
    let b = ApiProcess::start(pipeline.api_vars(&[])).await;

    let statuses = open_accounts(&[a.base.clone(), b.base.clone()], EVENTS, 16).await;
    assert!(statuses.iter().all(|s| *s == 201), "a request failed");
    pipeline.wait_until_delivered(Duration::from_secs(60)).await;
    pipeline.assert_stored_exactly_once(EVENTS).await;

    // Each row went to nsqd once: no two relays ever held the same row.
    assert_eq!(pipeline.published(), EVENTS as u64);
    let published_a = api_metric(&a.base, "accounts_api_outbox_published_total").await;
    let published_b = api_metric(&b.base, "accounts_api_outbox_published_total").await;
    assert!(
        published_a > 0.0 && published_b > 0.0,
        "{published_a} {published_b}"
    );
    assert_eq!(published_a + published_b, EVENTS as f64);
    for base in [&a.base, &b.base] {
        assert_eq!(
            api_metric(base, "accounts_api_outbox_republished_total").await,
            0.0
        );
        assert_eq!(
            api_metric(base, "accounts_api_outbox_pending_rows").await,
            0.0
        );
        assert_eq!(
            api_metric(base, "accounts_api_outbox_unconfirmed_rows").await,
            0.0
        );
    }
    pipeline.stop().await;
}
