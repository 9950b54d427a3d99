//! Wiring: the pool, the migrations, the HTTP port and the NSQ consumer, and
//! the order in which they stop.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use slog::{info, o, warn, Logger};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use telemetry::trace::Tracing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::{Settings, Writer};
use crate::config::Config;
use crate::health;
use crate::metrics::Metrics;
use crate::receipts::{self, Receipts};
use crate::store::{self, DatabaseError, Failure};

/// How long a statement waits for a pooled connection. Short, so a database
/// outage is noticed (and the consumer paused) in seconds, not half a minute.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long stopping waits for the pool's connections to close.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The start-up check of the database, and the longest wait between two
/// attempts while it is unreachable.
const STARTUP_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_RETRY_MAX_WAIT: Duration = Duration::from_secs(5);

/// The database answers but cannot serve the consumer as configured: wrong
/// credentials, no such database, the tables missing, no privilege on them.
/// Retrying cannot fix it, so the process stops; the text is one line that
/// says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MisconfiguredDatabase(pub String);

/// The migrations of `audit_logs` and `audit_dead_letters`.
///
/// Versions already applied by another service sharing the database (the
/// accounts migrations, numbered 1xxx) are ignored rather than reported as
/// missing.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../../migrations/audit");
    migrator.set_ignore_missing(true);
    migrator
}

/// Connects lazily: the consumer starts (and heals) while the database is
/// away; only the migrations need it at start-up.
pub fn connection_pool(config: &Config) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .database_url
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Applies the audit migrations.
pub async fn migrate(pool: &PgPool, logger: &Logger) -> anyhow::Result<()> {
    migrator()
        .run(pool)
        .await
        .context("could not apply the audit migrations")?;
    info!(logger, "audit migrations applied");
    Ok(())
}

/// Makes sure the database can take events before the consumer subscribes:
/// applies the migrations (when asked to), then runs [`store::check`].
///
/// While the database is unreachable it retries, forever, with a growing
/// wait: a consumer started alongside its database waits for it rather than
/// crash-looping. A database that answers but is not usable is an error
/// ([`MisconfiguredDatabase`]) at once.
pub async fn prepare_database(
    pool: &PgPool,
    run_migrations: bool,
    logger: &Logger,
) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(250);
    loop {
        let attempt = async {
            if run_migrations {
                migrator()
                    .run(pool)
                    .await
                    .map_err(|e| migration_error(&e))?;
                info!(logger, "audit migrations applied");
            }
            store::check(pool, STARTUP_CHECK_TIMEOUT).await
        };
        let error = match attempt.await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if error.kind != Failure::Unavailable {
            return Err(MisconfiguredDatabase(error.message).into());
        }
        warn!(logger, "the database is not reachable yet; retrying";
            "error" => &error.message, "retry_in_ms" => wait.as_millis());
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(STARTUP_RETRY_MAX_WAIT);
    }
}

/// Classifies a failed migration run like a failed statement. Errors that
/// are not about the connection (a migration that was changed after it was
/// applied, say) need an operator.
fn migration_error(error: &sqlx::migrate::MigrateError) -> DatabaseError {
    use sqlx::migrate::MigrateError;
    match error {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            let mut error = DatabaseError::from_sqlx(e);
            if error.kind != Failure::Unavailable {
                error.kind = Failure::Configuration;
            }
            error.message = format!("could not apply the audit migrations: {}", error.message);
            error
        }
        other => DatabaseError {
            kind: Failure::Configuration,
            message: format!("could not apply the audit migrations: {other}"),
        },
    }
}

/// The running consumer: its HTTP port is bound and its NSQ connections are
/// being opened; [`Application::run_until_stopped`] starts storing.
pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    consumer: Arc<nsq::Consumer>,
    messages: mpsc::Receiver<nsq::Message>,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// The delivery receipts' handle and publishing task, unless turned off.
    receipts: Option<(Receipts, JoinHandle<()>)>,
    tracing: Tracing,
    logger: Logger,
}

