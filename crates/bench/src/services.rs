//! The processes under test: one Postgres cluster for the whole run, a fresh
//! database and a fresh nsqd for each phase, and the services as child
//! processes of their built binaries, so that each has its own `/proc`
//! entry (peak memory, CPU time) and runs exactly as deployed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The pool size of the API (`DATABASE_MAX_CONNECTIONS`, its default) and so
/// the concurrency of pgbench and of the closed-loop load.
pub const API_POOL_SIZE: u32 = 10;
/// The consumer's `BATCH_SIZE` (its default), also the raw INSERT's.
pub const CONSUMER_BATCH_SIZE: usize = 500;
/// The relay's `RELAY_BATCH_SIZE` (its default), also the raw claim's.
pub const RELAY_BATCH_SIZE: u32 = 500;
/// The relay's `RELAY_REPUBLISH_AFTER_SECS` here: longer than any phase.
pub const RELAY_REPUBLISH_AFTER: Duration = Duration::from_secs(3600);
pub const TOPIC: &str = "audit.events";
pub const CHANNEL: &str = "audit-store";
/// Development-only signing key of the API under test.
pub const JWT_SECRET: &str = "bench-only-secret-0123456789abcdef0123";

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Which service's migrations a database gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Accounts,
    Audit,
}

/// A database of its own for one phase, with a pool for the bench's queries.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

/// The Postgres cluster of the run.
pub struct Cluster {
    pub postgres: testkit::Postgres,
    admin: PgPool,
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Cluster> {
        let postgres = tokio::task::spawn_blocking(testkit::Postgres::start)
            .await
            .context("starting Postgres")??;
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&postgres.url("postgres"))
            .await
            .context("connecting to Postgres")?;
        Ok(Cluster { postgres, admin })
    }

    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// Creates database `name` (our own constant names only: it is spliced
    /// into DDL, which takes no parameters) with the migrations of `schema`.
    pub async fn database(&self, name: &str, schema: Schema) -> anyhow::Result<Database> {
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            bail!("database name {name:?} must be lowercase letters, digits and _");
        }
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&self.admin)
            .await
            .with_context(|| format!("dropping an old database {name}"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&self.admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = self.postgres.url(name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to database {name}"))?;
        match schema {
            Schema::Accounts => accounts_api::migrator().run(&pool).await,
            Schema::Audit => audit_consumer::migrator().run(&pool).await,
        }
        .with_context(|| format!("migrating database {name}"))?;
        Ok(Database {
            name: name.to_owned(),
            url,
            pool,
        })
    }

    /// Drops a phase's database and writes its dirty pages out, so that the
    /// next phase does not pay for this one's autovacuum and checkpoint.
    pub async fn drop_database(&self, database: Database) -> anyhow::Result<()> {
        database.pool.close().await;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            database.name
        ))
        .execute(&self.admin)
        .await
        .with_context(|| format!("dropping database {}", database.name))?;
        sqlx::raw_sql("CHECKPOINT")
            .execute(&self.admin)
            .await
            .context("checkpoint")?;
        Ok(())
    }

    /// The directory of the server's own binaries (pgbench of the same
    /// version as the server).
    pub async fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = sqlx::query_scalar!("SELECT setting FROM pg_config WHERE name = 'BINDIR'")
            .fetch_one(&self.admin)
            .await
            .context("asking Postgres for its BINDIR")?
            .ok_or_else(|| anyhow!("pg_config has no BINDIR"))?;
        Ok(PathBuf::from(dir))
    }

    /// The settings that shape the figures: version and durability.
    pub async fn settings(&self) -> anyhow::Result<serde_json::Value> {
        let row = sqlx::query!(
            r#"
            SELECT current_setting('server_version') AS "version!",
                   current_setting('fsync') AS "fsync!",
                   current_setting('synchronous_commit') AS "synchronous_commit!",
                   current_setting('full_page_writes') AS "full_page_writes!",
                   current_setting('shared_buffers') AS "shared_buffers!",
                   current_setting('max_connections') AS "max_connections!"
            "#
        )
        .fetch_one(&self.admin)
        .await
        .context("reading the server settings")?;
        Ok(serde_json::json!({
            "version": row.version,
            "fsync": row.fsync,
            "synchronous_commit": row.synchronous_commit,
            "full_page_writes": row.full_page_writes,
            "shared_buffers": row.shared_buffers,
            "max_connections": row.max_connections,
        }))
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.postgres
            .pid()
            .ok_or_else(|| anyhow!("Postgres is not running"))
    }
}

