//! `audit-consumer dead-letters list | replay`: the messages the consumer
//! could not store, and sending them through again once the cause is fixed.
//!
//! Replay publishes each raw body, byte for byte, to `NSQ_TOPIC` and marks
//! the row `replayed_at` in the same transaction, after nsqd answered `OK`.
//! The rows are locked (`FOR UPDATE SKIP LOCKED`) while that happens, so two
//! replays at once never publish the same row twice. If the COMMIT fails
//! after nsqd's `OK`, the row stays unreplayed and a later replay publishes
//! it again: harmless, since the consumer stores an event once whatever the
//! number of deliveries, and a body that fails again only moves the
//! `last_seen_at` of its pending row. A body that fails again after its row
//! was replayed gets a new row.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use slog::{info, Logger};
use sqlx::PgPool;

/// Rows published per MPUB (and per transaction) at most.
const REPLAY_CHUNK_ROWS: usize = 100;
/// Bytes published per MPUB at most; under nsqd's 5 MiB `--max-body-size`.
const REPLAY_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// `list` shows at most this much of each error.
const ERROR_COLUMN_CHARS: usize = 160;

/// One row of `audit_dead_letters`, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub attempts: i32,
    pub error: String,
    pub body_bytes: i32,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// The newest `limit` dead letters, newest first.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<Summary>, sqlx::Error> {
    sqlx::query_as!(
        Summary,
        r#"
        SELECT id, first_seen_at, last_seen_at, attempts, error,
               octet_length(body) AS "body_bytes!", replayed_at
        FROM audit_dead_letters
        ORDER BY id DESC
        LIMIT $1
        "#,
        limit
    )
    .fetch_all(pool)
    .await
}

