//! The audit event envelope: the wire contract between `accounts-api` (which
//! writes it into the outbox) and `audit-consumer` (which stores it).
//!
//! Invariant: this crate is the only place that knows the shape of an event.
//! It does no I/O. [`AuditEvent::parse`] is the single door through which
//! bytes from the network become an event; everything it returns is valid:
//! a known schema version, every required field present, no NUL characters
//! anywhere, and an `error` exactly when the outcome is `rejected`.
//!
//! Unknown extra fields are accepted and dropped, so a newer producer can add
//! fields without breaking an older consumer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this crate writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest text accepted in a free-text field of an event (user agent, error
/// code, traceparent), in bytes. Far above anything the API produces; it
/// bounds what a hostile or broken producer can make us store.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Longest identity (actor id, action, resource type and id, request id), in
/// bytes. These are indexed in `audit_logs`, and a Postgres btree entry must
/// stay under about 2.7 kB: two of them side by side must fit. The API's own
/// limits are far lower (a `sub` of at most 255 characters, ids of 128).
pub const MAX_ID_BYTES: usize = 1024;

/// Largest `details` object, serialized, in bytes. The API puts only validated
/// parameters there (a name, a reason): a few hundred bytes.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// One audit record: who did what to which resource, when, from where, and
/// with what outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UUID v7 made in the API transaction; the deduplication key.
    pub event_id: Uuid,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    /// `"<resource type>.<verb>"`, e.g. `account.rename`.
    pub action: String,
    pub resource: Resource,
    pub outcome: Outcome,
    /// Present exactly when `outcome` is `rejected`.
    pub error: Option<EventError>,
    pub request: RequestInfo,
    /// The resource version after a success; `None` when rejected.
    pub sequence: Option<i64>,
    /// The validated parameters of the attempt (a JSON object). Never secrets.
    pub details: serde_json::Value,
    /// W3C trace context, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ActorType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorType {
    User,
    Service,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::Service => "service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    /// Kept as text: a rejected attempt records the id exactly as the client
    /// sent it, even when it was not a valid id.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Why an attempt was rejected: the HTTP status it got and a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError {
    pub status: u16,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    pub id: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// Why bytes are not a valid event. The message is meant for an operator
