//! Finding the token in a request (`fromHeaders`, `fromParams`, `fromCookies`) and parsing a
//! compact JWS strictly: exactly three segments, canonical unpadded base64url, JSON objects
//! without duplicate members, a string `alg` that is not `none`, no `crit`, and a size cap.
//! Nothing here trusts the token: it only decides whether it is well-formed enough to verify.

pub mod claims;

use crate::base::json::{parse_strict, truncate};
use crate::crypto::alg::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// Where a provider looks for its token. Two are the same place when they read the same
/// tokens: header prefixes compare in any case, as they match.
#[derive(Debug, Clone)]
pub enum Location {
    /// A request header (name lower-cased) and the prefix that must start its value
    /// (compared ASCII case-insensitively: RFC 7235 auth schemes are case-insensitive).
    Header { name: Rc<str>, prefix: String },
    /// A query parameter, percent-decoded.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl PartialEq for Location {
    fn eq(&self, other: &Location) -> bool {
        match (self, other) {
            // `Bearer ` and `bearer ` find the same token: two locations would make every
            // request carry "two tokens".
            (Location::Header { name: a, prefix: p }, Location::Header { name: b, prefix: q }) => {
                a == b && p.eq_ignore_ascii_case(q)
            }
            (Location::Param(a), Location::Param(b)) | (Location::Cookie(a), Location::Cookie(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Location {}

impl Location {
    pub fn describe(&self) -> String {
        match self {
            Location::Header { name, prefix } if prefix.is_empty() => format!("header {name}"),
            Location::Header { name, prefix } => format!("header {name} ({prefix:?} prefix)"),
            Location::Param(p) => format!("query parameter {p}"),
            Location::Cookie(c) => format!("cookie {c}"),
        }
    }
}

use std::borrow::Cow;
use std::rc::Rc;

/// One request header: (name, value), borrowed from the host's header map.
pub type Header<'a> = (&'a str, &'a str);

/// Borrows owned (name, value) pairs as [`Header`]s (the CLI and tests hold them owned).
pub fn header_refs(owned: &[(String, String)]) -> Vec<Header<'_>> {
    owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// What the filter needs from a request: its headers (names lower-case, as Envoy gives them)
/// and its `:path` including the query string.
pub struct Request<'a> {
    pub headers: &'a [Header<'a>],
    pub path: &'a str,
}

impl<'a> Request<'a> {
    fn header_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Every token candidate found at `loc`. More than one is possible (a repeated header or
/// parameter); the caller refuses ambiguous requests. Borrowed from the request unless
/// percent-decoding changed it.
pub fn extract<'a>(loc: &Location, req: &Request<'a>) -> Vec<Cow<'a, str>> {
    let mut out = Vec::new();
    match loc {
        Location::Header { name, prefix } => {
            for value in req.header_values(name) {
                // Envoy may fold repeated headers into one comma-separated value.
                let mut rest = Some(value);
                while let Some(v) = rest {
                    let (part, next) = match find_byte(v.as_bytes(), b',') {
                        Some(i) => (v.get(..i).unwrap_or(""), v.get(i + 1..)),
                        None => (v, None),
                    };
                    rest = next;
                    let part = part.trim_matches(|c| c == ' ' || c == '\t');
                    if let Some(t) = after_prefix(part, prefix) {
                        if !t.is_empty() {
                            out.push(Cow::Borrowed(t));
                        }
                    }
                }
            }
        }
        Location::Param(name) => {
            let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
            let query = query.split_once('#').map(|(q, _)| q).unwrap_or(query);
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if percent_decode(k).as_deref() == Some(name.as_str()) && !v.is_empty() {
                    // An undecodable value is passed on as-is and fails parsing as malformed.
                    out.push(percent_decode(v).map_or(Cow::Borrowed(v), Cow::Owned));
                }
            }
        }
        Location::Cookie(name) => {
            for header in req.header_values("cookie") {
                for c in header.split(';') {
                    if let Some((k, v)) = c.trim().split_once('=') {
                        // RFC 6265 allows the value in quotes: `jwt=""` is as empty as `jwt=`.
                        let v = v.trim().trim_matches('"');
                        if k.trim() == name && !v.is_empty() {
                            out.push(Cow::Borrowed(v));
                        }
                    }
                }
            }
        }
    }
    out
}

/// How a token header that no configured location reads is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Empty, or credentials of another scheme (`Basic …`): RFC 6750 §3.1 answers these as a
    /// request without a token (no error code).
    NotBearer,
    /// The configured scheme spelled otherwise (`Bearer<TAB>…`), or a token with no scheme
    /// where one is required: an invalid token.
    Malformed,
}

/// Every token header that is present but holds a value no configured location reads, and
/// how, in the order of `locations`. Such a header would otherwise count as "no token" and
/// reach the upstream unverified, so each must be refused or removed: not only the first
/// (`Authorization: Basic …` beside a forged `X-Access-Token`).
pub fn unreadable_token_headers<'l>(locations: &'l [Location], req: &Request) -> Vec<(&'l Rc<str>, Unreadable)> {
    let mut out = Vec::new();
    for (i, loc) in locations.iter().enumerate() {
        let Location::Header { name, .. } = loc else { continue };
        // Each header name once: the first location naming it speaks for all.
        if locations
            .iter()
            .take(i)
            .any(|l| matches!(l, Location::Header { name: n, .. } if n == name))
        {
            continue;
        }
        let prefixes = || {
            locations.iter().filter_map(move |l| match l {
                Location::Header { name: n, prefix } if n == name => Some(prefix.as_str()),
                _ => None,
            })
        };
        let readable = |part: &str| prefixes().any(|p| after_prefix(part, p).is_some_and(|t| !t.is_empty()));
        let mut found = None;
        for value in req.header_values(name) {
            // As `extract` reads it: comma-separated parts, spaces and tabs trimmed.
            // (`comma_parts`, not `str::split`: see `find_byte`.)
            // An empty part beside others is folding's leftover (`Bearer <token>,`), not a
            // credential; an empty value is the header sent with nothing in it.
            let blank = || value.bytes().all(|b| b == b' ' || b == b'\t');
            for part in comma_parts(value).map(|p| p.trim_matches(|c| c == ' ' || c == '\t')) {
                if readable(part) || (part.is_empty() && !blank()) {
                    continue;
                }
                let scheme = part.split_once(' ').map(|(s, _)| s);
                let other_scheme = part.is_empty()
                    || scheme.is_some_and(|s| {
                        !s.is_empty()
                            && s.bytes().all(is_tchar)
                            && !prefixes().any(|p| p.trim_end().eq_ignore_ascii_case(s))
                    });
                if !other_scheme {
                    found = Some((name, Unreadable::Malformed));
                    break;
                }
                found = Some((name, Unreadable::NotBearer));
            }
            if matches!(found, Some((_, Unreadable::Malformed))) {
                break;
            }
        }
        out.extend(found);
    }
    out
}

