//! What the upstream receives, checked at the upstream: claim headers of every value type,
//! array join modes, absent claims, refused CR/LF values, forged claim headers stripped on
//! every kind of path, the token forwarded or stripped, the payload header, per-rule headers,
//! and the verified subject in an Envoy access log line via filter state.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http::{self, Response};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ACCESS_LOG: &str =
    "%REQ(:PATH)% %RESPONSE_CODE% sub=%FILTER_STATE(wasm.claimguard.subject:PLAIN)% rule=%FILTER_STATE(wasm.claimguard.rule:PLAIN)% tenant=%FILTER_STATE(wasm.claimguard.claim.tenant:PLAIN)%";

fn config(forward: bool) -> Value {
    let mut cfg = plugin_config();
    let p = &mut cfg["providers"][0];
    p["outputClaimToHeaders"] = json!([
        {"header": "x-user-email", "claim": "email"},
        {"header": "x-user-level", "claim": "level"},
        {"header": "x-user-verified", "claim": "email_verified"},
        {"header": "x-user-groups", "claim": "groups"},
        {"header": "x-user-groups-json", "claim": "groups", "arrayFormat": "json"},
        {"header": "x-user-roles", "claim": "realm_access.roles", "separator": " "},
        {"header": "x-user-address", "claim": "address"},
        {"header": "x-user-note", "claim": "note"}
    ]);
    p["outputPayloadToHeader"] = json!("x-jwt-payload");
    p["forwardOriginalToken"] = json!(forward);
    p["claimsToFilterState"] = json!(["tenant"]);
    cfg["rules"] = json!([
        {"name": "health", "public": true, "paths": ["/healthz"], "requestHeadersToAdd": [{"header": "x-admitted-by", "value": "health"}]},
        {"name": "blocked", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked-co"]}]},
        {"name": "legacy", "paths": ["/v1/*"]},
        {"name": "legacy-sunset", "action": "DENY", "dryRun": true, "paths": ["/v1/*"]},
        {"name": "orders", "paths": ["/orders*"], "requestHeadersToAdd": [
            {"header": "x-admitted-by", "value": "orders"},
            {"header": "x-tenant", "claim": "tenant"}
        ]}
    ]);
    cfg
}

fn start(cfg: &Value) -> (EchoUpstream, Envoy) {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut opts = EnvoyOptions::new(cfg, upstream.port);
    opts.access_log_format = Some(ACCESS_LOG.to_string());
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

const FORGED: [(&str, &str); 6] = [
    ("x-user-email", "ceo@example.com"),
    ("X-User-Groups", "admins"),
    ("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9"),
    ("x-tenant", "someone-else"),
    ("x-admitted-by", "forged"),
    ("x-user-note", "forged"),
];

fn send(envoy: &Envoy, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    http::get(envoy.port, path, &headers).unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()))
}

fn claims() -> Value {
    let mut c = good_claims();
    let extra = json!({
        "email": "alice@example.com",
        "level": 3,
        "email_verified": true,
        "groups": ["staff", "ops"],
        "realm_access": {"roles": ["reader", "writer"]},
        "address": {"country": "NL", "zip": "1011"},
        "tenant": "acme"
    });
    c.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    c
}

