//! Errors callers branch on.

/// Why a publish (or a connection attempt) failed.
///
/// After any of these the producer drops its connection; the next call opens
/// a fresh one. A failed `multi_publish` may have published a prefix of the
/// batch (each MPUB is acknowledged on its own), so a retry can duplicate
/// messages: consumers must be idempotent, which NSQ's at-least-once delivery
/// demands anyway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, reading or writing failed, or nsqd closed the connection.
    // The cause is part of the message and deliberately not also the
    // `source()`, so error chains and log lines do not repeat it.
    #[error("I/O error talking to nsqd: {0}")]
    Io(std::io::Error),

    /// nsqd did not answer (or accept the connection) in time.
    #[error("timed out waiting for nsqd")]
    Timeout,

    /// nsqd sent something that breaks the protocol: an unknown frame type, a
    /// frame over the size limit, malformed JSON, an unexpected answer.
    #[error("NSQ protocol error: {0}")]
    Protocol(String),

    /// nsqd answered with an error frame (`E_BAD_TOPIC`, `E_PUB_FAILED`, ...).
    #[error("nsqd error {code}: {message}")]
    Nsqd { code: String, message: String },

    /// Message `index` of the batch is larger than nsqd accepts; nothing of
    /// the batch was sent.
    #[error("message {index} is {size} bytes, more than the {max} bytes nsqd accepts")]
    MessageTooLarge {
        index: usize,
        size: usize,
        max: usize,
    },

    /// Message `index` of the batch is empty, which nsqd refuses; nothing of
    /// the batch was sent.
    #[error("message {index} is empty, which nsqd refuses")]
    EmptyMessage { index: usize },
}

impl Error {
    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::Protocol(message.into())
    }
}

/// The connection a message arrived on is gone, so it can no longer be
/// finished, requeued or touched. nsqd redelivers it once its timeout passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the nsqd connection this message came from is closed; nsqd will redeliver it")]
pub struct ConnectionGone;

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Io(error)
    }
}
