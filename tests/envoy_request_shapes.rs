//! Issue 20: the request claimguard judges is the request the upstream serves.
//!
//! Every case is one raw HTTP/1.1 request (method, request target byte for byte, header lines
//! as written) sent through a real Envoy to an upstream that records what it received. Each
//! table runs once per connection-manager path setting: Envoy's defaults, where the filter
//! sees the target as sent, and what istiod renders for a sidecar under meshConfig
//! `pathNormalization` `BASE` (Istio's default), `MERGE_SLASHES` and
//! `DECODE_AND_MERGE_SLASHES`, where Envoy has already rewritten `:path` before the filter
//! runs. For each setting a case says what must happen: refused with a status (and then the
//! upstream must not have been reached), or served (and then the exact path, query and
//! chosen headers the upstream received).
//!
//! Beside the table, every request that reaches the upstream is held to two invariants: the
//! path it arrived with is canonical (a fixed point of [`canonical`], this file's own reading
//! of the contract), and a request without a token only ever arrives on a public path, never
//! on one under the denied `/admin`.
//!
//! The contract, by default: a path that means different things to different servers (`#`,
//! not starting with `/`, a malformed escape, `%2F`/`%5C`, `\`, `;`, `%252e`-style double
//! encoding, bytes outside printable ASCII) is refused with 400; any other path is matched
//! in its canonical form (unreserved escapes decoded, other escapes upper-cased, RFC 3986
//! dot-segment removal in which an empty segment is a segment, slash runs merged) and that
//! form is what the upstream is sent, query unchanged.

mod common;

use claimguard_tools::echo::{EchoUpstream, Received};
use claimguard_tools::envoy::{Envoy, EnvoyOptions, PathNormalization};
use claimguard_tools::http::{self, Response};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The settings every table runs under (Istio's `NONE` renders what Envoy's defaults are).
const SETTINGS: [PathNormalization; 4] = [
    PathNormalization::EnvoyDefaults,
    PathNormalization::IstioBase,
    PathNormalization::IstioMergeSlashes,
    PathNormalization::IstioDecodeAndMergeSlashes,
];

/// The host every case sends unless it names one.
const HOST: &str = "app.example.com";

/// examples/policy.json with the test keys, a claim header to spoof, and the rules these
/// cases exercise.
fn shapes_config() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(path).expect("examples/policy.json")).expect("json");
    let k = keys();
    let p = &mut cfg["providers"][0];
    p["issuer"] = json!(ISSUER);
    p["audiences"] = json!([AUDIENCE]);
    p["jwks"] = json!(json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string());
    p["outputClaimToHeaders"] = json!([{"header": "x-user-sub", "claim": "sub"}]);
    let rules = cfg["rules"].as_array_mut().expect("rules");
    rules.extend([
        json!({"name": "no-admin", "action": "DENY", "paths": ["/admin", "/admin/*"]}),
        json!({"name": "no-internal-host", "action": "DENY", "hosts": ["internal.example.com"]}),
        json!({"name": "public-if-header", "public": true, "paths": ["/status/*"],
               "when": [{"key": "request.headers[x-probe]", "values": ["yes"]}]}),
        json!({"name": "no-prod", "action": "DENY", "paths": ["/env/*"],
               "when": [{"key": "request.headers[x-env]", "values": ["prod"]}]}),
        json!({"name": "env-any-token", "paths": ["/env/*"]}),
        json!({"name": "no-export-reads", "action": "DENY", "methods": ["GET"], "paths": ["/export/*"]}),
        json!({"name": "exporters", "paths": ["/export/*"]}),
    ]);
    cfg
}

/// The same with `allowMissing` and a route anyone may call (`/catalog/*`).
fn allow_missing_config() -> Value {
    let mut cfg = shapes_config();
    cfg["providers"][0]["allowMissing"] = json!(true);
    cfg["rules"]
        .as_array_mut()
        .expect("rules")
        .push(json!({"name": "catalog", "paths": ["/catalog/*"]}));
    cfg
}

/// Paths a request without a token may reach under [`shapes_config`] (`/status/*` only with
/// `x-probe: yes`, which the cases that reach it send).
const PUBLIC: &[&str] = &["/healthz", "/docs/", "/status/"];

/// [`PUBLIC`] and, under [`allow_missing_config`], `/catalog/*`.
const PUBLIC_WITH_CATALOG: &[&str] = &["/healthz", "/docs/", "/status/", "/catalog/"];

// ---- the contract's canonical form, as this file reads it ----------------------------

