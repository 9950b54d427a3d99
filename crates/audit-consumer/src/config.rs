//! Configuration: every environment variable the consumer reads, parsed once
//! in `main` into a [`Config`] and passed down.
//!
//! Variables are read with envy as text and parsed here, one by one, so that
//! every error names the variable it is about; envy alone reports
//! `unknown variant` for a bad `LOG_FORMAT` without saying where it came
//! from. An empty value counts as unset (compose files often write `VAR=`).

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use telemetry::trace::TraceConfig;
use telemetry::{LogFormat, LogLevel};

/// The defaults, written as an operator would write them, in one place.
/// `DATABASE_URL` has none: it is required.
mod defaults {
    pub const DATABASE_MAX_CONNECTIONS: &str = "5";
    pub const LOG_LEVEL: &str = "info";
    pub const LOG_FORMAT: &str = "json";
    pub const RUN_MIGRATIONS: &str = "true";
    pub const CONSUMER_BIND: &str = "0.0.0.0:8081";
    pub const NSQLOOKUPD_HTTP_ADDRESSES: &str = "127.0.0.1:4161";
    pub const NSQ_TOPIC: &str = "audit.events";
    pub const NSQ_CHANNEL: &str = "audit-store";
    pub const NSQ_MAX_IN_FLIGHT: &str = "500";
    pub const NSQ_MAX_ATTEMPTS: &str = "10";
    pub const NSQ_MSG_TIMEOUT_MS: &str = "60000";
    pub const NSQ_OUTPUT_BUFFER_TIMEOUT_MS: &str = "25";
    pub const NSQD_TCP_ADDRESS: &str = "127.0.0.1:4150";
    pub const BATCH_SIZE: &str = "500";
    pub const BATCH_MAX_WAIT_MS: &str = "20";
    pub const NSQ_RECEIPTS_TOPIC: &str = "audit.receipts";
    pub const RECEIPTS_ENABLED: &str = "true";
}

/// How often the consumer asks nsqlookupd which nsqd instances carry the
/// topic. Not an environment variable: nothing in operations has needed to
/// change it, and a new nsqd is found within this time.
pub const LOOKUPD_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// nsqd refuses a `RDY` above its `--max-rdy-count`, whose default is 2500;
/// asking for more would make every connection fail.
const MAX_IN_FLIGHT_LIMIT: u16 = 2500;

/// nsqd refuses an IDENTIFY whose `msg_timeout` is under 1 s or above its
/// `--max-msg-timeout` (15 minutes by default); either would make every
/// connection fail.
const MSG_TIMEOUT_RANGE_MS: RangeInclusive<u64> = 1_000..=900_000;

/// nsqd refuses an IDENTIFY whose `output_buffer_timeout` is outside its
/// `--min-output-buffer-timeout` (25 ms by default) and
/// `--max-output-buffer-timeout` (30 s by default).
const OUTPUT_BUFFER_TIMEOUT_RANGE_MS: RangeInclusive<u64> = 25..=30_000;