/// reading the dead-letter table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("valid JSON, but not an object: an event is a JSON object")]
    NotAnObject,
    #[error("missing schema_version")]
    MissingSchemaVersion,
    #[error("unknown schema_version {0} (this build reads version {SCHEMA_VERSION})")]
    UnknownSchemaVersion(String),
    #[error("does not match schema version {SCHEMA_VERSION}: {0}")]
    Shape(String),
    #[error("field {0} contains a NUL character")]
    Nul(String),
    #[error("field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl AuditEvent {
    /// Parses and validates an event received from outside.
    pub fn parse(bytes: &[u8]) -> Result<AuditEvent, ParseError> {
        // Look at the version first, so a future event gets the error that
        // explains it rather than a confusing complaint about its shape.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: Option<serde_json::Value>,
        }
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            // Tell well-formed JSON of another type (`null`, `42`, `[…]`)
            // from bytes that are not JSON at all.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => ParseError::NotAnObject,
                    Err(e) => ParseError::Json(e.to_string()),
                },
            );
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
        match probe.schema_version {
            None | Some(serde_json::Value::Null) => return Err(ParseError::MissingSchemaVersion),
            Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
            Some(v) => return Err(ParseError::UnknownSchemaVersion(truncate(&v.to_string()))),
        }
        let event: AuditEvent =
            serde_json::from_slice(bytes).map_err(|e| ParseError::Shape(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    /// The JSON text of the event, as written to the outbox and published.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and
        // `details` is already a `serde_json::Value`.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("event always serializes"))
    }

    /// Checks the rules that the types alone do not express.
    pub fn validate(&self) -> Result<(), ParseError> {
        let texts: [(&'static str, Option<&str>); 9] = [
            ("actor.id", Some(&self.actor.id)),
            ("action", Some(&self.action)),
            ("resource.type", Some(&self.resource.kind)),
            ("resource.id", Some(&self.resource.id)),
            ("request.id", Some(&self.request.id)),
            ("request.ip", self.request.ip.as_deref()),
            ("request.user_agent", self.request.user_agent.as_deref()),
            ("error.code", self.error.as_ref().map(|e| e.code.as_str())),
            ("traceparent", self.traceparent.as_deref()),
        ];
        for (field, text) in texts {
            let Some(text) = text else { continue };
            if text.contains('\0') {
                return Err(ParseError::Nul(field.to_owned()));
            }
            let max = if IDENTITY_FIELDS.contains(&field) {
                MAX_ID_BYTES
            } else {
                MAX_TEXT_BYTES
            };
            if text.len() > max {
                return Err(ParseError::Invalid {
                    field,
                    reason: format!("longer than {max} bytes"),
                });
            }
        }
        for (field, text) in [
            ("actor.id", &self.actor.id),
            ("action", &self.action),
            ("resource.type", &self.resource.kind),
            ("request.id", &self.request.id),
        ] {
            if text.trim().is_empty() {
                return Err(ParseError::Invalid {
                    field,
                    reason: "must not be empty".into(),
                });
            }
        }
        if !self.details.is_object() {
            return Err(ParseError::Invalid {
                field: "details",
                reason: "must be a JSON object".into(),
            });
        }
        if let Some(path) = nul_in_json(&self.details, "details") {
            return Err(ParseError::Nul(path));
        }
        let details_bytes = self.details.to_string().len();
        if details_bytes > MAX_DETAILS_BYTES {
            return Err(ParseError::Invalid {
                field: "details",
                reason: format!("{details_bytes} bytes, more than {MAX_DETAILS_BYTES}"),
            });
        }
        match (self.outcome, &self.error) {
            (Outcome::Succeeded, Some(_)) => {
                return Err(ParseError::Invalid {
                    field: "error",
                    reason: "must be null when the outcome is succeeded".into(),
                })
            }
            (Outcome::Rejected, None) => {
                return Err(ParseError::Invalid {
                    field: "error",
                    reason: "is required when the outcome is rejected".into(),
                })
            }
            _ => {}
        }
        if let Some(error) = &self.error {
            if !(400..=599).contains(&error.status) {
                return Err(ParseError::Invalid {
                    field: "error.status",
                    reason: format!("{} is not an HTTP error status", error.status),
                });
            }
        }
        Ok(())
    }
}

/// The fields held to [`MAX_ID_BYTES`].
const IDENTITY_FIELDS: [&str; 5] = [
    "actor.id",
    "action",
    "resource.type",
    "resource.id",
    "request.id",
];

/// The path of the first string (key or value) holding a NUL, if any.
fn nul_in_json(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in_json(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(format!("{path} (a key)"))
            } else {
                nul_in_json(v, &format!("{path}.{}", truncate(k)))
            }
        }),
        _ => None,
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> serde_json::Value {
        json!({
            "event_id": "0192f1c2-7d3e-7a10-8b2c-1234567890ab",
            "schema_version": 1,
            "occurred_at": "2026-12-03T18:45:12.123456Z",
            "actor": {"id": "alice", "type": "user"},
            "action": "account.rename",
            "resource": {"type": "account", "id": "5f0c6d2e-3c4b-4b6a-9a55-0e6f1f7f2a11"},
            "outcome": "succeeded",
            "error": null,
            "request": {"id": "req-1", "ip": "203.0.113.7", "user_agent": "curl/8"},
            "sequence": 3,
            "details": {"name": "New name"}
        })
    }

    fn parse(value: &serde_json::Value) -> Result<AuditEvent, ParseError> {
        AuditEvent::parse(value.to_string().as_bytes())
    }

    #[test]
    fn a_valid_event_parses_into_typed_fields() {
        let event = parse(&sample()).unwrap();
        assert_eq!(event.actor.kind, ActorType::User);
        assert_eq!(event.outcome, Outcome::Succeeded);
        assert_eq!(event.sequence, Some(3));
        assert_eq!(event.details["name"], "New name");
        assert_eq!(
            event.occurred_at.to_rfc3339(),
            "2026-12-03T18:45:12.123456+00:00"
        );
    }

    #[test]
    fn an_event_survives_a_round_trip() {
        let event = parse(&sample()).unwrap();
        let again = AuditEvent::parse(event.to_json().as_bytes()).unwrap();
        assert_eq!(event, again);
    }

    #[test]
    fn traceparent_is_absent_from_the_json_when_unset() {
        let event = parse(&sample()).unwrap();
        assert!(!event.to_json().contains("traceparent"));
        let mut with = sample();
        with["traceparent"] = json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert!(parse(&with).unwrap().traceparent.is_some());
    }

    #[test]
    fn unknown_extra_fields_are_accepted() {
        let mut value = sample();
        value["added_in_a_later_version"] = json!({"anything": [1, 2, 3]});
        value["actor"]["department"] = json!("finance");
        assert!(parse(&value).is_ok());
    }

    #[test]
    fn an_unknown_schema_version_is_rejected_with_a_clear_error() {
        let mut value = sample();
        value["schema_version"] = json!(2);
        value["completely"] = json!("different shape");
        let err = parse(&value).unwrap_err();
        assert_eq!(err, ParseError::UnknownSchemaVersion("2".into()));
        assert!(err.to_string().contains("unknown schema_version 2"));
        value["schema_version"] = json!("1");
        assert!(matches!(
            parse(&value),
            Err(ParseError::UnknownSchemaVersion(_))
        ));
    }

    #[test]
    fn a_missing_schema_version_is_rejected() {
        let mut value = sample();
        value.as_object_mut().unwrap().remove("schema_version");
        assert_eq!(parse(&value), Err(ParseError::MissingSchemaVersion));
    }

    #[test]
    fn each_missing_required_field_is_rejected_naming_it() {
        for field in [
            "event_id",
            "occurred_at",
            "actor",
            "action",
            "resource",
            "outcome",
            "request",
            "details",
        ] {
            let mut value = sample();
            value.as_object_mut().unwrap().remove(field);
            let err = parse(&value).unwrap_err();
            assert!(
                matches!(&err, ParseError::Shape(m) if m.contains(field)),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn nul_characters_are_rejected_wherever_they_are() {
        let mut value = sample();
        value["actor"]["id"] = json!("ali\u{0}ce");
        assert_eq!(parse(&value), Err(ParseError::Nul("actor.id".into())));

        let mut value = sample();
        value["details"] = json!({"nested": [{"x": "a\u{0}b"}]});
        assert_eq!(
            parse(&value),
            Err(ParseError::Nul("details.nested[0].x".into()))
        );

        let mut value = sample();
        value["details"] = json!({"k\u{0}": 1});
        assert!(matches!(parse(&value), Err(ParseError::Nul(_))));
    }

    #[test]
    fn bytes_that_are_not_json_are_rejected() {
        for junk in [&b"not json"[..], b"", b"\xff\xfe", b"{\"schema_version\":1"] {
            let err = AuditEvent::parse(junk).unwrap_err();
            assert!(
                matches!(err, ParseError::Json(_) | ParseError::MissingSchemaVersion),
                "{err}"
            );
        }
    }

    #[test]
    fn json_that_is_not_an_object_is_rejected_as_such() {
        for junk in [&b"null"[..], b"42", b"[1,2]", b"\"event\""] {
            assert_eq!(AuditEvent::parse(junk), Err(ParseError::NotAnObject));
        }
    }

    #[test]
    fn identities_longer_than_an_index_entry_allows_are_rejected() {
        let mut value = sample();
        value["actor"]["id"] = json!("a".repeat(MAX_ID_BYTES + 1));
        assert!(matches!(
            parse(&value),
            Err(ParseError::Invalid {
                field: "actor.id",
                ..
            })
        ));
        value["actor"]["id"] = json!("a".repeat(MAX_ID_BYTES));
        assert!(parse(&value).is_ok());
    }

    #[test]
    fn oversized_details_are_rejected() {
        let mut value = sample();
        value["details"] = json!({"name": "x".repeat(MAX_DETAILS_BYTES)});
        assert!(matches!(
            parse(&value),
            Err(ParseError::Invalid {
                field: "details",
                ..
            })
        ));
    }

    #[test]
    fn wrong_types_are_rejected() {
        let mut value = sample();
        value["sequence"] = json!("three");
        assert!(matches!(parse(&value), Err(ParseError::Shape(_))));
        let mut value = sample();
        value["outcome"] = json!("maybe");
        assert!(matches!(parse(&value), Err(ParseError::Shape(_))));
        let mut value = sample();
        value["details"] = json!([1]);
        assert!(matches!(
            parse(&value),
            Err(ParseError::Invalid {
                field: "details",
                ..
            })
        ));
    }

    #[test]
    fn outcome_and_error_must_agree() {
        let mut value = sample();
        value["outcome"] = json!("rejected");
        assert!(matches!(
            parse(&value),
            Err(ParseError::Invalid { field: "error", .. })
        ));
        value["error"] = json!({"status": 409, "code": "invalid_transition"});
        value["sequence"] = json!(null);
        let event = parse(&value).unwrap();
        assert_eq!(event.error.unwrap().status, 409);

        let mut value = sample();
        value["error"] = json!({"status": 409, "code": "x"});
        assert!(parse(&value).is_err());
    }

    #[test]
    fn empty_identities_and_oversized_text_are_rejected() {
        let mut value = sample();
        value["actor"]["id"] = json!("  ");
        assert!(matches!(
            parse(&value),
            Err(ParseError::Invalid {
                field: "actor.id",
                ..
            })
        ));
        let mut value = sample();
        value["request"]["user_agent"] = json!("x".repeat(MAX_TEXT_BYTES + 1));
        assert!(matches!(
            parse(&value),
            Err(ParseError::Invalid {
                field: "request.user_agent",
                ..
            })
        ));
    }
}
