//! Transaction Tokens (draft-ietf-oauth-transaction-tokens-10) inside a real Envoy, through
//! the `txnToken` preset: a valid Txn-Token reaches the application with its transaction id
//! and subject (and is passed on unmodified); a user's access token in the `Txn-Token`
//! header, an expired or too long-lived Txn-Token, one for another trust domain and one
//! without `txn` are refused; rules read the transaction and request context (`tctx`,
//! `rctx`); and the decision line names the transaction beside the W3C trace id.
//!
//! Needs `make build` (the .wasm) and `make envoy` (or ENVOY=/path); `make test` does both.

mod common;

use claimguard_tools::http::{self, Response};
use claimguard_tools::keys::TestKey;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The Transaction Token Service's issuer and the trust domain its tokens are valid in.
const TTS: &str = "https://tts.trust-domain.example";
const TRUST_DOMAIN: &str = "trust-domain.example";
const TXN: &str = "97053963-771d-49cc-a4e3-20aad399c312";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The TTS signs with the EC test key; the RSA one plays an identity provider elsewhere.
fn tts_key() -> &'static TestKey {
    &keys().ec
}

fn config() -> Value {
    json!({
        "providers": [{
            "name": "txn",
            "preset": {"name": "txnToken"},
            "issuer": TTS,
            "audiences": [TRUST_DOMAIN],
            "jwks": json!({"keys": [tts_key().public_jwk()]}).to_string()
        }],
        "rules": [
            {"name": "health", "public": true, "paths": ["/healthz"]},
            {"name": "no-password-trades", "action": "DENY", "when": [{"claim": "rctx.authn", "values": ["pwd"]}]},
            {"name": "buy-only", "methods": ["POST"], "paths": ["/trades"],
             "when": [{"claim": "tctx.action", "values": ["BUY"]}, {"claim": "scope", "values": ["trade.stocks"]}]},
            {"name": "read", "methods": ["GET"], "paths": ["/trades", "/trades/*"],
             "when": [{"claim": "scope", "values": ["trade.stocks"]}]}
        ]
    })
}

/// The body of the draft's example Txn-Token, issued now (it lives 6 minutes).
fn txn_claims() -> Value {
    let now = now();
    json!({
        "iss": TTS, "iat": now, "exp": now + 360, "aud": TRUST_DOMAIN, "txn": TXN,
        "sub": "d084sdrt234fsaw34tr23t", "req_wl": "apigateway.trust-domain.example",
        "rctx": {"req_ip": "69.151.72.123", "authn": "face"},
        "scope": "trade.stocks",
        "tctx": {"action": "BUY", "ticker": "MSFT", "quantity": "100",
                 "customer_type": {"geo": "US", "level": "VIP"}}
    })
}

fn txn_token(claims: &Value) -> String {
    tts_key().sign_typed("txntoken+jwt", claims)
}

fn without(mut claims: Value, k: &str) -> Value {
    claims.as_object_mut().expect("object").remove(k);
    claims
}

fn send(stack: &Stack, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(stack.envoy.port, method, path, headers)
        .unwrap_or_else(|e| panic!("request failed: {e}\n{}", stack.envoy.log()))
}

fn assert_401(stack: &Stack, name: &str, headers: &[(&str, &str)], description: &str) {
    let before = stack.upstream.served();
    let r = send(stack, "GET", "/trades", headers);
    assert_eq!(r.status, 401, "{name}: {r:?}");
    assert_eq!(
        r.json(),
        json!({"error": "invalid_token", "message": description}),
        "{name}"
    );
    assert_eq!(
        stack.upstream.served(),
        before,
        "{name}: a refused request reached the upstream"
    );
}