/// Everything the consumer needs to know from its environment, valid.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: where `audit_logs` and `audit_dead_letters` live.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`: size of the connection pool.
    pub database_max_connections: u32,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// `RUN_MIGRATIONS`: apply `migrations/audit` at start-up.
    pub run_migrations: bool,
    /// `CONSUMER_BIND`: address of the health endpoints (port 0 picks one).
    pub consumer_bind: SocketAddr,
    /// From `NSQD_TCP_ADDRESSES` when set (direct connections), otherwise
    /// from `NSQLOOKUPD_HTTP_ADDRESSES`.
    pub nsq_discovery: nsq::Discovery,
    pub nsq_topic: nsq::Topic,
    pub nsq_channel: nsq::Channel,
    /// `NSQ_MAX_IN_FLIGHT`: messages nsqd may send before we FIN or REQ any.
    pub nsq_max_in_flight: u16,
    /// `NSQ_MAX_ATTEMPTS`: deliveries after which a message that still
    /// cannot be stored goes to the dead-letter table.
    pub nsq_max_attempts: u16,
    /// `NSQ_MSG_TIMEOUT_MS`: how long nsqd waits for our FIN, REQ or TOUCH
    /// before it gives a message to another consumer. Asked for explicitly
    /// (IDENTIFY) rather than left to nsqd's `--msg-timeout`, so the batch
    /// writer knows how often to TOUCH the messages it holds.
    pub nsq_msg_timeout: Duration,
    /// `NSQ_OUTPUT_BUFFER_TIMEOUT_MS`: how long nsqd may hold messages in
    /// its write buffer before flushing them to us. nsqd's own default,
    /// 250 ms, is the latency it adds to every message at low rates (the
    /// buffer flushes early only once 16 KiB are waiting); 25 ms, nsqd's
    /// minimum, keeps that within the batch writer's own wait.
    pub nsq_output_buffer_timeout: Duration,
    /// `NSQD_TCP_ADDRESS`: the nsqd that `dead-letters replay` publishes to;
    /// when unset, the first of `NSQD_TCP_ADDRESSES`, else 127.0.0.1:4150.
    pub nsqd_tcp_address: String,
    /// `BATCH_SIZE`: messages stored per transaction at most.
    pub batch_size: usize,
    /// `BATCH_MAX_WAIT_MS`: how long a batch waits for more messages after
    /// its first one.
    pub batch_max_wait: Duration,
    /// `NSQ_RECEIPTS_TOPIC`, where delivery receipts are published (to
    /// `NSQD_TCP_ADDRESS`); `None` when `RECEIPTS_ENABLED` is false.
    pub receipts_topic: Option<nsq::Topic>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
    /// `OTEL_TRACES_SAMPLER(_ARG)`: tracing is off unless an endpoint is set.
    pub tracing: TraceConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            // The URL may carry a password.
            .field("database_url", &"<redacted>")
            .field("database_max_connections", &self.database_max_connections)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("run_migrations", &self.run_migrations)
            .field("consumer_bind", &self.consumer_bind)
            .field("nsq_discovery", &self.nsq_discovery)
            .field("nsq_topic", &self.nsq_topic)
            .field("nsq_channel", &self.nsq_channel)
            .field("nsq_max_in_flight", &self.nsq_max_in_flight)
            .field("nsq_max_attempts", &self.nsq_max_attempts)
            .field("nsq_msg_timeout", &self.nsq_msg_timeout)
            .field("nsq_output_buffer_timeout", &self.nsq_output_buffer_timeout)
            .field("nsqd_tcp_address", &self.nsqd_tcp_address)
            .field("batch_size", &self.batch_size)
            .field("batch_max_wait", &self.batch_max_wait)
            .field("receipts_topic", &self.receipts_topic)
            .field("tracing", &self.tracing)
            .finish()
    }
}

/// A variable that is missing or holds a value we cannot use. Its `Display`
/// is one line that names the variable, for an operator reading a crash log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set; it is required")]
    Missing { name: &'static str },
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("could not read the environment: {0}")]
    Environment(String),
}

