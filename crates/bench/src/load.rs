//! The HTTP load: renames of preloaded accounts, the API's
//! UPDATE-plus-outbox path, sent closed-loop (N clients, each waiting for
//! its answer) or open-loop (a fixed schedule, whatever the answers).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use audit_event::ActorType;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::events::{account_id, Rng};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: requests outstanding at most; beyond it the schedule's
/// requests are counted as skipped instead of piling up without bound.
const MAX_OUTSTANDING: usize = 2_000;

/// Actors the load is spread over. The API limits each actor's rate
/// (`RATE_LIMIT_PER_SECOND`, 100 by default); over this many actors no
/// actor comes near it at any rate this machine reaches, so the limiter is
/// on, as deployed, and costs what it costs, but never refuses.
pub const ACTORS: usize = 1_000;

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    /// A token for each of [`ACTORS`] actors.
    pub tokens: Arc<Vec<String>>,
    /// Accounts 1..=accounts exist (preloaded).
    pub accounts: u64,
}

impl Target {
    pub fn new(base: &str, accounts: u64) -> anyhow::Result<Target> {
        let secret = accounts_api::config::JwtSecret::new(crate::services::JWT_SECRET)
            .map_err(|reason| anyhow::anyhow!("the bench's JWT secret: {reason}"))?;
        let tokens = (0..ACTORS)
            .map(|n| {
                accounts_api::issue_token(
                    &secret,
                    &format!("bench-{n}"),
                    ActorType::Service,
                    Duration::from_secs(6 * 3600),
                    None,
                    None,
                )
            })
            .collect();
        Ok(Target {
            base: base.to_owned(),
            tokens: Arc::new(tokens),
            accounts,
        })
    }
}

pub fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// One rename of `account` by actor `actor`; `true` when the API accepted
/// it (2xx).
async fn rename(
    client: &reqwest::Client,
    target: &Target,
    account: u64,
    actor: usize,
    request_id: Option<String>,
) -> bool {
    let url = format!("{}/accounts/{}/actions", target.base, account_id(account));
    let body = format!(r#"{{"action":"rename","params":{{"name":"Bench {account}"}}}}"#);
    let token = &target.tokens[actor % target.tokens.len()];
    let mut request = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body);
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    match request.send().await {
        // The body is read so that the connection can be reused.
        Ok(response) => {
            let ok = response.status().is_success();
            ok && response.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClosedLoop {
    pub accepted: u64,
    pub failed: u64,
    pub seconds: f64,
}

impl ClosedLoop {
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted as f64 / self.seconds.max(1e-9)
    }
}

/// `clients` loops, each sending its next request when the last one is
/// answered. Requests finished during `warmup` are not counted; `on_window`
/// runs at the start and at the end of the measured window (CPU samples).
pub async fn closed_loop<F>(
    client: &reqwest::Client,
    target: &Target,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    mut on_window: F,
) -> anyhow::Result<ClosedLoop>
where
    F: FnMut(),
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..clients {
        let (client, target) = (client.clone(), target.clone());
        let (measuring, stop) = (measuring.clone(), stop.clone());
        let (accepted, failed) = (accepted.clone(), failed.clone());
        workers.spawn(async move {
            let mut rng = Rng::new(0x9E37_79B9 ^ worker as u64);
            while !stop.load(Ordering::Relaxed) {
                let account = 1 + rng.below(target.accounts);
                let actor = rng.below(ACTORS as u64) as usize;
                let ok = rename(&client, &target, account, actor, None).await;
                if measuring.load(Ordering::Relaxed) {
                    if ok { &accepted } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(warmup).await;
    on_window();
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    on_window();
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = workers.join_next().await {
        joined.context("a load worker panicked")?;
    }
    Ok(ClosedLoop {
        accepted: accepted.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenLoop {
    /// Requests due by the schedule.
    pub scheduled: u64,
    pub accepted: u64,
    pub failed: u64,
    /// Not sent because MAX_OUTSTANDING requests were already waiting.
    pub skipped: u64,
    pub seconds: f64,
    /// Time from each accepted request's scheduled start to its answer
    /// (so a stalled client cannot hide queueing), sorted.
    pub response_times: Vec<Duration>,
}

/// Sends `rate` requests per second for `duration` on a fixed schedule,
/// tagged `X-Request-Id: <prefix><n>`, and waits for the answers.
pub async fn open_loop(
    client: &reqwest::Client,
    target: &Target,
    rate: f64,
    duration: Duration,
    prefix: &str,
) -> anyhow::Result<OpenLoop> {
    let rate = rate.max(1.0);
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut rng = Rng::new(0xC0FF_EE00 ^ total);
    let mut requests: JoinSet<(bool, Duration)> = JoinSet::new();
    let mut outcome = OpenLoop {
        scheduled: total,
        accepted: 0,
        failed: 0,
        skipped: 0,
        seconds: 0.0,
        response_times: Vec::with_capacity(total as usize),
    };
    let record = |outcome: &mut OpenLoop, joined: Result<(bool, Duration), _>| match joined {
        Ok((true, elapsed)) => {
            outcome.accepted += 1;
            outcome.response_times.push(elapsed);
        }
        _ => outcome.failed += 1,
    };
    let started = Instant::now();
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        while let Some(joined) = requests.try_join_next() {
            record(&mut outcome, joined);
        }
        if requests.len() >= MAX_OUTSTANDING {
            outcome.skipped += 1;
            continue;
        }
        let (client, target) = (client.clone(), target.clone());
        let account = 1 + rng.below(target.accounts);
        let actor = rng.below(ACTORS as u64) as usize;
        let id = format!("{prefix}{n}");
        requests.spawn(async move {
            let ok = rename(&client, &target, account, actor, Some(id)).await;
            (ok, due.elapsed())
        });
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    while let Some(joined) = requests.join_next().await {
        record(&mut outcome, joined);
    }
    outcome.response_times.sort();
    Ok(outcome)
}

/// The nearest-rank percentile `q` (0..=1) of sorted `values`.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&values, 1.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.99), Some(7));
    }
}
