//! Configuration from the environment, parsed once in `main` and passed down.
//!
//! Every variable is read as text with envy and then parsed here, so that a
//! bad value stops the service with one line naming the variable (envy's own
//! messages do not name it for most types, and may echo the value). Defaults
//! live in [`defaults`] and nowhere else.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use telemetry::trace::TraceConfig;
use telemetry::{LogFormat, LogLevel};

/// Default values of the optional variables (DESIGN.md §6).
pub mod defaults {
    pub const RUN_MIGRATIONS: bool = true;
    pub const API_BIND: &str = "0.0.0.0:8080";
    pub const API_MAX_BODY_BYTES: usize = 65_536;
    pub const NSQD_TCP_ADDRESS: &str = "127.0.0.1:4150";
    pub const NSQ_TOPIC: &str = "audit.events";
    pub const RELAY_ENABLED: bool = true;
    pub const RELAY_BATCH_SIZE: u32 = 500;
    pub const RELAY_POLL_INTERVAL_MS: u64 = 500;
    pub const RELAY_REPUBLISH_AFTER_SECS: u64 = 60;
    pub const NSQ_RECEIPTS_TOPIC: &str = "audit.receipts";
    pub const RELAY_RECEIPTS_CHANNEL: &str = "outbox-relay";
    pub const OUTBOX_RETENTION_HOURS: u64 = 24;
    pub const DATABASE_MAX_CONNECTIONS: u32 = 10;
    pub const DATABASE_ACQUIRE_TIMEOUT_MS: u64 = 3000;
    pub const RATE_LIMIT_PER_SECOND: u32 = 100;
    pub const RATE_LIMIT_BURST: u32 = 1000;
    pub const AUDIT_READS: bool = true;
    pub const IDEMPOTENCY_KEY_TTL_HOURS: u64 = 24;
}

/// How often the receipt subscription asks nsqlookupd which nsqd nodes carry
/// the receipts topic (the consumer uses the same interval).
const LOOKUPD_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// Shortest accepted `AUTH_JWT_SECRET`: HS256 keys shorter than the hash
/// output (32 bytes) weaken the MAC (RFC 7518 §3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Bounds that keep a typo from turning into a pathological setting.
const MAX_BODY_BYTES_LIMIT: usize = 16 * 1024 * 1024;
const MAX_BATCH_SIZE: u32 = 10_000;
const MAX_POLL_INTERVAL_MS: u64 = 3_600_000;
const MAX_DATABASE_CONNECTIONS: u32 = 1_000;
const MAX_REPUBLISH_AFTER_SECS: u64 = 86_400;
/// Ten years: "keep them all" without a special value.
const MAX_RETENTION_HOURS: u64 = 87_600;
const ACQUIRE_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=60_000;
const MAX_RATE_LIMIT: u32 = 1_000_000;
/// The API contract keeps idempotency keys at least a day; at most a year.
const IDEMPOTENCY_KEY_TTL_HOURS_RANGE: std::ops::RangeInclusive<u64> = 24..=8_760;

/// The whole configuration of the service.
#[derive(Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// `API_BIND`; port 0 picks a free port (tests).
    pub api_bind: SocketAddr,
    pub auth: AuthConfig,
    /// `API_MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `RATE_LIMIT_PER_SECOND` and `RATE_LIMIT_BURST`, per actor; `None`
    /// (a rate of 0) turns the limit off.
    pub rate_limit: Option<crate::rate_limit::Settings>,
    /// `AUDIT_READS`: `GET /accounts/{id}` leaves an `account.read` event.
    pub audit_reads: bool,
    /// `IDEMPOTENCY_KEY_TTL_HOURS`: how long a stored response is replayed.
    pub idempotency_key_ttl: Duration,
    pub relay: RelayConfig,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
    /// `OTEL_TRACES_SAMPLER(_ARG)`: tracing is off unless an endpoint is set.
    pub tracing: TraceConfig,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`, parsed. Not `Debug`-printed anywhere: it may hold a password.
    pub connect_options: PgConnectOptions,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`: how long a request waits for a free
    /// connection (or for a new one to connect) before it gets 503.
    pub acquire_timeout: Duration,
    /// `RUN_MIGRATIONS`: apply pending migrations at start-up.
    pub run_migrations: bool,
}