#[test]
fn claims_become_headers_and_forgeries_never_arrive() {
    let (_up, envoy) = start(&config(false));
    let token = keys().ec.sign(&claims());
    let r = send(&envoy, "/orders/1", Some(&token));
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-user-email"], "alice@example.com");
    assert_eq!(h["x-user-level"], "3");
    assert_eq!(h["x-user-verified"], "true");
    assert_eq!(h["x-user-groups"], "staff,ops");
    assert_eq!(h["x-user-groups-json"], r#"["staff","ops"]"#);
    assert_eq!(h["x-user-roles"], "reader writer");
    assert_eq!(h["x-user-address"], r#"{"country":"NL","zip":"1011"}"#);
    // Absent claim: the forged header is removed, not left standing.
    assert!(h.get("x-user-note").is_none(), "{h}");
    // Rule additions, from the rule that admitted the request.
    assert_eq!(h["x-admitted-by"], "orders");
    assert_eq!(h["x-tenant"], "acme");
    // The payload header decodes to exactly the verified claims.
    let payload = URL_SAFE_NO_PAD
        .decode(h["x-jwt-payload"].as_str().expect("payload"))
        .expect("base64url");
    assert_eq!(serde_json::from_slice::<Value>(&payload).expect("json"), claims());
    // Istio's default: the token is not forwarded.
    assert!(h.get("authorization").is_none(), "{h}");
}

#[test]
fn forged_headers_are_stripped_on_public_and_dry_run_paths_and_denials() {
    let (up, envoy) = start(&config(false));
    // Public path, no token: nothing forged survives; the rule's own header is set.
    let r = send(&envoy, "/healthz", None);
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    for (name, _) in FORGED {
        if name != "x-admitted-by" {
            assert!(
                h.get(name.to_ascii_lowercase()).is_none(),
                "{name} reached the upstream on a public path: {h}"
            );
        }
    }
    assert_eq!(h["x-admitted-by"], "health");
    // Dry-run path (a would-be denial that passes): stripped too.
    let token = keys().ec.sign(&with(good_claims(), "sub", json!("bob")));
    let r = send(&envoy, "/v1/old", Some(&token));
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    for (name, forged) in FORGED {
        // Either absent (no such claim / no rule addition) or claimguard's own value.
        let got = h.get(name.to_ascii_lowercase()).and_then(Value::as_str);
        assert_ne!(
            got,
            Some(forged),
            "{name} reached the upstream forged on a dry-run path: {h}"
        );
    }
    assert!(h.get("x-user-email").is_none(), "bob's token has no email claim: {h}");
    // Denied requests never reach the upstream at all.
    let served = up.served();
    let blocked = keys().ec.sign(&with(claims(), "tenant", json!("blocked-co")));
    assert_eq!(send(&envoy, "/orders", Some(&blocked)).status, 403);
    assert_eq!(send(&envoy, "/orders", None).status, 401);
    assert_eq!(up.served(), served);
}

#[test]
fn unsafe_claim_values_are_refused_not_injected() {
    let (_up, envoy) = start(&config(false));
    let evil = with(claims(), "email", json!("alice@example.com\r\nx-admin: true"));
    let evil = with(evil, "groups", json!(["ok", "bad\nvalue"]));
    let r = send(&envoy, "/orders", Some(&keys().ec.sign(&evil)));
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert!(h.get("x-user-email").is_none(), "{h}");
    assert!(h.get("x-admin").is_none(), "{h}");
    assert!(h.get("x-user-groups").is_none(), "{h}");
    // As JSON, the newline is escaped: safe to send.
    assert_eq!(h["x-user-groups-json"], r#"["ok","bad\nvalue"]"#);
    assert_eq!(h["x-user-level"], "3", "other claims still flow");
    let stats = envoy.admin("stats?filter=claim_header_refused");
    assert!(stats.contains("claimguard.claim_header_refused_total: 2"), "{stats}");
}

#[test]
fn token_is_forwarded_only_when_configured() {
    let (_up, envoy) = start(&config(true));
    let token = keys().rsa.sign(&claims());
    let r = send(&envoy, "/orders", Some(&token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["authorization"], format!("Bearer {token}"));
}

/// The access log line of the request to `path`, once Envoy has written it.
fn access_line(envoy: &Envoy, path: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = envoy.access_log();
        if let Some(line) = log.lines().find(|l| l.starts_with(&format!("{path} "))) {
            return line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line:\n{log}\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn access_log_shows_the_verified_subject_from_filter_state() {
    // filterState: true publishes the identity and the admitting rule.
    let mut cfg = config(false);
    cfg["filterState"] = json!(true);
    let (_up, envoy) = start(&cfg);
    let token = keys().ec.sign(&with(claims(), "sub", json!("carol")));
    assert_eq!(send(&envoy, "/orders/7", Some(&token)).status, 200);
    assert_eq!(
        access_line(&envoy, "/orders/7"),
        "/orders/7 200 sub=carol rule=orders tenant=acme"
    );
    drop(envoy);

    // Off by default (each entry costs the proxy per request): only the claims a provider
    // names in claimsToFilterState are published.
    let (_up, envoy) = start(&config(false));
    assert_eq!(send(&envoy, "/orders/8", Some(&token)).status, 200);
    assert_eq!(
        access_line(&envoy, "/orders/8"),
        "/orders/8 200 sub=- rule=- tenant=acme"
    );
}

#[test]
fn forged_headers_are_stripped_from_cors_preflights() {
    let mut cfg = config(false);
    cfg["allowCorsPreflight"] = json!(true);
    let (_up, envoy) = start(&cfg);
    let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
    headers.push(("origin", "https://app.example.com"));
    headers.push(("access-control-request-method", "POST"));
    // No browser sends credentials on a preflight, nor managed headers in another spelling.
    let extra = [
        ("authorization", "Bearer forged.token.here"),
        ("x_user_email", "ceo@example.com"),
    ];
    headers.extend(extra);
    let r = http::request(envoy.port, "OPTIONS", "/orders", &headers).expect("preflight");
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    for (name, _) in FORGED.iter().chain(&extra) {
        assert!(
            h.get(name.to_ascii_lowercase()).is_none(),
            "{name} reached the upstream on a preflight: {h}"
        );
    }
}
