//! The whole pipeline on real processes, for the end-to-end tests: a private
//! Postgres (two databases), nsqlookupd and nsqd, with accounts-api and
//! audit-consumer running in the test process as they run in production
//! (same `Application`, same config parsing).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub const TOPIC: &str = "audit.events";
pub const CHANNEL: &str = "audit-store";

pub struct Stack {
    // Field order is drop order: services stop before the processes they use.
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub api_base: String,
    pub accounts_url: String,
    pub audit_url: String,
    _nsqd: testkit::Nsqd,
    _lookupd: testkit::Nsqlookupd,
    _postgres: testkit::Postgres,
}

/// Starts everything; each service gets its usual configuration plus
/// `api_extra` / `consumer_extra` (e.g. the `OTEL_*` variables).
pub async fn spawn_stack(
    secret: &str,
    api_extra: &[(&str, String)],
    consumer_extra: &[(&str, String)],
) -> Stack {
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

    let mut api_vars = vec![
        ("DATABASE_URL", accounts_url.clone()),
        ("API_BIND", "127.0.0.1:0".into()),
        ("AUTH_JWT_SECRET", secret.into()),
        ("NSQD_TCP_ADDRESS", nsqd.tcp_address()),
        ("NSQLOOKUPD_HTTP_ADDRESSES", lookupd.http_address()),
        ("NSQ_TOPIC", TOPIC.into()),
    ];
    api_vars.extend(api_extra.iter().cloned());
    let mut consumer_vars = vec![
        ("DATABASE_URL", audit_url.clone()),
        ("CONSUMER_BIND", "127.0.0.1:0".into()),
        ("NSQLOOKUPD_HTTP_ADDRESSES", lookupd.http_address()),
        ("NSQD_TCP_ADDRESS", nsqd.tcp_address()),
        ("NSQ_TOPIC", TOPIC.into()),
        ("NSQ_CHANNEL", CHANNEL.into()),
    ];
    consumer_vars.extend(consumer_extra.iter().cloned());
    let api_config = accounts_api::Config::from_vars(api_vars).expect("api config");
    let consumer_config =
        audit_consumer::Config::from_vars(consumer_vars).expect("consumer config");

    let logger = telemetry::test_logger();
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
    /// Stops both services and checks that each exited cleanly in time.
    pub async fn stop(self) {
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
