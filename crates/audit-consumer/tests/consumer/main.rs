//! Integration tests of the consumer against a real Postgres and a real nsqd
//! (started by `testkit`). One binary, so the helpers are compiled once.

// clippy.toml allows these inside test functions only; the helpers here are
// test code too, where a failed step should fail the test on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod dead_letters;
mod helpers;
mod lifecycle;
mod metrics;
mod outage;
mod poison;
mod process;
mod scale;
mod storing;
mod touch;
