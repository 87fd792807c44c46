//! The calling workload's mTLS identity together with the user's token, in real Envoys.
//!
//! The test makes a mesh CA and workload certificates with SPIFFE URI SANs (rcgen), starts a
//! sidecar Envoy running claimguard with TLS listeners that require client certificates (on
//! 127.0.0.1 and on ::1) beside its plain-text one, and a client-side Envoy that presents a
//! chosen workload's certificate: the `x-via` header picks the identity (a cluster per
//! workload, as an Istio client sidecar has its own). Configs are the shipped
//! `examples/mesh-identity.json` and `examples/delegation.json`, with the test keys. The CA
//! and the client Envoy are `claimguard_tools::mesh`'s (tests/envoy_chain.rs uses them too).

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{DownstreamTls, Envoy, EnvoyOptions, ExtraListener};
use claimguard_tools::http::{self, Response};
use claimguard_tools::mesh::{client_bootstrap, ClientTls, Pki, Route};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const WEB_ADMIN: &str = "spiffe://cluster.local/ns/web/sa/admin";
const LEGACY: &str = "spiffe://cluster.local/ns/legacy/sa/old";
const AGENT: &str = "spiffe://cluster.local/ns/agents/sa/assistant";

/// Sidecar (claimguard, plain-text + mTLS listeners on 127.0.0.1 and ::1) and client Envoys.
struct Mesh {
    _upstream: EchoUpstream,
    sidecar: Envoy,
    client: Envoy,
    dir: PathBuf,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Mesh {
    /// `peers`: (x-via name, SPIFFE ID) of the workloads the client can be.
    /// `use_remote_address`: the sidecar's connection manager setting (see EnvoyOptions).
    fn start(plugin_config: &Value, tag: &str, peers: &[(&'static str, &str)], use_remote_address: bool) -> Mesh {
        let dir = std::env::temp_dir().join(format!("claimguard-mtls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = Pki::new(&dir.join("mesh"), "claimguard test mesh CA").expect("mesh CA");
        // Another CA that issues a certificate with a trusted workload's ID: must not get in.
        let rogue_ca = Pki::new(&dir.join("rogue"), "rogue CA").expect("rogue CA");
        let server = pki
            .leaf(
                "orders",
                "spiffe://cluster.local/ns/orders/sa/orders",
                Some("orders.test"),
            )
            .expect("server certificate");

        let upstream = EchoUpstream::start(0).expect("echo upstream");
        let mut opts = EnvoyOptions::new(plugin_config, upstream.port);
        opts.log_level = "info".into();
        opts.use_remote_address = use_remote_address;
        for (name, address) in [("mtls4", "127.0.0.1"), ("mtls6", "::1")] {
            opts.extra_listeners.push(ExtraListener {
                name: name.into(),
                address: address.into(),
                tls: Some(DownstreamTls {
                    cert_chain: server.cert.clone(),
                    private_key: server.key.clone(),
                    client_ca: pki.ca_file(),
                }),
            });
        }
        opts.extra_listeners.push(ExtraListener {
            name: "plain6".into(),
            address: "::1".into(),
            tls: None,
        });
        let sidecar = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("sidecar: {e}"));
        let port = |name: &str| {
            sidecar
                .listener_port_named(name)
                .unwrap_or_else(|| panic!("no port for {name}:\n{}", sidecar.admin("listeners?format=json")))
        };
        let (mtls4, mtls6, plain6) = (port("mtls4"), port("mtls6"), port("plain6"));

        // How the client Envoy reaches the sidecar for each `x-via`: TLS validating the sidecar
        // against the mesh CA, with the named workload's certificate (or none).
        let tls = |cert| {
            Some(ClientTls {
                ca: pki.ca_file(),
                cert,
                sni: "orders.test".into(),
            })
        };
        let route = |via: &str, address: &str, port: u16, tls: Option<ClientTls>| Route {
            via: via.into(),
            address: address.into(),
            port,
            tls,
        };
        let mut routes = vec![
            route("plain", "127.0.0.1", sidecar.port, None),
            route("plain6", "::1", plain6, None),
            route("nocert", "127.0.0.1", mtls4, tls(None)),
            route(
                "rogue",
                "127.0.0.1",
                mtls4,
                tls(Some(rogue_ca.leaf("rogue", GATEWAY, None).expect("rogue leaf"))),
            ),
        ];
        for (via, id) in peers {
            let cert = pki.leaf(via, id, None).expect("workload certificate");
            routes.push(route(via, "127.0.0.1", mtls4, tls(Some(cert.clone()))));
            // The same workload over IPv6 loopback: "NAME6".
            routes.push(route(&format!("{via}6"), "::1", mtls6, tls(Some(cert))));
        }
        let mut client_opts = EnvoyOptions::new(&json!({}), 0);
        client_opts.raw_bootstrap = Some(client_bootstrap(&routes));
        let client = Envoy::start(&client_opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("client: {e}"));
        Mesh {
            _upstream: upstream,
            sidecar,
            client,
            dir,
        }
    }

    /// A request through the client Envoy as workload `via`, with an optional token.
    fn send(&self, via: &str, method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("x-via", via)];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        headers.extend_from_slice(extra);
        http::request(self.client.port, method, path, &headers)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.sidecar.log()))
    }
}

/// An example config with the test issuer and keys.
fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).expect("example")).expect("json");
    let k = keys();
    cfg["providers"][0]["issuer"] = json!(ISSUER);
    cfg["providers"][0]["audiences"] = json!([AUDIENCE]);
    cfg["providers"][0]["jwks"] = json!(json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string());
    cfg
}

