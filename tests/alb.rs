//! An AWS Application Load Balancer's user claims (`x-amzn-oidc-data`) through a real Envoy:
//! padded ES256 tokens verified as received, the public key fetched as PEM by `kid` from a
//! key endpoint standing in for `public-keys.auth.elb.REGION.amazonaws.com` (through an
//! Istio-named cluster), signer ARNs pinned, and the unsigned `x-amzn-oidc-*` headers removed.

mod common;

use claimguard::crypto::alg::Alg;
use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http::{self, Response};
use claimguard_tools::jwks_server::JwksServer;
use claimguard_tools::keys::TestKey;
use common::now;
use serde_json::{json, Value};
use std::time::Duration;

const KID: &str = "0f3c8e2a-5b7d-4c1e-9a6f-2d4b8c0e1a3f";
const ARN: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/orders-alb/50dc6c495c0c9188";
const KEYS_CLUSTER: &str = "outbound|80||alb-keys.test";

fn header(kid: &str, signer: &str, exp: u64) -> Value {
    // The header fields an ALB writes, in its order.
    json!({"typ": "JWT", "kid": kid, "alg": "ES256", "iss": "https://idp.example.com",
           "client": "orders-client", "signer": signer, "exp": exp})
}

fn claims(email: &str) -> Value {
    json!({"sub": "6a1c0f7e-44b2-4b7c-8f0a-3f3e2d1c0b9a", "email": email, "email_verified": "true",
           "groups": ["buyers"], "exp": now() + 120, "iss": "https://idp.example.com"})
}

/// A token from the configured ALB whose encoding really carries `=` padding.
fn padded_token(key: &TestKey, email: &str) -> String {
    for i in 0..16 {
        let mut c = claims(email);
        c["name"] = json!("n".repeat(i));
        let t = key.sign_alb(&header(KID, ARN, now() + 120), &c);
        if t.split('.').take(2).all(|s| s.ends_with('=')) {
            return t;
        }
    }
    panic!("no padded token")
}

struct AlbStack {
    upstream: EchoUpstream,
    keys: JwksServer,
    envoy: Envoy,
}

fn start(key: &TestKey) -> AlbStack {
    let keys = JwksServer::start(json!({"keys": []})).expect("key server");
    keys.set_file(&format!("/{KID}"), &key.public_pem());
    let cfg = json!({
        "providers": [{
            "name": "orders-alb",
            "issuer": "https://idp.example.com",
            "clientIds": ["orders-client"],
            "alb": {"region": "eu-west-1", "signers": [ARN], "keysUri": "http://alb-keys.test"},
            "outputClaimToHeaders": [{"header": "x-user-email", "claim": "email"}]
        }],
        "decisionHeader": true,
        "rules": [{"name": "buyers", "when": [{"claim": "groups", "values": ["buyers"]},
                                              {"claim": "email", "notValues": ["*@blocked.example"]}]}]
    });
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut opts = EnvoyOptions::new(&cfg, upstream.port);
    opts.clusters.push((KEYS_CLUSTER.to_string(), keys.port));
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    AlbStack { upstream, keys, envoy }
}

impl AlbStack {
    fn get(&self, headers: &[(&str, &str)]) -> Response {
        http::get(self.envoy.port, "/orders", headers).unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log()))
    }
}

