//! The `audit-consumer` binary: parses the command line and the environment,
//! then hands over to the library.

use std::process::ExitCode;
use std::time::Duration;

use audit_consumer::dead_letters::{self, Selection};
use audit_consumer::store::DatabaseError;
use audit_consumer::{startup, Application, Config, MisconfiguredDatabase};
use slog::{error, info, o, Logger};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "\
Reads audit events from NSQ and stores each one exactly once in Postgres.

Usage: audit-consumer [COMMAND]

Commands:
  serve                                 Consume and store events until SIGINT/SIGTERM (the default)
  migrate                               Apply the audit database migrations, then exit
  dead-letters list [--limit N]         Show the newest N dead letters (default 50)
  dead-letters replay <ID>... | --all   Publish dead letters to NSQ_TOPIC again, mark them replayed
  healthcheck                           Exit 0 if GET /healthz on CONSUMER_BIND's port answers 200
                                        within 2 s, else 1 (the container's HEALTHCHECK)
  --help                                Print this help

Configuration is read from the environment; DATABASE_URL is required.
`dead-letters replay` publishes to NSQD_TCP_ADDRESS. The other variables
and their defaults are listed in the README.";

/// Exit status of a configuration problem: a bad variable, or a database
/// that answers but cannot serve the consumer.
const EXIT_CONFIGURATION: u8 = 2;

/// A last resort: if stopping takes longer than this after SIGTERM, the
/// process exits anyway. The writer gives up on its batch after
/// `batch::SHUTDOWN_GRACE` and closing nsqd connections takes at most their
/// close timeout, so this is only reached if something hangs; nsqd then
/// redelivers whatever was not answered.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

const DEFAULT_LIST_LIMIT: i64 = 50;
const MAX_LIST_LIMIT: i64 = 10_000;

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve,
    Migrate,
    Help,
    Healthcheck,
    ListDeadLetters { limit: i64 },
    ReplayDeadLetters(Selection),
}

fn parse_command(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let args: Vec<String> = args.collect();
    // `--help` anywhere (`dead-letters --help`, `dead-letters list -h`) asks
    // for the help, never for an error.
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        return Ok(Command::Help);
    }
    let mut args = args.into_iter();
    let command = match args.next().as_deref() {
        None | Some("serve") => Command::Serve,
        Some("migrate") => Command::Migrate,
        Some("--help" | "-h" | "help") => Command::Help,
        Some("healthcheck") => Command::Healthcheck,
        Some("dead-letters") => return parse_dead_letters(args),
        Some(other) => return Err(format!("unknown command {other:?}")),
    };
    match args.next() {
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
        None => Ok(command),
    }
}

fn parse_dead_letters(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    match args.next().as_deref() {
        Some("list") => {
            let mut limit = DEFAULT_LIST_LIMIT;
            while let Some(arg) = args.next() {
                let value = match arg.strip_prefix("--limit=") {
                    Some(value) => value.to_owned(),
                    None if arg == "--limit" => args
                        .next()
                        .ok_or_else(|| "--limit needs a number".to_owned())?,
                    None => return Err(format!("unexpected argument {arg:?}")),
                };
                limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "--limit {value:?} is not a whole number from 1 to {MAX_LIST_LIMIT}"
                        )
                    })?;
            }
            Ok(Command::ListDeadLetters { limit })
        }
        Some("replay") => {
            let mut all = false;
            let mut ids = Vec::new();
            for arg in args {
                if arg == "--all" {
                    all = true;
                    continue;
                }
                let id = arg
                    .parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| format!("{arg:?} is not a dead letter id (see `list`)"))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            match (all, ids.is_empty()) {
                (true, true) => Ok(Command::ReplayDeadLetters(Selection::All)),
                (false, false) => Ok(Command::ReplayDeadLetters(Selection::Ids(ids))),
                (true, false) => Err("give either ids or --all, not both".to_owned()),
                (false, true) => Err("replay needs ids or --all".to_owned()),
            }
        }
        Some(other) => Err(format!("unknown dead-letters command {other:?}")),
        None => Err("dead-letters needs a command: list or replay".to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse_command(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("audit-consumer: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Command::Help = command {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Command::Healthcheck = command {
        return healthcheck::run();
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("audit-consumer: {e}");
            return ExitCode::from(EXIT_CONFIGURATION);
        }
    };
    let (logger, _guard) = if command == Command::Serve {
        telemetry::init("audit-consumer", config.log_level, config.log_format)
    } else {
        telemetry::init_for_command("audit-consumer", config.log_level, config.log_format)
    };

    match command {
        Command::Serve => serve(config, &logger).await,
        Command::Migrate => migrate(&config, &logger).await,
        Command::ListDeadLetters { limit } => list_dead_letters(&config, limit).await,
        Command::ReplayDeadLetters(selection) => {
            replay_dead_letters(&config, &selection, &logger).await
        }
        Command::Help | Command::Healthcheck => ExitCode::SUCCESS,
    }
}

