//! Domain values parsed at the edge: once a handler holds one of these, it is
//! valid, and nothing further down checks again.

use std::fmt;

/// An account name: 1–200 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountName(String);

/// Why an account could not be given a text value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl AccountName {
    pub const MAX_CHARS: usize = 200;

    /// What [`parse`](Self::parse) accepts, as a JSON Schema (ECMA-262)
    /// pattern for the OpenAPI document: white space around, then 1–200
    /// characters that start and end with neither white space nor a control
    /// character and hold no control character. "White space" is exactly
    /// what `str::trim` removes (Unicode `White_Space`), spelled out because
    /// regex engines disagree on `\s`.
    pub fn pattern() -> String {
        let inner_max = Self::MAX_CHARS - 2;
        format!(
            "^[{WHITE_SPACE}]*[^{CONTROL}{WHITE_SPACE}](?:[^{CONTROL}]{{0,{inner_max}}}[^{CONTROL}{WHITE_SPACE}])?[{WHITE_SPACE}]*$"
        )
    }

    pub fn parse(raw: &str) -> Result<AccountName, TextError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(TextError::Empty);
        }
        check_text(name, Self::MAX_CHARS)?;
        Ok(AccountName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a state change was asked for: at most 500 characters, no control
/// characters. Kept as sent (not trimmed): it is the caller's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub const MAX_CHARS: usize = 500;

    /// What [`parse`](Self::parse) accepts besides the length (the
    /// document's `maxLength`), as a JSON Schema pattern: no control
    /// character.
    pub fn pattern() -> String {
        format!("^[^{CONTROL}]*$")
    }

    pub fn parse(raw: &str) -> Result<Reason, TextError> {
        check_text(raw, Self::MAX_CHARS)?;
        Ok(Reason(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The control characters (`char::is_control`, Unicode category Cc) as the
/// inside of a regex character class.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// Unicode `White_Space` (what `char::is_whitespace` and `str::trim` use) as
/// the inside of a regex character class.
const WHITE_SPACE: &str =
    r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// Length in characters (not bytes: names are written in every script), and
/// no control characters, which covers NUL and line breaks that would let a
/// value forge lines in logs or exports.
fn check_text(text: &str, max: usize) -> Result<(), TextError> {
    if text.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    if text.chars().any(char::is_control) {
        return Err(TextError::ControlCharacter);
    }
    Ok(())
}

/// Text that came from outside and goes into an audit event as-is (the path
/// id, the user agent): control characters removed, at most `max` characters.
/// The event must record what was sent, so this cleans rather than rejects.
pub fn sanitize(raw: &str, max: usize) -> String {
    raw.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_trimmed() {
        assert_eq!(
            AccountName::parse("  Acme Ltd \t").unwrap().as_str(),
            "Acme Ltd"
        );
    }

    #[test]
    fn a_blank_name_is_rejected() {
        assert_eq!(AccountName::parse(""), Err(TextError::Empty));
        assert_eq!(AccountName::parse(" \t "), Err(TextError::Empty));
    }

    #[test]
    fn a_name_of_200_characters_is_accepted_and_201_rejected_counting_characters() {
        let max = "é".repeat(200);
        assert!(max.len() > 200);
        assert!(AccountName::parse(&max).is_ok());
        assert_eq!(
            AccountName::parse(&"é".repeat(201)),
            Err(TextError::TooLong { max: 200 })
        );
    }

    #[test]
    fn control_characters_and_nul_are_rejected_in_names_and_reasons() {
        for bad in ["a\u{0}b", "a\nb", "a\u{1b}[31mb", "a\u{7f}b", "a\u{85}b"] {
            assert_eq!(
                AccountName::parse(bad),
                Err(TextError::ControlCharacter),
                "{bad:?}"
            );
            assert_eq!(
                Reason::parse(bad),
                Err(TextError::ControlCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_reason_may_be_empty_but_not_longer_than_500_characters() {
        assert!(Reason::parse("").is_ok());
        assert!(Reason::parse(&"x".repeat(500)).is_ok());
        assert_eq!(
            Reason::parse(&"x".repeat(501)),
            Err(TextError::TooLong { max: 500 })
        );
    }

    /// Tricky text for the validators and the document's patterns: every
    /// kind of white space and control character at the edges and inside,
    /// lengths around the limits, several scripts.
    fn tricky_texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            " ",
            "a",
            " a ",
            "\ta\n",
            "a b",
            "a\u{0}b",
            "\u{0}",
            "a\u{85}",
            "\u{85}a\u{85}",
            "\u{a0}a\u{a0}",
            "a\u{a0}b",
            "\u{3000}",
            "\u{2028}a",
            "a\u{202f}b",
            "\u{feff}",
            "\u{feff}a",
            "a\u{1c}",
            "\u{1c}a",
            "a\u{7f}",
            "a\u{9f}b",
            "a\u{a0}",
            "é",
            "名前",
            "\u{1F600}",
            "a\u{200b}b",
            "\u{180e}a",
            "\u{1680}x\u{1680}",
            "x\u{2000}\u{200a}y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [198, 199, 200, 201, 499, 500, 501] {
            texts.push("x".repeat(n));
            texts.push("é".repeat(n));
            texts.push(format!("  {}  ", "x".repeat(n)));
            texts.push(format!("\u{3000}{}\t", "名".repeat(n)));
        }
        texts
    }

    fn pattern_accepts(pattern: &str, max_length: Option<usize>, text: &str) -> bool {
        let mut schema = serde_json::json!({"type": "string", "pattern": pattern});
        if let Some(max) = max_length {
            schema["maxLength"] = max.into();
        }
        jsonschema::validator_for(&schema)
            .unwrap()
            .is_valid(&serde_json::json!(text))
    }

    #[test]
    fn the_documented_name_pattern_accepts_exactly_the_valid_names() {
        let pattern = AccountName::pattern();
        for text in tricky_texts() {
            assert_eq!(
                pattern_accepts(&pattern, None, &text),
                AccountName::parse(&text).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_documented_reason_pattern_accepts_exactly_the_valid_reasons() {
        let pattern = Reason::pattern();
        for text in tricky_texts() {
            assert_eq!(
                pattern_accepts(&pattern, Some(Reason::MAX_CHARS), &text),
                Reason::parse(&text).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_white_space_class_is_exactly_what_trim_removes() {
        let class: Vec<char> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace())
            .collect();
        let pattern = format!("^[{WHITE_SPACE}]$");
        for c in &class {
            assert!(pattern_accepts(&pattern, None, &c.to_string()), "{c:?}");
        }
        assert_eq!(class.len(), 25, "Unicode White_Space changed: {class:?}");
    }

    #[test]
    fn sanitize_removes_control_characters_and_truncates_by_characters() {
        assert_eq!(sanitize("a\u{0}b\nc", 10), "abc");
        assert_eq!(sanitize(&"ü".repeat(300), 128).chars().count(), 128);
    }
}