impl Application {
    /// Prepares the database (see [`prepare_database`]: this waits while
    /// it is unreachable), binds the HTTP port and starts subscribing.
    pub async fn build(config: Config, logger: Logger) -> anyhow::Result<Application> {
        let pool = connection_pool(&config)?;
        prepare_database(&pool, config.run_migrations, &logger).await?;

        let listener = TcpListener::bind(config.consumer_bind)
            .with_context(|| format!("could not bind CONSUMER_BIND {}", config.consumer_bind))?;
        let port = listener.local_addr()?.port();

        let mut nsq_config = nsq::ConsumerConfig::new(
            config.nsq_topic.clone(),
            config.nsq_channel.clone(),
            config.nsq_discovery.clone(),
        );
        nsq_config.max_in_flight = config.nsq_max_in_flight.into();
        nsq_config.msg_timeout = Some(config.nsq_msg_timeout);
        nsq_config.output_buffer_timeout = Some(config.nsq_output_buffer_timeout);
        let nsq_logger = logger.new(o!("component" => "nsq"));
        let (consumer, messages) = nsq::Consumer::start(nsq_config, nsq_logger);
        let consumer = Arc::new(consumer);

        let receipts = config.receipts_topic.clone().map(|topic| {
            let producer = nsq::Producer::new(
                config.nsqd_tcp_address.clone(),
                nsq::ProducerConfig::default(),
                logger.new(o!("component" => "receipts")),
            );
            Receipts::start(producer, topic, logger.new(o!("component" => "receipts")))
        });

        let tracing = Tracing::start(&config.tracing, "audit-consumer", &logger)
            .context("could not start tracing")?;
        let metrics = Arc::new(Metrics::new().with_tracing(tracing.clone()));
        let state = web::Data::new(health::State {
            pool: pool.clone(),
            consumer: Arc::clone(&consumer),
            metrics: Arc::clone(&metrics),
        });
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(health::routes))
                // Three endpoints, polled by an orchestrator and Prometheus: one
                // worker is plenty.
                .workers(1)
                // Signals are ours to handle, through the shutdown token.
                .disable_signals()
                .shutdown_timeout(5)
                .listen(listener)?
                .run();

        info!(logger, "audit consumer started";
            "port" => port, "topic" => %config.nsq_topic, "channel" => %config.nsq_channel,
            "batch_size" => config.batch_size, "max_in_flight" => config.nsq_max_in_flight);
        Ok(Application {
            port,
            server,
            pool,
            consumer,
            messages,
            metrics,
            settings: Settings::from_config(&config),
            receipts,
            tracing,
            logger,
        })
    }

    /// The port of the HTTP server (useful when `CONSUMER_BIND` asked for 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stores messages until `shutdown` is cancelled, then stops in order:
    /// the batch writer (pause, finish the batch in hand, requeue the rest),
    /// the HTTP server, the NSQ connections, the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            port: _,
            server,
            pool,
            consumer,
            mut messages,
            metrics,
            settings,
            receipts,
            tracing,
            logger,
        } = self;
        let (receipts, receipts_task) = receipts.unzip();
        let server_handle: ServerHandle = server.handle();
        let mut server_task = tokio::spawn(server);

        // The writer stops on `stop`: the caller's shutdown, or the HTTP
        // server ending, since a consumer nobody can probe should not run on.
        let stop = shutdown.child_token();
        let writer_logger = logger.new(o!("component" => "batch"));
        let server_ended_first = {
            let batch_writer = Writer {
                pool: &pool,
                consumer: &consumer,
                metrics: &metrics,
                settings,
                receipts: receipts.as_ref(),
                tracing: &tracing,
                logger: &writer_logger,
            };
            let writer = batch_writer.run(&mut messages, &stop);
            tokio::pin!(writer);
            tokio::select! {
                () = &mut writer => None,
                result = &mut server_task => {
                    stop.cancel();
                    writer.await;
                    Some(result)
                }
            }
        };
        // The writer has answered every message it took. Dropping the
        // receiver requeues whatever nsqd sent after that.
        drop(messages);
        // Its last receipts go out, unless nsqd keeps them waiting too long
        // (they are a hint: the relay republishes what is not receipted).
        drop(receipts);
        if let Some(task) = receipts_task {
            if tokio::time::timeout(receipts::FLUSH_TIMEOUT, task)
                .await
                .is_err()
            {
                warn!(logger, "gave up sending the last delivery receipts");
            }
        }

        if server_ended_first.is_none() {
            server_handle.stop(true).await;
            if let Err(e) = server_task.await {
                warn!(logger, "HTTP server task failed while stopping"; "error" => %e);
            }
        }
        // The HTTP handlers held the other references; they are gone with
        // the server.
        match Arc::try_unwrap(consumer) {
            Ok(consumer) => consumer.close().await,
            // Dropping it still stops its tasks, only without waiting.
            Err(_) => warn!(
                logger,
                "NSQ consumer still shared at shutdown; not awaiting its close"
            ),
        }
        // `close` waits for every connection to come back. One whose
        // statement was abandoned on a hung database (the writer gave up on
        // its batch) comes back only when that statement ends; its
        // transaction never committed, so it can be left behind.
        if tokio::time::timeout(POOL_CLOSE_TIMEOUT, pool.close())
            .await
            .is_err()
        {
            warn!(logger, "database connections still busy at shutdown; leaving them";
                "waited_ms" => POOL_CLOSE_TIMEOUT.as_millis());
        }
        // The spans of the last batches go out before the process ends.
        tracing.shutdown(&logger).await;
        info!(logger, "audit consumer stopped");

        if let Some(server_result) = server_ended_first {
            let cause = match server_result {
                Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped on its own"),
                Ok(Err(e)) => anyhow::Error::new(e).context("the HTTP server failed"),
                Err(e) => anyhow::Error::new(e).context("the HTTP server task failed"),
            };
            return Err(cause);
        }
        if !shutdown.is_cancelled() {
            anyhow::bail!("the NSQ consumer stopped delivering messages");
        }
        Ok(())
    }
}
