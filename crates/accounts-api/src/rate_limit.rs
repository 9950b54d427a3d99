//! The per-actor rate limit: `RATE_LIMIT_PER_SECOND` requests per second on
//! average, bursts of up to `RATE_LIMIT_BURST`; over it, 429 with
//! `Retry-After`.
//!
//! A generic cell rate algorithm (GCRA, the token bucket written as one
//! timestamp per actor): each actor has a "theoretical arrival time" that
//! every admitted request pushes one interval further; a request is refused
//! when that time would run more than a burst's worth of intervals ahead of
//! now. Refusals do not move it, so a client that keeps hammering is
//! admitted again as soon as its average falls back under the rate.
//!
//! The limit is counted per process: with several API processes behind a
//! balancer an actor gets the rate from each. It is checked right after the
//! token, before anything touches the database, and a refusal writes
//! nothing (not even an audit event: a limiter that wrote a row per refused
//! request would protect nothing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Actor;

/// Actors whose allowance is full again are forgotten when the map grows
/// past this many entries (and past twice the size left after the previous
/// sweep), so memory follows the number of recently active actors.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Admitted requests per second, on average, per actor.
    pub per_second: u32,
    /// Requests admitted at once from an actor that was idle.
    pub burst: u32,
}

/// The limiter; one per process, shared by every worker.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time per admitted request: 1 / rate.
    interval: Duration,
    /// How far ahead of now an actor's arrival time may run: burst × interval.
    tolerance: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Each actor's theoretical arrival time.
    arrivals: HashMap<(&'static str, String), Instant>,
    sweep_at: usize,
}

impl RateLimiter {
    /// `per_second` and `burst` are at least 1 (the configuration makes
    /// sure; a limit of 0, "off", means no limiter at all).
    pub fn new(settings: Settings) -> RateLimiter {
        let interval = Duration::from_secs(1) / settings.per_second.max(1);
        RateLimiter {
            interval,
            tolerance: interval * settings.burst.max(1),
            state: Mutex::new(State {
                arrivals: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// Admits a request of `actor` now, or says how long to wait.
    pub fn check(&self, actor: &Actor) -> Result<(), Duration> {
        self.check_at(actor, Instant::now())
    }

    /// [`check`](Self::check) at a given time (tests).
    pub fn check_at(&self, actor: &Actor, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another thread panicked between two
        // plain map operations; the map itself is still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (actor.kind.as_str(), actor.id.clone());
        let arrival = state.arrivals.get(&key).copied().unwrap_or(now).max(now);
        let next = arrival + self.interval;
        let ahead = next - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        state.arrivals.insert(key, next);
        if state.arrivals.len() > state.sweep_at {
            state.arrivals.retain(|_, arrival| *arrival > now);
            state.sweep_at = SWEEP_AT.max(state.arrivals.len() * 2);
        }
        Ok(())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .arrivals
            .len()
    }
}

/// Whole seconds to wait, rounded up and at least 1: what `Retry-After`
/// carries.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_event::ActorType;

    fn actor(id: &str) -> Actor {
        Actor {
            id: id.into(),
            kind: ActorType::User,
        }
    }

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(Settings { per_second, burst })
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        let limiter = limiter(10, 5);
        let alice = actor("alice");
        let t0 = Instant::now();
        for n in 0..5 {
            assert!(limiter.check_at(&alice, t0).is_ok(), "request {n}");
        }
        let wait = limiter.check_at(&alice, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // After one interval, exactly one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check_at(&alice, t1).is_ok());
        assert!(limiter.check_at(&alice, t1).is_err());
    }

    #[test]
    fn actors_are_limited_separately_and_by_type() {
        let limiter = limiter(1, 1);
        let t0 = Instant::now();
        assert!(limiter.check_at(&actor("alice"), t0).is_ok());
        assert!(limiter.check_at(&actor("alice"), t0).is_err());
        assert!(limiter.check_at(&actor("bob"), t0).is_ok());
        let service = Actor {
            id: "alice".into(),
            kind: ActorType::Service,
        };
        assert!(limiter.check_at(&service, t0).is_ok());
    }

    #[test]
    fn refused_requests_do_not_push_the_allowance_further() {
        let limiter = limiter(1, 1);
        let alice = actor("alice");
        let t0 = Instant::now();
        assert!(limiter.check_at(&alice, t0).is_ok());
        for _ in 0..100 {
            assert!(limiter.check_at(&alice, t0).is_err());
        }
        assert!(limiter
            .check_at(&alice, t0 + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn idle_actors_are_forgotten_when_the_map_grows() {
        let limiter = limiter(1000, 1);
        let t0 = Instant::now();
        for n in 0..SWEEP_AT {
            assert!(limiter.check_at(&actor(&n.to_string()), t0).is_ok());
        }
        // A second later every one of them is idle; the insertion that takes
        // the map past the threshold sweeps them.
        let later = t0 + Duration::from_secs(1);
        assert!(limiter.check_at(&actor("new"), later).is_ok());
        assert!(limiter.tracked() <= 1, "{}", limiter.tracked());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