/// The opt-in path actions a config sets (`pathWithParametersAction: MATCH_WITHOUT_PARAMETERS`,
/// `pathWithBackslashAction: CONVERT_TO_SLASH`).
#[derive(Clone, Copy, Default)]
struct PathActions {
    match_without_parameters: bool,
    backslash_to_slash: bool,
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The canonical path the upstream must receive for `target`'s path (before `?`), or why
/// the request must be refused (400).
fn canonical(target: &str, actions: PathActions) -> Result<String, &'static str> {
    if target.contains('#') {
        return Err("fragment");
    }
    let path = target.split('?').next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err("not starting with /");
    }
    if path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err("byte outside printable ASCII");
    }
    let path = match (path.contains('\\'), actions.backslash_to_slash) {
        (false, _) => path.to_string(),
        (true, true) => path.replace('\\', "/"),
        (true, false) => return Err("backslash"),
    };
    if path.contains(';') && !actions.match_without_parameters {
        return Err("path parameters");
    }
    let b = path.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'%' {
            out.push(char::from(c));
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&x| hex(x)), b.get(i + 2).and_then(|&x| hex(x))) else {
            return Err("malformed escape");
        };
        let v = h * 16 + l;
        if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
            out.push(char::from(v));
        } else if v == b'/' || v == b'\\' {
            return Err("escaped slash");
        } else {
            out.push_str(&format!("%{v:02X}"));
        }
        i += 3;
    }
    // `%25` before `2e`/`2f`/`5c`, whether sent so or spelt `%25%32%65`: a dot or slash for an
    // upstream that decodes twice.
    let lower = out.to_ascii_lowercase();
    if ["%252e", "%252f", "%255c"].iter().any(|d| lower.contains(d)) {
        return Err("double-encoded dot or slash");
    }
    if actions.match_without_parameters {
        for seg in out.split('/').skip(1) {
            if let Some((name, _)) = seg.split_once(';') {
                if matches!(name, "" | "." | "..") {
                    return Err("dot or empty segment with parameters");
                }
            }
        }
    }
    let mut merged = String::new();
    for ch in remove_dot_segments(&out).chars() {
        if !(ch == '/' && merged.ends_with('/')) {
            merged.push(ch);
        }
    }
    Ok(merged)
}

/// RFC 3986 §5.2.4, literally: an empty segment is a segment (`/a//../b` is `/a/b`).
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_string();
    let mut output = String::new();
    let pop = |out: &mut String| {
        let cut = out.rfind('/').unwrap_or(0);
        out.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest.to_string();
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest.to_string();
        } else if let Some(rest) = input.strip_prefix("/./") {
            input = format!("/{rest}");
        } else if input == "/." {
            input = "/".into();
        } else if let Some(rest) = input.strip_prefix("/../") {
            input = format!("/{rest}");
            pop(&mut output);
        } else if input == "/.." {
            input = "/".into();
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input
                .get(start..)
                .and_then(|r| r.find('/'))
                .map_or(input.len(), |e| e + start);
            output.push_str(input.get(..end).unwrap_or_default());
            input = input.get(end..).unwrap_or_default().to_string();
        }
    }
    output
}

// ---- cases ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Want {
    /// Answered by the proxy with this status; the upstream never sees the request.
    Refused(u16),
    /// 401 `invalid_token` with an RFC 6750 challenge, the upstream never reached.
    InvalidToken,
    /// 401 as for a request without a token (RFC 6750 §3.1: another scheme, or no
    /// credentials, get a challenge with no error code), the upstream never reached.
    NoBearer,
    /// Served; the upstream received exactly this request target.
    Served(&'static str),
}

fn refused(status: u16) -> Want {
    Want::Refused(status)
}

fn served(path: &'static str) -> Want {
    Want::Served(path)
}

struct Case {
    name: &'static str,
    method: &'static str,
    target: Vec<u8>,
    host: &'static str,
    /// Header lines as sent; `{reader}` / `{plain}` stand for a valid token with / without
    /// the `orders:read` scope.
    headers: Vec<&'static str>,
    /// Under Envoy's defaults: the filter sees the target as sent.
    want: Want,
    /// When Envoy normalises the path first (BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES),
    /// if that changes the outcome.
    normalized: Option<Want>,
    /// Under DECODE_AND_MERGE_SLASHES (Envoy decodes `%2F`/`%5C` first), if different again.
    decoded: Option<Want>,
    /// Headers the upstream must have received, with every value in order (empty: absent).
    upstream_headers: Vec<(&'static str, Vec<&'static str>)>,
}

fn req(name: &'static str, method: &'static str, target: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        method,
        target: target.as_ref().to_vec(),
        host: HOST,
        headers: Vec::new(),
        want: Want::Refused(0),
        normalized: None,
        decoded: None,
        upstream_headers: Vec::new(),
    }
}

fn get(name: &'static str, target: impl AsRef<[u8]>) -> Case {
    req(name, "GET", target)
}

impl Case {
    /// Sends the reader's token (`scope: orders:read`) in the configured form.
    fn token(self) -> Case {
        self.header("authorization: Bearer {reader}")
    }

    fn header(mut self, line: &'static str) -> Case {
        self.headers.push(line);
        self
    }

    fn host(mut self, host: &'static str) -> Case {
        self.host = host;
        self
    }

    fn want(mut self, want: Want) -> Case {
        self.want = want;
        self
    }

    fn normalized(mut self, want: Want) -> Case {
        self.normalized = Some(want);
        self
    }

    fn decoded(mut self, want: Want) -> Case {
        self.decoded = Some(want);
        self
    }

    fn upstream_header(mut self, name: &'static str, values: &[&'static str]) -> Case {
        self.upstream_headers.push((name, values.to_vec()));
        self
    }

    fn want_under(&self, setting: PathNormalization) -> &Want {
        match (&self.decoded, &self.normalized) {
            (Some(w), _) if setting.decodes_slashes() => w,
            (_, Some(w)) if setting.normalizes() => w,
            _ => &self.want,
        }
    }

    fn repeats_a_header(&self) -> bool {
        let names: Vec<String> = self
            .headers
            .iter()
            .map(|h| h.split(':').next().unwrap_or_default().to_ascii_lowercase())
            .collect();
        names
            .iter()
            .enumerate()
            .any(|(i, n)| names.get(..i).is_some_and(|seen| seen.contains(n)))
    }

    fn target_text(&self) -> String {
        String::from_utf8_lossy(&self.target).into_owned()
    }

    /// Whether the request carries a token that verifies (in any accepted form).
    fn has_valid_token(&self) -> bool {
        self.headers.iter().any(|h| {
            let lower = h.to_ascii_lowercase();
            lower.starts_with("authorization: bearer {")
        })
    }
}

