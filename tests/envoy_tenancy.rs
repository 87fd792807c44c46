//! The tenancy example (`examples/tenancy.json`) in a real Envoy: claims bound to the request
//! (`valuesFrom` / `notValuesFrom`). Tokens of several tenants and users, their own resources
//! and cross-tenant / cross-user attempts, and path spellings that try to confuse the capture:
//! encoded slashes, dot segments, `;` parameters, case, trailing and double slashes. The
//! upstream must receive the path that was judged, and a 403 decision line names the values
//! compared.
//!
//! The cross-tenant and cross-user table runs under Envoy's defaults and under each of
//! Istio's sidecar path settings (`pathNormalization` BASE, MERGE_SLASHES,
//! DECODE_AND_MERGE_SLASHES), where Envoy has rewritten `:path` before the filter runs, with
//! an upstream that records what it received: every case is named, says what each setting
//! must do with it, and every request that reached the upstream must be one its caller (the
//! `x-user` claimguard set) may make, whatever the table says.

mod common;
#[path = "common/shapes.rs"]
mod shapes;

use claimguard_tools::echo::Received;
use common::*;
use serde_json::{json, Value};
use shapes::*;

/// examples/tenancy.json with the test keys in place of the example JWKS.
fn tenancy_config() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tenancy.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(path).expect("examples/tenancy.json")).expect("json");
    let k = keys();
    cfg["providers"][0]["issuer"] = json!(ISSUER);
    cfg["providers"][0]["audiences"] = json!([AUDIENCE]);
    cfg["providers"][0]["jwks"] = json!(json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string());
    cfg
}

fn token(sub: &str, extra: Value) -> String {
    let mut c = with(good_claims(), "sub", json!(sub));
    c.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    keys().ec.sign(&c)
}

/// (what, method, path, token, extra header, status, path the upstream receives)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str)>,
    u16,
    &'a str,
);