/// The variables as envy reads them: text, each optional.
#[derive(Deserialize)]
struct RawConfig {
    database_url: Option<String>,
    database_max_connections: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    run_migrations: Option<String>,
    consumer_bind: Option<String>,
    nsqlookupd_http_addresses: Option<String>,
    nsqd_tcp_addresses: Option<String>,
    nsq_topic: Option<String>,
    nsq_channel: Option<String>,
    nsq_max_in_flight: Option<String>,
    nsq_max_attempts: Option<String>,
    nsq_msg_timeout_ms: Option<String>,
    nsq_output_buffer_timeout_ms: Option<String>,
    nsqd_tcp_address: Option<String>,
    batch_size: Option<String>,
    batch_max_wait_ms: Option<String>,
    nsq_receipts_topic: Option<String>,
    receipts_enabled: Option<String>,
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        // `std::env::vars` panics on a value that is not UTF-8; such a value
        // is kept lossily here and then fails validation with its name.
        Config::from_vars(std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }))
    }

    /// Reads and validates the given variables, as if they were the
    /// environment. Tests use it to avoid changing the process environment.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let tracing =
            TraceConfig::from_vars(vars.iter().cloned()).map_err(|e| invalid(e.var, e.reason))?;
        let raw: RawConfig = envy::from_iter(vars)
            .map_err(|e| ConfigError::Environment(one_line(&e.to_string())))?;
        Config::parse(raw, tracing)
    }

    fn parse(raw: RawConfig, tracing: TraceConfig) -> Result<Config, ConfigError> {
        let database_url = match set(raw.database_url) {
            Some(url) => {
                // Parse now so a typo stops the service at start rather than
                // on the first connection. The value is not echoed: it may
                // carry a password.
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(
                        "DATABASE_URL",
                        "it must start with postgres:// or postgresql://",
                    ));
                }
                url.parse::<PgConnectOptions>()
                    .map_err(|e| invalid("DATABASE_URL", e.to_string()))?;
                url
            }
            None => {
                return Err(ConfigError::Missing {
                    name: "DATABASE_URL",
                })
            }
        };

        let nsq_max_in_flight = number(
            "NSQ_MAX_IN_FLIGHT",
            raw.nsq_max_in_flight,
            defaults::NSQ_MAX_IN_FLIGHT,
            1..=MAX_IN_FLIGHT_LIMIT,
        )?;
        let batch_size: usize = number(
            "BATCH_SIZE",
            raw.batch_size,
            defaults::BATCH_SIZE,
            1..=10_000,
        )?;
        if batch_size > usize::from(nsq_max_in_flight) {
            return Err(invalid(
                "BATCH_SIZE",
                format!(
                    "{batch_size} is more than NSQ_MAX_IN_FLIGHT ({nsq_max_in_flight}); nsqd never \
                     has more than NSQ_MAX_IN_FLIGHT messages out to us, so a batch could never \
                     fill (lower BATCH_SIZE or raise NSQ_MAX_IN_FLIGHT)"
                ),
            ));
        }

        let direct_addresses = match set(raw.nsqd_tcp_addresses) {
            Some(list) => Some(addresses("NSQD_TCP_ADDRESSES", &list)?),
            None => None,
        };
        let nsqd_tcp_address = match set(raw.nsqd_tcp_address) {
            Some(value) => {
                let value = value.trim();
                address(value).map_err(|reason| invalid("NSQD_TCP_ADDRESS", reason))?;
                value.to_owned()
            }
            None => direct_addresses
                .as_ref()
                .and_then(|list| list.first().cloned())
                .unwrap_or_else(|| defaults::NSQD_TCP_ADDRESS.to_owned()),
        };
        let nsq_discovery = match direct_addresses {
            Some(tcp_addresses) => nsq::Discovery::Direct { tcp_addresses },
            None => nsq::Discovery::Lookupd {
                http_addresses: addresses(
                    "NSQLOOKUPD_HTTP_ADDRESSES",
                    &set(raw.nsqlookupd_http_addresses)
                        .unwrap_or_else(|| defaults::NSQLOOKUPD_HTTP_ADDRESSES.to_owned()),
                )?,
                poll_interval: LOOKUPD_POLL_INTERVAL,
            },
        };

        Ok(Config {
            database_url,
            database_max_connections: number(
                "DATABASE_MAX_CONNECTIONS",
                raw.database_max_connections,
                defaults::DATABASE_MAX_CONNECTIONS,
                1..=1000,
            )?,
            log_level: text("LOG_LEVEL", raw.log_level, defaults::LOG_LEVEL, |s| {
                deserialize::<LogLevel>(s)
            })?,
            log_format: text("LOG_FORMAT", raw.log_format, defaults::LOG_FORMAT, |s| {
                deserialize::<LogFormat>(&s.to_ascii_lowercase())
                    .map_err(|_| format!("{s:?} is not json or text"))
            })?,
            run_migrations: text(
                "RUN_MIGRATIONS",
                raw.run_migrations,
                defaults::RUN_MIGRATIONS,
                boolean,
            )?,
            consumer_bind: text(
                "CONSUMER_BIND",
                raw.consumer_bind,
                defaults::CONSUMER_BIND,
                |s| {
                    s.parse::<SocketAddr>()
                        .map_err(|_| format!("{s:?} is not an IP:port address, e.g. 0.0.0.0:8081"))
                },
            )?,
            nsq_discovery,
            nsq_topic: text("NSQ_TOPIC", raw.nsq_topic, defaults::NSQ_TOPIC, |s| {
                nsq::Topic::new(s).map_err(|e| e.to_string())
            })?,
            nsq_channel: text("NSQ_CHANNEL", raw.nsq_channel, defaults::NSQ_CHANNEL, |s| {
                nsq::Channel::new(s).map_err(|e| e.to_string())
            })?,
            nsq_max_in_flight,
            nsq_max_attempts: number(
                "NSQ_MAX_ATTEMPTS",
                raw.nsq_max_attempts,
                defaults::NSQ_MAX_ATTEMPTS,
                1..=u16::MAX,
            )?,
            nsq_msg_timeout: Duration::from_millis(number(
                "NSQ_MSG_TIMEOUT_MS",
                raw.nsq_msg_timeout_ms,
                defaults::NSQ_MSG_TIMEOUT_MS,
                MSG_TIMEOUT_RANGE_MS,
            )?),
            nsq_output_buffer_timeout: Duration::from_millis(number(
                "NSQ_OUTPUT_BUFFER_TIMEOUT_MS",
                raw.nsq_output_buffer_timeout_ms,
                defaults::NSQ_OUTPUT_BUFFER_TIMEOUT_MS,
                OUTPUT_BUFFER_TIMEOUT_RANGE_MS,
            )?),
            nsqd_tcp_address,
            receipts_topic: match text(
                "RECEIPTS_ENABLED",
                raw.receipts_enabled,
                defaults::RECEIPTS_ENABLED,
                boolean,
            )? {
                true => Some(text(
                    "NSQ_RECEIPTS_TOPIC",
                    raw.nsq_receipts_topic,
                    defaults::NSQ_RECEIPTS_TOPIC,
                    |s| nsq::Topic::new(s).map_err(|e| e.to_string()),
                )?),
                false => None,
            },
            batch_size,
            tracing,
            batch_max_wait: Duration::from_millis(number(
                "BATCH_MAX_WAIT_MS",
                raw.batch_max_wait_ms,
                defaults::BATCH_MAX_WAIT_MS,
                // Messages of a batch wait this long before they are stored;
                // far below nsqd's message timeout (60 s by default).
                0..=10_000,
            )?),
        })
    }
}

