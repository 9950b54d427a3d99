//! A received message and the way back to the connection it came from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ConnectionGone;
use crate::protocol::{MessageId, RawMessage};

/// What a message asks of its connection's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Fin(MessageId),
    Req {
        id: MessageId,
        delay: Duration,
        /// Sent by `Drop` for a message nobody answered.
        abandoned: bool,
    },
    Touch(MessageId),
}

/// A message delivered by nsqd. Answer it with exactly one [`fin`] or
/// [`req`] (as many [`touch`]es as needed before that).
///
/// A message dropped without an answer is requeued at once (REQ with no
/// delay), so a panicking or forgetful handler does not leave it stuck until
/// its timeout.
///
/// [`fin`]: Message::fin
/// [`req`]: Message::req
/// [`touch`]: Message::touch
#[derive(Debug)]
pub struct Message {
    pub id: MessageId,
    /// How many times nsqd has delivered it, this time included (starts at 1).
    pub attempts: u16,
    /// When nsqd received it, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    pub body: Bytes,
    responder: Responder,
}

/// Kept apart from the public fields so that `Drop` lives here, and callers
/// can still move `body` out of a `Message`.
#[derive(Debug)]
struct Responder {
    id: MessageId,
    /// The command queue of the TCP session the message arrived on; closed
    /// once that session ends, which is what makes answers fail with
    /// [`ConnectionGone`] instead of reaching a newer connection that never
    /// delivered this message.
    commands: UnboundedSender<Command>,
    answered: AtomicBool,
}

impl Message {
    pub(crate) fn new(raw: RawMessage, commands: UnboundedSender<Command>) -> Message {
        Message {
            id: raw.id,
            attempts: raw.attempts,
            timestamp_ns: raw.timestamp_ns,
            body: raw.body,
            responder: Responder {
                id: raw.id,
                commands,
                answered: AtomicBool::new(false),
            },
        }
    }

    /// Marks it done; nsqd will not deliver it again.
    pub fn fin(&self) -> Result<(), ConnectionGone> {
        self.responder.answer(Command::Fin(self.id))
    }

    /// Puts it back; nsqd delivers it again (with `attempts + 1`) after `delay`.
    pub fn req(&self, delay: Duration) -> Result<(), ConnectionGone> {
        self.responder.answer(Command::Req {
            id: self.id,
            delay,
            abandoned: false,
        })
    }

    /// Resets its timeout on nsqd, for work that takes longer than `msg_timeout`.
    pub fn touch(&self) -> Result<(), ConnectionGone> {
        self.responder.send(Command::Touch(self.id))
    }
}

impl Responder {
    fn answer(&self, command: Command) -> Result<(), ConnectionGone> {
        self.answered.store(true, Ordering::Relaxed);
        self.send(command)
    }

    fn send(&self, command: Command) -> Result<(), ConnectionGone> {
        self.commands.send(command).map_err(|_| ConnectionGone)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered.load(Ordering::Relaxed) {
            // If the connection is gone too, nsqd redelivers after the timeout.
            let _ = self.commands.send(Command::Req {
                id: self.id,
                delay: Duration::ZERO,
                abandoned: true,
            });
        }
    }
}
