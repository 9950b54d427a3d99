//! Publishing: PUB and MPUB to one nsqd, each call returning only once nsqd
//! has answered `OK`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use slog::{debug, o, warn, Logger};
use tokio::sync::Mutex;
use tokio::time::timeout;

use crate::connection::{self, Connection};
use crate::error::Error;
use crate::names::Topic;
use crate::protocol::{self, Identify};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on each request: IDENTIFY on connect, and every PUB/MPUB from
    /// the first byte written to nsqd's answer.
    pub response_timeout: Duration,
    /// nsqd's `--max-msg-size` (default 1 MiB). Larger messages are refused
    /// before anything is sent.
    pub max_message_bytes: usize,
    /// nsqd's `--max-body-size` (default 5 MiB); MPUBs are split to stay under it.
    pub max_body_bytes: usize,
    /// Shown by nsqd (stats, nsqadmin) for this connection.
    pub client_id: String,
    pub user_agent: String,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            max_message_bytes: 1024 * 1024,
            max_body_bytes: 5 * 1024 * 1024,
            client_id: connection::default_client_id(),
            user_agent: connection::default_user_agent(),
        }
    }
}

/// A publisher to one nsqd. Cheap to clone; clones share the connection.
///
/// It connects lazily, on the first call. Requests go one at a time over a
/// single connection (NSQ answers in order, and one connection keeps
/// ordering simple). After any failure the connection is dropped and the
/// next call opens a new one, so a restarted nsqd is picked up by itself.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    address: String,
    config: ProducerConfig,
    logger: Logger,
    /// `None` until the first call and after a failure.
    connection: Mutex<Option<Connection>>,
}

impl Producer {
    /// Does no I/O: the connection is opened by the first publish.
    pub fn new(nsqd_tcp_address: String, config: ProducerConfig, logger: Logger) -> Producer {
        let logger = logger.new(o!("nsqd" => nsqd_tcp_address.clone()));
        Producer {
            inner: Arc::new(Inner {
                address: nsqd_tcp_address,
                config,
                logger,
                connection: Mutex::new(None),
            }),
        }
    }

    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Publishes one message; returns once nsqd has it.
    pub async fn publish(&self, topic: &Topic, body: &[u8]) -> Result<(), Error> {
        protocol::check_message_size(0, body.len(), self.inner.config.max_message_bytes)?;
        let mut command = BytesMut::new();
        protocol::encode_pub(&mut command, topic, body)?;
        self.request(&command).await
    }

    /// Publishes a batch as few MPUBs as nsqd's body limit allows. Every
    /// message is checked before anything is sent: an empty one or one over
    /// `max_message_bytes` fails the whole call untouched. `Ok` means every
    /// message was acknowledged; on `Err` a prefix of the batch (whole MPUBs)
    /// may have been published.
    pub async fn multi_publish(&self, topic: &Topic, bodies: &[&[u8]]) -> Result<(), Error> {
        let sizes: Vec<usize> = bodies.iter().map(|body| body.len()).collect();
        let config = &self.inner.config;
        let batches =
            protocol::plan_batches(&sizes, config.max_message_bytes, config.max_body_bytes)?;
        let mut command = BytesMut::new();
        for batch in batches {
            command.clear();
            match &bodies[batch.clone()] {
                [single] => protocol::encode_pub(&mut command, topic, single)?,
                several => protocol::encode_mpub(&mut command, topic, several)?,
            }
            self.request(&command).await.inspect_err(|_| {
                debug!(self.inner.logger, "multi-publish stopped part way";
                    "published" => batch.start, "total" => bodies.len());
            })?;
        }
        Ok(())
    }

    /// Sends one command and waits for `OK`, (re)connecting first if needed.
    ///
    /// The connection is taken out of the slot for the duration of the
    /// request and put back only after a clean `OK`. So a failure, a timeout,
    /// or the caller dropping this future half way (which would leave an
    /// unread answer on the wire) all leave the slot empty, and nothing ever
    /// reads a stale answer as its own.
    async fn request(&self, command: &[u8]) -> Result<(), Error> {
        let inner = &*self.inner;
        let mut slot = inner.connection.lock().await;
        let mut connection = match slot.take() {
            Some(connection) if connection.is_reusable() => connection,
            stale => {
                if stale.is_some() {
                    debug!(
                        inner.logger,
                        "nsqd closed the idle connection; reconnecting"
                    );
                }
                self.connect().await?
            }
        };
        let result = timeout(
            inner.config.response_timeout,
            connection.request_ok(command),
        )
        .await
        .unwrap_or(Err(Error::Timeout));
        match result {
            Ok(()) => {
                *slot = Some(connection);
                Ok(())
            }
            Err(error) => {
                warn!(inner.logger, "publish failed; dropping the connection";
                    "error" => %error);
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<Connection, Error> {
        let inner = &*self.inner;
        let hostname = connection::hostname();
        let identify = Identify {
            client_id: &inner.config.client_id,
            hostname: &hostname,
            user_agent: &inner.config.user_agent,
            feature_negotiation: true,
            // A publishing connection sits idle between batches; without
            // heartbeats nsqd does not close it for failing to answer them.
            // A dead peer is still noticed: `is_reusable` before each request,
            // the response timeout during one.
            heartbeat_interval: -1,
            msg_timeout: None,
            // Publishing receives only responses, which nsqd flushes at once.
            output_buffer_timeout: None,
        };
        let (connection, _negotiated) = Connection::open(
            &inner.address,
            &identify,
            inner.config.connect_timeout,
            inner.config.response_timeout,
            protocol::DEFAULT_MAX_FRAME_BYTES,
        )
        .await
        .inspect_err(|error| {
            // Debug, not warn: callers retry in a loop and report the outage
            // once themselves; a line per attempt would flood the log.
            debug!(inner.logger, "cannot connect to nsqd"; "error" => %error);
        })?;
        debug!(inner.logger, "connected to nsqd");
        Ok(connection)
    }
}
