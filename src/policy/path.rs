//! The one path a request is judged on, and the path its upstream is sent.
//!
//! A rule is only as good as the spelling that cannot get past it: `/docs/..;/orders`,
//! `/docs/x\..\orders`, `/docs//../orders` and `/docs/%2e%2e/orders` each mean different
//! things to different servers. So claimguard computes one canonical path per request, matches
//! rules on it, and has the host rewrite `:path` to it (query kept byte for byte) before the
//! request goes upstream: what was judged is what is served. Spellings whose meaning differs
//! between servers and that a rewrite cannot settle are refused (400) unless configured:
//!
//! * `%2F` / `%5C` (escaped slashes): `pathWithEscapedSlashesAction`, Envoy's name and values;
//! * `\` (Windows, Tomcat and some routers treat it as `/`): `pathWithBackslashAction`;
//! * `;` path parameters (Tomcat and Spring drop them, so `..;` is `..` there):
//!   `pathWithParametersAction`;
//! * always: a fragment (`#`), `%25` before `2e`/`2f`/`5c` (double-encoded dot or slash, for
//!   upstreams that decode twice), a malformed escape, a byte outside printable ASCII, a path
//!   not starting with `/`.
//!
//! Canonical form (RFC 3986): unreserved escapes decoded (`%61` → `a`, `%2e` → `.`), other
//! escapes kept with upper-case hex, then §5.2.4 dot-segment removal in which an empty segment
//! is a segment (`/a//../b` is `/a/b`, not `/b`), then runs of `/` merged.

/// The `pathWith*Action` choices are closed sets of the configuration model.
pub use crate::config::model::{Backslashes, EscapedSlashes, PathParameters};

/// How paths are canonicalised, from the plugin config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub escaped_slashes: EscapedSlashes,
    pub backslashes: Backslashes,
    pub parameters: PathParameters,
    /// `caseInsensitivePaths`: rules see the path lower-cased (the upstream's case is kept).
    pub case_insensitive: bool,
    /// The reserved characters (`:`, `$`, `@`, …; bit `b` for byte `b`) that some rule's
    /// path pattern names: a request escaping one of them (`%3A`) is refused
    /// ([`PathError::EscapedReserved`]), since most frameworks decode it before routing and
    /// the rule compares it as written. From [`reserved_named`] over the rules' patterns.
    pub named_reserved: u128,
}

impl Default for PathOptions {
    fn default() -> PathOptions {
        PathOptions {
            escaped_slashes: EscapedSlashes::RejectRequest,
            backslashes: Backslashes::RejectRequest,
            parameters: PathParameters::RejectRequest,
            case_insensitive: false,
            named_reserved: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    EscapedSlash,
    BadEscape,
    NotAbsolute,
    Fragment,
    Backslash,
    Parameters,
    DotSegmentParameters,
    DoubleEncoded,
    BadByte,
    EscapedReserved,
}

impl PathError {
    pub fn description(&self) -> &'static str {
        match self {
            PathError::EscapedSlash => "request path contains an escaped slash",
            PathError::BadEscape => "request path has an invalid percent-escape",
            PathError::NotAbsolute => "request path must start with /",
            PathError::Fragment => "request target contains a fragment (#)",
            PathError::Backslash => "request path contains a backslash",
            PathError::Parameters => "request path contains ; parameters",
            PathError::DotSegmentParameters => "request path has ; parameters on an empty, . or .. segment",
            PathError::DoubleEncoded => "request path contains a double-encoded dot or slash",
            PathError::BadByte => "request path contains a byte outside printable ASCII",
            PathError::EscapedReserved => {
                "request path escapes a reserved character that a rule names (write it unescaped)"
            }
        }
    }
}

/// A request's path, canonicalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// What rules match: the canonical path, without `;` parameters under
    /// `MATCH_WITHOUT_PARAMETERS`, lower-cased under `caseInsensitivePaths`.
    pub matched: String,
    /// The canonical path (no query) when it differs from the one received: then the upstream
    /// must be sent [`CanonicalPath::rewrite`] instead of what arrived.
    pub canonical: Option<String>,
    /// The new `:path` (canonical path, then the query exactly as received), when needed.
    pub rewrite: Option<String>,
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

/// The byte `%XX` at `bytes[i..]` stands for, if it is a valid escape.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let h = bytes.get(i + 1).and_then(|x| hex(*x))?;
    let l = bytes.get(i + 2).and_then(|x| hex(*x))?;
    Some(h * 16 + l)
}