/// What it takes to check (and, for `token`, to issue) bearer tokens.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `AUTH_JWT_SECRET`.
    pub secret: JwtSecret,
    /// `AUTH_JWT_ISSUER`: when set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`: when set, tokens must carry this `aud`.
    pub audience: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `RELAY_ENABLED`: run the outbox relay in this process.
    pub enabled: bool,
    /// `NSQD_TCP_ADDRESS`, `host:port`.
    pub nsqd_tcp_address: String,
    /// `NSQ_TOPIC`.
    pub topic: nsq::Topic,
    /// `RELAY_BATCH_SIZE`: outbox rows per MPUB, 1..=10000.
    pub batch_size: u32,
    /// `RELAY_POLL_INTERVAL_MS`: how often the relay looks for rows written
    /// by other processes (rows written here wake it at once).
    pub poll_interval: Duration,
    /// `RELAY_REPUBLISH_AFTER_SECS`: how long a published row may wait for
    /// its delivery receipt before it is published again (the wait doubles
    /// with each publication). `None` (the variable set to 0) takes nsqd's
    /// `OK` as the confirmation: for consumers that send no receipts.
    pub republish_after: Option<Duration>,
    /// Where delivery receipts come from.
    pub receipts: ReceiptsConfig,
    /// `OUTBOX_RETENTION_HOURS`: confirmed rows are deleted this long after
    /// their confirmation.
    pub retention: Duration,
}

#[derive(Clone, Debug)]
pub struct ReceiptsConfig {
    /// `NSQ_RECEIPTS_TOPIC`: the topic consumers publish receipts to.
    pub topic: nsq::Topic,
    /// `RELAY_RECEIPTS_CHANNEL`: shared by every relay, so each receipt is
    /// handled once.
    pub channel: nsq::Channel,
    /// `NSQLOOKUPD_HTTP_ADDRESSES` when set; otherwise `NSQD_TCP_ADDRESS`
    /// directly.
    pub discovery: nsq::Discovery,
}

/// The HS256 key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<JwtSecret, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_JWT_SECRET_BYTES} bytes long (it has {})",
                bytes.len()
            ));
        }
        Ok(JwtSecret(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

/// A configuration problem, displayed as one line that names the variable.
/// The offending value is never included: it may be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("cannot read the environment: {0}")]
    Environment(String),
}

/// Every variable as the environment spelled it. envy maps `FIELD_NAME` to
/// `field_name`.
#[derive(Deserialize, Default)]
struct Raw {
    database_url: Option<String>,
    database_max_connections: Option<String>,
    database_acquire_timeout_ms: Option<String>,
    run_migrations: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    api_bind: Option<String>,
    auth_jwt_secret: Option<String>,
    auth_jwt_issuer: Option<String>,
    auth_jwt_audience: Option<String>,
    api_max_body_bytes: Option<String>,
    nsqd_tcp_address: Option<String>,
    nsq_topic: Option<String>,
    relay_enabled: Option<String>,
    relay_batch_size: Option<String>,
    relay_poll_interval_ms: Option<String>,
    relay_republish_after_secs: Option<String>,
    nsq_receipts_topic: Option<String>,
    relay_receipts_channel: Option<String>,
    nsqlookupd_http_addresses: Option<String>,
    outbox_retention_hours: Option<String>,
    rate_limit_per_second: Option<String>,
    rate_limit_burst: Option<String>,
    audit_reads: Option<String>,
    idempotency_key_ttl_hours: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars_os().filter_map(utf8_pair))
    }

    /// Reads the given variables instead of the environment (tests, tools).
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
            TraceConfig::from_vars(vars.iter().cloned()).map_err(|e| ConfigError::Invalid {
                var: e.var,
                reason: e.reason,
            })?;
        let raw = Raw::from_vars(vars)?;
        Ok(Config {
            database: raw.database()?,
            log_level: raw.log_level()?,
            log_format: raw.log_format()?,
            api_bind: parse_with(
                "API_BIND",
                raw.api_bind.as_deref(),
                defaults::API_BIND,
                |s| {
                    SocketAddr::from_str(s)
                        .map_err(|_| "expected an address like 0.0.0.0:8080".to_owned())
                },
            )?,
            auth: raw.auth()?,
            max_body_bytes: parse_number(
                "API_MAX_BODY_BYTES",
                raw.api_max_body_bytes.as_deref(),
                defaults::API_MAX_BODY_BYTES,
                1..=MAX_BODY_BYTES_LIMIT,
            )?,
            rate_limit: raw.rate_limit()?,
            audit_reads: parse_bool(
                "AUDIT_READS",
                raw.audit_reads.as_deref(),
                defaults::AUDIT_READS,
            )?,
            idempotency_key_ttl: Duration::from_secs(
                parse_number(
                    "IDEMPOTENCY_KEY_TTL_HOURS",
                    raw.idempotency_key_ttl_hours.as_deref(),
                    defaults::IDEMPOTENCY_KEY_TTL_HOURS,
                    IDEMPOTENCY_KEY_TTL_HOURS_RANGE,
                )? * 3600,
            ),
            relay: raw.relay()?,
            tracing,
        })
    }
}

