//! Compose's variable interpolation, resolved the way `docker compose` does
//! before it validates a file: `$NAME`, `${NAME}`, `${NAME:-default}`,
//! `${NAME-default}`, `${NAME:?message}`, `${NAME?message}`, `${NAME:+alt}`,
//! `${NAME+alt}` (defaults and alternatives may nest), and `$$` for a
//! literal `$`.
//!
//! One deliberate difference: Compose replaces an unset `$NAME` or `${NAME}`
//! with an empty string and only warns. Here that is an error, because in
//! these files it is always a forgotten `.env.example` entry; write
//! `${NAME:-}` where empty is meant.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Why a text could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error("required variable {name} is not set: {message}")]
    Required { name: String, message: String },
    #[error("{name} is not set (Compose would warn and use an empty string; write ${{{name}:-}} if that is meant)")]
    Unset { name: String },
    #[error("invalid interpolation in {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

/// Replaces every variable reference in `text` with its value from `vars`.
pub fn interpolate(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, InterpolationError> {
    let invalid = |reason: &str| InterpolationError::Invalid {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let end =
                closing_brace(body_and_tail).ok_or_else(|| invalid("a ${ is never closed"))?;
            out.push_str(&expand(&body_and_tail[..end], vars).map_err(|e| match e {
                // Report the whole text, not the fragment, so the value can be found.
                InterpolationError::Invalid { reason, .. } => invalid(&reason),
                other => other,
            })?);
            rest = &body_and_tail[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(invalid(
                    "a $ not followed by a name; write $$ for a literal $",
                ));
            }
            out.push_str(lookup(&after[..len], vars)?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the variables `text` refers to, in defaults too.
pub fn references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        let after = after.strip_prefix('{').unwrap_or(after);
        let len = name_len(after);
        if len > 0 {
            names.insert(after[..len].to_owned());
        }
        rest = &after[len..];
    }
    names
}

/// Interpolates every string in a parsed compose document, as Compose does
/// (values only: keys are taken literally). An error names the path of the
/// value, e.g. `services.accounts-api.environment.DATABASE_URL`.
pub fn interpolate_json(
    value: &mut Value,
    vars: &BTreeMap<String, String>,
) -> Result<(), (String, InterpolationError)> {
    walk(value, vars, &mut Vec::new())
}

fn walk(
    value: &mut Value,
    vars: &BTreeMap<String, String>,
    path: &mut Vec<String>,
) -> Result<(), (String, InterpolationError)> {
    match value {
        Value::String(text) => {
            *text = interpolate(text, vars).map_err(|e| (path.join("."), e))?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(index.to_string());
                walk(item, vars, path)?;
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.clone());
                walk(item, vars, path)?;
                path.pop();
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// The contents of `${...}` without the braces.
fn expand(body: &str, vars: &BTreeMap<String, String>) -> Result<String, InterpolationError> {
    let len = name_len(body);
    if len == 0 {
        return Err(InterpolationError::Invalid {
            text: body.to_owned(),
            reason: "${ must be followed by a variable name".into(),
        });
    }
    let (name, op) = body.split_at(len);
    let value = vars.get(name).map(String::as_str);
    let non_empty = value.filter(|v| !v.is_empty());
    let required = |message: &str| InterpolationError::Required {
        name: name.to_owned(),
        message: message.to_owned(),
    };
    if op.is_empty() {
        return lookup(name, vars).map(str::to_owned);
    }
    if let Some(default) = op.strip_prefix(":-") {
        return match non_empty {
            Some(v) => Ok(v.to_owned()),
            None => interpolate(default, vars),
        };
    }
    if let Some(message) = op.strip_prefix(":?") {
        return non_empty
            .map(str::to_owned)
            .ok_or_else(|| required(message));
    }
    if let Some(alternative) = op.strip_prefix(":+") {
        return match non_empty {
            Some(_) => interpolate(alternative, vars),
            None => Ok(String::new()),
        };
    }
    if let Some(default) = op.strip_prefix('-') {
        return match value {
            Some(v) => Ok(v.to_owned()),
            None => interpolate(default, vars),
        };
    }
    if let Some(message) = op.strip_prefix('?') {
        return value.map(str::to_owned).ok_or_else(|| required(message));
    }
    if let Some(alternative) = op.strip_prefix('+') {
        return match value {
            Some(_) => interpolate(alternative, vars),
            None => Ok(String::new()),
        };
    }
    Err(InterpolationError::Invalid {
        text: body.to_owned(),
        reason: format!("unknown operator after {name}"),
    })
}

fn lookup<'v>(
    name: &str,
    vars: &'v BTreeMap<String, String>,
) -> Result<&'v str, InterpolationError> {
    vars.get(name)
        .map(String::as_str)
        .ok_or_else(|| InterpolationError::Unset {
            name: name.to_owned(),
        })
}

/// Length in bytes of the variable name at the start of `text`.
fn name_len(text: &str) -> usize {
    text.char_indices()
        .take_while(|&(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
        .count()
}

/// The byte index of the `}` that closes a `${` whose body starts `text`,
/// skipping nested `${...}` and `$$`.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("SET", "value"), ("EMPTY", ""), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn run(text: &str) -> Result<String, InterpolationError> {
        interpolate(text, &vars())
    }

    #[test]
    fn every_operator_resolves_as_compose_resolves_it() {
        for (text, expected) in [
            ("plain", "plain"),
            ("$SET and ${SET}", "value and value"),
            ("127.0.0.1:${PORT}:8080", "127.0.0.1:8080:8080"),
            ("${EMPTY:-default}", "default"),
            ("${EMPTY-default}", ""),
            ("${UNSET:-default}", "default"),
            ("${UNSET-default}", "default"),
            ("${SET:-default}", "value"),
            ("${UNSET:-}", ""),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${SET:?needed}", "value"),
            ("${EMPTY?needed}", ""),
            ("${UNSET:-${PORT}}", "8080"),
            ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
            ("$$SET costs $$5", "$SET costs $5"),
            ("${SET}_suffix", "value_suffix"),
        ] {
            assert_eq!(run(text).as_deref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn required_unset_and_malformed_references_are_errors() {
        assert_eq!(
            run("${EMPTY:?set it in .env}"),
            Err(InterpolationError::Required {
                name: "EMPTY".into(),
                message: "set it in .env".into()
            })
        );
        assert!(matches!(
            run("${UNSET?x}"),
            Err(InterpolationError::Required { .. })
        ));
        assert!(matches!(
            run("$UNSET"),
            Err(InterpolationError::Unset { .. })
        ));
        assert!(matches!(
            run("${UNSET}"),
            Err(InterpolationError::Unset { .. })
        ));
        for bad in ["${SET", "${}", "${SET%x}", "cost: $5", "end $"] {
            assert!(
                matches!(run(bad), Err(InterpolationError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn references_are_found_in_defaults_and_escapes_are_not_references() {
        let names = references("$A ${B:-${C}} $$D ${E:?x} plain");
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(names, ["A", "B", "C", "E"]);
    }

    #[test]
    fn a_document_is_interpolated_in_values_only_and_errors_name_the_path() {
        let mut doc = serde_json::json!({
            "services": {"api": {"ports": ["${PORT}:80"], "environment": {"$KEY": "${SET}"}}}
        });
        interpolate_json(&mut doc, &vars()).unwrap();
        assert_eq!(doc["services"]["api"]["ports"][0], "8080:80");
        assert_eq!(doc["services"]["api"]["environment"]["$KEY"], "value");

        let mut doc = serde_json::json!({"services": {"api": {"ports": ["${NOPE}"]}}});
        let (path, _) = interpolate_json(&mut doc, &vars()).unwrap_err();
        assert_eq!(path, "services.api.ports.0");
    }
}
