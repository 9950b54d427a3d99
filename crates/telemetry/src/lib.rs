//! Logging, tracing and shutdown, shared by both services. Nothing else
//! lives here.
//!
//! Invariant: a service builds its root logger once, in `main`, with
//! [`init`], and passes it down explicitly; the `log` records of dependencies
//! (sqlx, actix) are bridged into the same logger so every line has one
//! format, and every line written while a span is current carries its
//! `trace_id` and `span_id`. [`trace`] is the OpenTelemetry side: the
//! `OTEL_*` settings, the OTLP exporter, W3C `traceparent`.
//! [`shutdown_signal`] turns SIGINT/SIGTERM into a cancellation token.

use std::str::FromStr;

use serde::Deserialize;
use slog::{o, Drain, Level, Logger};
use tokio_util::sync::CancellationToken;

pub mod trace;

/// The OpenTelemetry API the services make spans with, at the version
/// [`trace`] exports.
pub use opentelemetry;

/// `LOG_LEVEL`: trace, debug, info, warn or error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LogLevel(pub Level);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(Level::Info)
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trace" => Ok(LogLevel(Level::Trace)),
            "debug" => Ok(LogLevel(Level::Debug)),
            "info" => Ok(LogLevel(Level::Info)),
            "warn" | "warning" => Ok(LogLevel(Level::Warning)),
            "error" => Ok(LogLevel(Level::Error)),
            other => Err(format!(
                "unknown log level {other:?} (expected trace, debug, info, warn or error)"
            )),
        }
    }
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// `LOG_FORMAT`: `json` (one object per line, for machines) or `text`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Keeps the asynchronous drain alive; dropping it flushes pending lines.
/// Hold it until `main` returns.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    _scope: slog_scope::GlobalLoggerGuard,
}

/// Builds the root logger of a service and routes `log` records into it.
pub fn init(service: &'static str, level: LogLevel, format: LogFormat) -> (Logger, LogGuard) {
    install(build(service, level, format, std::io::stdout), level)
}

/// [`init`] for a one-off command (a migration, a dead-letter replay): the
/// same lines, on stderr, so that stdout carries only what the command
/// prints for its user.
pub fn init_for_command(
    service: &'static str,
    level: LogLevel,
    format: LogFormat,
) -> (Logger, LogGuard) {
    install(build(service, level, format, std::io::stderr), level)
}

fn install(logger: Logger, level: LogLevel) -> (Logger, LogGuard) {
    let scope = slog_scope::set_global_logger(logger.clone());
    // Fails only when a `log` logger is already installed, in which case the
    // records already go somewhere; not a reason to stop the service.
    let _ = slog_stdlog::init_with_level(to_log_level(level.0));
    (logger, LogGuard { _scope: scope })
}

fn build<W>(service: &'static str, level: LogLevel, format: LogFormat, out: fn() -> W) -> Logger
where
    W: std::io::Write + Send + 'static,
{
    let drain = match format {
        LogFormat::Json => slog_json::Json::new(out())
            .add_key_value(o!(
                "ts" => slog::PushFnValue(|_, ser| ser.emit(now_rfc3339())),
                "level" => slog::FnValue(|record| record.level().as_short_str()),
                "msg" => slog::PushFnValue(|record, ser| ser.emit(record.msg())),
            ))
            .build()
            .fuse(),
        LogFormat::Text => {
            let decorator = slog_term::PlainDecorator::new(out());
            let text = slog_term::FullFormat::new(decorator).build().fuse();
            return finish(service, level, text);
        }
    };
    finish(service, level, drain)
}

fn finish<D>(service: &'static str, level: LogLevel, drain: D) -> Logger
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    // A full queue drops lines (and counts them) rather than blocking a
    // request on a slow stdout.
    let drain = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    // In front of the asynchronous drain, so the ids are read on the
    // thread that logs (see `trace::SpanIds`).
    let drain = trace::SpanIds(drain).filter_level(level.0).fuse();
    Logger::root(drain, o!("service" => service))
}

/// RFC 3339 UTC time with microseconds, e.g. `2026-12-03T18:45:12.123456Z`.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn to_log_level(level: Level) -> log::Level {
    match level {
        Level::Critical | Level::Error => log::Level::Error,
        Level::Warning => log::Level::Warn,
        Level::Info => log::Level::Info,
        Level::Debug => log::Level::Debug,
        Level::Trace => log::Level::Trace,
    }
}

/// A logger for tests: silent, unless `TEST_LOG` is set, then text on stderr.
pub fn test_logger() -> Logger {
    if std::env::var_os("TEST_LOG").is_some() {
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        Logger::root(trace::SpanIds(drain).fuse(), o!())
    } else {
        Logger::root(slog::Discard, o!())
    }
}

/// A token cancelled on the first SIGINT or SIGTERM. A second signal is left
/// to its default action, so an operator can always force an exit.
pub fn shutdown_signal(logger: &Logger) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let logger = logger.clone();
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        slog::info!(logger, "shutdown requested"; "signal" => name);
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can still stop on Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_parse_case_insensitively_and_reject_junk() {
        assert_eq!("INFO".parse::<LogLevel>().unwrap().0, Level::Info);
        assert_eq!("warn".parse::<LogLevel>().unwrap().0, Level::Warning);
        let err = "loud".parse::<LogLevel>().unwrap_err();
        assert!(err.contains("\"loud\""), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), "2026-12-03T18:45:12.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
    }
}
