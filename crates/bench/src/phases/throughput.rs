//! Phase 1: API throughput against the database limit.
//!
//! pgbench runs the API's own transaction, statement for statement (see
//! [`crate::pgbench::script`]: lock the account, update it, append the
//! outbox row) at the API's pool size: that is what Postgres allows for it
//! on this machine. Then the real API, as deployed (relay on,
//! publishing to nsqd), takes a closed-loop HTTP load of renames at the same
//! concurrency. The ratio is accepted requests per second over pgbench's
//! transactions per second. The same load against the API with its relay
//! off separates the cost of the relay from the cost of the request path.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::load::{self, Target};
use crate::pgbench;
use crate::procfs::{CpuMeter, CpuSample, CpuUsage, Role};
use crate::report::{number, Phase, Row};
use crate::services::{self, Schema, API_POOL_SIZE};
use crate::{events, Bench, Findings};

pub const TITLE: &str = "1. API throughput vs the database limit";

pub async fn run(bench: &Bench, findings: &mut Findings) -> anyhow::Result<Phase> {
    let mut phase = Phase::new(TITLE);
    let sizes = &bench.sizes;

    // The limit: pgbench with the API's transaction on the same schema.
    let database = bench
        .cluster
        .database("bench_p1_pgbench", Schema::Accounts)
        .await?;
    super::preload_accounts(&database, sizes.accounts).await?;
    let payload = events::events(1, sizes.accounts, 1)[0].to_json();
    let limit = pgbench::Run {
        bin_dir: &bench.pg_bin_dir,
        work_dir: &bench.work_dir,
        port: bench.cluster.postgres.port(),
        database: &database.name,
        clients: API_POOL_SIZE,
        duration: sizes.pgbench,
        accounts: sizes.accounts,
        payload: &payload,
        postmaster: bench.postmaster,
    }
    .execute()
    .await
    .context("pgbench")?;
    bench.cluster.drop_database(database).await?;
    if limit.failed > 0 {
        bail!("pgbench had {} failed transactions", limit.failed);
    }
    let tps = phase.figure("pgbench_tps", limit.tps, "transactions/s");
    phase.cpu.insert("pgbench".into(), limit.cpu.clone());

    let deployed = api_under_load(bench, true, "bench_p1_api").await?;
    let relay_off = api_under_load(bench, false, "bench_p1_api_relay_off").await?;

    let rps = phase.figure(
        "api_accepted_per_second",
        deployed.load.accepted_per_second(),
        "requests/s",
    );
    phase.figure(
        "api_failed_requests",
        deployed.load.failed as f64,
        "requests",
    );
    let rps_off = phase.figure(
        "api_relay_off_accepted_per_second",
        relay_off.load.accepted_per_second(),
        "requests/s",
    );
    phase.figure(
        "api_relay_off_failed_requests",
        relay_off.load.failed as f64,
        "requests",
    );
    phase.figure("concurrency", f64::from(API_POOL_SIZE), "connections");
    let ratio = phase.ratio("api_over_pgbench", rps, tps);
    let ratio_off = phase.ratio("api_relay_off_over_pgbench", rps_off, tps);
    phase.cpu.insert("api".into(), deployed.cpu.clone());
    phase
        .cpu
        .insert("api_relay_off".into(), relay_off.cpu.clone());

    phase.row(Row {
        measure: format!("pgbench, the API's transaction, {API_POOL_SIZE} clients"),
        value: format!("{} tx/s", number(tps)),
        cpu: limit.cpu.summary(),
        ..Row::default()
    });
    phase.row(Row {
        measure: format!(
            "API accepted requests, closed loop, {API_POOL_SIZE} clients (relay on, as deployed)"
        ),
        value: format!("{} req/s", number(rps)),
        baseline: format!("pgbench {} tx/s", number(tps)),
        ratio: format!("{ratio:.2}"),
        cpu: deployed.cpu.summary(),
    });
    phase.row(Row {
        measure: "… the same with the relay off".into(),
        value: format!("{} req/s", number(rps_off)),
        baseline: format!("pgbench {} tx/s", number(tps)),
        ratio: format!("{ratio_off:.2}"),
        cpu: relay_off.cpu.summary(),
    });

    findings.api_max_rps = Some(rps);
    findings.peak_rss.insert(
        "accounts_api_during_1".into(),
        (deployed.api_peak_rss, "accounts-api during phase 1".into()),
    );
    findings.peak_rss.insert(
        "nsqd_during_1".into(),
        (deployed.nsqd_peak_rss, "nsqd during phase 1".into()),
    );
    Ok(phase)
}

