//! `accounts-api [serve]` runs the service; `migrate` applies migrations;
//! `token <actor>` prints a development token. See `--help`.

use std::process::ExitCode;
use std::time::Duration;

use accounts_api::config::{self, AuthConfig, DatabaseConfig};
use accounts_api::{startup, Application, Config};
use audit_event::ActorType;

const USAGE: &str = "\
accounts-api: the accounts HTTP API and its audit outbox relay.

Usage:
  accounts-api [serve]                          run the service (default)
  accounts-api migrate                          apply database migrations and exit
  accounts-api token <actor> [--service] [--ttl <seconds>]
                                                print an HS256 token for AUTH_JWT_SECRET
  accounts-api --help                           show this help

Configuration is read from the environment (DATABASE_URL, AUTH_JWT_SECRET,
API_BIND, ...); see the README for the full list. `token` needs only
AUTH_JWT_SECRET (and AUTH_JWT_ISSUER / AUTH_JWT_AUDIENCE when they are set).
";

/// Exit code for bad usage or configuration: nothing was attempted.
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
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [flag, ..] if flag == "--help" || flag == "-h" || flag == "help" => Ok(Command::Help),
        [serve] if serve == "serve" => Ok(Command::Serve),
        [migrate] if migrate == "migrate" => Ok(Command::Migrate),
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
    let result = async {
        Application::build(config, logger.clone())
            .await?
            .run_until_stopped(shutdown)
            .await
    }
    .await;
    match result {
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
    let (logger, _guard) = telemetry::init("accounts-api", level, format);
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
            &["token"],
            &["token", "a", "b"],
            &["token", "a", "--ttl"],
            &["token", "a", "--ttl", "0"],
            &["token", "a", "--nope"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
