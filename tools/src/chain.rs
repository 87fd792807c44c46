//! The call chain gateway → orders → reports of `istio/overlays`, on loopback, with real mTLS
//! between the hops (`make demo-chain`, tests/envoy_chain.rs, tests/demo_chain.rs).
//!
//! Each hop runs the `pluginConfig` of its shipped overlay, rendered with `kubectl kustomize`,
//! as istiod would hand it to the proxy; only the keys come from a local server (through the
//! cluster the overlay names, as the other Istio tests do) and `decisionHeader` is turned on,
//! so every refusal says why:
//!
//! ```text
//!  client ──plain──▶ gateway (claimguard: ingress-gateway overlay)
//!                      │ mTLS as cluster.local/ns/istio-ingress/sa/shop-istio, /api/… → /…
//!                      ▼
//!                    orders sidecar, inbound (claimguard: orders overlay) ──▶ orders app
//!                                                                               │ forwards the
//!                    orders sidecar, outbound (no claimguard)  ◀────────────────┘ user's token
//!                      │ mTLS as cluster.local/ns/orders/sa/orders, GET /reports/orders/…
//!                      ▼
//!                    reports sidecar, inbound (claimguard: reports overlay) ──▶ reports app
//! ```
//!
//! Each sidecar also has a plain-text inbound listener (Istio's PERMISSIVE mode, what a pod
//! without a client certificate reaches), and a further client Envoy plays the other pods
//! (`x-via: NAME` picks one, see [`POD_ROUTES`]): a `billing` workload, the gateway calling
//! reports directly, plain text, TLS without a certificate, a certificate for orders' ID from
//! another CA. The orders app is [`EchoUpstream::relay`]; the reports app an
//! [`EchoUpstream`] that records what it received.

use super::echo::EchoUpstream;
use super::envoy::{self, wasm_path, DownstreamTls, Envoy, EnvoyOptions, ExtraListener, OutboundListener};
use super::http::{self, Response};
use super::jwks_server::JwksServer;
use super::keys::TestKey;
use super::mesh::{self, ClientTls, Leaf, Pki, Route};
use claimguard::config::Config;
use claimguard::crypto::alg::Alg;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The ingress gateway: Gateway API `Gateway` `shop` in `istio-ingress`, whose pods Istio
/// runs as service account `shop-istio` (NAME-GATEWAYCLASS).
pub const GATEWAY: &str = "cluster.local/ns/istio-ingress/sa/shop-istio";
/// The `orders` workload (namespace orders, service account orders).
pub const ORDERS: &str = "cluster.local/ns/orders/sa/orders";
/// The `reports` workload.
pub const REPORTS: &str = "cluster.local/ns/reports/sa/reports";
/// A workload that is not `orders` (its own namespace and service account).
pub const BILLING: &str = "cluster.local/ns/billing/sa/billing";

/// The clusters istiod would give the gateway and orders for the services they call.
const ORDERS_CLUSTER: &str = "outbound|8080||orders.orders.svc.cluster.local";
const REPORTS_CLUSTER: &str = "outbound|8080||reports.reports.svc.cluster.local";

/// The request headers the orders app passes on to reports: the user's token, and the trace.
pub const FORWARDED_BY_ORDERS: [&str; 2] = ["authorization", "traceparent"];

/// The three hops' plugin configs.
#[derive(Debug, Clone)]
pub struct ChainConfigs {
    pub gateway: Value,
    pub orders: Value,
    pub reports: Value,
}

/// `kubectl kustomize DIR`'s WasmPlugin's `pluginConfig`, for the overlay in `dir`.
pub fn overlay_plugin_config(dir: &Path) -> Result<Value, String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("kubectl kustomize {}: {e} (is kubectl installed?)", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plugins = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| format!("{}: {e}", dir.display()))?;
        if v["kind"] == "WasmPlugin" {
            plugins.push(v["spec"]["pluginConfig"].clone());
        }
    }
    match plugins.as_slice() {
        [one] if one.is_object() => Ok(one.clone()),
        _ => Err(format!(
            "{}: expected one WasmPlugin with a pluginConfig, found {}",
            dir.display(),
            plugins.len()
        )),
    }
}