struct UnderLoad {
    load: load::ClosedLoop,
    cpu: CpuUsage,
    api_peak_rss: u64,
    nsqd_peak_rss: u64,
}

/// A fresh API (and database and nsqd) under closed-loop load at the pool
/// size.
async fn api_under_load(bench: &Bench, relay: bool, db_name: &str) -> anyhow::Result<UnderLoad> {
    let sizes = &bench.sizes;
    let database = bench.cluster.database(db_name, Schema::Accounts).await?;
    super::preload_accounts(&database, sizes.accounts).await?;
    let nsqd = services::nsqd().await?;
    let name = if relay { "api-p1" } else { "api-p1-relay-off" };
    let mut api = bench.binaries.api(
        name,
        &database,
        &nsqd,
        &[("RELAY_ENABLED", if relay { "true" } else { "false" })],
    )?;
    api.wait_ready(&bench.http).await?;

    let meter = CpuMeter::new()
        .watch("postgres", Role::WithChildren(bench.postmaster))
        .watch("api", Role::Process(api.pid()))
        .watch("nsqd", Role::Process(nsqd.pid().unwrap_or(0)))
        .watch("load", Role::Process(std::process::id()));
    let target = Target::new(&api.base, sizes.accounts)?;
    let clients = API_POOL_SIZE as usize;
    let client = load::client(clients)?;
    let mut samples: Vec<anyhow::Result<CpuSample>> = Vec::new();
    let outcome = load::closed_loop(&client, &target, clients, sizes.warmup, sizes.load, || {
        samples.push(meter.sample())
    })
    .await?;
    let cpu = match (samples.pop(), samples.pop()) {
        (Some(end), Some(start)) => CpuUsage::between(&start?, &end?),
        _ => bail!("the load did not sample the CPU"),
    };

    if relay {
        if let Some(dir) = &bench.options.perf_dir {
            profile(&client, &target, clients, sizes.load, dir).await?;
        }
    }
    api.ensure_running()?;
    if outcome.accepted == 0 {
        bail!("the API accepted no request: {}", api.log_tail());
    }
    let api_peak_rss = api.peak_rss_bytes()?;
    let nsqd_peak_rss = crate::procfs::peak_rss_bytes(nsqd.pid().unwrap_or(0))?;
    api.stop().await?;
    drop(nsqd);
    bench.cluster.drop_database(database).await?;
    Ok(UnderLoad {
        load: outcome,
        cpu,
        api_peak_rss,
        nsqd_peak_rss,
    })
}

/// A system-wide `perf record` (software clock: this VM has no hardware
/// counters) over another window of the same load, and its reports. The
/// figures above come from the unprofiled window.
async fn profile(
    client: &reqwest::Client,
    target: &Target,
    clients: usize,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = dir.join("phase1.perf.data");
    let seconds = duration.as_secs().max(1).to_string();
    let record = tokio::process::Command::new("perf")
        .args(["record", "-a", "-g", "-e", "cpu-clock", "-F", "499", "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting perf (install it with `apt-get install linux-perf`)")?;
    let load = load::closed_loop(client, target, clients, Duration::ZERO, duration, || {});
    let (recorded, _) = tokio::join!(record.wait_with_output(), load);
    let recorded = recorded.context("waiting for perf record")?;
    if !recorded.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&recorded.stderr).trim()
        );
    }
    for (name, sort) in [("by-process", "comm,dso"), ("by-symbol", "comm,dso,sym")] {
        let report = tokio::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.5",
            ])
            .args(["--sort", sort, "-g", "none", "-i"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running perf report")?;
        let path = dir.join(format!("phase1.{name}.txt"));
        std::fs::write(&path, &report.stdout)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("bench: perf profile of phase 1 in {}", dir.display());
    Ok(())
}
