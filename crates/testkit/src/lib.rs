//! Throwaway real Postgres clusters and nsqd/nsqlookupd processes for tests.
//!
//! ```no_run
//! let pg = testkit::Postgres::start()?; // own cluster, free port, trust auth, user postgres
//! let url = pg.create_database("accounts_test")?; // postgres://postgres@127.0.0.1:PORT/…
//! let lookupd = testkit::Nsqlookupd::start()?;
//! let mut options = testkit::NsqdOptions::default();
//! options.lookupd_tcp_addresses.push(lookupd.tcp_address());
//! let nsqd = testkit::Nsqd::start(options)?;
//! nsqd.create_topic("audit")?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Everything blocks (std::process): call it at the start of a `#[tokio::test]` or in
//! `spawn_blocking`. Dropping an instance kills its processes and deletes its files, also on
//! panic; instances abandoned by a killed test process are reclaimed when the next one starts.
//! Binaries come from `PG_BIN_DIR`, `NSQD_BIN`, `NSQLOOKUPD_BIN`, else the usual places.
//!
//! `OtlpReceiver` stands in for a trace collector (Jaeger): an OTLP/HTTP receiver on a free
//! port that keeps the spans services export, for assertions.
//!
//! Layout: `postgres` and `nsq` (the instances), `instance_dir` (their directories and the
//! sweep), `process` (binaries, signals, `/proc`, logs), `http` (nsqd's admin API), `port`,
//! `otlp` (the trace receiver).

mod http;
mod instance_dir;
mod nsq;
mod otlp;
mod port;
mod postgres;
mod process;

pub use instance_dir::sweep_abandoned_instances;
pub use nsq::{Nsqd, NsqdOptions, Nsqlookupd};
pub use otlp::{OtlpReceiver, ReceivedEvent, ReceivedSpan};
pub use port::free_port;
pub use postgres::Postgres;
