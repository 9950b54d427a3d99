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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Settings};
use crate::config::Config;
use crate::health;

/// How long a statement waits for a pooled connection. Short, so a database
/// outage is noticed (and the consumer paused) in seconds, not half a minute.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

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

/// The running consumer: its HTTP port is bound and its NSQ connections are
/// being opened; [`Application::run_until_stopped`] starts storing.
pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    consumer: Arc<nsq::Consumer>,
    messages: mpsc::Receiver<nsq::Message>,
    settings: Settings,
    logger: Logger,
}

impl Application {
    pub async fn build(config: Config, logger: Logger) -> anyhow::Result<Application> {
        let pool = connection_pool(&config)?;
        if config.run_migrations {
            migrate(&pool, &logger).await?;
        }

        let listener = TcpListener::bind(config.consumer_bind)
            .with_context(|| format!("could not bind CONSUMER_BIND {}", config.consumer_bind))?;
        let port = listener.local_addr()?.port();

        let mut nsq_config = nsq::ConsumerConfig::new(
            config.nsq_topic.clone(),
            config.nsq_channel.clone(),
            config.nsq_discovery.clone(),
        );
        nsq_config.max_in_flight = config.nsq_max_in_flight.into();
        let nsq_logger = logger.new(o!("component" => "nsq"));
        let (consumer, messages) = nsq::Consumer::start(nsq_config, nsq_logger);
        let consumer = Arc::new(consumer);

        let state = web::Data::new(health::State {
            pool: pool.clone(),
            consumer: Arc::clone(&consumer),
        });
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(health::routes))
                // Two endpoints, polled by an orchestrator: one worker is plenty.
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
            settings: Settings::from_config(&config),
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
            settings,
            logger,
        } = self;
        let server_handle: ServerHandle = server.handle();
        let mut server_task = tokio::spawn(server);

        // The writer stops on `stop`: the caller's shutdown, or the HTTP
        // server ending, since a consumer nobody can probe should not run on.
        let stop = shutdown.child_token();
        let writer_logger = logger.new(o!("component" => "batch"));
        let server_ended_first = {
            let writer = batch::run(
                &pool,
                &consumer,
                &mut messages,
                settings,
                &stop,
                &writer_logger,
            );
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
        pool.close().await;
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
