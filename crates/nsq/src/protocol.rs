//! The NSQ TCP protocol V2 as pure functions: decoding frames from a byte
//! buffer, encoding commands, planning MPUB batches. No I/O here, so all of
//! it is unit tested directly.
//!
//! Wire format (all integers big-endian):
//! - client → nsqd: the magic `"  V2"` once, then commands. A command is a
//!   line (`NAME arg arg\n`), some followed by a u32 size and a body.
//! - nsqd → client: frames, `u32 size | u32 type | data`, where `size` covers
//!   the type and the data. Type 0 is a response (`OK`, `_heartbeat_`,
//!   `CLOSE_WAIT`, IDENTIFY's JSON), 1 an error (`E_CODE description`), 2 a
//!   message (`i64 timestamp ns | u16 attempts | 16-byte id | body`).

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::names::{Channel, Topic};

pub(crate) const MAGIC_V2: &[u8; 4] = b"  V2";

const FRAME_TYPE_RESPONSE: u32 = 0;
const FRAME_TYPE_ERROR: u32 = 1;
const FRAME_TYPE_MESSAGE: u32 = 2;

pub(crate) const HEARTBEAT: &[u8] = b"_heartbeat_";
pub(crate) const OK: &[u8] = b"OK";
pub(crate) const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";

const MESSAGE_ID_LEN: usize = 16;
/// timestamp (8) + attempts (2) + id (16).
const MESSAGE_HEADER_LEN: usize = 8 + 2 + MESSAGE_ID_LEN;

/// Frames above this are refused as a protocol error unless configured
/// otherwise: nsqd's default `--max-msg-size` is 1 MiB, so 16 MiB leaves room
/// for operators who raise it while bounding what a broken peer can make us
/// allocate.
pub(crate) const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Per-message overhead inside an MPUB body: the u32 size before each message.
const MPUB_MESSAGE_OVERHEAD: usize = 4;
/// The u32 message count that starts an MPUB body.
const MPUB_BODY_OVERHEAD: usize = 4;

/// nsqd's defaults when IDENTIFY does not negotiate (or omits a field).
const DEFAULT_MAX_RDY_COUNT: u32 = 2500;
const DEFAULT_MSG_TIMEOUT: Duration = Duration::from_secs(60);

/// The 16 printable ASCII characters nsqd uses to name a message.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId([u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// Accepts only visible ASCII: the id is echoed back inside command lines
    /// (`FIN <id>\n`), where a space or newline would corrupt the stream.
    fn parse(bytes: &[u8]) -> Result<MessageId, Error> {
        let id: [u8; MESSAGE_ID_LEN] = bytes
            .try_into()
            .map_err(|_| Error::protocol("message id is not 16 bytes"))?;
        if !id.iter().all(u8::is_ascii_graphic) {
            return Err(Error::protocol("message id is not visible ASCII"));
        }
        Ok(MessageId(id))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Checked to be ASCII in `parse`, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or("<invalid>")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.as_str())
    }
}

/// A message frame's content.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawMessage {
    pub(crate) timestamp_ns: i64,
    pub(crate) attempts: u16,
    pub(crate) id: MessageId,
    pub(crate) body: Bytes,
}

/// An error frame: `E_CODE` and the rest of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorFrame {
    pub(crate) code: String,
    pub(crate) message: String,
}

impl ErrorFrame {
    fn parse(data: &[u8]) -> ErrorFrame {
        let text = String::from_utf8_lossy(data);
        let text = text.trim();
        match text.split_once(' ') {
            Some((code, message)) => ErrorFrame {
                code: code.to_owned(),
                message: message.to_owned(),
            },
            None => ErrorFrame {
                code: text.to_owned(),
                message: String::new(),
            },
        }
    }

    /// nsqd answers a FIN, REQ or TOUCH for a message that is no longer in
    /// flight (it timed out and went to another consumer, or was already
    /// answered) with these, and keeps the connection open. Every other error
    /// code is fatal: nsqd closes the connection right after sending it.
    pub(crate) fn is_fatal(&self) -> bool {
        !matches!(
            self.code.as_str(),
            "E_FIN_FAILED" | "E_REQ_FAILED" | "E_TOUCH_FAILED"
        )
    }
}