/// RFC 9110 `tchar`: what an auth scheme is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first `needle` in `hay`, eight bytes at a time. (`str::split` finds it with `memchr`,
/// which on wasm32 reads four bytes a step: over a 600-byte token that was a tenth of a
/// cached request's own time in V8.)
pub fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or_default()) ^ pattern;
        // A zero byte in `w` (a byte equal to `needle`) sets its high bit here, and no
        // other byte can: the classic has-zero-byte test.
        if w.wrapping_sub(LO) & !w & HI != 0 {
            return c.iter().position(|&b| b == needle).map(|p| offset + p);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == needle).map(|p| offset + p)
}

/// `value.split(',')`, with [`find_byte`].
fn comma_parts(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let v = rest?;
        match find_byte(v.as_bytes(), b',') {
            Some(i) => {
                rest = v.get(i + 1..);
                v.get(..i)
            }
            None => {
                rest = None;
                Some(v)
            }
        }
    })
}

/// `raw`'s three dot-separated parts, or None unless there are exactly three (as
/// `raw.split('.')` would give them).
pub fn three_parts(raw: &str) -> Option<(&str, &str, &str)> {
    let b = raw.as_bytes();
    let first = find_byte(b, b'.')?;
    let second = first + 1 + find_byte(b.get(first + 1..)?, b'.')?;
    let rest = b.get(second + 1..)?;
    if find_byte(rest, b'.').is_some() {
        return None;
    }
    // '.' is ASCII: every cut is a char boundary.
    Some((raw.get(..first)?, raw.get(first + 1..second)?, raw.get(second + 1..)?))
}

