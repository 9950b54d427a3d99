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

    pub fn parse(raw: &str) -> Result<Reason, TextError> {
        check_text(raw, Self::MAX_CHARS)?;
        Ok(Reason(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

    #[test]
    fn sanitize_removes_control_characters_and_truncates_by_characters() {
        assert_eq!(sanitize("a\u{0}b\nc", 10), "abc");
        assert_eq!(sanitize(&"ü".repeat(300), 128).chars().count(), 128);
    }
}
