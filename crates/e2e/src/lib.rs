//! End-to-end check of the audit invariant, from outside the services.
//!
//! [`drive`] sends a mix of requests to a running accounts-api — the five
//! actions, valid and invalid, from a user and a service actor, and some
//! without a valid token — and records, from each response, what the audit
//! trail must now hold for it. [`verify`] then waits for the consumer to store
//! the events and compares `audit_logs` with those expectations: exactly one
//! row per request that carried a valid token, none for the others, and for a
//! success the event id and account version the response showed.
//!
//! Each run tags its requests with `X-Request-Id: e2e-<run>-<n>`, so runs never
//! see each other's rows. The same code serves the `e2e` binary (`just verify`
//! against `just dev`) and the end-to-end test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

/// Where the API is and how to sign its tokens.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `http://127.0.0.1:8080`
    pub api_base: String,
    pub jwt_secret: String,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
}

/// What one request must have left in the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// No valid token: no event.
    NoEvent,
    /// Over the actor's rate limit (429): refused before it reached the
    /// route, so no event either.
    RateLimited,
    Succeeded {
        event_id: Uuid,
        version: i64,
        actor: String,
        action: String,
    },
    Rejected {
        status: u16,
        actor: String,
    },
}

#[derive(Debug, Clone)]
pub struct Expectation {
    pub request_id: String,
    pub expected: Expected,
}

/// The tally of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub requests: usize,
    pub without_valid_token: usize,
    pub rate_limited: usize,
    pub succeeded: usize,
    pub rejected: usize,
    /// Rows found for this run in `audit_logs`.
    pub rows: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests: {} succeeded, {} rejected, {} without a valid token",
            self.requests, self.succeeded, self.rejected, self.without_valid_token
        )?;
        if self.rate_limited > 0 {
            write!(f, ", {} rate limited (429, not audited)", self.rate_limited)?;
        }
        write!(f, "; {} audit rows, one per audited request", self.rows)
    }
}

const USER: &str = "alice";
const SERVICE: &str = "billing-service";

/// A small deterministic generator (xorshift64*), so a failing run can be
/// repeated with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One planned request.
#[derive(Debug, Clone)]
struct Planned {
    request_id: String,
    token: Option<String>,
    /// The actor of a valid token, `None` when the token is absent or invalid.
    actor: Option<&'static str>,
    path_id: String,
    content_type: &'static str,
    body: Vec<u8>,
}

