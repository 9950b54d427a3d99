//! Phase 2: end-to-end latency, commit to stored, under open-loop load at
//! 1 %, 50 % and 80 % of the throughput phase 1 measured.
//!
//! Both ends are read from the database's own clock, so no clock skew
//! enters: `outbox.created_at` is `now()` of the API's transaction (its
//! start, set by the column default) and `audit_logs.recorded_at` is `now()`
//! of the consumer's batch transaction (its start). The two databases are on
//! one Postgres server, so it is one clock. The figure therefore runs from
//! the start of the API's transaction to the start of the transaction that
//! stores the event: it includes the API's own commit, the relay, nsqd and
//! the consumer's batching wait, and leaves out the consumer's COMMIT.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::load::{self, percentile, Target};
use crate::procfs::{round, CpuMeter, CpuUsage, Role};
use crate::report::{number, Phase, Row};
use crate::services::{self, Database, Schema};
use crate::{Bench, Findings};

pub const TITLE: &str = "2. End-to-end latency, commit to stored";

/// Fractions of phase 1's maximum: a quiet hour's trickle, where nothing
/// fills a buffer and every wait for a timer shows, then half and most of
/// the maximum.
const LEVELS: [(&str, f64); 3] = [("1", 0.01), ("50", 0.5), ("80", 0.8)];

pub async fn run(bench: &Bench, findings: &Findings) -> anyhow::Result<Phase> {
    let max = findings
        .api_max_rps
        .ok_or_else(|| anyhow!("needs the maximum throughput of phase 1, which failed"))?;
    let mut phase = Phase::new(TITLE);
    let sizes = &bench.sizes;
    let accounts = bench
        .cluster
        .database("bench_p2_accounts", Schema::Accounts)
        .await?;
    super::preload_accounts(&accounts, sizes.accounts).await?;
    let audit = bench
        .cluster
        .database("bench_p2_audit", Schema::Audit)
        .await?;
    let nsqd = services::nsqd().await?;
    let mut api = bench.binaries.api("api-p2", &accounts, &nsqd, &[])?;
    let mut consumer = bench.binaries.consumer("consumer-p2", &audit, &nsqd)?;
    api.wait_ready(&bench.http).await?;
    consumer.wait_ready(&bench.http).await?;

    let meter = CpuMeter::new()
        .watch("postgres", Role::WithChildren(bench.postmaster))
        .watch("api", Role::Process(api.pid()))
        .watch("consumer", Role::Process(consumer.pid()))
        .watch("nsqd", Role::Process(nsqd.pid().unwrap_or(0)))
        .watch("load", Role::Process(std::process::id()));
    let target = Target::new(&api.base, sizes.accounts)?;
    let client = load::client(64)?;
    for (label, fraction) in LEVELS {
        let rate = max * fraction;
        let prefix = format!("bench-p2-{label}-");
        let start = meter.sample()?;
        let sent = load::open_loop(&client, &target, rate, sizes.latency_step, &prefix).await?;
        let end = meter.sample()?;
        let cpu = CpuUsage::between(&start, &end);
        if sent.accepted == 0 {
            bail!(
                "the API accepted no request at {label} %: {}",
                api.log_tail()
            );
        }
        wait_stored(&audit, &prefix, sent.accepted, sizes.drain_timeout)
            .await
            .with_context(|| consumer.log_tail())?;
        let legs = commit_to_stored(&accounts, &audit, &prefix).await?;
        let ms = |sorted: &[i64], q: f64| {
            percentile(sorted, q).map_or(0.0, |us| round(us as f64 / 1000.0, 2))
        };
        let latencies = &legs.total;
        let (p50, p99, max_ms) = (ms(latencies, 0.5), ms(latencies, 0.99), ms(latencies, 1.0));
        let http_ms = |q: f64| {
            percentile(&sent.response_times, q).map_or(0.0, |d| round(d.as_secs_f64() * 1e3, 2))
        };
        let achieved = sent.accepted as f64 / sent.seconds.max(1e-9);

        let key = |name: &str| format!("at_{label}_percent_{name}");
        phase.figure(&key("target_rate"), round(rate, 1), "requests/s");
        phase.figure(&key("accepted_rate"), round(achieved, 1), "requests/s");
        phase.figure(&key("failed_requests"), sent.failed as f64, "requests");
        phase.figure(&key("skipped_requests"), sent.skipped as f64, "requests");
        phase.figure(&key("events_measured"), latencies.len() as f64, "events");
        phase.figure(&key("commit_to_stored_p50"), p50, "ms");
        phase.figure(&key("commit_to_stored_p99"), p99, "ms");
        phase.figure(&key("commit_to_stored_max"), max_ms, "ms");
        phase.figure(&key("commit_to_published_p50"), ms(&legs.relay, 0.5), "ms");
        phase.figure(&key("commit_to_published_p99"), ms(&legs.relay, 0.99), "ms");
        phase.figure(
            &key("published_to_stored_p50"),
            ms(&legs.consumer, 0.5),
            "ms",
        );
        phase.figure(
            &key("published_to_stored_p99"),
            ms(&legs.consumer, 0.99),
            "ms",
        );
        phase.figure(&key("http_response_p50"), http_ms(0.5), "ms");
        phase.figure(&key("http_response_p99"), http_ms(0.99), "ms");
        phase.cpu.insert(format!("at_{label}_percent"), cpu.clone());
        phase.row(Row {
            measure: format!(
                "commit → stored p50 / p99 / max at {label} % of (1): {} req/s open loop \
                 ({} accepted/s)",
                number(rate),
                number(achieved)
            ),
            value: format!("{p50:.1} / {p99:.1} / {max_ms:.1} ms"),
            baseline: format!(
                "of which commit → published p50 {:.1} ms, published → stored p50 {:.1} ms; \
                 HTTP response p50 / p99 {:.1} / {:.1} ms",
                ms(&legs.relay, 0.5),
                ms(&legs.consumer, 0.5),
                http_ms(0.5),
                http_ms(0.99)
            ),
            ratio: String::new(),
            cpu: cpu.summary(),
        });
    }
    api.stop().await?;
    consumer.stop().await?;
    drop(nsqd);
    bench.cluster.drop_database(accounts).await?;
    bench.cluster.drop_database(audit).await?;
    Ok(phase)
}

