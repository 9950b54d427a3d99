//! Phases 3 and 5: the consumer draining a backlog, against the raw INSERT.
//!
//! The messages are published while the channel is paused, so they all wait
//! in nsqd before the consumer starts; the clock starts when the channel is
//! unpaused and stops when the consumers' `/metrics` count every event
//! stored (checked against `count(*)` afterwards). The baseline inserts the
//! same events over one connection with the consumer's own statement
//! (`store::insert_events`), one transaction per `BATCH_SIZE` rows: what
//! Postgres allows for the consumer's writes, without NSQ, decoding, FIN or
//! receipts. Phase 5 runs the drain with two consumers on the channel.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use audit_event::AuditEvent;

use crate::procfs::{round, CpuMeter, CpuUsage, Role};
use crate::report::{number, Phase, Row};
use crate::services::{self, Schema, Service, CONSUMER_BATCH_SIZE};
use crate::{events, Bench, Findings};

pub const TITLE: &str = "3. Consumer drain vs raw insert";
pub const SCALE_TITLE: &str = "5. Scale: (3) with two consumers";

/// The consumers' count of rows they inserted.
const STORED_SERIES: &str = "audit_consumer_events_stored_total";

pub async fn run(bench: &Bench, findings: &mut Findings) -> anyhow::Result<Phase> {
    let mut phase = Phase::new(TITLE);
    let events = events::events(bench.sizes.messages, bench.sizes.accounts, 3);
    let n = events.len() as f64;

    let raw = raw_insert(bench, &events).await?;
    let raw_rate = phase.figure("raw_insert_rows_per_second", raw.rate, "rows/s");
    phase.figure("raw_insert_seconds", raw.seconds, "s");
    phase.cpu.insert("raw_insert".into(), raw.cpu.clone());

    let drain = drain(bench, &events, 1, "p3").await?;
    let rate = phase.figure("consumer_events_per_second", drain.rate, "events/s");
    phase.figure("consumer_seconds", drain.seconds, "s");
    phase.figure("messages", n, "messages");
    phase.figure("batch_size", CONSUMER_BATCH_SIZE as f64, "events");
    let ratio = phase.ratio("consumer_over_raw_insert", rate, raw_rate);
    phase.cpu.insert("consumer_drain".into(), drain.cpu.clone());

    phase.row(Row {
        measure: format!(
            "raw batched INSERT ({} rows per transaction, one connection)",
            CONSUMER_BATCH_SIZE
        ),
        value: format!("{} rows/s", number(raw_rate)),
        cpu: raw.cpu.summary(),
        ..Row::default()
    });
    phase.row(Row {
        measure: format!("one consumer draining {} preloaded messages", number(n)),
        value: format!("{} events/s ({:.1} s)", number(rate), drain.seconds),
        baseline: format!("raw INSERT {} rows/s", number(raw_rate)),
        ratio: format!("{ratio:.2}"),
        cpu: drain.cpu.summary(),
    });

    findings.one_consumer_rate = Some(rate);
    findings.raw_insert_rate = Some(raw_rate);
    if let Some(&peak) = drain.consumer_peak_rss.first() {
        findings.peak_rss.insert(
            "audit_consumer_during_3".into(),
            (peak, "audit-consumer during phase 3".into()),
        );
    }
    findings.peak_rss.insert(
        "nsqd_during_3".into(),
        (drain.nsqd_peak_rss, "nsqd during phase 3".into()),
    );
    Ok(phase)
}

pub async fn run_scale(bench: &Bench, findings: &mut Findings) -> anyhow::Result<Phase> {
    let mut phase = Phase::new(SCALE_TITLE);
    let events = events::events(bench.sizes.messages, bench.sizes.accounts, 5);
    let n = events.len() as f64;
    let drain = drain(bench, &events, 2, "p5").await?;
    let rate = phase.figure("two_consumers_events_per_second", drain.rate, "events/s");
    phase.figure("two_consumers_seconds", drain.seconds, "s");
    phase.figure("messages", n, "messages");
    phase
        .cpu
        .insert("two_consumers_drain".into(), drain.cpu.clone());
    let mut row = Row {
        measure: format!("two consumers draining {} preloaded messages", number(n)),
        value: format!("{} events/s ({:.1} s)", number(rate), drain.seconds),
        cpu: drain.cpu.summary(),
        ..Row::default()
    };
    let mut baselines = Vec::new();
    let mut ratios = Vec::new();
    if let Some(one) = findings.one_consumer_rate {
        let ratio = phase.ratio("two_over_one_consumer", rate, one);
        baselines.push(format!("one consumer {} events/s", number(one)));
        ratios.push(format!("{ratio:.2}"));
    }
    if let Some(raw) = findings.raw_insert_rate {
        let ratio = phase.ratio("two_consumers_over_raw_insert", rate, raw);
        baselines.push(format!("raw INSERT {} rows/s", number(raw)));
        ratios.push(format!("{ratio:.2}"));
    }
    if baselines.is_empty() {
        bail!("needs the figures of phase 3, which failed");
    }
    row.baseline = baselines.join("; ");
    row.ratio = ratios.join("; ");
    phase.row(row);
    for (n, peak) in drain.consumer_peak_rss.iter().enumerate() {
        findings.peak_rss.insert(
            format!("audit_consumer_{}_during_5", n + 1),
            (
                *peak,
                format!("audit-consumer {} of 2 during phase 5", n + 1),
            ),
        );
    }
    Ok(phase)
}

struct Timed {
    seconds: f64,
    rate: f64,
    cpu: CpuUsage,
}