/// The token after `prefix` in one header value part. A prefix ending in a space (`Bearer `)
/// also takes the spaces after it: RFC 7235 separates the scheme from its credentials with
/// `1*SP`, and jwt_authn skips them too.
fn after_prefix<'a>(part: &'a str, prefix: &str) -> Option<&'a str> {
    let t = strip_prefix_ignore_case(part, prefix)?;
    Some(if prefix.ends_with(' ') {
        t.trim_start_matches(' ')
    } else {
        t
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Why a token is not well-formed. Messages never echo more than a short prefix of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    TooLarge {
        limit: usize,
    },
    Malformed(String),
    AlgNone,
    /// An `alg` claimguard does not implement (its name is not echoed: attacker text).
    UnsupportedAlg,
}

/// A structurally valid compact JWS whose signature has not been checked yet.
#[derive(Debug)]
pub struct Jwt<'a> {
    pub raw: &'a str,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
    pub alg: Alg,
    pub kid: Option<String>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// Parses a JWT: a compact JWS whose payload is a JSON object of claims.
pub fn parse(raw: &str, max_bytes: usize) -> Result<Jwt<'_>, TokenError> {
    parse_compact(raw, max_bytes, true)
}

/// Parses any compact JWS (the payload need not be JSON; `claims` is then empty). Used to
/// run public JWS test vectors through the same parser and verifier tokens go through.
pub fn parse_jws(raw: &str, max_bytes: usize) -> Result<Jwt<'_>, TokenError> {
    parse_compact(raw, max_bytes, false)
}

fn parse_compact(raw: &str, max_bytes: usize, jwt: bool) -> Result<Jwt<'_>, TokenError> {
    if raw.len() > max_bytes {
        return Err(TokenError::TooLarge { limit: max_bytes });
    }
    // `find_byte`, not `str::split`: wasm32's memchr made the three scans of a 600-byte
    // RS256 token a tenth of the parse (host_profile, cold HS256 requests).
    let Some((h, p, s)) = three_parts(raw) else {
        return Err(TokenError::Malformed(
            "a JWT must have exactly three dot-separated parts".into(),
        ));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed("a JWT part is empty".into()));
    }
    let header = decode_object(h, "header")?;
    let claims = if jwt {
        decode_object(p, "payload")?
    } else {
        URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed("payload is not canonical base64url".into()))?;
        Map::new()
    };
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("signature is not canonical base64url".into()))?;
    let signing_input = raw.get(..h.len() + 1 + p.len()).unwrap_or("");

    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(TokenError::AlgNone),
        Some(Value::String(a)) => Alg::from_name(a).ok_or(TokenError::UnsupportedAlg)?,
        Some(_) => return Err(TokenError::Malformed("header alg must be a string".into())),
        None => return Err(TokenError::Malformed("header has no alg".into())),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed("header kid must be a string".into())),
    };
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "critical header parameters (crit) are not supported".into(),
        ));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) => {
            // RFC 7515 §4.1.9: `application/` may be left out of a media type, so
            // `application/jwt` is `JWT` (as `tokenType` reads it).
            let t = t
                .get(..APPLICATION.len())
                .filter(|head| head.eq_ignore_ascii_case(APPLICATION))
                .and_then(|_| t.get(APPLICATION.len()..))
                .unwrap_or(t);
            // Case-insensitively `JWT` or `…+JWT`, without an upper-cased copy.
            let b = t.as_bytes();
            let jwt_suffix = b
                .len()
                .checked_sub(4)
                .and_then(|at| b.get(at..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(b"+JWT"));
            if !t.eq_ignore_ascii_case("JWT") && !jwt_suffix {
                return Err(TokenError::Malformed("header typ is not a JWT type".into()));
            }
        }
        Some(_) => return Err(TokenError::Malformed("header typ must be a string".into())),
    }
    Ok(Jwt {
        raw,
        signing_input,
        signature,
        alg,
        kid,
        header,
        claims,
    })
}

/// The media-type prefix a JOSE `typ` may leave out (RFC 7515 §4.1.9).
const APPLICATION: &str = "application/";

