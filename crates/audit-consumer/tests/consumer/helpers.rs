//! `spawn_app`: a consumer on a random port with its own Postgres cluster and
//! nsqd, plus the means to publish to it and to look at what it stored.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use audit_consumer::{Application, Config};
use audit_event::{Actor, ActorType, AuditEvent, Outcome, RequestInfo, Resource};
use chrono::{SubsecRound, Utc};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TOPIC: &str = "audit.events";
pub const CHANNEL: &str = "audit-store";

/// Everything a test needs; dropping it stops the processes it started.
pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the consumer's HTTP port.
    pub address: String,
    /// A pool of the test's own, to look at the tables.
    pub pool: PgPool,
    /// The `audit` database of the consumer.
    pub database_url: String,
    pub postgres: testkit::Postgres,
    pub nsqd: testkit::Nsqd,
    /// Kept alive for tests that discover nsqd through it.
    pub lookupd: Option<testkit::Nsqlookupd>,
    pub producer: nsq::Producer,
    pub topic: nsq::Topic,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// How to start the consumer under test.
#[derive(Default)]
pub struct Options {
    /// Environment variables on top of the ones `spawn_app` sets.
    pub vars: Vec<(&'static str, String)>,
    /// Discover nsqd through an nsqlookupd instead of connecting directly.
    pub via_lookupd: bool,
}

impl Options {
    pub fn var(mut self, name: &'static str, value: impl ToString) -> Options {
        self.vars.push((name, value.to_string()));
        self
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let via_lookupd = options.via_lookupd;
    let (postgres, nsqd, lookupd) = start_processes(via_lookupd).await;
    let database_url = postgres.create_database("audit").unwrap();

    let mut vars = vec![
        ("DATABASE_URL", database_url.clone()),
        ("CONSUMER_BIND", "127.0.0.1:0".to_owned()),
        ("NSQ_TOPIC", TOPIC.to_owned()),
        ("NSQ_CHANNEL", CHANNEL.to_owned()),
    ];
    match &lookupd {
        Some(lookupd) => {
            vars.push(("NSQLOOKUPD_HTTP_ADDRESSES", lookupd.http_address()));
        }
        None => vars.push(("NSQD_TCP_ADDRESSES", nsqd.tcp_address())),
    }
    vars.extend(options.vars);
    let mut config = Config::from_vars(vars).expect("valid test configuration");
    if let nsq::Discovery::Lookupd { poll_interval, .. } = &mut config.nsq_discovery {
        *poll_interval = Duration::from_millis(500);
    }

    let http = reqwest::Client::new();
    if let Some(lookupd) = &lookupd {
        wait_until_lookupd_knows_the_topic(&http, &lookupd.http_address()).await;
    }

    let app = Application::build(config, telemetry::test_logger())
        .await
        .expect("build the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let pool = PgPool::connect(&database_url).await.unwrap();
    let producer = nsq::Producer::new(
        nsqd.tcp_address(),
        nsq::ProducerConfig::default(),
        telemetry::test_logger(),
    );
    TestApp {
        address,
        pool,
        database_url,
        postgres,
        nsqd,
        lookupd,
        producer,
        topic: nsq::Topic::new(TOPIC).unwrap(),
        http,
        shutdown,
        task: Some(task),
    }
}

/// A Postgres cluster, an nsqd with the topic and channel created, and
/// (when asked) an nsqlookupd that nsqd registers with.
pub async fn start_processes(
    via_lookupd: bool,
) -> (
    testkit::Postgres,
    testkit::Nsqd,
    Option<testkit::Nsqlookupd>,
) {
    tokio::task::spawn_blocking(move || {
        let postgres = testkit::Postgres::start().expect("start Postgres");
        let lookupd = via_lookupd.then(|| testkit::Nsqlookupd::start().expect("start nsqlookupd"));
        let nsqd = testkit::Nsqd::start(testkit::NsqdOptions {
            lookupd_tcp_addresses: lookupd.iter().map(|l| l.tcp_address()).collect(),
            ..Default::default()
        })
        .expect("start nsqd");
        // The channel exists before anything is published, so every message
        // reaches it whenever the consumer subscribes.
        nsqd.create_topic(TOPIC).expect("create topic");
        nsqd.create_channel(TOPIC, CHANNEL).expect("create channel");
        (postgres, nsqd, lookupd)
    })
    .await
    .unwrap()
}

pub async fn wait_until_lookupd_knows_the_topic(http: &reqwest::Client, lookupd: &str) {
    let url = format!("http://{lookupd}/lookup?topic={TOPIC}");
    eventually(
        "nsqlookupd to know the topic",
        Duration::from_secs(10),
        || async {
            match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    body["producers"].as_array().is_some_and(|p| !p.is_empty())
                }
                _ => false,
            }
        },
    )
    .await;
}

/// nsqd's view of our channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages waiting to be sent.
    pub depth: u64,
    /// Messages sent and neither finished nor requeued.
    pub in_flight: u64,
    /// Messages requeued with a delay that has not passed yet.
    pub deferred: u64,
    /// Messages nsqd gave up waiting for (no FIN, REQ or TOUCH in time).
    pub timed_out: u64,
    /// Messages requeued by a consumer (REQ).
    pub requeued: u64,
    /// Consumers subscribed.
    pub clients: usize,
}

