//! The whole pipeline on real processes: a private Postgres (two databases),
//! nsqlookupd and nsqd, with accounts-api and audit-consumer running in this
//! test process as they run in production (same `Application`, same config
//! parsing), driven over HTTP and checked in `audit_logs`.

// A failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const SECRET: &str = "pipeline-test-secret-0123456789abcdef";
const TOPIC: &str = "audit.events";
const CHANNEL: &str = "audit-store";

struct Stack {
    // Field order is drop order: services stop before the processes they use.
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    api_base: String,
    accounts_url: String,
    audit_url: String,
    _nsqd: testkit::Nsqd,
    _lookupd: testkit::Nsqlookupd,
    _postgres: testkit::Postgres,
}

async fn spawn_stack() -> Stack {
    let postgres = testkit::Postgres::start().expect("postgres");
    let accounts_url = postgres.create_database("accounts").expect("accounts db");
    let audit_url = postgres.create_database("audit").expect("audit db");
    let lookupd = testkit::Nsqlookupd::start().expect("nsqlookupd");
    let nsqd = testkit::Nsqd::start(testkit::NsqdOptions {
        lookupd_tcp_addresses: vec![lookupd.tcp_address()],
        ..Default::default()
    })
    .expect("nsqd");
    // Made up front, as an operator's first publish would: nsqd registers the
    // topic with nsqlookupd at once, so the consumer finds it on its first look.
    nsqd.create_topic(TOPIC).expect("topic");
    nsqd.create_channel(TOPIC, CHANNEL).expect("channel");

    let logger = telemetry::test_logger();
    let api_config = accounts_api::Config::from_vars([
        ("DATABASE_URL", accounts_url.clone()),
        ("API_BIND", "127.0.0.1:0".into()),
        ("AUTH_JWT_SECRET", SECRET.into()),
        ("NSQD_TCP_ADDRESS", nsqd.tcp_address()),
        ("NSQLOOKUPD_HTTP_ADDRESSES", lookupd.http_address()),
        ("NSQ_TOPIC", TOPIC.into()),
    ])
    .expect("api config");
    let consumer_config = audit_consumer::Config::from_vars([
        ("DATABASE_URL", audit_url.clone()),
        ("CONSUMER_BIND", "127.0.0.1:0".into()),
        ("NSQLOOKUPD_HTTP_ADDRESSES", lookupd.http_address()),
        ("NSQD_TCP_ADDRESS", nsqd.tcp_address()),
        ("NSQ_TOPIC", TOPIC.into()),
        ("NSQ_CHANNEL", CHANNEL.into()),
    ])
    .expect("consumer config");

    let api = accounts_api::Application::build(api_config, logger.clone())
        .await
        .expect("api");
    let consumer = audit_consumer::Application::build(consumer_config, logger)
        .await
        .expect("consumer");
    let api_base = format!("http://127.0.0.1:{}", api.port());
    let shutdown = CancellationToken::new();
    let tasks = vec![
        tokio::spawn(api.run_until_stopped(shutdown.clone())),
        tokio::spawn(consumer.run_until_stopped(shutdown.clone())),
    ];
    Stack {
        shutdown,
        tasks,
        api_base,
        accounts_url,
        audit_url,
        _nsqd: nsqd,
        _lookupd: lookupd,
        _postgres: postgres,
    }
}

impl Stack {
    fn target(&self) -> e2e::Target {
        e2e::Target {
            api_base: self.api_base.clone(),
            jwt_secret: SECRET.into(),
            jwt_issuer: None,
            jwt_audience: None,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a service did not stop within 30 s");
            result
                .expect("service task")
                .expect("service exited cleanly");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_authenticated_request_leaves_exactly_one_audit_row() {
    let stack = spawn_stack().await;

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
