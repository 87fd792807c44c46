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
#[path = "common/shapes.rs"]
mod shapes;

use claimguard_tools::echo::Received;
use common::*;
use serde_json::{json, Value};
use shapes::*;

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

/// What only this file's cases say.
impl Case {
    /// Sends the reader's token (`scope: orders:read`) in the configured form.
    fn token(self) -> Case {
        self.header("authorization: Bearer {reader}")
    }

    /// Whether the request carries a method-override header.
    fn overrides_the_method(&self) -> bool {
        self.headers.iter().any(|h| {
            let name = h
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .replace('_', "-");
            claimguard::request::decision::METHOD_OVERRIDE_HEADERS.contains(&name.as_str())
        })
    }

    /// Whether the request carries a token that verifies (in any accepted form).
    fn has_valid_token(&self) -> bool {
        self.headers.iter().any(|h| {
            // The scheme, one or more spaces (RFC 6750's `1*SP`), a valid token.
            let lower = h.to_ascii_lowercase();
            lower
                .strip_prefix("authorization: bearer ")
                .is_some_and(|rest| rest.trim_start_matches(' ').starts_with('{'))
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
    let fill = |line: &str| tokens.fill(line);
    let mut failures = Vec::new();
    let (mut checks, mut failed) = (0, 0);
    for table in tables {
        let invariants = |case: &Case, got: &Received| invariants(table, case, got);
        let (c, f, mut why) = run_under_settings(&table.config, &table.cases, &fill, &invariants);
        checks += c;
        failed += f;
        failures.append(&mut why);
    }
    assert!(
        failures.is_empty(),
        "{failed} of {checks} checks failed:\n{}",
        failures.join("\n")
    );
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
        get("two spaces after Bearer (RFC 6750 1*SP)", "/orders/1").header("authorization: Bearer  {reader}")
            .want(served("/orders/1")).upstream_header("x-user-sub", &["alice"]).upstream_header("authorization", &[]),
        get("a stray comma after the token", "/orders/1").header("authorization: Bearer {reader},")
            .want(served("/orders/1")).upstream_header("x-user-sub", &["alice"]).upstream_header("authorization", &[]),
        get("token and Basic credentials in one header", "/orders/1").header("authorization: Bearer {reader}, Basic YWxpY2U6cHc=")
            .want(Want::NoBearer),
        get("a lone comma", "/orders/1").header("authorization: ,").want(Want::NoBearer),
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
        ..PathActions::default()
    };
    let tables = [
        (shape_cases(), defaults),
        (allow_missing_cases(), defaults),
        (removed_header_cases(), defaults),
        (opt_in_cases(), opt_in),
        (other_spelling_cases(), OTHER_SPELLING_ACTIONS),
        (two_token_header_cases(), defaults),
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
                // (A case sent to another host may be refused for its host, one with a method
                // override for that.)
                (Want::Refused(400), Ok(c))
                    if !envoys_own && !case.repeats_a_header() && case.host == HOST && !case.overrides_the_method() =>
                {
                    wrong.push(format!(
                        "{}: refused 400, but its path is canonical as {c:?}",
                        case.name
                    ))
                }
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
            ..PathActions::default()
        },
        public: PUBLIC,
    }]);
}

// ---- other spellings of the same request (security review, 2026-12-05) ------------------
//
// Each of these got past a rule before: a host with an empty or malformed port, a reserved
// character a rule names sent escaped, `;` as a second query separator, HEAD where an ALLOW
// rule excludes GET, a trailing slash or another case after a denied path, a method override, a rule pattern
// written in a form no request takes, a second unreadable token header under REMOVE_HEADER,
// and a managed or token header spelled with `_`.

/// [`shapes_config`] and rules whose patterns name a reserved character, bind a query
/// parameter, exclude GET, deny a template, or are written non-canonically.
fn other_spelling_config() -> Value {
    let mut cfg = shapes_config();
    cfg["rules"].as_array_mut().expect("rules").extend([
        json!({"name": "no-cancel", "action": "DENY", "paths": ["*:cancel"]}),
        json!({"name": "no-order-deletes", "action": "DENY", "methods": ["DELETE"], "paths": ["/orders/{id}"]}),
        json!({"name": "no-refunds", "action": "DENY", "paths": ["/orders/{id}/refund"]}),
        json!({"name": "order-writers", "methods": ["DELETE", "POST"], "paths": ["/orders/*"]}),
        json!({"name": "api-but-admin", "paths": ["/api/*"], "notPaths": ["/api/admin"]}),
        json!({"name": "no-root-files", "action": "DENY", "paths": ["/files/%7Eroot/*", "/files/caf%c3%a9"]}),
        json!({"name": "files", "paths": ["/files/*"]}),
        json!({"name": "own-search", "paths": ["/search"], "when": [{"claim": "sub", "valuesFrom": "query:user"}]}),
        json!({"name": "ingest-no-reads", "paths": ["/ingest/*"], "notMethods": ["GET"]}),
    ]);
    cfg
}

