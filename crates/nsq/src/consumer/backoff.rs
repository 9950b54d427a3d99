//! Capped exponential backoff with jitter, for reconnecting.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// Called once a connection is up and subscribed.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait before the next attempt: `min * 2^failures` capped at `max`,
    /// then a random point in its upper half, so that consumers cut off
    /// together (an nsqd restart) do not all come back in the same instant.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        jitter(ceiling, random_u64())
    }

    fn ceiling(&self) -> Duration {
        let factor = 2u32.checked_pow(self.failures).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }
}

/// A point in `[ceiling / 2, ceiling]` chosen by `random`.
fn jitter(ceiling: Duration, random: u64) -> Duration {
    let half = ceiling / 2;
    let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    let offset = if span == 0 { 0 } else { random % (span + 1) };
    half + Duration::from_nanos(offset)
}

/// Randomness for jitter without a dependency: every `RandomState` is seeded
/// from the OS, then advanced per instance.
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_restart_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} vs {ceiling:?}"
                );
                ceiling.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_millis(1000));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let ceiling = Duration::from_millis(10);
        assert_eq!(jitter(ceiling, 0), Duration::from_millis(5));
        assert_eq!(jitter(ceiling, 5_000_000), ceiling);
        assert_eq!(jitter(Duration::ZERO, 7), Duration::ZERO);
    }
}