/// The consumer's statement, back to back over one connection.
async fn raw_insert(bench: &Bench, events: &[AuditEvent]) -> anyhow::Result<Timed> {
    let database = bench
        .cluster
        .database("bench_p3_raw", Schema::Audit)
        .await?;
    let meter = CpuMeter::new()
        .watch("postgres", Role::WithChildren(bench.postmaster))
        .watch("bench", Role::Process(std::process::id()));
    let mut conn = database.pool.acquire().await?;
    let start = meter.sample()?;
    let started = Instant::now();
    for chunk in events.chunks(CONSUMER_BATCH_SIZE) {
        let refs: Vec<&AuditEvent> = chunk.iter().collect();
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        audit_consumer::store::insert_events(&mut tx, &refs)
            .await
            .context("raw insert")?;
        tx.commit().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuUsage::between(&start, &meter.sample()?);
    drop(conn);
    let stored = count_stored(&database).await?;
    if stored != events.len() as i64 {
        bail!("raw insert stored {stored} of {} rows", events.len());
    }
    bench.cluster.drop_database(database).await?;
    Ok(Timed {
        seconds: round(seconds, 2),
        rate: round(events.len() as f64 / seconds, 1),
        cpu,
    })
}

struct Drain {
    seconds: f64,
    rate: f64,
    cpu: CpuUsage,
    consumer_peak_rss: Vec<u64>,
    nsqd_peak_rss: u64,
}

/// Preloads `events` into a paused channel, starts `consumers` consumers,
/// unpauses, and times the drain.
async fn drain(
    bench: &Bench,
    events: &[AuditEvent],
    consumers: usize,
    tag: &str,
) -> anyhow::Result<Drain> {
    let nsqd = services::nsqd().await?;
    // The channel must exist before anything is published, to be paused and
    // to receive every message.
    services::nsqd_post(&bench.http, &nsqd, "topic/create").await?;
    services::nsqd_post(&bench.http, &nsqd, "channel/create").await?;
    services::set_channel_paused(&bench.http, &nsqd, true).await?;
    publish(&nsqd, events).await?;
    // nsqd moves messages from the topic to its channels in the background
    // (through its disk queue beyond --mem-queue-size): wait until the
    // channel holds them all, so the drain starts from a full backlog.
    let preloaded = Instant::now();
    loop {
        let depth = services::channel_depth(&services::nsqd_stats(&bench.http, &nsqd).await?);
        if depth == Some(events.len() as u64) {
            break;
        }
        if preloaded.elapsed() >= bench.sizes.drain_timeout {
            bail!(
                "the paused channel holds {depth:?} messages, not {}",
                events.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let database = bench
        .cluster
        .database(&format!("bench_{tag}_audit"), Schema::Audit)
        .await?;
    let mut running: Vec<Service> = Vec::new();
    for n in 1..=consumers {
        running.push(
            bench
                .binaries
                .consumer(&format!("consumer-{tag}-{n}"), &database, &nsqd)?,
        );
    }
    for consumer in &mut running {
        consumer.wait_ready(&bench.http).await?;
    }

    let mut meter = CpuMeter::new()
        .watch("postgres", Role::WithChildren(bench.postmaster))
        .watch("nsqd", Role::Process(nsqd.pid().unwrap_or(0)));
    for (n, consumer) in running.iter().enumerate() {
        let name = if consumers == 1 {
            "consumer".to_owned()
        } else {
            format!("consumer {}", n + 1)
        };
        meter = meter.watch(&name, Role::Process(consumer.pid()));
    }
    let start = meter.sample()?;
    let started = Instant::now();
    services::set_channel_paused(&bench.http, &nsqd, false).await?;
    let expected = events.len() as f64;
    let deadline = started + bench.sizes.drain_timeout;
    loop {
        let mut stored = 0.0;
        for consumer in &running {
            stored += consumer.metric(&bench.http, STORED_SERIES).await?;
        }
        if stored >= expected {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{stored} of {expected} events stored after {} s",
                bench.sizes.drain_timeout.as_secs()
            );
        }
        for consumer in &mut running {
            consumer.ensure_running()?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuUsage::between(&start, &meter.sample()?);

    let stored = count_stored(&database).await?;
    if stored != events.len() as i64 {
        bail!("the consumers stored {stored} rows, not {}", events.len());
    }
    let consumer_peak_rss = running
        .iter()
        .map(Service::peak_rss_bytes)
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let nsqd_peak_rss = crate::procfs::peak_rss_bytes(nsqd.pid().unwrap_or(0))?;
    for consumer in running {
        consumer.stop().await?;
    }
    drop(nsqd);
    bench.cluster.drop_database(database).await?;
    Ok(Drain {
        seconds: round(seconds, 2),
        rate: round(expected / seconds, 1),
        cpu,
        consumer_peak_rss,
        nsqd_peak_rss,
    })
}

/// MPUB in chunks, each acknowledged by nsqd before the next.
async fn publish(nsqd: &testkit::Nsqd, events: &[AuditEvent]) -> anyhow::Result<()> {
    let producer = nsq::Producer::new(
        nsqd.tcp_address(),
        nsq::ProducerConfig::default(),
        slog::Logger::root(slog::Discard, slog::o!()),
    );
    let topic = nsq::Topic::new(services::TOPIC)?;
    for chunk in events.chunks(1_000) {
        let bodies: Vec<String> = chunk.iter().map(AuditEvent::to_json).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
        producer
            .multi_publish(&topic, &refs)
            .await
            .context("publishing the backlog")?;
    }
    Ok(())
}

async fn count_stored(database: &crate::services::Database) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_logs"#)
            .fetch_one(&database.pool)
            .await?,
    )
}
