//! The accounts HTTP API, its transactional outbox, and the relay to NSQ.
//!
//! Invariant: every request with a valid token that reaches
//! `POST /accounts/{id}/actions` leaves exactly one audit event in the
//! outbox — in the same transaction as the change it records, or alone for
//! a refusal — except when the database is unavailable (503: nothing is
//! written). The relay publishes outbox rows to nsqd, marks them only after
//! nsqd's `OK`, and publishes them again until the consumer's delivery
//! receipt confirms them.
//!
//! # Layout
//!
//! - [`config`]: environment variables into a [`Config`], one line per error.
//! - [`startup`]: [`Application`] — pool, migrations, HTTP server, relay task.
//! - `routes`: the HTTP handlers; `routes/actions.rs` is the audited route.
//! - [`command`]: the request body parsed into a [`command::Command`].
//! - [`domain`]: validated values (`AccountName`, `Reason`).
//! - [`accounts`]: the account state machine and the `accounts` SQL; knows
//!   nothing of auditing.
//! - [`audit`]: builds events and appends them via [`outbox`], the SQL of
//!   the `outbox` table.
//! - [`relay`]: outbox → nsqd, republishing until a delivery receipt
//!   confirms a row; [`receipts`]: the receipt subscription;
//!   [`retention`]: deletes confirmed rows after the retention window;
//!   [`metrics`]: `/metrics`.
//! - [`auth`]: bearer tokens; [`error`]: the one error type and its HTTP
//!   mapping; [`request_id`]: the `X-Request-Id` middleware.
//! - [`trace`]: the request's server span, the `traceparent` its event
//!   carries, and the relay's publish spans.

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod command;
pub mod config;
pub mod domain;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod rate_limit;
pub mod receipts;
pub mod relay;
pub mod request_id;
pub mod retention;
mod routes;
pub mod startup;
pub mod trace;

pub use auth::issue_token;
pub use config::Config;
pub use startup::{migrator, Application};
