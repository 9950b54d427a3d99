//! The container files, checked without a Docker engine: what `just up`
//! builds and starts must work the first time on a fresh clone.
//!
//! - `dockerfiles`: hadolint, and what each image builds, runs and exposes.
//! - `compose_files`: the compose specification, restarts, dependencies,
//!   volumes, scaling, and `.env.example`.
//! - `service_config`: every variable, address, port and health check the
//!   compose files give the services, checked with the services' own
//!   configuration parsers.

// Helpers outside #[test] functions panic on purpose too: a failed read or
// parse is a failed check, with the message saying what was wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod compose_files;
mod dockerfiles;
mod service_config;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use deploy_checks::stack::Stack;

/// The services built from docker/; each one's binary has its name.
const APPS: [&str; 2] = ["accounts-api", "audit-consumer"];

fn stack() -> Stack {
    Stack::load().unwrap_or_else(|e| panic!("{e}"))
}

/// What a service's own configuration parser makes of an environment.
#[derive(Debug)]
struct Parsed {
    /// `API_BIND` or `CONSUMER_BIND`: where it serves HTTP.
    bind: SocketAddr,
    database: sqlx::postgres::PgConnectOptions,
    /// NSQ addresses it connects to: (`tcp` or `http`, `host:port`).
    nsq: Vec<(&'static str, String)>,
}

fn parse_config(service: &str, env: &BTreeMap<String, String>) -> Result<Parsed, String> {
    let vars = env.clone();
    match service {
        "accounts-api" => {
            let config = accounts_api::Config::from_vars(vars).map_err(|e| e.to_string())?;
            Ok(Parsed {
                bind: config.api_bind,
                database: config.database.connect_options.clone(),
                nsq: vec![("tcp", config.relay.nsqd_tcp_address.clone())],
            })
        }
        "audit-consumer" => {
            let config = audit_consumer::Config::from_vars(vars).map_err(|e| e.to_string())?;
            let mut nsq = vec![("tcp", config.nsqd_tcp_address.clone())];
            match &config.nsq_discovery {
                nsq::Discovery::Lookupd { http_addresses, .. } => {
                    nsq.extend(http_addresses.iter().map(|a| ("http", a.clone())));
                }
                nsq::Discovery::Direct { tcp_addresses } => {
                    nsq.extend(tcp_addresses.iter().map(|a| ("tcp", a.clone())));
                }
            }
            let database = config
                .database_url
                .parse()
                .map_err(|e| format!("DATABASE_URL: {e}"))?;
            Ok(Parsed {
                bind: config.consumer_bind,
                database,
                nsq,
            })
        }
        other => Err(format!("{other} is not one of {APPS:?}")),
    }
}

/// `host:port` split at the last colon.
fn host_port(address: &str) -> (&str, u16) {
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{address:?} is not host:port"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("{address:?} has no numeric port"));
    (host, port)
}
