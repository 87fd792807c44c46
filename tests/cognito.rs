//! Amazon Cognito tokens, shaped exactly like the real ones (an RS256 header with only `kid`
//! and `alg`; access tokens with `client_id` and no `aud`; ID tokens with `aud`; `token_use`;
//! `cognito:groups`), natively and through Envoy.

mod common;

use claimguard::config::Config;
use claimguard::crypto::alg::Alg;
use claimguard::request::decision::{evaluate, Decision, HttpRequest};
use claimguard_tools::http;
use claimguard_tools::keys::TestKey;
use common::*;
use serde_json::{json, Value};

const REGION: &str = "eu-west-1";
const POOL: &str = "eu-west-1_Ab12Cd34E";
const CLIENT: &str = "3n4b5urk1ft4fl3mg5e62d9ado";
const KID: &str = "pW7kQ4l1mJ9sX0yTzR3uV8bN6cE2dF5gH1iK0aLq2o=";

fn issuer() -> String {
    format!("https://cognito-idp.{REGION}.amazonaws.com/{POOL}")
}

fn key() -> TestKey {
    TestKey::from_rsa(&keys().rsa, Alg::RS256, KID)
}

fn header() -> String {
    json!({"kid": KID, "alg": "RS256"}).to_string()
}

fn access_token(extra: Value) -> String {
    let now = now();
    let mut c = json!({
        "sub": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "cognito:groups": ["orders-admins", "staff"],
        "iss": issuer(),
        "version": 2,
        "client_id": CLIENT,
        "origin_jti": "b3c1a2f0-1111-2222-3333-444455556666",
        "event_id": "c4d2b3a1-aaaa-bbbb-cccc-ddddeeeeffff",
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin orders/read",
        "auth_time": now - 30,
        "exp": now + 3600,
        "iat": now - 30,
        "jti": "d5e3c4b2-9999-8888-7777-666655554444",
        "username": "alice"
    });
    merge(&mut c, extra);
    key().sign_raw(&header(), &c.to_string())
}

fn id_token(extra: Value) -> String {
    let now = now();
    let mut c = json!({
        "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q",
        "sub": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "cognito:groups": ["orders-admins"],
        "email_verified": true,
        "iss": issuer(),
        "cognito:username": "alice",
        "origin_jti": "b3c1a2f0-1111-2222-3333-444455556666",
        "aud": CLIENT,
        "event_id": "c4d2b3a1-aaaa-bbbb-cccc-ddddeeeeffff",
        "token_use": "id",
        "auth_time": now - 30,
        "exp": now + 3600,
        "iat": now - 30,
        "jti": "e6f4d5c3-1234-5678-9abc-def012345678",
        "email": "alice@example.com"
    });
    merge(&mut c, extra);
    key().sign_raw(&header(), &c.to_string())
}

/// Sets the extra claims; a null removes the claim.
fn merge(c: &mut Value, extra: Value) {
    let m = c.as_object_mut().expect("o");
    for (k, v) in extra.as_object().expect("o") {
        if v.is_null() {
            m.remove(k);
        } else {
            m.insert(k.clone(), v.clone());
        }
    }
}

fn provider(token_use: &str) -> Value {
    json!({
        "name": "cognito",
        "cognito": {"region": REGION, "userPoolId": POOL},
        "clientIds": [CLIENT],
        "tokenUse": token_use,
        "jwks": {"keys": [key().public_jwk()]},
        "outputClaimToHeaders": [{"header": "x-user-groups", "claim": "cognito:groups"}]
    })
}

fn config(token_use: &str) -> Value {
    json!({
        "providers": [provider(token_use)],
        "rules": [{"name": "orders-admins", "paths": ["/orders*"], "when": [{"claim": "cognito:groups", "values": ["orders-admins"]}]}]
    })
}

fn run(cfg: &Value, token: &str) -> (u16, &'static str) {
    let c = Config::from_json(cfg.to_string().as_bytes()).expect("config");
    let h: Vec<(String, String)> = vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/orders".into()),
        ("authorization".into(), format!("Bearer {token}")),
    ];
    let h_refs = claimguard::token::header_refs(&h);
    match evaluate(&c, &c, &HttpRequest::from_headers(&h_refs), now(), true).decision {
        Decision::Allow { .. } => (200, ""),
        Decision::Deny(d) => (d.status as u16, d.reason),
        Decision::NeedKeys { .. } => (0, "need_keys"),
    }
}

