//! What the workload behind the proxy receives about the caller, and nothing else:
//! `outputClaimToHeaders` (claim → header), `outputPayloadToHeader`, per-rule
//! `requestHeadersToAdd`, the token forwarded or stripped, and filter state for access logs
//! and later filters. Every header claimguard can set is a *managed* header: it is removed from
//! every incoming request before anything else runs, so a client can never forge one.

use crate::config::error::ConfigError;
use crate::config::model::{RawArrayFormat, RawClaimHeader, RawClaimPath, RawHeaderToAdd};
use crate::token::claims::{claim_at, dotted};
use serde_json::{Map, Value};
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayFormat {
    Join(String),
    Json,
}

/// One `outputClaimToHeaders` entry, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: String,
    pub claim: Vec<String>,
    pub array: ArrayFormat,
}

/// One `requestHeadersToAdd` entry of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderToAdd {
    Fixed { header: String, value: String },
    Claim(ClaimHeader),
}

impl HeaderToAdd {
    pub fn header(&self) -> &str {
        match self {
            HeaderToAdd::Fixed { header, .. } => header,
            HeaderToAdd::Claim(c) => &c.header,
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Headers claimguard must never set: they carry transport or routing meaning, or credentials.
const FORBIDDEN: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

/// Validates a header name claimguard will set; returns it lower-cased.
pub(crate) fn managed_header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if lower.is_empty() || !lower.bytes().all(token) {
        return Err(err(path, format!("{name:?} is not a valid header name")));
    }
    if FORBIDDEN.contains(&lower.as_str()) || lower.starts_with("x-envoy-") {
        return Err(err(path, format!("{name:?} cannot be set by claimguard")));
    }
    Ok(lower)
}

fn claim_path(path: &str, c: RawClaimPath) -> Result<Vec<String>, ConfigError> {
    match c {
        RawClaimPath::Dotted(s) => dotted(&s).map_err(|e| err(path, e)),
        RawClaimPath::Segments(segs) if !segs.is_empty() && segs.iter().all(|s| !s.is_empty()) => Ok(segs),
        RawClaimPath::Segments(_) => Err(err(path, "a claim path must have non-empty segments")),
    }
}

pub(crate) fn compile_claim_header(path: &str, r: RawClaimHeader) -> Result<ClaimHeader, ConfigError> {
    let header = managed_header_name(&format!("{path}.header"), &r.header)?;
    let claim = claim_path(&format!("{path}.claim"), r.claim)?;
    let array = match r.array_format.unwrap_or(RawArrayFormat::Join) {
        RawArrayFormat::Join => {
            let sep = r.separator.unwrap_or_else(|| ",".into());
            if sep.chars().any(char::is_control) {
                return Err(err(format!("{path}.separator"), "must not contain control characters"));
            }
            ArrayFormat::Join(sep)
        }
        RawArrayFormat::Json => {
            if r.separator.is_some() {
                return Err(err(format!("{path}.separator"), "only applies with arrayFormat join"));
            }
            ArrayFormat::Json
        }
    };
    Ok(ClaimHeader { header, claim, array })
}

pub(crate) fn compile_header_to_add(path: &str, r: RawHeaderToAdd) -> Result<HeaderToAdd, ConfigError> {
    match (r.value, r.claim) {
        (Some(value), None) => {
            let header = managed_header_name(&format!("{path}.header"), &r.header)?;
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(err(format!("{path}.value"), "must not contain control characters"));
            }
            Ok(HeaderToAdd::Fixed { header, value })
        }
        (None, Some(claim)) => {
            let raw = RawClaimHeader {
                header: r.header,
                claim,
                array_format: None,
                separator: None,
            };
            compile_claim_header(path, raw).map(HeaderToAdd::Claim)
        }
        _ => Err(err(path, "give exactly one of value or claim")),
    }
}

/// A header value claimguard will or will not send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Value(String),
    /// The claim is absent (or null): the header is removed, never left stale.
    Absent,
    /// The value would break or bloat a header: refused, not injected.
    Refused(&'static str),
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders a claim value for a header: strings as they are, numbers and booleans as JSON
/// text, arrays joined (or as JSON), objects as compact JSON.
pub fn render(value: Option<&Value>, format: &ArrayFormat, max_bytes: usize) -> Rendered {
    let text = match value {
        None | Some(Value::Null) => return Rendered::Absent,
        Some(Value::Array(items)) => match format {
            ArrayFormat::Json => Value::Array(items.clone()).to_string(),
            ArrayFormat::Join(sep) => {
                let parts: Vec<String> = items.iter().map(scalar_text).collect();
                // `["eng", "ops,admin"]` joined with `,` reads as three elements upstream.
                if !sep.is_empty() && parts.iter().any(|p| p.contains(sep.as_str())) {
                    return Rendered::Refused(
                        "an array element contains the separator (arrayFormat json keeps them apart)",
                    );
                }
                parts.join(sep)
            }
        },
        Some(v) => scalar_text(v),
    };
    if text.len() > max_bytes {
        return Rendered::Refused("value is larger than claimHeaderMaxBytes");
    }
    if text.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Rendered::Refused("value contains CR, LF or NUL");
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Rendered::Refused("value contains control characters");
    }
    Rendered::Value(text)
}

/// What to do to the request headers of an allowed request, and what to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Headers to remove (absent claims; the token header when not forwarded).
    pub remove: Vec<Rc<str>>,
    /// Headers to set (replacing any value).
    pub set: Vec<(String, String)>,
    /// Headers not set because their value was unsafe: (header, why).
    pub refused: Vec<(String, &'static str)>,
    /// Filter state entries: (property name, value).
    pub filter_state: Vec<(String, String)>,
}

impl HeaderOps {
    pub fn apply(&mut self, header: &str, r: Rendered) {
        match r {
            Rendered::Value(v) => self.set.push((header.to_string(), v)),
            Rendered::Absent => self.remove.push(header.into()),
            Rendered::Refused(why) => {
                self.remove.push(header.into());
                self.refused.push((header.to_string(), why));
            }
        }
    }

