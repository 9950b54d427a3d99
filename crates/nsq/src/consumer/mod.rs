//! Consuming: one subscription (topic + channel) spread over every nsqd that
//! carries the topic.
//!
//! Tasks:
//! - the supervisor (`supervise`) owns the set of nsqd connections: it adds
//!   and retires them as discovery reports nsqd nodes, and splits
//!   `max_in_flight` into a RDY share per live connection;
//! - one task per nsqd address (`connection::run`) connects, subscribes,
//!   answers heartbeats, delivers messages, writes FIN/REQ/TOUCH, and
//!   reconnects forever with capped, jittered backoff;
//! - with nsqlookupd, one discovery task (`lookupd::poll`).
//!
//! `Consumer::close` cancels the supervisor, which closes every connection
//! gracefully (RDY 0, CLS, wait for in-flight answers) and awaits all tasks.

mod backoff;
mod connection;
mod lookupd;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slog::{debug, error, info, o, warn, Logger};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::{default_client_id, default_user_agent};
use crate::message::Message;
use crate::names::{Channel, Topic};
use crate::protocol::DEFAULT_MAX_FRAME_BYTES;

/// Where the nsqd nodes come from.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// Ask these nsqlookupd HTTP addresses (`host:port`) every
    /// `poll_interval`; connect to nsqd nodes as they appear, close those
    /// that stay gone for `ConsumerConfig::lookupd_grace`.
    Lookupd {
        http_addresses: Vec<String>,
        poll_interval: Duration,
    },
    /// Connect to exactly these nsqd TCP addresses.
    Direct { tcp_addresses: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topic: Topic,
    pub channel: Channel,
    pub discovery: Discovery,
    /// Most messages held at once across all connections (at least one per
    /// connection, so with more connections than this it is exceeded).
    pub max_in_flight: u32,
    /// How often nsqd sends heartbeats (1 s to 60 s). A connection that
    /// hears nothing for two intervals is considered dead and replaced.
    pub heartbeat_interval: Duration,
    /// How long nsqd waits for FIN/REQ/TOUCH before redelivering a message;
    /// `None` keeps nsqd's `--msg-timeout`. At least 1 s.
    pub msg_timeout: Option<Duration>,
    /// How long nsqd may keep messages in its write buffer (16 KiB) before
    /// it flushes them to us; `None` keeps nsqd's `--output-buffer-timeout`
    /// (250 ms by default). nsqd flushes early only when the buffer fills or
    /// the connection's RDY is used up, so at low rates this is the latency
    /// nsqd adds to each message. nsqd refuses values outside its
    /// `--min-output-buffer-timeout` (25 ms by default) and
    /// `--max-output-buffer-timeout` (30 s).
    pub output_buffer_timeout: Option<Duration>,
    /// Reconnect delays start at `reconnect_backoff_min` and double up to this.
    pub reconnect_backoff_max: Duration,
    pub reconnect_backoff_min: Duration,
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on IDENTIFY and SUB answers, and on each write.
    pub response_timeout: Duration,
    /// How long closing a connection waits for messages in flight on it to
    /// be answered before it closes anyway.
    pub close_timeout: Duration,
    /// With nsqlookupd discovery, how long an nsqd must be missing from every
    /// answer before its connection is closed. The grace covers an
    /// nsqlookupd restart, after which nodes re-register only at their next
    /// ping (up to 15 s later); closing healthy connections then would only
    /// cause redeliveries.
    pub lookupd_grace: Duration,
    /// Frames larger than this are refused as a protocol error (the
    /// connection is dropped). Keep it above nsqd's `--max-msg-size`.
    pub max_frame_bytes: usize,
    /// Shown by nsqd (stats, nsqadmin) for each connection.
    pub client_id: String,
    pub user_agent: String,
}

impl ConsumerConfig {
    pub fn new(topic: Topic, channel: Channel, discovery: Discovery) -> Self {
        ConsumerConfig {
            topic,
            channel,
            discovery,
            max_in_flight: 100,
            heartbeat_interval: Duration::from_secs(30),
            msg_timeout: None,
            output_buffer_timeout: None,
            reconnect_backoff_max: Duration::from_secs(30),
            reconnect_backoff_min: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            lookupd_grace: Duration::from_secs(60),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            client_id: default_client_id(),
            user_agent: default_user_agent(),
        }
    }

