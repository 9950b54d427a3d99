//! `audit-consumer`: reads audit events from NSQ and stores each one exactly
//! once in Postgres.
//!
//! Invariant: a message is acknowledged (FIN) only after the transaction that
//! stored its event, or its dead letter, has committed; `event_id` is the
//! primary key of `audit_logs` and every insert is `ON CONFLICT (event_id) DO
//! NOTHING`, so redelivery never stores an event twice.
//!
//! Layout:
//! - [`config`]: the environment variables, parsed once into [`Config`].
//! - [`startup`]: [`Application`]: pool, migrations and the start-up check of
//!   the database, HTTP port, NSQ consumer, and the order of shutdown.
//! - [`batch`]: the batch writer: collect, decode, store, FIN/REQ/TOUCH,
//!   pause while the database is away, split a refused batch to find the bad
//!   message.
//! - [`store`]: the SQL the consumer runs on `audit_logs` and
//!   `audit_dead_letters`, the check that the database is usable, and the
//!   classification of database errors.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: the counters and histograms behind `/metrics`.
//! - [`dead_letters`]: the `dead-letters list | replay` subcommands.
//! - [`receipts`]: delivery receipts, the event ids of each committed batch
//!   published for the accounts API's relay.
//! - [`trace`]: the spans of each batch and of each event, continuing the
//!   trace of the API request that made the event.

pub mod batch;
pub mod config;
pub mod dead_letters;
pub mod health;
pub mod metrics;
pub mod receipts;
pub mod startup;
pub mod store;
pub mod trace;

pub use config::{Config, ConfigError};
pub use startup::{migrator, Application, MisconfiguredDatabase};
