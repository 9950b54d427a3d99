//! Events shaped like the API's: the same actions, outcomes and field sizes,
//! for preloading nsqd and the outbox.

use audit_event::{
    Actor, ActorType, AuditEvent, EventError, Outcome, RequestInfo, Resource, SCHEMA_VERSION,
};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

/// A small deterministic generator (xorshift64*), so two runs preload the
/// same mix.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The id of preloaded account `n` (1-based). pgbench builds the same text
/// from its random number, so both loads address the same rows.
pub fn account_id(n: u64) -> Uuid {
    // 48 bits of `n` in the last group of a version-4-shaped UUID.
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | u128::from(n & 0xFFFF_FFFF_FFFF))
}

/// The SQL expression pgbench uses for [`account_id`] of `:aid`.
pub const PGBENCH_ACCOUNT_ID: &str =
    "('00000000-0000-4000-8000-' || lpad(to_hex(:aid::int8), 12, '0'))::uuid";

/// `n` events of `accounts` accounts: mostly successful changes, one in ten
/// rejected, as a busy API would write them.
pub fn events(n: usize, accounts: u64, seed: u64) -> Vec<AuditEvent> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let account = account_id(1 + rng.below(accounts));
            let rejected = rng.below(10) == 0;
            let (verb, details) = match rng.below(4) {
                0 => (
                    "rename",
                    json!({"name": format!("Account {}", rng.below(100_000))}),
                ),
                1 => ("suspend", json!({"reason": "payment overdue"})),
                2 => ("reactivate", json!({})),
                _ => ("close", json!({"reason": "customer request"})),
            };
            let (actor, kind) = if rng.below(2) == 0 {
                ("alice", ActorType::User)
            } else {
                ("billing-service", ActorType::Service)
            };
            AuditEvent {
                event_id: Uuid::now_v7(),
                schema_version: SCHEMA_VERSION,
                occurred_at: Utc::now(),
                actor: Actor {
                    id: actor.into(),
                    kind,
                },
                action: format!("account.{verb}"),
                resource: Resource {
                    kind: "account".into(),
                    id: account.to_string(),
                },
                outcome: if rejected {
                    Outcome::Rejected
                } else {
                    Outcome::Succeeded
                },
                error: rejected.then(|| EventError {
                    status: 409,
                    code: "invalid_transition".into(),
                }),
                request: RequestInfo {
                    id: format!("bench-preload-{i}"),
                    ip: Some("127.0.0.1".into()),
                    user_agent: Some("audit-trail-bench".into()),
                },
                sequence: (!rejected).then(|| 2 + rng.below(50) as i64),
                details,
                traceparent: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_are_valid_and_round_trip() {
        for event in events(200, 50, 7) {
            let parsed = AuditEvent::parse(event.to_json().as_bytes()).unwrap();
            assert_eq!(parsed.event_id, event.event_id);
        }
    }

    #[test]
    fn account_ids_match_the_text_pgbench_builds() {
        assert_eq!(
            account_id(1).to_string(),
            "00000000-0000-4000-8000-000000000001"
        );
        assert_eq!(
            account_id(0xabcdef).to_string(),
            "00000000-0000-4000-8000-000000abcdef"
        );
    }
}