    /// Brings values nsqd would refuse into its accepted ranges, so a typo
    /// produces a warning instead of a connection that fails forever.
    fn normalized(mut self, logger: &Logger) -> Self {
        const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
        const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
        const MIN_MSG_TIMEOUT: Duration = Duration::from_secs(1);
        if self.max_in_flight == 0 {
            warn!(
                logger,
                "max_in_flight 0 would never receive anything; using 1"
            );
            self.max_in_flight = 1;
        }
        let heartbeat = self.heartbeat_interval.clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
        if heartbeat != self.heartbeat_interval {
            warn!(logger, "heartbeat_interval out of nsqd's range; clamped";
                "requested" => ?self.heartbeat_interval, "used" => ?heartbeat);
            self.heartbeat_interval = heartbeat;
        }
        if let Some(timeout) = self.msg_timeout.filter(|t| *t < MIN_MSG_TIMEOUT) {
            warn!(logger, "msg_timeout below nsqd's minimum; using 1s"; "requested" => ?timeout);
            self.msg_timeout = Some(MIN_MSG_TIMEOUT);
        }
        self
    }
}

/// A running subscription. Messages arrive on the receiver returned by
/// [`Consumer::start`].
pub struct Consumer {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    supervisor: Option<JoinHandle<()>>,
    logger: Logger,
}

/// State the handle shares with the tasks.
struct Shared {
    /// `true` while paused: every connection holds RDY 0.
    paused: watch::Sender<bool>,
    /// Connections currently subscribed.
    live: AtomicUsize,
}

impl Consumer {
    /// Starts connecting in the background (must be called inside a tokio
    /// runtime) and returns at once. The receiver holds at most
    /// `max_in_flight` undelivered messages; dropping it stops the consumer
    /// (the messages still in it are requeued).
    pub fn start(config: ConsumerConfig, logger: Logger) -> (Consumer, mpsc::Receiver<Message>) {
        let logger = logger.new(o!(
            "topic" => config.topic.to_string(),
            "channel" => config.channel.to_string(),
        ));
        let config = config.normalized(&logger);
        let capacity = usize::try_from(config.max_in_flight).unwrap_or(usize::MAX);
        let (deliveries, receiver) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            paused: watch::Sender::new(false),
            live: AtomicUsize::new(0),
        });
        let cancel = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(
            Arc::new(config),
            shared.clone(),
            deliveries,
            cancel.clone(),
            logger.clone(),
        ));
        let consumer = Consumer {
            shared,
            cancel,
            supervisor: Some(supervisor),
            logger,
        };
        (consumer, receiver)
    }

    /// Stops new deliveries (RDY 0 on every connection). Messages already
    /// held can still be finished, requeued and touched.
    pub fn pause(&self) {
        if !self.shared.paused.send_replace(true) {
            info!(self.logger, "consumer paused");
        }
    }

    /// Restores every connection's RDY share after [`pause`](Consumer::pause).
    pub fn resume(&self) {
        if self.shared.paused.send_replace(false) {
            info!(self.logger, "consumer resumed");
        }
    }

    pub fn is_paused(&self) -> bool {
        *self.shared.paused.borrow()
    }

    /// Connections currently subscribed (for readiness checks).
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Closes every connection (RDY 0, CLS, then up to `close_timeout` for
    /// messages in flight to be answered), stops discovery, and waits for all
    /// tasks. Answer (FIN/REQ) the messages you hold before calling it;
    /// answers given afterwards fail with `ConnectionGone`. Messages still
    /// waiting in the receiver count as unanswered: drop the receiver first
    /// (which requeues them) to close without waiting for `close_timeout`.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(supervisor) = self.supervisor.take() {
            if let Err(error) = supervisor.await {
                error!(self.logger, "consumer supervisor failed"; "error" => %error);
            }
        }
        info!(self.logger, "consumer closed");
    }
}