/// `*:cancel` names `:`.
const OTHER_SPELLING_ACTIONS: PathActions = PathActions {
    match_without_parameters: false,
    backslash_to_slash: false,
    named_reserved: ":",
};

#[rustfmt::skip]
fn other_spelling_cases() -> Vec<Case> {
    vec![
        // -- hosts: an empty port is no port; a port servers cut differently is refused
        get("denied host", "/orders/1").token().host("internal.example.com").want(refused(403)),
        get("denied host, empty port", "/orders/1").token().host("internal.example.com:").want(refused(403)),
        get("denied host, trailing dot and empty port", "/orders/1").token().host("internal.example.com.:").want(refused(403)),
        get("denied host, upper case and empty port", "/orders/1").token().host("INTERNAL.EXAMPLE.COM:").want(refused(403)),
        get("denied host, leading zero in the port", "/orders/1").token().host("internal.example.com:0443").want(refused(403)),
        get("denied host, two ports", "/orders/1").token().host("internal.example.com:80:80").want(refused(400)),
        get("denied host, port not a number", "/orders/1").token().host("internal.example.com:x").want(refused(400)),
        get("denied host, public route, port not a number", "/healthz").host("internal.example.com:x").want(refused(400)),
        get("public route, empty port", "/healthz").host("app.example.com:").want(served("/healthz")),
        // -- a reserved character a rule names, escaped
        req("cancel denied", "POST", "/v1/jobs/7:cancel").token().want(refused(403)),
        req("escaped colon refused", "POST", "/v1/jobs/7%3Acancel").token().want(refused(400)),
        req("escaped colon, lower-case hex, refused", "POST", "/v1/jobs/7%3acancel").token().want(refused(400)),
        get("escapes no rule names are kept", "/files/a%2Bb").token().want(served("/files/a%2Bb")),
        // -- rule patterns are canonical: `%7E` is `~`, `%c3%a9` is `%C3%A9`
        get("tilde pattern, tilde path", "/files/~root/x").token().want(refused(403)),
        get("tilde pattern, escaped tilde", "/files/%7eroot/x").token().want(refused(403)),
        get("escaped pattern, upper-case hex", "/files/caf%C3%A9").token().want(refused(403)),
        get("escaped pattern, lower-case hex", "/files/caf%c3%a9").token().want(refused(403)),
        get("other files are served", "/files/readme").token().want(served("/files/readme")),
        // -- a query parameter a rule binds, with `;` as a second separator
        get("own search", "/search?user=alice").token().want(served("/search?user=alice")),
        get("another user's search", "/search?user=bob").token().want(refused(403)),
        get("user given twice", "/search?user=alice&user=bob").token().want(refused(403)),
        get("user again after a semicolon", "/search?user=alice&x=1;user=bob").token().want(refused(403)),
        get("semicolon inside the value", "/search?user=alice;x=1").token().want(refused(403)),
        get("semicolons elsewhere agree", "/search?x=1;y=2&user=alice").token().want(served("/search?x=1;y=2&user=alice")),
        // -- HEAD is GET where that is stricter
        get("GET excluded", "/ingest/x").token().want(refused(403)),
        req("HEAD excluded with GET", "HEAD", "/ingest/x").token().want(refused(403)),
        req("POST allowed", "POST", "/ingest/x").token().want(served("/ingest/x")),
        // -- a trailing slash after a denied path
        req("delete denied", "DELETE", "/orders/42").token().want(refused(403)),
        req("delete with a trailing slash denied", "DELETE", "/orders/42/").token().want(refused(403)),
        req("delete with dots and a trailing slash denied", "DELETE", "/orders/x/../42/").token().want(refused(403)),
        req("delete below an order allowed", "DELETE", "/orders/42/items/1").token().want(served("/orders/42/items/1")),
        // -- a method override: judged under each method a server may read
        req("post to an order", "POST", "/orders/42").token().want(served("/orders/42")),
        req("post overridden to delete", "POST", "/orders/42").token().header("x-http-method-override: DELETE").want(refused(403)),
        req("post overridden to delete, lower case", "POST", "/orders/42").token().header("X-HTTP-Method: delete").want(refused(403)),
        req("post overridden to delete, underscores", "POST", "/orders/42").token().header("x_http_method_override: DELETE").want(refused(403)),
        req("post overridden to delete by _method", "POST", "/orders/42?_method=DELETE").token().want(refused(403)),
        req("post overridden to another allowed method", "POST", "/orders/42").token().header("x-http-method-override: DELETE")
            .header("x-method-override: POST").want(refused(403)),
        req("override that is not a method", "POST", "/orders/42").token().header("x-http-method-override: DE LETE").want(refused(400)),
        get("excluded path", "/api/admin").token().want(refused(403)),
        get("excluded path with a trailing slash", "/api/admin/").token().want(refused(403)),
        get("other api paths", "/api/orders/").token().want(served("/api/orders/")),
        // -- another case, where routers ignore case
        req("refund denied", "POST", "/orders/42/refund").token().want(refused(403)),
        req("refund in capitals denied", "POST", "/orders/42/REFUND").token().want(refused(403)),
        req("refund in mixed case, trailing slash, denied", "POST", "/orders/42/Refund/").token().want(refused(403)),
        req("other order writes", "POST", "/orders/42/items").token().want(served("/orders/42/items")),
        get("excluded path in capitals", "/api/ADMIN").token().want(refused(403)),
        get("excluded path, escaped capital", "/api/%41dmin").token().want(refused(403)),
        // -- a header a rule reads, spelled with `_`
        get("rule header, underscore spelling", "/env/a").token().header("x_env: prod").want(refused(403)),
        get("rule header, both spellings", "/env/a").token().header("x-env: dev").header("x_env: prod").want(refused(400)),
        get("rule header, other value", "/env/a").token().header("x_env: dev").want(served("/env/a")),
        // -- a managed header spelled with `_`
        get("underscore spelling of a claim header", "/orders/1").token().header("x_user_sub: mallory")
            .want(served("/orders/1")).upstream_header("x_user_sub", &[]).upstream_header("x-user-sub", &["alice"]),
        get("underscore spelling on a public route", "/healthz").header("X_User_Sub: mallory")
            .want(served("/healthz")).upstream_header("x_user_sub", &[]).upstream_header("x-user-sub", &[]),
    ]
}

