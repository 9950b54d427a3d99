//! One TCP connection to nsqd: connect, say the magic, IDENTIFY, then read
//! frames and write commands. Shared by the producer and the consumer; the
//! only place that opens a socket to nsqd.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::error::Error;
use crate::protocol::{self, Frame, Identify, Negotiated};

/// The reading half, with its buffer of bytes not yet decoded.
pub(crate) struct FrameReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    /// Reads the next frame. Cancel safe: dropping the future loses nothing,
    /// because bytes only move from the socket into `buf` (`read_buf` is
    /// cancel safe) and a frame is taken out of `buf` synchronously. The
    /// consumer relies on this when it races reading against other work.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = protocol::decode_frame(&mut self.buf, self.max_frame)? {
                return Ok(frame);
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "nsqd closed the connection",
                )));
            }
        }
    }
}

pub(crate) struct Connection {
    pub(crate) reader: FrameReader,
    pub(crate) writer: OwnedWriteHalf,
}

impl Connection {
    /// Connects and identifies. `connect_timeout` bounds the TCP connect,
    /// `response_timeout` the IDENTIFY round trip.
    pub(crate) async fn open(
        address: &str,
        identify: &Identify<'_>,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_frame: usize,
    ) -> Result<(Connection, Negotiated), Error> {
        let stream = timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Error::Timeout)??;
        // Commands are small and each waits for its effect; Nagle would only
        // add latency.
        stream.set_nodelay(true)?;
        let (read_half, writer) = stream.into_split();
        let mut connection = Connection {
            reader: FrameReader {
                half: read_half,
                buf: BytesMut::with_capacity(8 * 1024),
                max_frame,
            },
            writer,
        };
        let mut hello = BytesMut::new();
        protocol::encode_magic(&mut hello);
        protocol::encode_identify(&mut hello, identify)?;
        let negotiated = timeout(response_timeout, async {
            connection.writer.write_all(&hello).await?;
            let response = connection.read_response().await?;
            protocol::parse_identify_response(&response)
        })
        .await
        .map_err(|_| Error::Timeout)??;
        Ok((connection, negotiated))
    }

    /// Writes `command` and waits for nsqd's `OK`. The caller bounds it with
    /// a timeout.
    pub(crate) async fn request_ok(&mut self, command: &[u8]) -> Result<(), Error> {
        self.writer.write_all(command).await?;
        let response = self.read_response().await?;
        if response != protocol::OK {
            return Err(Error::protocol(format!(
                "expected OK, got {:?}",
                String::from_utf8_lossy(&response)
            )));
        }
        Ok(())
    }

    /// Reads the answer to a request, answering heartbeats that arrive
    /// first. An error frame becomes [`Error::Nsqd`]; a message is a protocol
    /// error, since nobody asked for one on a connection that is still being
    /// set up or only publishes.
    async fn read_response(&mut self) -> Result<Bytes, Error> {
        loop {
            match self.reader.read_frame().await? {
                Frame::Response(data) if data == protocol::HEARTBEAT => {
                    let mut nop = BytesMut::new();
                    protocol::encode_nop(&mut nop);
                    self.writer.write_all(&nop).await?;
                }
                Frame::Response(data) => return Ok(data),
                Frame::Error(error) => return Err(error.into()),
                Frame::Message(message) => {
                    return Err(Error::protocol(format!(
                        "unexpected message {} while waiting for a response",
                        message.id
                    )))
                }
            }
        }
    }

    /// Whether an idle connection can still carry a request: nothing unread
    /// is buffered and the socket has neither data nor end-of-stream pending.
    /// A restarted or crashed nsqd shows up here as end-of-stream, so the
    /// next request opens a new connection instead of failing on the old one.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.reader.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.reader.half.try_read(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

/// The host name nsqd shows for this client, from the kernel; falls back to
/// `$HOSTNAME`, then `unknown`.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Default client id: the short host name, as go-nsq does.
pub(crate) fn default_client_id() -> String {
    let host = hostname();
    host.split('.').next().unwrap_or(&host).to_owned()
}

pub(crate) fn default_user_agent() -> String {
    format!("{}/{}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
}
