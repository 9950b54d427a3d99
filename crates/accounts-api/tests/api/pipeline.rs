//! The whole delivery path on real processes, for the delivery tests: one
//! Postgres cluster (an `accounts` and an `audit` database), one nsqd, the
//! audit consumer (in this process), and the API either in this process or
//! as child processes of the built binary (to kill it with SIGKILL).

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounts_api::{issue_token, Application, Config};
use audit_event::ActorType;
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{eventually, metric, SECRET};
use crate::relay::TOPIC;

const CHANNEL: &str = "audit-store";

pub struct Pipeline {
    /// Kept for its lifetime: dropping it stops the cluster.
    _postgres: testkit::Postgres,
    pub nsqd: testkit::Nsqd,
    pub accounts_url: String,
    pub accounts: PgPool,
    pub audit: PgPool,
    audit_url: String,
    consumer: Option<Running>,
    apis: Vec<Running>,
}

/// A service running in this process.
struct Running {
    port: u16,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Pipeline {
    /// Postgres and nsqd, with the events topic and the consumers' channel
    /// made up front (so nsqd keeps every message for it), the accounts
    /// schema applied, and no service running yet.
    pub async fn start() -> Pipeline {
        let (postgres, nsqd) = tokio::task::spawn_blocking(|| {
            let postgres = testkit::Postgres::start().expect("starting Postgres");
            let nsqd = testkit::Nsqd::start(testkit::NsqdOptions::default()).expect("nsqd");
            nsqd.create_topic(TOPIC).unwrap();
            nsqd.create_channel(TOPIC, CHANNEL).unwrap();
            (postgres, nsqd)
        })
        .await
        .unwrap();
        let accounts_url = postgres.create_database("accounts").unwrap();
        let audit_url = postgres.create_database("audit").unwrap();
        let accounts = PgPool::connect(&accounts_url).await.unwrap();
        accounts_api::migrator().run(&accounts).await.unwrap();
        let audit = PgPool::connect(&audit_url).await.unwrap();
        audit_consumer::migrator().run(&audit).await.unwrap();
        Pipeline {
            _postgres: postgres,
            nsqd,
            accounts_url,
            accounts,
            audit,
            audit_url,
            consumer: None,
            apis: Vec::new(),
        }
    }

    /// The API's environment: this pipeline's database and nsqd, receipts
    /// straight from nsqd, then `extra`.
    pub fn api_vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("DATABASE_URL", self.accounts_url.clone()),
            ("AUTH_JWT_SECRET", SECRET.to_owned()),
            ("API_BIND", "127.0.0.1:0".to_owned()),
            ("NSQD_TCP_ADDRESS", self.nsqd.tcp_address()),
            ("RELAY_POLL_INTERVAL_MS", "100".to_owned()),
            ("LOG_LEVEL", "warn".to_owned()),
            ("LOG_FORMAT", "text".to_owned()),
            // The load tests send thousands of requests from one actor.
            ("RATE_LIMIT_PER_SECOND", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        vars
    }

    /// Starts the API in this process; returns its base URL.
    pub async fn start_api(&mut self, extra: &[(&str, &str)]) -> String {
        let config = Config::from_vars(self.api_vars(extra)).unwrap();
        let app = Application::build(config, telemetry::test_logger())
            .await
            .unwrap();
        let port = app.port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        self.apis.push(Running {
            port,
            shutdown,
            task,
        });
        format!("http://127.0.0.1:{port}")
    }

    /// Starts the audit consumer in this process, taking events straight
    /// from nsqd and sending receipts to it.
    pub async fn start_consumer(&mut self) {
        let config = audit_consumer::Config::from_vars([
            ("DATABASE_URL", self.audit_url.clone()),
            ("CONSUMER_BIND", "127.0.0.1:0".to_owned()),
            ("NSQD_TCP_ADDRESSES", self.nsqd.tcp_address()),
            ("NSQD_TCP_ADDRESS", self.nsqd.tcp_address()),
            ("NSQ_TOPIC", TOPIC.to_owned()),
            ("NSQ_CHANNEL", CHANNEL.to_owned()),
        ])
        .unwrap();
        let app = audit_consumer::Application::build(config, telemetry::test_logger())
            .await
            .unwrap();
        let port = app.port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        self.consumer = Some(Running {
            port,
            shutdown,
            task,
        });
    }

    /// The consumer's `/metrics` text.
    pub async fn consumer_metrics(&self) -> String {
        let port = self.consumer.as_ref().expect("a running consumer").port;
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Messages nsqd received on the events topic since it (last) started.
    pub fn published(&self) -> u64 {
        crate::relay::message_count(&self.nsqd, TOPIC)
    }

    pub async fn outbox_ids(&self) -> BTreeSet<Uuid> {
        sqlx::query_scalar!("SELECT event_id FROM outbox")
            .fetch_all(&self.accounts)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Outbox rows the relay still has to do something about.
    pub async fn undelivered(&self) -> i64 {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox WHERE confirmed_at IS NULL"#)
            .fetch_one(&self.accounts)
            .await
            .unwrap()
    }

    /// Waits until every outbox row is confirmed by a receipt.
    pub async fn wait_until_delivered(&self, timeout: Duration) {
        let delivered = eventually(timeout, || async { self.undelivered().await == 0 }).await;
        assert!(
            delivered,
            "{} outbox rows still unconfirmed after {timeout:?}; {} of {} events stored",
            self.undelivered().await,
            self.stored_count().await,
            self.outbox_ids().await.len(),
        );
    }

    pub async fn stored_count(&self) -> i64 {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_logs"#)
            .fetch_one(&self.audit)
            .await
            .unwrap()
    }

    /// Every outbox event is in `audit_logs`, once, and nothing else is.
    pub async fn assert_stored_exactly_once(&self, expected: usize) {
        let outbox = self.outbox_ids().await;
        assert_eq!(outbox.len(), expected, "events in the outbox");
        let stored: Vec<Uuid> = sqlx::query_scalar!("SELECT event_id FROM audit_logs")
            .fetch_all(&self.audit)
            .await
            .unwrap();
        assert_eq!(stored.len(), expected, "rows in audit_logs");
        let stored: BTreeSet<Uuid> = stored.into_iter().collect();
        assert_eq!(stored.len(), expected, "distinct events in audit_logs");
        assert!(stored == outbox, "audit_logs and the outbox differ");
    }

    /// Stops the services of this process, consumer last.
    pub async fn stop(mut self) {
        for running in self.apis.drain(..).chain(self.consumer.take()) {
            running.shutdown.cancel();
            running.task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for running in self.apis.iter().chain(&self.consumer) {
            running.shutdown.cancel();
        }
    }
}

/// A value of `/metrics` at `base`.
pub async fn api_metric(base: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Opens `n` new accounts, `concurrency` at a time, through the APIs at
/// `bases` in turn: one audit event each. Returns the status of every
/// response (0 for a request that got no response).
pub async fn open_accounts(bases: &[String], n: usize, concurrency: usize) -> Vec<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let token = token();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let request = client
                .post(format!(
                    "{}/accounts/{}/actions",
                    bases[i % bases.len()],
                    Uuid::new_v4()
                ))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"action": "open", "params": {{"name": "Account {i}"}}}}"#
                ))
                .send();
            async move { request.await.map_or(0, |r| r.status().as_u16()) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn token() -> String {
    issue_token(
        &accounts_api::config::JwtSecret::new(SECRET).unwrap(),
        "load",
        ActorType::Service,
        Duration::from_secs(3600),
        None,
        None,
    )
}

/// The API as a child process of the built binary, for SIGKILL.
pub struct ApiProcess {
    child: Child,
    pub base: String,
    output: Arc<Mutex<Vec<u8>>>,
}

impl ApiProcess {
    /// Starts `accounts-api serve` with exactly `vars` (plus a free port)
    /// and waits until it is ready.
    pub async fn start(vars: Vec<(String, String)>) -> ApiProcess {
        let mut process = ApiProcess::spawn(vars);
        process.wait_until_ready(Duration::from_secs(20)).await;
        process
    }

    /// Starts `accounts-api serve` with exactly `vars` (plus a free port).
    pub fn spawn(vars: Vec<(String, String)>) -> ApiProcess {
        let port = testkit::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_accounts-api"))
            .arg("serve")
            .env_clear()
            .envs(vars)
            .env("API_BIND", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting accounts-api");
        let output = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || collect(pipe, &output));
        }
        ApiProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            output,
        }
    }

    pub async fn wait_until_ready(&mut self, timeout: Duration) {
        let readyz = format!("{}/readyz", self.base);
        let ready = eventually(timeout, || async {
            reqwest::get(&readyz)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "accounts-api not ready: {}", self.output());
        assert!(self.is_running());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub async fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "accounts-api still running after {timeout:?}: {}",
            self.output()
        );
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }
}

fn collect(mut pipe: Box<dyn Read + Send>, output: &Mutex<Vec<u8>>) {
    let mut buffer = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buffer) {
        if n == 0 {
            break;
        }
        if let Ok(mut output) = output.lock() {
            output.extend_from_slice(&buffer[..n]);
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!(
                "--- accounts-api {} output ---\n{}",
                self.child.id(),
                self.output()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
