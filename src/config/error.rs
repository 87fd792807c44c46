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

/// A closed set spelled as a string: `value` must be one of `names` (the first is the
/// default when the field is absent); the error names the field and every choice.
pub(crate) fn one_of<T: Copy>(field: &str, value: Option<&str>, names: &[(&str, T)]) -> Result<T, ConfigError> {
    let found = match value {
        None => names.first(),
        Some(v) => names.iter().find(|(n, _)| *n == v),
    };
    found.map(|(_, t)| *t).ok_or_else(|| {
        let choices: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        err(
            field,
            format!("{:?} is not one of {}", value.unwrap_or_default(), choices.join(", ")),
        )
    })
}