/// The first `.`, `..` or empty segment (other than a last, empty one: the trailing slash) of
/// a path without its leading `/`: what canonicalisation would resolve or merge.
fn first_unresolved_segment(rest: &str) -> Option<&str> {
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if matches!(seg, "." | "..") || (seg.is_empty() && !last) {
            return Some(seg);
        }
    }
    None
}

fn push_escape(out: &mut Vec<u8>, c: u8) {
    let digit = |n: u8| if n < 10 { b'0' + n } else { b'A' + n - 10 };
    out.extend_from_slice(&[b'%', digit(c >> 4), digit(c & 0x0f)]);
}

/// The path rules see (see [`canonicalize`]).
pub fn normalize(raw: &str, o: &PathOptions) -> Result<String, PathError> {
    canonicalize(raw, o).map(|c| c.matched)
}

/// Canonicalises a request's `:path` (see the module documentation).
pub fn canonicalize(raw: &str, o: &PathOptions) -> Result<CanonicalPath, PathError> {
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    let end = raw.find('?').unwrap_or(raw.len());
    let (path, query) = raw.split_at(end);
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and absolute-form targets are not paths a rule can name.
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        // Nothing to decode, resolve or merge (the common case): one copy.
        let mut matched = path.to_string();
        if o.case_insensitive {
            matched.make_ascii_lowercase();
        }
        return Ok(CanonicalPath {
            matched,
            canonical: None,
            rewrite: None,
        });
    }
    let (canonical, matched) = canonicalize_slow(path, o)?;
    let (canonical, rewrite) = if canonical == path {
        (None, None)
    } else {
        let rewrite = format!("{canonical}{query}");
        (Some(canonical), Some(rewrite))
    };
    Ok(CanonicalPath {
        matched,
        canonical,
        rewrite,
    })
}

/// A path that canonicalisation leaves as it is: printable ASCII without `%`, `\` or `;`, and
/// no empty, `.` or `..` segments (a trailing slash is kept).
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if !path
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b'\\' | b';'))
    {
        return false;
    }
    first_unresolved_segment(rest).is_none()
}

/// [`canonicalize`] for an absolute path (no query) that needs work: (canonical, matched).
fn canonicalize_slow(path: &str, o: &PathOptions) -> Result<(String, String), PathError> {
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if !(0x21..=0x7e).contains(&b) {
            return Err(PathError::BadByte);
        }
        match b {
            b'\\' => match o.backslashes {
                Backslashes::RejectRequest => return Err(PathError::Backslash),
                Backslashes::ConvertToSlash => decoded.push(b'/'),
            },
            b';' if o.parameters == PathParameters::RejectRequest => return Err(PathError::Parameters),
            b'%' => {
                let Some(c) = escape_at(bytes, i) else {
                    return Err(PathError::BadEscape);
                };
                if is_unreserved(c) {
                    decoded.push(c);
                } else if c == b'/' || c == b'\\' {
                    match o.escaped_slashes {
                        EscapedSlashes::RejectRequest => return Err(PathError::EscapedSlash),
                        EscapedSlashes::UnescapeAndForward => decoded.push(b'/'),
                        EscapedSlashes::KeepUnchanged => push_escape(&mut decoded, c),
                    }
                } else if c < 128 && o.named_reserved & (1u128 << c) != 0 {
                    // `%3A` where a rule names `:`: decoded before routing by most
                    // frameworks, compared as written by the rule.
                    return Err(PathError::EscapedReserved);
                } else {
                    // Reserved or non-ASCII: keep the escape, upper-cased (RFC 3986 §6.2.2.1).
                    push_escape(&mut decoded, c);
                }
                i += 3;
                continue;
            }
            _ => decoded.push(b),
        }
        i += 1;
    }
    // `%252e` is `%2e` to a server that decodes once more, however it was spelled here
    // (`%25%32%65` decodes to it too).
    if decoded.windows(5).any(|w| {
        matches!(w, [b'%', b'2', b'5', h, l] if matches!(hex(*h).zip(hex(*l)).map(|(h, l)| h * 16 + l), Some(b'.' | b'/' | b'\\')))
    }) {
        return Err(PathError::DoubleEncoded);
    }
    // Only printable ASCII was pushed.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadByte)?;
    let params = o.parameters == PathParameters::MatchWithoutParameters;

    // RFC 3986 §5.2.4 over segments: `.` goes, `..` removes the segment before it, and an
    // empty segment is a segment (so `/a//../b` is `/a/b`). Then empty segments merge.
    let rest = decoded.get(1..).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                segment_name(s, params)?;
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    // Merge: a trailing empty segment is the trailing slash; the others go.
    if out.last().is_some_and(|s| s.is_empty()) {
        trailing_slash = true;
    }
    out.retain(|s| !s.is_empty());
    let mut canonical = String::with_capacity(decoded.len());
    let mut matched = String::with_capacity(decoded.len());
    for s in &out {
        canonical.push('/');
        canonical.push_str(s);
        matched.push('/');
        matched.push_str(segment_name(s, params)?);
    }
    if canonical.is_empty() || trailing_slash {
        canonical.push('/');
    }
    if matched.is_empty() || trailing_slash {
        matched.push('/');
    }
    if o.case_insensitive {
        matched.make_ascii_lowercase();
    }
    Ok((canonical, matched))
}