#[test]
fn other_spellings_of_the_same_request_under_each_path_setting() {
    run(&[Table {
        config: other_spelling_config(),
        cases: other_spelling_cases(),
        actions: OTHER_SPELLING_ACTIONS,
        public: PUBLIC,
    }]);
}

/// Two token headers (`authorization`, `x-access-token`), `REMOVE_HEADER`.
fn two_token_header_config() -> Value {
    let mut cfg = shapes_config();
    cfg["malformedTokenHeaderAction"] = json!("REMOVE_HEADER");
    cfg["providers"][0]["fromHeaders"] = json!([
        {"name": "authorization", "prefix": "Bearer "},
        {"name": "x-access-token", "prefix": "Bearer "}
    ]);
    cfg
}

#[rustfmt::skip]
fn two_token_header_cases() -> Vec<Case> {
    vec![
        get("both unreadable, public route: both removed", "/docs/x")
            .header("authorization: Basic YWxpY2U6cHc=").header("x-access-token: Bearer\t{reader}")
            .want(served("/docs/x")).upstream_header("authorization", &[]).upstream_header("x-access-token", &[]),
        get("both unreadable, the other order", "/docs/x")
            .header("authorization: Bearer\t{reader}").header("x-access-token: Basic YWxpY2U6cHc=")
            .want(served("/docs/x")).upstream_header("authorization", &[]).upstream_header("x-access-token", &[]),
        get("both unreadable, protected route", "/orders/1")
            .header("authorization: Basic YWxpY2U6cHc=").header("x-access-token: Bearer\t{reader}").want(refused(401)),
        get("a token beside an unreadable header", "/orders/1")
            .token().header("x-access-token: Basic YWxpY2U6cHc=")
            .want(served("/orders/1")).upstream_header("x-access-token", &[]).upstream_header("x-user-sub", &["alice"]),
        get("underscore spelling of the token header", "/docs/x").header("x_access_token: Bearer {reader}")
            .want(served("/docs/x")).upstream_header("x_access_token", &[]).upstream_header("x-user-sub", &[]),
    ]
}

#[test]
fn every_unreadable_token_header_is_removed() {
    run(&[Table {
        config: two_token_header_config(),
        cases: two_token_header_cases(),
        actions: PathActions::default(),
        public: PUBLIC,
    }]);
}
