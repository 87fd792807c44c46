//! A user's token forwarded along a call chain, gateway → orders → reports, in real Envoys
//! with real mTLS between the hops (docs/istio.md, "Multi-hop").
//!
//! Each hop runs the plugin config of its shipped overlay (`istio/overlays/ingress-gateway`,
//! `orders`, `reports`, rendered with `kubectl kustomize`; keys from a local server through the
//! overlays' jwksCluster, `decisionHeader` on so each refusal names its reason). The hops
//! present and require SPIFFE certificates from one test CA (rcgen), the way istio-agent's
//! certificates work: the gateway calls orders as `…/ns/istio-ingress/sa/shop-istio`, the orders
//! app forwards the user's token through its sidecar's outbound listener, which calls reports as
//! `…/ns/orders/sa/orders`. A client Envoy plays the pods that are not orders. The layout is
//! `claimguard_tools::chain`'s, which `make demo-chain` runs too; the certificates and client
//! Envoys are those of tests/envoy_mtls.rs (`claimguard_tools::mesh`).

use claimguard_tools::chain::{self, Chain, ChainConfigs, Entry};
use claimguard_tools::envoy::repo_root;
use claimguard_tools::http::Response;
use claimguard_tools::mesh::{spiffe_id, xfcc_last_uri};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The chain and its directory, removed when the test ends (the Envoys stop with `chain`).
struct Running {
    chain: Chain,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(tag: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("claimguard-chain-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let configs = ChainConfigs::from_overlays(&repo_root()).unwrap_or_else(|e| panic!("{e}"));
    let chain = chain::start(&dir, configs, 0).unwrap_or_else(|e| panic!("{e}"));
    Running { chain, dir }
}

impl Running {
    fn send(&self, entry: Entry, method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
        self.chain
            .send(entry, method, path, token, extra)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.chain.logs()))
    }

    fn alice(&self) -> String {
        self.chain
            .token(json!({"sub": "alice", "aud": "shop", "scope": "orders:read", "groups": ["reporting"]}))
    }
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers[name].as_str()
}

