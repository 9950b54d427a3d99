//! The audit step of a request: turns the outcome of an attempt into an
//! [`AuditEvent`] and appends it to the outbox of the caller's transaction.
//!
//! Nothing here knows about accounts beyond the resource type the route
//! passes in, so a second audited resource reuses it unchanged.

use audit_event::{Actor, AuditEvent, EventError, Outcome, RequestInfo, Resource, SCHEMA_VERSION};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth;
use crate::domain::sanitize;
use crate::outbox;

/// Longest resource id recorded, in characters (a UUID has 36).
pub const MAX_RESOURCE_ID_CHARS: usize = 128;
/// Longest user agent recorded, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 512;

/// Who made the attempt, on what, from where: everything an event needs that
/// is known before the attempt is made.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub actor: auth::Actor,
    pub resource_type: &'static str,
    /// As sent by the client (already sanitized).
    pub resource_id: String,
    pub request: RequestInfo,
}

impl Attempt {
    pub fn new(
        actor: auth::Actor,
        resource_type: &'static str,
        raw_resource_id: &str,
        request_id: String,
        ip: Option<String>,
        raw_user_agent: Option<&str>,
    ) -> Attempt {
        Attempt {
            actor,
            resource_type,
            resource_id: sanitize(raw_resource_id, MAX_RESOURCE_ID_CHARS),
            request: RequestInfo {
                id: request_id,
                ip,
                user_agent: raw_user_agent
                    .map(|ua| sanitize(ua, MAX_USER_AGENT_CHARS))
                    .filter(|ua| !ua.trim().is_empty()),
            },
        }
    }

    /// The event of a change that is about to commit.
    pub fn succeeded(&self, verb: &str, sequence: i64, details: serde_json::Value) -> AuditEvent {
        self.event(verb, Outcome::Succeeded, None, Some(sequence), details)
    }

    /// The event of a refused attempt.
    pub fn rejected(
        &self,
        verb: &str,
        error: EventError,
        details: serde_json::Value,
    ) -> AuditEvent {
        self.event(verb, Outcome::Rejected, Some(error), None, details)
    }

    fn event(
        &self,
        verb: &str,
        outcome: Outcome,
        error: Option<EventError>,
        sequence: Option<i64>,
        details: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::now_v7(),
            schema_version: SCHEMA_VERSION,
            occurred_at: chrono::Utc::now(),
            actor: Actor {
                id: self.actor.id.clone(),
                kind: self.actor.kind,
            },
            action: format!("{}.{verb}", self.resource_type),
            resource: Resource {
                kind: self.resource_type.to_owned(),
                id: self.resource_id.clone(),
            },
            outcome,
            error,
            request: self.request.clone(),
            sequence,
            details,
            // The request's span, so the consumer's spans join its trace.
            traceparent: crate::trace::current_traceparent(),
        }
    }
}

/// Appends `event` to the outbox in the caller's transaction. An event that
/// fails its own validation is a bug here, and is refused rather than handed
/// to the consumer, which would dead-letter it.
pub async fn record(tx: &mut PgConnection, event: &AuditEvent) -> Result<(), RecordError> {
    event.validate().map_err(RecordError::Invalid)?;
    outbox::append(tx, event).await?;
    crate::trace::annotate_event(event);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the audit event is invalid: {0}")]
    Invalid(audit_event::ParseError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_event::ActorType;
    use serde_json::json;

    fn attempt(resource_id: &str, user_agent: Option<&str>) -> Attempt {
        Attempt::new(
            auth::Actor {
                id: "alice".into(),
                kind: ActorType::User,
            },
            "account",
            resource_id,
            "req-1".into(),
            Some("203.0.113.7".into()),
            user_agent,
        )
    }

    #[test]
    fn events_built_from_hostile_input_still_validate() {
        let hostile = format!("{}\u{0}\n{}", "x".repeat(300), "y".repeat(10));
        let attempt = attempt(&hostile, Some(&format!("ua\u{0}{}", "z".repeat(5000))));
        assert_eq!(attempt.resource_id.chars().count(), MAX_RESOURCE_ID_CHARS);
        assert!(!attempt.resource_id.contains('\0'));
        let event = attempt.rejected(
            "unknown",
            EventError {
                status: 400,
                code: "invalid_id".into(),
            },
            json!({}),
        );
        event.validate().unwrap();
        assert_eq!(
            event.request.user_agent.unwrap().chars().count(),
            MAX_USER_AGENT_CHARS
        );
    }

    #[test]
    fn a_success_carries_its_sequence_and_no_error() {
        let event = attempt("id", None).succeeded("rename", 3, json!({"name": "N"}));
        event.validate().unwrap();
        assert_eq!(event.action, "account.rename");
        assert_eq!(event.sequence, Some(3));
        assert_eq!(event.outcome, Outcome::Succeeded);
        assert_eq!(event.event_id.get_version_num(), 7);
        assert_eq!(event.request.user_agent, None);
    }
}
