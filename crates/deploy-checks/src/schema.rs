//! The Compose specification's JSON schema (vendored in `schema/`, see its
//! README for the source and license), with the custom formats it names
//! checked the way docker-compose checked them. Without those checks a
//! typo such as `interval: 10` or `ports: ["8080:80:80"]` would pass.

use jsonschema::{Draft, Validator};
use serde_json::Value;

use crate::compose::{parse_expose, parse_port};

/// The schema file, embedded so the check cannot read a different copy.
const SCHEMA: &str = include_str!("../schema/compose-spec.json");

/// A compiled validator for compose documents.
pub struct ComposeSchema {
    validator: Validator,
}

impl std::fmt::Debug for ComposeSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ComposeSchema")
    }
}

impl ComposeSchema {
    /// Compiles the vendored schema.
    pub fn load() -> Result<ComposeSchema, String> {
        let schema: Value = serde_json::from_str(SCHEMA)
            .map_err(|e| format!("schema/compose-spec.json is not JSON: {e}"))?;
        let validator = jsonschema::options()
            .with_draft(Draft::Draft201909)
            .should_validate_formats(true)
            // A format this schema names but nobody checks would be a silent hole.
            .should_ignore_unknown_formats(false)
            .with_format("duration", is_duration)
            .with_format("ports", |s: &str| parse_port(s).is_ok())
            .with_format("expose", |s: &str| parse_expose(s).is_ok())
            .with_format("subnet_ip_address", is_subnet)
            .build(&schema)
            .map_err(|e| format!("schema/compose-spec.json does not compile: {e}"))?;
        Ok(ComposeSchema { validator })
    }

    /// Every way `doc` breaks the specification, one line each with the
    /// JSON pointer of the offending value.
    pub fn violations(&self, doc: &Value) -> Vec<String> {
        self.validator
            .iter_errors(doc)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!("at {at}: {e}")
            })
            .collect()
    }
}

/// A Go duration as Compose reads it (`time.ParseDuration`): one or more
/// `<number><unit>` with units ns, us, µs, ms, s, m, h, or a bare `0`.
pub fn is_duration(text: &str) -> bool {
    if text == "0" {
        return true;
    }
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        let well_formed = number.split('.').count() <= 2
            && number
                .split('.')
                .next()
                .is_some_and(|whole| !whole.is_empty())
            && !number.ends_with('.');
        if digits == 0 || !well_formed {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .filter(|unit| rest.starts_with(unit))
            .max_by_key(|unit| unit.len());
        match unit {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    true
}

/// `address/prefix`, IPv4 or IPv6.
fn is_subnet(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_are_read_like_go_durations() {
        for good in [
            "0",
            "10s",
            "1m30s",
            "1.5h",
            "250ms",
            "3us",
            "2µs",
            "1h2m3s4ms",
        ] {
            assert!(is_duration(good), "{good}");
        }
        for bad in ["", "10", "s", "1.s", ".5s", "1..5s", "10 s", "5d", "-1s"] {
            assert!(!is_duration(bad), "{bad}");
        }
    }

    #[test]
    fn a_valid_document_passes_and_each_kind_of_mistake_is_reported_where_it_is() {
        let schema = ComposeSchema::load().unwrap();
        let good = json!({
            "services": {"web": {
                "image": "nginx:1.27",
                "ports": ["127.0.0.1:8080:80", "443"],
                "expose": ["8081"],
                "healthcheck": {"test": ["CMD", "true"], "interval": "10s"},
                "depends_on": {"db": {"condition": "service_healthy"}},
            }},
            "volumes": {"data": {}},
        });
        assert_eq!(schema.violations(&good), Vec::<String>::new());

        for (bad, at) in [
            (
                json!({"services": {"web": {"image": "x", "ports": ["8080:80:80"]}}}),
                "/services/web/ports/0",
            ),
            (
                json!({"services": {"web": {"image": "x", "healthcheck": {"interval": "10"}}}}),
                "/services/web/healthcheck/interval",
            ),
            (
                json!({"services": {"web": {"image": "x", "depends_on": {"db": {"condition": "healthy"}}}}}),
                "/services/web/depends_on",
            ),
            (
                json!({"services": {"web": {"image": "x", "restart_policy": "always"}}}),
                "/services/web",
            ),
            (
                json!({"services": {"web": {"image": "x"}}, "name": "project"}),
                "/",
            ),
        ] {
            let violations = schema.violations(&bad);
            assert!(
                violations
                    .iter()
                    .any(|v| v.starts_with(&format!("at {at}:"))),
                "{bad}: {violations:?}"
            );
        }
    }
}