/// The value, unless it is absent or blank.
fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: one_line(&reason.into()),
    }
}

/// Parses a variable (or its default) with `parse`, naming it on error.
fn text<T>(
    name: &'static str,
    value: Option<String>,
    default: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let value = set(value);
    let value = value.as_deref().unwrap_or(default).trim();
    parse(value).map_err(|reason| invalid(name, reason))
}

/// Parses an integer variable (or its default) and checks its range.
fn number<T>(
    name: &'static str,
    value: Option<String>,
    default: &str,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    text(name, value, default, |s| {
        let out_of_range = || {
            format!(
                "{s:?} is not a whole number from {} to {}",
                range.start(),
                range.end()
            )
        };
        let n = s.parse::<T>().map_err(|_| out_of_range())?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(out_of_range())
        }
    })
}

fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// Runs a type's serde `Deserialize` on one string: the telemetry types
/// define their accepted spellings that way.
fn deserialize<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    let de: StrDeserializer<'_, ValueError> = s.into_deserializer();
    T::deserialize(de).map_err(|e| e.to_string())
}

/// A comma-separated list of `host:port` addresses, at least one.
fn addresses(name: &'static str, list: &str) -> Result<Vec<String>, ConfigError> {
    let mut parsed = Vec::new();
    for entry in list.split(',').map(str::trim) {
        address(entry).map_err(|reason| invalid(name, reason))?;
        parsed.push(entry.to_owned());
    }
    Ok(parsed)
}

fn address(entry: &str) -> Result<(), String> {
    if entry.is_empty() {
        return Err("an entry of the comma-separated list is empty".into());
    }
    if entry.contains("://") {
        return Err(format!("{entry:?} has a scheme; write host:port"));
    }
    let port = entry
        .rsplit_once(':')
        .filter(|(host, _)| {
            !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || c == ',')
        })
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port != 0);
    match port {
        Some(_) => Ok(()),
        None => Err(format!("{entry:?} is not host:port")),
    }
}

