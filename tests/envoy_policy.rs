//! The example policy (`examples/policy.json`) in a real Envoy: 200 for what it allows, 401
//! before policy for bad or missing tokens, 403 for what it denies (with `insufficient_scope`
//! where a scope is missing), public routes without a token, path tricks that do not get
//! around a rule, and a dry-run rule whose would-be denial is logged while the request passes.

mod common;

use common::*;
use serde_json::{json, Value};

/// examples/policy.json with the test keys in place of the example JWKS.
fn policy_config() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(path).expect("examples/policy.json")).expect("json");
    let k = keys();
    cfg["providers"][0]["issuer"] = json!(ISSUER);
    cfg["providers"][0]["audiences"] = json!([AUDIENCE]);
    cfg["providers"][0]["jwks"] = json!(json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string());
    cfg
}

fn token(extra: Value) -> String {
    let mut c = good_claims();
    c.as_object_mut().expect("object").remove("scope");
    c.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    keys().ec.sign(&c)
}

#[test]
fn example_policy_outcomes() {
    let stack = Stack::start(&policy_config());
    let reader = token(json!({"scope": "openid orders:read"}));
    let writer = token(json!({"scope": "orders:read orders:write"}));
    let admin = token(json!({"realm_access": {"roles": ["admin"]}}));
    let blocked = token(json!({"scope": "orders:read", "tenant": "blocked-co"}));
    let ops = token(json!({"cognito:groups": ["ops"]}));
    let nobody = token(json!({"scope": "openid"}));
    let expired = keys().ec.sign(&with(good_claims(), "exp", json!(1)));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, Option<&str>, u16)> = vec![
        ("health is public", "GET", "/healthz", None, 200),
        ("docs are public", "GET", "/docs/index.html", None, 200),
        ("orders need a token", "GET", "/orders", None, 401),
        ("expired token before policy", "GET", "/orders", Some(&expired), 401),
        ("reader reads", "GET", "/orders/42", Some(&reader), 200),
        ("reader cannot write", "POST", "/orders", Some(&reader), 403),
        ("writer writes", "POST", "/orders", Some(&writer), 200),
        ("reader cannot delete", "DELETE", "/orders/42", Some(&reader), 403),
        ("admin deletes", "DELETE", "/orders/42", Some(&admin), 200),
        ("blocked tenant denied", "GET", "/orders/42", Some(&blocked), 403),
        ("ops admin area", "GET", "/admin/users", Some(&ops), 200),
        ("reader not in admin area", "GET", "/admin/users", Some(&reader), 403),
        ("//admin is /admin", "GET", "//admin/users", Some(&reader), 403),
        ("/./admin is /admin", "GET", "/./admin/users", Some(&reader), 403),
        ("dot-dot into admin", "GET", "/orders/../admin/users", Some(&reader), 403),
        ("encoded dots into admin", "GET", "/orders/%2e%2e/admin/users", Some(&reader), 403),
        ("escaped slash refused", "GET", "/admin%2Fusers", Some(&reader), 400),
        ("no scope, no orders", "GET", "/orders", Some(&nobody), 403),
        ("dry-run sunset does not block", "GET", "/v1/orders", Some(&nobody), 200),
    ];
    for (name, method, path, tok, want) in cases {
        let auth = tok.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = claimguard_tools::http::request(stack.envoy.port, method, path, &headers).expect("request");
        assert_eq!(r.status, want, "{name}: {r:?}");
        if want == 403 {
            // No policy details by default.
            assert!(!r.body.contains("rule"), "{name}: {}", r.body);
        }
    }
}

#[test]
fn denials_say_insufficient_scope_only_for_scopes() {
    let stack = Stack::start(&policy_config());
    let r = stack.get_with_token(&token(json!({"scope": "openid"})));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"orders-api\", error=\"insufficient_scope\", error_description=\"the token lacks a scope this request needs\"")
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
    let r = stack.get_with_token(&token(json!({"scope": "orders:read", "tenant": "blocked-co"})));
    assert_eq!(r.status, 403);
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(
        r.json(),
        json!({"error": "forbidden", "message": "access denied by policy"})
    );
}

#[test]
fn dry_run_denial_is_logged_while_the_request_passes() {
    let stack = Stack::start(&policy_config());
    let r = stack.get(
        "/v1/orders",
        &[("authorization", &format!("Bearer {}", token(json!({"sub": "carol"}))))],
    );
    assert_eq!(r.status, 200);
    // Envoy writes wasm logs asynchronously; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = stack.envoy.log();
        let line = log.lines().find(|l| l.contains(r#""decision":"dry_run_denied""#));
        if let Some(line) = line {
            assert!(line.contains(r#""claimguard":"decision""#), "{line}");
            assert!(line.contains(r#""rule":"legacy-api-sunset""#), "{line}");
            assert!(line.contains(r#""status":200"#), "{line}");
            assert!(line.contains(r#""subject":"carol""#), "{line}");
            assert!(line.contains(r#""path":"/v1/orders""#), "{line}");
            assert!(line.contains(r#""trace":["#), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dry_run line in the Envoy log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn whole_policy_dry_run_mode_enforces_nothing_but_authentication() {
    let mut cfg = policy_config();
    cfg["mode"] = json!("dryRun");
    let stack = Stack::start(&cfg);
    assert_eq!(stack.get_with_token(&token(json!({"scope": "openid"}))).status, 200);
    assert_eq!(stack.get("/orders", &[]).status, 401);
}