impl From<ErrorFrame> for Error {
    fn from(frame: ErrorFrame) -> Error {
        Error::Nsqd {
            code: frame.code,
            message: frame.message,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    Response(Bytes),
    Error(ErrorFrame),
    Message(RawMessage),
}

/// Takes one complete frame off the front of `buf`, or returns `None` (and
/// reserves room for the rest) when more bytes are needed. A frame declaring
/// more than `max_frame` bytes is refused before anything is allocated for it.
pub(crate) fn decode_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, Error> {
    let Some(size_field) = buf.get(..4) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([size_field[0], size_field[1], size_field[2], size_field[3]]);
    let size = usize::try_from(size).map_err(|_| Error::protocol("frame size overflows"))?;
    if size < 4 {
        return Err(Error::protocol(format!(
            "frame size {size} is too small to hold a frame type"
        )));
    }
    if size > max_frame {
        return Err(Error::protocol(format!(
            "frame of {size} bytes exceeds the {max_frame} byte limit"
        )));
    }
    let total = 4 + size;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(4);
    let frame_type = frame.get_u32();
    match frame_type {
        FRAME_TYPE_RESPONSE => Ok(Some(Frame::Response(frame))),
        FRAME_TYPE_ERROR => Ok(Some(Frame::Error(ErrorFrame::parse(&frame)))),
        FRAME_TYPE_MESSAGE => decode_message(frame).map(|m| Some(Frame::Message(m))),
        other => Err(Error::protocol(format!("unknown frame type {other}"))),
    }
}

fn decode_message(mut data: Bytes) -> Result<RawMessage, Error> {
    if data.len() < MESSAGE_HEADER_LEN {
        return Err(Error::protocol(format!(
            "message frame of {} bytes is shorter than its {MESSAGE_HEADER_LEN} byte header",
            data.len()
        )));
    }
    let timestamp_ns = data.get_i64();
    let attempts = data.get_u16();
    let id = MessageId::parse(&data.split_to(MESSAGE_ID_LEN))?;
    Ok(RawMessage {
        timestamp_ns,
        attempts,
        id,
        body: data,
    })
}

/// The IDENTIFY body. Durations are in milliseconds, as nsqd expects.
#[derive(Debug, Serialize)]
pub(crate) struct Identify<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) user_agent: &'a str,
    /// Asks nsqd to answer with its settings as JSON instead of `OK`.
    pub(crate) feature_negotiation: bool,
    /// `-1` disables heartbeats (and nsqd's idle read deadline).
    pub(crate) heartbeat_interval: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msg_timeout: Option<u64>,
    /// How long nsqd may hold messages in its write buffer before it
    /// flushes them to us, in milliseconds; absent keeps nsqd's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_buffer_timeout: Option<u64>,
}

/// What nsqd told us in its IDENTIFY answer; nsqd's defaults when it said `OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) max_rdy_count: u32,
    pub(crate) msg_timeout: Duration,
    pub(crate) auth_required: bool,
}

#[derive(Deserialize)]
struct IdentifyResponse {
    max_rdy_count: Option<i64>,
    msg_timeout: Option<i64>,
    #[serde(default)]
    auth_required: bool,
}

pub(crate) fn parse_identify_response(data: &[u8]) -> Result<Negotiated, Error> {
    if data == OK {
        return Ok(Negotiated {
            max_rdy_count: DEFAULT_MAX_RDY_COUNT,
            msg_timeout: DEFAULT_MSG_TIMEOUT,
            auth_required: false,
        });
    }
    let response: IdentifyResponse = serde_json::from_slice(data)
        .map_err(|e| Error::protocol(format!("IDENTIFY response is not valid JSON: {e}")))?;
    let max_rdy_count = match response.max_rdy_count {
        None => DEFAULT_MAX_RDY_COUNT,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::protocol(format!("IDENTIFY max_rdy_count {n} is invalid")))?,
    };
    let msg_timeout = match response.msg_timeout {
        None => DEFAULT_MSG_TIMEOUT,
        Some(ms) => u64::try_from(ms)
            .map(Duration::from_millis)
            .map_err(|_| Error::protocol(format!("IDENTIFY msg_timeout {ms} is invalid")))?,
    };
    Ok(Negotiated {
        max_rdy_count,
        msg_timeout,
        auth_required: response.auth_required,
    })
}

