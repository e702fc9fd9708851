//! Identifiers that end up in file paths and queue keys: validated once,
//! carried as types afterwards.

use serde::{Deserialize, Serialize};
use std::fmt;

pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {shown:?}: {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub shown: String,
    pub reason: &'static str,
}

/// Check an id: 1..=128 chars of `[A-Za-z0-9._-]`, not starting with `.`.
/// That excludes `/`, `\`, `..` as a path component, NUL and whitespace.
pub fn validate(what: &'static str, id: &str) -> Result<(), IdError> {
    let err = |reason| IdError {
        what,
        shown: id.chars().take(64).collect(),
        reason,
    };
    if id.is_empty() {
        return Err(err("must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(err("longer than 128 characters"));
    }
    if id.starts_with('.') {
        return Err(err("must not start with '.'"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err("only letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                validate($what, s).map(|()| $name(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                validate($what, &s).map(|()| $name(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(TaskId, "task_id");
id_type!(TemplateId, "template_id");
id_type!(TenantId, "tenant");

impl TaskId {
    /// A new time-ordered id (UUID v7).
    pub fn generate() -> TaskId {
        TaskId(uuid::Uuid::now_v7().to_string())
    }
}

impl TenantId {
    /// The tenant of a service that runs without authentication.
    pub fn default_tenant() -> TenantId {
        TenantId("default".into())
    }
}

/// A template file name, `<stem>.<kind>`, e.g. `invoice.docx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    name: String,
    kind_at: usize,
}

impl FileName {
    pub fn parse(s: &str) -> Result<FileName, IdError> {
        validate("file name", s)?;
        match s.rfind('.') {
            Some(i) if i > 0 && i + 1 < s.len() => Ok(FileName {
                name: s.to_owned(),
                kind_at: i + 1,
            }),
            _ => Err(IdError {
                what: "file name",
                shown: s.into(),
                reason: "needs an extension, e.g. letter.html",
            }),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.name
    }
    /// The extension, lower-cased: the template kind.
    pub fn kind(&self) -> String {
        self.name[self.kind_at..].to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_junk_are_refused() {
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            ".hidden",
            "a\0b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(TemplateId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["invoice", "invoice-2024_v1.2", "A"] {
            assert!(
                TemplateId::parse(good).is_ok(),
                "{good:?} should be accepted"
            );
        }
    }

    #[test]
    fn file_names_have_kinds() {
        assert_eq!(
            FileName::parse("Letter.HTML").expect("valid").kind(),
            "html"
        );
        assert!(FileName::parse("noext").is_err());
        assert!(FileName::parse("trailing.").is_err());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<TaskId>("\"../x\"").is_err());
        assert!(serde_json::from_str::<TaskId>("\"abc\"").is_ok());
    }
}