#[test]
fn access_and_id_tokens_where_each_belongs() {
    let access = config("access");
    let id = config("id");
    let cases: Vec<(&str, &Value, String, (u16, &str))> = vec![
        (
            "access token, access provider",
            &access,
            access_token(json!({})),
            (200, ""),
        ),
        (
            "ID token where an access token is required",
            &access,
            id_token(json!({})),
            (401, "wrong_token_use"),
        ),
        ("ID token, id provider", &id, id_token(json!({})), (200, "")),
        (
            "access token where an ID token is required",
            &id,
            access_token(json!({})),
            (401, "wrong_token_use"),
        ),
        (
            "access token of another app client",
            &access,
            access_token(json!({"client_id": "someoneelse"})),
            (401, "wrong_client"),
        ),
        (
            "access token without client_id",
            &access,
            access_token(json!({"client_id": null})),
            (401, "missing_audience"),
        ),
        (
            "ID token for another app client",
            &id,
            id_token(json!({"aud": "someoneelse"})),
            (401, "wrong_audience"),
        ),
        (
            "token_use missing",
            &access,
            access_token(json!({"token_use": null})),
            (401, "wrong_token_use"),
        ),
        (
            "another user pool",
            &access,
            access_token(json!({"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other"})),
            (401, "unknown_issuer"),
        ),
        (
            "not in the admins group",
            &access,
            access_token(json!({"cognito:groups": ["staff"]})),
            (403, "policy_denied"),
        ),
    ];
    for (name, cfg, token, want) in cases {
        assert_eq!(run(cfg, &token), want, "{name}");
    }
}

