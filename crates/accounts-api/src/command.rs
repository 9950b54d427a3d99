//! The body of `POST /accounts/{id}/actions`, parsed strictly into a
//! [`Command`]: `{"action": "<name>", "params": {…}}`, unknown fields
//! rejected at both levels.
//!
//! Rejections distinguish three cases, each with its own status and code:
//! bytes that are not JSON (400 `malformed_json`), a missing or unknown
//! action (422 `invalid_action`), and anything else wrong once the action is
//! known (422 `invalid_params`). The action is reported whenever it is known,
//! so a rejected rename is audited as `account.rename`.

use serde::de::{DeserializeOwned, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{sanitize, AccountName, Reason};

/// What a client asked to do to an account, with valid parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open { name: AccountName },
    Rename { name: AccountName },
    Suspend { reason: Reason },
    Reactivate,
    Close { reason: Option<Reason> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionName {
    Open,
    Rename,
    Suspend,
    Reactivate,
    Close,
}

impl ActionName {
    pub const ALL: [ActionName; 5] = [
        ActionName::Open,
        ActionName::Rename,
        ActionName::Suspend,
        ActionName::Reactivate,
        ActionName::Close,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionName::Open => "open",
            ActionName::Rename => "rename",
            ActionName::Suspend => "suspend",
            ActionName::Reactivate => "reactivate",
            ActionName::Close => "close",
        }
    }

    fn parse(s: &str) -> Option<ActionName> {
        ActionName::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl Command {
    pub fn action(&self) -> ActionName {
        match self {
            Command::Open { .. } => ActionName::Open,
            Command::Rename { .. } => ActionName::Rename,
            Command::Suspend { .. } => ActionName::Suspend,
            Command::Reactivate => ActionName::Reactivate,
            Command::Close { .. } => ActionName::Close,
        }
    }

    /// The validated parameters, as recorded in the audit event's `details`.
    pub fn details(&self) -> Value {
        match self {
            Command::Open { name } | Command::Rename { name } => json!({ "name": name.as_str() }),
            Command::Suspend { reason }
            | Command::Close {
                reason: Some(reason),
            } => {
                json!({ "reason": reason.as_str() })
            }
            Command::Reactivate | Command::Close { reason: None } => json!({}),
        }
    }
}

/// Why a body is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// The action, when the body named a known one.
    pub action: Option<ActionName>,
    pub kind: BodyErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyErrorKind {
    /// Not UTF-8, or not JSON. 400.
    Malformed(String),
    /// No action, or one we do not know. 422.
    InvalidAction(String),
    /// The action is known; something else is wrong. 422.
    InvalidParams(String),
}

/// Longest client-derived text (serde messages quote field names) put into
/// an error detail.
const MAX_DETAIL_CHARS: usize = 300;

pub fn parse(body: &[u8]) -> Result<Command, BodyError> {
    let malformed = |detail: String| BodyError {
        action: None,
        kind: BodyErrorKind::Malformed(detail),
    };
    let text = std::str::from_utf8(body)
        .map_err(|_| malformed("the request body is not valid UTF-8".into()))?;
    // First pass: is it JSON at all, and which action does it name? Done on
    // a `Value` so that every shape problem below gets the right code. A key
    // given twice anywhere makes the body malformed: parsers disagree on
    // which of the two counts, and the audit event must record what the
    // request meant without guessing.
    let StrictValue(value) = serde_json::from_str(text)
        .map_err(|e| malformed(format!("the request body is not valid JSON: {}", clip(&e))))?;
    let invalid_action = |detail: &str| BodyError {
        action: None,
        kind: BodyErrorKind::InvalidAction(detail.to_owned()),
    };
    let Value::Object(fields) = &value else {
        return Err(invalid_action(
            "the request body must be a JSON object with an `action` field",
        ));
    };
    let action = match fields.get("action") {
        None => return Err(invalid_action("missing field `action`")),
        Some(Value::String(name)) => ActionName::parse(name).ok_or_else(|| {
            invalid_action(
                "unknown action; expected one of open, rename, suspend, reactivate, close",
            )
        })?,
        Some(_) => return Err(invalid_action("field `action` must be a string")),
    };
    let invalid_params = |detail: String| BodyError {
        action: Some(action),
        kind: BodyErrorKind::InvalidParams(detail),
    };
    if !matches!(
        fields.get("params"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        return Err(invalid_params("field `params` must be an object".into()));
    }
    // Second pass over the original text, typed for the action: rejects
    // unknown and duplicate fields, which a `Value` would hide.
    let command = match action {
        ActionName::Open => Command::Open {
            name: name(required::<NameParams>(text).map_err(&invalid_params)?.name)
                .map_err(&invalid_params)?,
        },
        ActionName::Rename => Command::Rename {
            name: name(required::<NameParams>(text).map_err(&invalid_params)?.name)
                .map_err(&invalid_params)?,
        },
        ActionName::Suspend => Command::Suspend {
            reason: reason(
                required::<ReasonParams>(text)
                    .map_err(&invalid_params)?
                    .reason,
            )
            .map_err(&invalid_params)?,
        },
        ActionName::Reactivate => {
            optional::<NoParams>(text).map_err(&invalid_params)?;
            Command::Reactivate
        }
        ActionName::Close => {
            let params = optional::<OptionalReasonParams>(text).map_err(&invalid_params)?;
            let reason = match params.and_then(|p| p.reason) {
                Some(raw) => Some(reason(raw).map_err(&invalid_params)?),
                None => None,
            };
            Command::Close { reason }
        }
    };
    Ok(command)
}

/// A JSON value that refuses an object key given twice, at any depth
/// (`serde_json::Value` keeps the last one silently). Depth is bounded by
/// serde_json's recursion limit (128), which makes deeper nesting malformed
/// too.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, so `from_f64` always succeeds.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                return Err(A::Error::custom(format!(
                    "duplicate key `{}`",
                    sanitize(&key, MAX_KEY_CHARS)
                )));
            }
            let StrictValue(value) = map.next_value()?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// Longest key quoted in an error detail.