/// A fresh nsqd (its own ports and data directory).
pub async fn nsqd() -> anyhow::Result<testkit::Nsqd> {
    tokio::task::spawn_blocking(|| testkit::Nsqd::start(testkit::NsqdOptions::default()))
        .await
        .context("starting nsqd")?
}

/// Where the service binaries are and where their logs go.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub api: PathBuf,
    pub consumer: PathBuf,
    pub log_dir: PathBuf,
}

impl Binaries {
    pub fn find(bin_dir: &Path, log_dir: &Path) -> anyhow::Result<Binaries> {
        let binaries = Binaries {
            api: bin_dir.join("accounts-api"),
            consumer: bin_dir.join("audit-consumer"),
            log_dir: log_dir.to_owned(),
        };
        for binary in [&binaries.api, &binaries.consumer] {
            if !binary.is_file() {
                bail!(
                    "{} not found: build it first (`cargo build --release -p accounts-api -p \
                     audit-consumer`, which `just bench` does) or pass --bin-dir",
                    binary.display()
                );
            }
        }
        Ok(binaries)
    }

    /// `accounts-api serve` on a free port: the defaults of a deployment,
    /// with `vars` on top.
    pub fn api(
        &self,
        name: &str,
        database: &Database,
        nsqd: &testkit::Nsqd,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let port = testkit::free_port();
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database.url.clone()),
            (
                "DATABASE_MAX_CONNECTIONS".to_owned(),
                API_POOL_SIZE.to_string(),
            ),
            ("API_BIND".to_owned(), format!("127.0.0.1:{port}")),
            ("AUTH_JWT_SECRET".to_owned(), JWT_SECRET.to_owned()),
            ("NSQD_TCP_ADDRESS".to_owned(), nsqd.tcp_address()),
            ("NSQ_TOPIC".to_owned(), TOPIC.to_owned()),
            ("RELAY_BATCH_SIZE".to_owned(), RELAY_BATCH_SIZE.to_string()),
            // A published row waits this long for its delivery receipt
            // before it is published again. Phases 1 and 4 have no consumer
            // to send receipts, and phase 2 reads `published_at`: an hour
            // keeps republication (and its duplicates) out of every window.
            (
                "RELAY_REPUBLISH_AFTER_SECS".to_owned(),
                RELAY_REPUBLISH_AFTER.as_secs().to_string(),
            ),
        ];
        env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        Service::spawn(name, &self.api, env, port, &self.log_dir)
    }

    /// `audit-consumer serve` on a free port, connected to `nsqd` directly.
    pub fn consumer(
        &self,
        name: &str,
        database: &Database,
        nsqd: &testkit::Nsqd,
    ) -> anyhow::Result<Service> {
        let port = testkit::free_port();
        let env = vec![
            ("DATABASE_URL".to_owned(), database.url.clone()),
            ("CONSUMER_BIND".to_owned(), format!("127.0.0.1:{port}")),
            ("NSQD_TCP_ADDRESSES".to_owned(), nsqd.tcp_address()),
            ("NSQD_TCP_ADDRESS".to_owned(), nsqd.tcp_address()),
            ("NSQ_TOPIC".to_owned(), TOPIC.to_owned()),
            ("NSQ_CHANNEL".to_owned(), CHANNEL.to_owned()),
            ("BATCH_SIZE".to_owned(), CONSUMER_BATCH_SIZE.to_string()),
        ];
        Service::spawn(name, &self.consumer, env, port, &self.log_dir)
    }
}