/// The valid tokens a case may send.
struct Tokens {
    reader: String,
    plain: String,
}

impl Tokens {
    fn new() -> Tokens {
        let reader = keys().ec.sign(&good_claims());
        let plain = keys().ec.sign(&with(good_claims(), "scope", json!("openid")));
        Tokens { reader, plain }
    }

    fn fill(&self, line: &str) -> String {
        line.replace("{reader}", &self.reader).replace("{plain}", &self.plain)
    }
}

// ---- running a table ----------------------------------------------------------------------

/// One table: a plugin config, its cases, and what the invariants need to know about it.
struct Table {
    config: Value,
    cases: Vec<Case>,
    actions: PathActions,
    /// Path prefixes (or exact paths) a request without a valid token may be served on.
    public: &'static [&'static str],
}

/// Runs each table under every setting in [`SETTINGS`] (one Envoy each) and fails with
/// every case that did not hold, named, with its setting.
fn run(tables: &[Table]) {
    let tokens = Tokens::new();
    let mut failures = Vec::new();
    let (mut checks, mut failed) = (0, 0);
    for table in tables {
        for setting in SETTINGS {
            let upstream = EchoUpstream::start(0).expect("upstream");
            let mut opts = EnvoyOptions::new(&table.config, upstream.port);
            opts.path_normalization = setting;
            let envoy = match Envoy::start(&opts, Duration::from_secs(60)) {
                Ok(envoy) => envoy,
                Err(e) => {
                    checks += table.cases.len();
                    failed += table.cases.len();
                    let why: Vec<&str> = e.log.lines().filter(|l| l.contains("claimguard")).take(2).collect();
                    failures.push(format!(
                        "[{setting}] all {} cases: Envoy did not start ({}): {}",
                        table.cases.len(),
                        e.message,
                        why.join(" | ")
                    ));
                    continue;
                }
            };
            for case in &table.cases {
                checks += 1;
                if let Err(problem) = check(table, case, setting, &envoy, &upstream, &tokens) {
                    failed += 1;
                    failures.push(format!(
                        "[{setting}] {}: {} {:?}: {problem}",
                        case.name,
                        case.method,
                        case.target_text()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{failed} of {checks} checks failed:\n{}",
        failures.join("\n")
    );
}

fn send(case: &Case, envoy: &Envoy, tokens: &Tokens) -> Result<Response, String> {
    let mut raw = format!("{} ", case.method).into_bytes();
    raw.extend_from_slice(&case.target);
    raw.extend_from_slice(format!(" HTTP/1.1\r\nhost: {}\r\n", case.host).as_bytes());
    for line in &case.headers {
        raw.extend_from_slice(tokens.fill(line).as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"connection: close\r\n\r\n");
    http::send_raw(envoy.port, &raw)
}

fn check(
    table: &Table,
    case: &Case,
    setting: PathNormalization,
    envoy: &Envoy,
    upstream: &EchoUpstream,
    tokens: &Tokens,
) -> Result<(), String> {
    let before = upstream.served();
    let r = send(case, envoy, tokens)?;
    let arrived = upstream.served() - before;
    let last = if arrived > 0 { upstream.last_received() } else { None };
    // Whatever the table says, what did arrive must be canonical and allowed to arrive.
    if let Some(got) = &last {
        invariants(table, case, got)?;
    }
    let body = || r.body.chars().take(160).collect::<String>();
    match case.want_under(setting) {
        Want::Refused(status) => {
            if r.status != *status || arrived != 0 {
                return Err(format!(
                    "want {status}, upstream not reached; got {} ({}), upstream reached {arrived}x{}",
                    r.status,
                    body(),
                    last.map(|g| format!(" with {:?}", g.raw_path)).unwrap_or_default()
                ));
            }
            let json = r.json();
            if *status == 400 && !json.is_null() && json["error"] != "bad_request" {
                return Err(format!("400 from the filter should say bad_request: {}", body()));
            }
            if *status == 401 && !r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")) {
                return Err(format!("401 without a Bearer challenge: {:?}", r.headers));
            }
        }
        Want::InvalidToken => {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            if r.status != 401 || arrived != 0 || r.json()["error"] != "invalid_token" {
                return Err(format!(
                    "want 401 invalid_token, upstream not reached; got {} ({}), upstream reached {arrived}x",
                    r.status,
                    body()
                ));
            }
            if !(challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\"")) {
                return Err(format!("no RFC 6750 invalid_token challenge: {challenge:?}"));
            }
        }
        Want::NoBearer => {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            if r.status != 401 || arrived != 0 || r.json()["error"] != "missing_token" {
                return Err(format!(
                    "want 401 missing_token, upstream not reached; got {} ({}), upstream reached {arrived}x",
                    r.status,
                    body()
                ));
            }
            if !challenge.starts_with("Bearer realm=") || challenge.contains("error=") {
                return Err(format!(
                    "want an RFC 6750 challenge without an error code: {challenge:?}"
                ));
            }
        }
        Want::Served(path) => {
            let Some(got) = last.filter(|_| r.status == 200 && arrived == 1) else {
                return Err(format!(
                    "want 200 with the upstream receiving {path:?}; got {} ({}), upstream reached {arrived}x",
                    r.status,
                    body()
                ));
            };
            if got.raw_path != *path {
                return Err(format!("upstream received {:?}, want {path:?}", got.raw_path));
            }
            if case.method != "HEAD" && r.json()["rawPath"] != got.raw_path.as_str() {
                return Err(format!("the echoed rawPath is not the recorded one: {}", body()));
            }
            for (name, values) in &case.upstream_headers {
                let seen = got.header_values(name);
                if seen != *values {
                    return Err(format!("upstream header {name}: {seen:?}, want {values:?}"));
                }
            }
        }
    }
    Ok(())
}

/// What must hold of any request that reached the upstream.
fn invariants(table: &Table, case: &Case, got: &Received) -> Result<(), String> {
    let path = got.raw_path.split('?').next().unwrap_or_default();
    match canonical(path, table.actions) {
        Ok(c) if c == path => {}
        Ok(c) => return Err(format!("upstream received {path:?}, which is not canonical ({c:?})")),
        Err(why) => return Err(format!("upstream received {path:?}, which should be refused ({why})")),
    }
    let first = path.split('/').nth(1).unwrap_or_default();
    if first.split(';').next() == Some("admin") {
        return Err(format!("upstream received {path:?}, under the denied /admin"));
    }
    let public = table.public.iter().any(|p| {
        if p.ends_with('/') {
            path.starts_with(p)
        } else {
            path == *p
        }
    });
    if !case.has_valid_token() && !public {
        return Err(format!(
            "upstream received {path:?} without a valid token: not a public path"
        ));
    }
    Ok(())
}

// ---- the tables -----------------------------------------------------------------------------

/// Paths under the default path actions (REJECT_REQUEST for escaped slashes, backslashes and
/// parameters), methods, hosts, rule-read headers, token header shapes, spoofed identity.
#[rustfmt::skip]
fn shape_cases() -> Vec<Case> {
    vec![
        // -- baseline
        get("health is public", "/healthz").want(served("/healthz")),
        get("docs are public", "/docs/index.html").want(served("/docs/index.html")),
        get("orders need a token", "/orders/1").want(refused(401)),
        get("reader reads an order", "/orders/1").token().want(served("/orders/1"))
            .upstream_header("x-user-sub", &["alice"]).upstream_header("authorization", &[]),
        get("admin denied to a reader", "/admin/users").token().want(refused(403)),
        get("admin without a token", "/admin/users").want(refused(401)),
        get("query kept byte for byte", "/docs/a?x=%2e%2e/../admin&y=%zz;z\\w")
            .want(served("/docs/a?x=%2e%2e/../admin&y=%zz;z\\w")),
        get("dot segment removed, query untouched", "/docs/./a?x=/../admin").want(served("/docs/a?x=/../admin")),
        // -- dot segments, plain and encoded
        get("encoded dot-dot from docs to orders", "/docs/%2e%2e/orders/1").want(refused(401)),
        get("encoded dot-dot from docs to orders, reader", "/docs/%2e%2e/orders/1").token().want(served("/orders/1")),
        get("mixed-case encoded dots into admin", "/docs/%2E%2e/admin/users").token().want(refused(403)),
        get("half-encoded dots into admin", "/docs/.%2e/admin/users").want(refused(401)),
        get("dot-dot into admin, reader", "/orders/../admin/users").token().want(refused(403)),
        get("dot-dot into admin, no token", "/orders/../admin/users").want(refused(401)),
        get("leading double slash", "//admin/users").token().want(refused(403)),
        get("dot segment before admin", "/./admin/users").token().want(refused(403)),
        get("trailing dot in admin", "/admin/.").token().want(refused(403)),
        get("dot-dot above the root", "/../admin/users").token().want(refused(403)),
        get("dot-dot above the root from docs", "/docs/../../admin/users").want(refused(401)),
        get("empty segment counts: docs stays docs", "/docs//../orders/1").want(served("/docs/orders/1")),
        get("empty segment counts: /a stays /a", "/a//../docs/x").want(refused(401)),
        get("dot-dot, empty segment, dot-dot", "/docs/a/..//../admin/users").want(served("/docs/admin/users")),
        get("encoded dot-dot then slash run", "/docs/%2e.//admin/users").token().want(refused(403)),
        get("encoded single dot", "/docs/%2e/x").want(served("/docs/x")),
        get("dot-dot back to docs/", "/docs/x/..").want(served("/docs/")),
        get("dot-dot to the root", "/docs/..").want(refused(401)),
        get("three dots are a name", "/docs/.../x").want(served("/docs/.../x")),
        // -- unreserved escapes decoded, others upper-cased
        get("escaped letter spells admin", "/%61dmin/users").token().want(refused(403)),
        get("escaped letter spells admin, no token", "/%61dmin/users").want(refused(401)),
        get("escaped letter spells orders", "/%6Frders/1").token().want(served("/orders/1")),
        get("escaped docs, then dots into admin", "/%64ocs/%2e%2e/admin/users").want(refused(401)),
        get("escaped tilde decoded", "/docs/%7Ex").want(served("/docs/~x")),
        get("escaped capital decoded", "/docs/a%41b").want(served("/docs/aAb")),
        get("escaped dash, underscore, dot decoded", "/docs/%2d%5f%2E").want(served("/docs/-_.")),
        get("utf-8 escapes upper-cased", "/docs/%c3%a9").want(served("/docs/%C3%A9")),
        get("escaped space kept", "/docs/a%20b").want(served("/docs/a%20b")),
        get("escaped semicolon is not a parameter", "/docs/%3b").want(served("/docs/%3B")),
        // -- case: paths are case-sensitive, so these are simply not the rules' paths
        get("ADMIN is not admin (no rule allows it)", "/ADMIN/x").token().want(refused(403)),
        get("Admin without a token", "/Admin/users").want(refused(401)),
        get("escaped capitals spell ADMIN", "/%41DMIN/users").token().want(refused(403)),
        get("DOCS is not public", "/DOCS/x").want(refused(401)),
        // -- escaped slashes: refused, unless Envoy decoded them first
        get("escaped slash into admin", "/admin%2Fusers").token().want(refused(400)).decoded(refused(403)),
        get("escaped slash in docs", "/docs/a%2fb").want(refused(400)).decoded(served("/docs/a/b")),
        get("encoded dots and slash", "/docs/%2e%2e%2fadmin").want(refused(400)).decoded(refused(401)),
        get("dots and escaped slash", "/docs/..%2Fadmin/users").token().want(refused(400)).decoded(refused(403)),
        get("escaped backslash in docs", "/docs/a%5Cb").want(refused(400)).decoded(served("/docs/a/b")),
        get("escaped backslashes around dots", "/docs/%5c..%5cadmin").want(refused(400)).decoded(served("/docs/admin")),
        get("leading escaped slash", "/%2Fadmin/users").token().want(refused(400)).decoded(refused(403)),
        // -- raw backslashes: refused, unless Envoy turned them into slashes first
        get("backslash dots from docs to orders", "/docs/x\\..\\..\\orders\\1").want(refused(400)).normalized(refused(401)),
        get("backslash dots from docs to orders, reader", "/docs/x\\..\\..\\orders\\1").token()
            .want(refused(400)).normalized(served("/orders/1")),
        get("backslash into admin", "/admin\\users").token().want(refused(400)).normalized(refused(403)),
        get("backslash dots into admin", "/docs\\..\\admin\\users").want(refused(400)).normalized(refused(401)),
        get("backslash inside docs", "/docs/a\\b").want(refused(400)).normalized(served("/docs/a/b")),
        get("encoded dots then backslash", "/docs/%2e%2e\\admin/users").want(refused(400)).normalized(refused(401)),
        // -- path parameters: refused (Envoy's normaliser reads `..;x` as `..`)
        get("dot-dot-semicolon from docs to orders", "/docs/..;/orders/1").want(refused(400)).normalized(refused(401)),
        get("dot-dot-semicolon, reader", "/docs/..;/orders/1").token().want(refused(400)).normalized(served("/orders/1")),
        get("dot-dot-semicolon with a value", "/docs/..;x=1/admin/users").want(refused(400)).normalized(refused(401)),
        get("dot-semicolon", "/docs/.;/orders/1").want(refused(400)).normalized(served("/docs/orders/1")),
        get("encoded dot-dot-semicolon", "/docs/%2e%2e;/orders/1").want(refused(400)),
        get("parameter on admin", "/admin;x=1/users").token().want(refused(400)),
        get("parameter in docs", "/docs/x;a=b").want(refused(400)),
        get("empty parameter", "/docs;/x").want(refused(400)),
        get("session id parameter", "/orders/1;jsessionid=abc").token().want(refused(400)),
        // -- malformed escapes
        get("escape with non-hex digits", "/docs/%zz").want(refused(400)),
        get("escape cut short", "/docs/%2").want(refused(400)),
        get("percent at the end", "/docs/a%").want(refused(400)),
        get("escape with one hex digit", "/docs/%g0").want(refused(400)),
        get("percent before an escape", "/docs/%%32%65").want(refused(400)),
        // -- double encoding
        get("double-encoded dots", "/docs/%252e%252e/admin/users").want(refused(400)),
        get("double-encoded dot, upper case", "/docs/%252E").want(refused(400)),
        get("double-encoded slash", "/docs/a%252fb").want(refused(400)),
        get("double-encoded backslash", "/docs/a%255Cb").want(refused(400)),
        get("double encoding spelt with escapes", "/docs/%25%32%65%25%32%65/admin").want(refused(400)),
        get("escaped percent before a letter is fine", "/docs/%2541").want(served("/docs/%2541")),
        get("escaped percent at the end is fine", "/docs/100%25").want(served("/docs/100%25")),
        // -- targets Envoy itself refuses (still: 400, upstream not reached)
        get("fragment", "/docs/a#frag").want(refused(400)),
        get("fragment after a query", "/docs/x?q#f").want(refused(400)),
        get("relative target", "docs/x").want(refused(400)),
        get("asterisk target", "*").want(refused(400)),
        get("raw utf-8", "/docs/\u{e9}").want(refused(400)),
        get("raw byte 0x80", b"/docs/\x80x").want(refused(400)),
        get("raw DEL", b"/docs/\x7f").want(refused(400)),
        get("absolute-form target names the denied host", "http://internal.example.com/orders/1").token().want(refused(403)),
        get("absolute-form target with encoded dots", "http://app.example.com/docs/%2e%2e/admin/users").want(refused(401)),
        // -- methods
        req("lower-case method", "get", "/docs/x").want(refused(400)),
        req("mixed-case method", "Get", "/docs/x").want(refused(400)),
        req("method with a space", "GE T", "/docs/x").want(refused(400)),
        req("GET denied on export", "GET", "/export/x").token().want(refused(403)),
        req("HEAD denied where GET is", "HEAD", "/export/x").token().want(refused(403)),
        req("POST allowed on export", "POST", "/export/x").token().want(served("/export/x")),
        req("HEAD allowed where the readers rule lists it", "HEAD", "/orders/1").token().want(served("/orders/1")),
        // -- hosts
        get("denied host", "/orders/1").token().host("internal.example.com").want(refused(403)),
        get("denied host, upper case", "/orders/1").token().host("INTERNAL.example.com").want(refused(403)),
        get("denied host, trailing dot", "/orders/1").token().host("internal.example.com.").want(refused(403)),
        get("denied host, trailing dots, mixed case", "/orders/1").token().host("Internal.Example.COM..").want(refused(403)),
        get("denied host with a port", "/orders/1").token().host("internal.example.com:8080").want(refused(403)),
        get("denied host, trailing dot and port", "/orders/1").token().host("internal.example.com.:443").want(refused(403)),
        get("another host", "/orders/1").token().host("public.example.com").want(served("/orders/1")),
        get("a longer host is another host", "/orders/1").token().host("internal.example.com.evil.test").want(served("/orders/1")),
        // -- headers rules read: one copy only
        get("x-env prod denied", "/env/a").token().header("x-env: prod").want(refused(403)),
        get("x-env dev allowed", "/env/a").token().header("x-env: dev").want(served("/env/a"))
            .upstream_header("x-env", &["dev"]),
        get("no x-env allowed", "/env/a").token().want(served("/env/a")),
        get("x-env with tab whitespace", "/env/a").token().header("x-env:\tprod\t").want(refused(403)),
        get("tab inside a value is kept", "/env/a").token().header("x-env: pr\tod").want(served("/env/a"))
            .upstream_header("x-env", &["pr\tod"]),
        get("x-env twice: dev then prod", "/env/a").token().header("x-env: dev").header("x-env: prod").want(refused(400)),
        get("x-env twice: prod then dev, names in two cases", "/env/a").token().header("x-env: prod").header("X-Env: dev")
            .want(refused(400)),
        get("public-if-header without the header", "/status/a").want(refused(401)),
        get("public-if-header with it", "/status/a").header("x-probe: yes").want(served("/status/a"))
            .upstream_header("x-probe", &["yes"]),
        get("public-if-header with another value", "/status/a").header("x-probe: no").want(refused(401)),
        get("x-probe twice", "/status/a").header("x-probe: yes").header("x-probe: yes").want(refused(400)),
        get("x-probe no then yes", "/status/a").header("x-probe: no").header("x-probe: yes").want(refused(400)),
        get("public-if-header, dots into admin", "/status/../admin/users").header("x-probe: yes").want(refused(401)),
        get("public-if-header, encoded dots into orders", "/status/%2e%2e/orders/1").header("x-probe: yes").want(refused(401)),
        get("a header no rule reads may repeat", "/docs/x").header("x-other: 1").header("x-other: 2").want(served("/docs/x"))
            .upstream_header("x-other", &["1", "2"]),
        // -- token header shapes
        get("tab after Bearer, public route", "/docs/x").header("authorization: Bearer\t{reader}").want(Want::InvalidToken),
        get("tab after Bearer, normal route", "/orders/1").header("authorization: Bearer\t{reader}").want(Want::InvalidToken),
        get("raw JWT without a scheme, public route", "/docs/x").header("authorization: {reader}").want(Want::InvalidToken),
        get("raw JWT without a scheme, normal route", "/orders/1").header("authorization: {reader}").want(Want::InvalidToken),
        get("Basic credentials, public route", "/docs/x").header("authorization: Basic YWxpY2U6cHc=").want(Want::NoBearer),
        get("Basic credentials, normal route", "/orders/1").header("authorization: Basic YWxpY2U6cHc=").want(Want::NoBearer),
        get("empty authorization, public route", "/docs/x").header("authorization:").want(Want::NoBearer),
        get("empty authorization, normal route", "/orders/1").header("authorization:").want(Want::NoBearer),
        get("Basic credentials, public-if-header route", "/status/a").header("x-probe: yes")
            .header("authorization: Basic YWxpY2U6cHc=").want(Want::NoBearer),
        get("lower-case scheme accepted", "/orders/1").header("authorization: bearer {reader}").want(served("/orders/1"))
            .upstream_header("x-user-sub", &["alice"]),
        get("upper-case scheme accepted on a public route", "/docs/x").header("authorization: BEARER {plain}")
            .want(served("/docs/x")),
        // -- spoofed identity headers
        get("spoofed claim header, twice, public route", "/docs/x").header("x-user-sub: admin").header("x-user-sub: root")
            .want(served("/docs/x")).upstream_header("x-user-sub", &[]),
        get("spoofed claim header, two spellings, reader", "/orders/1").token().header("x-user-sub: admin")
            .header("X-User-Sub: root").want(served("/orders/1")).upstream_header("x-user-sub", &["alice"]),
    ]
}

/// Token header shapes on an `allowMissing` route, where no token is fine but a malformed one
/// is not.
#[rustfmt::skip]
fn allow_missing_cases() -> Vec<Case> {
    vec![
        get("allowMissing route without a token", "/catalog/x").want(served("/catalog/x")).upstream_header("x-user-sub", &[]),
        get("allowMissing route with a token", "/catalog/x").token().want(served("/catalog/x"))
            .upstream_header("x-user-sub", &["alice"]),
        get("allowMissing route, lower-case scheme", "/catalog/x").header("authorization: bearer {reader}")
            .want(served("/catalog/x")).upstream_header("x-user-sub", &["alice"]),
        get("allowMissing route, tab after Bearer", "/catalog/x").header("authorization: Bearer\t{reader}").want(Want::InvalidToken),
        get("allowMissing route, raw JWT", "/catalog/x").header("authorization: {reader}").want(Want::InvalidToken),
        get("allowMissing route, Basic credentials", "/catalog/x").header("authorization: Basic YWxpY2U6cHc=").want(Want::NoBearer),
        get("allowMissing route, empty authorization", "/catalog/x").header("authorization:").want(Want::NoBearer),
        get("allowMissing route, spoofed claim header", "/catalog/x").header("x-user-sub: admin").header("x-user-sub: root")
            .want(served("/catalog/x")).upstream_header("x-user-sub", &[]),
        get("allowMissing route, encoded dots into admin", "/catalog/%2e%2e/admin/users").want(refused(403)),
        get("allowMissing route, dots into docs", "/catalog/x/../../docs/y").want(served("/docs/y")),
        get("allowMissing route, backslash", "/catalog\\x").want(refused(400)).normalized(served("/catalog/x")),
        get("public route, tab after Bearer", "/docs/x").header("authorization: Bearer\t{reader}").want(Want::InvalidToken),
    ]
}

/// `malformedTokenHeaderAction: REMOVE_HEADER`: the header goes, the request has no token.
#[rustfmt::skip]
fn removed_header_cases() -> Vec<Case> {
    vec![
        get("removed: tab after Bearer, public route", "/docs/x").header("authorization: Bearer\t{reader}")
            .want(served("/docs/x")).upstream_header("authorization", &[]).upstream_header("x-user-sub", &[]),
        get("removed: raw JWT, public route", "/docs/x").header("authorization: {reader}")
            .want(served("/docs/x")).upstream_header("authorization", &[]),
        get("removed: Basic credentials, public route", "/docs/x").header("authorization: Basic YWxpY2U6cHc=")
            .want(served("/docs/x")).upstream_header("authorization", &[]),
        get("removed: empty authorization, public route", "/docs/x").header("authorization:")
            .want(served("/docs/x")).upstream_header("authorization", &[]),
        get("removed: Basic credentials, normal route needs a token", "/orders/1")
            .header("authorization: Basic YWxpY2U6cHc=").want(refused(401)),
        get("removed: raw JWT does not count as a token", "/orders/1").header("authorization: {reader}").want(refused(401)),
        get("kept: lower-case scheme is the configured form", "/orders/1").header("authorization: bearer {reader}")
            .want(served("/orders/1")).upstream_header("x-user-sub", &["alice"]),
        get("removed: Basic credentials, allowMissing route", "/catalog/x").header("authorization: Basic YWxpY2U6cHc=")
            .want(served("/catalog/x")).upstream_header("authorization", &[]).upstream_header("x-user-sub", &[]),
    ]
}

/// `pathWithParametersAction: MATCH_WITHOUT_PARAMETERS` and
/// `pathWithBackslashAction: CONVERT_TO_SLASH`.
#[rustfmt::skip]
fn opt_in_cases() -> Vec<Case> {
    vec![
        // -- parameters: rules see segments without them, the upstream gets them
        get("parameter on admin is still admin", "/admin;x=1/users").token().want(refused(403)),
        get("parameter on escaped admin", "/%61dmin;p/users").token().want(refused(403)),
        get("empty parameter on admin", "/admin;/users").token().want(refused(403)),
        get("dot-dot-semicolon refused", "/docs/..;/orders/1").want(refused(400)).normalized(refused(401)),
        get("dot-semicolon refused", "/docs/.;x/a").want(refused(400)).normalized(served("/docs/a")),
        get("empty segment with a parameter refused", "/docs/;x/a").want(refused(400)),
        get("encoded dot-dot-semicolon refused", "/docs/%2e%2e;/orders/1").want(refused(400)),
        get("dot-dot-semicolon later in the path", "/docs/x;a=b/..;c/y").want(refused(400)).normalized(served("/docs/y")),
        get("matrix parameter kept for the upstream", "/orders;v=2/1").token().want(served("/orders;v=2/1")),
        get("matrix parameter, no token", "/orders;v=2/1").want(refused(401)),
        get("parameter on a public path", "/docs/a;b=c").want(served("/docs/a;b=c")),
        get("parameter segment removed by dot-dot", "/docs/a;b=c/../x").want(served("/docs/x")),
        get("parameters do not hide dot-dots", "/admin/x;p=/../../docs/y").want(served("/docs/y")),
        // -- backslashes are slashes
        get("backslash dots from docs to orders", "/docs/x\\..\\..\\orders\\1").want(refused(401)),
        get("backslash dots from docs to orders, reader", "/docs/x\\..\\..\\orders\\1").token().want(served("/orders/1")),
        get("backslash inside docs", "/docs\\a").want(served("/docs/a")),
        get("backslash into admin", "/admin\\users").token().want(refused(403)),
        get("backslash dots into admin", "/docs/..\\..\\admin\\users").want(refused(401)),
        get("backslash and parameter", "/docs\\x;a=b").want(served("/docs/x;a=b")),
        // -- the rest is unchanged
        get("escaped backslash still refused", "/docs/%5c").want(refused(400)).decoded(served("/docs/")),
        get("escaped slash still refused", "/docs/a%2Fb").want(refused(400)).decoded(served("/docs/a/b")),
        get("double encoding still refused", "/docs/%252e%252e/admin").want(refused(400)),
    ]
}

// ---- tests ----------------------------------------------------------------------------------

/// The tables are consistent with the contract as [`canonical`] reads it: a case served under
/// Envoy's defaults expects the canonical form of what it sent, a case refused with 400 for
/// its path sends a path the contract refuses, and every expected upstream path is canonical.
/// (No Envoy: this guards the tables themselves.)
#[test]
fn tables_agree_with_the_canonical_form() {
    assert_eq!(remove_dot_segments("/a//../b"), "/a/b");
    assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
    assert_eq!(remove_dot_segments("/../x"), "/x");
    let defaults = PathActions::default();
    let opt_in = PathActions {
        match_without_parameters: true,
        backslash_to_slash: true,
    };
    let tables = [
        (shape_cases(), defaults),
        (allow_missing_cases(), defaults),
        (removed_header_cases(), defaults),
        (opt_in_cases(), opt_in),
    ];
    let mut wrong = Vec::new();
    for (cases, actions) in &tables {
        for case in cases {
            let target = case.target_text();
            // Absolute-form targets and the ones Envoy refuses before any filter are not the
            // filter's to judge.
            let envoys_own = target.starts_with("http://")
                || case.method.bytes().any(|b| !b.is_ascii_uppercase())
                || case.target.iter().any(|b| !(0x21..=0x7e).contains(b))
                || target.contains('#')
                || !target.starts_with('/');
            if matches!(case.want, Want::Refused(0)) {
                wrong.push(format!("{}: no expectation", case.name));
            }
            let query = target.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
            match (&case.want, canonical(&target, *actions)) {
                (Want::Served(p), Ok(c)) if *p == format!("{c}{query}") => {}
                (Want::Served(p), c) => wrong.push(format!("{}: serves {p:?}, canonical is {c:?}", case.name)),
                (Want::Refused(400), Ok(c)) if !envoys_own && !case.repeats_a_header() => wrong.push(format!(
                    "{}: refused 400, but its path is canonical as {c:?}",
                    case.name
                )),
                (Want::Refused(s), Err(why)) if *s != 400 && !envoys_own => wrong.push(format!(
                    "{}: refused {s}, but its path must be refused with 400 ({why})",
                    case.name
                )),
                _ => {}
            }
            for w in [&case.normalized, &case.decoded].into_iter().flatten() {
                if let Want::Served(p) = w {
                    let path = p.split('?').next().unwrap_or_default();
                    if canonical(path, *actions).as_deref() != Ok(path) {
                        wrong.push(format!(
                            "{}: serves {p:?} under Istio, which is not canonical",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn request_shapes_under_each_path_setting() {
    run(&[Table {
        config: shapes_config(),
        cases: shape_cases(),
        actions: PathActions::default(),
        public: PUBLIC,
    }]);
}

#[test]
fn malformed_token_headers_are_refused_on_allow_missing_routes() {
    run(&[Table {
        config: allow_missing_config(),
        cases: allow_missing_cases(),
        actions: PathActions::default(),
        public: PUBLIC_WITH_CATALOG,
    }]);
}

#[test]
fn malformed_token_headers_are_removed_when_configured() {
    // Normal and public routes without allowMissing (with it, an anonymous request on a
    // claim-guarded route is a policy matter); the allowMissing route with it.
    let (catalog, others): (Vec<Case>, Vec<Case>) = removed_header_cases()
        .into_iter()
        .partition(|c| c.target.starts_with(b"/catalog"));
    let mut plain = shapes_config();
    plain["malformedTokenHeaderAction"] = json!("REMOVE_HEADER");
    let mut allow_missing = allow_missing_config();
    allow_missing["malformedTokenHeaderAction"] = json!("REMOVE_HEADER");
    run(&[
        Table {
            config: plain,
            cases: others,
            actions: PathActions::default(),
            public: PUBLIC,
        },
        Table {
            config: allow_missing,
            cases: catalog,
            actions: PathActions::default(),
            public: PUBLIC_WITH_CATALOG,
        },
    ]);
}

#[test]
fn opt_in_parameters_and_backslashes() {
    let mut config = shapes_config();
    config["pathWithParametersAction"] = json!("MATCH_WITHOUT_PARAMETERS");
    config["pathWithBackslashAction"] = json!("CONVERT_TO_SLASH");
    run(&[Table {
        config,
        cases: opt_in_cases(),
        actions: PathActions {
            match_without_parameters: true,
            backslash_to_slash: true,
        },
        public: PUBLIC,
    }]);
}
