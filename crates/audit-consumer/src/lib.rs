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
//! - [`startup`]: [`Application`]: pool, migrations, HTTP port, NSQ consumer,
//!   and the order of shutdown.
//! - [`batch`]: the batch writer: collect, decode, store, FIN/REQ, pause while
//!   the database is away, split a refused batch to find the bad message.
//! - [`store`]: the SQL of `audit_logs` and `audit_dead_letters`, and the
//!   classification of database errors.
//! - [`health`]: `/healthz` and `/readyz`.

pub mod batch;
pub mod config;
pub mod health;
pub mod startup;
pub mod store;

pub use config::{Config, ConfigError};
pub use startup::{migrator, Application};
