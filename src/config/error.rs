//! `ConfigError`: what every layer's compiler returns, naming the field path and why.

use std::fmt;

/// A config error: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// `"audit" is not one of enforce, dryRun`: why a closed set refused a value, listing every
/// choice in order (the error's path names the field).
pub(crate) fn not_one_of(value: &str, choices: &[&str]) -> String {
    format!("{value:?} is not one of {}", choices.join(", "))
}

/// Starts the message of a closed set's error raised while the model is deserialized
/// (`config::model`'s closed sets), so that [`serde_message`] can recognise it.
const CLOSED_SET_MARK: &str = "\u{1}closed set\u{1}";

/// [`not_one_of`], marked as a closed set's error for [`serde_message`].
pub(crate) fn marked_not_one_of(value: &str, choices: &[&str]) -> String {
    format!("{CLOSED_SET_MARK}{}", not_one_of(value, choices))
}

/// What an error serde_json raised says: its own words (ending ` at line L column C`), except
/// that a closed set's error loses its mark and that position, so it reads exactly as it did
/// when the set was checked after parsing (the field path says where).
pub(crate) fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix(CLOSED_SET_MARK) {
        None => text,
        Some(rest) => {
            let position = format!(" at line {} column {}", e.line(), e.column());
            rest.strip_suffix(&position).unwrap_or(rest).to_string()
        }
    }
}