fn put_size(out: &mut BytesMut, size: usize) -> Result<(), Error> {
    // nsqd reads sizes as signed 32-bit integers.
    let size = i32::try_from(size)
        .map_err(|_| Error::protocol(format!("body of {size} bytes is too large to frame")))?;
    out.put_i32(size);
    Ok(())
}

pub(crate) fn encode_magic(out: &mut BytesMut) {
    out.put_slice(MAGIC_V2);
}

pub(crate) fn encode_identify(out: &mut BytesMut, identify: &Identify<'_>) -> Result<(), Error> {
    let body = serde_json::to_vec(identify)
        .map_err(|e| Error::protocol(format!("cannot encode IDENTIFY: {e}")))?;
    out.put_slice(b"IDENTIFY\n");
    put_size(out, body.len())?;
    out.put_slice(&body);
    Ok(())
}

pub(crate) fn encode_sub(out: &mut BytesMut, topic: &Topic, channel: &Channel) {
    out.put_slice(format!("SUB {topic} {channel}\n").as_bytes());
}

pub(crate) fn encode_rdy(out: &mut BytesMut, count: u32) {
    out.put_slice(format!("RDY {count}\n").as_bytes());
}

pub(crate) fn encode_fin(out: &mut BytesMut, id: &MessageId) {
    out.put_slice(b"FIN ");
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
}

pub(crate) fn encode_req(out: &mut BytesMut, id: &MessageId, delay: Duration) {
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    out.put_slice(b"REQ ");
    out.put_slice(id.as_bytes());
    out.put_slice(format!(" {delay_ms}\n").as_bytes());
}

pub(crate) fn encode_touch(out: &mut BytesMut, id: &MessageId) {
    out.put_slice(b"TOUCH ");
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
}

pub(crate) fn encode_nop(out: &mut BytesMut) {
    out.put_slice(b"NOP\n");
}

pub(crate) fn encode_cls(out: &mut BytesMut) {
    out.put_slice(b"CLS\n");
}

pub(crate) fn encode_pub(out: &mut BytesMut, topic: &Topic, body: &[u8]) -> Result<(), Error> {
    out.reserve(topic.as_str().len() + 9 + body.len());
    out.put_slice(format!("PUB {topic}\n").as_bytes());
    put_size(out, body.len())?;
    out.put_slice(body);
    Ok(())
}

pub(crate) fn encode_mpub(
    out: &mut BytesMut,
    topic: &Topic,
    bodies: &[&[u8]],
) -> Result<(), Error> {
    let body_len = mpub_body_len(bodies.iter().map(|b| b.len()));
    out.reserve(topic.as_str().len() + 10 + body_len);
    out.put_slice(format!("MPUB {topic}\n").as_bytes());
    put_size(out, body_len)?;
    put_size(out, bodies.len())?;
    for body in bodies {
        put_size(out, body.len())?;
        out.put_slice(body);
    }
    Ok(())
}

fn mpub_body_len(sizes: impl Iterator<Item = usize>) -> usize {
    sizes.fold(MPUB_BODY_OVERHEAD, |total, size| {
        total.saturating_add(MPUB_MESSAGE_OVERHEAD.saturating_add(size))
    })
}