/// Waits until every accepted request of the step has its audit row.
async fn wait_stored(
    audit: &Database,
    prefix: &str,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pattern = format!("{prefix}%");
    let deadline = Instant::now() + timeout;
    loop {
        let stored = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM audit_logs WHERE request_id LIKE $1"#,
            pattern,
        )
        .fetch_one(&audit.pool)
        .await?;
        if stored as u64 >= expected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{stored} of {expected} events of {prefix}* stored after {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The latency of each event of a step and its two legs, in microseconds,
/// each sorted.
struct Legs {
    /// `outbox.created_at` → `audit_logs.recorded_at`.
    total: Vec<i64>,
    /// `outbox.created_at` → `outbox.published_at` (`now()` of the relay's
    /// claim transaction, before its MPUB): the API's commit and the relay.
    relay: Vec<i64>,
    /// `outbox.published_at` → `audit_logs.recorded_at`: MPUB, nsqd, the
    /// consumer's batching.
    consumer: Vec<i64>,
}

async fn commit_to_stored(
    accounts: &Database,
    audit: &Database,
    prefix: &str,
) -> anyhow::Result<Legs> {
    let pattern = format!("{prefix}%");
    let stored = sqlx::query!(
        "SELECT event_id, recorded_at FROM audit_logs WHERE request_id LIKE $1",
        pattern,
    )
    .fetch_all(&audit.pool)
    .await?;
    let ids: Vec<Uuid> = stored.iter().map(|row| row.event_id).collect();
    let written: HashMap<Uuid, (DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query!(
        "SELECT event_id, created_at, published_at FROM outbox WHERE event_id = ANY($1)",
        &ids,
    )
    .fetch_all(&accounts.pool)
    .await?
    .into_iter()
    .map(|row| (row.event_id, (row.created_at, row.published_at)))
    .collect();
    let micros = |from: DateTime<Utc>, to: DateTime<Utc>| {
        (to - from)
            .num_microseconds()
            .ok_or_else(|| anyhow!("latency out of range"))
    };
    let mut legs = Legs {
        total: Vec::with_capacity(stored.len()),
        relay: Vec::with_capacity(stored.len()),
        consumer: Vec::with_capacity(stored.len()),
    };
    for row in &stored {
        let (created, published) = written
            .get(&row.event_id)
            .ok_or_else(|| anyhow!("event {} is stored but not in the outbox", row.event_id))?;
        let published =
            published.ok_or_else(|| anyhow!("event {} is stored but unpublished", row.event_id))?;
        legs.total.push(micros(*created, row.recorded_at)?);
        legs.relay.push(micros(*created, published)?);
        legs.consumer.push(micros(published, row.recorded_at)?);
    }
    legs.total.sort_unstable();
    legs.relay.sort_unstable();
    legs.consumer.sort_unstable();
    Ok(legs)
}
