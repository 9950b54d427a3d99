//! An env file (`.env`, `.env.example`) read as Compose reads it.
//!
//! Compose's own format has corners (escapes and interpolation inside double
//! quotes and unquoted values, multi-line values) where a second reader could
//! easily disagree with it. This reader accepts the plain subset on which the
//! two cannot disagree, and refuses everything else with the line number, so
//! `.env.example` stays within what is checked here:
//!
//! - blank lines and lines starting with `#`;
//! - `NAME=value`, optionally prefixed with `export `; an unquoted value is
//!   trimmed and ends at ` #` (an inline comment);
//! - `NAME='value'` taken literally, and `NAME="value"` without `\` or `$`.

use std::collections::BTreeMap;

/// A line the reader does not accept, or a name given twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct EnvFileError {
    pub line: usize,
    pub reason: String,
}

/// Parses the text of an env file into its variables.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut vars = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let error = |reason: String| EnvFileError { line, reason };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let assignment = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(error(format!("expected NAME=value, found {trimmed:?}")));
        };
        let name = name.trim();
        if !is_name(name) {
            return Err(error(format!("{name:?} is not a variable name")));
        }
        let value =
            parse_value(value.trim()).map_err(|reason| error(format!("{name}: {reason}")))?;
        if vars.insert(name.to_owned(), value).is_some() {
            return Err(error(format!(
                "{name} is set twice; Compose would silently keep the last one"
            )));
        }
    }
    Ok(vars)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, the names Compose can interpolate.
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(value: &str) -> Result<String, String> {
    if let Some(rest) = value.strip_prefix('\'') {
        let inner = rest
            .strip_suffix('\'')
            .filter(|inner| !inner.contains('\''))
            .ok_or("a single-quoted value must end with the only other '")?;
        return Ok(inner.to_owned());
    }
    if let Some(rest) = value.strip_prefix('"') {
        let inner = rest
            .strip_suffix('"')
            .filter(|inner| !inner.contains('"'))
            .ok_or("a double-quoted value must end with the only other \"")?;
        if inner.contains(['\\', '$']) {
            return Err(
                "\\ and $ inside double quotes are escapes or interpolation in Compose; \
                 use single quotes for a literal value"
                    .into(),
            );
        }
        return Ok(inner.to_owned());
    }
    // An inline comment starts at a `#` that follows whitespace.
    let value = match value.find(" #").or_else(|| value.find("\t#")) {
        Some(at) => value[..at].trim_end(),
        None => value,
    };
    if value.contains(['"', '\'', '\\', '$']) {
        return Err(
            "quotes, \\ and $ in an unquoted value are read differently by Compose; \
             put the value in single quotes"
                .into(),
        );
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_quoted_exported_and_commented_lines_are_read() {
        let vars =
            parse("# a comment\n\nA=1\nexport B = two words # why\nC='x # y $z'\nD=\"q\"\nE=\n")
                .unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x # y $z");
        assert_eq!(vars["D"], "q");
        assert_eq!(vars["E"], "");
    }

    #[test]
    fn lines_compose_would_read_differently_are_refused_with_their_number() {
        for (text, line) in [
            ("A=1\nB=$A\n", 2),
            ("A=\"a\\nb\"\n", 1),
            ("A=\"${B}\"\n", 1),
            ("A='open\n", 1),
            ("A=1\nA=2\n", 2),
            ("not an assignment\n", 1),
            ("1A=x\n", 1),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
    }
}
