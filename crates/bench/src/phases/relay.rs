//! Phase 4: the relay draining an outbox backlog, against the raw
//! claim-and-mark.
//!
//! The backlog is committed in one transaction while the API (relay on) is
//! running and nsqd is up; the clock starts at that COMMIT and stops when no
//! row is due any more (the relay finds rows written by another process by
//! polling, every `RELAY_POLL_INTERVAL_MS`, 100 ms here). Published rows wait
//! an hour for their receipt (`RELAY_REPUBLISH_AFTER_SECS`, as in every
//! phase), so nothing is republished during the measurement. The baseline runs the relay's own
//! claim and mark (`outbox::claim`, `outbox::mark_published`) in the same
//! batches over one connection, without publishing: what Postgres allows for
//! the relay's bookkeeping.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use audit_event::AuditEvent;

use crate::procfs::{round, CpuMeter, CpuUsage, Role};
use crate::report::{number, Phase, Row};
use crate::services::{self, Database, Schema, RELAY_BATCH_SIZE, RELAY_REPUBLISH_AFTER};
use crate::{events, Bench, Findings};

pub const TITLE: &str = "4. Relay drain vs raw claim-and-mark";

pub async fn run(bench: &Bench, findings: &mut Findings) -> anyhow::Result<Phase> {
    let mut phase = Phase::new(TITLE);
    let events = events::events(bench.sizes.messages, bench.sizes.accounts, 4);
    let n = events.len() as f64;

    let raw = raw_claim_and_mark(bench, &events).await?;
    let raw_rate = phase.figure("raw_claim_and_mark_rows_per_second", raw.rate, "rows/s");
    phase.figure("raw_claim_and_mark_seconds", raw.seconds, "s");
    phase
        .cpu
        .insert("raw_claim_and_mark".into(), raw.cpu.clone());

    let relay = relay_drain(bench, &events).await?;
    let rate = phase.figure("relay_events_per_second", relay.rate, "events/s");
    phase.figure("relay_seconds", relay.seconds, "s");
    phase.figure("outbox_rows", n, "rows");
    phase.figure("batch_size", f64::from(RELAY_BATCH_SIZE), "rows");
    let ratio = phase.ratio("relay_over_raw_claim_and_mark", rate, raw_rate);
    phase.cpu.insert("relay_drain".into(), relay.cpu.clone());

    phase.row(Row {
        measure: format!(
            "raw claim-and-mark, no publishing ({RELAY_BATCH_SIZE} rows per transaction)"
        ),
        value: format!("{} rows/s", number(raw_rate)),
        cpu: raw.cpu.summary(),
        ..Row::default()
    });
    phase.row(Row {
        measure: format!("relay publishing a backlog of {} outbox rows", number(n)),
        value: format!("{} events/s ({:.1} s)", number(rate), relay.seconds),
        baseline: format!("raw claim-and-mark {} rows/s", number(raw_rate)),
        ratio: format!("{ratio:.2}"),
        cpu: relay.cpu.summary(),
    });
    findings.peak_rss.insert(
        "accounts_api_during_4".into(),
        (relay.api_peak_rss, "accounts-api during phase 4".into()),
    );
    Ok(phase)
}

struct Timed {
    seconds: f64,
    rate: f64,
    cpu: CpuUsage,
    api_peak_rss: u64,
}

async fn raw_claim_and_mark(bench: &Bench, events: &[AuditEvent]) -> anyhow::Result<Timed> {
    let database = bench
        .cluster
        .database("bench_p4_raw", Schema::Accounts)
        .await?;
    // No VACUUM or ANALYZE in between: the relay meets its backlog fresh
    // from the COMMIT too, hint bits unset and statistics stale.
    super::insert_outbox(&database, events).await?;
    let meter = CpuMeter::new()
        .watch("postgres", Role::WithChildren(bench.postmaster))
        .watch("bench", Role::Process(std::process::id()));
    let mut conn = database.pool.acquire().await?;
    let start = meter.sample()?;
    let started = Instant::now();
    let mut marked = 0;
    loop {
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let rows = accounts_api::outbox::claim(&mut tx, i64::from(RELAY_BATCH_SIZE))
            .await
            .context("claiming")?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        accounts_api::outbox::mark_published(
            &mut tx,
            &ids,
            Some(RELAY_REPUBLISH_AFTER),
            accounts_api::relay::MAX_REPUBLISH_WAIT.max(RELAY_REPUBLISH_AFTER),
        )
        .await
        .context("marking")?;
        tx.commit().await?;
        marked += ids.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuUsage::between(&start, &meter.sample()?);
    drop(conn);
    if marked != events.len() {
        bail!("claimed and marked {marked} of {} rows", events.len());
    }
    bench.cluster.drop_database(database).await?;
    Ok(Timed {
        seconds: round(seconds, 2),
        rate: round(events.len() as f64 / seconds, 1),
        cpu,
        api_peak_rss: 0,
    })
}

async fn relay_drain(bench: &Bench, events: &[AuditEvent]) -> anyhow::Result<Timed> {
    let database = bench
        .cluster
        .database("bench_p4_accounts", Schema::Accounts)
        .await?;
    let nsqd = services::nsqd().await?;
    services::nsqd_post(&bench.http, &nsqd, "topic/create").await?;
    let mut api = bench.binaries.api(
        "api-p4",
        &database,
        &nsqd,
        &[("RELAY_ENABLED", "true"), ("RELAY_POLL_INTERVAL_MS", "100")],
    )?;
    api.wait_ready(&bench.http).await?;
    let meter = CpuMeter::new()
        .watch("postgres", Role::WithChildren(bench.postmaster))
        .watch("api", Role::Process(api.pid()))
        .watch("nsqd", Role::Process(nsqd.pid().unwrap_or(0)));

    super::insert_outbox(&database, events).await?;
    let start = meter.sample()?;
    let started = Instant::now();
    let deadline = started + bench.sizes.drain_timeout;
    while due_rows_left(&database).await? {
        if Instant::now() >= deadline {
            bail!(
                "the relay had not drained the outbox after {} s",
                bench.sizes.drain_timeout.as_secs()
            );
        }
        api.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuUsage::between(&start, &meter.sample()?);

    let published = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM outbox WHERE published_at IS NOT NULL"#
    )
    .fetch_one(&database.pool)
    .await?;
    let in_nsqd = services::topic_message_count(&services::nsqd_stats(&bench.http, &nsqd).await?);
    if published != events.len() as i64 || in_nsqd.is_none_or(|n| n < events.len() as u64) {
        bail!(
            "{published} rows marked published and {in_nsqd:?} messages in nsqd, of {}",
            events.len()
        );
    }
    let api_peak_rss = api.peak_rss_bytes()?;
    api.stop().await?;
    drop(nsqd);
    bench.cluster.drop_database(database).await?;
    Ok(Timed {
        seconds: round(seconds, 2),
        rate: round(events.len() as f64 / seconds, 1),
        cpu,
        api_peak_rss,
    })
}

/// Whether any row is still due: published rows are due an hour later, so
/// this walks only the unpublished part of the due index.
async fn due_rows_left(database: &Database) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM outbox WHERE due_at <= statement_timestamp()) AS "due!""#
    )
    .fetch_one(&database.pool)
    .await?)
}