    pub fn claim(&mut self, claims: &Map<String, Value>, h: &ClaimHeader, max_bytes: usize) {
        self.apply(&h.header, render(claim_at(claims, &h.claim), &h.array, max_bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn join() -> ArrayFormat {
        ArrayFormat::Join(",".into())
    }

    #[test]
    fn rendering_table() {
        let cases: Vec<(Option<Value>, ArrayFormat, Rendered)> = vec![
            (
                Some(json!("alice@example.com")),
                join(),
                Rendered::Value("alice@example.com".into()),
            ),
            (Some(json!(42)), join(), Rendered::Value("42".into())),
            (Some(json!(-1.5)), join(), Rendered::Value("-1.5".into())),
            (Some(json!(true)), join(), Rendered::Value("true".into())),
            (
                Some(json!(["a", "b", 3, true])),
                join(),
                Rendered::Value("a,b,3,true".into()),
            ),
            (
                Some(json!(["a", "b"])),
                ArrayFormat::Join("; ".into()),
                Rendered::Value("a; b".into()),
            ),
            (
                Some(json!(["a", {"k": 1}])),
                join(),
                Rendered::Value("a,{\"k\":1}".into()),
            ),
            (
                Some(json!(["a", "b"])),
                ArrayFormat::Json,
                Rendered::Value("[\"a\",\"b\"]".into()),
            ),
            (
                Some(json!({"roles": ["x"], "n": 1})),
                join(),
                Rendered::Value("{\"n\":1,\"roles\":[\"x\"]}".into()),
            ),
            (Some(json!([])), join(), Rendered::Value(String::new())),
            (None, join(), Rendered::Absent),
            (Some(Value::Null), join(), Rendered::Absent),
            (
                Some(json!("a\r\nx-admin: true")),
                join(),
                Rendered::Refused("value contains CR, LF or NUL"),
            ),
            (
                Some(json!("a\nb")),
                join(),
                Rendered::Refused("value contains CR, LF or NUL"),
            ),
            (
                Some(json!("a\u{0}b")),
                join(),
                Rendered::Refused("value contains CR, LF or NUL"),
            ),
            (
                Some(json!("a\u{7}b")),
                join(),
                Rendered::Refused("value contains control characters"),
            ),
            (
                Some(json!(["ok", "bad\r\n"])),
                join(),
                Rendered::Refused("value contains CR, LF or NUL"),
            ),
            (
                Some(json!("x".repeat(5000))),
                join(),
                Rendered::Refused("value is larger than claimHeaderMaxBytes"),
            ),
            (Some(json!("tab\tok")), join(), Rendered::Value("tab\tok".into())),
            // An element holding the separator would read upstream as two.
            (
                Some(json!(["eng", "ops,admin"])),
                join(),
                Rendered::Refused("an array element contains the separator (arrayFormat json keeps them apart)"),
            ),
            (
                Some(json!(["a", {"k": 1, "j": 2}])),
                join(),
                Rendered::Refused("an array element contains the separator (arrayFormat json keeps them apart)"),
            ),
            (
                Some(json!(["ops,admin", "eng"])),
                ArrayFormat::Join("; ".into()),
                Rendered::Value("ops,admin; eng".into()),
            ),
            (
                Some(json!(["eng", "ops,admin"])),
                ArrayFormat::Json,
                Rendered::Value("[\"eng\",\"ops,admin\"]".into()),
            ),
            // A string claim is one value, commas and all.
            (Some(json!("Doe, Jane")), join(), Rendered::Value("Doe, Jane".into())),
        ];
        for (v, f, want) in cases {
            assert_eq!(render(v.as_ref(), &f, 4096), want, "{v:?}");
        }
    }

    #[test]
    fn header_names() {
        assert_eq!(managed_header_name("p", "X-User-Email").unwrap(), "x-user-email");
        for bad in [
            "",
            "bad header",
            "Authorization",
            "host",
            "x-envoy-original-path",
            "content-length",
            ":path",
        ] {
            assert!(managed_header_name("p", bad).is_err(), "{bad}");
        }
    }
}
