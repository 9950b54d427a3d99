//! The SQL of `audit_logs` and `audit_dead_letters`, and how to tell a
//! database that is away from one that refuses what we send.

use std::time::Duration;

use audit_event::AuditEvent;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A message to keep in `audit_dead_letters`: its raw body and why it could
/// not be stored.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    pub message_id: &'a str,
    pub body: &'a [u8],
    pub error: &'a str,
    pub attempts: u16,
}

/// Inserts the events with one statement; an `event_id` already stored (or
/// twice in `events`) is skipped. Returns how many rows were new.
///
/// One `UNNEST` statement per batch rather than one `INSERT` per event: a
/// single round trip and a single plan, whatever the batch size.
pub async fn insert_events(
    conn: &mut PgConnection,
    events: &[&AuditEvent],
) -> Result<u64, sqlx::Error> {
    let n = events.len();
    let mut event_ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut schema_versions: Vec<i32> = Vec::with_capacity(n);
    let mut occurred_ats: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut actor_ids: Vec<&str> = Vec::with_capacity(n);
    let mut actor_types: Vec<&str> = Vec::with_capacity(n);
    let mut actions: Vec<&str> = Vec::with_capacity(n);
    let mut resource_types: Vec<&str> = Vec::with_capacity(n);
    let mut resource_ids: Vec<&str> = Vec::with_capacity(n);
    let mut outcomes: Vec<&str> = Vec::with_capacity(n);
    let mut error_statuses: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut error_codes: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut request_ids: Vec<&str> = Vec::with_capacity(n);
    let mut request_ips: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut user_agents: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut sequences: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut details: Vec<&serde_json::Value> = Vec::with_capacity(n);
    let mut traceparents: Vec<Option<&str>> = Vec::with_capacity(n);
    for event in events {
        event_ids.push(event.event_id);
        // A schema version that does not fit is refused by `parse` long
        // before; saturating keeps this total and the row would show it.
        schema_versions.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
        occurred_ats.push(event.occurred_at);
        actor_ids.push(&event.actor.id);
        actor_types.push(event.actor.kind.as_str());
        actions.push(&event.action);
        resource_types.push(&event.resource.kind);
        resource_ids.push(&event.resource.id);
        outcomes.push(event.outcome.as_str());
        error_statuses.push(event.error.as_ref().map(|e| i32::from(e.status)));
        error_codes.push(event.error.as_ref().map(|e| e.code.as_str()));
        request_ids.push(&event.request.id);
        request_ips.push(event.request.ip.as_deref());
        user_agents.push(event.request.user_agent.as_deref());
        sequences.push(event.sequence);
        details.push(&event.details);
        traceparents.push(event.traceparent.as_deref());
    }
    // `as _` on the nullable arrays: the macro's type check does not know
    // that an array of `Option<T>` encodes as an array with NULLs.
    let result = sqlx::query!(
        r#"
        INSERT INTO audit_logs (
            event_id, schema_version, occurred_at, actor_id, actor_type, action,
            resource_type, resource_id, outcome, error_status, error_code,
            request_id, request_ip, user_agent, sequence, details, traceparent
        )
        SELECT * FROM UNNEST(
            $1::uuid[], $2::int4[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::int4[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::int8[], $16::jsonb[], $17::text[]
        )
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &event_ids,
        &schema_versions,
        &occurred_ats,
        &actor_ids as _,
        &actor_types as _,
        &actions as _,
        &resource_types as _,
        &resource_ids as _,
        &outcomes as _,
        &error_statuses as _,
        &error_codes as _,
        &request_ids as _,
        &request_ips as _,
        &user_agents as _,
        &sequences as _,
        &details as _,
        &traceparents as _,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Inserts dead letters with one statement. A body already waiting in the
/// table (not yet replayed) is not stored again: its row only records that it
/// was seen again. `letters` must not hold the same body twice, or Postgres
/// refuses the statement (one row cannot be updated twice by one command).
pub async fn insert_dead_letters(
    conn: &mut PgConnection,
    letters: &[DeadLetter<'_>],
) -> Result<(), sqlx::Error> {
    let message_ids: Vec<&str> = letters.iter().map(|l| l.message_id).collect();
    let bodies: Vec<&[u8]> = letters.iter().map(|l| l.body).collect();
    // Postgres text cannot hold NUL; an error message quoting input might.
    let errors: Vec<String> = letters
        .iter()
        .map(|l| l.error.replace('\0', "\\0"))
        .collect();
    let attempts: Vec<i32> = letters.iter().map(|l| i32::from(l.attempts)).collect();
    sqlx::query!(
        r#"
        INSERT INTO audit_dead_letters (message_id, body, error, attempts)
        SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::int4[])
        ON CONFLICT (body_sha256) WHERE replayed_at IS NULL
        DO UPDATE SET
            last_seen_at = now(),
            attempts = greatest(audit_dead_letters.attempts, excluded.attempts),
            message_id = excluded.message_id,
            error = excluded.error
        "#,
        &message_ids as _,
        &bodies as _,
        &errors,
        &attempts,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the database is there for the consumer, within `timeout`: it
/// answers, both tables exist, and our user may write them. The start-up
/// check, the probe while paused, and `/readyz` all ask this, so "the
/// database answers" always means "a batch could be stored".
pub async fn check(pool: &PgPool, timeout: Duration) -> Result<(), DatabaseError> {
    // `has_table_privilege` fails with 42P01 for a table that does not
    // exist, and says false for one we may not write.
    let query = sqlx::query!(
        r#"
        SELECT has_table_privilege('audit_logs', 'INSERT') AS logs_insert,
               has_table_privilege('audit_dead_letters', 'INSERT') AS letters_insert,
               has_table_privilege('audit_dead_letters', 'UPDATE') AS letters_update
        "#
    )
    .fetch_one(pool);
    let row = match tokio::time::timeout(timeout, query).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => return Err(DatabaseError::from_sqlx(&e)),
        Err(_) => {
            return Err(DatabaseError {
                kind: Failure::Unavailable,
                message: format!("the database did not answer within {timeout:?}"),
            })
        }
    };
    let missing: Vec<&str> = [
        (row.logs_insert, "INSERT on audit_logs"),
        (row.letters_insert, "INSERT on audit_dead_letters"),
        (row.letters_update, "UPDATE on audit_dead_letters"),
    ]
    .into_iter()
    .filter(|(granted, _)| *granted != Some(true))
    .map(|(_, privilege)| privilege)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DatabaseError {
            kind: Failure::Configuration,
            message: format!(
                "the DATABASE_URL user lacks {}; grant it, or connect as the owner of the tables",
                missing.join(", ")
            ),
        })
    }
}

/// A failed statement, classified, with a one-line text for the log (and,
/// for a configuration error, a hint at what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DatabaseError {
    pub kind: Failure,
    pub message: String,
}

impl DatabaseError {
    pub fn from_sqlx(error: &sqlx::Error) -> DatabaseError {
        let kind = Failure::of(error);
        let text = one_line(&error.to_string());
        let code = match error {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        let hint = match code.as_deref() {
            _ if kind != Failure::Configuration => None,
            Some(c) if c.starts_with("28") => Some("check the user and password in DATABASE_URL"),
            Some("3D000") => Some("check the database name in DATABASE_URL"),
            Some("42P01") => Some(
                "apply the audit migrations (`audit-consumer migrate`, or RUN_MIGRATIONS=true)",
            ),
            Some("42501") => Some(
                "the DATABASE_URL user needs SELECT, INSERT and UPDATE on audit_logs and \
                 audit_dead_letters",
            ),
            _ => None,
        };
        let message = match (code, hint) {
            (Some(code), Some(hint)) => format!("{text} (SQLSTATE {code}); {hint}"),
            (Some(code), None) => format!("{text} (SQLSTATE {code})"),
            (None, _) => text,
        };
        DatabaseError { kind, message }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a failed statement tells us about what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database is away, overloaded or asked us to retry: nothing is
    /// wrong with the data. Retry later, and stop taking messages meanwhile.
    Unavailable,
    /// The database refused a value (data exception, constraint violation):
    /// retrying the same row fails the same way. Find the row, dead-letter it.
    Refused,
    /// The database is there but not usable by us: wrong credentials, no
    /// such database, a missing table or column, a missing privilege.
    /// Nothing is wrong with the messages, so none is dead-lettered: at
    /// start-up the consumer stops with one line saying what to fix; later
    /// it pauses, as for an outage, until an operator fixes it.
    Configuration,
    /// Anything else (a trigger raising an error, a bug). It may or may not
    /// be about one row, so find the row, and retry it until
    /// `NSQ_MAX_ATTEMPTS` before dead-lettering it.
    Other,
}

impl Failure {
    pub fn of(error: &sqlx::Error) -> Failure {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Failure::Unavailable,
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => Failure::of_sqlstate(&code),
                None => Failure::Other,
            },
            sqlx::Error::Encode(_) => Failure::Refused,
            sqlx::Error::Configuration(_) => Failure::Configuration,
            _ => Failure::Other,
        }
    }

    /// Classifies a Postgres SQLSTATE (appendix A of the Postgres manual).
    pub fn of_sqlstate(code: &str) -> Failure {
        match code {
            // 08: connection exception. 53: insufficient resources (disk
            // full, out of memory, too many connections). 57P0x: the server
            // is shutting down, crashed or starting. 40001/40P01:
            // serialization failure and deadlock, retry by definition.
            // 25006: a read-only transaction, i.e. we reached a standby
            // during a failover. 55P03: lock not available.
            c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P0") => {
                Failure::Unavailable
            }
            "40001" | "40P01" | "25006" | "55P03" => Failure::Unavailable,
            // 22: data exception (value out of range, bad encoding).
            // 23: integrity constraint violation (check, not null).
            c if c.starts_with("22") || c.starts_with("23") => Failure::Refused,
            // 28: invalid authorization. 3D000: no such database. 3F000: no
            // such schema. 42: our statements are fixed and checked at
            // compile time, so "undefined table/column" or "permission
            // denied" means the database is not the one they were built for.
            c if c.starts_with("28") || c.starts_with("42") => Failure::Configuration,
            "3D000" | "3F000" => Failure::Configuration,
            _ => Failure::Other,
        }
    }

    /// The label of the class in `/metrics` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::Refused => "refused",
            Failure::Configuration => "configuration",
            Failure::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_what_retrying_can_fix() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "57P03", "40001", "40P01",
        ] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Unavailable, "{code}");
        }
        for code in ["22008", "22021", "23514", "23502"] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Refused, "{code}");
        }
        for code in ["28P01", "28000", "3D000", "42P01", "42501", "42703"] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Configuration, "{code}");
        }
        for code in ["P0001", "XX000"] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Other, "{code}");
        }
    }

    #[test]
    fn a_refused_connection_or_an_exhausted_pool_means_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::of(&sqlx::Error::Io(refused)), Failure::Unavailable);
        assert_eq!(
            Failure::of(&sqlx::Error::PoolTimedOut),
            Failure::Unavailable
        );
        assert_eq!(
            Failure::of(&sqlx::Error::Protocol("unexpected".into())),
            Failure::Other
        );
    }
}
