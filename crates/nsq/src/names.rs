//! Topic and channel names, validated once so every command we build from
//! them is well formed: nsqd splits command lines on spaces and newlines, so
//! a name with either would corrupt the stream rather than be rejected.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// nsqd's limit on topic and channel names, `#ephemeral` suffix included.
const MAX_NAME_LEN: usize = 64;
const EPHEMERAL_SUFFIX: &str = "#ephemeral";

/// A name nsqd would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NSQ {kind} name {name:?}: {reason}")]
pub struct InvalidName {
    /// `"topic"` or `"channel"`.
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// Checks nsqd's rule: 1–64 characters of `[.a-zA-Z0-9_-]`, optionally ending
/// in `#ephemeral` (the suffix counts towards the 64).
fn validate(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let invalid = |reason| InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 64 characters"));
    }
    let stem = name.strip_suffix(EPHEMERAL_SUFFIX).unwrap_or(name);
    if stem.is_empty() {
        return Err(invalid("it has nothing before #ephemeral"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !stem.chars().all(allowed) {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed (plus a trailing #ephemeral)",
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Parses a name, rejecting anything nsqd would refuse.
            pub fn new(name: &str) -> Result<$ty, InvalidName> {
                validate($kind, name)?;
                Ok($ty(name.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether nsqd deletes it once its last client disconnects.
            pub fn is_ephemeral(&self) -> bool {
                self.0.ends_with(EPHEMERAL_SUFFIX)
            }
        }

        impl FromStr for $ty {
            type Err = InvalidName;
            fn from_str(name: &str) -> Result<$ty, InvalidName> {
                $ty::new(name)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = InvalidName;
            fn try_from(name: String) -> Result<$ty, InvalidName> {
                validate($kind, &name)?;
                Ok($ty(name))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A valid NSQ topic name.
    Topic,
    "topic"
);
name_type!(
    /// A valid NSQ channel name.
    Channel,
    "channel"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_names_nsqd_accepts() {
        for name in [
            "audit.events",
            "a",
            "A-b_c.9",
            "x#ephemeral",
            &"a".repeat(64),
            &format!("{}#ephemeral", "a".repeat(54)),
        ] {
            assert_eq!(Topic::new(name).unwrap().as_str(), name);
            assert_eq!(Channel::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_the_names_nsqd_refuses() {
        for name in [
            "",
            "with space",
            "new\nline",
            "slash/",
            "é",
            "#ephemeral",
            "a#ephemeralx",
            "a#b",
            &"a".repeat(65),
            &format!("{}#ephemeral", "a".repeat(55)),
        ] {
            assert!(Topic::new(name).is_err(), "{name:?} accepted as a topic");
            assert!(
                Channel::new(name).is_err(),
                "{name:?} accepted as a channel"
            );
        }
    }

    #[test]
    fn ephemeral_names_are_recognised() {
        assert!(Channel::new("tail#ephemeral").unwrap().is_ephemeral());
        assert!(!Channel::new("audit-store").unwrap().is_ephemeral());
    }

    #[test]
    fn names_deserialize_through_validation() {
        let topic: Topic = serde_json::from_str("\"audit.events\"").unwrap();
        assert_eq!(topic.to_string(), "audit.events");
        let err = serde_json::from_str::<Channel>("\"bad name\"").unwrap_err();
        assert!(
            err.to_string().contains("invalid NSQ channel name"),
            "{err}"
        );
        assert_eq!("t".parse::<Topic>().unwrap().as_str(), "t");
    }
}
