//! Building and running the service: the database pool, migrations, the
//! HTTP server, the relay's tasks (publishing, delivery receipts,
//! retention), the expiry of idempotency keys, and their orderly shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use slog::Logger;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use telemetry::trace::Tracing;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::{Config, DatabaseConfig, ReceiptsConfig};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::routes::{self, AppState};
use crate::{idempotency, limits, openapi, receipts, relay, request_id, retention, trace};

/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The embedded migrations of this service. Versions of another service
/// sharing the database (the audit consumer's 2xxx) are ignored.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../../migrations/accounts");
    migrator.set_ignore_missing(true);
    migrator
}

/// A connection idle for longer than this is checked (a round trip) before
/// a request gets it.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pool that does not connect until first used, so the service starts
/// (and answers `/healthz`, and 503s) while the database is still away.
/// Bounded: when every connection is busy, a request waits at most
/// `DATABASE_ACQUIRE_TIMEOUT_MS` for one, then gets 503 rather than hanging.
///
/// sqlx checks every connection with a round trip when it is released, and
/// by default again when it is acquired: under load, two of a request's
/// seven round trips to Postgres. A connection released less than
/// [`PING_IDLE_AFTER`] ago was alive then, so only connections idle for
/// longer are checked on acquire; a dead one is replaced unseen, and one
/// that died within that second costs its request a 503 (nothing written).
pub fn connect_pool(config: &DatabaseConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(config.connect_options.clone())
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    migrator()
        .run(pool)
        .await
        .context("applying the accounts migrations")
}

/// The longest wait between two attempts to reach the database at start.
const STARTUP_RETRY_MAX_WAIT: Duration = Duration::from_secs(5);

/// The database answers but cannot serve the API as configured (wrong
/// credentials, no such database, a migration that cannot apply). Retrying
/// cannot fix it, so the service stops; the text is one line saying why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MisconfiguredDatabase(pub String);

/// Applies the migrations at start. While the database is unreachable it
/// retries, forever, with a growing wait: an API started alongside its
/// database waits for it rather than crash-looping (the caller stops the
/// wait on SIGTERM). Any other failure is a [`MisconfiguredDatabase`].
pub async fn migrate_when_reachable(pool: &PgPool, logger: &Logger) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(250);
    loop {
        let error = match migrator().run(pool).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let unreachable = match &error {
            sqlx::migrate::MigrateError::Execute(e) => is_unreachable(e),
            _ => false,
        };
        let text = one_line(&error.to_string());
        if !unreachable {
            return Err(MisconfiguredDatabase(format!(
                "could not apply the accounts migrations: {text}"
            ))
            .into());
        }
        slog::warn!(logger, "the database is not reachable yet; retrying";
            "error" => text, "retry_in_ms" => wait.as_millis());
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(STARTUP_RETRY_MAX_WAIT);
    }
}

/// Whether a failure says the database is away (or not accepting
/// connections yet) rather than refusing us: worth waiting for.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 53: too many connections, out of
        // memory or disk; 57P0x: the server is starting or shutting down.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0")
        }),
        _ => false,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The built service, bound to its port but not yet serving.
pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    relay: Option<RelayTasks>,
    idempotency_key_ttl: Duration,
    outbox_written: Arc<Notify>,
    metrics: Arc<Metrics>,
    tracing: Tracing,
    logger: Logger,
}

/// What the relay's three loops need: publishing, confirming, deleting.
struct RelayTasks {
    producer: nsq::Producer,
    settings: relay::Settings,
    receipts: ReceiptsConfig,
    retention: Duration,
}