impl Drop for Consumer {
    /// Without `close`, the tasks still stop, just unawaited.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What connection tasks tell the supervisor.
#[derive(Debug)]
enum Event {
    /// Subscribed: give it a RDY share.
    Live { id: u64 },
    /// Lost its connection (it is reconnecting): its share goes to the others.
    Down { id: u64 },
}

/// The supervisor's view of one connection task.
struct Tracked {
    address: String,
    cancel: CancellationToken,
    share: watch::Sender<u32>,
    live: bool,
    /// Since when discovery has stopped reporting its nsqd.
    missing_since: Option<Instant>,
}

struct Supervisor {
    config: Arc<ConsumerConfig>,
    shared: Arc<Shared>,
    deliveries: mpsc::Sender<Message>,
    events: mpsc::UnboundedSender<Event>,
    /// Parent of every task's token; cancelled once on shutdown.
    tasks_cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// Keyed by task id; ids grow, so iteration order is connection age.
    connections: BTreeMap<u64, Tracked>,
    next_id: u64,
    logger: Logger,
}

async fn supervise(
    config: Arc<ConsumerConfig>,
    shared: Arc<Shared>,
    deliveries: mpsc::Sender<Message>,
    cancel: CancellationToken,
    logger: Logger,
) {
    let (events, mut events_rx) = mpsc::unbounded_channel();
    // Held here for the whole run so `recv` never reports a closed channel
    // in direct mode, where nothing else sends.
    let (found, mut found_rx) = mpsc::channel::<BTreeSet<String>>(1);
    let mut supervisor = Supervisor {
        config: config.clone(),
        shared,
        deliveries: deliveries.clone(),
        events,
        tasks_cancel: CancellationToken::new(),
        tasks: JoinSet::new(),
        connections: BTreeMap::new(),
        next_id: 0,
        logger: logger.clone(),
    };
    match &config.discovery {
        Discovery::Direct { tcp_addresses } => {
            supervisor.reconcile(tcp_addresses.iter().cloned().collect());
        }
        Discovery::Lookupd {
            http_addresses,
            poll_interval,
        } => {
            supervisor.tasks.spawn(lookupd::poll(
                http_addresses.clone(),
                *poll_interval,
                config.topic.clone(),
                found.clone(),
                supervisor.tasks_cancel.child_token(),
                logger.clone(),
            ));
        }
    }
    info!(logger, "consumer started"; "max_in_flight" => config.max_in_flight);

    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = deliveries.closed() => {
                info!(logger, "message receiver dropped; stopping the consumer");
                break;
            }
            Some(addresses) = found_rx.recv() => supervisor.reconcile(addresses),
            Some(event) = events_rx.recv() => supervisor.handle(event),
            Some(joined) = supervisor.tasks.join_next(), if !supervisor.tasks.is_empty() => {
                if let Err(error) = joined {
                    error!(logger, "consumer task failed"; "error" => %error);
                }
            }
        }
    }

    // Connection tasks close gracefully on cancellation; wait for all.
    supervisor.tasks_cancel.cancel();
    while let Some(joined) = supervisor.tasks.join_next().await {
        if let Err(error) = joined {
            error!(logger, "consumer task failed"; "error" => %error);
        }
    }
    supervisor.shared.live.store(0, Ordering::Relaxed);
    drop(found);
}

impl Supervisor {
    /// Starts tasks for new addresses and retires those missing for longer
    /// than `lookupd_grace`.
    fn reconcile(&mut self, wanted: BTreeSet<String>) {
        let now = Instant::now();
        let current: BTreeSet<String> = self
            .connections
            .values()
            .map(|tracked| tracked.address.clone())
            .collect();
        let mut gone = Vec::new();
        for (id, tracked) in &mut self.connections {
            if wanted.contains(&tracked.address) {
                tracked.missing_since = None;
                continue;
            }
            let since = *tracked.missing_since.get_or_insert(now);
            if now.duration_since(since) >= self.config.lookupd_grace {
                gone.push(*id);
            }
        }
        let retired_live = gone
            .iter()
            .any(|id| self.connections.get(id).is_some_and(|tracked| tracked.live));
        for id in gone {
            if let Some(tracked) = self.connections.remove(&id) {
                info!(self.logger, "nsqd no longer carries the topic; closing its connection";
                    "nsqd" => &tracked.address);
                // The task closes gracefully and is still awaited on shutdown.
                tracked.cancel.cancel();
            }
        }
        for address in wanted.difference(&current) {
            self.spawn_connection(address.clone());
        }
        if retired_live {
            self.rebalance();
        }
    }