/// The decision line (JSON) of the first log line containing every needle.
fn decision_line(stack: &Stack, needles: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = stack.envoy.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("\"claimguard\":\"decision\"") && needles.iter().all(|n| l.contains(n)))
        {
            return serde_json::from_str(&l[l.find('{').expect("json")..]).expect("a JSON decision line");
        }
        assert!(Instant::now() < deadline, "no decision line with {needles:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn valid_txn_token_reaches_the_app_with_its_transaction_and_subject() {
    let stack = Stack::start(&config());
    let token = txn_token(&txn_claims());
    let r = send(
        &stack,
        "POST",
        "/trades",
        &[
            ("txn-token", &token),
            // Forged by the caller: claimguard manages these headers and strips them.
            ("x-txn-id", "forged-transaction"),
            ("x-txn-subject", "admin"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", stack.envoy.log());
    let got = stack.upstream.last_received().expect("the upstream got the request");
    assert_eq!(got.header("x-txn-id"), Some(TXN));
    assert_eq!(got.header("x-txn-subject"), Some("d084sdrt234fsaw34tr23t"));
    // Passed on unmodified: the application calls the next hop with the same Txn-Token.
    assert_eq!(got.header("txn-token"), Some(token.as_str()));
    // Not an access token: nothing arrives in Authorization.
    assert_eq!(got.header("authorization"), None);
    // Public routes need none.
    assert_eq!(send(&stack, "GET", "/healthz", &[]).status, 200);
}

#[test]
fn tokens_that_are_not_valid_txn_tokens_get_401() {
    let stack = Stack::start(&config());
    let k = keys();
    let now = now();
    let g = txn_claims;
    // The user's access token as the authorization server that is also the TTS issues it:
    // same issuer, same key, even the trust domain as audience. Only its typ says it is not a
    // Txn-Token.
    let access_token = tts_key().sign_typed(
        "at+jwt",
        &json!({"iss": TTS, "aud": TRUST_DOMAIN, "sub": "alice", "scope": "trade.stocks",
                "client_id": "web", "iat": now, "exp": now + 3600}),
    );
    // An identity provider's access token, forwarded in the wrong header.
    let idp_token = k.rsa.sign(&good_claims());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "AccessTokenInTxnTokenHeader",
            access_token.clone(),
            "token type (typ) is not the one this issuer uses",
        ),
        (
            "TxnClaimsTypedJwt",
            tts_key().sign(&g()),
            "token type (typ) is not the one this issuer uses",
        ),
        ("IdpTokenInTxnTokenHeader", idp_token, "token issuer is not accepted"),
        (
            "ExpiredTxnToken",
            txn_token(&with(with(g(), "iat", json!(now - 900)), "exp", json!(now - 600))),
            "token has expired",
        ),
        (
            "TooLongLivedTxnToken",
            txn_token(&with(g(), "exp", json!(now + 3600))),
            "token lifetime (exp - iat) is 3600s; at most 600s is accepted",
        ),
        (
            "OtherTrustDomain",
            txn_token(&with(g(), "aud", json!("other-domain.example"))),
            "token audience is not allowed",
        ),
        (
            "NoTxn",
            txn_token(&without(g(), "txn")),
            "token has no txn claim, which is required",
        ),
        (
            "NoRequestingWorkload",
            txn_token(&without(g(), "req_wl")),
            "token has no req_wl claim, which is required",
        ),
        (
            "SignedByAnotherKey",
            keys().stranger_rsa.sign_typed("txntoken+jwt", &g()),
            "token is signed with an unknown key (kid)",
        ),
    ];
    for (name, token, description) in &cases {
        assert_401(&stack, name, &[("txn-token", token)], description);
    }
    // The header carries the token itself, no scheme.
    let r = send(
        &stack,
        "GET",
        "/trades",
        &[("txn-token", &format!("Bearer {}", txn_token(&g())))],
    );
    assert_eq!(r.status, 401, "BearerPrefixedTxnToken: {r:?}");
    // A Txn-Token in Authorization is not read: the request has no Txn-Token at all.
    let r = send(
        &stack,
        "GET",
        "/trades",
        &[("authorization", &format!("Bearer {}", txn_token(&g())))],
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("missing_token")),
        "TxnTokenInAuthorization: {r:?}"
    );
    assert_eq!(stack.upstream.served(), 0);
}

