//! `Idempotency-Key`: the first response to a request, replayed to its
//! retries; and the SQL of the `idempotency_keys` table.
//!
//! A key belongs to an actor: the same key from another actor is another
//! key. Within one actor:
//!
//! - no stored response for the key: the request runs, and its response is
//!   stored in the transaction that commits its outcome (the change and its
//!   event, or the event of the refusal);
//! - a stored response and the same request (method, path and body, byte for
//!   byte): the stored response is sent again with `Idempotent-Replayed:
//!   true`, and nothing is changed or audited;
//! - a stored response and a different request: 422, audited;
//! - the first request still running: 409, audited.
//!
//! "Still running" is a transaction-level advisory lock on the key, taken
//! without waiting (`pg_try_advisory_xact_lock`) by the transaction that will
//! store the response. Postgres drops it with the transaction, whether that
//! commits, rolls back, or dies with its connection or the whole process, so
//! a key can never stay "in flight" after a crash; and since the lock is
//! released only after the commit is visible, a retry that gets the lock
//! always sees the stored response.
//!
//! What is not stored: a response that wrote nothing (401, 429, 503, and the
//! 409 and 422 of this module, which answer for the key rather than for the
//! request) and a 413, whose body was not read, so no request hash exists.
//! Stored responses expire after `IDEMPOTENCY_KEY_TTL_HOURS` (24 by
//! default): a lookup ignores older rows, and [`run`] deletes them.

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use sha2::{Digest, Sha256};
use slog::Logger;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::auth::Actor;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header on a replayed response.
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest key, in bytes (visible ASCII: one byte per character).
pub const MAX_KEY_LEN: usize = 255;

/// A valid key: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a header value; `None` when it is not a valid key.
    pub fn parse(value: &HeaderValue) -> Option<IdempotencyKey> {
        let bytes = value.as_bytes();
        let valid =
            (1..=MAX_KEY_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);
        valid
            .then(|| std::str::from_utf8(bytes).ok())
            .flatten()
            .map(|s| IdempotencyKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies "the same request": SHA-256 over the method, the path
/// with its query, and the body, each length-prefixed so that no two
/// different requests hash the same input.
pub fn request_hash(method: &str, path_and_query: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [method.as_bytes(), path_and_query.as_bytes(), body] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The advisory lock of an actor's key: 64 bits of a SHA-256 over the actor
/// and the key. Two keys sharing a lock (a 2^-64 chance) would only make one
/// wait for the other with a 409.
pub fn lock_id(actor: &Actor, key: &IdempotencyKey) -> i64 {
    let mut hasher = Sha256::new();
    for part in [
        b"idempotency-key".as_slice(),
        actor.kind.as_str().as_bytes(),
        actor.id.as_bytes(),
        key.as_str().as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// A response in the form it is stored and replayed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type: content_type.to_owned(),
            body: body.into(),
        }
    }

    pub fn to_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .content_type(self.content_type.as_str())
            .body(self.body.clone())
    }

    /// The stored response, marked as a replay.
    pub fn to_replay(&self) -> HttpResponse {
        let mut response = self.to_response();
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        response
    }
}

/// Takes the key's lock for the rest of `tx`, without waiting; `false` when
/// another transaction holds it (the first request is still running).
pub async fn try_lock(tx: &mut PgConnection, lock_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
        lock_id
    )
    .fetch_one(&mut *tx)
    .await
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub request_hash: Vec<u8>,
    pub reply: Reply,
}

/// The response stored for the key within the last `ttl`, if any.
pub async fn find(
    tx: &mut PgConnection,
    actor: &Actor,
    key: &IdempotencyKey,
    ttl: Duration,
) -> Result<Option<Stored>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT request_hash, response_status, response_headers, response_body
        FROM idempotency_keys
        WHERE actor_type = $1 AND actor_id = $2 AND key = $3
          AND created_at > now() - make_interval(secs => $4::float8)
        "#,
        actor.kind.as_str(),
        actor.id,
        key.as_str(),
        ttl.as_secs_f64(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    // The CHECK constraint keeps the status in range; a row edited by hand
    // into nonsense is reported rather than replayed.
    let status = u16::try_from(row.response_status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            sqlx::Error::Decode("idempotency_keys.response_status out of range".into())
        })?;
    let content_type = row
        .response_headers
        .get("content-type")
        .and_then(|v| v.as_str())
        .unwrap_or("application/octet-stream")
        .to_owned();
    Ok(Some(Stored {
        request_hash: row.request_hash,
        reply: Reply {
            status,
            content_type,
            body: Bytes::from(row.response_body),
        },
    }))
}

