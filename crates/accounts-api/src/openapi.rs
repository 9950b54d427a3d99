//! The OpenAPI 3.1 document served at `/openapi.json`, built from the code
//! it describes so that it cannot drift from it:
//!
//! - the paths, methods and whether they need a token come from the route
//!   table that `routes::configure` registers ([`crate::routes`]);
//! - each operation's error responses come from the list of
//!   [`ErrorKind`]s its handler declares, with the status and `code` of
//!   each kind;
//! - the actions come from [`ActionName::ALL`], the limits and patterns of
//!   names, reasons, keys and request ids from the types that check them.
//!
//! The tests check the rest: every documented operation is served and every
//! other method gets 405; every status the integration tests and the fuzz
//! run receive is documented, with a body that matches its schema.

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use serde_json::{json, Map, Value};

use crate::command::ActionName;
use crate::domain::{AccountName, Reason};
use crate::error::ErrorKind;
use crate::idempotency;
use crate::routes::{self, Operation, HEAD_ERRORS, OPERATIONS};

/// An account id that the examples use.
pub const EXAMPLE_ACCOUNT_ID: &str = "0192f1c2-7d3e-7a10-8b2c-1234567890ab";

/// The hyphenated UUID form, any letter case: what the routes accept as an
/// account id.
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for operation in OPERATIONS {
        let item = paths
            .entry(operation.path)
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(item) = item {
            item.insert(
                operation.method.as_str().to_ascii_lowercase(),
                describe(operation),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "accounts-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Accounts whose every change, refusal and read leaves one audit \
                event. Errors are RFC 9457 problem details (`application/problem+json`) \
                with a stable `code`. Every response carries `X-Request-Id`.",
        },
        "paths": paths,
        "components": components(),
    })
}

/// The document as served: rendered once at start-up.
pub fn document_bytes() -> Bytes {
    Bytes::from(document().to_string())
}

fn describe(operation: &Operation) -> Value {
    let mut responses = success_responses(operation);
    let mut errors: Vec<ErrorKind> = operation
        .errors
        .iter()
        .chain(HEAD_ERRORS)
        .copied()
        .collect();
    errors.sort();
    errors.dedup();
    // One response per status, naming every code it can carry.
    let mut statuses: Vec<StatusCode> = errors.iter().map(|k| k.status()).collect();
    statuses.sort();
    statuses.dedup();
    for status in statuses {
        let codes: Vec<&str> = errors
            .iter()
            .filter(|k| k.status() == status)
            .map(|k| k.code())
            .collect();
        responses.insert(
            status.as_u16().to_string(),
            problem_response(operation, status, &codes),
        );
    }

    let mut described = json!({
        "operationId": operation_id(operation),
        "summary": summary(operation),
        "responses": responses,
        "security": if operation.authenticated { json!([{"bearer": []}]) } else { json!([]) },
    });
    let mut parameters = Vec::new();
    if operation.path.contains("{id}") {
        parameters.push(json!({
            "name": "id",
            "in": "path",
            "required": true,
            "description": "The account id: a UUID in its hyphenated form (any letter case).",
            "schema": {"type": "string", "pattern": UUID_PATTERN},
            "example": EXAMPLE_ACCOUNT_ID,
        }));
    }
    if operation.authenticated {
        parameters.push(json!({
            "name": "X-Request-Id",
            "in": "header",
            "required": false,
            "description": format!(
                "Kept when it is 1 to {} visible ASCII characters, otherwise replaced by \
                 a generated one; echoed on the response and recorded in the audit event.",
                crate::request_id::MAX_LEN
            ),
            "schema": {"type": "string"},
        }));
    }
    if operation.method == routes::POST_ACTIONS.method
        && operation.path == routes::POST_ACTIONS.path
    {
        parameters.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Makes a retry safe. The same key from the same actor with the \
                same method, path and body (byte for byte) replays the first response, \
                with `Idempotent-Replayed: true`, and changes and records nothing; with \
                another request it is refused (422 `idempotency_key_reused`); while the \
                first request is still running, 409 `idempotency_key_in_flight`. Keys are \
                kept for IDEMPOTENCY_KEY_TTL_HOURS (at least 24 hours).",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": idempotency::MAX_KEY_LEN,
                "pattern": "^[!-~]+$",
            },
        }));
        if let Some(object) = described.as_object_mut() {
            object.insert("requestBody".into(), action_request_body());
        }
    }
    if !parameters.is_empty() {
        if let Some(object) = described.as_object_mut() {
            object.insert("parameters".into(), Value::Array(parameters));
        }
    }
    described
}

fn operation_id(operation: &Operation) -> &'static str {
    match (operation.method.as_str(), operation.path) {
        ("POST", "/accounts/{id}/actions") => "actOnAccount",
        ("GET", "/accounts/{id}") => "getAccount",
        ("GET", "/healthz") => "healthz",
        ("GET", "/readyz") => "readyz",
        ("GET", "/metrics") => "metrics",
        ("GET", "/openapi.json") => "openapi",
        _ => "operation",
    }
}