fn token(target: &Target, actor: &str, actor_type: &str, secret: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let mut claims = json!({"sub": actor, "exp": exp, "actor_type": actor_type});
    if let Some(iss) = &target.jwt_issuer {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = &target.jwt_audience {
        claims["aud"] = json!(aud);
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn plan(target: &Target, run: &str, requests: usize, seed: u64) -> anyhow::Result<Vec<Planned>> {
    let user = token(target, USER, "user", &target.jwt_secret)?;
    let service = token(target, SERVICE, "service", &target.jwt_secret)?;
    let forged = token(target, USER, "user", "not-the-secret-not-the-secret-00")?;
    let mut rng = Rng(seed | 1);
    // A small pool of accounts so that actions meet every state: open,
    // suspended, closed, and missing.
    let accounts: Vec<Uuid> = (0..(requests / 20).clamp(3, 40))
        .map(|_| Uuid::new_v4())
        .collect();

    let mut planned = Vec::with_capacity(requests);
    for n in 0..requests {
        let request_id = format!("e2e-{run}-{n}");
        let (token, actor) = match rng.below(100) {
            0..=5 => (None, None),
            6..=8 => (Some(forged.clone()), None),
            9..=49 => (Some(service.clone()), Some(SERVICE)),
            _ => (Some(user.clone()), Some(USER)),
        };
        let path_id = match rng.below(100) {
            0..=2 => "not-a-uuid".to_owned(),
            3..=6 => Uuid::new_v4().to_string(),
            _ => accounts[rng.below(accounts.len() as u64) as usize].to_string(),
        };
        let name = format!("Account {}", rng.below(1000));
        let (content_type, body) = match rng.below(100) {
            0..=19 => (
                "application/json",
                json!({"action": "open", "params": {"name": name}}),
            ),
            20..=39 => (
                "application/json",
                json!({"action": "rename", "params": {"name": name}}),
            ),
            40..=54 => (
                "application/json",
                json!({"action": "suspend", "params": {"reason": "review"}}),
            ),
            55..=69 => (
                "application/json",
                json!({"action": "reactivate", "params": {}}),
            ),
            70..=79 => (
                "application/json",
                json!({"action": "close", "params": {"reason": "done"}}),
            ),
            80..=84 => ("application/json", json!({"action": "close", "params": {}})),
            85..=87 => (
                "application/json",
                json!({"action": "delete", "params": {}}),
            ),
            88..=90 => (
                "application/json",
                json!({"action": "rename", "params": {"name": "   "}}),
            ),
            91..=93 => (
                "application/json",
                json!({"action": "rename", "params": {"name": name, "extra": 1}}),
            ),
            94..=96 => (
                "text/plain",
                json!({"action": "open", "params": {"name": name}}),
            ),
            _ => ("application/json", Value::String("{\"action\": ".into())),
        };
        let body = match body {
            Value::String(raw) => raw.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        planned.push(Planned {
            request_id,
            token,
            actor,
            path_id,
            content_type,
            body,
        });
    }
    Ok(planned)
}

/// Sends `requests` requests (at most `concurrency` at once) and returns what
/// each must have left behind. `run` tags the request ids; `seed` fixes the mix.
pub async fn drive(
    target: &Target,
    run: &str,
    requests: usize,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<Vec<Expectation>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let planned = plan(target, run, requests, seed)?;
    // Requests to one account must not overtake each other in a way that
    // makes the expectation ambiguous; they need not: each expectation is
    // read from the response itself, so any interleaving is fine.
    let results: Vec<anyhow::Result<Expectation>> = stream::iter(planned)
        .map(|p| send(&client, target, p))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn send(
    client: &reqwest::Client,
    target: &Target,
    p: Planned,
) -> anyhow::Result<Expectation> {
    let url = format!("{}/accounts/{}/actions", target.api_base, p.path_id);
    let mut request = client
        .post(&url)
        .header("content-type", p.content_type)
        .header("x-request-id", &p.request_id)
        .header("user-agent", "audit-trail-e2e")
        .body(p.body.clone());
    if let Some(token) = &p.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("request {} failed", p.request_id))?;
    let status = response.status().as_u16();
    let echoed = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if echoed.as_deref() != Some(p.request_id.as_str()) {
        bail!(
            "request {}: X-Request-Id echoed as {echoed:?}",
            p.request_id
        );
    }
    let expected = match (p.actor, status) {
        (None, 401) => Expected::NoEvent,
        (None, other) => bail!(
            "request {} without a valid token got {other}, expected 401",
            p.request_id
        ),
        (Some(actor), 200 | 201) => {
            let event_id = body["event_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .with_context(|| format!("request {}: no event_id in {body}", p.request_id))?;
            let version = body["account"]["version"]
                .as_i64()
                .with_context(|| format!("request {}: no version in {body}", p.request_id))?;
            let action: Value = serde_json::from_slice(&p.body)?;
            Expected::Succeeded {
                event_id,
                version,
                actor: actor.to_owned(),
                action: format!("account.{}", action["action"].as_str().unwrap_or_default()),
            }
        }
        (Some(_), 429) => Expected::RateLimited,
        (Some(actor), 400 | 404 | 409 | 413 | 415 | 422) => Expected::Rejected {
            status,
            actor: actor.to_owned(),
        },
        (Some(_), other) => bail!(
            "request {} got unexpected status {other}: {body}",
            p.request_id
        ),
    };
    Ok(Expectation {
        request_id: p.request_id,
        expected,
    })
}

/// Waits (up to `timeout`) until `audit_logs` holds a row for every
/// authenticated request of the run, then checks every row against its
/// expectation. Fails on a missing, duplicated, extra or wrong row.
pub async fn verify(
    audit: &sqlx::PgPool,
    run: &str,
    expectations: &[Expectation],
    timeout: Duration,
) -> anyhow::Result<Report> {
    let want = expectations
        .iter()
        .filter(|e| !matches!(e.expected, Expected::NoEvent | Expected::RateLimited))
        .count();
    let pattern = format!("e2e-{run}-%");
    let started = Instant::now();
    loop {
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM audit_logs WHERE request_id LIKE $1")
                .bind(&pattern)
                .fetch_one(audit)
                .await
                .context("counting audit rows")?;
        if count as usize >= want {
            break;
        }
        if started.elapsed() > timeout {
            bail!("after {timeout:?} only {count} of {want} audit rows arrived");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give stragglers (a duplicate, say) a moment to show themselves.
    tokio::time::sleep(Duration::from_millis(500)).await;

    type Row = (
        Uuid,
        String,
        String,
        String,
        Option<i32>,
        Option<i64>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, request_id, outcome, actor_id, error_status, sequence, action
         FROM audit_logs WHERE request_id LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(audit)
    .await
    .context("reading audit rows")?;

    let mut by_request: HashMap<&str, Vec<&Row>> = HashMap::new();
    for row in &rows {
        by_request.entry(row.1.as_str()).or_default().push(row);
    }
    let mut report = Report {
        requests: expectations.len(),
        rows: rows.len(),
        ..Report::default()
    };
    let mut problems = Vec::new();
    for e in expectations {
        let found = by_request.remove(e.request_id.as_str()).unwrap_or_default();
        match (&e.expected, found.as_slice()) {
            (Expected::NoEvent, []) => report.without_valid_token += 1,
            (Expected::NoEvent, rows) => problems.push(format!(
                "{}: no valid token, yet {} audit row(s)",
                e.request_id,
                rows.len()
            )),
            (Expected::RateLimited, []) => report.rate_limited += 1,
            (Expected::RateLimited, rows) => problems.push(format!(
                "{}: rate limited (429), yet {} audit row(s)",
                e.request_id,
                rows.len()
            )),
            (_, []) => problems.push(format!("{}: no audit row", e.request_id)),
            (
                Expected::Succeeded {
                    event_id,
                    version,
                    actor,
                    action,
                },
                [row],
            ) => {
                report.succeeded += 1;
                let ok = row.0 == *event_id
                    && row.2 == "succeeded"
                    && row.3 == *actor
                    && row.5 == Some(*version)
                    && row.6 == *action;
                if !ok {
                    problems.push(format!(
                        "{}: expected succeeded {action} by {actor} with event {event_id} version {version}, found {row:?}",
                        e.request_id
                    ));
                }
            }
            (Expected::Rejected { status, actor }, [row]) => {
                report.rejected += 1;
                let ok = row.2 == "rejected"
                    && row.3 == *actor
                    && row.4 == Some(i32::from(*status))
                    && row.5.is_none();
                if !ok {
                    problems.push(format!(
                        "{}: expected rejected with {status} by {actor}, found {row:?}",
                        e.request_id
                    ));
                }
            }
            (_, rows) => problems.push(format!(
                "{}: {} audit rows, expected one",
                e.request_id,
                rows.len()
            )),
        }
    }
    for (request_id, rows) in by_request {
        problems.push(format!(
            "{request_id}: {} audit row(s) for a request that was never sent",
            rows.len()
        ));
    }
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(20).cloned().collect();
        bail!(
            "{} problem(s) in the audit trail:\n{}",
            problems.len(),
            shown.join("\n")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            api_base: "http://127.0.0.1:1".into(),
            jwt_secret: "s".repeat(32),
            jwt_issuer: None,
            jwt_audience: None,
        }
    }

    #[test]
    fn the_plan_mixes_actors_tokens_and_actions() {
        let planned = plan(&target(), "t", 1000, 7).unwrap();
        assert_eq!(planned.len(), 1000);
        let without = planned.iter().filter(|p| p.actor.is_none()).count();
        let users = planned.iter().filter(|p| p.actor == Some(USER)).count();
        let services = planned.iter().filter(|p| p.actor == Some(SERVICE)).count();
        assert!(
            without > 30 && users > 300 && services > 300,
            "{without} {users} {services}"
        );
        for action in ["open", "rename", "suspend", "reactivate", "close", "delete"] {
            let needle = format!("\"action\":\"{action}\"");
            assert!(
                planned
                    .iter()
                    .any(|p| String::from_utf8_lossy(&p.body).contains(&needle)),
                "{action}"
            );
        }
        let ids: std::collections::HashSet<_> = planned.iter().map(|p| &p.request_id).collect();
        assert_eq!(ids.len(), 1000, "request ids are unique");
    }

    #[test]
    fn the_same_seed_gives_the_same_mix() {
        let a = plan(&target(), "t", 50, 9).unwrap();
        let b = plan(&target(), "t", 50, 9).unwrap();
        let shape = |p: &[Planned]| -> Vec<_> {
            p.iter()
                .map(|x| (x.actor, x.content_type, x.body.len()))
                .collect()
        };
        assert_eq!(shape(&a), shape(&b));
    }
}