fn decode_object(segment: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed(format!("{what} is not canonical base64url")))?;
    match parse_strict(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TokenError::Malformed(format!("{what} is not a JSON object"))),
        Err(e) => Err(TokenError::Malformed(format!(
            "{what} is not valid JSON: {}",
            truncate(&e, 60)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_byte_is_position() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..70 {
            for _ in 0..40 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Mostly near the needle, and bytes with the high bit set.
                        [b',', b'+', b'-', 0x80 | b',', 0xff, 0, b'a'][(seed % 7) as usize]
                    })
                    .collect();
                for needle in [b',', 0u8, 0xff] {
                    assert_eq!(
                        find_byte(&hay, needle),
                        hay.iter().position(|&b| b == needle),
                        "{hay:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn comma_parts_is_split() {
        for v in [
            "",
            ",",
            ",,",
            "a",
            "a,b",
            "a,,b",
            ",a",
            "a,",
            "é,ü",
            "Bearer abcdefghijklmnop, Basic qrstuvwxyz0123456789",
        ] {
            assert_eq!(
                comma_parts(v).collect::<Vec<_>>(),
                v.split(',').collect::<Vec<_>>(),
                "{v:?}"
            );
        }
    }

    #[test]
    fn three_parts_is_split() {
        for raw in [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b.",
            "é.ü.ß",
            "ab.cdefghijklmnop.qrs",
            "abcdefghij.klmnopqrstuvwxyz.0123456789abcdef",
            "abcdefghij.klmnopqrstuvwxyz.0123456789abcdef.",
        ] {
            let parts: Vec<&str> = raw.split('.').collect();
            let want = match parts.as_slice() {
                [h, p, s] => Some((*h, *p, *s)),
                _ => None,
            };
            assert_eq!(three_parts(raw), want, "{raw:?}");
        }
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.{}", b64(h), b64(p), b64("sig"))
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn bearer() -> Location {
        Location::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    #[test]
    fn extracts_from_header_param_cookie() {
        let h = hdrs(&[
            ("authorization", "bearer abc"),
            ("cookie", "a=1; session=tok%2E; jwt=\"ck\""),
            ("x-jwt", "raw"),
        ]);
        let h_refs = crate::token::header_refs(&h);
        let req = Request {
            headers: &h_refs,
            path: "/p?x=1&access_token=q%2Ev&y",
        };
        assert_eq!(extract(&bearer(), &req), ["abc"]);
        assert_eq!(extract(&Location::Param("access_token".into()), &req), ["q.v"]);
        assert_eq!(extract(&Location::Cookie("jwt".into()), &req), ["ck"]);
        assert_eq!(
            extract(
                &Location::Header {
                    name: "x-jwt".into(),
                    prefix: String::new()
                },
                &req
            ),
            ["raw"]
        );
    }

    /// Calls `f` with a request to `/` carrying the one header `name: value`.
    fn with_header(name: &str, value: &str, f: impl FnOnce(&Request)) {
        let h = hdrs(&[(name, value)]);
        let h_refs = crate::token::header_refs(&h);
        f(&Request {
            headers: &h_refs,
            path: "/",
        });
    }

    #[test]
    fn an_empty_cookie_is_no_token_quoted_or_not() {
        for v in ["jwt=", "jwt=\"\"", "jwt= \"\" ", "a=1; jwt=\"\"; b=2"] {
            with_header("cookie", v, |req| {
                assert!(extract(&Location::Cookie("jwt".into()), req).is_empty(), "{v:?}")
            });
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_not_tokens() {
        for v in ["Basic dXNlcg==", "Bearer ", "Bearer", "Bearerabc", ""] {
            with_header("authorization", v, |req| {
                assert!(extract(&bearer(), req).is_empty(), "{v:?}")
            });
        }
    }

    #[test]
    fn spaces_after_the_scheme_are_one_separator() {
        for v in ["Bearer abc", "Bearer  abc", "bearer   abc"] {
            with_header("authorization", v, |req| {
                assert_eq!(extract(&bearer(), req), ["abc"], "{v:?}");
                assert!(unreadable_token_headers(&[bearer()], req).is_empty(), "{v:?}");
            });
        }
        // A tab is still not the separator, and spaces alone are no token.
        for v in ["Bearer\tabc", "Bearer    "] {
            with_header("authorization", v, |req| {
                assert!(extract(&bearer(), req).is_empty(), "{v:?}")
            });
        }
    }

    #[test]
    fn repeated_headers_yield_every_candidate() {
        let h = hdrs(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        let h_refs = crate::token::header_refs(&h);
        let req = Request {
            headers: &h_refs,
            path: "/",
        };
        assert_eq!(extract(&bearer(), &req), ["a", "b"]);
        let folded = hdrs(&[("authorization", "Bearer a, Bearer b")]);
        let folded_refs = crate::token::header_refs(&folded);
        let req = Request {
            headers: &folded_refs,
            path: "/",
        };
        assert_eq!(extract(&bearer(), &req), ["a", "b"]);
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = tok(r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#, r#"{"sub":"u"}"#);
        let j = parse(&t, 8192).unwrap();
        assert_eq!(j.alg, Alg::RS256);
        assert_eq!(j.kid.as_deref(), Some("k1"));
        assert_eq!(j.claims["sub"], "u");
    }

    #[test]
    fn malformed_tokens_table() {
        let p = r#"{"sub":"u"}"#;
        let cases: Vec<(String, &str)> = vec![
            ("a.b".into(), "three"),
            ("a.b.c.d".into(), "three"),
            (format!("{}..{}", b64(r#"{"alg":"RS256"}"#), b64("s")), "empty"),
            (format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64(p)), "empty"),
            (
                format!("{}=.{}.{}", b64(r#"{"alg":"RS256"}"#), b64(p), b64("s")),
                "base64url",
            ),
            (tok(r#"{"alg":"RS256"}"#, "[1]"), "not a JSON object"),
            (tok(r#"{"alg":"RS256","alg":"none"}"#, p), "duplicate"),
            (tok(r#"{"alg":"RS256"}"#, r#"{"sub":"a","sub":"b"}"#), "duplicate"),
            (tok(r#"{"alg":5}"#, p), "alg must be a string"),
            (tok(r#"{}"#, p), "no alg"),
            (tok(r#"{"alg":"RS256","kid":7}"#, p), "kid must be a string"),
            (tok(r#"{"alg":"RS256","crit":["exp"]}"#, p), "crit"),
            (tok(r#"{"alg":"RS256","typ":"JOSE+JSON"}"#, p), "typ"),
        ];
        for (t, want) in cases {
            match parse(&t, 8192) {
                Err(TokenError::Malformed(m)) => assert!(m.contains(want), "{t}: {m}"),
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    #[test]
    fn typ_is_jwt_or_a_jwt_suffix_in_any_case() {
        for typ in [
            "JWT",
            "jwt",
            "Jwt",
            "at+jwt",
            "AT+JWT",
            "+jwt",
            "+JWT",
            "x+Jwt",
            "JWS",
            "jwtx",
            "at-jwt",
            "+jw",
            "",
            "é+jwt",
            "+jwté",
            "JOSE+JSON",
            "ǰwt",
            "application/jwt",
            "APPLICATION/JWT",
            "application/at+jwt",
            "application/",
            "application/json",
            "application/jose",
            "applicationjwt",
            "x-application/jwt",
            "application/application/jwt",
        ] {
            let t = tok(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#), "{}");
            // The rule, spelled another way: upper-cased and without an `APPLICATION/`
            // (RFC 7515 §4.1.9), `JWT` or ending `+JWT`.
            let up = typ.to_ascii_uppercase();
            let up = up.strip_prefix("APPLICATION/").unwrap_or(&up);
            let want = up == "JWT" || up.ends_with("+JWT");
            assert_eq!(parse(&t, 8192).is_ok(), want, "{typ:?}");
        }
    }

    #[test]
    fn typ_application_jwt_is_jwt() {
        // RFC 7515 §4.1.9: a `typ` without a `/` means `application/` + it, so these are the
        // same type, and a token saying so is as well-formed as one saying `JWT`.
        for typ in ["application/jwt", "Application/JWT", "application/at+jwt"] {
            let t = tok(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#), r#"{"sub":"u"}"#);
            assert!(parse(&t, 8192).is_ok(), "{typ:?}");
        }
        for typ in ["application/json", "application/jose", "application/"] {
            let t = tok(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#), r#"{"sub":"u"}"#);
            assert!(
                matches!(parse(&t, 8192), Err(TokenError::Malformed(m)) if m.contains("typ")),
                "{typ:?}"
            );
        }
    }

    #[test]
    fn none_and_unknown_algorithms() {
        for a in ["none", "None", "NONE"] {
            let t = tok(&format!(r#"{{"alg":"{a}"}}"#), "{}");
            assert_eq!(parse(&t, 8192).unwrap_err(), TokenError::AlgNone);
        }
        let t = tok(r#"{"alg":"XS999"}"#, "{}");
        assert_eq!(parse(&t, 8192).unwrap_err(), TokenError::UnsupportedAlg);
    }

    #[test]
    fn size_cap() {
        let t = tok(r#"{"alg":"RS256"}"#, &format!(r#"{{"x":"{}"}}"#, "a".repeat(100)));
        assert_eq!(parse(&t, 50).unwrap_err(), TokenError::TooLarge { limit: 50 });
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
