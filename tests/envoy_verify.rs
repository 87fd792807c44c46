//! claimguard inside a real Envoy: valid tokens reach the upstream, every kind of bad token
//! gets a 401 with the RFC 6750 header and a JSON body that says what failed, and a bad
//! plugin config is refused by Envoy instead of serving traffic with a broken filter.
//!
//! Needs `make build` (the .wasm) and `make envoy` (or ENVOY=/path); `make test` does both.

mod common;

use claimguard::crypto::alg::Alg;
use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::keys::{unsigned_token, TestKey};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn assert_401(stack: &Stack, name: &str, token: &str, description: &str) {
    let before = stack.upstream.served();
    let r = stack.get_with_token(token);
    assert_eq!(r.status, 401, "{name}: {r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!("Bearer realm=\"claimguard\", error=\"invalid_token\", error_description=\"{description}\"")
                .as_str()
        ),
        "{name}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
    assert_eq!(
        r.json(),
        json!({"error": "invalid_token", "message": description}),
        "{name}"
    );
    assert!(!r.body.contains(token), "{name}: the body must not echo the token");
    assert_eq!(
        stack.upstream.served(),
        before,
        "{name}: a rejected request reached the upstream"
    );
}

#[test]
fn valid_rs256_and_es256_tokens_reach_the_upstream() {
    let stack = Stack::start(&plugin_config());
    let k = keys();
    for (name, key) in [("GoodRS256", &k.rsa), ("GoodES256", &k.ec)] {
        let token = key.sign(&good_claims());
        let r = stack.get("/orders/42?x=1", &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(r.status, 200, "{name}: {r:?}\n{}", stack.envoy.log());
        let echoed = r.json();
        assert_eq!(echoed["path"], "/orders/42?x=1", "{name}");
        // Verified tokens are not forwarded unless forwardOriginalToken is set (Istio's default).
        assert!(echoed["headers"].get("authorization").is_none(), "{name}: {echoed}");
    }
    assert_eq!(stack.upstream.served(), 2);
}

#[test]
fn invalid_tokens_get_401_with_the_reason() {
    let stack = Stack::start(&plugin_config());
    let k = keys();
    let now = now();
    let g = good_claims;
    let unknown_kid = TestKey::from_rsa(&k.rsa, Alg::RS256, "rsa-retired");
    let good = k.rsa.sign(&g());
    let mut forged: Vec<&str> = good.split('.').collect();
    let admin = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        with(g(), "sub", json!("admin")).to_string(),
    );
    forged[1] = &admin;
    let forged = forged.join(".");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ExpiredToken",
            k.rsa.sign(&with(g(), "exp", json!(now - 3600))),
            "token has expired",
        ),
        (
            "NotYetValidToken",
            k.ec.sign(&with(g(), "nbf", json!(now + 3600))),
            "token is not yet valid (nbf)",
        ),
        (
            "WrongIssuerToken",
            k.rsa.sign(&with(g(), "iss", json!("https://evil.example"))),
            "token issuer is not accepted",
        ),
        (
            "WrongAudienceToken",
            k.ec.sign(&with(g(), "aud", json!("billing-api"))),
            "token audience is not allowed",
        ),
        (
            "BadSignatureToken",
            k.stranger_rsa.sign(&g()),
            "token signature is invalid",
        ),
        ("TamperedPayloadToken", forged, "token signature is invalid"),
        (
            "NonExistKidToken",
            unknown_kid.sign(&g()),
            "token is signed with an unknown key (kid)",
        ),
        (
            "AlgNoneToken",
            unsigned_token(&json!({"alg": "none", "typ": "JWT"}), &g(), "c2ln"),
            "unsigned tokens (alg none) are not accepted",
        ),
        (
            "NoExpToken",
            k.rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a"})),
            "token has no expiration (exp)",
        ),
        (
            "GarbageToken",
            "not-a-jwt".to_string(),
            "token is malformed: a JWT must have exactly three dot-separated parts",
        ),
    ];
    for (name, token, description) in &cases {
        assert_401(&stack, name, token, description);
    }
}

#[test]
fn missing_token_gets_401_without_error_code() {
    let stack = Stack::start(&plugin_config());
    for headers in [vec![], vec![("authorization", "Basic dXNlcjpwYXNz")]] {
        let r = stack.get("/orders", &headers);
        assert_eq!(r.status, 401, "{r:?}");
        // RFC 6750 §3.1: no error code when the request carried no token at all.
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"claimguard\""));
        assert_eq!(
            r.json(),
            json!({"error": "missing_token", "message": "a bearer token is required"})
        );
    }
    assert_eq!(stack.upstream.served(), 0);
}

