//! Claim paths: `realm_access.roles` (or `["https://x.io/roles"]`) parsed once at configure
//! time, and read from a verified token's claims.

use serde_json::{Map, Value};

/// Parses `a.b\.c` into `["a", "b.c"]`.
pub fn dotted(s: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('.' | '\\')) => {
                    if let Some(last) = out.last_mut() {
                        last.push(n)
                    }
                }
                _ => return Err(format!("{s:?}: '\\' may only escape '.' or '\\'")),
            },
            '.' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c)
                }
            }
        }
    }
    if out.iter().any(String::is_empty) {
        return Err(format!("{s:?} has an empty segment"));
    }
    Ok(out)
}

/// The value at a parsed claim path: nested objects only (never into arrays).
pub fn claim_at<'a>(claims: &'a Map<String, Value>, segs: &[String]) -> Option<&'a Value> {
    let (first, rest) = segs.split_first()?;
    let mut v = claims.get(first)?;
    for s in rest {
        v = v.as_object()?.get(s)?;
    }
    Some(v)
}
