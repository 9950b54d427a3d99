//! Tests against real nsqd and nsqlookupd processes (started by testkit).
//! Set `TEST_LOG=1` to see the client's logs.

// clippy.toml allows these in `#[test]` functions only; the helpers here are
// test code too, where a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod consumer;
mod discovery;
mod helpers;
mod producer;
mod reconnect;
