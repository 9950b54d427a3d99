//! The whole pipeline on real processes: a private Postgres (two databases),
//! nsqlookupd and nsqd, with accounts-api and audit-consumer running in this
//! test process as they run in production (same `Application`, same config
//! parsing), driven over HTTP and checked in `audit_logs`.

// A failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

mod stack;

use stack::{spawn_stack, Stack};

const SECRET: &str = "pipeline-test-secret-0123456789abcdef";

impl Stack {
    fn target(&self) -> e2e::Target {
        e2e::Target {
            api_base: self.api_base.clone(),
            jwt_secret: SECRET.into(),
            jwt_issuer: None,
            jwt_audience: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_authenticated_request_leaves_exactly_one_audit_row() {
    let stack = spawn_stack(SECRET, &[], &[]).await;

    let expectations = e2e::drive(&stack.target(), "pipeline", 600, 8, 42)
        .await
        .expect("every request answered as the contract says");
    let audit = sqlx::PgPool::connect(&stack.audit_url).await.unwrap();
    let report = e2e::verify(&audit, "pipeline", &expectations, Duration::from_secs(90))
        .await
        .expect("audit trail matches the requests");

    println!("{report}");
    assert_eq!(report.requests, 600);
    assert_eq!(report.rows, report.succeeded + report.rejected);
    // The mix really exercised the interesting cases.
    assert!(report.succeeded >= 60, "{report}");
    assert!(report.rejected >= 60, "{report}");
    assert!(report.without_valid_token >= 20, "{report}");
    // 600 requests from two actors stay within the default burst.
    assert_eq!(report.rate_limited, 0, "{report}");
    let succeeded_actions: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT action FROM audit_logs WHERE outcome = 'succeeded' ORDER BY action",
    )
    .fetch_all(&audit)
    .await
    .unwrap();
    let succeeded_actions: Vec<_> = succeeded_actions.into_iter().map(|(a,)| a).collect();
    assert_eq!(
        succeeded_actions,
        [
            "account.close",
            "account.open",
            "account.reactivate",
            "account.rename",
            "account.suspend"
        ]
    );

    // Every outbox row was published and then confirmed by the consumer's
    // receipt (which arrives just after the row is stored), and nothing else
    // was stored.
    let accounts = sqlx::PgPool::connect(&stack.accounts_url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (unconfirmed, total): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE confirmed_at IS NULL), count(*) FROM outbox",
        )
        .fetch_one(&accounts)
        .await
        .unwrap();
        assert_eq!(total as usize, report.rows);
        if unconfirmed == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unconfirmed} outbox rows still unconfirmed after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_logs")
        .fetch_one(&audit)
        .await
        .unwrap();
    assert_eq!(stored as usize, report.rows);

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_over_the_rate_limit_are_answered_429_and_leave_no_row() {
    let limit = [
        ("RATE_LIMIT_PER_SECOND", "1".to_owned()),
        ("RATE_LIMIT_BURST", "20".to_owned()),
    ];
    let stack = spawn_stack(SECRET, &limit, &[]).await;

    let expectations = e2e::drive(&stack.target(), "limited", 200, 8, 7)
        .await
        .expect("every request answered as the contract says");
    let audit = sqlx::PgPool::connect(&stack.audit_url).await.unwrap();
    let report = e2e::verify(&audit, "limited", &expectations, Duration::from_secs(60))
        .await
        .expect("audit trail matches the requests");

    println!("{report}");
    // Two actors, a burst of 20 each: most of the 200 are refused.
    assert!(report.rate_limited >= 100, "{report}");
    assert_eq!(report.rows, report.succeeded + report.rejected);
    assert!(report.rows >= 20, "{report}");
}
