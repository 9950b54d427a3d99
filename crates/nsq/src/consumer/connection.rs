//! One task per nsqd address: connect, subscribe, run the session, and
//! reconnect forever when it ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use slog::{debug, info, trace, warn, Logger};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::{ConsumerConfig, Event};
use crate::connection::{self, Connection};
use crate::error::Error;
use crate::message::{Command, Message};
use crate::protocol::{self, Frame, Identify, Negotiated};

/// Everything a connection task needs from the supervisor.
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) address: String,
    pub(super) config: Arc<ConsumerConfig>,
    /// This connection's RDY share, set by the supervisor.
    pub(super) share: watch::Receiver<u32>,
    pub(super) paused: watch::Receiver<bool>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) deliveries: mpsc::Sender<Message>,
    pub(super) cancel: CancellationToken,
    pub(super) logger: Logger,
}

/// Connects, subscribes and runs sessions until cancelled. Never gives up:
/// an nsqd that is down is retried with capped exponential backoff.
pub(super) async fn run(mut link: Link) {
    let config = link.config.clone();
    let mut backoff = Backoff::new(config.reconnect_backoff_min, config.reconnect_backoff_max);
    loop {
        let attempt = tokio::select! {
            _ = link.cancel.cancelled() => return,
            attempt = subscribe(&link) => attempt,
        };
        match attempt {
            Ok((connection, negotiated)) => {
                backoff.reset();
                info!(link.logger, "subscribed";
                    "max_rdy_count" => negotiated.max_rdy_count,
                    "msg_timeout" => ?negotiated.msg_timeout);
                let _ = link.events.send(Event::Live { id: link.id });
                let end = Session::new(&mut link, connection, negotiated).run().await;
                let _ = link.events.send(Event::Down { id: link.id });
                match end {
                    Ok(()) => {
                        info!(link.logger, "connection closed");
                        return;
                    }
                    Err(error) => {
                        warn!(link.logger, "connection to nsqd lost; reconnecting";
                            "error" => %error);
                    }
                }
            }
            Err(error) => {
                warn!(link.logger, "cannot subscribe on nsqd; will retry"; "error" => %error);
            }
        }
        let delay = backoff.next_delay();
        debug!(link.logger, "waiting before reconnecting"; "delay" => ?delay);
        tokio::select! {
            _ = link.cancel.cancelled() => return,
            _ = sleep(delay) => {}
        }
    }
}

/// Opens a connection, IDENTIFYs and SUBscribes. RDY stays 0 (nsqd's
/// initial state) until the session applies this connection's share.
async fn subscribe(link: &Link) -> Result<(Connection, Negotiated), Error> {
    let config = &link.config;
    let hostname = connection::hostname();
    let identify = Identify {
        client_id: &config.client_id,
        hostname: &hostname,
        user_agent: &config.user_agent,
        feature_negotiation: true,
        heartbeat_interval: millis(config.heartbeat_interval),
        msg_timeout: config.msg_timeout.map(whole_millis),
        output_buffer_timeout: config.output_buffer_timeout.map(whole_millis),
    };
    let (mut connection, negotiated) = Connection::open(
        &link.address,
        &identify,
        config.connect_timeout,
        config.response_timeout,
        config.max_frame_bytes,
    )
    .await?;
    if negotiated.auth_required {
        return Err(Error::protocol(
            "nsqd requires AUTH, which this client does not support",
        ));
    }
    let mut sub = BytesMut::new();
    protocol::encode_sub(&mut sub, &config.topic, &config.channel);
    timeout(config.response_timeout, connection.request_ok(&sub))
        .await
        .map_err(|_| Error::Timeout)??;
    Ok((connection, negotiated))
}

fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One subscribed TCP connection, from SUB to close.
struct Session<'a> {
    link: &'a mut Link,
    connection: Connection,
    negotiated: Negotiated,
    /// Messages of this session answer through this queue. A new queue per
    /// session: when the session ends the receiver goes with it, so answers
    /// for its messages fail with `ConnectionGone` rather than reaching a
    /// later connection that never delivered them.
    commands: mpsc::UnboundedSender<Command>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    /// Commands waiting to be written, flushed once per loop turn so a burst
    /// of FINs goes out in one write.
    out: BytesMut,
    /// The RDY count nsqd has from us.
    rdy: u32,
    /// Messages delivered on this connection and not yet answered (FIN or
    /// REQ). Approximate (a message that timed out on nsqd stays counted);
    /// used only to let a graceful close wait for outstanding answers.
    in_flight: usize,
    /// Messages read from nsqd while the delivery channel was full. Kept
    /// here so that reading never stops: heartbeats must be answered even
    /// while the application is slow.
    pending: VecDeque<Message>,
    /// Nothing heard from nsqd until this instant means the connection is
    /// dead (nsqd sends a heartbeat every interval).
    silence_deadline: Instant,
    closing: bool,
}

impl<'a> Session<'a> {
    fn new(link: &'a mut Link, connection: Connection, negotiated: Negotiated) -> Session<'a> {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let mut session = Session {
            link,
            connection,
            negotiated,
            commands,
            commands_rx,
            out: BytesMut::new(),
            rdy: 0,
            in_flight: 0,
            pending: VecDeque::new(),
            silence_deadline: Instant::now(),
            closing: false,
        };
        session.heard_from_nsqd();
        session
    }

    fn heard_from_nsqd(&mut self) {
        let allowed = self.link.config.heartbeat_interval * 2 + self.link.config.response_timeout;
        self.silence_deadline = Instant::now() + allowed;
    }

    /// `Ok` when closed on request, `Err` when the connection failed.
    async fn run(mut self) -> Result<(), Error> {
        // A clone, so the permit `reserve` yields borrows this local rather
        // than `self`, which the select arms need mutably.
        let deliveries = self.link.deliveries.clone();
        loop {
            self.apply_rdy();
            self.flush().await?;
            tokio::select! {
                _ = self.link.cancel.cancelled() => {
                    self.close().await;
                    return Ok(());
                }
                Some(command) = self.commands_rx.recv() => {
                    self.queue(command);
                    while let Ok(command) = self.commands_rx.try_recv() {
                        self.queue(command);
                    }
                }
                changed = self.link.share.changed() => {
                    // The supervisor dropped us: it is retiring this connection.
                    if changed.is_err() {
                        self.close().await;
                        return Ok(());
                    }
                }
                changed = self.link.paused.changed() => {
                    if changed.is_err() {
                        self.close().await;
                        return Ok(());
                    }
                }
                permit = deliveries.reserve(), if !self.pending.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(message) = self.pending.pop_front() {
                                permit.send(message);
                            }
                        }
                        // Nobody will take them: dropping requeues them.
                        Err(_) => self.pending.clear(),
                    }
                }
                frame = self.connection.reader.read_frame() => {
                    self.heard_from_nsqd();
                    self.handle(frame?)?;
                }
                _ = sleep_until(self.silence_deadline) => {
                    return Err(Error::protocol("nothing heard from nsqd for two heartbeat intervals"));
                }
            }
        }
    }

    fn handle(&mut self, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::Response(data) if data == protocol::HEARTBEAT => {
                protocol::encode_nop(&mut self.out);
            }
            Frame::Response(data) if data == protocol::CLOSE_WAIT => {
                debug!(self.link.logger, "nsqd acknowledged CLS");
            }
            Frame::Response(data) => {
                debug!(self.link.logger, "ignoring an unexpected response";
                    "response" => %String::from_utf8_lossy(&data));
            }
            Frame::Error(error) if !error.is_fatal() => {
                // The message timed out (and went back to the queue) before
                // we answered, or was answered twice. The connection is fine.
                warn!(self.link.logger, "nsqd refused an answer for a message no longer in flight";
                    "code" => &error.code, "detail" => &error.message);
            }
            Frame::Error(error) => return Err(error.into()),
            Frame::Message(raw) => {
                trace!(self.link.logger, "message received";
                    "message_id" => %raw.id, "attempts" => raw.attempts);
                self.in_flight += 1;
                let message = Message::new(raw, self.commands.clone());
                if self.closing {
                    // Sent before nsqd saw RDY 0; dropping it requeues it.
                    drop(message);
                } else {
                    self.deliver(message);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, message: Message) {
        if !self.pending.is_empty() {
            self.pending.push_back(message);
            return;
        }
        match self.link.deliveries.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => self.pending.push_back(message),
            // Nobody will take it: dropping requeues it.
            Err(mpsc::error::TrySendError::Closed(message)) => drop(message),
        }
    }

    fn queue(&mut self, command: Command) {
        trace!(self.link.logger, "answer"; "command" => ?command);
        match command {
            Command::Fin(id) => {
                protocol::encode_fin(&mut self.out, &id);
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            Command::Req {
                id,
                delay,
                abandoned,
            } => {
                if abandoned {
                    debug!(self.link.logger, "requeueing a message dropped without an answer";
                        "message_id" => %id);
                }
                protocol::encode_req(&mut self.out, &id, delay);
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            Command::Touch(id) => protocol::encode_touch(&mut self.out, &id),
        }
    }

    /// Sends RDY when this connection's target changed: its share (capped by
    /// nsqd's max_rdy_count), or 0 while paused, closing, or when nobody is
    /// left to take messages. nsqd treats RDY as "at most this many in
    /// flight", so it needs no refreshing as messages are answered.
    fn apply_rdy(&mut self) {
        let share = *self.link.share.borrow_and_update();
        let paused = *self.link.paused.borrow_and_update();
        let target = if paused || self.closing || self.link.deliveries.is_closed() {
            0
        } else {
            share.min(self.negotiated.max_rdy_count)
        };
        if target != self.rdy {
            debug!(self.link.logger, "RDY"; "count" => target);
            protocol::encode_rdy(&mut self.out, target);
            self.rdy = target;
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        timeout(
            self.link.config.response_timeout,
            self.connection.writer.write_all(&self.out),
        )
        .await
        .map_err(|_| Error::Timeout)??;
        self.out.clear();
        Ok(())
    }

    /// Graceful close: write the answers already given, stop deliveries
    /// (RDY 0, CLS), requeue what was read but not delivered, then wait up
    /// to `close_timeout` for the application to answer the messages it
    /// holds. FIN still works after CLS; nsqd just sends nothing new.
    async fn close(&mut self) {
        self.closing = true;
        // Dropping undelivered messages queues their REQs.
        self.pending.clear();
        while let Ok(command) = self.commands_rx.try_recv() {
            self.queue(command);
        }
        self.apply_rdy();
        protocol::encode_cls(&mut self.out);
        let deadline = Instant::now() + self.link.config.close_timeout;
        let mut acknowledged = false;
        loop {
            while let Ok(command) = self.commands_rx.try_recv() {
                self.queue(command);
            }
            if let Err(error) = self.flush().await {
                debug!(self.link.logger, "connection failed while closing"; "error" => %error);
                return;
            }
            if acknowledged && self.in_flight == 0 {
                return;
            }
            tokio::select! {
                _ = sleep_until(deadline) => {
                    if self.in_flight > 0 {
                        warn!(self.link.logger, "closing with messages still unanswered; nsqd will redeliver them";
                            "in_flight" => self.in_flight);
                    }
                    return;
                }
                Some(command) = self.commands_rx.recv() => self.queue(command),
                frame = self.connection.reader.read_frame() => match frame {
                    Ok(Frame::Response(data)) if data == protocol::CLOSE_WAIT => {
                        acknowledged = true;
                    }
                    Ok(frame) => {
                        if let Err(error) = self.handle(frame) {
                            debug!(self.link.logger, "nsqd error while closing"; "error" => %error);
                            return;
                        }
                    }
                    Err(error) => {
                        debug!(self.link.logger, "connection failed while closing"; "error" => %error);
                        return;
                    }
                },
            }
        }
    }
}
