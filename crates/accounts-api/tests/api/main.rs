//! Integration tests of accounts-api, one binary: each test gets its own
//! real Postgres cluster and the service on a random port (see `helpers`).
//! Logs are silent unless `TEST_LOG` is set.

// Helpers of the test binary may unwrap like the tests themselves (clippy.toml
// allows it only inside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod actions;
mod auth;
mod cli;
mod concurrency;
mod delivery;
mod fuzz;
mod health;
mod helpers;
mod idempotency;
mod limits;
mod openapi;
mod pipeline;
mod reads;
mod receipts;
mod rejections;
mod relay;
mod request_id;
mod retention;