/// Error texts from parsers may span lines; the operator gets one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/audit");

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    fn error(vars: &[(&str, &str)]) -> String {
        let err = parse(vars).unwrap_err().to_string();
        assert!(!err.contains('\n'), "not one line: {err}");
        err
    }

    #[test]
    fn only_the_database_url_is_required_and_the_defaults_match_the_design() {
        let config = parse(&[URL]).unwrap();
        assert_eq!(config.database_max_connections, 5);
        assert_eq!(config.log_level, LogLevel::default());
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.run_migrations);
        assert_eq!(config.consumer_bind.to_string(), "0.0.0.0:8081");
        match &config.nsq_discovery {
            nsq::Discovery::Lookupd { http_addresses, .. } => {
                assert_eq!(http_addresses, &["127.0.0.1:4161"]);
            }
            other => panic!("expected lookupd discovery, got {other:?}"),
        }
        assert_eq!(config.nsq_topic.as_str(), "audit.events");
        assert_eq!(config.nsq_channel.as_str(), "audit-store");
        assert_eq!(config.nsq_max_in_flight, 500);
        assert_eq!(config.nsq_max_attempts, 10);
        assert_eq!(config.nsq_msg_timeout, Duration::from_secs(60));
        assert_eq!(config.nsq_output_buffer_timeout, Duration::from_millis(25));
        assert_eq!(config.nsqd_tcp_address, "127.0.0.1:4150");
        assert_eq!(config.batch_size, 500);
        assert_eq!(config.batch_max_wait, Duration::from_millis(20));
        assert_eq!(
            config.receipts_topic.as_ref().map(nsq::Topic::as_str),
            Some("audit.receipts")
        );
        assert!(!config.tracing.is_enabled());
    }

    #[test]
    fn tracing_is_configured_by_the_standard_otel_variables() {
        let config = parse(&[
            URL,
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            ("OTEL_SERVICE_NAME", "audit-consumer-2"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ])
        .unwrap();
        assert_eq!(
            config.tracing.traces_url().as_deref(),
            Some("http://jaeger:4318/v1/traces")
        );
        assert_eq!(
            config.tracing.service_name.as_deref(),
            Some("audit-consumer-2")
        );
        assert_eq!(
            config.tracing.sampler.to_string(),
            "parentbased_traceidratio(0.5)"
        );
    }

    #[test]
    fn receipts_can_go_elsewhere_or_be_turned_off() {
        let config = parse(&[URL, ("NSQ_RECEIPTS_TOPIC", "receipts")]).unwrap();
        assert_eq!(
            config.receipts_topic.as_ref().map(nsq::Topic::as_str),
            Some("receipts")
        );
        let config = parse(&[URL, ("RECEIPTS_ENABLED", "false")]).unwrap();
        assert!(config.receipts_topic.is_none());
        assert!(error(&[URL, ("NSQ_RECEIPTS_TOPIC", "bad topic")])
            .starts_with("NSQ_RECEIPTS_TOPIC is invalid"));
        assert!(
            error(&[URL, ("RECEIPTS_ENABLED", "maybe")]).starts_with("RECEIPTS_ENABLED is invalid")
        );
    }

    #[test]
    fn a_missing_database_url_is_named() {
        assert_eq!(error(&[]), "DATABASE_URL is not set; it is required");
        assert_eq!(
            error(&[("DATABASE_URL", "  ")]),
            "DATABASE_URL is not set; it is required"
        );
    }

    #[test]
    fn a_malformed_database_url_is_named_without_echoing_it() {
        for url in [
            "mysql://root:hunter2@db/audit",
            "postgres://root:hunter2@db:port/audit",
        ] {
            let err = error(&[("DATABASE_URL", url)]);
            assert!(err.starts_with("DATABASE_URL is invalid"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (name, value) in [
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("LOG_LEVEL", "loud"),
            ("LOG_FORMAT", "xml"),
            ("RUN_MIGRATIONS", "maybe"),
            ("CONSUMER_BIND", "localhost"),
            ("NSQLOOKUPD_HTTP_ADDRESSES", "127.0.0.1:4161,,"),
            ("NSQLOOKUPD_HTTP_ADDRESSES", "http://127.0.0.1:4161"),
            ("NSQD_TCP_ADDRESSES", "127.0.0.1"),
            ("NSQ_TOPIC", "audit events"),
            ("NSQ_CHANNEL", "#ephemeral"),
            ("NSQ_MAX_IN_FLIGHT", "2501"),
            ("NSQ_MAX_ATTEMPTS", "0"),
            ("NSQ_MSG_TIMEOUT_MS", "999"),
            ("NSQ_MSG_TIMEOUT_MS", "900001"),
            ("NSQ_OUTPUT_BUFFER_TIMEOUT_MS", "24"),
            ("NSQ_OUTPUT_BUFFER_TIMEOUT_MS", "30001"),
            ("NSQD_TCP_ADDRESS", "nsqd"),
            ("NSQD_TCP_ADDRESS", "127.0.0.1:4150,127.0.0.1:4152"),
            ("BATCH_SIZE", "0"),
            ("BATCH_SIZE", "ten"),
            ("BATCH_MAX_WAIT_MS", "-1"),
            ("BATCH_MAX_WAIT_MS", "60000"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ] {
            let err = error(&[URL, (name, value)]);
            assert!(err.starts_with(&format!("{name} is invalid: ")), "{err}");
        }
    }

    #[test]
    fn a_batch_larger_than_the_in_flight_window_is_refused_with_the_reason() {
        let err = error(&[URL, ("NSQ_MAX_IN_FLIGHT", "100"), ("BATCH_SIZE", "200")]);
        assert!(err.starts_with("BATCH_SIZE is invalid"), "{err}");
        assert!(err.contains("NSQ_MAX_IN_FLIGHT (100)"), "{err}");
        assert!(err.contains("could never fill"), "{err}");
        let config = parse(&[URL, ("NSQ_MAX_IN_FLIGHT", "100"), ("BATCH_SIZE", "100")]).unwrap();
        assert_eq!(config.batch_size, 100);
    }

    #[test]
    fn direct_nsqd_addresses_replace_lookupd_discovery() {
        let config = parse(&[
            URL,
            ("NSQD_TCP_ADDRESSES", " 127.0.0.1:4150 , nsqd-2:4150"),
            ("NSQLOOKUPD_HTTP_ADDRESSES", "ignored:4161"),
        ])
        .unwrap();
        match config.nsq_discovery {
            nsq::Discovery::Direct { tcp_addresses } => {
                assert_eq!(tcp_addresses, ["127.0.0.1:4150", "nsqd-2:4150"]);
            }
            other => panic!("expected direct discovery, got {other:?}"),
        }
        let config = parse(&[URL, ("NSQD_TCP_ADDRESSES", "")]).unwrap();
        assert!(matches!(
            config.nsq_discovery,
            nsq::Discovery::Lookupd { .. }
        ));
    }

    #[test]
    fn replay_publishes_to_nsqd_tcp_address_else_the_first_direct_address() {
        let config = parse(&[
            URL,
            ("NSQD_TCP_ADDRESSES", "nsqd-1:4150,nsqd-2:4150"),
            ("NSQD_TCP_ADDRESS", " nsqd-3:4150 "),
        ])
        .unwrap();
        assert_eq!(config.nsqd_tcp_address, "nsqd-3:4150");
        let config = parse(&[URL, ("NSQD_TCP_ADDRESSES", "nsqd-1:4150,nsqd-2:4150")]).unwrap();
        assert_eq!(config.nsqd_tcp_address, "nsqd-1:4150");
    }

    #[test]
    fn values_are_read_case_insensitively_where_it_makes_sense() {
        let config = parse(&[
            URL,
            ("LOG_LEVEL", "DEBUG"),
            ("LOG_FORMAT", "Text"),
            ("RUN_MIGRATIONS", "FALSE"),
            ("BATCH_MAX_WAIT_MS", "0"),
        ])
        .unwrap();
        assert_eq!(config.log_level.0, slog::Level::Debug);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(!config.run_migrations);
        assert_eq!(config.batch_max_wait, Duration::ZERO);
    }

    #[test]
    fn debug_output_hides_the_database_url() {
        let config = parse(&[("DATABASE_URL", "postgres://u:hunter2@db/audit")]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