fn summary(operation: &Operation) -> &'static str {
    match operation_id(operation) {
        "actOnAccount" => "Open, rename, suspend, reactivate or close an account (audited)",
        "getAccount" => "Read an account (audited as account.read unless AUDIT_READS=false)",
        "healthz" => "The process is up",
        "readyz" => "The database answers",
        "metrics" => "Prometheus metrics of the outbox and its relay",
        "openapi" => "This document",
        _ => "",
    }
}

fn request_id_header() -> Value {
    json!({"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}})
}

fn success_responses(operation: &Operation) -> Map<String, Value> {
    let mut responses = Map::new();
    let json_response = |description: &str, schema: Value, extra_headers: &[&str]| {
        let mut headers = request_id_header();
        for name in extra_headers {
            headers[*name] = json!({"$ref": format!("#/components/headers/{name}")});
        }
        json!({
            "description": description,
            "headers": headers,
            "content": {"application/json": {"schema": schema}},
        })
    };
    match operation_id(operation) {
        "actOnAccount" => {
            let schema = json!({"$ref": "#/components/schemas/ActionResult"});
            responses.insert(
                "200".into(),
                json_response(
                    "The account after the change.",
                    schema.clone(),
                    &["Idempotent-Replayed"],
                ),
            );
            responses.insert(
                "201".into(),
                json_response("The account, opened.", schema, &["Idempotent-Replayed"]),
            );
        }
        "getAccount" => {
            responses.insert(
                "200".into(),
                json_response(
                    "The account.",
                    json!({"$ref": "#/components/schemas/AccountRead"}),
                    &[],
                ),
            );
        }
        "healthz" => {
            responses.insert(
                "200".into(),
                json_response("Alive.", status_schema("ok"), &[]),
            );
        }
        "readyz" => {
            responses.insert(
                "200".into(),
                json_response("The database answers.", status_schema("ready"), &[]),
            );
        }
        "metrics" => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "The Prometheus text exposition format 0.0.4.",
                    "headers": request_id_header(),
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }),
            );
        }
        "openapi" => {
            responses.insert(
                "200".into(),
                json_response("This document.", json!({"type": "object"}), &[]),
            );
        }
        _ => {}
    }
    responses
}

fn status_schema(value: &str) -> Value {
    json!({
        "type": "object",
        "properties": {"status": {"const": value}},
        "required": ["status"],
        "additionalProperties": false,
    })
}

