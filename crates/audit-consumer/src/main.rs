//! The `audit-consumer` binary: parses the command line and the environment,
//! then hands over to the library.

use std::process::ExitCode;

use audit_consumer::{startup, Application, Config};
use slog::{error, o};

const USAGE: &str = "\
Reads audit events from NSQ and stores each one exactly once in Postgres.

Usage: audit-consumer [COMMAND]

Commands:
  serve     Consume and store events until SIGINT/SIGTERM (the default)
  migrate   Apply the audit database migrations, then exit
  --help    Print this help

Configuration is read from the environment; DATABASE_URL is required.
The other variables and their defaults are listed in the README.";

enum Command {
    Serve,
    Migrate,
    Help,
}

fn parse_command(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let command = match args.next().as_deref() {
        None | Some("serve") => Command::Serve,
        Some("migrate") => Command::Migrate,
        Some("--help" | "-h" | "help") => Command::Help,
        Some(other) => return Err(format!("unknown command {other:?}")),
    };
    match args.next() {
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
        None => Ok(command),
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
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("audit-consumer: {e}");
            return ExitCode::from(2);
        }
    };
    let (logger, _guard) = telemetry::init("audit-consumer", config.log_level, config.log_format);

    let result = match command {
        Command::Migrate => match startup::connection_pool(&config) {
            Ok(pool) => {
                let result = startup::migrate(&pool, &logger).await;
                pool.close().await;
                result
            }
            Err(e) => Err(e),
        },
        Command::Serve => {
            let shutdown = telemetry::shutdown_signal(&logger);
            match Application::build(config, logger.new(o!())).await {
                Ok(app) => app.run_until_stopped(shutdown).await,
                Err(e) => Err(e),
            }
        }
        Command::Help => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(logger, "audit-consumer failed"; "error" => format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
