//! The path policy is evaluated on: `:path` with query and fragment stripped, unreserved
//! percent-escapes decoded (RFC 3986 §6.2.2.2), escaped slashes handled as configured, runs of
//! `/` merged and dot-segments removed (RFC 3986 §5.2.4). `/admin%2Fx`, `//admin`,
//! `/./admin`, `/a/../admin` and `/%61dmin` all become a path a `/admin/*` rule sees.

/// What to do with `%2F` / `%5C` (an escaped `/` or `\`), named after Envoy's
/// `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request (400): the safe default, since the upstream may decode them.
    RejectRequest,
    /// Decode them to `/` and `\` before matching (then normalised like any other slash).
    UnescapeAndForward,
    /// Leave them encoded: `%2F` stays part of its segment.
    KeepUnchanged,
}

impl EscapedSlashes {
    pub fn from_name(s: &str) -> Option<EscapedSlashes> {
        match s {
            "REJECT_REQUEST" => Some(EscapedSlashes::RejectRequest),
            "UNESCAPE_AND_FORWARD" => Some(EscapedSlashes::UnescapeAndForward),
            "KEEP_UNCHANGED" => Some(EscapedSlashes::KeepUnchanged),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    EscapedSlash,
    BadEscape,
    NotAbsolute,
}

impl PathError {
    pub fn description(&self) -> &'static str {
        match self {
            PathError::EscapedSlash => "request path contains an escaped slash",
            PathError::BadEscape => "request path has an invalid percent-escape",
            PathError::NotAbsolute => "request path must start with /",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, c: u8) {
    let digit = |n: u8| if n < 10 { b'0' + n } else { b'A' + n - 10 };
    out.extend_from_slice(&[b'%', digit(c >> 4), digit(c & 0x0f)]);
}

/// Normalises a request's `:path`. With `lowercase`, the result is ASCII-lowercased too (for
/// upstreams that treat paths case-insensitively).
pub fn normalize(raw: &str, slashes: EscapedSlashes, lowercase: bool) -> Result<String, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or(raw);
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and absolute-form targets are not paths a rule can name.
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        // Nothing to decode, merge or remove (the common case): one copy.
        let mut norm = path.to_string();
        if lowercase {
            norm.make_ascii_lowercase();
        }
        return Ok(norm);
    }
    normalize_slow(path, slashes, lowercase)
}

/// A path that normalization leaves as it is: no escapes, no empty, `.` or `..` segments
/// (a trailing slash is kept).
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if path.contains('%') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if matches!(seg, "." | "..") || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// [`normalize`] for an absolute path (no query) that needs work.
fn normalize_slow(path: &str, slashes: EscapedSlashes, lowercase: bool) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).and_then(|x| hex(*x)),
            bytes.get(i + 2).and_then(|x| hex(*x)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = h * 16 + l;
        if is_unreserved(c) {
            decoded.push(c);
        } else if c == b'/' || c == b'\\' {
            match slashes {
                EscapedSlashes::RejectRequest => return Err(PathError::EscapedSlash),
                EscapedSlashes::UnescapeAndForward => decoded.push(if c == b'\\' { b'/' } else { c }),
                EscapedSlashes::KeepUnchanged => push_escape(&mut decoded, c),
            }
        } else {
            // Reserved or non-ASCII: keep the escape, upper-cased (RFC 3986 §6.2.2.1).
            push_escape(&mut decoded, c);
        }
        i += 3;
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadEscape)?;

    // Merge slashes and remove dot-segments in one pass over the segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." => trailing_slash = n == last && n != 0,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut norm = String::with_capacity(decoded.len());
    for s in &out {
        norm.push('/');
        norm.push_str(s);
    }
    if norm.is_empty() || trailing_slash {
        norm.push('/');
    }
    if lowercase {
        norm.make_ascii_lowercase();
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EscapedSlashes::*;

    #[test]
    fn the_fast_path_agrees_with_the_full_normalization() {
        let parts = ["a", "B", "", ".", "..", "%2F", "%41", "x.y", "é", "%", "..a", ".b"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut p = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = 1 + seed % 5;
            for k in 0..n {
                p.push('/');
                p.push_str(parts[((seed >> (8 * k + 3)) % parts.len() as u64) as usize]);
            }
            for lower in [false, true] {
                let fast = normalize(&p, RejectRequest, lower);
                let slow = normalize_slow(&p, RejectRequest, lower);
                assert_eq!(fast, slow, "{p:?}");
                if is_normal(&p) {
                    let expected = if lower { p.to_ascii_lowercase() } else { p.clone() };
                    assert_eq!(fast.as_deref(), Ok(expected.as_str()), "{p:?}");
                }
            }
        }
    }

    #[test]
    fn normalization_table() {
        let cases: &[(&str, EscapedSlashes, bool, Result<&str, PathError>)] = &[
            ("/admin", RejectRequest, false, Ok("/admin")),
            ("/admin/", RejectRequest, false, Ok("/admin/")),
            ("/", RejectRequest, false, Ok("/")),
            ("//admin", RejectRequest, false, Ok("/admin")),
            ("/a//b///c", RejectRequest, false, Ok("/a/b/c")),
            ("/./admin", RejectRequest, false, Ok("/admin")),
            ("/x/../admin", RejectRequest, false, Ok("/admin")),
            ("/../../admin", RejectRequest, false, Ok("/admin")),
            ("/admin/.", RejectRequest, false, Ok("/admin/")),
            ("/admin/users/..", RejectRequest, false, Ok("/admin/")),
            ("/%2e/admin", RejectRequest, false, Ok("/admin")),
            ("/%2E%2E/admin", RejectRequest, false, Ok("/admin")),
            ("/%61dmin", RejectRequest, false, Ok("/admin")),
            ("/admin?x=1", RejectRequest, false, Ok("/admin")),
            ("/admin#frag", RejectRequest, false, Ok("/admin")),
            ("/admin?next=/../x", RejectRequest, false, Ok("/admin")),
            ("/admin%2Fusers", RejectRequest, false, Err(PathError::EscapedSlash)),
            ("/admin%2fusers", RejectRequest, false, Err(PathError::EscapedSlash)),
            ("/admin%5Cusers", RejectRequest, false, Err(PathError::EscapedSlash)),
            ("/admin%2Fusers", UnescapeAndForward, false, Ok("/admin/users")),
            ("/x%2F..%2Fadmin", UnescapeAndForward, false, Ok("/admin")),
            ("/admin%5cusers", UnescapeAndForward, false, Ok("/admin/users")),
            ("/admin%2fusers", KeepUnchanged, false, Ok("/admin%2Fusers")),
            ("/a%20b", RejectRequest, false, Ok("/a%20b")),
            ("/a%c3%a9", RejectRequest, false, Ok("/a%C3%A9")),
            ("/a%zz", RejectRequest, false, Err(PathError::BadEscape)),
            ("/a%2", RejectRequest, false, Err(PathError::BadEscape)),
            ("*", RejectRequest, false, Err(PathError::NotAbsolute)),
            ("http://evil/admin", RejectRequest, false, Err(PathError::NotAbsolute)),
            ("/ADMIN", RejectRequest, false, Ok("/ADMIN")),
            ("/ADMIN", RejectRequest, true, Ok("/admin")),
        ];
        for (raw, slashes, lower, want) in cases {
            assert_eq!(
                normalize(raw, *slashes, *lower).as_deref().map_err(Clone::clone),
                want.clone(),
                "{raw} {slashes:?}"
            );
        }
    }
}