/// Splits a batch into runs that each fit one MPUB body of at most
/// `max_body` bytes. Every message is checked first (non-empty, at most
/// `max_message` bytes) so that a bad one fails the batch before anything is
/// sent. A run of one message is sent as PUB, whose only limit is
/// `max_message`, so a message too big to share an MPUB body still goes out.
pub(crate) fn plan_batches(
    sizes: &[usize],
    max_message: usize,
    max_body: usize,
) -> Result<Vec<Range<usize>>, Error> {
    for (index, &size) in sizes.iter().enumerate() {
        check_message_size(index, size, max_message)?;
    }
    let mut batches = Vec::new();
    let mut start = 0;
    let mut body_len = MPUB_BODY_OVERHEAD;
    for (index, &size) in sizes.iter().enumerate() {
        let added = MPUB_MESSAGE_OVERHEAD.saturating_add(size);
        if index > start && body_len.saturating_add(added) > max_body {
            batches.push(start..index);
            start = index;
            body_len = MPUB_BODY_OVERHEAD;
        }
        body_len = body_len.saturating_add(added);
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    Ok(batches)
}

pub(crate) fn check_message_size(
    index: usize,
    size: usize,
    max_message: usize,
) -> Result<(), Error> {
    if size == 0 {
        return Err(Error::EmptyMessage { index });
    }
    if size > max_message {
        return Err(Error::MessageTooLarge {
            index,
            size,
            max: max_message,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(4 + data.len() as u32).to_be_bytes());
        out.extend_from_slice(&frame_type.to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn message_data(id: &[u8; 16], attempts: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&1_700_000_000_123_456_789i64.to_be_bytes());
        out.extend_from_slice(&attempts.to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(body);
        out
    }

    fn topic() -> Topic {
        Topic::new("t").unwrap()
    }

    #[test]
    fn a_response_frame_decodes_and_leaves_the_rest_in_the_buffer() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(0, b"OK"));
        buf.extend_from_slice(&frame(0, HEARTBEAT)[..5]);
        let decoded = decode_frame(&mut buf, 1024).unwrap();
        assert_eq!(decoded, Some(Frame::Response(Bytes::from_static(b"OK"))));
        assert_eq!(buf.len(), 5);
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);
    }

    #[test]
    fn a_frame_split_across_reads_decodes_once_complete() {
        let bytes = frame(2, &message_data(b"0123456789abcdef", 3, b"hello"));
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None, "at byte {i}");
            buf.put_u8(*byte);
        }
        let Some(Frame::Message(message)) = decode_frame(&mut buf, 1024).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(message.timestamp_ns, 1_700_000_000_123_456_789);
        assert_eq!(message.attempts, 3);
        assert_eq!(message.id.as_str(), "0123456789abcdef");
        assert_eq!(&message.body[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn an_error_frame_splits_into_code_and_message() {
        let mut buf = BytesMut::from(
            &frame(
                1,
                b"E_FIN_FAILED FIN 0123456789abcdef failed ID not in flight",
            )[..],
        );
        let Some(Frame::Error(error)) = decode_frame(&mut buf, 1024).unwrap() else {
            panic!("expected an error");
        };
        assert_eq!(error.code, "E_FIN_FAILED");
        assert_eq!(
            error.message,
            "FIN 0123456789abcdef failed ID not in flight"
        );
        assert!(!error.is_fatal());
        assert!(ErrorFrame::parse(b"E_BAD_TOPIC PUB topic name is not valid").is_fatal());
        assert!(ErrorFrame::parse(b"E_INVALID").is_fatal());
        assert!(!ErrorFrame::parse(b"E_TOUCH_FAILED x").is_fatal());
        assert!(!ErrorFrame::parse(b"E_REQ_FAILED x").is_fatal());
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        buf.put_u32(0);
        let err = decode_frame(&mut buf, 1024).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        let too_small = {
            let mut b = BytesMut::new();
            b.put_u32(3);
            b.put_slice(&[0, 0, 0]);
            b
        };
        let unknown_type = BytesMut::from(&frame(7, b"x")[..]);
        let short_message = BytesMut::from(&frame(2, b"0123456789")[..]);
        let bad_id = BytesMut::from(&frame(2, &message_data(b"0123456789abcd\n ", 1, b"x"))[..]);
        for mut buf in [too_small, unknown_type, short_message, bad_id] {
            let err = decode_frame(&mut buf, 1024).unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{err}");
        }
    }

    #[test]
    fn a_message_may_have_an_empty_body() {
        let mut buf = BytesMut::from(&frame(2, &message_data(b"0123456789abcdef", 1, b""))[..]);
        let Some(Frame::Message(message)) = decode_frame(&mut buf, 1024).unwrap() else {
            panic!("expected a message");
        };
        assert!(message.body.is_empty());
    }

    #[test]
    fn commands_are_encoded_as_nsqd_expects() {
        let id = MessageId::parse(b"0123456789abcdef").unwrap();
        let mut out = BytesMut::new();
        encode_magic(&mut out);
        encode_sub(&mut out, &topic(), &Channel::new("c#ephemeral").unwrap());
        encode_rdy(&mut out, 25);
        encode_fin(&mut out, &id);
        encode_req(&mut out, &id, Duration::from_millis(1500));
        encode_touch(&mut out, &id);
        encode_nop(&mut out);
        encode_cls(&mut out);
        assert_eq!(
            &out[..],
            &b"  V2SUB t c#ephemeral\nRDY 25\nFIN 0123456789abcdef\n\
               REQ 0123456789abcdef 1500\nTOUCH 0123456789abcdef\nNOP\nCLS\n"[..]
        );
    }

    #[test]
    fn pub_and_mpub_carry_sized_bodies() {
        let mut out = BytesMut::new();
        encode_pub(&mut out, &topic(), b"abc").unwrap();
        assert_eq!(&out[..], b"PUB t\n\0\0\0\x03abc");

        let mut out = BytesMut::new();
        encode_mpub(&mut out, &topic(), &[b"ab", b"c"]).unwrap();
        let mut expected = b"MPUB t\n".to_vec();
        expected.extend_from_slice(&(4u32 + 4 + 2 + 4 + 1).to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(b"c");
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn identify_is_framed_json_without_unset_fields() {
        let mut out = BytesMut::new();
        let identify = Identify {
            client_id: "host",
            hostname: "host.example",
            user_agent: "nsq/0.1.0",
            feature_negotiation: true,
            heartbeat_interval: -1,
            msg_timeout: None,
            output_buffer_timeout: None,
        };
        encode_identify(&mut out, &identify).unwrap();
        assert!(out.starts_with(b"IDENTIFY\n"));
        let size = u32::from_be_bytes(out[9..13].try_into().unwrap()) as usize;
        assert_eq!(size, out.len() - 13);
        let json: serde_json::Value = serde_json::from_slice(&out[13..]).unwrap();
        assert_eq!(json["heartbeat_interval"], -1);
        assert_eq!(json["feature_negotiation"], true);
        assert!(json.get("msg_timeout").is_none());
        assert!(json.get("output_buffer_timeout").is_none());
    }

    #[test]
    fn identify_responses_are_negotiated_or_defaulted() {
        let negotiated = parse_identify_response(
            br#"{"max_rdy_count":100,"version":"1.3.0","msg_timeout":5000,"tls_v1":false,"auth_required":false}"#,
        )
        .unwrap();
        assert_eq!(negotiated.max_rdy_count, 100);
        assert_eq!(negotiated.msg_timeout, Duration::from_secs(5));
        let defaults = parse_identify_response(b"OK").unwrap();
        assert_eq!(defaults.max_rdy_count, 2500);
        assert!(parse_identify_response(b"{not json").is_err());
        assert!(parse_identify_response(br#"{"max_rdy_count":-1}"#).is_err());
        assert!(
            parse_identify_response(br#"{"auth_required":true}"#)
                .unwrap()
                .auth_required
        );
    }

    #[test]
    fn batches_fill_each_mpub_body_up_to_the_limit() {
        // Each message costs 4 + size; the body starts with 4 for the count.
        // 4 + (4+10)*3 = 46 fits in 46, a fourth does not.
        let sizes = [10; 7];
        assert_eq!(
            plan_batches(&sizes, 10, 46).unwrap(),
            vec![0..3, 3..6, 6..7]
        );
        assert_eq!(plan_batches(&sizes, 10, 45).unwrap().len(), 4);
        assert_eq!(
            plan_batches(&[], 10, 46).unwrap(),
            Vec::<Range<usize>>::new()
        );
    }

    #[test]
    fn a_message_too_big_to_share_a_body_gets_a_batch_of_its_own() {
        assert_eq!(
            plan_batches(&[1, 30, 1], 30, 20).unwrap(),
            vec![0..1, 1..2, 2..3]
        );
    }

    #[test]
    fn an_oversized_or_empty_message_fails_the_whole_plan() {
        let err = plan_batches(&[1, 2, 11, 0], 10, 100).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    index: 2,
                    size: 11,
                    max: 10
                }
            ),
            "{err}"
        );
        let err = plan_batches(&[1, 0], 10, 100).unwrap_err();
        assert!(matches!(err, Error::EmptyMessage { index: 1 }), "{err}");
    }
}