/// A service process. Dropping it kills the process.
pub struct Service {
    pub name: String,
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: PathBuf,
}

impl Service {
    fn spawn(
        name: &str,
        binary: &Path,
        env: Vec<(String, String)>,
        port: u16,
        log_dir: &Path,
    ) -> anyhow::Result<Service> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("sharing the log file")?;
        // A clean environment: a DATABASE_URL or RUST_LOG of the shell that
        // runs the bench must not leak into the service under test. Logs as
        // deployed (JSON at info), into a file.
        let child = Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Service {
            name: name.to_owned(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}: {}", self.name, self.log_tail());
            }
            let ready = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One series of its `/metrics` (the sum over its labels).
    pub async fn metric(&self, http: &reqwest::Client, series: &str) -> anyhow::Result<f64> {
        let text = http
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET /metrics of {}", self.name))?
            .text()
            .await?;
        metric_value(&text, series)
            .ok_or_else(|| anyhow!("{} has no series {series} in /metrics", self.name))
    }

    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        crate::procfs::peak_rss_bytes(self.pid())
    }

    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}: {}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, as an orchestrator stops it, then waits for the exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not stop within {STOP_TIMEOUT:?}", self.name)
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("(log {}):\n{tail}", self.log.display())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `series` in Prometheus text, summed over its label sets.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(series) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, value)| value)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            // A longer name that starts the same (`x_total` for `x`).
            None
        };
        if let Some(value) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Pauses or unpauses a channel through nsqd's HTTP API: a paused channel
/// keeps its messages and delivers none.
pub async fn set_channel_paused(
    http: &reqwest::Client,
    nsqd: &testkit::Nsqd,
    paused: bool,
) -> anyhow::Result<()> {
    nsqd_post(
        http,
        nsqd,
        if paused {
            "channel/pause"
        } else {
            "channel/unpause"
        },
    )
    .await
}

/// `POST /<action>?topic=…&channel=…` on nsqd's HTTP API (`topic/create`,
/// `channel/create`, `channel/pause`, …; each ignores the parameter it does
/// not need). testkit's own client blocks; this one suits async phases.
pub async fn nsqd_post(
    http: &reqwest::Client,
    nsqd: &testkit::Nsqd,
    action: &str,
) -> anyhow::Result<()> {
    http.post(format!("http://{}/{action}", nsqd.http_address()))
        .query(&[("topic", TOPIC), ("channel", CHANNEL)])
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("{action} for {TOPIC}/{CHANNEL} on nsqd"))?;
    Ok(())
}

/// nsqd's statistics (`GET /stats?format=json`).
pub async fn nsqd_stats(
    http: &reqwest::Client,
    nsqd: &testkit::Nsqd,
) -> anyhow::Result<serde_json::Value> {
    http.get(format!("http://{}/stats?format=json", nsqd.http_address()))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("GET /stats of nsqd")?
        .json()
        .await
        .context("reading nsqd's stats")
}

/// Messages waiting in the channel (in memory and on disk) and messages the
/// topic has taken in, from nsqd's `/stats`.
pub fn channel_depth(stats: &serde_json::Value) -> Option<u64> {
    let topic = stats["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic_name"] == TOPIC)?;
    let channel = topic["channels"]
        .as_array()?
        .iter()
        .find(|c| c["channel_name"] == CHANNEL)?;
    channel["depth"].as_u64()
}

pub fn topic_message_count(stats: &serde_json::Value) -> Option<u64> {
    stats["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic_name"] == TOPIC)?["message_count"]
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_labels_and_not_confused_with_longer_names() {
        let text = "# HELP x_total things\n# TYPE x_total counter\nx_total 3\n\
                    x_total_bytes 100\ny{class=\"a\"} 1\ny{class=\"b\"} 2.5\n";
        assert_eq!(metric_value(text, "x_total"), Some(3.0));
        assert_eq!(metric_value(text, "y"), Some(3.5));
        assert_eq!(metric_value(text, "z"), None);
    }
}