impl DatabaseConfig {
    /// Only what the `migrate` subcommand needs.
    pub fn from_env() -> Result<DatabaseConfig, ConfigError> {
        Raw::from_vars(std::env::vars_os().filter_map(utf8_pair))?.database()
    }
}

impl AuthConfig {
    /// Only what the `token` subcommand needs: no database, no NSQ.
    pub fn from_env() -> Result<AuthConfig, ConfigError> {
        Raw::from_vars(std::env::vars_os().filter_map(utf8_pair))?.auth()
    }
}

/// Log settings alone, so that `migrate` logs like the service does.
pub fn log_settings_from_env() -> Result<(LogLevel, LogFormat), ConfigError> {
    let raw = Raw::from_vars(std::env::vars_os().filter_map(utf8_pair))?;
    Ok((raw.log_level()?, raw.log_format()?))
}

/// Variables that are not valid UTF-8 cannot be ours; skipping them lets the
/// ones we need be reported as missing rather than failing on a stranger.
fn utf8_pair((k, v): (std::ffi::OsString, std::ffi::OsString)) -> Option<(String, String)> {
    Some((k.into_string().ok()?, v.into_string().ok()?))
}

impl Raw {
    fn from_vars<I, K, V>(vars: I) -> Result<Raw, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars.into_iter().map(|(k, v)| (k.into(), v.into()));
        let mut raw: Raw =
            envy::from_iter(vars).map_err(|e| ConfigError::Environment(e.to_string()))?;
        // An empty variable means "not set": compose files and shells make
        // empty values easily, and an empty URL or secret is never meant.
        for field in [
            &mut raw.database_url,
            &mut raw.database_max_connections,
            &mut raw.database_acquire_timeout_ms,
            &mut raw.run_migrations,
            &mut raw.log_level,
            &mut raw.log_format,
            &mut raw.api_bind,
            &mut raw.auth_jwt_secret,
            &mut raw.auth_jwt_issuer,
            &mut raw.auth_jwt_audience,
            &mut raw.api_max_body_bytes,
            &mut raw.nsqd_tcp_address,
            &mut raw.nsq_topic,
            &mut raw.relay_enabled,
            &mut raw.relay_batch_size,
            &mut raw.relay_poll_interval_ms,
            &mut raw.relay_republish_after_secs,
            &mut raw.nsq_receipts_topic,
            &mut raw.relay_receipts_channel,
            &mut raw.nsqlookupd_http_addresses,
            &mut raw.outbox_retention_hours,
            &mut raw.rate_limit_per_second,
            &mut raw.rate_limit_burst,
            &mut raw.audit_reads,
            &mut raw.idempotency_key_ttl_hours,
        ] {
            if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *field = None;
            }
        }
        Ok(raw)
    }

    fn database(&self) -> Result<DatabaseConfig, ConfigError> {
        let url = self
            .database_url
            .as_deref()
            .ok_or(ConfigError::Missing("DATABASE_URL"))?;
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: "expected a postgres:// URL".into(),
            });
        }
        // The parser's messages do not echo the URL, which may hold a password.
        let connect_options =
            PgConnectOptions::from_str(url).map_err(|e| ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: e.to_string(),
            })?;
        Ok(DatabaseConfig {
            connect_options,
            max_connections: parse_number(
                "DATABASE_MAX_CONNECTIONS",
                self.database_max_connections.as_deref(),
                defaults::DATABASE_MAX_CONNECTIONS,
                1..=MAX_DATABASE_CONNECTIONS,
            )?,
            acquire_timeout: Duration::from_millis(parse_number(
                "DATABASE_ACQUIRE_TIMEOUT_MS",
                self.database_acquire_timeout_ms.as_deref(),
                defaults::DATABASE_ACQUIRE_TIMEOUT_MS,
                ACQUIRE_TIMEOUT_MS_RANGE,
            )?),
            run_migrations: parse_bool(
                "RUN_MIGRATIONS",
                self.run_migrations.as_deref(),
                defaults::RUN_MIGRATIONS,
            )?,
        })
    }

    fn log_level(&self) -> Result<LogLevel, ConfigError> {
        match self.log_level.as_deref() {
            None => Ok(LogLevel::default()),
            Some(s) => LogLevel::from_str(s).map_err(|reason| ConfigError::Invalid {
                var: "LOG_LEVEL",
                reason,
            }),
        }
    }

    fn log_format(&self) -> Result<LogFormat, ConfigError> {
        match self.log_format.as_deref() {
            None => Ok(LogFormat::default()),
            Some(s) => {
                deserialize_str(&s.trim().to_ascii_lowercase()).map_err(|_| ConfigError::Invalid {
                    var: "LOG_FORMAT",
                    reason: "expected json or text".into(),
                })
            }
        }
    }

    fn auth(&self) -> Result<AuthConfig, ConfigError> {
        let secret = self
            .auth_jwt_secret
            .as_deref()
            .ok_or(ConfigError::Missing("AUTH_JWT_SECRET"))?;
        let secret = JwtSecret::new(secret).map_err(|reason| ConfigError::Invalid {
            var: "AUTH_JWT_SECRET",
            reason,
        })?;
        Ok(AuthConfig {
            secret,
            issuer: self
                .auth_jwt_issuer
                .as_deref()
                .map(str::trim)
                .map(String::from),
            audience: self
                .auth_jwt_audience
                .as_deref()
                .map(str::trim)
                .map(String::from),
        })
    }

    fn rate_limit(&self) -> Result<Option<crate::rate_limit::Settings>, ConfigError> {
        let per_second = parse_number(
            "RATE_LIMIT_PER_SECOND",
            self.rate_limit_per_second.as_deref(),
            defaults::RATE_LIMIT_PER_SECOND,
            0..=MAX_RATE_LIMIT,
        )?;
        let burst = parse_number(
            "RATE_LIMIT_BURST",
            self.rate_limit_burst.as_deref(),
            defaults::RATE_LIMIT_BURST,
            1..=MAX_RATE_LIMIT,
        )?;
        Ok((per_second > 0).then_some(crate::rate_limit::Settings { per_second, burst }))
    }

    fn relay(&self) -> Result<RelayConfig, ConfigError> {
        let nsqd_tcp_address = parse_with(
            "NSQD_TCP_ADDRESS",
            self.nsqd_tcp_address.as_deref(),
            defaults::NSQD_TCP_ADDRESS,
            parse_host_port,
        )?;
        let republish_after_secs = parse_number(
            "RELAY_REPUBLISH_AFTER_SECS",
            self.relay_republish_after_secs.as_deref(),
            defaults::RELAY_REPUBLISH_AFTER_SECS,
            0..=MAX_REPUBLISH_AFTER_SECS,
        )?;
        let retention_hours = parse_number(
            "OUTBOX_RETENTION_HOURS",
            self.outbox_retention_hours.as_deref(),
            defaults::OUTBOX_RETENTION_HOURS,
            0..=MAX_RETENTION_HOURS,
        )?;
        let discovery = match self.nsqlookupd_http_addresses.as_deref() {
            Some(list) => nsq::Discovery::Lookupd {
                http_addresses: parse_address_list("NSQLOOKUPD_HTTP_ADDRESSES", list)?,
                poll_interval: LOOKUPD_POLL_INTERVAL,
            },
            None => nsq::Discovery::Direct {
                tcp_addresses: vec![nsqd_tcp_address.clone()],
            },
        };
        Ok(RelayConfig {
            enabled: parse_bool(
                "RELAY_ENABLED",
                self.relay_enabled.as_deref(),
                defaults::RELAY_ENABLED,
            )?,
            nsqd_tcp_address,
            topic: parse_with(
                "NSQ_TOPIC",
                self.nsq_topic.as_deref(),
                defaults::NSQ_TOPIC,
                |s| nsq::Topic::new(s).map_err(|e| e.to_string()),
            )?,
            batch_size: parse_number(
                "RELAY_BATCH_SIZE",
                self.relay_batch_size.as_deref(),
                defaults::RELAY_BATCH_SIZE,
                1..=MAX_BATCH_SIZE,
            )?,
            poll_interval: Duration::from_millis(parse_number(
                "RELAY_POLL_INTERVAL_MS",
                self.relay_poll_interval_ms.as_deref(),
                defaults::RELAY_POLL_INTERVAL_MS,
                1..=MAX_POLL_INTERVAL_MS,
            )?),
            republish_after: (republish_after_secs > 0)
                .then(|| Duration::from_secs(republish_after_secs)),
            receipts: ReceiptsConfig {
                topic: parse_with(
                    "NSQ_RECEIPTS_TOPIC",
                    self.nsq_receipts_topic.as_deref(),
                    defaults::NSQ_RECEIPTS_TOPIC,
                    |s| nsq::Topic::new(s).map_err(|e| e.to_string()),
                )?,
                channel: parse_with(
                    "RELAY_RECEIPTS_CHANNEL",
                    self.relay_receipts_channel.as_deref(),
                    defaults::RELAY_RECEIPTS_CHANNEL,
                    |s| nsq::Channel::new(s).map_err(|e| e.to_string()),
                )?,
                discovery,
            },
            retention: Duration::from_secs(retention_hours * 3600),
        })
    }
}