/// nsqd's statistics of our channel.
pub fn channel_stats(nsqd: &testkit::Nsqd) -> ChannelStats {
    let stats = nsqd.stats().unwrap();
    let channel = stats["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["topic_name"] == TOPIC)
        .flat_map(|t| t["channels"].as_array().into_iter().flatten())
        .find(|c| c["channel_name"] == CHANNEL)
        .unwrap_or_else(|| panic!("no channel {CHANNEL} in nsqd stats: {stats}"));
    let count = |field: &str| {
        channel[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {channel}"))
    };
    ChannelStats {
        depth: count("depth"),
        in_flight: count("in_flight_count"),
        deferred: count("deferred_count"),
        timed_out: count("timeout_count"),
        requeued: count("requeue_count"),
        clients: channel["clients"].as_array().map_or(0, Vec::len),
    }
}

/// Event ids in `audit_logs`, in no particular order.
pub async fn stored_event_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar!("SELECT event_id FROM audit_logs")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Asserts that `audit_logs` holds exactly the events `published` (which
/// may name an event more than once): each once, none missing, none extra.
pub async fn assert_stored_exactly_once(pool: &PgPool, published: &[Uuid]) {
    let expected: HashSet<Uuid> = published.iter().copied().collect();
    let stored = stored_event_ids(pool).await;
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len(), "an event_id stored twice");
    let missing = expected.difference(&stored_set).count();
    let extra = stored_set.difference(&expected).count();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "{} published, {} stored: {missing} missing, {extra} never published",
        expected.len(),
        stored.len()
    );
}

/// Waits until `audit_logs` holds `n` rows, for up to `timeout`.
pub async fn wait_for_rows(pool: &PgPool, n: usize, timeout: Duration) {
    let n = i64::try_from(n).unwrap();
    let count = || async {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_logs"#)
            .fetch_one(pool)
            .await
            .unwrap_or(-1)
    };
    eventually(&format!("{n} rows in audit_logs"), timeout, || async {
        count().await >= n
    })
    .await;
    assert_eq!(count().await, n, "more rows than expected");
}

/// The series of a `/metrics` exposition, by name with labels.
#[derive(Debug, Clone)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (name, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
                (name.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect();
        Metrics(series)
    }

    /// The value of a series; panics if it is not exposed.
    pub fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics: {:?}", self.0.keys()))
    }
}

impl TestApp {
    pub async fn publish(&self, event: &AuditEvent) {
        self.publish_raw(event.to_json().as_bytes()).await;
    }

    pub async fn publish_raw(&self, body: &[u8]) {
        self.producer.publish(&self.topic, body).await.unwrap();
    }

    /// Publishes all of them with one MPUB, so they reach the channel together.
    pub async fn publish_together(&self, bodies: &[Vec<u8>]) {
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        self.producer
            .multi_publish(&self.topic, &bodies)
            .await
            .unwrap();
    }

    pub async fn audit_log_count(&self) -> i64 {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_logs"#)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn dead_letter_count(&self) -> i64 {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_dead_letters"#)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until `audit_logs` holds `n` rows.
    pub async fn wait_for_audit_logs(&self, n: i64) {
        wait_for_rows(
            &self.pool,
            usize::try_from(n).unwrap(),
            Duration::from_secs(15),
        )
        .await;
    }

    /// Waits until `audit_dead_letters` holds `n` rows.
    pub async fn wait_for_dead_letters(&self, n: i64) {
        eventually(
            &format!("{n} dead letters"),
            Duration::from_secs(15),
            || async { self.dead_letter_count().await >= n },
        )
        .await;
        assert_eq!(
            self.dead_letter_count().await,
            n,
            "more dead letters than expected"
        );
    }

    pub fn channel_stats(&self) -> ChannelStats {
        channel_stats(&self.nsqd)
    }

    /// The consumer's `/metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&self.get("/metrics").await.text().await.unwrap())
    }

    /// Waits until nsqd holds nothing for the channel: every message was
    /// answered with FIN (a REQ would leave it deferred or queued).
    pub async fn wait_until_channel_is_drained(&self) {
        eventually(
            "the channel to be drained",
            Duration::from_secs(15),
            || async {
                let stats = self.channel_stats();
                stats.depth == 0 && stats.in_flight == 0 && stats.deferred == 0
            },
        )
        .await;
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// Whether the consumer is still running (it never stops on its own).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the consumer to stop, as SIGTERM would, and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("stopped twice");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the consumer did not stop within 15 s")
            .unwrap()
    }
}

/// Polls `check` until it is true, or panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A valid event with every optional field set. The timestamp has whole
/// microseconds, Postgres' precision, so it compares equal once stored.
pub fn event(actor: &str) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        schema_version: audit_event::SCHEMA_VERSION,
        occurred_at: Utc::now().trunc_subsecs(6),
        actor: Actor {
            id: actor.to_owned(),
            kind: ActorType::User,
        },
        action: "account.rename".to_owned(),
        resource: Resource {
            kind: "account".to_owned(),
            id: Uuid::new_v4().to_string(),
        },
        outcome: Outcome::Succeeded,
        error: None,
        request: RequestInfo {
            id: format!("req-{}", Uuid::new_v4()),
            ip: Some("203.0.113.7".to_owned()),
            user_agent: Some("curl/8.5.0".to_owned()),
        },
        sequence: Some(3),
        details: serde_json::json!({"name": "New name", "nested": {"list": [1, 2.5, null, "é"]}}),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
    }
}

/// `n` valid events by `actor`, as message bodies.
pub fn bodies(actor: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| event(actor).to_json().into_bytes())
        .collect()
}
