//! `accounts-api [serve]` runs the service; `migrate` applies migrations;
//! `token <actor>` prints a development token; `healthcheck` asks a running
//! service for its health (the container's HEALTHCHECK). See `--help`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use accounts_api::config::{self, AuthConfig, DatabaseConfig};
use accounts_api::startup::{self, MisconfiguredDatabase};
use accounts_api::{Application, Config};
use audit_event::ActorType;

const USAGE: &str = "\
accounts-api: the accounts HTTP API and its audit outbox relay.

Usage:
  accounts-api [serve]                          run the service (default)
  accounts-api migrate                          apply database migrations and exit
  accounts-api token <actor> [--service] [--ttl <seconds>]
                                                print an HS256 token for AUTH_JWT_SECRET
  accounts-api healthcheck                      exit 0 if GET /healthz on API_BIND's port
                                                answers 200 within 2 s, else 1
  accounts-api --help                           show this help

Configuration is read from the environment (DATABASE_URL, AUTH_JWT_SECRET,
API_BIND, ...); see the README for the full list. `token` needs only
AUTH_JWT_SECRET (and AUTH_JWT_ISSUER / AUTH_JWT_AUDIENCE when they are set).
";

/// Exit code for bad usage or configuration (a variable, or a database that
/// answers but cannot serve the API): retrying as it is cannot help.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve,
    Migrate,
    Token {
        actor: String,
        actor_type: ActorType,
        ttl: Duration,
    },
    Healthcheck,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [help, ..] if help == "help" => Ok(Command::Help),
        // `--help` anywhere (`token --help`) asks for the help, never for an error.
        _ if args.iter().any(|arg| arg == "--help" || arg == "-h") => Ok(Command::Help),
        [serve] if serve == "serve" => Ok(Command::Serve),
        [migrate] if migrate == "migrate" => Ok(Command::Migrate),
        [check] if check == "healthcheck" => Ok(Command::Healthcheck),
        [token, rest @ ..] if token == "token" => parse_token(rest),
        [other, ..] => Err(format!("unknown command or extra arguments at {other:?}")),
    }
}

fn parse_token(args: &[String]) -> Result<Command, String> {
    let mut actor = None;
    let mut actor_type = ActorType::User;
    let mut ttl = Duration::from_secs(3600);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--service" => actor_type = ActorType::Service,
            "--ttl" => {
                let secs = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&s| s > 0)
                    .ok_or("--ttl needs a positive number of seconds")?;
                ttl = Duration::from_secs(secs);
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag:?}")),
            name if actor.is_none() => actor = Some(name.to_owned()),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    let actor = actor.ok_or("token needs an actor, e.g. `token alice`")?;
    if actor.trim().is_empty() || actor.chars().count() > 255 || actor.chars().any(char::is_control)
    {
        return Err("the actor must be 1-255 characters without control characters".into());
    }
    Ok(Command::Token {
        actor,
        actor_type,
        ttl,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("accounts-api: {message}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Token {
            actor,
            actor_type,
            ttl,
        } => token(&actor, actor_type, ttl),
        Command::Healthcheck => healthcheck(),
        Command::Migrate => with_runtime(migrate),
        Command::Serve => with_runtime(serve),
    }
}

fn token(actor: &str, actor_type: ActorType, ttl: Duration) -> ExitCode {
    let auth = match AuthConfig::from_env() {
        Ok(auth) => auth,
        Err(error) => return config_error(&error),
    };
    println!(
        "{}",
        accounts_api::issue_token(
            &auth.secret,
            actor,
            actor_type,
            ttl,
            auth.issuer.as_deref(),
            auth.audience.as_deref(),
        )
    );
    ExitCode::SUCCESS
}