/// A comma-separated list of `host:port`, at least one.
fn parse_address_list(var: &'static str, list: &str) -> Result<Vec<String>, ConfigError> {
    let addresses = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(parse_host_port)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| ConfigError::Invalid { var, reason })?;
    if addresses.is_empty() {
        return Err(ConfigError::Invalid {
            var,
            reason: "expected at least one host:port".into(),
        });
    }
    Ok(addresses)
}

fn deserialize_str<'de, T: Deserialize<'de>>(s: &'de str) -> Result<T, ValueError> {
    T::deserialize(StrDeserializer::<ValueError>::new(s))
}

fn parse_with<T>(
    var: &'static str,
    value: Option<&str>,
    default: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    parse(value.map_or(default, str::trim)).map_err(|reason| ConfigError::Invalid { var, reason })
}

fn parse_number<T>(
    var: &'static str,
    value: Option<&str>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(value) = value else {
        return Ok(default);
    };
    let invalid = || ConfigError::Invalid {
        var,
        reason: format!(
            "expected a whole number from {} to {}",
            range.start(),
            range.end()
        ),
    };
    let n = value.trim().parse::<T>().map_err(|_| invalid())?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(invalid())
    }
}

fn parse_bool(var: &'static str, value: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            var,
            reason: "expected true or false".into(),
        }),
    }
}

