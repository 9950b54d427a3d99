//! Throwaway real Postgres clusters and nsqd/nsqlookupd processes for tests.
//!
//! ```no_run
//! let pg = testkit::Postgres::start()?;                  // own cluster, trust auth, user postgres
//! let url = pg.create_database("accounts_test")?;       // postgres://postgres@127.0.0.1:PORT/accounts_test
//! let lookupd = testkit::Nsqlookupd::start()?;
//! let nsqd = testkit::Nsqd::start(testkit::NsqdOptions {
//!     lookupd_tcp_addresses: vec![lookupd.tcp_address()],
//!     ..Default::default()
//! })?;
//! nsqd.create_topic("audit")?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Everything is blocking (std::process); call it at the start of a `#[tokio::test]` or in
//! `spawn_blocking`. Dropping an instance kills its processes and deletes its files, also when
//! the test panics. Each instance lives in `$TMPDIR/audit-trail-testkit/<pid>-<n>/`; starting
//! an instance first reclaims directories left behind by test processes that were killed.
//!
//! Binaries: `PG_BIN_DIR` (else the newest `/usr/lib/postgresql/*/bin`, else
//! `pg_config --bindir`), `NSQD_BIN` / `NSQLOOKUPD_BIN` (else `<workspace>/.tools/bin`, else
//! `PATH`). Postgres refuses to run as root, so under root it runs as `postgres` (or `nobody`).
//!
//! Layout: `instance_dir` (directories and the sweep), `postgres`, `nsq` (nsqd, nsqlookupd),
//! `http` (the admin-API client), `process` (binaries, signals, log tails).

mod http;
mod instance_dir;
mod nsq;
mod port;
mod postgres;
mod process;

pub use instance_dir::sweep_abandoned_instances;
pub use nsq::{Nsqd, NsqdOptions, Nsqlookupd};
pub use port::free_port;
pub use postgres::Postgres;