#[test]
fn issuer_and_jwks_url_come_from_region_and_pool() {
    let c = Config::from_json(
        json!({"providers": [{"cognito": {"region": REGION, "userPoolId": POOL}, "clientIds": [CLIENT], "tokenUse": "access"}]})
            .to_string()
            .as_bytes(),
    )
    .expect("config");
    let p = &c.providers()[0];
    assert_eq!(p.issuer(), issuer());
    let r = p.remote().expect("remote jwks");
    assert_eq!(r.url.authority(), format!("cognito-idp.{REGION}.amazonaws.com"));
    assert_eq!(r.url.path, format!("/{POOL}/.well-known/jwks.json"));
    assert_eq!(
        r.url.istio_cluster(),
        format!("outbound|443||cognito-idp.{REGION}.amazonaws.com")
    );
    for (cfg, want) in [
        (
            json!({"cognito": {"region": "EU West", "userPoolId": POOL}, "clientIds": [CLIENT]}),
            "providers[0].cognito.region",
        ),
        (
            json!({"cognito": {"region": REGION, "userPoolId": "us-east-1_X"}, "clientIds": [CLIENT]}),
            "providers[0].cognito.userPoolId",
        ),
        (
            json!({"cognito": {"region": REGION, "userPoolId": POOL}}),
            "providers[0].clientIds: a Cognito provider needs",
        ),
        (
            json!({"cognito": {"region": REGION, "userPoolId": POOL}, "clientIds": [CLIENT], "tokenUse": "refresh"}),
            "providers[0].tokenUse",
        ),
        (
            json!({"issuer": "https://elsewhere", "cognito": {"region": REGION, "userPoolId": POOL}, "clientIds": [CLIENT]}),
            "providers[0].issuer: does not match",
        ),
        (json!({"jwks": {"keys": []}}), "providers[0].issuer: is required"),
    ] {
        let e = Config::from_json(json!({"providers": [cfg]}).to_string().as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn cognito_tokens_through_envoy() {
    let stack = Stack::start(&config("access"));
    let r = stack.get_with_token(&access_token(json!({})));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-user-groups"], "orders-admins,staff");
    let r = stack.get_with_token(&id_token(json!({})));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "token_use is not the one this provider accepts");
    // The reverse: a provider that requires ID tokens refuses an access token.
    let id_stack = Stack::start(&config("id"));
    assert_eq!(id_stack.get_with_token(&id_token(json!({}))).status, 200);
    let r = id_stack.get_with_token(&access_token(json!({})));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "token_use is not the one this provider accepts");
    assert_eq!(id_stack.upstream.served(), 1);
    // A gateway that forwards the token in its own header, without a prefix.
    let mut cfg = config("access");
    cfg["providers"][0]["fromHeaders"] = json!([{"name": "x-forwarded-access-token"}]);
    let stack = Stack::start(&cfg);
    let r = http::get(
        stack.envoy.port,
        "/orders",
        &[("x-forwarded-access-token", &access_token(json!({})))],
    )
    .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Presets name each identity provider's claims the same way: a rule on `groups` reads
/// `cognito:groups` for Cognito, a rule on `scope` reads Okta's `scp` array. The alias always
/// mirrors its target, so a token cannot bring its own `groups` to a Cognito provider.
#[test]
fn presets_let_one_rule_set_read_every_provider() {
    let rules = json!([{"name": "buyers", "when": [{"claim": "groups", "values": ["orders-admins"]},
                                                   {"claim": "scope", "values": ["orders/read"]}]}]);
    let cognito = json!({
        "providers": [{"preset": {"name": "cognito", "region": REGION, "userPoolId": POOL},
                       "clientIds": [CLIENT], "tokenUse": "access", "jwks": {"keys": [key().public_jwk()]}}],
        "rules": rules
    });
    assert_eq!(run(&cognito, &access_token(json!({}))), (200, ""));
    assert_eq!(
        run(
            &cognito,
            &access_token(json!({"cognito:groups": null, "groups": ["orders-admins"]}))
        ),
        (403, "policy_denied"),
        "a token's own groups claim is not the Cognito groups"
    );

    let okta_key = TestKey::from_rsa(&keys().rsa, Alg::RS256, "okta-1");
    let okta = json!({
        "providers": [{"preset": {"name": "okta", "domain": "acme.okta.com"}, "audiences": ["api://default"],
                       "jwks": {"keys": [okta_key.public_jwk()]}}],
        "rules": rules
    });
    // An Okta access token: scopes in `scp` (an array), groups in `groups`.
    let now = now();
    let okta_token = |scp: Value| {
        okta_key.sign(
            &json!({"ver": 1, "jti": "AT.x", "iss": "https://acme.okta.com/oauth2/default",
            "aud": "api://default", "iat": now, "exp": now + 3600, "cid": "0oa1", "uid": "00u1",
            "scp": scp, "sub": "ana@example.com", "groups": ["orders-admins"]}),
        )
    };
    assert_eq!(run(&okta, &okta_token(json!(["openid", "orders/read"]))), (200, ""));
    assert_eq!(run(&okta, &okta_token(json!(["openid"]))), (403, "insufficient_scope"));
}

/// The three ways an API Gateway hands the token to the mesh. An HTTP API JWT authorizer
/// forwards `Authorization: Bearer <access token>` (the default `fromHeaders`); a REST API
/// Cognito authorizer's clients usually send the ID token raw in `Authorization` (both forms
/// accepted with a second, unprefixed entry); a gateway that copies the token into its own
/// header (no prefix).
#[test]
fn api_gateway_setups() {
    let decide = |cfg: &Value, headers: &[(&str, &str)]| -> (u16, &'static str) {
        let c = Config::from_json(cfg.to_string().as_bytes()).expect("config");
        let mut h: Vec<(String, String)> = vec![(":method".into(), "GET".into()), (":path".into(), "/orders".into())];
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let h_refs = claimguard::token::header_refs(&h);
        match evaluate(&c, &c, &HttpRequest::from_headers(&h_refs), now(), true).decision {
            Decision::Allow { .. } => (200, ""),
            Decision::Deny(d) => (d.status as u16, d.reason),
            Decision::NeedKeys { .. } => (0, "need_keys"),
        }
    };
    // HTTP API + JWT authorizer.
    let http_api = config("access");
    let bearer = format!("Bearer {}", access_token(json!({})));
    assert_eq!(decide(&http_api, &[("authorization", &bearer)]), (200, ""));

    // REST API + Cognito authorizer: raw ID token, or Bearer, never counted twice.
    let mut rest_api = config("id");
    rest_api["providers"][0]["fromHeaders"] =
        json!([{"name": "authorization", "prefix": "Bearer "}, {"name": "authorization"}]);
    let id = id_token(json!({}));
    assert_eq!(decide(&rest_api, &[("authorization", &id)]), (200, ""));
    assert_eq!(
        decide(&rest_api, &[("authorization", &format!("Bearer {id}"))]),
        (200, "")
    );
    assert_eq!(
        decide(&rest_api, &[("authorization", &format!("bearer {id}"))]),
        (200, "")
    );
    assert_eq!(
        decide(
            &rest_api,
            &[("authorization", &format!("Bearer {id}")), ("authorization", &id)]
        ),
        (400, "multiple_tokens")
    );
    assert_eq!(
        decide(&rest_api, &[("authorization", &access_token(json!({})))]),
        (401, "wrong_token_use")
    );
    // Only Bearer accepted by default: a raw token there is refused as a header in the wrong
    // form (never treated as "no token" and passed on unverified).
    assert_eq!(decide(&http_api, &[("authorization", &id)]), (401, "malformed_header"));

    // A gateway that forwards the token in a header of its own.
    let mut custom = config("access");
    custom["providers"][0]["fromHeaders"] = json!([{"name": "x-forwarded-access-token"}]);
    assert_eq!(
        decide(&custom, &[("x-forwarded-access-token", &access_token(json!({})))]),
        (200, "")
    );
    assert_eq!(decide(&custom, &[("authorization", &bearer)]), (401, "missing_token"));
}