/// A rule's path pattern (`/files/~root/*`, `*:cancel`, `/users/{id}`) in the form requests
/// are compared in, so that it can match at all: unreserved escapes decoded (`%7E` → `~`),
/// other escapes upper-cased (`%c3%a9` → `%C3%A9`), non-ASCII characters escaped (`/café` →
/// `/caf%C3%A9`). Refused, with the reason, when no canonical request path could match it:
/// an escaped reserved character (`%3A`: write `:`; requests escaping it are refused), a
/// space, control character, `\`, `?` or `#`, a bad escape, and, in a pattern that starts with
/// `/`, a `.` or `..` segment or an empty one (`//`) before its end.
pub fn canonical_pattern(p: &str) -> Result<String, String> {
    let mut out: Vec<u8> = Vec::with_capacity(p.len());
    let bytes = p.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let Some(c) = escape_at(bytes, i) else {
                    return Err(format!("{p:?} has an invalid percent-escape"));
                };
                if is_unreserved(c) {
                    out.push(c);
                } else if !matches!(c, b'/' | b'\\') && (0x21..=0x7e).contains(&c) {
                    return Err(format!(
                        "{p:?}: write {:?} rather than %{c:02X} (rules compare reserved characters as written; a request escaping one that a rule names is refused)",
                        char::from(c)
                    ));
                } else {
                    // `%2F`/`%5C` (kept under KEEP_UNCHANGED), control characters (which a
                    // request cannot send), non-ASCII: as requests keep them.
                    push_escape(&mut out, c);
                }
                i += 3;
                continue;
            }
            b'?' | b'#' => {
                return Err(format!(
                    "{p:?} holds {:?}: rules match the path without its query",
                    char::from(b)
                ))
            }
            b'\\' => {
                return Err(format!(
                    "{p:?} holds a backslash, which a request path is refused for or has converted to /"
                ))
            }
            0x80..=0xff => push_escape(&mut out, b),
            0x21..=0x7e => out.push(b),
            _ => {
                return Err(format!(
                    "{p:?} holds a space or control character, which no request path has"
                ))
            }
        }
        i += 1;
    }
    // Only printable ASCII was pushed.
    let out = String::from_utf8(out).map_err(|_| format!("{p:?} is not text"))?;
    match out.strip_prefix('/').and_then(first_unresolved_segment) {
        None => Ok(out),
        Some("") => Err(format!(
            "{p:?} has an empty segment (//); requests are judged with slashes merged"
        )),
        Some(seg) => Err(format!(
            "{p:?} has a {seg:?} segment; requests are judged with dot segments resolved"
        )),
    }
}

/// The reserved characters a canonical pattern names (for [`PathOptions::named_reserved`]):
/// printable ASCII other than letters, digits, `-._~`, `/`, `%` (escapes) and the pattern
/// syntax `*`, `{`, `}`.
pub fn reserved_named(pattern: &str) -> u128 {
    pattern
        .bytes()
        .filter(|&b| (0x21..=0x7e).contains(&b) && !is_unreserved(b) && !matches!(b, b'/' | b'%' | b'*' | b'{' | b'}'))
        .fold(0, |m, b| m | (1u128 << b))
}

/// A segment as rules see it: without its `;` parameters when `params` (an empty, `.` or
/// `..` name before them is refused).
fn segment_name(seg: &str, params: bool) -> Result<&str, PathError> {
    if !params {
        return Ok(seg);
    }
    match seg.split_once(';') {
        Some(("" | "." | "..", _)) => Err(PathError::DotSegmentParameters),
        Some((n, _)) => Ok(n),
        None => Ok(seg),
    }
}