fn problem_response(operation: &Operation, status: StatusCode, codes: &[&str]) -> Value {
    let mut headers = request_id_header();
    match status {
        StatusCode::UNAUTHORIZED => {
            headers["WWW-Authenticate"] = json!({"$ref": "#/components/headers/WWW-Authenticate"});
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            headers["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
        }
        _ => {}
    }
    // Audited refusals of the change route are stored with an idempotency
    // key and may be replayed (a 413 is not: its body was never read).
    let replayable = operation.path == routes::POST_ACTIONS.path
        && status != StatusCode::PAYLOAD_TOO_LARGE
        && ErrorKind::ALL
            .iter()
            .any(|k| k.status() == status && k.is_audited() && codes.contains(&k.code()));
    if replayable {
        headers["Idempotent-Replayed"] =
            json!({"$ref": "#/components/headers/Idempotent-Replayed"});
    }
    let mut schema = json!({"$ref": "#/components/schemas/Problem"});
    schema = json!({
        "allOf": [schema, {
            "properties": {
                "status": {"const": status.as_u16()},
                "code": {"enum": codes},
            },
        }],
    });
    json!({
        "description": format!(
            "{}: {}.",
            status.canonical_reason().unwrap_or("Error"),
            codes.join(", ")
        ),
        "headers": headers,
        "content": {"application/problem+json": {"schema": schema}},
    })
}

fn action_request_body() -> Value {
    let variants: Vec<Value> = ActionName::ALL
        .iter()
        .map(|action| {
            let (params, required) = match action {
                ActionName::Open | ActionName::Rename => (
                    json!({
                        "type": "object",
                        "properties": {"name": {"$ref": "#/components/schemas/AccountName"}},
                        "required": ["name"],
                        "additionalProperties": false,
                    }),
                    true,
                ),
                ActionName::Suspend => (
                    json!({
                        "type": "object",
                        "properties": {"reason": {"$ref": "#/components/schemas/Reason"}},
                        "required": ["reason"],
                        "additionalProperties": false,
                    }),
                    true,
                ),
                ActionName::Reactivate => (
                    json!({
                        "type": ["object", "null"],
                        "properties": {},
                        "additionalProperties": false,
                    }),
                    false,
                ),
                ActionName::Close => (
                    json!({
                        "type": ["object", "null"],
                        "properties": {
                            "reason": {"anyOf": [
                                {"$ref": "#/components/schemas/Reason"},
                                {"type": "null"},
                            ]},
                        },
                        "additionalProperties": false,
                    }),
                    false,
                ),
            };
            let required = if required {
                json!(["action", "params"])
            } else {
                json!(["action"])
            };
            json!({
                "title": action.as_str(),
                "type": "object",
                "properties": {
                    "action": {"const": action.as_str()},
                    "params": params,
                },
                "required": required,
                "additionalProperties": false,
            })
        })
        .collect();
    let examples: Map<String, Value> = ActionName::ALL
        .iter()
        .map(|action| {
            let value = match action {
                ActionName::Open => json!({"action": "open", "params": {"name": "Acme Ltd"}}),
                ActionName::Rename => json!({"action": "rename", "params": {"name": "Acme Group"}}),
                ActionName::Suspend => {
                    json!({"action": "suspend", "params": {"reason": "unpaid invoice"}})
                }
                ActionName::Reactivate => json!({"action": "reactivate"}),
                ActionName::Close => {
                    json!({"action": "close", "params": {"reason": "customer left"}})
                }
            };
            (action.as_str().to_owned(), json!({"value": value}))
        })
        .collect();
    json!({
        "required": true,
        "description": "One action with its params. Unknown fields, unknown actions and a \
            key given twice are refused. At most API_MAX_BODY_BYTES (64 KiB by default).",
        "content": {"application/json": {
            "schema": {"oneOf": variants},
            "examples": examples,
        }},
    })
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "HS256, signed with AUTH_JWT_SECRET; `exp` required; `iss` and \
                    `aud` checked when configured. `sub` is the actor id; the optional \
                    `actor_type` claim is `user` (default) or `service`.",
            },
        },
        "headers": {
            "X-Request-Id": {
                "description": "The request's id: the client's when valid, else generated.",
                "required": true,
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": crate::request_id::MAX_LEN,
                    "pattern": "^[!-~]+$",
                },
            },
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": true,
                "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            },
            "WWW-Authenticate": {
                "description": "The authentication scheme: `Bearer`.",
                "required": true,
                "schema": {"const": "Bearer"},
            },
            "Idempotent-Replayed": {
                "description": "`true` on a response replayed for an Idempotency-Key.",
                "required": false,
                "schema": {"const": "true"},
            },
        },
        "schemas": {
            "Account": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "name": {"type": "string", "minLength": 1, "maxLength": AccountName::MAX_CHARS},
                    "status": {"enum": ["active", "suspended", "closed"]},
                    "version": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "1 when opened, one more per change; the audit event's sequence.",
                    },
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
                "required": ["id", "name", "status", "version", "created_at", "updated_at"],
                "additionalProperties": false,
            },
            "ActionResult": {
                "type": "object",
                "properties": {
                    "account": {"$ref": "#/components/schemas/Account"},
                    "event_id": {
                        "type": "string",
                        "format": "uuid",
                        "description": "The audit event of the change.",
                    },
                },
                "required": ["account", "event_id"],
                "additionalProperties": false,
            },
            "AccountRead": {
                "type": "object",
                "properties": {"account": {"$ref": "#/components/schemas/Account"}},
                "required": ["account"],
                "additionalProperties": false,
            },
            "AccountName": {
                "type": "string",
                "description": format!(
                    "Trimmed of surrounding white space, then 1 to {} characters (not \
                     bytes) without control characters.",
                    AccountName::MAX_CHARS
                ),
                "pattern": AccountName::pattern(),
            },
            "Reason": {
                "type": "string",
                "description": format!(
                    "At most {} characters (not bytes), no control characters; kept as sent.",
                    Reason::MAX_CHARS
                ),
                "maxLength": Reason::MAX_CHARS,
                "pattern": Reason::pattern(),
            },
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details; `code` tells problems with the same \
                    status apart and is the audit event's `error.code`.",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "code": {"type": "string"},
                },
                "required": ["type", "title", "status", "detail", "code"],
                "additionalProperties": false,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_documented_with_every_status_it_declares() {
        let document = document();
        for operation in OPERATIONS {
            let method = operation.method.as_str().to_ascii_lowercase();
            let described = &document["paths"][operation.path][&method];
            assert!(described.is_object(), "{method} {}", operation.path);
            for kind in operation.errors.iter().chain(HEAD_ERRORS) {
                let response = &described["responses"][kind.status().as_str()];
                let codes = &response["content"]["application/problem+json"]["schema"]["allOf"][1]
                    ["properties"]["code"]["enum"];
                assert!(
                    codes
                        .as_array()
                        .is_some_and(|codes| codes.contains(&json!(kind.code()))),
                    "{method} {}: {kind:?} missing",
                    operation.path
                );
            }
        }
    }

    #[test]
    fn every_action_has_a_body_variant_and_an_example() {
        let document = document();
        let content = &document["paths"]["/accounts/{id}/actions"]["post"]["requestBody"]
            ["content"]["application/json"];
        let variants = content["schema"]["oneOf"].as_array().unwrap();
        assert_eq!(variants.len(), ActionName::ALL.len());
        for action in ActionName::ALL {
            assert!(
                content["examples"][action.as_str()].is_object(),
                "{action:?}"
            );
        }
    }
}