async fn serve(config: Config, logger: &Logger) -> ExitCode {
    let shutdown = telemetry::shutdown_signal(logger);
    // Start-up waits for an unreachable database; a SIGTERM meanwhile ends it.
    let built = tokio::select! {
        built = Application::build(config, logger.new(o!())) => built,
        _ = shutdown.cancelled() => {
            info!(logger, "stopped before start-up finished");
            return ExitCode::SUCCESS;
        }
    };
    let app = match built {
        Ok(app) => app,
        Err(e) => {
            error!(logger, "audit-consumer cannot start"; "error" => format!("{e:#}"));
            return if e.downcast_ref::<MisconfiguredDatabase>().is_some() {
                ExitCode::from(EXIT_CONFIGURATION)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let result = tokio::select! {
        result = app.run_until_stopped(shutdown.clone()) => result,
        () = deadline_after(&shutdown, SHUTDOWN_LIMIT) => Err(anyhow::anyhow!(
            "stopping took longer than {SHUTDOWN_LIMIT:?}; exiting anyway \
             (nsqd redelivers what was not answered)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(logger, "audit-consumer failed"; "error" => format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Completes `limit` after `token` is cancelled.
async fn deadline_after(token: &CancellationToken, limit: Duration) {
    token.cancelled().await;
    tokio::time::sleep(limit).await;
}

async fn migrate(config: &Config, logger: &Logger) -> ExitCode {
    let result = match startup::connection_pool(config) {
        Ok(pool) => {
            let result = startup::migrate(&pool, logger).await;
            pool.close().await;
            result
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(logger, "audit-consumer failed"; "error" => format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn list_dead_letters(config: &Config, limit: i64) -> ExitCode {
    let listed = match startup::connection_pool(config) {
        Ok(pool) => dead_letters::list(&pool, limit)
            .await
            .map_err(|e| DatabaseError::from_sqlx(&e).message),
        Err(e) => Err(format!("{e:#}")),
    };
    match listed {
        Ok(rows) => {
            print!("{}", dead_letters::format_table(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit-consumer: could not list the dead letters: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn replay_dead_letters(config: &Config, selection: &Selection, logger: &Logger) -> ExitCode {
    let pool = match startup::connection_pool(config) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("audit-consumer: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let producer = nsq::Producer::new(
        config.nsqd_tcp_address.clone(),
        nsq::ProducerConfig::default(),
        logger.new(o!("component" => "replay")),
    );
    let report =
        match dead_letters::replay(&pool, &producer, &config.nsq_topic, selection, logger).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!(
                    "audit-consumer: could not replay the dead letters: {}",
                    DatabaseError::from_sqlx(&e).message
                );
                return ExitCode::FAILURE;
            }
        };
    for id in &report.not_found {
        println!("dead letter {id}: not found");
    }
    for (id, at) in &report.already_replayed {
        println!(
            "dead letter {id}: already replayed at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    for id in &report.skipped {
        println!("dead letter {id}: skipped, another replay is publishing it");
    }
    for (id, reason) in &report.failed {
        println!("dead letter {id}: not replayed: {reason}");
    }
    println!(
        "replayed {} dead letter(s) to topic {} on nsqd {}",
        report.replayed.len(),
        config.nsq_topic,
        config.nsqd_tcp_address
    );
    pool.close().await;
    if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `healthcheck`: what the image's HEALTHCHECK runs, since slim images have
/// no curl. Reads only CONSUMER_BIND, so it works whatever else the
/// environment holds, and prints the reason for a failure (Docker keeps it
/// in `docker inspect`).
mod healthcheck {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    /// CONSUMER_BIND's default (config.rs).
    const DEFAULT_BIND: &str = "0.0.0.0:8081";
    /// How long the whole exchange may take.
    const TIMEOUT: Duration = Duration::from_secs(2);

    pub fn run() -> ExitCode {
        let bind = std::env::var("CONSUMER_BIND")
            .ok()
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BIND.to_owned());
        match probe(&bind, TIMEOUT) {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("audit-consumer healthcheck: {reason}");
                ExitCode::FAILURE
            }
        }
    }

    /// Sends `GET /healthz` to the service listening on `bind` and succeeds
    /// on a 200 answer within `timeout`. A wildcard bind address (0.0.0.0,
    /// ::) is reached through the loopback address of its family.
    pub fn probe(bind: &str, timeout: Duration) -> Result<(), String> {
        let bind: SocketAddr = bind
            .trim()
            .parse()
            .map_err(|_| format!("CONSUMER_BIND {bind:?} is not an address like 0.0.0.0:8081"))?;
        if bind.port() == 0 {
            return Err("CONSUMER_BIND has port 0: there is no fixed port to ask".into());
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

        let mut stream = TcpStream::connect_timeout(&target, timeout)
            .map_err(|e| failed("cannot connect to", e))?;
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

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Serves one connection on a free loopback port with `response`.
        fn serve_once(response: &'static str) -> (u16, std::thread::JoinHandle<()>) {
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
                assert!(request.starts_with(b"GET /healthz HTTP/1.1\r\n"));
                stream.write_all(response.as_bytes()).unwrap();
            });
            (port, server)
        }

        #[test]
        fn healthcheck_passes_only_when_healthz_answers_200() {
            let (port, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(probe(&format!("0.0.0.0:{port}"), TIMEOUT), Ok(()));
            server.join().unwrap();

            let (port, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
            assert!(probe(&format!("127.0.0.1:{port}"), TIMEOUT).is_err());
            server.join().unwrap();
        }

        #[test]
        fn healthcheck_fails_when_nothing_listens_or_the_address_is_unusable() {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            };
            assert!(probe(&format!("0.0.0.0:{port}"), TIMEOUT).is_err());
            for bind in ["localhost:8081", "0.0.0.0:0"] {
                assert!(probe(bind, TIMEOUT).is_err(), "{bind}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_command(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn help_anywhere_asks_for_the_help() {
        for args in [
            &["--help"][..],
            &["help"],
            &["dead-letters", "--help"],
            &["dead-letters", "list", "-h"],
            &["dead-letters", "replay", "--all", "--help"],
        ] {
            assert_eq!(parse(args), Ok(Command::Help), "{args:?}");
        }
    }

    #[test]
    fn serve_is_the_default_command() {
        assert_eq!(parse(&[]), Ok(Command::Serve));
        assert_eq!(parse(&["serve"]), Ok(Command::Serve));
        assert_eq!(parse(&["migrate"]), Ok(Command::Migrate));
        assert!(parse(&["migrate", "now"]).is_err());
    }

    #[test]
    fn dead_letters_list_takes_an_optional_limit() {
        assert_eq!(
            parse(&["dead-letters", "list"]),
            Ok(Command::ListDeadLetters { limit: 50 })
        );
        assert_eq!(
            parse(&["dead-letters", "list", "--limit", "5"]),
            Ok(Command::ListDeadLetters { limit: 5 })
        );
        assert_eq!(
            parse(&["dead-letters", "list", "--limit=7"]),
            Ok(Command::ListDeadLetters { limit: 7 })
        );
        for bad in [
            &["dead-letters", "list", "--limit"][..],
            &["dead-letters", "list", "--limit", "0"],
            &["dead-letters", "list", "--limit", "many"],
            &["dead-letters", "list", "--all"],
            &["dead-letters"],
            &["dead-letters", "purge"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dead_letters_replay_takes_ids_or_all() {
        assert_eq!(
            parse(&["dead-letters", "replay", "3", "1", "3"]),
            Ok(Command::ReplayDeadLetters(Selection::Ids(vec![3, 1])))
        );
        assert_eq!(
            parse(&["dead-letters", "replay", "--all"]),
            Ok(Command::ReplayDeadLetters(Selection::All))
        );
        for bad in [
            &["dead-letters", "replay"][..],
            &["dead-letters", "replay", "--all", "1"],
            &["dead-letters", "replay", "0"],
            &["dead-letters", "replay", "-1"],
            &["dead-letters", "replay", "one"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
