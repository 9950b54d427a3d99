//! `e2e`: sends a mix of requests to a running stack and checks the audit rows
//! they leave (see the library docs). `just verify 1000` runs it against
//! `just dev`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

const USAGE: &str = "\
usage: e2e [--requests N] [--concurrency N] [--seed N] [--timeout-secs N]
           [--api URL] [--audit-database-url URL]

Sends N requests (default 1000) to the accounts API and checks that the audit
database holds exactly one row per request that carried a valid token and none
for the others. Requests refused with 429 by the per-actor rate limit (over
about 2,000 requests at the default limits) are counted and must leave no row.
Defaults match `just dev`: --api http://127.0.0.1:8080 and
--audit-database-url postgres://postgres@127.0.0.1:15432/audit.
AUTH_JWT_SECRET (and AUTH_JWT_ISSUER / AUTH_JWT_AUDIENCE when the API checks
them) must match the API's.";

struct Args {
    requests: usize,
    concurrency: usize,
    seed: u64,
    timeout: Duration,
    api: String,
    audit_url: String,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        requests: 1000,
        concurrency: 16,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
        timeout: Duration::from_secs(120),
        api: "http://127.0.0.1:8080".into(),
        audit_url: "postgres://postgres@127.0.0.1:15432/audit".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag}: {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--requests" => args.requests = number()? as usize,
            "--concurrency" => args.concurrency = number()? as usize,
            "--seed" => args.seed = number()?,
            "--timeout-secs" => args.timeout = Duration::from_secs(number()?),
            "--api" => args.api = value.trim_end_matches('/').to_owned(),
            "--audit-database-url" => args.audit_url = value,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let target = e2e::Target {
        api_base: args.api,
        jwt_secret: std::env::var("AUTH_JWT_SECRET").context("AUTH_JWT_SECRET is not set")?,
        jwt_issuer: std::env::var("AUTH_JWT_ISSUER").ok(),
        jwt_audience: std::env::var("AUTH_JWT_AUDIENCE").ok(),
    };
    let audit = sqlx::PgPool::connect(&args.audit_url)
        .await
        .with_context(|| format!("connecting to the audit database at {}", args.audit_url))?;
    let run = format!("{:x}", args.seed);
    println!(
        "sending {} requests to {} (run {run}, seed {})",
        args.requests, target.api_base, args.seed
    );
    let expectations =
        e2e::drive(&target, &run, args.requests, args.concurrency, args.seed).await?;
    println!("all answered; waiting for the audit rows");
    let report = e2e::verify(&audit, &run, &expectations, args.timeout).await?;
    println!("ok: {report}");
    Ok(())
}
