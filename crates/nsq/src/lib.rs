//! A client for NSQ's TCP protocol V2: an acknowledged producer and a
//! consumer with nsqlookupd discovery.
//!
//! Invariant: this is the only crate that speaks NSQ. Nothing here panics on
//! what the network sends, and nothing gives up: the producer reconnects on
//! the next call after any failure, the consumer reconnects forever with
//! capped, jittered backoff.
//!
//! - [`Producer`]: `publish` (PUB) and `multi_publish` (MPUB, split under
//!   nsqd's body limit) return only after nsqd's `OK`; a hung nsqd is a
//!   [`Error::Timeout`], never a hang.
//! - [`Consumer`]: messages arrive on a `tokio::sync::mpsc::Receiver`; each
//!   [`Message`] is answered with `fin`, `req` or `touch`, which are
//!   synchronous and cheap. `E_FIN_FAILED`, `E_REQ_FAILED` and
//!   `E_TOUCH_FAILED` (an answer for a message that already timed out) are
//!   logged, not fatal.
//!
//! The protocol is specified at <https://nsq.io/clients/tcp_protocol_spec.html>.
//!
//! # Layout
//!
//! - `protocol`: frames and commands as pure functions (decode, encode, MPUB
//!   batching); unit tested without a network.
//! - `connection`: one TCP connection: magic, IDENTIFY, framed reads.
//! - `producer`: [`Producer`].
//! - `consumer`: [`Consumer`]; its supervisor (connection set and RDY
//!   spread), `consumer::connection` (one task per nsqd), `consumer::lookupd`
//!   (discovery) and `consumer::backoff`.
//! - `message`: [`Message`] and its way back to its connection.
//! - `names`: [`Topic`] and [`Channel`], validated once.

mod connection;
mod consumer;
mod error;
mod message;
mod names;
mod producer;
mod protocol;

pub use consumer::{Consumer, ConsumerConfig, Discovery};
pub use error::{ConnectionGone, Error};
pub use message::Message;
pub use names::{Channel, InvalidName, Topic};
pub use producer::{Producer, ProducerConfig};
pub use protocol::MessageId;

#[cfg(test)]
mod tests {
    fn shareable<T: Send + Sync>() {}

    #[test]
    fn the_handles_can_be_shared_between_tasks() {
        shareable::<crate::Producer>();
        shareable::<crate::Consumer>();
        shareable::<crate::Message>();
        shareable::<crate::Error>();
    }
}
