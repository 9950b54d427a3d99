//! `just bench`: how close each part of the pipeline comes to what Postgres
//! and the machine allow, measured side by side in one run on one machine.
//!
//! Invariant: every figure is set against a baseline taken in the same run,
//! on the same Postgres cluster, at the same size (pool, batch): the machines
//! are shared and noisy, so the ratios are what the figures are for. Each
//! phase is bounded in time and records either its figures or why it failed.
//!
//! The services run as child processes of their built binaries, configured
//! by environment variables as deployed; Postgres and nsqd are private
//! instances (`testkit`). Every phase gets fresh databases and a fresh nsqd.
//!
//! # Layout
//!
//! - [`phases`]: the six phases, one module each; what each measures is
//!   documented there and in `docs/benchmarks.md`.
//! - [`services`]: the cluster, the per-phase databases and nsqd, the
//!   service processes.
//! - [`load`]: the HTTP load generator (closed and open loop).
//! - [`pgbench`]: the API's transaction under pgbench.
//! - [`events`]: events shaped like the API's, for preloading.
//! - [`procfs`]: peak RSS, CPU time and load average from `/proc`.
//! - [`report`]: the JSON and the docs table.

pub mod events;
pub mod load;
pub mod pgbench;
pub mod phases;
pub mod procfs;
pub mod report;
pub mod services;

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use crate::procfs::{load_average, Machine};
use crate::report::{Git, Phase, Report};
use crate::services::{Binaries, Cluster};

/// What to run and where the results go.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small sizes and short windows: checks that every phase completes
    /// and writes its figures (for `just test`), not for comparison.
    pub quick: bool,
    /// Where `<date>.json` goes.
    pub out_dir: PathBuf,
    /// The docs page whose table is rewritten.
    pub docs: PathBuf,
    /// Where `accounts-api` and `audit-consumer` are.
    pub bin_dir: PathBuf,
    /// Also record a system-wide `perf` profile of phase 1's load into
    /// this directory.
    pub perf_dir: Option<PathBuf>,
}