/// `host:port`, where host may be a name (`nsqd:4150` in Compose).
fn parse_host_port(s: &str) -> Result<String, String> {
    let bad = || "expected host:port, e.g. 127.0.0.1:4150".to_owned();
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_owned()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn base() -> Vec<(&'static str, String)> {
        vec![
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/x".into(),
            ),
            ("AUTH_JWT_SECRET", SECRET.into()),
        ]
    }

    fn with(var: &'static str, value: &str) -> Result<Config, ConfigError> {
        let mut vars = base();
        vars.retain(|(k, _)| *k != var);
        vars.push((var, value.to_owned()));
        Config::from_vars(vars)
    }

    #[test]
    fn defaults_apply_when_only_the_required_variables_are_set() {
        let config = Config::from_vars(base()).unwrap();
        assert_eq!(config.api_bind, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.max_body_bytes, 65_536);
        assert!(config.database.run_migrations);
        assert_eq!(config.database.max_connections, 10);
        assert!(config.relay.enabled);
        assert_eq!(config.relay.batch_size, 500);
        assert_eq!(config.relay.poll_interval, Duration::from_millis(500));
        assert_eq!(config.relay.nsqd_tcp_address, "127.0.0.1:4150");
        assert_eq!(config.relay.topic.as_str(), "audit.events");
        assert_eq!(config.relay.republish_after, Some(Duration::from_secs(60)));
        assert_eq!(config.relay.retention, Duration::from_secs(24 * 3600));
        assert_eq!(config.relay.receipts.topic.as_str(), "audit.receipts");
        assert_eq!(config.relay.receipts.channel.as_str(), "outbox-relay");
        assert!(matches!(
            &config.relay.receipts.discovery,
            nsq::Discovery::Direct { tcp_addresses } if tcp_addresses == &["127.0.0.1:4150"]
        ));
        assert_eq!(config.auth.issuer, None);
        assert_eq!(config.auth.audience, None);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.database.acquire_timeout, Duration::from_secs(3));
        assert_eq!(
            config.rate_limit,
            Some(crate::rate_limit::Settings {
                per_second: 100,
                burst: 1000
            })
        );
        assert!(config.audit_reads);
        assert_eq!(config.idempotency_key_ttl, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn a_rate_limit_of_zero_turns_it_off_and_reads_need_not_be_audited() {
        let config = Config::from_vars(base().into_iter().chain([
            ("RATE_LIMIT_PER_SECOND", "0".to_owned()),
            ("AUDIT_READS", "false".to_owned()),
            ("IDEMPOTENCY_KEY_TTL_HOURS", "48".to_owned()),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "250".to_owned()),
        ]))
        .unwrap();
        assert_eq!(config.rate_limit, None);
        assert!(!config.audit_reads);
        assert_eq!(config.idempotency_key_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(config.database.acquire_timeout, Duration::from_millis(250));
    }

    #[test]
    fn missing_required_variables_are_named() {
        let err = Config::from_vars([("AUTH_JWT_SECRET", SECRET)])
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "missing DATABASE_URL");
        let err = Config::from_vars([("DATABASE_URL", "postgres://h/db")])
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "missing AUTH_JWT_SECRET");
    }

    #[test]
    fn each_bad_value_is_reported_in_one_line_naming_its_variable() {
        for (var, value) in [
            ("API_BIND", "localhost"),
            ("API_MAX_BODY_BYTES", "0"),
            ("API_MAX_BODY_BYTES", "lots"),
            ("RELAY_BATCH_SIZE", "0"),
            ("RELAY_BATCH_SIZE", "10001"),
            ("RELAY_POLL_INTERVAL_MS", "-5"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("RUN_MIGRATIONS", "maybe"),
            ("RELAY_ENABLED", "2"),
            ("LOG_LEVEL", "loud"),
            ("LOG_FORMAT", "xml"),
            ("NSQD_TCP_ADDRESS", "nsqd"),
            ("NSQD_TCP_ADDRESS", "nsqd:http"),
            ("NSQ_TOPIC", "no spaces allowed"),
            ("NSQ_RECEIPTS_TOPIC", "no spaces allowed"),
            ("RELAY_RECEIPTS_CHANNEL", "bad/channel"),
            ("NSQLOOKUPD_HTTP_ADDRESSES", "lookupd:4161,nope"),
            ("NSQLOOKUPD_HTTP_ADDRESSES", ","),
            ("RELAY_REPUBLISH_AFTER_SECS", "-1"),
            ("RELAY_REPUBLISH_AFTER_SECS", "86401"),
            ("OUTBOX_RETENTION_HOURS", "a day"),
            ("DATABASE_URL", "mysql://nope"),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "0"),
            ("RATE_LIMIT_PER_SECOND", "-1"),
            ("RATE_LIMIT_PER_SECOND", "fast"),
            ("RATE_LIMIT_BURST", "0"),
            ("AUDIT_READS", "sometimes"),
            ("IDEMPOTENCY_KEY_TTL_HOURS", "23"),
            ("IDEMPOTENCY_KEY_TTL_HOURS", "8761"),
        ] {
            let err = with(var, value).err().unwrap().to_string();
            assert!(
                err.starts_with(&format!("invalid {var}: ")),
                "{var}={value}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_short_secret_is_refused_without_printing_it() {
        let short = "too-short-secret";
        let err = with("AUTH_JWT_SECRET", short).err().unwrap().to_string();
        assert!(err.starts_with("invalid AUTH_JWT_SECRET: "), "{err}");
        assert!(err.contains("32 bytes"), "{err}");
        assert!(!err.contains(short), "{err}");
        let config = Config::from_vars(base()).unwrap();
        assert!(!format!("{:?}", config.auth).contains(SECRET));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let config = with("AUTH_JWT_ISSUER", "").unwrap();
        assert_eq!(config.auth.issuer, None);
        let config = with("API_BIND", " ").unwrap();
        assert_eq!(config.api_bind.port(), 8080);
        assert_eq!(
            with("DATABASE_URL", "").err().unwrap(),
            ConfigError::Missing("DATABASE_URL")
        );
    }

    #[test]
    fn values_are_parsed_and_trimmed() {
        let config = Config::from_vars(base().into_iter().chain([
            ("API_BIND", " 127.0.0.1:0 ".to_owned()),
            ("RELAY_BATCH_SIZE", "10000".to_owned()),
            ("RUN_MIGRATIONS", "FALSE".to_owned()),
            ("AUTH_JWT_ISSUER", "issuer".to_owned()),
            ("AUTH_JWT_AUDIENCE", "audience".to_owned()),
            ("NSQD_TCP_ADDRESS", "nsqd:4150".to_owned()),
            ("LOG_FORMAT", "Text".to_owned()),
        ]))
        .unwrap();
        assert_eq!(config.api_bind.port(), 0);
        assert_eq!(config.relay.batch_size, 10_000);
        assert!(!config.database.run_migrations);
        assert_eq!(config.auth.issuer.as_deref(), Some("issuer"));
        assert_eq!(config.auth.audience.as_deref(), Some("audience"));
        assert_eq!(config.relay.nsqd_tcp_address, "nsqd:4150");
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn receipts_come_through_nsqlookupd_when_it_is_configured() {
        let config = with(
            "NSQLOOKUPD_HTTP_ADDRESSES",
            " lookupd-1:4161, lookupd-2:4161 ",
        )
        .unwrap();
        assert!(matches!(
            &config.relay.receipts.discovery,
            nsq::Discovery::Lookupd { http_addresses, .. }
                if http_addresses == &["lookupd-1:4161", "lookupd-2:4161"]
        ));
    }

    #[test]
    fn a_republish_interval_of_zero_turns_receipts_off_and_retention_may_be_zero() {
        let config = Config::from_vars(base().into_iter().chain([
            ("RELAY_REPUBLISH_AFTER_SECS", "0".to_owned()),
            ("OUTBOX_RETENTION_HOURS", "0".to_owned()),
        ]))
        .unwrap();
        assert_eq!(config.relay.republish_after, None);
        assert_eq!(config.relay.retention, Duration::ZERO);
    }
}