impl ChainConfigs {
    /// The plugin configs of `istio/overlays/{ingress-gateway,orders,reports}` under `root`.
    pub fn from_overlays(root: &Path) -> Result<ChainConfigs, String> {
        let overlay = |name: &str| overlay_plugin_config(&root.join("istio/overlays").join(name));
        Ok(ChainConfigs {
            gateway: overlay("ingress-gateway")?,
            orders: overlay("orders")?,
            reports: overlay("reports")?,
        })
    }

    fn each_mut(&mut self) -> [&mut Value; 3] {
        [&mut self.gateway, &mut self.orders, &mut self.reports]
    }
}

/// Where a request enters the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The gateway's listener, as a client on the internet.
    Gateway,
    /// orders' outbound listener, as the orders application (its calls leave with orders'
    /// certificate).
    OrdersApp,
    /// Another pod: the client Envoy with `x-via: NAME` (one of [`POD_ROUTES`]).
    Pod(&'static str),
}

/// The other pods the client Envoy plays: (x-via name, what it is).
pub const POD_ROUTES: [(&str, &str); 8] = [
    ("billing-to-reports", "the billing workload (mTLS) calling reports"),
    ("gateway-to-reports", "the gateway (mTLS) calling reports directly"),
    (
        "plain-to-reports",
        "a pod without a certificate (plain text) calling reports",
    ),
    ("nocert-to-reports", "TLS without a client certificate to reports"),
    (
        "rogue-to-reports",
        "a certificate with orders' ID from another CA, to reports",
    ),
    ("billing-to-orders", "the billing workload (mTLS) calling orders"),
    (
        "plain-to-orders",
        "a pod without a certificate (plain text) calling orders",
    ),
    ("gateway-to-orders", "the gateway's identity (mTLS) calling orders"),
];

/// The running chain.
pub struct Chain {
    pub dir: PathBuf,
    pub key: TestKey,
    pub issuer: String,
    pub jwks: JwksServer,
    pub reports_app: EchoUpstream,
    pub orders_app: EchoUpstream,
    pub reports: Envoy,
    pub orders: Envoy,
    pub gateway: Envoy,
    /// The client Envoy that plays the other pods.
    pub pods: Envoy,
    /// orders' outbound listener (what the orders app calls).
    pub orders_outbound: u16,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The JWKS cluster and issuer of a config's first provider (the overlays' keycloak).
fn provider_keys(cfg: &Value) -> Result<(String, String), String> {
    let p = &cfg["providers"][0];
    let cluster = p["jwksCluster"]
        .as_str()
        .ok_or("providers[0].jwksCluster: the chain expects the overlays' remote keys")?;
    let issuer = p["issuer"].as_str().ok_or("providers[0].issuer missing")?;
    Ok((cluster.to_string(), issuer.to_string()))
}

/// The connection manager of listener `name` in a bootstrap.
fn hcm_of<'a>(bootstrap: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    bootstrap["static_resources"]["listeners"]
        .as_array_mut()?
        .iter_mut()
        .find(|l| l["name"] == name)
        .map(|l| &mut l["filter_chains"][0]["filters"][0]["typed_config"])
}

fn cluster_of<'a>(bootstrap: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()?
        .iter_mut()
        .find(|c| c["name"] == name)
}