fn with_runtime<F, Fut>(run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("accounts-api: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    let (logger, _guard) = telemetry::init("accounts-api", config.log_level, config.log_format);
    let shutdown = telemetry::shutdown_signal(&logger);
    // Start-up waits for an unreachable database; a SIGTERM meanwhile ends it.
    let built = tokio::select! {
        built = Application::build(config, logger.clone()) => built,
        () = shutdown.cancelled() => {
            slog::info!(logger, "stopped before start-up finished");
            return ExitCode::SUCCESS;
        }
    };
    let app = match built {
        Ok(app) => app,
        Err(error) => {
            slog::crit!(logger, "accounts-api cannot start"; "error" => format!("{error:#}"));
            return if error.downcast_ref::<MisconfiguredDatabase>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            slog::crit!(logger, "accounts-api failed"; "error" => format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn migrate() -> ExitCode {
    let (database, (level, format)) =
        match DatabaseConfig::from_env().and_then(|d| Ok((d, config::log_settings_from_env()?))) {
            Ok(settings) => settings,
            Err(error) => return config_error(&error),
        };
    let (logger, _guard) = telemetry::init_for_command("accounts-api", level, format);
    let pool = startup::connect_pool(&database);
    let result = startup::migrate(&pool).await;
    pool.close().await;
    match result {
        Ok(()) => {
            slog::info!(logger, "migrations applied");
            ExitCode::SUCCESS
        }
        Err(error) => {
            slog::crit!(logger, "migrations failed"; "error" => format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

/// How long `healthcheck` waits for the whole exchange.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `healthcheck`: what the image's HEALTHCHECK runs, since slim images have
/// no curl. Reads only API_BIND, so it works whatever else the environment
/// holds, and prints the reason for a failure (Docker keeps it in
/// `docker inspect`).
fn healthcheck() -> ExitCode {
    let bind = std::env::var("API_BIND")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| config::defaults::API_BIND.to_owned());
    match probe_healthz(&bind, HEALTHCHECK_TIMEOUT) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("accounts-api healthcheck: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `GET /healthz` to the service listening on `bind` and succeeds on a
/// 200 answer within `timeout`. A wildcard bind address (0.0.0.0, ::) is
/// reached through the loopback address of its family.
fn probe_healthz(bind: &str, timeout: Duration) -> Result<(), String> {
    let bind: SocketAddr = bind
        .trim()
        .parse()
        .map_err(|_| format!("API_BIND {bind:?} is not an address like 0.0.0.0:8080"))?;
    if bind.port() == 0 {
        return Err("API_BIND has port 0: there is no fixed port to ask".into());
    }
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(ip, bind.port());
    let deadline = Instant::now() + timeout;
    // Socket timeouts must not be zero; past the deadline, the next check fails.
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let failed = |what: &str, e: std::io::Error| format!("{what} {target}: {e}");

    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| failed("cannot connect to", e))?;
    stream
        .set_write_timeout(Some(remaining()))
        .and_then(|()| {
            stream.write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
        })
        .map_err(|e| failed("cannot send the request to", e))?;

    // Only the status line matters; it is short, so stop reading at its end.
    let mut head = Vec::new();
    let mut buffer = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        if Instant::now() >= deadline {
            return Err(format!("no answer from {target} within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(remaining()))
            .map_err(|e| failed("cannot read from", e))?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(e) => return Err(failed("no answer from", e)),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or("").trim();
    let mut words = status_line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ => Err(format!("GET /healthz on {target} answered {status_line:?}")),
    }
}

fn config_error(error: &config::ConfigError) -> ExitCode {
    eprintln!("accounts-api: {error}");
    ExitCode::from(EXIT_USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_args(&args(&[])), Ok(Command::Serve));
        assert_eq!(parse_args(&args(&["serve"])), Ok(Command::Serve));
        assert_eq!(parse_args(&args(&["migrate"])), Ok(Command::Migrate));
        assert_eq!(parse_args(&args(&["--help"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["token", "--help"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["migrate", "-h"])), Ok(Command::Help));
        assert_eq!(
            parse_args(&args(&["healthcheck"])),
            Ok(Command::Healthcheck)
        );
        assert_eq!(
            parse_args(&args(&["token", "svc", "--service", "--ttl", "60"])),
            Ok(Command::Token {
                actor: "svc".into(),
                actor_type: ActorType::Service,
                ttl: Duration::from_secs(60)
            })
        );
        assert_eq!(
            parse_args(&args(&["token", "alice"])),
            Ok(Command::Token {
                actor: "alice".into(),
                actor_type: ActorType::User,
                ttl: Duration::from_secs(3600)
            })
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["bogus"][..],
            &["serve", "extra"],
            &["healthcheck", "extra"],
            &["token"],
            &["token", "a", "b"],
            &["token", "a", "--ttl"],
            &["token", "a", "--ttl", "0"],
            &["token", "a", "--nope"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    /// A one-connection HTTP server on a free loopback port: it reads the
    /// request, sends `response`, and hands the request line back.
    fn serve_once(response: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buffer).unwrap();
                assert!(n > 0, "the probe closed before its request ended");
                request.extend_from_slice(&buffer[..n]);
            }
            stream.write_all(response.as_bytes()).unwrap();
            let request = String::from_utf8(request).unwrap();
            request.lines().next().unwrap().to_owned()
        });
        (port, server)
    }

    #[test]
    fn healthcheck_passes_when_healthz_answers_200_on_the_bind_port() {
        let (port, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            probe_healthz(&format!("0.0.0.0:{port}"), Duration::from_secs(2)),
            Ok(())
        );
        assert_eq!(server.join().unwrap(), "GET /healthz HTTP/1.1");
    }

    #[test]
    fn healthcheck_fails_on_any_other_status() {
        let (port, server) =
            serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let err = probe_healthz(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn healthcheck_fails_when_nothing_listens() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = probe_healthz(&format!("0.0.0.0:{port}"), Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn healthcheck_gives_up_at_its_timeout_when_the_service_never_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let result = probe_healthz(&format!("127.0.0.1:{port}"), Duration::from_millis(300));
        assert!(result.is_err(), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(listener);
    }

    #[test]
    fn healthcheck_refuses_a_bind_address_it_cannot_probe() {
        for bind in ["localhost:8080", "0.0.0.0", "0.0.0.0:0"] {
            assert!(
                probe_healthz(bind, Duration::from_millis(100)).is_err(),
                "{bind}"
            );
        }
    }
}
