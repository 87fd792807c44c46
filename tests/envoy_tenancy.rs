//! The tenancy example (`examples/tenancy.json`) in a real Envoy: claims bound to the request
//! (`valuesFrom` / `notValuesFrom`). Tokens of several tenants and users, their own resources
//! and cross-tenant / cross-user attempts, and path spellings that try to confuse the capture:
//! encoded slashes, dot segments, `;` parameters, case, trailing and double slashes. The
//! upstream must receive the path that was judged, and a 403 decision line names the values
//! compared.

mod common;

use common::*;
use serde_json::{json, Value};

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
type Case<'a> = (
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
    let cases: Vec<Case> = vec![
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