/// A sidecar: claimguard with `cfg` on a plain-text inbound listener (the main one) and an
/// mTLS one (`inbound-mtls`, client certificates required, Istio's XFCC handling on both), in
/// front of the app on `app_port`; keys through `jwks`; optionally an outbound listener
/// (`outbound`, no claimguard, as `match: [{mode: SERVER}]` leaves it) to `cluster` on
/// 127.0.0.1:`port`, originating mTLS as `tls` says.
fn sidecar(
    dir: &Path,
    cfg: &Value,
    app_port: u16,
    jwks: (&str, u16),
    server: &DownstreamTls,
    outbound: Option<(&str, u16, ClientTls)>,
) -> Result<Envoy, String> {
    let mut o = EnvoyOptions::new(cfg, app_port);
    o.clusters.push((jwks.0.to_string(), jwks.1));
    o.extra_listeners.push(ExtraListener {
        name: "inbound-mtls".into(),
        address: "127.0.0.1".into(),
        tls: Some(DownstreamTls {
            cert_chain: server.cert_chain.clone(),
            private_key: server.private_key.clone(),
            client_ca: server.client_ca.clone(),
        }),
    });
    if let Some((cluster, port, _)) = &outbound {
        o.outbound = Some(OutboundListener {
            name: "outbound".into(),
            cluster: cluster.to_string(),
            port: *port,
            claimguard: false,
        });
    }
    let mut b = envoy::bootstrap(&o, dir);
    for listener in ["ingress", "inbound-mtls"] {
        let hcm = hcm_of(&mut b, listener).ok_or_else(|| format!("no listener {listener}"))?;
        mesh::istio_inbound_xfcc(hcm);
    }
    if let Some((cluster, _, tls)) = &outbound {
        let c = cluster_of(&mut b, cluster).ok_or_else(|| format!("no cluster {cluster}"))?;
        c["transport_socket"] = tls.transport_socket();
    }
    o.raw_bootstrap = Some(b);
    Envoy::start(&o, Duration::from_secs(60)).map_err(|e| e.to_string())
}