/// Why a `:authority` is refused: servers would not agree on the host it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// `host:x`, `host:80:80`, a port above 65535.
    BadPort,
    /// `user@host`, `%`, `/`, spaces, non-ASCII: not a host name or an IP literal.
    BadName,
}

impl HostError {
    /// What is wrong, after the host: "request host …", "\"x:y\" …".
    pub fn description(&self) -> &'static str {
        match self {
            HostError::BadPort => "has a port that is not a number from 0 to 65535",
            HostError::BadName => "is not a host name, an IPv4 address or a bracketed IPv6 address",
        }
    }
}

/// The host rules see, one spelling per host:
///
/// * lower-cased, trailing dots of the name removed (`api.example.com.` is `api.example.com`
///   to DNS and to most virtual-host routers);
/// * an empty port dropped (`api.example.com:` is `api.example.com`, RFC 3986 §3.2.3) and a
///   port's leading zeros dropped (`:0443` is `:443`), any other port kept;
/// * refused ([`HostError`]) when servers would read it as different hosts: a port that is not
///   a number (`host:x`, `host:80:80`, which some servers cut at the first colon and others at
///   the last), userinfo (`user@host`), escapes or other bytes no host name has.
///
/// The empty host (an HTTP/1.0 request without `Host`) stays empty.
pub fn canonical_host(host: &str) -> Result<std::borrow::Cow<'_, str>, HostError> {
    use std::borrow::Cow;
    let (name, raw_port) = split_port(host);
    let name_ok = if let Some(inner) = name.strip_prefix('[') {
        // `[v6]`: hex digits, colons and dots (an embedded IPv4); no zone identifier.
        inner
            .strip_suffix(']')
            .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'))
    } else {
        // RFC 3986 `unreserved` (letters, digits, `-._~`). `reg-name` also allows
        // sub-delimiters and escapes, which no DNS name or virtual host uses and which
        // servers decode differently.
        name.bytes().all(is_unreserved) && (host.is_empty() || !name.trim_end_matches('.').is_empty())
    };
    if !name_ok {
        return Err(HostError::BadName);
    }
    let port = match raw_port {
        None | Some("") => None,
        Some(p) => {
            // Leading zeros go (`:0443` is port 443 to every server that reads it).
            let digits = p.trim_start_matches('0');
            if !p.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 5 {
                return Err(HostError::BadPort);
            }
            match digits.parse::<u32>() {
                Ok(n) if n <= 65_535 => Some(digits),
                Err(_) if digits.is_empty() => Some("0"),
                _ => return Err(HostError::BadPort),
            }
        }
    };
    let trimmed = if name.starts_with('[') {
        name
    } else {
        name.trim_end_matches('.')
    };
    if trimmed.len() == name.len() && port == raw_port && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(Cow::Borrowed(host));
    }
    let mut out = String::with_capacity(host.len());
    out.push_str(trimmed);
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.make_ascii_lowercase();
    Ok(Cow::Owned(out))
}

/// `host:port` → (`host`, `port`); `[v6]:port` likewise; no colon → (`host`, None). The port
/// is everything after the first colon (after `]` for `[v6]`), so `host:80:80` has the port
/// `80:80` and `[v6]x` has the name `[v6]x`: [`canonical_host`] refuses both.
pub fn split_port(h: &str) -> (&str, Option<&str>) {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => match (h.get(..end + 1), h.get(end + 1..)) {
                (Some(name), Some(rest)) => match rest.strip_prefix(':') {
                    Some(port) => (name, Some(port)),
                    None if rest.is_empty() => (name, None),
                    None => (h, None),
                },
                _ => (h, None),
            },
            None => (h, None),
        };
    }
    match h.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    }
}