/// The rows as an aligned table, one line each, the error last (shortened
/// to one line of at most [`ERROR_COLUMN_CHARS`] characters).
pub fn format_table(rows: &[Summary]) -> String {
    if rows.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let header = [
        "id",
        "first_seen_at",
        "last_seen_at",
        "attempts",
        "bytes",
        "replayed_at",
        "error",
    ];
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.id.to_string(),
                timestamp(row.first_seen_at),
                timestamp(row.last_seen_at),
                row.attempts.to_string(),
                row.body_bytes.to_string(),
                row.replayed_at.map_or_else(|| "-".to_owned(), timestamp),
                shorten(&row.error),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for line in std::iter::once(&header).chain(&lines) {
        let (cells, last) = (&line[..6], &line[6]);
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        let _ = writeln!(out, "{last}");
    }
    out
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One printable line of at most `ERROR_COLUMN_CHARS` characters. Errors
/// quote what the producer sent, so control characters (a terminal escape
/// sequence in a poisoned field, say) are shown escaped, never emitted.
fn shorten(error: &str) -> String {
    let one_line = error.split_whitespace().collect::<Vec<_>>().join(" ");
    let one_line: String = one_line
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if one_line.chars().count() <= ERROR_COLUMN_CHARS {
        return one_line;
    }
    let mut short: String = one_line.chars().take(ERROR_COLUMN_CHARS - 1).collect();
    short.push('…');
    short
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every row not replayed yet, as of the start of the replay (rows that
    /// fail again during it are not picked up again).
    All,
    Ids(Vec<i64>),
}

/// What a replay did, row by row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Published, and marked replayed.
    pub replayed: Vec<i64>,
    /// Asked for, but replayed before.
    pub already_replayed: Vec<(i64, DateTime<Utc>)>,
    /// Asked for, but no such row.
    pub not_found: Vec<i64>,
    /// Being replayed by another process at the same moment.
    pub skipped: Vec<i64>,
    /// Could not be published (or marked); left unreplayed, with the reason.
    pub failed: Vec<(i64, String)>,
}

impl ReplayReport {
    /// Whether every row asked for is now replayed.
    pub fn is_complete(&self) -> bool {
        self.not_found.is_empty() && self.failed.is_empty()
    }
}

/// Publishes the selected dead letters to `topic` and marks them replayed.
/// A row whose publication fails is reported and left as it was; the others
/// still go.
pub async fn replay(
    pool: &PgPool,
    producer: &nsq::Producer,
    topic: &nsq::Topic,
    selection: &Selection,
    logger: &Logger,
) -> Result<ReplayReport, sqlx::Error> {
    let mut report = ReplayReport::default();
    let candidates: Vec<(i64, usize)> = match selection {
        Selection::All => sqlx::query!(
            r#"
            SELECT id, octet_length(body) AS "bytes!"
            FROM audit_dead_letters
            WHERE replayed_at IS NULL
            ORDER BY id
            "#
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| (row.id, usize::try_from(row.bytes).unwrap_or(0)))
        .collect(),
        Selection::Ids(ids) => {
            let rows = sqlx::query!(
                r#"
                SELECT id, octet_length(body) AS "bytes!", replayed_at
                FROM audit_dead_letters
                WHERE id = ANY($1)
                ORDER BY id
                "#,
                ids
            )
            .fetch_all(pool)
            .await?;
            report.not_found = ids
                .iter()
                .filter(|id| !rows.iter().any(|row| row.id == **id))
                .copied()
                .collect();
            let mut candidates = Vec::new();
            for row in rows {
                match row.replayed_at {
                    Some(at) => report.already_replayed.push((row.id, at)),
                    None => candidates.push((row.id, usize::try_from(row.bytes).unwrap_or(0))),
                }
            }
            candidates
        }
    };

    for chunk in chunks(&candidates) {
        replay_chunk(pool, producer, topic, &chunk, &mut report, logger).await?;
    }
    Ok(report)
}

/// Splits `(id, bytes)` rows into chunks of at most [`REPLAY_CHUNK_ROWS`]
/// rows and [`REPLAY_CHUNK_BYTES`] bytes (a larger row goes alone).
fn chunks(rows: &[(i64, usize)]) -> Vec<Vec<i64>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &(id, size) in rows {
        if !current.is_empty()
            && (current.len() == REPLAY_CHUNK_ROWS || bytes + size > REPLAY_CHUNK_BYTES)
        {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(id);
        bytes += size;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Claims the rows of one chunk that are still unreplayed, publishes their
/// bodies with one MPUB, marks them, commits.
async fn replay_chunk(
    pool: &PgPool,
    producer: &nsq::Producer,
    topic: &nsq::Topic,
    ids: &[i64],
    report: &mut ReplayReport,
    logger: &Logger,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"
        SELECT id, body
        FROM audit_dead_letters
        WHERE id = ANY($1) AND replayed_at IS NULL
        ORDER BY id
        FOR UPDATE SKIP LOCKED
        "#,
        ids
    )
    .fetch_all(&mut *tx)
    .await?;
    report.skipped.extend(
        ids.iter()
            .filter(|id| !rows.iter().any(|row| row.id == **id))
            .copied(),
    );
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(());
    }
    let claimed: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|row| row.body.as_slice()).collect();
    if let Err(e) = producer.multi_publish(topic, &bodies).await {
        // Nothing is marked; part of the chunk may have been published,
        // which a later replay repeats harmlessly (see the module docs).
        tx.rollback().await?;
        let reason = format!("could not publish to nsqd {}: {e}", producer.address());
        report
            .failed
            .extend(claimed.iter().map(|id| (*id, reason.clone())));
        return Ok(());
    }
    let marked = sqlx::query!(
        "UPDATE audit_dead_letters SET replayed_at = now() WHERE id = ANY($1)",
        &claimed
    )
    .execute(&mut *tx)
    .await;
    let committed = match marked {
        Ok(_) => tx.commit().await,
        Err(e) => Err(e),
    };
    match committed {
        Ok(()) => {
            info!(logger, "dead letters replayed"; "rows" => claimed.len(), "topic" => %topic);
            report.replayed.extend(claimed);
        }
        Err(e) => {
            let reason = format!(
                "published, but not marked replayed ({e}); a later replay publishes it again"
            );
            report
                .failed
                .extend(claimed.iter().map(|id| (*id, reason.clone())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn chunks_respect_the_row_and_byte_limits() {
        let rows: Vec<(i64, usize)> = (1..=250).map(|id| (id, 10)).collect();
        let sizes: Vec<usize> = chunks(&rows).iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 50]);

        let mib = 1024 * 1024;
        let rows = [(1, 3 * mib), (2, 2 * mib), (3, 6 * mib), (4, 1)];
        assert_eq!(chunks(&rows), [vec![1], vec![2], vec![3], vec![4]]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn control_characters_in_errors_are_shown_escaped() {
        let shown = shorten("field actor.type: \u{1b}]0;pwned\u{7}\u{1b}[2J");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;pwned"), "{shown:?}");
    }

    #[test]
    fn the_table_has_a_header_and_one_line_per_row_with_the_error_shortened() {
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 18, 45, 12).unwrap();
        let rows = [
            Summary {
                id: 12,
                first_seen_at: at,
                last_seen_at: at,
                attempts: 3,
                error: format!("not valid JSON:\n{}", "x".repeat(500)),
                body_bytes: 921_600,
                replayed_at: None,
            },
            Summary {
                id: 7,
                first_seen_at: at,
                last_seen_at: at,
                attempts: 1,
                error: "unknown schema_version 2".to_owned(),
                body_bytes: 15,
                replayed_at: Some(at),
            },
        ];
        let table = format_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("id  first_seen_at"), "{table}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &cells[..7],
            [
                "12",
                "2026-12-03T18:45:12Z",
                "2026-12-03T18:45:12Z",
                "3",
                "921600",
                "-",
                "not"
            ]
        );
        assert!(lines[1].ends_with('…'));
        assert!(lines[1].chars().count() < 260, "{}", lines[1]);
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells[5], "2026-12-03T18:45:12Z");
        assert_eq!(format_table(&[]), "no dead letters\n");
    }
}