fn token(claims: Value) -> String {
    let mut c = good_claims();
    c.as_object_mut().expect("object").remove("scope");
    c.as_object_mut()
        .expect("object")
        .extend(claims.as_object().expect("object").clone());
    keys().ec.sign(&c)
}

#[test]
fn principal_and_claims_together_over_real_mtls() {
    let mesh = Mesh::start(
        &example("mesh-identity.json"),
        "identity",
        &[
            ("gateway", GATEWAY),
            ("frontend", FRONTEND),
            ("webadmin", WEB_ADMIN),
            ("legacy", LEGACY),
        ],
        false,
    );
    let reader = token(json!({"scope": "orders:read"}));
    let buyer = token(json!({"groups": ["buyers"]}));
    let guest = token(json!({"groups": ["guests"], "scope": "orders:read"}));
    let expired = keys().ec.sign(&with(good_claims(), "exp", json!(1)));
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>, u16, &'a str);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // name, via, method, path, token, status, body must contain
        ("gateway forwards a reader", "gateway", "GET", "/orders/7", Some(&reader), 200, ""),
        ("frontend reads too (web/*)", "frontend", "GET", "/orders", Some(&reader), 200, ""),
        ("frontend + buyer may order", "frontend", "POST", "/orders", Some(&buyer), 200, ""),
        ("frontend + guest may not", "frontend", "POST", "/orders", Some(&guest), 403, "access denied by policy"),
        ("buyer via the gateway may not (frontend only)", "gateway", "POST", "/orders", Some(&buyer), 403, "access denied by policy"),
        ("gateway + token without the scope", "gateway", "GET", "/orders", Some(&buyer), 403, ""),
        // Trusted hop: valid tokens only through the gateway or the frontend.
        ("web/admin is not a trusted hop", "webadmin", "GET", "/orders", Some(&reader), 403, "only accepted through a trusted workload"),
        ("legacy pod replays a user token", "legacy", "GET", "/orders", Some(&reader), 403, "only accepted through a trusted workload"),
        ("plain text replays a user token", "plain", "GET", "/orders", Some(&reader), 403, "only accepted through a trusted workload"),
        ("plain text, bad token: still 401", "plain", "GET", "/orders", Some(&expired), 401, "token has expired"),
        ("plain text, no token: 401", "plain", "GET", "/orders", None, 401, "missing_token"),
        ("public route over plain text", "plain", "GET", "/healthz", None, 200, ""),
        ("DENY on a namespace, public route too", "legacy", "GET", "/healthz", None, 403, ""),
        // CIDR on the downstream address, IPv4 and IPv6 loopback.
        ("v4 block from 127.0.0.1", "gateway", "GET", "/reports/v4", Some(&reader), 200, ""),
        ("v4 block from ::1", "gateway6", "GET", "/reports/v4", Some(&reader), 403, ""),
        ("v6 block from ::1", "gateway6", "GET", "/reports/v6", Some(&reader), 200, ""),
        ("v6 block from 127.0.0.1", "gateway", "GET", "/reports/v6", Some(&reader), 403, ""),
        ("IPv6 listener, principal rules too", "frontend6", "POST", "/orders", Some(&buyer), 200, ""),
        ("IPv6 plain text, no trusted hop", "plain6", "GET", "/orders", Some(&reader), 403, "trusted workload"),
    ];
    for (name, via, method, path, tok, want, body) in cases {
        let r = mesh.send(via, method, path, tok, &[]);
        assert_eq!(r.status, want, "{name}: {r:?}\n{}", mesh.sidecar.log());
        assert!(r.body.contains(body), "{name}: {}", r.body);
    }
    // With Envoy's default use_remote_address: false, an X-Forwarded-For header makes Envoy's
    // source.address the forwarded one (port 0): claimguard treats it as unknown, so no forged
    // header moves a request into a block, and a genuine one from the node fails closed.
    for (name, via, path, xff) in [
        (
            "forged into the v4 block from ::1",
            "gateway6",
            "/reports/v4",
            "10.1.2.3",
        ),
        (
            "forged into the v6 block from 127.0.0.1",
            "gateway",
            "/reports/v6",
            "::1",
        ),
        (
            "genuine v4 address, but forwarded",
            "gateway",
            "/reports/v4",
            "127.0.0.1",
        ),
    ] {
        let r = mesh.send(via, "GET", path, Some(&reader), &[("x-forwarded-for", xff)]);
        assert_eq!(r.status, 403, "{name}: {r:?}");
    }
}