/// Whether a method is an upper-case HTTP token (RFC 9110 §9.1 `token`, without lower-case
/// letters): frameworks that upper-case methods before routing would otherwise route `get`
/// as `GET` while rules compare it as written.
pub fn is_canonical_method(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(
        escaped_slashes: EscapedSlashes,
        backslashes: Backslashes,
        parameters: PathParameters,
        case_insensitive: bool,
    ) -> PathOptions {
        PathOptions {
            escaped_slashes,
            backslashes,
            parameters,
            case_insensitive,
            named_reserved: 0,
        }
    }

    /// A small random source for the generated tests (no dependency, reproducible).
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    const PARTS: &[&str] = &[
        "a", "B", "admin", "docs", "orders", "", ".", "..", "%2e", "%2E%2e", ".%2e", "..;", ";x=1", "a;b", "\\",
        "x\\..", "%2f", "%5C", "%252e", "%252F", "%2525", "%41", "%7e", "%zz", "%", "é", " ", "..a", ".b", "%3B",
        "%C3%A9", "~", "*",
    ];

    fn generated(rng: &mut XorShift) -> String {
        let mut p = String::new();
        let n = 1 + rng.next() % 6;
        for _ in 0..n {
            p.push_str(rng.pick(&["/", "/", "/", "//", "\\"]));
            p.push_str(rng.pick(PARTS));
        }
        if rng.next().is_multiple_of(4) {
            p.push('/');
        }
        if rng.next().is_multiple_of(5) {
            p.push_str(rng.pick(&["?q=/../admin", "?a=1&b=%2F", "?"]));
        }
        p
    }

    /// RFC 3986 §5.2.4 `remove_dot_segments`, transcribed step by step from the RFC's
    /// input-buffer algorithm: the reference the segment-based code is compared with.
    fn rfc_remove_dot_segments(path: &str) -> String {
        let mut input = path.to_string();
        let mut output = String::new();
        let pop = |output: &mut String| {
            let cut = output.rfind('/').unwrap_or(0);
            output.truncate(cut);
        };
        while !input.is_empty() {
            if input.starts_with("../") {
                input.drain(..3);
            } else if input.starts_with("./") {
                input.drain(..2);
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".into();
            } else if input.starts_with("/../") {
                input.replace_range(..4, "/");
                pop(&mut output);
            } else if input == "/.." {
                input = "/".into();
                pop(&mut output);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |e| e + start);
                output.push_str(&input[..end]);
                input.drain(..end);
            }
        }
        output
    }

    fn merge_slashes(p: &str) -> String {
        let mut out = String::new();
        for c in p.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// Percent-decodes unreserved characters only, and upper-cases the other escapes.
    fn decode_unreserved(p: &str) -> String {
        let b = p.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    let c = h * 16 + l;
                    if is_unreserved(c) {
                        out.push(c as char);
                    } else {
                        out.push_str(&format!("%{c:02X}"));
                    }
                    i += 3;
                    continue;
                }
            }
            out.push(b[i] as char);
            i += 1;
        }
        out
    }

    /// A path every server maps to itself: no dot or empty segments, no `\`, `;`, `#`, no
    /// escape of an unreserved character or a slash, no double-encoded dot or slash.
    fn is_fixed_point(p: &str) -> bool {
        let lower = p.to_ascii_lowercase();
        let segments: Vec<&str> = p.split('/').collect();
        p.starts_with('/')
            && !p.contains(['\\', ';', '#', '?'])
            && !["%2e", "%2f", "%5c", "%252e", "%252f", "%255c"]
                .iter()
                .any(|e| lower.contains(e))
            && !segments
                .iter()
                .enumerate()
                .skip(1)
                .any(|(i, s)| *s == "." || *s == ".." || (s.is_empty() && i + 1 != segments.len()))
            && p.bytes().all(|b| (0x21..=0x7e).contains(&b))
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_canonicalisation() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut normal = 0;
        for _ in 0..20_000 {
            let p = generated(&mut rng);
            let path = p.split('?').next().unwrap();
            if !is_normal(path) {
                continue;
            }
            normal += 1;
            for lower in [false, true] {
                let o = opts(
                    EscapedSlashes::RejectRequest,
                    Backslashes::RejectRequest,
                    PathParameters::RejectRequest,
                    lower,
                );
                let (canonical, matched) = canonicalize_slow(path, &o).unwrap();
                assert_eq!(canonical, path, "{p:?}");
                let fast = canonicalize(&p, &o).unwrap();
                assert_eq!(fast.matched, matched, "{p:?}");
                assert_eq!(fast.rewrite, None, "{p:?}");
            }
        }
        assert!(normal > 500, "{normal}");
    }

    /// (raw `:path`, options, `Ok((path rules see, rewritten :path))` or the refusal).
    type Case = (
        &'static str,
        PathOptions,
        Result<(&'static str, Option<&'static str>), PathError>,
    );

    #[test]
    fn canonicalisation_table() {
        use Backslashes as B;
        use EscapedSlashes as E;
        use PathParameters as P;
        let d = PathOptions::default();
        let unescape = opts(E::UnescapeAndForward, B::RejectRequest, P::RejectRequest, false);
        let keep = opts(E::KeepUnchanged, B::RejectRequest, P::RejectRequest, false);
        let backslash = opts(E::RejectRequest, B::ConvertToSlash, P::RejectRequest, false);
        let matrix = opts(E::RejectRequest, B::RejectRequest, P::MatchWithoutParameters, false);
        let lower = opts(E::RejectRequest, B::RejectRequest, P::RejectRequest, true);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // (raw :path, options, Ok((path rules see, rewritten :path)) or the refusal)
            ("/admin", d, Ok(("/admin", None))),
            ("/admin/", d, Ok(("/admin/", None))),
            ("/", d, Ok(("/", None))),
            ("/admin?x=1", d, Ok(("/admin", None))),
            ("//admin", d, Ok(("/admin", Some("/admin")))),
            ("/a//b///c", d, Ok(("/a/b/c", Some("/a/b/c")))),
            ("/./admin", d, Ok(("/admin", Some("/admin")))),
            ("/x/../admin", d, Ok(("/admin", Some("/admin")))),
            ("/../../admin", d, Ok(("/admin", Some("/admin")))),
            ("/admin/.", d, Ok(("/admin/", Some("/admin/")))),
            ("/admin/users/..", d, Ok(("/admin/", Some("/admin/")))),
            ("/%2e/admin", d, Ok(("/admin", Some("/admin")))),
            ("/%2E%2E/admin", d, Ok(("/admin", Some("/admin")))),
            ("/docs/%2e%2e/orders/1", d, Ok(("/orders/1", Some("/orders/1")))),
            ("/%61dmin", d, Ok(("/admin", Some("/admin")))),
            // RFC 3986: an empty segment is a segment, so `..` after `//` removes it.
            ("/docs//../orders/1", d, Ok(("/docs/orders/1", Some("/docs/orders/1")))),
            ("/a//../b", d, Ok(("/a/b", Some("/a/b")))),
            // The query goes upstream byte for byte, and is never resolved.
            ("/docs/./a?x=/../admin", d, Ok(("/docs/a", Some("/docs/a?x=/../admin")))),
            ("/admin?next=/../x", d, Ok(("/admin", None))),
            ("/a%20b", d, Ok(("/a%20b", None))),
            ("/a%c3%a9", d, Ok(("/a%C3%A9", Some("/a%C3%A9")))),
            ("/a%3b", d, Ok(("/a%3B", Some("/a%3B")))),
            // Refused by default.
            ("/admin#frag", d, Err(PathError::Fragment)),
            ("/admin/users#/orders", d, Err(PathError::Fragment)),
            ("/admin%2Fusers", d, Err(PathError::EscapedSlash)),
            ("/admin%2fusers", d, Err(PathError::EscapedSlash)),
            ("/admin%5Cusers", d, Err(PathError::EscapedSlash)),
            ("/docs/x\\..\\..\\orders\\1", d, Err(PathError::Backslash)),
            ("/docs/..;/orders/1", d, Err(PathError::Parameters)),
            ("/admin;x=1/users", d, Err(PathError::Parameters)),
            ("/orders/1;jsessionid=a", d, Err(PathError::Parameters)),
            ("/docs/%252e%252e/admin", d, Err(PathError::DoubleEncoded)),
            ("/docs/%252F", d, Err(PathError::DoubleEncoded)),
            ("/docs/%255c", d, Err(PathError::DoubleEncoded)),
            ("/docs/%25%32%65%25%32%65/admin", d, Err(PathError::DoubleEncoded)),
            ("/docs/%25%32e", d, Err(PathError::DoubleEncoded)),
            ("/docs/%2525", d, Ok(("/docs/%2525", None))),
            ("/a%zz", d, Err(PathError::BadEscape)),
            ("/a%2", d, Err(PathError::BadEscape)),
            ("/a b", d, Err(PathError::BadByte)),
            ("/a\tb", d, Err(PathError::BadByte)),
            ("/caf\u{e9}", d, Err(PathError::BadByte)),
            ("*", d, Err(PathError::NotAbsolute)),
            ("http://evil/admin", d, Err(PathError::NotAbsolute)),
            // Configured otherwise.
            ("/admin%2Fusers", unescape, Ok(("/admin/users", Some("/admin/users")))),
            ("/x%2F..%2Fadmin", unescape, Ok(("/admin", Some("/admin")))),
            ("/admin%5cusers", unescape, Ok(("/admin/users", Some("/admin/users")))),
            ("/admin%2fusers", keep, Ok(("/admin%2Fusers", Some("/admin%2Fusers")))),
            ("/docs/x\\..\\..\\orders\\1", backslash, Ok(("/orders/1", Some("/orders/1")))),
            ("/admin;x=1/users", matrix, Ok(("/admin/users", None))),
            ("/cars;color=red/2024?x", matrix, Ok(("/cars/2024", None))),
            ("/a/./cars;c=r", matrix, Ok(("/a/cars", Some("/a/cars;c=r")))),
            ("/docs/..;/orders/1", matrix, Err(PathError::DotSegmentParameters)),
            ("/docs/.;x/orders", matrix, Err(PathError::DotSegmentParameters)),
            ("/;x/admin", matrix, Err(PathError::DotSegmentParameters)),
            ("/ADMIN", d, Ok(("/ADMIN", None))),
            ("/ADMIN", lower, Ok(("/admin", None))),
            ("/A/../ADMIN", lower, Ok(("/admin", Some("/ADMIN")))),
        ];
        for (raw, o, want) in cases {
            let got = canonicalize(raw, o).map(|c| (c.matched, c.rewrite));
            let want = want.clone().map(|(m, r)| (m.to_string(), r.map(str::to_string)));
            assert_eq!(got, want, "{raw:?} {o:?}");
        }
    }

    /// The property the filter rests on, over generated spellings: a path is refused, or
    /// (1) rules see the RFC 3986 resolution of what was sent (the RFC's own algorithm as the
    /// reference, then slashes merged), (2) what the upstream receives is exactly the path
    /// rules judged, a fixed point every server maps to itself, with the query as sent, and
    /// (3) no path rules see as public resolves, by RFC 3986, under a protected prefix.
    #[test]
    fn generated_paths_are_refused_or_judged_as_served() {
        let public = |p: &str| p == "/healthz" || p.starts_with("/docs/");
        let protected = |p: &str| p.starts_with("/admin") || p.starts_with("/orders");
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let (mut refused, mut rewritten, mut as_sent) = (0, 0, 0);
        for _ in 0..100_000 {
            let mut raw = generated(&mut rng);
            if rng.next().is_multiple_of(3) {
                raw.insert_str(0, rng.pick(&["/docs", "/healthz", "/admin", "/orders"]));
            }
            let o = PathOptions::default();
            let Ok(c) = canonicalize(&raw, &o) else {
                refused += 1;
                continue;
            };
            let path = raw.split('?').next().unwrap();
            let query = &raw[path.len()..];
            // (1) RFC 3986, step by step.
            let resolved = rfc_remove_dot_segments(&decode_unreserved(path));
            assert_eq!(c.matched, merge_slashes(&resolved), "{raw:?}");
            // (2) What goes upstream is what was judged.
            let served = c.rewrite.clone().unwrap_or_else(|| raw.clone());
            let served_path = served.split('?').next().unwrap();
            assert_eq!(served_path, c.matched, "{raw:?}");
            assert_eq!(&served[served_path.len()..], query, "{raw:?}: the query is kept");
            assert!(is_fixed_point(served_path), "{raw:?} → {served_path:?}");
            let again = canonicalize(&served, &o).unwrap();
            assert_eq!((again.matched.as_str(), again.rewrite), (served_path, None), "{raw:?}");
            // (3) Public by the rules, protected by the RFC: never both.
            assert!(!(public(&c.matched) && protected(&resolved)), "{raw:?}");
            if c.rewrite.is_some() {
                rewritten += 1;
            } else {
                as_sent += 1;
            }
        }
        // The generator reaches every branch.
        assert!(
            refused > 10_000 && rewritten > 5_000 && as_sent > 1_000,
            "{refused} {rewritten} {as_sent}"
        );
    }

    /// Under the opt-in options the same holds, with what each option promises: backslashes
    /// become slashes, parameters are judged without and served with.
    #[test]
    fn generated_paths_under_the_opt_in_options() {
        let mut rng = XorShift(0xfeed_beef_dead_f00d);
        let mut accepted = 0;
        for _ in 0..50_000 {
            let raw = generated(&mut rng);
            for o in [
                opts(
                    EscapedSlashes::UnescapeAndForward,
                    Backslashes::ConvertToSlash,
                    PathParameters::RejectRequest,
                    false,
                ),
                opts(
                    EscapedSlashes::RejectRequest,
                    Backslashes::RejectRequest,
                    PathParameters::MatchWithoutParameters,
                    false,
                ),
                opts(
                    EscapedSlashes::KeepUnchanged,
                    Backslashes::ConvertToSlash,
                    PathParameters::MatchWithoutParameters,
                    true,
                ),
            ] {
                let Ok(c) = canonicalize(&raw, &o) else { continue };
                accepted += 1;
                let served = c.rewrite.clone().unwrap_or_else(|| raw.clone());
                let served_path = served.split('?').next().unwrap();
                assert!(!served_path.contains('\\'), "{raw:?} {o:?}");
                // Served again, the canonical path is left alone and judged the same.
                let again = canonicalize(&served, &o).unwrap();
                assert_eq!((&again.matched, &again.rewrite), (&c.matched, &None), "{raw:?} {o:?}");
                let mut judged: String = served_path
                    .split('/')
                    .map(|s| s.split(';').next().unwrap())
                    .collect::<Vec<_>>()
                    .join("/");
                if judged.is_empty() {
                    judged.push('/');
                }
                if o.case_insensitive {
                    judged.make_ascii_lowercase();
                }
                assert_eq!(c.matched, judged, "{raw:?} {o:?}");
                assert!(!c.matched.split('/').any(|s| s == "." || s == ".."), "{raw:?} {o:?}");
            }
        }
        assert!(accepted > 20_000, "{accepted}");
    }

    #[test]
    fn hosts_and_methods() {
        for (raw, want) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("api.example.com..", "api.example.com"),
            ("api.example.com.:8443", "api.example.com:8443"),
            ("API.example.com:80", "api.example.com:80"),
            // An empty port is no port (RFC 3986 §3.2.3); leading zeros are not part of it.
            ("internal.example.com:", "internal.example.com"),
            ("internal.example.com.:", "internal.example.com"),
            ("INTERNAL.EXAMPLE.COM:", "internal.example.com"),
            ("api.example.com:0443", "api.example.com:443"),
            ("api.example.com:00", "api.example.com:0"),
            ("api.example.com:65535", "api.example.com:65535"),
            ("my_svc.ns.svc.cluster.local:9080", "my_svc.ns.svc.cluster.local:9080"),
            ("10.0.0.5:8080", "10.0.0.5:8080"),
            ("[::1]:80", "[::1]:80"),
            ("[::1]:", "[::1]"),
            ("[FD00::1]", "[fd00::1]"),
            ("[::ffff:10.0.0.1]", "[::ffff:10.0.0.1]"),
            ("", ""),
        ] {
            assert_eq!(canonical_host(raw).as_deref(), Ok(want), "{raw}");
        }
        for (raw, why) in [
            // Servers cut these at different colons, or read a port they cannot parse.
            ("internal.example.com:x", HostError::BadPort),
            ("internal.example.com:80:80", HostError::BadPort),
            ("internal.example.com::80", HostError::BadPort),
            ("internal.example.com:65536", HostError::BadPort),
            ("internal.example.com:99999999999", HostError::BadPort),
            ("internal.example.com: 80", HostError::BadPort),
            ("[::1]:x", HostError::BadPort),
            // Not a host name: userinfo, escapes, sub-delimiters, spaces, non-ASCII, no name.
            ("u@internal.example.com", HostError::BadName),
            ("internal%2eexample.com", HostError::BadName),
            ("internal.example.com;x", HostError::BadName),
            ("internal.example.com/x", HostError::BadName),
            ("internal example.com", HostError::BadName),
            ("caf\u{e9}.example", HostError::BadName),
            (":80", HostError::BadName),
            (".", HostError::BadName),
            ("[::1", HostError::BadName),
            ("[::1]x", HostError::BadName),
            ("[fe80::1%25eth0]", HostError::BadName),
            ("[]", HostError::BadName),
        ] {
            assert_eq!(canonical_host(raw), Err(why), "{raw:?}");
        }
        for m in ["GET", "POST", "DELETE", "PROPFIND", "M-SEARCH", "X_1"] {
            assert!(is_canonical_method(m), "{m}");
        }
        for m in ["get", "Get", "GE T", "", "GET\t", "P\u{d6}ST", "GET/"] {
            assert!(!is_canonical_method(m), "{m:?}");
        }
    }
}