#[test]
fn the_users_token_crosses_the_chain_and_each_app_learns_the_user_and_the_caller() {
    let run = start("pass");
    let chain = &run.chain;
    let alice = run.alice();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // A forged identity header on the way in: the hops set their own.
    let r = run.send(
        Entry::Gateway,
        "GET",
        "/api/orders/42",
        Some(&alice),
        &[("traceparent", trace), ("x-user-sub", "mallory")],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", chain.logs());
    assert_eq!(r.header("x-claimguard-reason"), None);

    // The orders app: alice, her scope, her token (to forward), called by the gateway.
    let orders = chain.orders_app.last_received().expect("orders' app was called");
    assert_eq!(
        (orders.method.as_str(), orders.raw_path.as_str()),
        ("GET", "/orders/42")
    );
    assert_eq!(orders.header("x-user-sub"), Some("alice"), "{orders:?}");
    assert_eq!(orders.header("x-user-scope"), Some("orders:read"), "{orders:?}");
    assert_eq!(orders.header("x-user-groups"), None, "orders does not hand out groups");
    assert_eq!(
        orders.header("authorization"),
        Some(format!("Bearer {alice}").as_str()),
        "forwardOriginalToken: the app gets the token it forwards"
    );
    let caller = orders.header("x-forwarded-client-cert").and_then(xfcc_last_uri);
    assert_eq!(caller, Some(spiffe_id(chain::GATEWAY).as_str()), "{orders:?}");

    // The reports app: the same user, called by orders; the token consumed at the last hop.
    let reports = chain.reports_app.last_received().expect("reports' app was called");
    assert_eq!(
        (reports.method.as_str(), reports.raw_path.as_str()),
        ("GET", "/reports/orders/42")
    );
    assert_eq!(reports.header("x-user-sub"), Some("alice"), "{reports:?}");
    assert_eq!(reports.header("x-user-groups"), Some("reporting"), "{reports:?}");
    assert_eq!(reports.header("x-user-scope"), None, "{reports:?}");
    assert_eq!(reports.header("authorization"), None, "{reports:?}");
    assert_eq!(reports.header("traceparent"), Some(trace), "{reports:?}");
    let xfcc = reports.header("x-forwarded-client-cert").unwrap_or_default();
    assert_eq!(xfcc_last_uri(xfcc), Some(spiffe_id(chain::ORDERS).as_str()), "{xfcc}");
    assert!(
        !xfcc.contains("shop-istio"),
        "orders' outbound listener sanitizes XFCC: {xfcc}"
    );
    assert_eq!((chain.orders_app.served(), chain.reports_app.served()), (1, 1));

    // The orders app's account of the same request matches what the apps recorded.
    let body = r.json();
    assert_eq!(header(&body["received"]["headers"], "x-user-sub"), Some("alice"));
    assert_eq!(body["called"]["status"], 200);
    assert_eq!(
        header(&body["called"]["body"]["headers"], "x-user-groups"),
        Some("reporting")
    );

    // Every hop verified the token and admitted it with its own rule.
    for (hop, envoy, rule) in [
        ("gateway", &chain.gateway, "api"),
        ("orders", &chain.orders, "orders-read"),
        ("reports", &chain.reports, "reporting-group"),
    ] {
        let series = format!(
            r#"claimguard_requests_total{{outcome="allowed",reason="none",rule="{rule}",provider="keycloak"}}"#
        );
        let value = |stats: &str| {
            stats.lines().find_map(|l| {
                l.strip_prefix(series.as_str())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        };
        let stats = envoy.admin_until("stats/prometheus", |p| value(p) == Some(1));
        assert_eq!(value(&stats), Some(1), "{hop}: {series}");
    }
}

#[test]
fn replays_and_wrong_audiences_are_refused_at_the_hop_that_sees_them() {
    let run = start("refused");
    let chain = &run.chain;
    let alice = run.alice();
    let bob = chain.token(json!({"sub": "bob", "aud": "shop", "scope": "orders:read", "groups": ["sales"]}));
    let other_api =
        chain.token(json!({"sub": "alice", "aud": "billing-api", "scope": "orders:read", "groups": ["reporting"]}));
    struct Case<'a> {
        name: &'a str,
        entry: Entry,
        method: &'a str,
        path: &'a str,
        token: Option<&'a str>,
        status: u16,
        /// `x-claimguard-reason` on the answer the caller gets.
        reason: Option<&'a str>,
        /// For a 401, the realm (which hop refused: shop, orders or reports).
        realm: Option<&'a str>,
        /// Whether the orders app and the reports app saw the request.
        reaches: (bool, bool),
    }
    let case = |name, entry, method, path, token, status, reason, realm, reaches| Case {
        name,
        entry,
        method,
        path,
        token,
        status,
        reason,
        realm,
        reaches,
    };
    let (gw, app) = (Entry::Gateway, Entry::OrdersApp);
    let (a, b, o) = (Some(alice.as_str()), Some(bob.as_str()), Some(other_api.as_str()));
    let none = (false, false);
    #[rustfmt::skip]
    let cases = vec![
        // Replays: a valid user token, from a peer that is not the hop before.
        case("billing pod replays alice's token to reports over mTLS", Entry::Pod("billing-to-reports"),
             "GET", "/reports/orders/42", a, 403, Some("untrusted_peer"), None, none),
        case("the gateway skips orders and calls reports", Entry::Pod("gateway-to-reports"),
             "GET", "/reports/orders/42", a, 403, Some("untrusted_peer"), None, none),
        case("plain text, no client certificate, replays to reports", Entry::Pod("plain-to-reports"),
             "GET", "/reports/orders/42", a, 403, Some("untrusted_peer"), None, none),
        case("billing pod replays alice's token to orders", Entry::Pod("billing-to-orders"),
             "GET", "/orders/42", a, 403, Some("untrusted_peer"), None, none),
        case("plain text replays alice's token to orders", Entry::Pod("plain-to-orders"),
             "GET", "/orders/42", a, 403, Some("untrusted_peer"), None, none),
        // Never reach a filter: the mTLS listener refuses the handshake, the client's proxy
        // answers 503 itself.
        case("TLS without a client certificate to reports", Entry::Pod("nocert-to-reports"),
             "GET", "/reports/orders/42", a, 503, None, None, none),
        case("orders' SPIFFE ID from another CA", Entry::Pod("rogue-to-reports"),
             "GET", "/reports/orders/42", a, 503, None, None, none),
        // The audience, hop by hop: a token of the same IdP for another API.
        case("wrong audience at the gateway", gw,
             "GET", "/api/orders/42", o, 401, Some("wrong_audience"), Some("shop"), none),
        case("wrong audience at orders (from the gateway)", Entry::Pod("gateway-to-orders"),
             "GET", "/orders/42", o, 401, Some("wrong_audience"), Some("orders"), none),
        case("wrong audience at reports (from orders)", app,
             "GET", "/reports/orders/42", o, 401, Some("wrong_audience"), Some("reports"), none),
        case("no token from orders to reports", app,
             "GET", "/reports/orders/42", None, 401, Some("missing_token"), Some("reports"), none),
        // The trusted caller still gets only what the rules give it.
        case("orders POSTs to reports: the rule lets orders read only", app,
             "POST", "/reports/orders/42", a, 403, Some("policy_denied"), None, none),
        // The refusal happens at the last hop; the orders app passes its status on (the
        // reason is in its body, asserted below).
        case("bob is not in group reporting: reports refuses orders' call for him", gw,
             "GET", "/api/orders/42", b, 403, None, None, (true, false)),
        // The same peers with a request they may make, so the refusals above are the
        // peer's and the audience's, not the route's.
        case("the gateway's identity at orders with alice's token", Entry::Pod("gateway-to-orders"),
             "GET", "/orders/42", a, 200, None, None, (true, true)),
        case("orders' outbound listener with alice's token", app,
             "GET", "/reports/orders/42", a, 200, None, None, (false, true)),
    ];
    for c in &cases {
        let (orders_before, reports_before) = (chain.orders_app.served(), chain.reports_app.served());
        let r = run.send(c.entry, c.method, c.path, c.token, &[]);
        let why = || format!("{}: {r:?}\n{}", c.name, chain.logs());
        assert_eq!(r.status, c.status, "{}", why());
        assert_eq!(r.header("x-claimguard-reason"), c.reason, "{}", why());
        if let Some(realm) = c.realm {
            assert_eq!(chain::realm(&r).as_deref(), Some(realm), "{}", why());
        }
        let reaches = (
            chain.orders_app.served() > orders_before,
            chain.reports_app.served() > reports_before,
        );
        assert_eq!(reaches, c.reaches, "{}: which apps saw it", c.name);
    }

    // bob's refusal, as the orders app relayed it: reports' 403 and its reason.
    let r = run.send(Entry::Gateway, "GET", "/api/orders/42", b, &[]);
    let body = r.json();
    assert_eq!(body["called"]["status"], 403, "{body}");
    assert_eq!(body["called"]["reason"], "policy_denied", "{body}");
    assert_eq!(chain::reason(&r).as_deref(), Some("policy_denied"));

    // The replay is in reports' decision log with the peer that tried it.
    let trace = "00-22222222222222222222222222222222-2222222222222222-01";
    let r = run.send(
        Entry::Pod("billing-to-reports"),
        "GET",
        "/reports/orders/42",
        a,
        &[("traceparent", trace)],
    );
    assert_eq!(r.status, 403);
    let mut log = String::new();
    for _ in 0..100 {
        log = chain.reports.log();
        if log.contains(trace) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = log
        .lines()
        .find(|l| l.contains(trace) && l.contains("\"claimguard\":\"decision\""))
        .unwrap_or_else(|| panic!("no decision line for the replay:\n{log}"));
    let decision: Value = serde_json::from_str(&line[line.find('{').unwrap_or(0)..]).expect("decision JSON");
    assert_eq!(decision["reason"], "untrusted_peer", "{decision}");
    assert_eq!(decision["status"], 403, "{decision}");
    assert_eq!(
        decision["peerPrincipal"],
        json!(spiffe_id(chain::BILLING)),
        "{decision}"
    );
    assert_eq!(decision["subject"], "alice", "{decision}");
}