    fn spawn_connection(&mut self, address: String) {
        let id = self.next_id;
        self.next_id += 1;
        info!(self.logger, "connecting to nsqd"; "nsqd" => &address);
        let cancel = self.tasks_cancel.child_token();
        let (share, share_rx) = watch::channel(0);
        let link = connection::Link {
            id,
            address: address.clone(),
            config: self.config.clone(),
            share: share_rx,
            paused: self.shared.paused.subscribe(),
            events: self.events.clone(),
            deliveries: self.deliveries.clone(),
            cancel: cancel.clone(),
            logger: self.logger.new(o!("nsqd" => address.clone())),
        };
        self.tasks.spawn(connection::run(link));
        self.connections.insert(
            id,
            Tracked {
                address,
                cancel,
                share,
                live: false,
                missing_since: None,
            },
        );
    }

    fn handle(&mut self, event: Event) {
        let (id, live) = match event {
            Event::Live { id } => (id, true),
            Event::Down { id } => (id, false),
        };
        // Events from a retired task are stale: it was already rebalanced away.
        if let Some(tracked) = self.connections.get_mut(&id) {
            tracked.live = live;
            self.rebalance();
        }
    }

    /// Gives each live connection its RDY share, then publishes the count.
    /// Shares are set first so that a caller who sees the new count (a test
    /// waiting for two connections) also sees RDY already spread.
    fn rebalance(&mut self) {
        let live: Vec<&Tracked> = self.connections.values().filter(|t| t.live).collect();
        let shares = spread_rdy(self.config.max_in_flight, live.len());
        for (tracked, share) in live.iter().zip(&shares) {
            tracked.share.send_replace(*share);
        }
        for tracked in self.connections.values().filter(|t| !t.live) {
            tracked.share.send_replace(0);
        }
        debug!(self.logger, "RDY spread"; "connections" => live.len(), "shares" => ?shares);
        self.shared.live.store(live.len(), Ordering::Relaxed);
    }
}

/// Splits `max_in_flight` over `connections` as evenly as possible, the
/// remainder going to the oldest; every connection gets at least 1 so none
/// starves (which exceeds `max_in_flight` when connections outnumber it).
fn spread_rdy(max_in_flight: u32, connections: usize) -> Vec<u32> {
    let Ok(n) = u32::try_from(connections) else {
        return vec![1; connections];
    };
    if n == 0 {
        return Vec::new();
    }
    let base = max_in_flight / n;
    let remainder = max_in_flight % n;
    (0..n)
        .map(|i| (base + u32::from(i < remainder)).max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdy_is_spread_evenly_with_the_remainder_first() {
        assert_eq!(spread_rdy(10, 0), Vec::<u32>::new());
        assert_eq!(spread_rdy(10, 1), vec![10]);
        assert_eq!(spread_rdy(10, 3), vec![4, 3, 3]);
        assert_eq!(spread_rdy(500, 2), vec![250, 250]);
    }

    #[test]
    fn every_connection_gets_at_least_one() {
        assert_eq!(spread_rdy(2, 3), vec![1, 1, 1]);
        assert_eq!(spread_rdy(1, 2), vec![1, 1]);
    }

    #[test]
    fn out_of_range_settings_are_clamped() {
        let logger = Logger::root(slog::Discard, o!());
        let mut config = ConsumerConfig::new(
            Topic::new("t").unwrap(),
            Channel::new("c").unwrap(),
            Discovery::Direct {
                tcp_addresses: vec![],
            },
        );
        config.max_in_flight = 0;
        config.heartbeat_interval = Duration::from_millis(10);
        config.msg_timeout = Some(Duration::from_millis(10));
        let config = config.normalized(&logger);
        assert_eq!(config.max_in_flight, 1);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.msg_timeout, Some(Duration::from_secs(1)));
    }
}