/// The gateway: claimguard with `cfg` on a plain-text listener on 127.0.0.1:`port` (0: any),
/// `/api/…` routed to orders as `/…` (an HTTPRoute's URLRewrite) over mTLS as `tls` says.
fn gateway(dir: &Path, cfg: &Value, port: u16, jwks: (&str, u16), orders: (u16, ClientTls)) -> Result<Envoy, String> {
    let mut o = EnvoyOptions::new(cfg, orders.0);
    o.clusters.push((jwks.0.to_string(), jwks.1));
    o.listener_port = port;
    let mut b = envoy::bootstrap(&o, dir);
    let hcm = hcm_of(&mut b, "ingress").ok_or("no gateway listener")?;
    hcm["route_config"] = json!({"virtual_hosts": [{
        "name": "shop", "domains": ["*"],
        "routes": [
            {"match": {"prefix": "/api/"}, "route": {"cluster": ORDERS_CLUSTER, "prefix_rewrite": "/"}},
            {"match": {"prefix": "/"}, "route": {"cluster": ORDERS_CLUSTER}}
        ]
    }]});
    let c = cluster_of(&mut b, "app").ok_or("no app cluster")?;
    c["name"] = json!(ORDERS_CLUSTER);
    c["load_assignment"]["cluster_name"] = json!(ORDERS_CLUSTER);
    c["transport_socket"] = orders.1.transport_socket();
    o.raw_bootstrap = Some(b);
    Envoy::start(&o, Duration::from_secs(60)).map_err(|e| e.to_string())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts the chain with `configs` (each gets `decisionHeader: true`) in `dir` (certificates,
/// keys, the tokens of [`token_claims`] and the plugin configs as run), the gateway on
/// 127.0.0.1:`gateway_port` (0: any free port).
pub fn start(dir: &Path, mut configs: ChainConfigs, gateway_port: u16) -> Result<Chain, String> {
    let wasm = wasm_path();
    if !wasm.exists() {
        return Err(format!("no filter at {} (run `make build`)", wasm.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (jwks_cluster, issuer) = provider_keys(&configs.gateway)?;
    for cfg in configs.each_mut() {
        if provider_keys(cfg)? != (jwks_cluster.clone(), issuer.clone()) {
            return Err("the chain's hops must share one issuer and its keys".into());
        }
        cfg["decisionHeader"] = json!(true);
        Config::from_json(cfg.to_string().as_bytes()).map_err(|e| format!("plugin config: {e}"))?;
    }
    for (name, cfg) in [
        ("gateway", &configs.gateway),
        ("orders", &configs.orders),
        ("reports", &configs.reports),
    ] {
        write(
            &dir.join(format!("{name}-plugin-config.json")),
            &serde_json::to_string_pretty(cfg).unwrap_or_default(),
        )?;
    }

    // The identity provider: its keys, served where the overlays' jwksCluster points.
    let key = TestKey::rsa(Alg::RS256, "shop-demo-1");
    let jwks = JwksServer::start(key.jwks()).map_err(|e| format!("JWKS server: {e}"))?;
    let jwks_at = (jwks_cluster.as_str(), jwks.port);
    for (file, claims) in token_claims() {
        write(&dir.join(file), &sign(&key, &issuer, claims))?;
    }

    // The mesh CA and the workloads' certificates; a CA nobody trusts, for the rogue one.
    let pki = Pki::new(&dir.join("mesh"), "claimguard demo mesh CA")?;
    let rogue = Pki::new(&dir.join("rogue"), "rogue CA")?;
    let leaf = |file: &str, principal: &str, dns: Option<&str>| pki.leaf(file, &mesh::spiffe_id(principal), dns);
    let gateway_cert = leaf("gateway", GATEWAY, None)?;
    let orders_cert = leaf("orders", ORDERS, Some("orders.orders.svc.cluster.local"))?;
    let reports_cert = leaf("reports", REPORTS, Some("reports.reports.svc.cluster.local"))?;
    let billing_cert = leaf("billing", BILLING, None)?;
    let rogue_orders = rogue.leaf("rogue-orders", &mesh::spiffe_id(ORDERS), None)?;
    let server = |leaf: &Leaf| DownstreamTls {
        cert_chain: leaf.cert.clone(),
        private_key: leaf.key.clone(),
        client_ca: pki.ca_file(),
    };
    let to = |sni: &str, cert: Option<&Leaf>| ClientTls {
        ca: pki.ca_file(),
        cert: cert.cloned(),
        sni: sni.to_string(),
    };
    let to_orders = |cert: Option<&Leaf>| to("orders.orders.svc.cluster.local", cert);
    let to_reports = |cert: Option<&Leaf>| to("reports.reports.svc.cluster.local", cert);

    let reports_app = EchoUpstream::start(0).map_err(|e| format!("reports app: {e}"))?;
    let reports = sidecar(
        dir,
        &configs.reports,
        reports_app.port,
        jwks_at,
        &server(&reports_cert),
        None,
    )
    .map_err(|e| format!("reports sidecar: {e}"))?;
    let reports_mtls = reports
        .listener_port_named("inbound-mtls")
        .ok_or("reports: no mTLS listener")?;

    // The orders app calls reports through its sidecar's outbound listener, whose port Envoy
    // picks when it starts: the app learns it then.
    let orders_app =
        EchoUpstream::relay("orders", 0, "/reports", &FORWARDED_BY_ORDERS).map_err(|e| format!("orders app: {e}"))?;
    let orders = sidecar(
        dir,
        &configs.orders,
        orders_app.port,
        jwks_at,
        &server(&orders_cert),
        Some((REPORTS_CLUSTER, reports_mtls, to_reports(Some(&orders_cert)))),
    )
    .map_err(|e| format!("orders sidecar: {e}"))?;
    let orders_outbound = orders
        .listener_port_named("outbound")
        .ok_or("orders: no outbound listener")?;
    orders_app.set_relay_port(orders_outbound);
    let orders_mtls = orders
        .listener_port_named("inbound-mtls")
        .ok_or("orders: no mTLS listener")?;

    let gateway = gateway(
        dir,
        &configs.gateway,
        gateway_port,
        jwks_at,
        (orders_mtls, to_orders(Some(&gateway_cert))),
    )
    .map_err(|e| format!("gateway: {e}"))?;

    let route = |via: &str, port: u16, tls: Option<ClientTls>| Route {
        via: via.to_string(),
        address: "127.0.0.1".into(),
        port,
        tls,
    };
    let routes = vec![
        route(
            "billing-to-reports",
            reports_mtls,
            Some(to_reports(Some(&billing_cert))),
        ),
        route(
            "gateway-to-reports",
            reports_mtls,
            Some(to_reports(Some(&gateway_cert))),
        ),
        route("plain-to-reports", reports.port, None),
        route("nocert-to-reports", reports_mtls, Some(to_reports(None))),
        route("rogue-to-reports", reports_mtls, Some(to_reports(Some(&rogue_orders)))),
        route("billing-to-orders", orders_mtls, Some(to_orders(Some(&billing_cert)))),
        route("plain-to-orders", orders.port, None),
        route("gateway-to-orders", orders_mtls, Some(to_orders(Some(&gateway_cert)))),
    ];
    let mut pods_opts = EnvoyOptions::new(&json!({}), 0);
    pods_opts.raw_bootstrap = Some(mesh::client_bootstrap(&routes));
    let pods = Envoy::start(&pods_opts, Duration::from_secs(60)).map_err(|e| format!("other pods: {e}"))?;
    Ok(Chain {
        dir: dir.to_path_buf(),
        key,
        issuer,
        jwks,
        reports_app,
        orders_app,
        reports,
        orders,
        gateway,
        pods,
        orders_outbound,
    })
}

/// The demo's tokens, written to the chain's directory: (file, claims beyond `iss`, `iat`
/// and `exp`). alice may read orders and reports; bob may read orders only; the third is
/// alice's, but for another API of the same identity provider.
pub fn token_claims() -> Vec<(&'static str, Value)> {
    vec![
        (
            "alice.jwt",
            json!({"sub": "alice", "aud": "shop", "scope": "orders:read", "groups": ["reporting"]}),
        ),
        (
            "bob.jwt",
            json!({"sub": "bob", "aud": "shop", "scope": "orders:read", "groups": ["sales"]}),
        ),
        (
            "other-api.jwt",
            json!({"sub": "alice", "aud": "billing-api", "scope": "orders:read", "groups": ["reporting"]}),
        ),
    ]
}

fn sign(key: &TestKey, issuer: &str, claims: Value) -> String {
    let now = now();
    let mut c = json!({"iss": issuer, "iat": now, "exp": now + 3600});
    if let Value::Object(extra) = claims {
        for (k, v) in extra {
            c[k] = v;
        }
    }
    key.sign(&c)
}

impl Chain {
    /// A token signed by the chain's identity provider: `iss`, `iat` and `exp` (an hour) set,
    /// then `claims`.
    pub fn token(&self, claims: Value) -> String {
        sign(&self.key, &self.issuer, claims)
    }

    /// One of [`token_claims`]' tokens, as written in the chain's directory.
    pub fn saved_token(&self, file: &str) -> Result<String, String> {
        std::fs::read_to_string(self.dir.join(file)).map_err(|e| format!("{file}: {e}"))
    }

    /// The port a request for `entry` goes to, and the headers that choose the pod.
    pub fn entry_port(&self, entry: Entry) -> u16 {
        match entry {
            Entry::Gateway => self.gateway.port,
            Entry::OrdersApp => self.orders_outbound,
            Entry::Pod(_) => self.pods.port,
        }
    }

    /// Sends `method path` into the chain at `entry`, with `token` as a bearer token and the
    /// `extra` headers.
    pub fn send(
        &self,
        entry: Entry,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<Response, String> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Entry::Pod(via) = entry {
            headers.push(("x-via", via));
        }
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        headers.extend_from_slice(extra);
        http::request(self.entry_port(entry), method, path, &headers)
    }

    /// The claimguard Envoys' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- gateway ---\n{}\n--- orders ---\n{}\n--- reports ---\n{}",
            self.gateway.log(),
            self.orders.log(),
            self.reports.log()
        )
    }
}

/// Why a request was refused: claimguard's `x-claimguard-reason` on the answer, or, when the
/// orders app relayed a refusal from reports, the one reports gave it.
pub fn reason(r: &Response) -> Option<String> {
    r.header("x-claimguard-reason")
        .map(str::to_owned)
        .or_else(|| r.json()["called"]["reason"].as_str().map(str::to_owned))
}

/// The realm of a 401's `WWW-Authenticate` (which hop refused: shop, orders, reports).
pub fn realm(r: &Response) -> Option<String> {
    let challenge = r.header("www-authenticate")?;
    let rest = challenge.split("realm=\"").nth(1)?;
    rest.split('"').next().map(str::to_owned)
}

/// One request `make demo-chain` sends (and tests/demo_chain.rs checks).
pub struct ChainExample {
    pub what: &'static str,
    pub entry: Entry,
    pub method: &'static str,
    pub path: &'static str,
    /// One of [`token_claims`]' files.
    pub token: &'static str,
    pub want: u16,
    /// `x-claimguard-reason` (or the relayed one); None: allowed, or refused before any filter.
    pub reason: Option<&'static str>,
    /// For a 401: the realm of the hop that refused.
    pub realm: Option<&'static str>,
    /// Whether the orders app and the reports app saw the request.
    pub reaches: (bool, bool),
    /// Who refuses it (printed; the realm and `reaches` check it).
    pub refused_by: &'static str,
}

#[rustfmt::skip]
pub fn examples() -> Vec<ChainExample> {
    let ex = |what, entry, method, path, token, want, reason, realm, reaches, refused_by| ChainExample {
        what,
        entry,
        method,
        path,
        token,
        want,
        reason,
        realm,
        reaches,
        refused_by,
    };
    let (gw, app) = (Entry::Gateway, Entry::OrdersApp);
    vec![
        ex("alice reads order 42 through the gateway: every hop verifies her token, reports gets it from orders",
           gw, "GET", "/api/orders/42", "alice.jwt", 200, None, None, (true, true), ""),
        ex("bob is not in group reporting: orders serves him, reports refuses the call orders makes for him",
           gw, "GET", "/api/orders/42", "bob.jwt", 403, Some("policy_denied"), None, (true, false), "reports (its rule; orders relays the 403)"),
        ex("orders may only read reports: a POST with alice's token is refused by the rule",
           app, "POST", "/reports/orders/42", "alice.jwt", 403, Some("policy_denied"), None, (false, false), "reports (its rule)"),
        ex("replay: the billing workload sends alice's token to reports (mTLS, not orders)",
           Entry::Pod("billing-to-reports"), "GET", "/reports/orders/42", "alice.jwt", 403, Some("untrusted_peer"), None, (false, false), "reports (trustedPrincipals)"),
        ex("replay: the gateway skips orders and calls reports with alice's token",
           Entry::Pod("gateway-to-reports"), "GET", "/reports/orders/42", "alice.jwt", 403, Some("untrusted_peer"), None, (false, false), "reports (trustedPrincipals)"),
        ex("replay: a pod without a certificate sends alice's token to reports in plain text",
           Entry::Pod("plain-to-reports"), "GET", "/reports/orders/42", "alice.jwt", 403, Some("untrusted_peer"), None, (false, false), "reports (trustedPrincipals: no mTLS, no principal)"),
        ex("replay: TLS without a client certificate: reports' listener refuses the handshake (the client proxy answers 503)",
           Entry::Pod("nocert-to-reports"), "GET", "/reports/orders/42", "alice.jwt", 503, None, None, (false, false), "reports' TLS listener (no filter involved)"),
        ex("replay: a certificate for orders' ID from another CA: the handshake fails (503)",
           Entry::Pod("rogue-to-reports"), "GET", "/reports/orders/42", "alice.jwt", 503, None, None, (false, false), "reports' TLS listener (no filter involved)"),
        ex("replay: the billing workload sends alice's token to orders",
           Entry::Pod("billing-to-orders"), "GET", "/orders/42", "alice.jwt", 403, Some("untrusted_peer"), None, (false, false), "orders (trustedPrincipals)"),
        ex("replay: plain text to orders with alice's token",
           Entry::Pod("plain-to-orders"), "GET", "/orders/42", "alice.jwt", 403, Some("untrusted_peer"), None, (false, false), "orders (trustedPrincipals)"),
        ex("a token for another API (aud billing-api) at the gateway",
           gw, "GET", "/api/orders/42", "other-api.jwt", 401, Some("wrong_audience"), Some("shop"), (false, false), "the gateway (audiences)"),
        ex("the same token at orders, from the gateway's identity",
           Entry::Pod("gateway-to-orders"), "GET", "/orders/42", "other-api.jwt", 401, Some("wrong_audience"), Some("orders"), (false, false), "orders (audiences)"),
        ex("the same token at reports, from orders",
           app, "GET", "/reports/orders/42", "other-api.jwt", 401, Some("wrong_audience"), Some("reports"), (false, false), "reports (audiences)"),
    ]
}

impl Chain {
    /// Sends every example and prints it (with the curl command that repeats it) and what
    /// came back; returns how many answers were not the documented ones.
    pub fn run_examples(&self) -> Result<usize, String> {
        let mut failures = 0;
        for ex in examples() {
            let token = self.saved_token(ex.token)?;
            let (orders_before, reports_before) = (self.orders_app.served(), self.reports_app.served());
            let r = self.send(ex.entry, ex.method, ex.path, Some(&token), &[])?;
            let reaches = (
                self.orders_app.served() > orders_before,
                self.reports_app.served() > reports_before,
            );
            let got_reason = reason(&r);
            let ok = r.status == ex.want
                && got_reason.as_deref() == ex.reason
                && (ex.realm.is_none() || realm(&r).as_deref() == ex.realm)
                && reaches == ex.reaches;
            failures += usize::from(!ok);
            println!("# {}", ex.what);
            println!("{}", self.curl(&ex));
            print!("  -> {}", r.status);
            if let Some(why) = &got_reason {
                print!(" {why}");
            }
            if let Some(realm) = realm(&r) {
                print!(" (realm {realm})");
            }
            let apps = match reaches {
                (true, true) => "orders and reports",
                (true, false) => "orders only",
                (false, true) => "reports only",
                (false, false) => "neither",
            };
            println!("; apps reached: {apps}");
            if r.status != 200 && !ex.refused_by.is_empty() {
                println!("  refused by {}", ex.refused_by);
            }
            if r.status == 200 {
                for line in identity_lines(&r) {
                    println!("  {line}");
                }
            }
            println!(
                "  {}\n",
                if ok {
                    "as expected".to_string()
                } else {
                    format!(
                        "UNEXPECTED: wanted {} {:?}, reaching {:?}",
                        ex.want, ex.reason, ex.reaches
                    )
                }
            );
        }
        Ok(failures)
    }

    /// The curl command that repeats an example.
    pub fn curl(&self, ex: &ChainExample) -> String {
        let mut curl = format!(
            "curl -i -X {} http://127.0.0.1:{}{}",
            ex.method,
            self.entry_port(ex.entry),
            ex.path
        );
        if let Entry::Pod(via) = ex.entry {
            curl.push_str(&format!(" -H 'x-via: {via}'"));
        }
        curl.push_str(&format!(
            " -H \"Authorization: Bearer $(cat {}/{})\"",
            self.dir.display(),
            ex.token
        ));
        curl
    }
}

/// What each app was handed, from an allowed request's answer (the orders app's account of
/// its request and of its call to reports, whose app echoed its own).
pub fn identity_lines(r: &Response) -> Vec<String> {
    let v = r.json();
    let describe = |who: &str, headers: &Value| {
        let h = |name: &str| headers[name].as_str().unwrap_or("-").to_string();
        let caller = headers["x-forwarded-client-cert"]
            .as_str()
            .and_then(mesh::xfcc_last_uri)
            .unwrap_or("-")
            .to_string();
        let token = if headers["authorization"].is_string() {
            "the token"
        } else {
            "no token"
        };
        format!(
            "{who} app got x-user-sub: {}, x-user-scope: {}, x-user-groups: {}, {token}; caller (XFCC URI): {caller}",
            h("x-user-sub"),
            h("x-user-scope"),
            h("x-user-groups")
        )
    };
    let mut lines = Vec::new();
    if v["app"] == "orders" {
        lines.push(describe("orders", &v["received"]["headers"]));
        lines.push(describe("reports", &v["called"]["body"]["headers"]));
    } else if v["headers"].is_object() {
        lines.push(describe("the", &v["headers"]));
    }
    lines
}