#[test]
fn rules_read_the_transaction_and_request_context() {
    let stack = Stack::start(&config());
    let g = txn_claims;
    let ctx = |tctx: Value, authn: &str| {
        let mut c = with(g(), "tctx", tctx);
        c["rctx"]["authn"] = json!(authn);
        txn_token(&c)
    };
    let cases: Vec<(&str, &str, String, u16)> = vec![
        (
            "BuyAllowed",
            "POST",
            ctx(json!({"action": "BUY", "ticker": "MSFT"}), "face"),
            200,
        ),
        (
            "SellDenied",
            "POST",
            ctx(json!({"action": "SELL", "ticker": "MSFT"}), "face"),
            403,
        ),
        ("NoActionDenied", "POST", ctx(json!({"ticker": "MSFT"}), "face"), 403),
        ("PasswordTradeDenied", "POST", ctx(json!({"action": "BUY"}), "pwd"), 403),
        ("ReadAllowed", "GET", ctx(json!({"action": "SELL"}), "face"), 200),
        (
            "OtherScopeDenied",
            "GET",
            txn_token(&with(g(), "scope", json!("trade.options"))),
            403,
        ),
    ];
    for (name, method, token, status) in &cases {
        let r = send(&stack, method, "/trades", &[("txn-token", token)]);
        assert_eq!(r.status, *status, "{name}: {r:?}");
    }
    assert_eq!(stack.upstream.served(), 2);
}

#[test]
fn decision_lines_name_the_transaction_beside_the_trace_id() {
    let stack = Stack::start(&config());
    let sell = txn_token(&with(txn_claims(), "tctx", json!({"action": "SELL"})));
    let r = send(
        &stack,
        "POST",
        "/trades",
        &[
            ("txn-token", &sell),
            ("traceparent", TRACEPARENT),
            ("x-request-id", "req-sell"),
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let v = decision_line(&stack, &["req-sell"]);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "policy_denied");
    assert_eq!(v["provider"], "txn");
    assert_eq!(v["subject"], "d084sdrt234fsaw34tr23t");
    assert_eq!(v["txn"], TXN);
    assert_eq!(v["traceparent"], TRACEPARENT);

    // Allowed requests are logged at debug: the same transaction at the next hop.
    let r = http::request(stack.envoy.admin_port, "POST", "/logging?wasm=debug", &[]).expect("admin");
    assert_eq!(r.status, 200, "{r:?}");
    // The filter reads the log level again at most once a second (later on a busy machine):
    // send the allowed request until its line appears.
    let buy = txn_token(&txn_claims());
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let r = send(
            &stack,
            "POST",
            "/trades",
            &[
                ("txn-token", &buy),
                ("traceparent", TRACEPARENT),
                ("x-request-id", "req-buy"),
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
        std::thread::sleep(Duration::from_millis(200));
        let log = stack.envoy.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("\"claimguard\":\"decision\"") && l.contains("req-buy"))
        {
            break serde_json::from_str::<Value>(&l[l.find('{').expect("json")..]).expect("a JSON decision line");
        }
        assert!(Instant::now() < deadline, "no allow line at debug:\n{log}");
    };
    assert_eq!((v["decision"].clone(), v["txn"].clone()), (json!("allow"), json!(TXN)));

    // A transaction id is a token's word: escaped, on one line, and capped at 128 bytes.
    let hostile = format!("\"}}\n{{\"decision\":\"allow\",\"x\":\"{}", "z".repeat(300));
    let t = txn_token(&with(
        with(txn_claims(), "txn", json!(hostile)),
        "tctx",
        json!({"action": "SELL"}),
    ));
    let r = send(
        &stack,
        "POST",
        "/trades",
        &[("txn-token", &t), ("x-request-id", "req-hostile")],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let v = decision_line(&stack, &["req-hostile"]);
    let logged = v["txn"].as_str().expect("txn");
    assert_eq!(logged.len(), 128);
    assert!(hostile.starts_with(logged));
    // The token itself never reaches the log.
    let log = stack.envoy.log();
    for token in [&sell, &buy, &t] {
        assert!(!log.contains(token.as_str()), "a Txn-Token reached the log");
    }
}