impl Application {
    /// Connects the pool, runs migrations (when `RUN_MIGRATIONS`), and binds
    /// the listener (`API_BIND`; port 0 picks a free one).
    pub async fn build(config: Config, logger: Logger) -> anyhow::Result<Application> {
        let pool = connect_pool(&config.database);
        if config.database.run_migrations {
            migrate_when_reachable(&pool, &logger).await?;
            slog::info!(logger, "migrations applied");
        }

        let listener = TcpListener::bind(config.api_bind)
            .with_context(|| format!("binding {}", config.api_bind))?;
        let port = listener
            .local_addr()
            .context("reading the bound port")?
            .port();

        let tracing = Tracing::start(&config.tracing, "accounts-api", &logger)
            .context("could not start tracing")?;
        let outbox_written = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new().with_tracing(tracing.clone()));
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            verifier: Verifier::new(&config.auth),
            max_body_bytes: config.max_body_bytes,
            rate_limiter: config.rate_limit.map(RateLimiter::new),
            audit_reads: config.audit_reads,
            idempotency_key_ttl: config.idempotency_key_ttl,
            openapi: openapi::document_bytes(),
            outbox_written: outbox_written.clone(),
            metrics: metrics.clone(),
            logger: logger.clone(),
        });
        let tracing_data = web::Data::new(tracing.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(tracing_data.clone())
                // The last wrapped runs first: every answer, the limits'
                // refusals included, carries the request id, and the
                // request's span covers them all and records that id.
                .wrap(from_fn(limits::middleware))
                .wrap(from_fn(request_id::middleware))
                .wrap(from_fn(trace::middleware))
                .configure(routes::configure)
        })
        // Signals are the caller's business (the shutdown token), not actix's.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .listen(listener)
        .context("starting the HTTP server")?
        .run();

        let relay = config.relay.enabled.then(|| RelayTasks {
            producer: nsq::Producer::new(
                config.relay.nsqd_tcp_address.clone(),
                nsq::ProducerConfig::default(),
                logger.clone(),
            ),
            settings: relay::Settings {
                topic: config.relay.topic.clone(),
                batch_size: config.relay.batch_size,
                poll_interval: config.relay.poll_interval,
                republish_after: config.relay.republish_after,
                tracing: tracing.clone(),
            },
            receipts: config.relay.receipts.clone(),
            retention: config.relay.retention,
        });

        slog::info!(logger, "accounts-api listening";
            "address" => %config.api_bind, "port" => port, "relay" => config.relay.enabled);
        Ok(Application {
            port,
            server,
            pool,
            relay,
            idempotency_key_ttl: config.idempotency_key_ttl,
            outbox_written,
            metrics,
            tracing,
            logger,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish, stops the background loops between units
    /// of work, and returns once everything has ended.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            server,
            pool,
            relay,
            idempotency_key_ttl,
            outbox_written,
            metrics,
            tracing,
            logger,
            ..
        } = self;

        let expiry = tokio::spawn(idempotency::run(
            pool.clone(),
            idempotency_key_ttl,
            logger.new(slog::o!("task" => "idempotency-expiry")),
            shutdown.clone(),
        ));

        let relay = relay.map(|tasks| {
            [
                tokio::spawn(relay::run(
                    pool.clone(),
                    tasks.producer,
                    tasks.settings,
                    outbox_written,
                    metrics.clone(),
                    logger.new(slog::o!("task" => "relay")),
                    shutdown.clone(),
                )),
                tokio::spawn(receipts::run(
                    pool.clone(),
                    tasks.receipts,
                    metrics.clone(),
                    logger.new(slog::o!("task" => "receipts")),
                    shutdown.clone(),
                )),
                tokio::spawn(retention::run(
                    pool.clone(),
                    tasks.retention,
                    metrics.clone(),
                    logger.new(slog::o!("task" => "retention")),
                    shutdown.clone(),
                )),
            ]
        });

        let handle = server.handle();
        let server = tokio::spawn(server);
        let stopper = {
            let shutdown = shutdown.clone();
            let logger = logger.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                slog::info!(logger, "stopping: finishing in-flight requests");
                handle.stop(true).await;
            })
        };

        let served = server.await;
        // The server can also end on its own (a fatal error); the rest of
        // the service follows it down.
        shutdown.cancel();
        let _ = stopper.await;
        for task in relay.into_iter().flatten() {
            task.await.context("a relay task panicked")?;
        }
        expiry
            .await
            .context("the idempotency key expiry task panicked")?;
        pool.close().await;
        // The spans of the last requests and batches go out before the end.
        tracing.shutdown(&logger).await;
        served
            .context("the HTTP server task panicked")?
            .context("the HTTP server failed")?;
        slog::info!(logger, "stopped");
        Ok(())
    }
}
