//! The account state machine and the SQL of the `accounts` table.
//!
//! Plain functions over an open transaction; they know nothing about HTTP or
//! auditing (the caller records the outcome in the same transaction). Each
//! change locks the row (`SELECT … FOR UPDATE`) before deciding, so
//! concurrent changes to one account are serialized and `version` grows by
//! exactly one per change, without gaps.
//!
//! Invariant: a refusal ([`ChangeError`] other than `Database`) is decided
//! before the first write and no statement here fails on a refused value
//! (`open` uses `ON CONFLICT DO NOTHING`), so a refused change leaves the
//! caller's transaction usable and with nothing to undo: the caller records
//! the rejected attempt in it directly, without a savepoint.
//!
//! ```text
//!            open                suspend
//!  (none) ─────────► active ◄──────────────► suspended
//!                      │      reactivate         │
//!                      └──── close ──► closed ◄──┘ close
//! ```

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::AccountName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Closed => "closed",
        }
    }

    fn from_db(s: &str) -> Result<Status, sqlx::Error> {
        match s {
            "active" => Ok(Status::Active),
            "suspended" => Ok(Status::Suspended),
            "closed" => Ok(Status::Closed),
            // The CHECK constraint makes this unreachable short of a manual
            // edit; it is still reported rather than trusted.
            other => Err(sqlx::Error::Decode(
                format!("unknown account status {other:?}").into(),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A row as stored; `status` is checked on the way out.
struct Row {
    id: Uuid,
    name: String,
    status: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<Row> for Account {
    type Error = sqlx::Error;

    fn try_from(row: Row) -> Result<Account, sqlx::Error> {
        Ok(Account {
            id: row.id,
            name: row.name,
            status: Status::from_db(&row.status)?,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Why a change was refused, or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no account with this id")]
    NotFound,
    #[error("an account with this id already exists")]
    AlreadyExists,
    #[error("cannot {action} an account that is {from}")]
    InvalidTransition {
        action: &'static str,
        from: &'static str,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A change to the status of an existing account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Suspend,
    Reactivate,
    Close,
}

impl Transition {
    fn verb(self) -> &'static str {
        match self {
            Transition::Suspend => "suspend",
            Transition::Reactivate => "reactivate",
            Transition::Close => "close",
        }
    }
}

/// The state machine: the status after `transition`, or why not.
pub fn next_status(from: Status, transition: Transition) -> Result<Status, ChangeError> {
    match (transition, from) {
        (Transition::Suspend, Status::Active) => Ok(Status::Suspended),
        (Transition::Reactivate, Status::Suspended) => Ok(Status::Active),
        (Transition::Close, Status::Active | Status::Suspended) => Ok(Status::Closed),
        (transition, from) => Err(ChangeError::InvalidTransition {
            action: transition.verb(),
            from: from.as_str(),
        }),
    }
}

/// Creates an active account at version 1.
pub async fn open(
    tx: &mut PgConnection,
    id: Uuid,
    name: &AccountName,
) -> Result<Account, ChangeError> {
    // ON CONFLICT DO NOTHING rather than catching the unique violation: an
    // error would abort the transaction, and a concurrent open of the same
    // id waits for the first one's outcome instead of failing.
    let row = sqlx::query_as!(
        Row,
        r#"
        INSERT INTO accounts (id, name, status, version, created_at, updated_at)
        VALUES ($1, $2, 'active', 1, now(), now())
        ON CONFLICT (id) DO NOTHING
        RETURNING id, name, status, version, created_at, updated_at
        "#,
        id,
        name.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ChangeError::AlreadyExists)?;
    Ok(row.try_into()?)
}

/// Renames an account that is not closed.
pub async fn rename(
    tx: &mut PgConnection,
    id: Uuid,
    name: &AccountName,
) -> Result<Account, ChangeError> {
    let current = lock(tx, id).await?;
    if current.status == Status::Closed {
        return Err(ChangeError::InvalidTransition {
            action: "rename",
            from: Status::Closed.as_str(),
        });
    }
    update(tx, id, name.as_str(), current.status).await
}

/// Suspends, reactivates or closes an account.
pub async fn transition(
    tx: &mut PgConnection,
    id: Uuid,
    transition: Transition,
) -> Result<Account, ChangeError> {
    let current = lock(tx, id).await?;
    let status = next_status(current.status, transition)?;
    update(tx, id, &current.name, status).await
}

/// The account, locked until the end of the transaction.
async fn lock(tx: &mut PgConnection, id: Uuid) -> Result<Account, ChangeError> {
    let row = sqlx::query_as!(
        Row,
        r#"
        SELECT id, name, status, version, created_at, updated_at
        FROM accounts WHERE id = $1
        FOR UPDATE
        "#,
        id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ChangeError::NotFound)?;
    Ok(row.try_into()?)
}

async fn update(
    tx: &mut PgConnection,
    id: Uuid,
    name: &str,
    status: Status,
) -> Result<Account, ChangeError> {
    let row = sqlx::query_as!(
        Row,
        r#"
        UPDATE accounts
        SET name = $2, status = $3, version = version + 1, updated_at = now()
        WHERE id = $1
        RETURNING id, name, status, version, created_at, updated_at
        "#,
        id,
        name,
        status.as_str(),
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(row.try_into()?)
}

/// Reads an account without locking it (tests, future read routes).
pub async fn find(tx: &mut PgConnection, id: Uuid) -> Result<Option<Account>, sqlx::Error> {
    let Some(row) = sqlx::query_as!(
        Row,
        "SELECT id, name, status, version, created_at, updated_at FROM accounts WHERE id = $1",
        id,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(row.try_into()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_exactly_the_documented_transitions() {
        use Status::*;
        use Transition::*;
        let cases = [
            (Active, Suspend, Some(Suspended)),
            (Suspended, Suspend, None),
            (Closed, Suspend, None),
            (Active, Reactivate, None),
            (Suspended, Reactivate, Some(Active)),
            (Closed, Reactivate, None),
            (Active, Close, Some(Closed)),
            (Suspended, Close, Some(Closed)),
            (Closed, Close, None),
        ];
        for (from, transition, expected) in cases {
            assert_eq!(
                next_status(from, transition).ok(),
                expected,
                "{from:?} {transition:?}"
            );
        }
    }

    #[test]
    fn a_refused_transition_explains_itself() {
        let err = next_status(Status::Closed, Transition::Suspend).unwrap_err();
        assert_eq!(err.to_string(), "cannot suspend an account that is closed");
    }
}