#[test]
fn alb_tokens_are_verified_as_received_with_keys_fetched_by_kid() {
    let key = TestKey::generate(Alg::ES256, KID);
    let s = start(&key);
    let token = padded_token(&key, "ana@example.com");

    // The first request waits for the key; the key endpoint is asked once, for /KID.
    let r = s.get(&[
        ("x-amzn-oidc-data", &token),
        ("x-amzn-oidc-identity", "admin"),
        ("x-amzn-oidc-accesstoken", "forged"),
    ]);
    assert_eq!(r.status, 200, "{}\n{}", r.body, s.envoy.log());
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-user-email"], "ana@example.com");
    // The unsigned ALB headers never reach the app, nor does the token (not forwarded).
    assert!(seen.get("x-amzn-oidc-identity").is_none(), "{seen}");
    assert!(seen.get("x-amzn-oidc-accesstoken").is_none(), "{seen}");
    assert!(seen.get("x-amzn-oidc-data").is_none(), "{seen}");
    for _ in 0..5 {
        assert_eq!(s.get(&[("x-amzn-oidc-data", &token)]).status, 200);
    }
    let hits = s.keys.hit_log();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].1, format!("/{KID}"));
    let stats = s.envoy.admin("stats?filter=alb_key_fetch_total");
    assert!(stats.contains("alb_key_fetch_total.result.fetched: 1"), "{stats}");

    // The same token with its padding stripped (what a "fix the encoding first" verifier
    // does) is different bytes: the signature fails.
    let stripped = token
        .split('.')
        .map(|p| p.trim_end_matches('='))
        .collect::<Vec<_>>()
        .join(".");
    let r = s.get(&[("x-amzn-oidc-data", &stripped)]);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("invalid_token"));
    assert_eq!(r.header("x-claimguard-reason"), Some("bad_signature"), "{}", r.body);

    // Policy still applies to ALB identities.
    let blocked = padded_token(&key, "eve@blocked.example");
    assert_eq!(s.get(&[("x-amzn-oidc-data", &blocked)]).status, 403);
    assert_eq!(s.upstream.served(), 6);
}

#[test]
fn forged_signers_kids_and_headers_never_reach_the_app() {
    let key = TestKey::generate(Alg::ES256, KID);
    let s = start(&key);
    let other_alb = ARN.replace("orders-alb", "other-alb");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong signer ARN",
            key.sign_alb(&header(KID, &other_alb, now() + 120), &claims("a@example.com")),
            "wrong_signer",
        ),
        (
            "kid not a UUID",
            key.sign_alb(&header("../../etc/passwd", ARN, now() + 120), &claims("a@example.com")),
            "malformed",
        ),
        (
            "expired",
            key.sign_alb(&header(KID, ARN, now() - 600), &claims("a@example.com")),
            "expired",
        ),
        (
            "another key",
            TestKey::generate(Alg::ES256, KID).sign_alb(&header(KID, ARN, now() + 120), &claims("a@example.com")),
            "bad_signature",
        ),
    ];
    for (what, token, reason) in &cases {
        let r = s.get(&[("x-amzn-oidc-data", token)]);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.header("x-claimguard-reason"), Some(*reason), "{what}: {}", r.body);
    }
    // Neither a forged signer nor a bad kid made claimguard call the key endpoint; only the
    // "another key" case (right signer, right kid) needed the key.
    assert!(
        s.keys.hit_log().iter().all(|(_, p)| p == &format!("/{KID}")),
        "{:?}",
        s.keys.hit_log()
    );

    // An unknown (well-formed) kid: one fetch, a 404, then 401 without asking again.
    let unknown = "11111111-2222-4333-8444-555555555555";
    let t = key.sign_alb(&header(unknown, ARN, now() + 120), &claims("a@example.com"));
    for _ in 0..3 {
        let r = s.get(&[("x-amzn-oidc-data", &t)]);
        assert_eq!(r.status, 401);
        assert_eq!(r.header("x-claimguard-reason"), Some("unknown_kid"));
    }
    let asked: Vec<_> = s
        .keys
        .hit_log()
        .into_iter()
        .filter(|(_, p)| p.contains(unknown))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let stats = s.envoy.admin("stats?filter=alb_key_fetch_total");
    assert!(stats.contains("alb_key_fetch_total.result.not_found: 1"), "{stats}");

    // Only the spoofable headers, no token: 401, and nothing reaches the app.
    let r = s.get(&[("x-amzn-oidc-identity", "admin"), ("x-amzn-oidc-accesstoken", "x")]);
    assert_eq!(r.status, 401);
    assert_eq!(s.upstream.served(), 0);
}