#[test]
fn no_certificate_or_a_foreign_ca_never_reaches_the_filter() {
    let mesh = Mesh::start(
        &example("mesh-identity.json"),
        "handshake",
        &[("gateway", GATEWAY)],
        false,
    );
    let reader = token(json!({"scope": "orders:read"}));
    for via in ["nocert", "rogue"] {
        // The sidecar refuses the handshake; the client Envoy reports the failed connection.
        let r = mesh.send(via, "GET", "/orders", Some(&reader), &[]);
        assert_eq!(r.status, 503, "{via}: {r:?}");
    }
    let stats = mesh.sidecar.admin("stats?filter=ssl");
    let failed: u64 = stats
        .lines()
        .filter(|l| {
            l.contains("ssl.connection_error") || l.contains("ssl.fail_verify") || l.contains("ssl.no_certificate")
        })
        .filter_map(|l| l.rsplit(": ").next().and_then(|v| v.trim().parse::<u64>().ok()))
        .sum();
    assert!(failed >= 2, "the sidecar saw no refused handshakes:\n{stats}");
    assert_eq!(mesh.send("gateway", "GET", "/orders", Some(&reader), &[]).status, 200);
}

#[test]
fn decision_lines_carry_the_peer_and_use_remote_address_ignores_forwarded_for() {
    let mesh = Mesh::start(
        &example("mesh-identity.json"),
        "logs",
        &[("frontend", FRONTEND), ("gateway", GATEWAY)],
        true,
    );
    let guest = token(json!({"groups": ["guests"], "scope": "orders:read"}));
    // traceparent, not x-request-id: with use_remote_address Envoy regenerates the request
    // ID of a client it does not consider internal.
    let trace1 = "00-11111111111111111111111111111111-1111111111111111-01";
    let trace2 = "00-22222222222222222222222222222222-2222222222222222-01";
    let r = mesh.send("frontend", "POST", "/orders", Some(&guest), &[("traceparent", trace1)]);
    assert_eq!(r.status, 403);
    let r = mesh.send("plain", "GET", "/orders", Some(&guest), &[("traceparent", trace2)]);
    assert_eq!(r.status, 403);
    let mut lines = String::new();
    for _ in 0..150 {
        lines = mesh.sidecar.log();
        if lines.contains(trace1) && lines.contains(trace2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = |id: &str| -> Value {
        let l = lines
            .lines()
            .find(|l| l.contains(id) && l.contains("\"claimguard\":\"decision\""))
            .unwrap_or_else(|| panic!("no decision line for {id}:\n{lines}"));
        serde_json::from_str(&l[l.find('{').expect("json")..]).expect("decision json")
    };
    let over_mtls = line(trace1);
    assert_eq!(over_mtls["peerPrincipal"], json!(FRONTEND), "{over_mtls}");
    assert_eq!(over_mtls["sourceIp"], json!("127.0.0.1"), "{over_mtls}");
    assert_eq!(over_mtls["reason"], json!("policy_denied"), "{over_mtls}");
    let plain = line(trace2);
    assert_eq!(plain["peerPrincipal"], Value::Null, "{plain}");
    assert_eq!(plain["reason"], json!("untrusted_peer"), "{plain}");

    // With use_remote_address: true the address is the TCP peer's: X-Forwarded-For changes
    // nothing.
    let reader = token(json!({"scope": "orders:read"}));
    for (via, path, want) in [("gateway", "/reports/v4", 200), ("gateway6", "/reports/v6", 200)] {
        let r = mesh.send(via, "GET", path, Some(&reader), &[("x-forwarded-for", "192.0.2.1")]);
        assert_eq!(r.status, want, "{via} {path} with a forged x-forwarded-for: {r:?}");
    }
    let r = mesh.send(
        "gateway",
        "GET",
        "/reports/v6",
        Some(&reader),
        &[("x-forwarded-for", "::1")],
    );
    assert_eq!(r.status, 403, "forged ::1: {r:?}");
}

#[test]
fn delegation_agents_act_for_users_and_may_only_read() {
    let mesh = Mesh::start(
        &example("delegation.json"),
        "delegation",
        &[("frontend", FRONTEND), ("agent", AGENT)],
        false,
    );
    let user = |extra: Value| {
        let mut c = json!({"scope": "orders:read orders:write"});
        c.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        token(c)
    };
    let plain_user = user(json!({}));
    let acting = user(json!({"act": {"sub": "agent:assistant"}}));
    let unknown_actor = user(json!({"act": {"sub": "bot:scraper"}}));
    let chain = user(json!({"act": {"sub": "agent:assistant", "act": {"sub": "agent:planner"}}}));
    let consented = user(json!({"may_act": {"sub": "agent:assistant"}}));
    let other_consent = user(json!({"may_act": {"sub": "agent:planner"}}));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, &str, &str, u16)> = vec![
        ("user reads", "plain", "GET", "/orders", &plain_user, 200),
        ("user writes", "plain", "POST", "/orders", &plain_user, 200),
        ("agent acting for the user reads", "plain", "GET", "/orders/1", &acting, 200),
        ("agent acting for the user may not write", "plain", "POST", "/orders", &acting, 403),
        ("unknown actor", "plain", "GET", "/orders", &unknown_actor, 403),
        ("delegation chain", "plain", "GET", "/orders", &chain, 403),
        ("agent workload without the user's consent", "agent", "GET", "/orders", &plain_user, 403),
        ("agent workload, consent for another agent", "agent", "GET", "/orders", &other_consent, 403),
        ("agent workload with may_act naming it", "agent", "GET", "/orders", &consented, 200),
        ("agent workload over IPv6, consented", "agent6", "GET", "/orders", &consented, 200),
        ("frontend needs no may_act", "frontend", "GET", "/orders", &plain_user, 200),
    ];
    for (name, via, method, path, tok, want) in cases {
        let r = mesh.send(via, method, path, Some(tok), &[]);
        assert_eq!(r.status, want, "{name}: {r:?}");
    }
}