#[test]
fn tenants_and_users_reach_only_their_own_resources() {
    let stack = Stack::start(&tenancy_config());
    let alice = token(
        "alice",
        json!({"tenants": ["acme"], "org": {"id": "acme"}, "roles": ["tenant-admin"]}),
    );
    let bob = token("bob", json!({"tenants": ["globex"], "org": {"id": "globex"}}));
    let carol = token(
        "carol",
        json!({"tenants": ["acme", "globex"], "org": {"id": "globex"}, "roles": ["tenant-admin"]}),
    );
    let sam = token("sam", json!({"tenants": [], "groups": ["support"]}));
    let nobody = token("nobody", json!({}));
    #[rustfmt::skip]
    let cases: Vec<Row> = vec![
        ("alice in acme", "GET", "/tenants/acme/orders", &alice, None, 200, "/tenants/acme/orders"),
        ("alice at acme's root", "GET", "/tenants/acme", &alice, None, 200, "/tenants/acme"),
        ("trailing slash", "GET", "/tenants/acme/", &alice, None, 200, "/tenants/acme/"),
        ("alice not in globex", "GET", "/tenants/globex/orders", &alice, None, 403, ""),
        ("bob in globex", "POST", "/tenants/globex/orders", &bob, None, 200, "/tenants/globex/orders"),
        ("bob not in acme", "GET", "/tenants/acme/orders", &bob, None, 403, ""),
        ("carol in both", "GET", "/tenants/acme/orders", &carol, None, 200, "/tenants/acme/orders"),
        ("carol in both (2)", "GET", "/tenants/globex/orders", &carol, None, 200, "/tenants/globex/orders"),
        ("no tenants claim", "GET", "/tenants/acme/orders", &nobody, None, 403, ""),
        ("support is no tenant", "GET", "/tenants/acme/orders", &sam, None, 403, ""),
        // Case is exact.
        ("ACME is not acme", "GET", "/tenants/ACME/orders", &alice, None, 403, ""),
        // Encoded slashes are refused before any capture.
        ("encoded slash", "GET", "/tenants/globex%2F..%2Facme/orders", &bob, None, 400, ""),
        ("encoded slash (lower)", "GET", "/tenants/acme%2forders", &alice, None, 400, ""),
        // Dot segments: the capture is the segment served.
        ("dot-dot out of acme", "GET", "/tenants/acme/../globex/orders", &alice, None, 403, ""),
        ("dot-dot into acme", "GET", "/tenants/globex/../acme/orders", &alice, None, 200, "/tenants/acme/orders"),
        ("encoded dot-dot", "GET", "/tenants/acme/%2e%2e/globex/orders", &alice, None, 403, ""),
        ("dot segment", "GET", "/tenants/./globex/orders", &alice, None, 403, ""),
        // `;` parameters are refused by default.
        ("matrix parameter", "GET", "/tenants/globex;acme/orders", &alice, None, 400, ""),
        ("dot-dot parameter", "GET", "/tenants/acme/..;/globex/orders", &alice, None, 400, ""),
        // Double slashes merge.
        ("double slashes", "GET", "//tenants//acme//orders", &alice, None, 200, "/tenants/acme/orders"),
        ("double slashes elsewhere", "GET", "/tenants//globex/orders", &alice, None, 403, ""),
        // Unreserved escapes decode.
        ("escaped letters", "GET", "/tenants/%61cme/orders", &alice, None, 200, "/tenants/acme/orders"),
        ("escaped letters elsewhere", "GET", "/tenants/gl%6Fbex/orders", &alice, None, 403, ""),
        // Deleting needs tenant-admin in one's home org.
        ("admin deletes at home", "DELETE", "/tenants/acme/settings", &alice, None, 200, "/tenants/acme/settings"),
        ("admin of globex in acme", "DELETE", "/tenants/acme/settings", &carol, None, 403, ""),
        ("member cannot delete", "DELETE", "/tenants/globex/settings", &bob, None, 403, ""),
        // Per-user resources.
        ("own profile", "GET", "/users/alice", &alice, None, 200, "/users/alice"),
        ("own settings", "PUT", "/users/bob/settings", &bob, None, 200, "/users/bob/settings"),
        ("someone else's", "GET", "/users/bob/settings", &alice, None, 403, ""),
        ("case of sub", "GET", "/users/Alice", &alice, None, 403, ""),
        ("dot-dot to another user", "GET", "/users/alice/../bob", &alice, None, 403, ""),
        ("support reads anyone", "GET", "/users/bob/settings", &sam, None, 200, "/users/bob/settings"),
        ("support cannot write", "PUT", "/users/bob/settings", &sam, None, 403, ""),
        // A header bound to the claim.
        ("own org's reports", "GET", "/reports", &alice, Some(("x-tenant-id", "acme")), 200, "/reports"),
        ("other org's reports", "GET", "/reports", &alice, Some(("x-tenant-id", "globex")), 403, ""),
        ("no tenant header", "GET", "/reports", &alice, None, 403, ""),
        // A query parameter bound to the claim.
        ("search own tenant", "GET", "/search?tenant=acme", &alice, None, 200, "/search?tenant=acme"),
        ("search another", "GET", "/search?tenant=globex", &alice, None, 403, ""),
        ("search twice", "GET", "/search?tenant=acme&tenant=globex", &alice, None, 403, ""),
        ("search other case", "GET", "/search?Tenant=acme", &alice, None, 403, ""),
    ];
    for (name, method, path, tok, extra, want, upstream) in cases {
        let auth = format!("Bearer {tok}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(extra);
        let r = claimguard_tools::http::request(stack.envoy.port, method, path, &headers).expect("request");
        assert_eq!(r.status, want, "{name}: {method} {path}: {r:?}");
        if want == 200 {
            let echoed = r.json();
            assert_eq!(echoed["path"], upstream, "{name}: {echoed:#}");
        }
    }
}

#[test]
fn a_cross_tenant_denial_names_the_values_compared() {
    let stack = Stack::start(&tenancy_config());
    let alice = token("alice", json!({"tenants": ["acme"]}));
    let r = stack.get(
        "/tenants/globex/orders",
        &[("authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "forbidden", "message": "access denied by policy"})
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = stack.envoy.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(r#""claimguard":"decision""#) && l.contains("globex"))
        {
            assert!(line.contains(r#""rule":"other-tenant""#), "{line}");
            assert!(
                line.contains(r#""bound":["other-tenant when[0]: tenants notValuesFrom path:tenant = \"globex\"","tenant-members when[0]: tenants valuesFrom path:tenant = \"globex\""]"#),
                "{line}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no decision line in the Envoy log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The claimguard lines of Envoy's log (`{"claimguard": kind, ...}`), parsed, once `ready`
/// holds of them (lines reach the log asynchronously), or what there is after 10 s.
fn claimguard_lines(stack: &Stack, kind: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = stack
            .envoy
            .log()
            .lines()
            .filter_map(|l| {
                l.split_once("wasm log ")
                    .and_then(|(_, m)| m.find('{').map(|at| &m[at..]))
            })
            .filter_map(|json| serde_json::from_str::<Value>(json).ok())
            .filter(|v| v["claimguard"] == kind)
            .collect();
        if ready(&lines) || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The bound values in Envoy's log: a header value crafted to forge fields stays one escaped,
/// cut field of one line; an AUDIT line and a dry-run line show the values their rules
/// compared.
#[test]
fn bound_values_in_the_log_are_escaped_cut_and_on_audit_and_dry_run_lines() {
    let mut cfg = tenancy_config();
    let rules = cfg["rules"].as_array_mut().expect("rules");
    rules.push(
        json!({"name": "audit-tenant-access", "action": "AUDIT", "paths": ["/tenants/{tenant}/{**}"],
                      "when": [{"claim": "tenants", "valuesFrom": "path:tenant"}]}),
    );
    rules.push(
        json!({"name": "owner-only-search", "action": "DENY", "dryRun": true, "paths": ["/search"],
                      "when": [{"claim": "sub", "notValuesFrom": "query:owner"}]}),
    );
    let stack = Stack::start(&cfg);
    let alice = format!(
        "Bearer {}",
        token("alice", json!({"tenants": ["acme"], "org": {"id": "acme"}}))
    );

    let forged = format!(r#"acme","decision":"allow","rule":"x\{}"#, "x".repeat(3000));
    let r = stack.get("/reports", &[("authorization", &alice), ("x-tenant-id", &forged)]);
    assert_eq!(r.status, 403, "{r:?}");
    let denials = claimguard_lines(&stack, "decision", |l| !l.is_empty());
    let [line] = denials.as_slice() else {
        panic!("want one decision line: {denials:?}\n{}", stack.envoy.log())
    };
    assert_eq!(
        (&line["decision"], &line["rule"]),
        (&json!("deny"), &json!(null)),
        "{line}"
    );
    let bound = line["bound"].as_array().expect("bound");
    let shown = bound[0].as_str().expect("a string");
    assert!(
        shown.starts_with(r#"reports-for-own-org when[0]: org.id valuesFrom header:x-tenant-id = "acme\",\"decision\":\"allow\",\"rule\":\"x\\xxxx"#),
        "{shown}"
    );
    assert!(shown.ends_with(&format!("... ({} bytes)", forged.len())), "{shown}");
    assert!(line.to_string().len() < 1500, "{line}");

    let r = stack.get("/tenants/acme/orders", &[("authorization", &alice)]);
    assert_eq!(r.status, 200);
    let audits = claimguard_lines(&stack, "audit", |l| !l.is_empty());
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["rule"], "audit-tenant-access");
    assert_eq!(
        audits[0]["bound"],
        json!([r#"audit-tenant-access when[0]: tenants valuesFrom path:tenant = "acme""#])
    );

    let r = stack.get("/search?tenant=acme&owner=bob", &[("authorization", &alice)]);
    assert_eq!(r.status, 200);
    let lines = claimguard_lines(&stack, "decision", |l| l.len() > 1);
    let dry = lines
        .iter()
        .find(|l| l["decision"] == "dry_run_denied")
        .unwrap_or_else(|| panic!("no dry-run line: {lines:?}"));
    assert_eq!(dry["rule"], "owner-only-search");
    assert_eq!(
        dry["bound"],
        json!([
            r#"search-own-tenants when[0]: tenants valuesFrom query:tenant = "acme""#,
            r#"owner-only-search when[0]: sub notValuesFrom query:owner = "bob""#
        ])
    );
}

// ---- under each path setting ------------------------------------------------------------

/// A caller of the table and its claims: (sub, tenants, org.id, roles, groups).
type Caller = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// The callers of the table.
const CALLERS: &[Caller] = &[
    ("alice", &["acme"], "acme", &["tenant-admin"], &[]),
    ("bob", &["globex"], "globex", &[], &[]),
    ("carol", &["acme", "globex"], "globex", &["tenant-admin"], &[]),
    ("sam", &[], "", &[], &["support"]),
    ("nobody", &[], "", &[], &[]),
];

/// Each caller's token, by `{name}` placeholder.
fn caller_tokens() -> Vec<(String, String)> {
    CALLERS
        .iter()
        .map(|(sub, tenants, org, roles, groups)| {
            let mut extra = json!({"tenants": tenants, "roles": roles, "groups": groups});
            if !org.is_empty() {
                extra["org"] = json!({"id": org});
            }
            (format!("{{{sub}}}"), token(sub, extra))
        })
        .collect()
}

/// A case sent with `who`'s token.
fn by(case: Case, who: &str) -> Case {
    case.header(match who {
        "alice" => "authorization: Bearer {alice}",
        "bob" => "authorization: Bearer {bob}",
        "carol" => "authorization: Bearer {carol}",
        "sam" => "authorization: Bearer {sam}",
        "nobody" => "authorization: Bearer {nobody}",
        other => panic!("no caller {other}"),
    })
}

/// `%XX` decoded once, as an application reads a path segment or a query value; None for a
/// bad escape or bytes that are not UTF-8.
fn decode_once(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(if plus_is_space && c == b'+' { b' ' } else { c });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What must hold of every request that reached the upstream, independently of what the
/// table expects: its path is canonical, and the caller claimguard named (`x-user`) may make
/// it under the tenancy rules: `/tenants/{t}` only for a member of `t` (DELETE: a
/// tenant-admin whose org is `t`), `/users/{u}` only for `u` itself (GET: or support),
/// `/reports` only with one `x-tenant-id` equal to the caller's org, `/search` only with one
/// `tenant` parameter naming one of the caller's tenants; nothing else but `/healthz`.
fn may_reach(got: &Received, actions: PathActions) -> Result<(), String> {
    let (path, query) = got.raw_path.split_once('?').unwrap_or((got.raw_path.as_str(), ""));
    match canonical(path, actions) {
        Ok(c) if c == path => {}
        Ok(c) => return Err(format!("upstream received {path:?}, which is not canonical ({c:?})")),
        Err(why) => return Err(format!("upstream received {path:?}, which should be refused ({why})")),
    }
    if path == "/healthz" && got.method == "GET" {
        return Ok(());
    }
    let Some(user) = got.header("x-user") else {
        return Err(format!("upstream received {path:?} without a caller (x-user)"));
    };
    let Some((sub, tenants, org, roles, groups)) = CALLERS.iter().find(|c| c.0 == user) else {
        return Err(format!("upstream received {path:?} for an unknown caller {user:?}"));
    };
    let segment = |i: usize| {
        let seg = path.split('/').nth(i).unwrap_or_default();
        let seg = if actions.match_without_parameters {
            seg.split(';').next().unwrap_or_default()
        } else {
            seg
        };
        decode_once(seg, false).unwrap_or_else(|| format!("(undecodable {seg:?})"))
    };
    let first = path.split('/').nth(1).unwrap_or_default();
    let first = first.split(';').next().unwrap_or_default();
    let method = got.method.as_str();
    let ok = match first {
        "tenants" => {
            let t = segment(2);
            tenants.contains(&t.as_str()) && (method != "DELETE" || (roles.contains(&"tenant-admin") && *org == t))
        }
        "users" => {
            let u = segment(2);
            u == *sub || (method == "GET" && groups.contains(&"support"))
        }
        "reports" => method == "GET" && !org.is_empty() && got.header_values("x-tenant-id") == [*org],
        "search" => {
            let values: Vec<Option<String>> = query
                .split('&')
                .filter_map(|p| {
                    let (n, v) = p.split_once('=').unwrap_or((p, ""));
                    let n = decode_once(n, true)?;
                    n.eq_ignore_ascii_case("tenant").then(|| decode_once(v, true))
                })
                .collect();
            method == "GET" && matches!(values.as_slice(), [Some(t)] if tenants.contains(&t.as_str()))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "upstream received {method} {:?} for {user}, who may not make it",
            got.raw_path
        ))
    }
}

/// Cross-tenant and cross-user attempts under the default path actions, spelled to confuse
/// the capture. `want` is Envoy's defaults (the filter sees the target as sent); `normalized`
/// what changes when Envoy normalises first (every Istio setting), `decoded` when it also
/// decodes `%2F`/`%5C` (DECODE_AND_MERGE_SLASHES).
#[rustfmt::skip]
fn tenancy_cases() -> Vec<Case> {
    vec![
        // -- plain
        by(get("alice in acme", "/tenants/acme/orders"), "alice").want(served("/tenants/acme/orders")),
        by(get("alice not in globex", "/tenants/globex/orders"), "alice").want(refused(403)),
        by(get("bob not in acme", "/tenants/acme/orders"), "bob").want(refused(403)),
        by(get("carol in globex too", "/tenants/globex/orders"), "carol").want(served("/tenants/globex/orders")),
        by(get("support is no tenant", "/tenants/acme/orders"), "sam").want(refused(403)),
        by(get("no tenants claim", "/tenants/acme/orders"), "nobody").want(refused(403)),
        get("no token", "/tenants/acme/orders").want(refused(401)),
        get("health without a token", "/healthz").want(served("/healthz")),
        // -- escaped slashes in the captured segment: refused, unless Envoy decoded them first
        by(get("acme%2f.. climbs out of acme", "/tenants/acme%2f../globex/orders"), "alice")
            .want(refused(400)).decoded(refused(403)),
        by(get("acme%2f.. lands bob in globex", "/tenants/acme%2f../globex/orders"), "bob")
            .want(refused(400)).decoded(served("/tenants/globex/orders")),
        by(get("globex%2F..%2Facme for bob", "/tenants/globex%2F..%2Facme/orders"), "bob")
            .want(refused(400)).decoded(refused(403)),
        by(get("trailing acme%2f..", "/tenants/acme%2f.."), "alice").want(refused(400)).decoded(refused(403)),
        by(get("escaped slash inside the capture", "/tenants/acme%2forders"), "alice")
            .want(refused(400)).decoded(served("/tenants/acme/orders")),
        by(get("escaped backslash out of acme", "/tenants/acme%5c..%5cglobex/orders"), "alice")
            .want(refused(400)).decoded(refused(403)),
        // -- empty and dot segments
        by(get("double slash before acme", "/tenants//acme/orders"), "alice").want(served("/tenants/acme/orders")),
        by(get("double slash before globex", "/tenants//globex/orders"), "alice").want(refused(403)),
        by(get("leading double slashes", "//tenants//acme//orders"), "alice").want(served("/tenants/acme/orders")),
        by(get("an empty segment eaten by dot-dot stays in globex", "/tenants/globex//../acme/orders"), "alice")
            .want(refused(403)),
        by(get("an empty segment eaten by dot-dot, bob", "/tenants/globex//../acme/orders"), "bob")
            .want(served("/tenants/globex/acme/orders")),
        by(get("dot segment before acme", "/tenants/./acme"), "alice").want(served("/tenants/acme")),
        by(get("dot segment before globex", "/tenants/./globex/orders"), "alice").want(refused(403)),
        by(get("dot-dot out of acme", "/tenants/acme/../globex/orders"), "alice").want(refused(403)),
        by(get("encoded dot-dot into acme", "/tenants/globex/%2e%2e/acme/orders"), "alice").want(served("/tenants/acme/orders")),
        by(get("dot-dot above the root", "/../tenants/globex/orders"), "alice").want(refused(403)),
        // -- case and escaped letters
        by(get("ACME is not acme", "/tenants/ACME/orders"), "alice").want(refused(403)),
        by(get("TENANTS is no rule's path", "/TENANTS/acme/orders"), "alice").want(refused(403)),
        by(get("%61cme is acme", "/tenants/%61cme/orders"), "alice").want(served("/tenants/acme/orders")),
        by(get("%61cme is not bob's", "/tenants/%61cme/orders"), "bob").want(refused(403)),
        by(get("%41CME is ACME", "/tenants/%41CME/orders"), "alice").want(refused(403)),
        by(get("%2561cme is not acme", "/tenants/%2561cme/orders"), "alice").want(refused(403)),
        // -- `;` parameters: refused (Envoy's normaliser reads `..;` and `.;` as dot segments)
        by(get("parameter on the capture", "/tenants/acme;x=1/orders"), "alice").want(refused(400)),
        by(get("parameter hiding another tenant", "/tenants/globex;acme/orders"), "alice").want(refused(400)),
        by(get("trailing parameter", "/tenants/acme/orders;jsessionid=1"), "alice").want(refused(400)),
        by(get("dot-dot-semicolon out of acme", "/tenants/acme/..;/globex/orders"), "alice")
            .want(refused(400)).normalized(refused(403)),
        by(get("dot-dot-semicolon lands bob in globex", "/tenants/acme/..;/globex/orders"), "bob")
            .want(refused(400)).normalized(served("/tenants/globex/orders")),
        by(get("dot-semicolon before globex", "/tenants/.;/globex/orders"), "alice")
            .want(refused(400)).normalized(refused(403)),
        // -- backslashes: refused, unless Envoy turned them into slashes first
        by(get("backslashes into globex", "/tenants\\globex\\orders"), "alice").want(refused(400)).normalized(refused(403)),
        by(get("backslash dot-dot into acme", "/tenants/globex\\..\\acme/orders"), "alice")
            .want(refused(400)).normalized(served("/tenants/acme/orders")),
        // -- the query does not name the tenant of a path
        by(get("?tenant=acme on globex's path", "/tenants/globex/orders?tenant=acme"), "alice").want(refused(403)),
        by(get("?tenant=globex on acme's path", "/tenants/acme/orders?tenant=globex"), "alice")
            .want(served("/tenants/acme/orders?tenant=globex")),
        by(get("?tenant= with dots in the path", "/tenants/acme/../globex/orders?tenant=acme"), "alice").want(refused(403)),
        // -- a query parameter bound to the claim
        by(get("search own tenant", "/search?tenant=acme"), "alice").want(served("/search?tenant=acme")),
        by(get("search another tenant", "/search?tenant=globex"), "alice").want(refused(403)),
        by(get("search, the parameter twice", "/search?tenant=acme&tenant=globex"), "alice").want(refused(403)),
        by(get("search, the parameter twice, same value", "/search?tenant=acme&tenant=acme"), "alice").want(refused(403)),
        by(get("search, another case first", "/search?Tenant=globex&tenant=acme"), "alice").want(refused(403)),
        by(get("search, an escaped & smuggles a second", "/search?tenant=acme%26tenant%3Dglobex"), "alice").want(refused(403)),
        by(get("search, `;` as a separator", "/search?tenant=globex;tenant=acme"), "alice").want(refused(403)),
        by(get("search, `;` after the own tenant", "/search?tenant=acme;tenant=globex"), "alice").want(refused(403)),
        by(get("search, escaped name", "/search?tenan%74=acme"), "alice").want(served("/search?tenan%74=acme")),
        by(get("search, escaped value", "/search?tenant=%61cme"), "alice").want(served("/search?tenant=%61cme")),
        by(get("search, NUL in the value", "/search?tenant=acme%00"), "alice").want(refused(403)),
        by(get("search, bad escape elsewhere", "/search?tenant=acme&%zz=1"), "alice").want(refused(403)),
        by(get("search, dots before the path", "/x/../search?tenant=acme"), "alice").want(served("/search?tenant=acme")),
        by(get("search for bob's tenant", "/search?tenant=globex"), "bob").want(served("/search?tenant=globex")),
        // -- a header bound to the claim
        by(get("own org's reports", "/reports"), "alice").header("x-tenant-id: acme").want(served("/reports"))
            .upstream_header("x-tenant-id", &["acme"]),
        by(get("other org's reports", "/reports"), "alice").header("x-tenant-id: globex").want(refused(403)),
        by(get("no tenant header", "/reports"), "alice").want(refused(403)),
        by(get("?tenant= is not the header", "/reports?tenant=acme"), "alice").want(refused(403)),
        by(get("x-tenant-id twice, own first", "/reports"), "alice").header("x-tenant-id: acme").header("x-tenant-id: globex")
            .want(refused(400)),
        by(get("x-tenant-id twice, other first", "/reports"), "alice").header("x-tenant-id: globex").header("x-tenant-id: acme")
            .want(refused(400)),
        by(get("x-tenant-id twice, same value", "/reports"), "alice").header("x-tenant-id: acme").header("x-tenant-id: acme")
            .want(refused(400)),
        by(get("x-tenant-id twice, two spellings", "/reports"), "alice").header("x-tenant-id: acme").header("X-Tenant-Id: globex")
            .want(refused(400)),
        by(get("x-tenant-id as a list", "/reports"), "alice").header("x-tenant-id: acme,globex").want(refused(403)),
        by(get("x-tenant-id in another case", "/reports"), "alice").header("x-tenant-id: ACME").want(refused(403)),
        by(get("x-tenant-id with surrounding spaces", "/reports"), "alice").header("x-tenant-id:   acme  ").want(served("/reports"))
            .upstream_header("x-tenant-id", &["acme"]),
        by(get("empty x-tenant-id", "/reports"), "alice").header("x-tenant-id:").want(refused(403)),
        // -- per-user resources
        by(get("own profile", "/users/alice"), "alice").want(served("/users/alice")),
        by(get("someone else's profile", "/users/bob"), "alice").want(refused(403)),
        by(get("case of sub", "/users/Alice"), "alice").want(refused(403)),
        by(get("dot-dot to another user", "/users/alice/../bob"), "alice").want(refused(403)),
        by(get("double slashes to another user", "//users//bob"), "alice").want(refused(403)),
        by(get("escaped slash to another user", "/users/alice%2f..%2fbob"), "alice").want(refused(400)).decoded(refused(403)),
        by(get("escaped slash into one's own", "/users/bob%2f..%2falice"), "alice").want(refused(400)).decoded(served("/users/alice")),
        by(get("%62ob is bob", "/users/%62ob/keys"), "bob").want(served("/users/bob/keys")),
        by(get("support reads anyone", "/users/bob/settings"), "sam").want(served("/users/bob/settings")),
        by(req("support cannot write", "PUT", "/users/bob/settings"), "sam").want(refused(403)),
        by(req("deleting someone's keys", "DELETE", "/users/bob/keys/1"), "alice").want(refused(403)),
        // -- deletes need tenant-admin in one's home org
        by(req("admin deletes at home", "DELETE", "/tenants/acme/settings"), "alice").want(served("/tenants/acme/settings")),
        by(req("admin of globex in acme", "DELETE", "/tenants/acme/settings"), "carol").want(refused(403)),
        by(req("admin of globex, dot-dot into acme", "DELETE", "/tenants/globex/../acme/settings"), "carol").want(refused(403)),
        by(req("member cannot delete", "DELETE", "/tenants/globex/x"), "bob").want(refused(403)),
    ]
}

/// With `pathWithParametersAction: MATCH_WITHOUT_PARAMETERS` the capture is the segment
/// without its parameters; the upstream receives them.
#[rustfmt::skip]
fn parameter_cases() -> Vec<Case> {
    vec![
        by(get("parameter on the own tenant", "/tenants/acme;v=1/orders"), "alice").want(served("/tenants/acme;v=1/orders")),
        by(get("own tenant hidden in a parameter", "/tenants/globex;acme/orders"), "alice").want(refused(403)),
        by(get("another tenant hidden in a parameter", "/tenants/acme;globex/orders"), "bob").want(refused(403)),
        by(get("empty parameter", "/tenants/acme;/orders"), "alice").want(served("/tenants/acme;/orders")),
        by(get("parameter on an escaped capture", "/tenants/%61cme;x/orders"), "alice").want(served("/tenants/acme;x/orders")),
        by(get("parameter on ACME", "/tenants/ACME;acme/orders"), "alice").want(refused(403)),
        by(get("dot-dot-semicolon still refused", "/tenants/acme/..;/globex/orders"), "alice")
            .want(refused(400)).normalized(refused(403)),
        by(get("parameter on another user", "/users/bob;alice"), "alice").want(refused(403)),
        by(get("parameter on one's own profile", "/users/alice;v=2"), "alice").want(served("/users/alice;v=2")),
    ]
}

/// The tables are consistent with the contract as [`canonical`] reads it, and with the
/// callers they name (no Envoy: this guards the tables themselves).
#[test]
fn tenancy_tables_agree_with_the_canonical_form() {
    let opt_in = PathActions {
        match_without_parameters: true,
        ..PathActions::default()
    };
    let mut wrong = Vec::new();
    for (cases, actions) in [(tenancy_cases(), PathActions::default()), (parameter_cases(), opt_in)] {
        let mut names = std::collections::HashSet::new();
        for case in &cases {
            if !names.insert(case.name) {
                wrong.push(format!("{}: named twice", case.name));
            }
            let target = case.target_text();
            let query = target.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
            match (&case.want, canonical(&target, actions)) {
                (Want::Served(p), Ok(c)) if *p == format!("{c}{query}") => {}
                (Want::Served(p), c) => wrong.push(format!("{}: serves {p:?}, canonical is {c:?}", case.name)),
                (Want::Refused(400), Ok(c)) if !case.repeats_a_header() => wrong.push(format!(
                    "{}: refused 400, but its path is canonical as {c:?}",
                    case.name
                )),
                (Want::Refused(s), Err(why)) if *s != 400 => wrong.push(format!(
                    "{}: refused {s}, but its path must be refused ({why})",
                    case.name
                )),
                _ => {}
            }
            for w in [&case.normalized, &case.decoded].into_iter().flatten() {
                if let Want::Served(p) = w {
                    let path = p.split('?').next().unwrap_or_default();
                    if canonical(path, actions).as_deref() != Ok(path) {
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

/// Every case under Envoy's defaults and each Istio path setting: refused ones never reach
/// the upstream, served ones arrive exactly as judged, and whatever arrived is a request its
/// caller may make ([`may_reach`]).
#[test]
fn cross_tenant_and_cross_user_attempts_under_each_path_setting() {
    let tokens = caller_tokens();
    let fill = |line: &str| {
        tokens
            .iter()
            .fold(line.to_string(), |l, (placeholder, t)| l.replace(placeholder, t))
    };
    let opt_in = PathActions {
        match_without_parameters: true,
        ..PathActions::default()
    };
    let mut with_parameters = tenancy_config();
    with_parameters["pathWithParametersAction"] = json!("MATCH_WITHOUT_PARAMETERS");
    let mut failures = Vec::new();
    let (mut checks, mut failed) = (0, 0);
    for (config, cases, actions) in [
        (tenancy_config(), tenancy_cases(), PathActions::default()),
        (with_parameters, parameter_cases(), opt_in),
    ] {
        let invariants = |_: &Case, got: &Received| may_reach(got, actions);
        let (c, f, mut why) = run_under_settings(&config, &cases, &fill, &invariants);
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