/// Stores the response of the key in the caller's transaction, which must
/// hold the key's lock ([`try_lock`]). A row left from an expired use of the
/// key is replaced: [`find`] no longer answers with it.
pub async fn store(
    tx: &mut PgConnection,
    actor: &Actor,
    key: &IdempotencyKey,
    request_hash: &[u8; 32],
    reply: &Reply,
) -> Result<(), sqlx::Error> {
    let headers = serde_json::json!({ "content-type": reply.content_type });
    sqlx::query!(
        r#"
        INSERT INTO idempotency_keys
            (actor_type, actor_id, key, request_hash, response_status,
             response_headers, response_body, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, now())
        ON CONFLICT (actor_type, actor_id, key) DO UPDATE
        SET request_hash = EXCLUDED.request_hash,
            response_status = EXCLUDED.response_status,
            response_headers = EXCLUDED.response_headers,
            response_body = EXCLUDED.response_body,
            created_at = EXCLUDED.created_at
        "#,
        actor.kind.as_str(),
        actor.id,
        key.as_str(),
        request_hash.as_slice(),
        reply.status.as_u16() as i16,
        headers,
        reply.body.as_ref(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Keys deleted per statement.
pub const BATCH: i64 = 1000;
/// Rest between two batches of one sweep.
const PAUSE: Duration = Duration::from_millis(50);
/// Time between sweeps; the window is a day, so minutes of slack are fine.
const INTERVAL: Duration = Duration::from_secs(60);

/// Deletes up to [`BATCH`] keys older than `ttl`, oldest first, skipping
/// rows a request is replacing; returns how many.
pub async fn delete_expired_once(pool: &PgPool, ttl: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        WITH doomed AS MATERIALIZED (
            SELECT actor_type, actor_id, key FROM idempotency_keys
            WHERE created_at <= statement_timestamp() - make_interval(secs => $1::float8)
            ORDER BY created_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        DELETE FROM idempotency_keys k USING doomed d
        WHERE k.actor_type = d.actor_type AND k.actor_id = d.actor_id AND k.key = d.key
        "#,
        ttl.as_secs_f64(),
        BATCH,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes expired keys every [`INTERVAL`], in batches, until `shutdown`
/// is cancelled; stops only between batches. Every API process may run it.
pub async fn run(pool: PgPool, ttl: Duration, logger: Logger, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        let mut swept = 0;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match delete_expired_once(&pool, ttl).await {
                Ok(deleted) => {
                    failing = false;
                    swept += deleted;
                    if deleted < BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    if !failing {
                        slog::warn!(logger, "cannot delete expired idempotency keys; retrying later";
                            "error" => %error);
                        failing = true;
                    }
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(PAUSE) => {}
                () = shutdown.cancelled() => return,
            }
        }
        if swept > 0 {
            slog::debug!(logger, "deleted expired idempotency keys"; "deleted" => swept);
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_event::ActorType;

    fn key(value: &[u8]) -> Option<IdempotencyKey> {
        IdempotencyKey::parse(&HeaderValue::from_bytes(value).unwrap())
    }

    #[test]
    fn keys_are_1_to_255_visible_ascii_characters() {
        assert_eq!(key(b"order-42_!~").unwrap().as_str(), "order-42_!~");
        assert!(key(&[b'k'; 255]).is_some());
        for bad in [
            &b""[..],
            &[b'k'; 256],
            b"with space",
            b"tab\t",
            b"caf\xc3\xa9",
        ] {
            assert!(key(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_request_hash_separates_method_path_and_body() {
        let base = request_hash("POST", "/a", b"{}");
        assert_eq!(base, request_hash("POST", "/a", b"{}"));
        assert_ne!(base, request_hash("POST", "/a", b"{ }"));
        assert_ne!(base, request_hash("POST", "/b", b"{}"));
        assert_ne!(base, request_hash("PUT", "/a", b"{}"));
        // Moving bytes between the parts changes the hash.
        assert_ne!(
            request_hash("POST", "/a{", b"}"),
            request_hash("POST", "/a", b"{}")
        );
    }

    #[test]
    fn a_key_locks_per_actor() {
        let alice = Actor {
            id: "alice".into(),
            kind: ActorType::User,
        };
        let service = Actor {
            id: "alice".into(),
            kind: ActorType::Service,
        };
        let k = key(b"k1").unwrap();
        assert_eq!(lock_id(&alice, &k), lock_id(&alice, &k));
        assert_ne!(lock_id(&alice, &k), lock_id(&service, &k));
        assert_ne!(lock_id(&alice, &k), lock_id(&alice, &key(b"k2").unwrap()));
    }
}