#[test]
fn two_tokens_get_400_invalid_request() {
    let mut cfg = plugin_config();
    cfg["providers"][0]["fromHeaders"] = json!([{"name": "authorization", "prefix": "Bearer "}]);
    cfg["providers"][0]["fromParams"] = json!(["access_token"]);
    let stack = Stack::start(&cfg);
    let t = keys().ec.sign(&good_claims());
    let r = stack.get(
        &format!("/orders?access_token={t}"),
        &[("authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("error=\"invalid_request\""));
    // One token in the query alone is fine.
    assert_eq!(stack.get(&format!("/orders?access_token={t}"), &[]).status, 200);
}

#[test]
fn allow_missing_passes_anonymous_requests_only() {
    let mut cfg = plugin_config();
    cfg["providers"][0]["allowMissing"] = json!(true);
    let stack = Stack::start(&cfg);
    assert_eq!(stack.get("/public", &[]).status, 200);
    let expired = keys().ec.sign(&with(good_claims(), "exp", json!(1)));
    assert_401(&stack, "ExpiredWithAllowMissing", &expired, "token has expired");
}

fn start_expecting_refusal(cfg: &Value) -> String {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let opts = EnvoyOptions::new(cfg, upstream.port);
    match Envoy::start(&opts, Duration::from_secs(60)) {
        Ok(envoy) => panic!("Envoy served with a bad config:\n{}", envoy.log()),
        Err(e) => {
            assert!(e.exit_code.is_some_and(|c| c != 0), "Envoy should exit non-zero: {e}");
            e.log
        }
    }
}

#[test]
fn bad_configs_are_refused_with_the_field_path() {
    let k = keys();
    let mut short = k.rsa.public_jwk();
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        short["n"].as_str().unwrap_or_default(),
    )
    .unwrap_or_default();
    short["n"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &n[..128]
    ));
    let cases = [
        (
            json!({"providers": [{"issuer": ISSUER, "jwks": {"keys": [short]}}]}),
            "claimguard: rejected plugin configuration: providers[0].jwks.keys[0].n: RSA modulus is 1024 bits",
        ),
        (
            json!({"providers": [{"issuer": ISSUER, "jwks": k.ec.jwks(), "audiencez": ["a"]}]}),
            "claimguard: rejected plugin configuration: providers[0].audiencez: unknown field `audiencez`",
        ),
        (
            json!({"providers": [{"issuer": "", "jwks": k.ec.jwks()}]}),
            "claimguard: rejected plugin configuration: providers[0].issuer: must not be empty",
        ),
    ];
    for (cfg, want) in cases {
        let log = start_expecting_refusal(&cfg);
        assert!(log.contains(want), "wanted {want:?} in the Envoy log:\n{log}");
    }
}

/// `maxLifetime` in Envoy: a token living exactly the limit passes, a longer-lived one and one
/// without `iat` get 401 `invalid_token` with the reason, and never reach the upstream.
#[test]
fn max_lifetime_refuses_long_lived_tokens() {
    let mut cfg = plugin_config();
    cfg["providers"][0]["maxLifetime"] = json!("10m");
    let stack = Stack::start(&cfg);
    let k = keys();
    let ok = k.ec.sign(&good_claims()); // iat now, exp now + 600
    let r = stack.get_with_token(&ok);
    assert_eq!(r.status, 200, "{r:?}\n{}", stack.envoy.log());
    let mut long = good_claims();
    long["exp"] = json!(long["iat"].as_u64().unwrap() + 601);
    assert_401(
        &stack,
        "TooLong",
        &k.ec.sign(&long),
        "token lifetime (exp - iat) is 601s; at most 600s is accepted",
    );
    let mut no_iat = good_claims();
    no_iat.as_object_mut().unwrap().remove("iat");
    assert_401(
        &stack,
        "NoIat",
        &k.ec.sign(&no_iat),
        "token has no iat or no exp, so its lifetime is unbounded; at most 600s is accepted",
    );
}

/// `subjects` in Envoy: a token for another subject, or without `sub`, gets 401 and never
/// reaches the upstream.
#[test]
fn subjects_refuse_other_subjects() {
    let mut cfg = plugin_config();
    cfg["providers"][0]["subjects"] = json!(["alice", "svc-*"]);
    let stack = Stack::start(&cfg);
    let k = keys();
    let r = stack.get_with_token(&k.ec.sign(&good_claims())); // sub alice
    assert_eq!(r.status, 200, "{r:?}\n{}", stack.envoy.log());
    let mut bob = good_claims();
    bob["sub"] = json!("bob");
    assert_401(
        &stack,
        "OtherSubject",
        &k.ec.sign(&bob),
        "token subject (sub) is not accepted",
    );
    let mut none = good_claims();
    none.as_object_mut().unwrap().remove("sub");
    assert_401(
        &stack,
        "NoSubject",
        &k.ec.sign(&none),
        "token subject (sub) is not accepted",
    );
}