const MAX_KEY_CHARS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<P> {
    #[allow(dead_code)]
    action: IgnoredAny,
    // A missing `Option` field deserializes as `None`.
    params: Option<P>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonParams {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalReasonParams {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn optional<P: DeserializeOwned>(text: &str) -> Result<Option<P>, String> {
    serde_json::from_str::<Body<P>>(text)
        .map(|body| body.params)
        .map_err(|e| clip(&e))
}

fn required<P: DeserializeOwned>(text: &str) -> Result<P, String> {
    optional(text)?.ok_or_else(|| "missing field `params`".to_owned())
}

fn name(raw: String) -> Result<AccountName, String> {
    AccountName::parse(&raw).map_err(|e| format!("params.name {e}"))
}

fn reason(raw: String) -> Result<Reason, String> {
    Reason::parse(&raw).map_err(|e| format!("params.reason {e}"))
}

fn clip(error: &serde_json::Error) -> String {
    sanitize(&error.to_string(), MAX_DETAIL_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(body: &str) -> BodyErrorKind {
        parse(body.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn each_action_parses_with_its_params() {
        assert_eq!(
            parse(br#"{"action":"open","params":{"name":" Acme "}}"#).unwrap(),
            Command::Open {
                name: AccountName::parse("Acme").unwrap()
            }
        );
        assert_eq!(
            parse(br#"{"action":"rename","params":{"name":"B"}}"#)
                .unwrap()
                .action(),
            ActionName::Rename
        );
        assert_eq!(
            parse(br#"{"action":"suspend","params":{"reason":"fraud"}}"#)
                .unwrap()
                .details(),
            json!({"reason": "fraud"})
        );
        for body in [
            r#"{"action":"reactivate"}"#,
            r#"{"action":"reactivate","params":{}}"#,
            r#"{"action":"reactivate","params":null}"#,
        ] {
            assert_eq!(
                parse(body.as_bytes()).unwrap(),
                Command::Reactivate,
                "{body}"
            );
        }
        assert_eq!(
            parse(br#"{"action":"close"}"#).unwrap(),
            Command::Close { reason: None }
        );
        assert_eq!(
            parse(br#"{"action":"close","params":{"reason":"done"}}"#)
                .unwrap()
                .details(),
            json!({"reason": "done"})
        );
    }

    #[test]
    fn bytes_that_are_not_json_or_not_utf8_are_malformed() {
        for body in [
            &b"{"[..],
            b"",
            b"nope",
            b"{\"action\":\"open\"",
            b"\xff\xfe{}",
        ] {
            let err = parse(body).unwrap_err();
            assert!(matches!(err.kind, BodyErrorKind::Malformed(_)), "{body:?}");
            assert_eq!(err.action, None);
        }
    }

    #[test]
    fn a_missing_or_unknown_action_is_an_invalid_action() {
        for body in [
            r#"[]"#,
            r#"{}"#,
            r#"{"params":{"name":"x"}}"#,
            r#"{"action":"delete"}"#,
            r#"{"action":"OPEN","params":{"name":"x"}}"#,
            r#"{"action":7}"#,
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(
                matches!(err.kind, BodyErrorKind::InvalidAction(_)),
                "{body}: {err:?}"
            );
            assert_eq!(err.action, None);
        }
    }

    #[test]
    fn bad_params_of_a_known_action_are_invalid_params_naming_the_field() {
        for (body, field) in [
            (r#"{"action":"open"}"#, "params"),
            (r#"{"action":"open","params":{}}"#, "name"),
            (r#"{"action":"open","params":{"name":""}}"#, "params.name"),
            (
                r#"{"action":"open","params":{"name":"a\u0000b"}}"#,
                "params.name",
            ),
            (
                r#"{"action":"open","params":{"name":"x","nick":"y"}}"#,
                "nick",
            ),
            (r#"{"action":"open","params":{"name":7}}"#, "invalid type"),
            (r#"{"action":"open","params":["x"]}"#, "params"),
            (
                r#"{"action":"open","params":{"name":"x"},"force":true}"#,
                "force",
            ),
            (r#"{"action":"suspend","params":{}}"#, "reason"),
            (
                r#"{"action":"reactivate","params":{"reason":"x"}}"#,
                "reason",
            ),
            (
                r#"{"action":"close","params":{"reason":"a\nb"}}"#,
                "params.reason",
            ),
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            match &err.kind {
                BodyErrorKind::InvalidParams(detail) => {
                    assert!(detail.contains(field), "{body}: {detail}")
                }
                other => panic!("{body}: {other:?}"),
            }
            assert!(err.action.is_some(), "{body}");
        }
    }

    #[test]
    fn a_key_given_twice_at_any_depth_is_malformed() {
        for (body, key) in [
            (
                r#"{"action":"rename","params":{"name":"a","name":"b"}}"#,
                "name",
            ),
            (r#"{"action":"open","action":"close"}"#, "action"),
            (r#"{"action":"close","params":null,"params":{}}"#, "params"),
            (r#"{"action":"close","x":[{"a":1,"a":2}]}"#, "a"),
        ] {
            match kind(body) {
                BodyErrorKind::Malformed(detail) => {
                    assert!(
                        detail.contains(&format!("duplicate key `{key}`")),
                        "{detail}"
                    )
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        // The same key in different objects is fine.
        assert!(parse(br#"{"action":"open","params":{"name":"action"}}"#).is_ok());
    }

    #[test]
    fn deep_nesting_and_lone_surrogates_are_malformed_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(kind(&deep), BodyErrorKind::Malformed(_)));
        let nested = format!(
            r#"{{"action":"open","params":{{"name":{}"x"{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(kind(&nested), BodyErrorKind::Malformed(_)));
        assert!(matches!(
            kind(r#"{"action":"open","params":{"name":"\ud800"}}"#),
            BodyErrorKind::Malformed(_)
        ));
    }

    #[test]
    fn details_hold_only_the_validated_params() {
        let command = parse(br#"{"action":"open","params":{"name":"  Acme  "}}"#).unwrap();
        assert_eq!(command.details(), json!({"name": "Acme"}));
        assert_eq!(Command::Reactivate.details(), json!({}));
    }

    #[test]
    fn error_details_are_bounded() {
        let long_key = "k".repeat(10_000);
        let body = format!(r#"{{"action":"open","params":{{"{long_key}":1}}}}"#);
        match kind(&body) {
            BodyErrorKind::InvalidParams(detail) => {
                assert!(detail.chars().count() <= MAX_DETAIL_CHARS)
            }
            other => panic!("{other:?}"),
        }
    }
}