/// How big and how long each phase is.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Accounts preloaded for the HTTP and pgbench load.
    pub accounts: u64,
    pub pgbench: Duration,
    pub warmup: Duration,
    pub load: Duration,
    /// Each open-loop step of phase 2.
    pub latency_step: Duration,
    /// Messages preloaded in phases 3 and 5, outbox rows in phase 4.
    pub messages: usize,
    /// The bound of each phase.
    pub phase_timeout: Duration,
    /// The bound of each drain within a phase.
    pub drain_timeout: Duration,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            accounts: 10_000,
            pgbench: Duration::from_secs(20),
            warmup: Duration::from_secs(3),
            load: Duration::from_secs(20),
            latency_step: Duration::from_secs(20),
            messages: 200_000,
            phase_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(300),
        }
    }

    pub fn quick() -> Sizes {
        Sizes {
            accounts: 1_000,
            pgbench: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            load: Duration::from_secs(2),
            latency_step: Duration::from_secs(2),
            messages: 5_000,
            phase_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// What every phase uses.
pub struct Bench {
    pub options: Options,
    pub sizes: Sizes,
    pub cluster: Cluster,
    pub binaries: Binaries,
    /// For readiness, metrics and nsqd's admin API (not the load).
    pub http: reqwest::Client,
    pub work_dir: PathBuf,
    /// pgbench and friends.
    pub pg_bin_dir: PathBuf,
    pub postmaster: u32,
}

/// What later phases need from earlier ones.
#[derive(Debug, Default)]
pub struct Findings {
    /// Accepted requests per second of phase 1 (the deployed API).
    pub api_max_rps: Option<f64>,
    /// Events stored per second by one consumer (phase 3).
    pub one_consumer_rate: Option<f64>,
    /// Rows per second of the raw batched INSERT (phase 3).
    pub raw_insert_rate: Option<f64>,
    /// Peak RSS in bytes, by figure name, with what it was measured during.
    pub peak_rss: BTreeMap<String, (u64, String)>,
}

/// The workspace root, for the default paths.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs every phase and writes the JSON and the table. Returns the report;
/// a failed phase is recorded in it, not returned as an error.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let sizes = if options.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let started_at = Utc::now();
    let mut machine = Machine::describe()?;
    let work_dir = std::env::temp_dir().join(format!(
        "audit-trail-bench-{}-{}",
        std::process::id(),
        started_at.timestamp()
    ));
    fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let binaries = Binaries::find(&options.bin_dir, &work_dir)?;
    eprintln!(
        "bench: {} run; load average {:?}; logs in {}",
        if options.quick { "quick" } else { "full" },
        machine.load_average_start,
        work_dir.display()
    );

    let cluster = Cluster::start().await?;
    let bench = Bench {
        pg_bin_dir: cluster.bin_dir().await?,
        postmaster: cluster.pid()?,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        options,
        sizes,
        binaries,
        work_dir,
        cluster,
    };
    let mut setup = BTreeMap::new();
    setup.insert("postgres".to_owned(), bench.cluster.settings().await?);
    setup.insert("sizes".to_owned(), sizes_json(&bench.sizes));
    setup.insert(
        "services".to_owned(),
        serde_json::json!({
            "api_pool_size": services::API_POOL_SIZE,
            "consumer_batch_size": services::CONSUMER_BATCH_SIZE,
            "relay_batch_size": services::RELAY_BATCH_SIZE,
            "binaries": bench.options.bin_dir.display().to_string(),
            "log_level": "info",
        }),
    );

    let mut findings = Findings::default();
    let mut phases = BTreeMap::new();
    let bound = bench.sizes.phase_timeout;
    phases.insert(
        "1_api_throughput".to_owned(),
        phase(
            phases::throughput::TITLE,
            bound,
            phases::throughput::run(&bench, &mut findings),
        )
        .await,
    );
    phases.insert(
        "2_latency".to_owned(),
        phase(
            phases::latency::TITLE,
            bound,
            phases::latency::run(&bench, &findings),
        )
        .await,
    );
    phases.insert(
        "3_consumer_drain".to_owned(),
        phase(
            phases::consumer::TITLE,
            bound,
            phases::consumer::run(&bench, &mut findings),
        )
        .await,
    );
    phases.insert(
        "4_relay_drain".to_owned(),
        phase(
            phases::relay::TITLE,
            bound,
            phases::relay::run(&bench, &mut findings),
        )
        .await,
    );
    phases.insert(
        "5_consumer_scale".to_owned(),
        phase(
            phases::consumer::SCALE_TITLE,
            bound,
            phases::consumer::run_scale(&bench, &mut findings),
        )
        .await,
    );
    phases.insert(
        "6_peak_memory".to_owned(),
        phase(phases::memory::TITLE, bound, async {
            phases::memory::run(&findings)
        })
        .await,
    );

    machine.load_average_end = load_average()?;
    let report = Report {
        schema_version: report::SCHEMA_VERSION,
        date: started_at.format("%Y-%m-%d").to_string(),
        started_at: started_at.to_rfc3339(),
        finished_at: Utc::now().to_rfc3339(),
        mode: if bench.options.quick { "quick" } else { "full" }.to_owned(),
        git: git(&workspace_root()),
        machine,
        setup,
        phases,
    };
    let json = report.write_json(&bench.options.out_dir)?;
    report.write_table(&bench.options.docs)?;
    eprintln!(
        "bench: wrote {} and the table in {}",
        json.display(),
        bench.options.docs.display()
    );
    if report.phases.values().all(|p| p.error.is_none()) {
        let _ = fs::remove_dir_all(&bench.work_dir);
    } else {
        eprintln!("bench: logs kept in {}", bench.work_dir.display());
    }
    Ok(report)
}

/// Runs one phase within `bound`, turning an error or a timeout into a
/// failed phase.
async fn phase(
    title: &str,
    bound: Duration,
    run: impl Future<Output = anyhow::Result<Phase>>,
) -> Phase {
    eprintln!("bench: {title} …");
    let started = Instant::now();
    let mut phase = match tokio::time::timeout(bound, run).await {
        Ok(Ok(phase)) => phase,
        Ok(Err(error)) => Phase::failed(title, &error),
        Err(_) => Phase::failed(
            title,
            &anyhow::anyhow!("did not finish within {} s", bound.as_secs()),
        ),
    };
    phase.duration_seconds = procfs::round(started.elapsed().as_secs_f64(), 1);
    match &phase.error {
        None => eprintln!(
            "bench: {title}: done in {:.0} s: {}",
            phase.duration_seconds,
            phase
                .rows
                .iter()
                .map(|r| format!("{} {}", r.measure, r.value))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Some(error) => eprintln!("bench: {title}: FAILED: {error}"),
    }
    phase
}

fn sizes_json(sizes: &Sizes) -> serde_json::Value {
    serde_json::json!({
        "accounts": sizes.accounts,
        "pgbench_seconds": sizes.pgbench.as_secs_f64(),
        "warmup_seconds": sizes.warmup.as_secs_f64(),
        "load_seconds": sizes.load.as_secs_f64(),
        "latency_step_seconds": sizes.latency_step.as_secs_f64(),
        "messages": sizes.messages,
    })
}

/// The commit the bench ran at, and whether the tree had other changes.
fn git(root: &Path) -> Git {
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    Git {
        commit: run(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        dirty: run(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|status| !status.is_empty()),
    }
}
