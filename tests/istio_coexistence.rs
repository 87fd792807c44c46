//! claimguard beside Istio's own RequestAuthentication + AuthorizationPolicy on one workload,
//! in the filter order istiod renders for a sidecar's inbound listener: the AUTHN-phase
//! WasmPlugin (claimguard, priority 100) first, then `jwt_authn` (RequestAuthentication:
//! the token may be missing, an invalid one is refused, `forward: false` as Istio's
//! `forwardOriginalToken` default), then `rbac` (AuthorizationPolicy `requestPrincipals:
//! ["*"]`: a verified token is required). docs/istio.md names these combinations:
//!
//! * **Both, claimguard forwarding the token** (`forwardOriginalToken: true`, the migration
//!   period): Istio's filters see the token claimguard verified and keep working.
//! * **Both, claimguard with its default** (`forwardOriginalToken: false`): claimguard removes
//!   `Authorization`, Istio's policy then sees no principal and denies everything. Unsupported,
//!   and `claimguard check` says so.
//! * **claimguard alone**: the Istio resources removed.

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// What istiod renders for `RequestAuthentication` (jwtRules: issuer, audiences, jwks) and an
/// `AuthorizationPolicy` with `from.source.requestPrincipals: ["*"]`, in plain Envoy terms
/// (Istio's own `istio_authn` filter turns the jwt_authn metadata into `request.auth.principal`;
/// here the RBAC principal reads the verified payload's `iss` directly).
fn istio_filters() -> Vec<Value> {
    let k = keys();
    vec![
        json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"origins-0": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "local_jwks": {"inline_string": json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string()},
                    "payload_in_metadata": ISSUER,
                    "forward": false
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "origins-0"}, {"allow_missing": {}}
                ]}}}]
            }
        }),
        json!({
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"ns[orders]-policy[require-jwt]-rule[0]": {
                    "permissions": [{"any": true}],
                    "principals": [{"metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": ISSUER}, {"key": "iss"}],
                        "value": {"string_match": {"exact": ISSUER}}
                    }}]
                }}}
            }
        }),
    ]
}

fn claimguard_config(forward: bool) -> Value {
    let mut c = plugin_config();
    c["providers"][0]["forwardOriginalToken"] = json!(forward);
    c["rules"] = json!([
        {"name": "health", "public": true, "paths": ["/healthz"]},
        {"name": "readers", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["orders:read"]}]}
    ]);
    c
}

struct Workload {
    upstream: EchoUpstream,
    envoy: Envoy,
}

fn workload(forward: bool, with_istio: bool) -> Workload {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut opts = EnvoyOptions::new(&claimguard_config(forward), upstream.port);
    if with_istio {
        opts.filters_after = istio_filters();
    }
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    Workload { upstream, envoy }
}

impl Workload {
    fn status(&self, path: &str, token: Option<&str>) -> u16 {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        http::get(self.envoy.port, path, &headers).expect("request").status
    }
}

/// name, path, token; status with claimguard alone, with both and `forwardOriginalToken: true`,
/// with both and claimguard's default.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, u16, u16, u16);

#[test]
fn each_supported_combination_and_the_unsupported_one() {
    let reader = keys().ec.sign(&good_claims());
    let no_scope = keys().ec.sign(&with(good_claims(), "scope", json!("openid")));
    let expired = keys().ec.sign(&with(good_claims(), "exp", json!(1)));

    // (path, token, claimguard alone, both + forwardOriginalToken, both + claimguard's default)
    #[rustfmt::skip]
    let cases: [Case; 5] = [
        ("a reader", "/orders/1", Some(&reader), 200, 200, 403),
        ("no scope: claimguard's rule", "/orders/1", Some(&no_scope), 403, 403, 403),
        ("no token", "/orders/1", None, 401, 401, 401),
        ("expired", "/orders/1", Some(&expired), 401, 401, 401),
        // Public for claimguard, but Istio's requestPrincipals policy still wants a token.
        ("public health probe", "/healthz", None, 200, 403, 403),
    ];
    let alone = workload(false, false);
    let migrating = workload(true, true);
    let unsupported = workload(false, true);
    for (name, path, token, want_alone, want_migrating, want_unsupported) in cases {
        assert_eq!(alone.status(path, token), want_alone, "claimguard alone: {name}");
        assert_eq!(
            migrating.status(path, token),
            want_migrating,
            "both, forwarding: {name}"
        );
        assert_eq!(
            unsupported.status(path, token),
            want_unsupported,
            "both, not forwarding: {name}"
        );
    }
    // claimguard forwards the token to Istio's filter, and Istio's own `forwardOriginalToken:
    // false` then removes it: the application still never sees it.
    assert_eq!(migrating.status("/orders/1", Some(&reader)), 200);
    let last = migrating
        .upstream
        .last_received()
        .expect("a request reached the upstream");
    assert_eq!(last.header("authorization"), None, "{:?}", last.header_list);
}
