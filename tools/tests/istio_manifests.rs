//! What we ship for Istio is what we test: every `istio/overlays/*` (and `examples/istio/*`)
//! is rendered with `kubectl kustomize`, as a WasmPlugin and as a TrafficExtension
//! (`istio/components/traffic-extension`), validated against Istio's CRD schemas
//! (tests/istio-schema) and claimguard's own config code, and run in a real Envoy configured
//! the way istiod configures a sidecar from it: an inbound listener with the filter and an
//! outbound listener without it (`match: [{mode: SERVER}]`), or a gateway listener with it.
//! The stats-tags ConfigMap is run the way istio-agent hands it to Envoy, over Istio's own
//! stats configuration. The pinned image digest is checked against the module `make build`
//! produced, and the OCI image makes a round trip through a local registry.
//!
//! Needs `kubectl`, `node` with `make istio-schema`, and for the registry test `skopeo` and
//! `docker-registry` (`make oci-tools`); `make test` provides them all.

#[path = "../../tests/common/mod.rs"]
mod common;

use claimguard::config::Config;
use claimguard::crypto::alg::Alg;
use claimguard::keys::remote::HttpUrl;
use claimguard_tools::echo::{EchoUpstream, Received};
use claimguard_tools::envoy::{wasm_path, Envoy, EnvoyOptions, OutboundListener};
use claimguard_tools::envoy::{DownstreamTls, ExtraListener};
use claimguard_tools::http::{self, Response};
use claimguard_tools::jwks_server::JwksServer;
use claimguard_tools::keys::TestKey;
use claimguard_tools::mesh::{self, ClientTls, Pki, Route};
use claimguard_tools::oci::{self, read_layout, WasmImage, MODULE_SHA256_ANNOTATION};
use common::{keys, now, prom_value};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("claimguard-istio-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn overlays() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("istio/overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The overlays, then the Istio examples (`examples/istio/*`: Cognito, ALB), which every
/// generic check covers too. Examples are named by their path.
fn manifests() -> Vec<String> {
    let mut names = overlays();
    let mut examples: Vec<String> = fs::read_dir(root().join("examples/istio"))
        .unwrap()
        .map(|e| format!("examples/istio/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    examples.sort();
    names.extend(examples);
    names
}

/// The directory of an overlay (`NAME`) or example (`examples/istio/NAME`).
fn manifest_dir(overlay: &str) -> PathBuf {
    match overlay.strip_prefix("examples/") {
        Some(_) => root().join(overlay),
        None => root().join("istio/overlays").join(overlay),
    }
}

fn kustomize_dir(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (on the machine image) must be installed");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl kustomize istio/overlays/NAME` (or `examples/istio/NAME`), as YAML text.
fn kustomize(overlay: &str) -> String {
    kustomize_dir(&manifest_dir(overlay))
}

/// `path` relative to `from` (kustomize takes no absolute paths): up to `/`, then down.
fn relative(from: &Path, path: &Path) -> String {
    let up = from.components().count().saturating_sub(1);
    let down = path.strip_prefix("/").unwrap_or(path);
    format!("{}{}", "../".repeat(up), down.display())
}

/// An overlay or example with more of `istio/components/*` on top (e.g. `traffic-extension`,
/// `fail-reload`), the way a user adds them: a kustomization whose resource is the overlay.
fn kustomize_with(overlay: &str, components: &[&str]) -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = scratch(&format!("wrap-{n}"));
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
        relative(&dir, &manifest_dir(overlay))
    );
    for c in components {
        let component = root().join("istio/components").join(c);
        text.push_str(&format!("  - {}\n", relative(&dir, &component)));
    }
    fs::write(dir.join("kustomization.yaml"), text).unwrap();
    let yaml = kustomize_dir(&dir);
    fs::remove_dir_all(&dir).unwrap();
    yaml
}

/// An overlay or example rendered as a TrafficExtension.
fn render_traffic_extension(overlay: &str) -> Vec<Value> {
    parse_docs(&kustomize_with(overlay, &["traffic-extension"]))
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(overlay: &str) -> Vec<Value> {
    parse_docs(&kustomize(overlay))
}

fn wasm_plugin(docs: &[Value]) -> &Value {
    let plugins: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "WasmPlugin").collect();
    assert_eq!(plugins.len(), 1, "one WasmPlugin per overlay");
    plugins[0]
}

/// The claimguard extension of a rendering: its WasmPlugin, or its TrafficExtension.
fn extension(docs: &[Value]) -> &Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "WasmPlugin" || d["kind"] == "TrafficExtension")
        .collect();
    assert_eq!(found.len(), 1, "one WasmPlugin or TrafficExtension per rendering");
    found[0]
}

/// The Wasm fields (url, pluginName, failStrategy, pluginConfig, ...): `spec` in a
/// WasmPlugin, `spec.wasm` in a TrafficExtension.
fn wasm_fields(ext: &Value) -> &Value {
    match ext["kind"].as_str() {
        Some("TrafficExtension") => &ext["spec"]["wasm"],
        _ => &ext["spec"],
    }
}

/// The plugin config exactly as istiod hands it to Envoy: `pluginConfig` as JSON text.
fn plugin_config_text(ext: &Value) -> String {
    serde_json::to_string(&wasm_fields(ext)["pluginConfig"]).unwrap()
}

/// A gateway's plugin (targetRefs to a Gateway) rather than a sidecar's (selector).
fn is_gateway(ext: &Value) -> bool {
    ext["spec"]["targetRefs"]
        .as_array()
        .is_some_and(|t| t.iter().any(|r| r["kind"] == "Gateway"))
}

/// Istio's listener classes (pilot/pkg/networking ListenerClass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerClass {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

/// Whether istiod puts the plugin on a listener of this class: its `match` selectors against
/// the class's mode, as pilot/pkg/model/extensions.go does (matchTrafficExtensionSelectors,
/// matchMode, workloadModeForListenerClass: sidecar inbound is SERVER, sidecar outbound and
/// every gateway listener CLIENT; no `match`, UNDEFINED or CLIENT_AND_SERVER select all).
/// The same code runs for WasmPlugins, which Istio 1.30 translates into TrafficExtensions.
fn istiod_attaches(ext: &Value, class: ListenerClass) -> bool {
    let Some(selectors) = ext["spec"]["match"].as_array().filter(|m| !m.is_empty()) else {
        return true;
    };
    let listener_mode = match class {
        ListenerClass::SidecarInbound => "SERVER",
        ListenerClass::SidecarOutbound | ListenerClass::Gateway => "CLIENT",
    };
    selectors.iter().any(|m| {
        assert!(m.get("ports").is_none(), "port selectors are not modelled: {m}");
        let mode = m["mode"].as_str().unwrap_or("UNDEFINED");
        matches!(mode, "UNDEFINED" | "CLIENT_AND_SERVER") || mode == listener_mode
    })
}

/// Runs tests/istio-schema/validate.mjs on `files`: (success, output).
fn schema_validate(files: &[PathBuf]) -> (bool, String) {
    let dir = root().join("tests/istio-schema");
    assert!(
        dir.join("node_modules/@kubernetes-models/istio").exists(),
        "Istio schemas not installed: run `make istio-schema`"
    );
    let out = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .args(files)
        .output()
        .expect("node must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_overlay_renders_and_validates_against_istio_schemas() {
    let names = manifests();
    for expected in [
        "ingress-gateway",
        "orders",
        "reports",
        "examples/istio/cognito",
        "examples/istio/alb",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "overlay {expected} missing: {names:?}"
        );
    }
    let dir = scratch("rendered");
    let mut files = Vec::new();
    let mut documents = 0;
    let mut write = |file: String, yaml: String| {
        documents += parse_docs(&yaml).len();
        let path = dir.join(format!("{}.yaml", file.replace('/', "-")));
        fs::write(&path, yaml).unwrap();
        files.push(path);
    };
    for name in &names {
        write(name.clone(), kustomize(name));
        // The alternative rendering of each (Istio 1.30+), and the optional components.
        write(
            format!("{name}-traffic-extension"),
            kustomize_with(name, &["traffic-extension"]),
        );
    }
    write("orders-fail-reload".into(), kustomize_with("orders", &["fail-reload"]));
    write(
        "orders-traffic-extension-fail-reload".into(),
        kustomize_with("orders", &["traffic-extension", "fail-reload"]),
    );
    let (ok, out) = schema_validate(&files);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{documents} documents valid against Istio 1.29.2 schemas \
             (ConfigMap: core/v1; TrafficExtension: Istio 1.30.3's CRD)"
        )),
        "{out}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_plugin_config_is_accepted_by_the_filter_config_code() {
    for name in manifests() {
        for docs in [render(&name), render_traffic_extension(&name)] {
            let ext = extension(&docs);
            let name = format!("{name} ({})", ext["kind"].as_str().unwrap());
            let spec = &ext["spec"];
            let wasm = wasm_fields(ext);
            if let Err(e) = Config::from_json(plugin_config_text(ext).as_bytes()) {
                panic!("{name}: pluginConfig.{e}");
            }
            assert_eq!(spec["phase"], "AUTHN", "{name}");
            assert_eq!(wasm["failStrategy"], "FAIL_CLOSE", "{name}");
            assert_eq!(
                wasm["pluginName"],
                oci::ROOT_ID,
                "{name}: pluginName must be the module's root id"
            );
            assert_eq!(wasm["imagePullPolicy"], "IfNotPresent", "{name}");
            assert!(spec["priority"].is_i64(), "{name}");
            assert!(wasm["url"].as_str().unwrap().starts_with("oci://"), "{name}");
            let namespace = ext["metadata"]["namespace"].as_str().unwrap_or("");
            assert!(!namespace.is_empty(), "{name}: overlays set a namespace");
            let labels = spec["selector"]["matchLabels"].as_object();
            let targets = spec["targetRefs"].as_array();
            match (labels, targets) {
                (Some(l), None) => {
                    assert!(!l.is_empty(), "{name}");
                    // A sidecar's plugin is for the traffic it serves, not what it sends.
                    assert_eq!(spec["match"], json!([{"mode": "SERVER"}]), "{name}");
                }
                (None, Some(t)) => {
                    assert_eq!(t.len(), 1, "{name}");
                    assert_eq!(t[0]["kind"], "Gateway", "{name}");
                    assert_eq!(t[0]["group"], "gateway.networking.k8s.io", "{name}");
                    assert!(
                        spec.get("match").is_none(),
                        "{name}: a gateway's listeners are all CLIENT"
                    );
                }
                other => panic!("{name}: exactly one of selector.matchLabels and targetRefs: {other:?}"),
            }
        }
    }
    let orders = render("orders");
    assert_eq!(wasm_plugin(&orders)["spec"]["selector"]["matchLabels"]["app"], "orders");
    let reports = render("reports");
    assert_eq!(
        wasm_plugin(&reports)["spec"]["selector"]["matchLabels"]["app"],
        "reports"
    );
}

// --- The chain gateway → orders → reports (docs/istio.md, "Multi-hop") ------------------

/// The Istio principal of a sidecar workload: its namespace and, as the overlays assume, a
/// service account named after its `app` label.
fn sidecar_principal(ext: &Value) -> String {
    format!(
        "cluster.local/ns/{}/sa/{}",
        ext["metadata"]["namespace"].as_str().unwrap(),
        ext["spec"]["selector"]["matchLabels"]["app"].as_str().unwrap()
    )
}

/// The Istio principal of the pods Istio deploys for a Gateway API `Gateway` of class
/// `istio`: service account `NAME-istio` in the Gateway's namespace (Istio's gateway
/// naming, `gateway.istio.io/service-account` aside).
fn gateway_principal(ext: &Value) -> String {
    let gateway = &ext["spec"]["targetRefs"][0];
    assert_eq!(gateway["kind"], "Gateway");
    format!(
        "cluster.local/ns/{}/sa/{}-istio",
        ext["metadata"]["namespace"].as_str().unwrap(),
        gateway["name"].as_str().unwrap()
    )
}

/// The shipped overlays form one chain: a token the gateway accepts is accepted by every hop
/// behind it, each hop takes it only from the hop before (mTLS principals), the token travels
/// on as far as the last hop, and every workload hands its application the user.
/// tests/envoy_chain.rs runs the same overlays in Envoy with real mTLS between the hops.
#[test]
fn the_overlays_pass_the_users_token_along_gateway_orders_reports() {
    let docs: Vec<Vec<Value>> = ["ingress-gateway", "orders", "reports"]
        .iter()
        .map(|o| render(o))
        .collect();
    let hops: Vec<&Value> = docs.iter().map(|d| extension(d)).collect();
    let (gateway, orders, reports) = (hops[0], hops[1], hops[2]);
    let config = |ext: &Value| wasm_fields(ext)["pluginConfig"].clone();
    let provider = |ext: &Value| config(ext)["providers"][0].clone();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    // One identity provider, one audience for the API: the gateway's audiences are accepted
    // at every hop (a token for the API is good along the whole chain).
    let gateway_auds = strings(&provider(gateway)["audiences"]);
    assert!(!gateway_auds.is_empty());
    for hop in [orders, reports] {
        let name = hop["metadata"]["namespace"].as_str().unwrap();
        assert_eq!(provider(hop)["issuer"], provider(gateway)["issuer"], "{name}");
        assert_eq!(provider(hop)["jwksUri"], provider(gateway)["jwksUri"], "{name}");
        let auds = strings(&provider(hop)["audiences"]);
        assert!(
            gateway_auds.iter().all(|a| auds.contains(a)),
            "{name} must accept the gateway's audiences {gateway_auds:?}, has {auds:?}"
        );
    }
    // Each hop takes user tokens only from the hop before it; the gateway from anyone.
    assert_eq!(provider(gateway).get("trustedPrincipals"), None);
    assert_eq!(
        strings(&provider(orders)["trustedPrincipals"]),
        vec![gateway_principal(gateway)]
    );
    assert_eq!(
        strings(&provider(reports)["trustedPrincipals"]),
        vec![sidecar_principal(orders)]
    );
    // reports' ALLOW rules name their caller, and only a trusted one.
    let trusted = strings(&provider(reports)["trustedPrincipals"]);
    for rule in config(reports)["rules"].as_array().unwrap() {
        if rule["action"].as_str().unwrap_or("ALLOW") == "ALLOW" && rule["public"] != true {
            let principals = strings(&rule["principals"]);
            assert!(!principals.is_empty(), "reports rule {rule}: name the caller");
            assert!(principals.iter().all(|p| trusted.contains(p)), "reports rule {rule}");
        }
    }
    // The token goes on to the hops that call on (the gateway, orders' application) and
    // stops at the last one.
    assert_eq!(provider(gateway)["forwardOriginalToken"], true);
    assert_eq!(provider(orders)["forwardOriginalToken"], true);
    assert_ne!(provider(reports)["forwardOriginalToken"], true);
    // Each workload's application learns the user from headers claimguard sets.
    for hop in [orders, reports] {
        let headers = provider(hop)["outputClaimToHeaders"].clone();
        assert!(
            headers
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["header"] == "x-user-sub" && h["claim"] == "sub"),
            "{hop}"
        );
    }
}

/// The cluster a provider's keys are fetched through, as claimguard resolves it.
fn jwks_cluster(provider: &Value) -> Option<(String, HttpUrl)> {
    let uri = provider["jwksUri"].as_str()?;
    let url = HttpUrl::parse(uri).unwrap();
    let cluster = provider["jwksCluster"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| url.istio_cluster());
    Some((cluster, url))
}

/// For an ALB provider: the cluster its keys are fetched through, and the key URL.
fn alb_keys_cluster(provider: &Value) -> Option<(String, HttpUrl)> {
    let alb = provider.get("alb")?;
    let base = alb["keysUri"].as_str().map(str::to_string).unwrap_or_else(|| {
        format!(
            "https://public-keys.auth.elb.{}.amazonaws.com",
            alb["region"].as_str().unwrap()
        )
    });
    let url = HttpUrl::parse(&base).unwrap();
    let cluster = alb["keysCluster"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| url.istio_cluster());
    Some((cluster, url))
}

/// A Cognito preset derives its JWKS URL: the check must see it too.
fn preset_jwks_cluster(provider: &Value) -> Option<(String, HttpUrl)> {
    let c = Config::from_json(json!({"providers": [provider]}).to_string().as_bytes()).ok()?;
    let remote = c.providers().first()?.remote()?.clone();
    let cluster = remote.cluster.clone().unwrap_or_else(|| remote.url.istio_cluster());
    Some((cluster, remote.url))
}

#[test]
fn every_jwks_host_has_a_service_entry_and_a_tls_destination_rule() {
    for name in manifests() {
        let docs = render(&name);
        let wp = wasm_plugin(&docs);
        let namespace = &wp["metadata"]["namespace"];
        let providers = wp["spec"]["pluginConfig"]["providers"].as_array().unwrap();
        let mut remote = 0;
        for (cluster, url) in providers.iter().filter_map(|p| {
            jwks_cluster(p)
                .or_else(|| alb_keys_cluster(p))
                .or_else(|| preset_jwks_cluster(p))
        }) {
            remote += 1;
            assert!(url.https, "{name}: keys must be fetched over TLS: {url:?}");
            // The name istiod gives the ServiceEntry's cluster; a different name would make
            // every fetch fail with "cluster not found".
            assert_eq!(cluster, format!("outbound|{}||{}", url.port, url.host), "{name}");
            let entry = docs
                .iter()
                .find(|d| {
                    d["kind"] == "ServiceEntry"
                        && d["spec"]["hosts"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|h| h == url.host.as_str())
                })
                .unwrap_or_else(|| panic!("{name}: no ServiceEntry for {}", url.host));
            assert_eq!(&entry["metadata"]["namespace"], namespace, "{name}");
            assert_eq!(entry["spec"]["location"], "MESH_EXTERNAL", "{name}");
            assert_eq!(entry["spec"]["resolution"], "DNS", "{name}");
            let port = entry["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["number"] == url.port)
                .unwrap_or_else(|| panic!("{name}: ServiceEntry for {} has no port {}", url.host, url.port));
            assert_eq!(
                port["protocol"], "HTTP",
                "{name}: the callout is plain HTTP to the cluster"
            );
            let rule = docs
                .iter()
                .find(|d| d["kind"] == "DestinationRule" && d["spec"]["host"] == url.host.as_str())
                .unwrap_or_else(|| panic!("{name}: no DestinationRule for {}", url.host));
            let policy = &rule["spec"]["trafficPolicy"];
            let tls = policy["portLevelSettings"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["port"]["number"] == url.port))
                .map(|p| &p["tls"])
                .unwrap_or(&policy["tls"]);
            assert_eq!(tls["mode"], "SIMPLE", "{name}: TLS origination to {}", url.host);
            assert_eq!(tls["sni"], url.host.as_str(), "{name}");
        }
        assert!(remote > 0, "{name}: expected a remote JWKS provider");
    }
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/istio").join(name)
}

#[test]
fn broken_manifests_are_rejected_with_the_field_path() {
    let cases = [
        (
            "typo-field.yaml",
            "WasmPlugin/claimguard: spec.imagePullPolcy: unknown field (not in Istio 1.29.2's WasmPlugin schema)",
        ),
        (
            "wrong-type.yaml",
            "WasmPlugin/claimguard: spec.priority: must be integer",
        ),
        (
            "missing-selector.yaml",
            "WasmPlugin/claimguard: spec.selector: missing: set selector.matchLabels (or targetRefs for a gateway)",
        ),
        (
            "selector-and-targetrefs.yaml",
            "WasmPlugin/claimguard: spec.targetRefs: only one of targetRefs or selector can be set",
        ),
        (
            "service-entry-bad-enum.yaml",
            "ServiceEntry/jwks-keycloak: spec.resolution: must be one of: NONE, STATIC, DNS",
        ),
        (
            "sidecar-without-match.yaml",
            "WasmPlugin/claimguard: spec.match: missing: set match: [{mode: SERVER}]",
        ),
        (
            "gateway-server-mode.yaml",
            "WasmPlugin/claimguard: spec.match: mode SERVER on a gateway: Istio treats every gateway listener as CLIENT",
        ),
        (
            "traffic-extension-typo.yaml",
            "TrafficExtension/claimguard: spec.wasm.pluginNmae: unknown field (not in Istio 1.30.3's TrafficExtension schema)",
        ),
        (
            "traffic-extension-fail-open.yaml",
            "TrafficExtension/claimguard: spec.wasm.failStrategy: must be FAIL_CLOSE (or FAIL_RELOAD, Istio 1.27+)",
        ),
    ];
    for (file, message) in cases {
        let (ok, out) = schema_validate(&[fixture(file)]);
        assert!(!ok, "{file} was accepted: {out}");
        assert!(out.contains(message), "{file}: expected {message:?} in:\n{out}");
        assert_eq!(out.lines().count(), 1, "{file}: one problem, one line:\n{out}");
    }
    // Schema-valid (pluginConfig is free-form to Istio), refused by claimguard's own config
    // code with the path inside pluginConfig.
    let cases = [
        (
            "plugin-config-typo.yaml",
            "providers[0].jwksUrl",
            "unknown field `jwksUrl`, expected one of",
        ),
        ("plugin-config-bad-value.yaml", "providers[0].maxStale", "24 hours"),
    ];
    for (file, path, message) in cases {
        let (ok, out) = schema_validate(&[fixture(file)]);
        assert!(ok, "{file}: the schema allows any pluginConfig: {out}");
        let docs = parse_docs(&fs::read_to_string(fixture(file)).unwrap());
        let e = Config::from_json(plugin_config_text(wasm_plugin(&docs)).as_bytes()).unwrap_err();
        assert_eq!(e.path, path, "{file}: {e}");
        assert!(e.message.contains(message), "{file}: {e}");
    }
}

/// The documents of a rendering other than the claimguard extension, in order.
fn others(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["kind"] != "WasmPlugin" && d["kind"] != "TrafficExtension")
        .collect()
}

#[test]
fn traffic_extension_rendering_is_the_wasm_plugin_with_its_wasm_fields_under_spec_wasm() {
    const WASM_FIELDS: [&str; 6] = [
        "url",
        "sha256",
        "imagePullPolicy",
        "pluginName",
        "failStrategy",
        "pluginConfig",
    ];
    for name in manifests() {
        let (wp_docs, te_docs) = (render(&name), render_traffic_extension(&name));
        let (wp, te) = (extension(&wp_docs), extension(&te_docs));
        assert_eq!(
            (wp["kind"].as_str(), te["kind"].as_str()),
            (Some("WasmPlugin"), Some("TrafficExtension"))
        );
        assert_eq!(te["apiVersion"], "extensions.istio.io/v1alpha1", "{name}");
        assert_eq!(te["metadata"], wp["metadata"], "{name}");
        // Targeting, match, phase and priority stay in spec; the Wasm fields, and only
        // they, move under spec.wasm.
        let mut expected = wp["spec"].as_object().unwrap().clone();
        let mut wasm = serde_json::Map::new();
        for field in WASM_FIELDS {
            let v = expected
                .remove(field)
                .unwrap_or_else(|| panic!("{name}: WasmPlugin without {field}"));
            wasm.insert(field.to_string(), v);
        }
        expected.insert("wasm".into(), Value::Object(wasm));
        assert_eq!(te["spec"], Value::Object(expected), "{name}");
        // Everything else in the rendering is unchanged.
        let key = |d: &&Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
        let (mut a, mut b) = (others(&wp_docs), others(&te_docs));
        a.sort_by_key(key);
        b.sort_by_key(key);
        assert_eq!(a, b, "{name}");
        // And istiod makes the same filter of both (Istio 1.30 turns a WasmPlugin into a
        // TrafficExtension before building it): only the names differ.
        let module = Path::new("/claimguard.wasm");
        let (mut fw, mut ft) = (istiod_filter(wp, module), istiod_filter(te, module));
        for f in [&mut fw, &mut ft] {
            f["name"] = json!("-");
            f["typed_config"]["config"]["name"] = json!("-");
        }
        assert_eq!(fw, ft, "{name}");
    }
}

#[test]
fn every_overlay_has_a_shipped_traffic_extension_rendering() {
    let dir = root().join("istio/traffic-extension");
    let mut shipped: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(
        shipped,
        overlays(),
        "one istio/traffic-extension/NAME per istio/overlays/NAME"
    );
    for name in overlays() {
        assert_eq!(
            parse_docs(&kustomize_dir(&dir.join(&name))),
            render_traffic_extension(&name),
            "istio/traffic-extension/{name} is not overlay {name} with the traffic-extension component"
        );
    }
}

#[test]
fn istiod_puts_the_filter_on_inbound_listeners_only_and_on_gateways() {
    use ListenerClass::*;
    for name in manifests() {
        for docs in [render(&name), render_traffic_extension(&name)] {
            let ext = extension(&docs);
            let attaches = |c| istiod_attaches(ext, c);
            if is_gateway(ext) {
                assert!(attaches(Gateway), "{name}: not on the gateway's listeners");
            } else {
                assert!(attaches(SidecarInbound), "{name}: not on the inbound listener");
                assert!(!attaches(SidecarOutbound), "{name}: on the outbound listeners too");
            }
        }
    }
    // What the validator refuses, and why: `mode: SERVER` would leave a gateway unguarded,
    // and no `match` puts the filter on a sidecar's outbound listeners.
    let docs = parse_docs(&fs::read_to_string(fixture("gateway-server-mode.yaml")).unwrap());
    assert!(!istiod_attaches(extension(&docs), Gateway));
    let docs = parse_docs(&fs::read_to_string(fixture("sidecar-without-match.yaml")).unwrap());
    assert!(istiod_attaches(extension(&docs), SidecarOutbound));
}

/// The `claimguard-stats-tags` ConfigMap of a rendering: its `custom_bootstrap.json`.
fn stats_tags_bootstrap(docs: &[Value]) -> String {
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "claimguard-stats-tags")
        .expect("the claimguard-stats-tags ConfigMap (istio/components/stats-tags)");
    cm["data"]["custom_bootstrap.json"].as_str().unwrap().to_string()
}

#[test]
fn every_rendering_carries_the_stats_tags_of_src_metrics() {
    let want: Vec<Value> = claimguard::request::metrics::STATS_TAGS
        .iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect();
    for name in manifests() {
        let docs = render(&name);
        let boot: Value = serde_json::from_str(&stats_tags_bootstrap(&docs)).unwrap();
        assert_eq!(
            boot,
            json!({"stats_config": {"stats_tags": want}}),
            "{name}: istio/components/stats-tags/custom_bootstrap.json differs from src/request/metrics.rs STATS_TAGS"
        );
        // In the namespace of the pods that name it.
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
        assert_eq!(
            cm["metadata"]["namespace"],
            extension(&docs)["metadata"]["namespace"],
            "{name}"
        );
    }
}

/// The digest pinned in the manifests, the module sha256 beside it, and the tag of the url.
fn pinned() -> (String, String, String) {
    let docs = render("orders");
    let wp = wasm_plugin(&docs);
    let url = wp["spec"]["url"].as_str().unwrap();
    let tag = url.rsplit_once(':').unwrap().1.to_string();
    (
        wp["spec"]["sha256"].as_str().unwrap().to_string(),
        wp["metadata"]["annotations"][MODULE_SHA256_ANNOTATION]
            .as_str()
            .unwrap()
            .to_string(),
        tag,
    )
}

fn built_module() -> Vec<u8> {
    let path = wasm_path();
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make build`)", path.display()))
}

#[test]
fn pinned_sha256_is_the_image_of_the_built_module_in_every_overlay() {
    let (image_sha, module_sha, tag) = pinned();
    let image = WasmImage::build(&built_module(), &tag).unwrap();
    assert_eq!(
        (module_sha.as_str(), image_sha.as_str()),
        (image.module_sha256.as_str(), image.manifest_sha256.as_str()),
        "istio/components/image/image.yaml does not pin the module `make build` produced: run `make oci` and commit it"
    );
    for name in manifests() {
        let docs = render(&name);
        let spec = &wasm_plugin(&docs)["spec"];
        assert_eq!(spec["sha256"], image_sha.as_str(), "{name}");
        assert!(spec["url"].as_str().unwrap().ends_with(&format!(":{tag}")), "{name}");
    }
}

/// Runs `claimguard-oci` (what `make oci` runs) into `dir`, without touching the pin.
fn build_layout(dir: &Path, tag: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_claimguard-oci"))
        .args(["--wasm", &wasm_path().display().to_string()])
        .args(["--out", &dir.display().to_string()])
        .args([
            "--tag",
            tag,
            "--url",
            &format!("oci://registry.invalid/claimguard:{tag}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                files.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn oci_layout_is_reproducible_and_carries_the_module() {
    let (image_sha, module_sha, tag) = pinned();
    let dir = scratch("layouts");
    build_layout(&dir.join("a"), &tag);
    std::thread::sleep(Duration::from_millis(1_100)); // a different second: no timestamps leak in
    build_layout(&dir.join("b"), &tag);
    let (a, b) = (tree(&dir.join("a")), tree(&dir.join("b")));
    assert_eq!(a.len(), 5, "oci-layout, index.json, manifest, config, module");
    assert!(a == b, "two builds of the same module differ");
    let image = read_layout(&dir.join("a"), &tag).unwrap();
    assert_eq!(image.module, built_module());
    assert_eq!(oci::sha256_hex(&image.module), module_sha);
    assert_eq!(image.manifest_sha256, image_sha);
    fs::remove_dir_all(&dir).unwrap();
}

/// Debian's `docker-registry` on 127.0.0.1 with its storage in a scratch directory.
struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Registry {
    fn start() -> Registry {
        let dir = scratch("registry");
        for _ in 0..5 {
            // Ask the kernel for a free port, then hand it to the registry (it cannot report
            // a port it chose itself); retried if someone took it in between.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:{port}\n",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry (make oci-tools)");
            let mut reg = Registry {
                child,
                port,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                if http::get(port, "/v2/", &[]).map(|r| r.status == 200).unwrap_or(false) {
                    return reg;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = reg.child.kill();
            let _ = reg.child.wait();
            reg.dir = PathBuf::new(); // keep the scratch dir for the next try
        }
        panic!(
            "docker-registry did not start: {}",
            fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn oci_image_round_trips_through_a_local_registry() {
    let (image_sha, module_sha, tag) = pinned();
    let registry = Registry::start();
    let work = scratch("roundtrip");
    let layout = work.join("layout");
    build_layout(&layout, &tag);
    let repo = format!("127.0.0.1:{}/shop/claimguard", registry.port);
    // `make push` without rebuilding: the recipe users run, against the local registry.
    for _ in 0..2 {
        let out = run(Command::new("make")
            .current_dir(root())
            .args(["--no-print-directory", "push-layout"])
            .arg(format!("OCI_DIR={}", layout.display()))
            .arg(format!("OCI_TAG={tag}"))
            .arg(format!("REGISTRY={repo}"))
            .arg("PUSH_TLS_VERIFY=false"));
        assert!(out.contains(&format!("pushed {repo}:{tag}")), "{out}");
    }
    // The registry serves the manifest under the pinned digest (what Istio compares).
    let manifest = http::request(
        registry.port,
        "GET",
        &format!("/v2/shop/claimguard/manifests/{tag}"),
        &[("accept", oci::MANIFEST_MEDIA_TYPE)],
    )
    .unwrap();
    assert_eq!(manifest.status, 200, "{manifest:?}");
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(format!("sha256:{image_sha}").as_str())
    );
    // Pull it back with skopeo and extract the module as Istio's fetcher does.
    let pulled = work.join("pulled");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{repo}:{tag}"),
        &format!("oci:{}:{tag}", pulled.display()),
    ]));
    let image = read_layout(&pulled, &tag).unwrap();
    assert_eq!(image.manifest_sha256, image_sha, "image digest changed on the way");
    assert_eq!(oci::sha256_hex(&image.module), module_sha, "module changed on the way");
    assert_eq!(image.module, built_module());
    fs::remove_dir_all(&work).unwrap();
}

// --- The rendered WasmPlugins and TrafficExtensions in Envoy --------------------------------

/// The HTTP filter istiod generates for a WasmPlugin or TrafficExtension
/// (pilot/pkg/model/extensions.go, Istio 1.30): the plugin named `namespace.name`, `root_id`
/// from `pluginName`, the plugin config as a JSON string, the V8 runtime, and the failure
/// policy from `failStrategy`. Istio 1.30 builds a WasmPlugin's filter from the
/// TrafficExtension it translates it into, named `NAME~istio-translated-wasmplugin`
/// (pilot/pkg/config/kube/extensions/translate.go; up to 1.29 the filter was
/// `extensions.istio.io/wasmplugin/namespace.name`). istiod sends the filter by ECDS; here it
/// is inline. The module is the local file the istio-agent would have fetched from the image
/// (istio-agent rewrites the remote code source to that file).
fn istiod_filter(ext: &Value, module: &Path) -> Value {
    let mut name = format!(
        "{}.{}",
        ext["metadata"]["namespace"].as_str().unwrap(),
        ext["metadata"]["name"].as_str().unwrap()
    );
    if ext["kind"] == "WasmPlugin" {
        name.push_str("~istio-translated-wasmplugin");
    }
    let wasm = wasm_fields(ext);
    // Istio 1.25+ proxies get `failure_policy` (older ones the deprecated `fail_open`).
    let failure_policy = match wasm["failStrategy"].as_str() {
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_CLOSE") | None => "FAIL_CLOSED",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        Some(other) => panic!("unknown failStrategy {other}"),
    };
    json!({
        "name": format!("extensions.istio.io/trafficextension/{name}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": wasm["pluginName"],
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config_text(ext)
                },
                "failure_policy": failure_policy
            }
        }
    })
}

/// The cluster istiod gives a service the application calls (the outbound listener's route).
const ELSEWHERE_CLUSTER: &str = "outbound|8080||inventory.shop.svc.cluster.local";

/// One rendering's plugin in Envoy, on the listeners istiod would put it on: for a sidecar an
/// inbound listener (the main one) and an outbound listener to another service
/// (`elsewhere`), for a gateway its listener. The JWKS host is served from 127.0.0.1 through
/// a cluster named as istiod names the ServiceEntry's (TLS origination is the sidecar's job
/// and not modelled: the test cluster is plain HTTP).
///
/// A workload whose provider takes tokens only through `trustedPrincipals` (the chain's
/// orders and reports, docs/istio.md "Multi-hop") also gets an inbound mTLS listener, and a
/// client Envoy that calls it as the first trusted principal (`trusted`) or as a workload
/// that is not trusted (`other`), with certificates from a test mesh CA: [`Deployed::call`]
/// goes through `trusted`, as the hop before this one would.
struct Deployed {
    jwks: JwksServer,
    upstream: EchoUpstream,
    /// The service behind the outbound listener (sidecars only).
    elsewhere: Option<EchoUpstream>,
    envoy: Envoy,
    /// The client Envoy playing the trusted hop and another workload, and the certificates.
    peers: Option<(Envoy, PathBuf)>,
    key: TestKey,
    issuer: String,
    audience: String,
    realm: String,
    jwks_cluster: String,
    /// Headers the filter sets or removes on the traffic it judges (`managed` headers).
    managed: Vec<String>,
}

impl Drop for Deployed {
    fn drop(&mut self) {
        if let Some((_, dir)) = &self.peers {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A workload that is nobody's trusted hop.
const UNTRUSTED_PEER: &str = "cluster.local/ns/billing/sa/billing";

/// Which peer a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// The provider's first trusted principal, over mTLS (plain text when there is none).
    Trusted,
    /// Another workload, over mTLS.
    Other,
    /// Plain text, no certificate (Istio's PERMISSIVE mode).
    Plain,
}

fn deploy(overlay: &str) -> Deployed {
    deploy_docs(overlay, render(overlay), |_| {})
}

/// Deploys a rendering; `tweak` adjusts the Envoy options before the start.
fn deploy_docs(what: &str, docs: Vec<Value>, tweak: impl FnOnce(&mut EnvoyOptions)) -> Deployed {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ext = extension(&docs).clone();
    let provider = &wasm_fields(&ext)["pluginConfig"]["providers"][0];
    let (jwks_cluster, _) = jwks_cluster(provider)
        .or_else(|| alb_keys_cluster(provider))
        .or_else(|| preset_jwks_cluster(provider))
        .expect("remote keys");
    let config = Config::from_json(plugin_config_text(&ext).as_bytes()).unwrap();
    let key = TestKey::from_rsa(&keys().rsa, Alg::RS256, "shop-2026");
    let jwks = JwksServer::start(key.jwks()).unwrap();
    let upstream = EchoUpstream::start(0).unwrap();
    let mut opts = EnvoyOptions::new(&json!({}), upstream.port);
    opts.clusters.push((jwks_cluster.clone(), jwks.port));
    let mut elsewhere = None;
    if is_gateway(&ext) {
        opts.without_claimguard = !istiod_attaches(&ext, ListenerClass::Gateway);
    } else {
        opts.without_claimguard = !istiod_attaches(&ext, ListenerClass::SidecarInbound);
        let other = EchoUpstream::start(0).unwrap();
        opts.outbound = Some(OutboundListener {
            name: "outbound".into(),
            cluster: ELSEWHERE_CLUSTER.into(),
            port: other.port,
            claimguard: istiod_attaches(&ext, ListenerClass::SidecarOutbound),
        });
        elsewhere = Some(other);
    }
    let trusted = provider["trustedPrincipals"][0].as_str().map(|p| {
        assert!(
            !p.contains('*'),
            "{what}: a pattern as the first trusted principal: {p}"
        );
        let dir = scratch(&format!(
            "pki-{}",
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let pki = Pki::new(&dir, "test mesh CA").unwrap();
        let server = pki
            .leaf(
                "workload",
                "spiffe://cluster.local/ns/test/sa/workload",
                Some("workload.test"),
            )
            .unwrap();
        opts.extra_listeners.push(ExtraListener {
            name: "inbound-mtls".into(),
            address: "127.0.0.1".into(),
            tls: Some(DownstreamTls {
                cert_chain: server.cert,
                private_key: server.key,
                client_ca: pki.ca_file(),
            }),
        });
        (pki, dir, p.to_string())
    });
    tweak(&mut opts);
    opts.filter = Some(istiod_filter(&ext, &opts.wasm));
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{what}: {e}"));
    let peers = trusted.map(|(pki, dir, principal)| {
        let port = envoy.listener_port_named("inbound-mtls").expect("the mTLS listener");
        let routes: Vec<Route> = [("trusted", principal.as_str()), ("other", UNTRUSTED_PEER)]
            .into_iter()
            .map(|(via, who)| Route {
                via: via.into(),
                address: "127.0.0.1".into(),
                port,
                tls: Some(ClientTls {
                    ca: pki.ca_file(),
                    cert: Some(pki.leaf(via, &mesh::spiffe_id(who), None).unwrap()),
                    sni: "workload.test".into(),
                }),
            })
            .collect();
        let mut client = EnvoyOptions::new(&json!({}), 0);
        client.raw_bootstrap = Some(mesh::client_bootstrap(&routes));
        let client = Envoy::start(&client, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{what}: client: {e}"));
        (client, dir)
    });
    Deployed {
        jwks,
        upstream,
        elsewhere,
        envoy,
        peers,
        key,
        issuer: provider["issuer"].as_str().unwrap_or_default().to_string(),
        audience: provider["audiences"][0].as_str().unwrap_or_default().to_string(),
        realm: wasm_fields(&ext)["pluginConfig"]["realm"].as_str().unwrap().to_string(),
        jwks_cluster,
        managed: config.managed_headers().to_vec(),
    }
}

impl Deployed {
    fn token(&self, extra: Value) -> String {
        let now = now();
        let mut claims =
            json!({"iss": self.issuer, "aud": self.audience, "sub": "alice", "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.key.sign(&claims)
    }

    /// A request from `peer` to the workload's inbound side.
    fn send(&self, peer: Peer, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        let port = match (peer, &self.peers) {
            (Peer::Plain, _) | (Peer::Trusted, None) => self.envoy.port,
            (Peer::Trusted, Some((client, _))) => {
                all.push(("x-via", "trusted"));
                client.port
            }
            (Peer::Other, Some((client, _))) => {
                all.push(("x-via", "other"));
                client.port
            }
            (Peer::Other, None) => panic!("no peers: the provider has no trustedPrincipals"),
        };
        http::request(port, method, path, &all).unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log()))
    }

    /// A request as the hop before this one sends it (see [`Deployed`]).
    fn call(&self, method: &str, path: &str, token: Option<&str>) -> Response {
        self.call_from(Peer::Trusted, method, path, token)
    }

    fn call_from(&self, peer: Peer, method: &str, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(peer, method, path, &headers)
    }

    /// A valid token from a peer that is not the trusted hop: 403 `untrusted_peer`, and the
    /// workload never sees it.
    fn expect_replays_refused(&self, method: &str, path: &str, token: &str) {
        let served = self.upstream.served();
        for peer in [Peer::Other, Peer::Plain] {
            let r = self.call_from(peer, method, path, Some(token));
            assert_eq!(r.status, 403, "{peer:?}: {r:?}\n{}", self.envoy.log());
            assert!(
                r.body.contains("only accepted through a trusted workload"),
                "{peer:?}: {}",
                r.body
            );
        }
        assert_eq!(self.upstream.served(), served, "a replay reached the workload");
    }

    /// Runs (what, method, path, token, status) cases; the first one may wait for the JWKS.
    fn expect_all(&self, cases: &[(&str, &str, &str, Option<String>, u16)]) {
        for (what, method, path, token, status) in cases {
            let r = self.call(method, path, token.as_deref());
            assert_eq!(
                r.status,
                *status,
                "{what}: {method} {path}: {r:?}\n--- envoy log ---\n{}",
                self.envoy.log()
            );
            if *status == 401 {
                // RFC 6750, with the realm the overlay set.
                let challenge = r.header("www-authenticate").unwrap_or("");
                let expected = format!("Bearer realm=\"{}\"", self.realm);
                assert!(challenge.starts_with(&expected), "{what}: {challenge:?}");
            }
        }
    }

    /// A call the application makes to another service, through the sidecar's outbound
    /// listener, with `headers`: the answer, and the request as that service received it.
    fn call_out(&self, headers: &[(&str, &str)]) -> (Response, Option<Received>) {
        let elsewhere = self.elsewhere.as_ref().expect("a sidecar rendering");
        let port = self
            .envoy
            .listener_port_named("outbound")
            .expect("the outbound listener");
        let before = elsewhere.served();
        let r = http::request(port, "POST", "/inventory/reserve", headers)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log()));
        let received = (elsewhere.served() > before)
            .then(|| elsewhere.last_received())
            .flatten();
        (r, received)
    }

    /// Whether Envoy has a cluster of that name (`/clusters`).
    fn has_cluster(&self, name: &str) -> bool {
        let prefix = format!("{name}::");
        self.envoy.admin("clusters").lines().any(|l| l.starts_with(&prefix))
    }

    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.envoy.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the Envoy log:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn orders_overlay_in_envoy() {
    orders_in_envoy(deploy("orders"));
}

/// The same overlay as a TrafficExtension: the same filter, the same answers.
#[test]
fn orders_traffic_extension_in_envoy() {
    orders_in_envoy(deploy_docs(
        "orders (TrafficExtension)",
        render_traffic_extension("orders"),
        |_| {},
    ));
}

fn orders_in_envoy(d: Deployed) {
    let reader = d.token(json!({"scope": "orders:read"}));
    let writer = d.token(json!({"scope": "orders:read orders:write"}));
    let write_only = d.token(json!({"scope": "orders:write"}));
    let nobody = d.token(json!({}));
    let wrong_aud = d
        .key
        .sign(&json!({"iss": d.issuer, "aud": "reports-api", "sub": "x", "exp": now() + 600}));
    let stranger = keys()
        .stranger_rsa
        .sign(&json!({"iss": d.issuer, "aud": d.audience, "exp": now() + 600}));
    let s = |t: &String| Some(t.clone());
    d.expect_all(&[
        ("reader lists orders", "GET", "/orders", s(&reader), 200),
        ("reader reads one order", "GET", "/orders/42", s(&reader), 200),
        ("reader cannot create", "POST", "/orders", s(&reader), 403),
        ("writer creates", "POST", "/orders", s(&writer), 200),
        ("orders:write alone may POST", "POST", "/orders", s(&write_only), 200),
        ("orders:write alone may not GET", "GET", "/orders", s(&write_only), 403),
        ("no scope", "GET", "/orders", s(&nobody), 403),
        ("no rule for DELETE", "DELETE", "/orders/42", s(&writer), 403),
        ("no token", "GET", "/orders", None, 401),
        ("token for another workload", "GET", "/orders", s(&wrong_aud), 401),
        ("key not in the JWKS", "GET", "/orders", s(&stranger), 401),
        ("probes need no token", "GET", "/healthz", None, 200),
    ]);
    assert_eq!(d.upstream.served(), 5, "only the allowed requests reached the workload");
    // The user's token counts only from the gateway (docs/istio.md, "Multi-hop"): another
    // workload, or plain text, replaying it gets 403. Probes still need nothing.
    d.expect_replays_refused("GET", "/orders", &reader);
    assert_eq!(d.call_from(Peer::Plain, "GET", "/healthz", None).status, 200);
    assert_eq!(d.upstream.served(), 6);
    // Exact series values. The JWKS came through the overlay's jwksCluster, at least once:
    // that a proxy fetches once for all its VMs is envoy_jwks.rs's to prove (it counts the
    // JWKS server's hits), not this overlay test's; under a loaded machine a lease may
    // legitimately expire and a second VM fetch again.
    let fetched = r#"claimguard_jwks_fetches_total{provider="keycloak",result="success"}"#;
    let want = [
        (
            r#"claimguard_requests_total{outcome="denied",reason="insufficient_scope",rule="none",provider="keycloak"}"#,
            3,
        ),
        (
            r#"claimguard_requests_total{outcome="allowed",reason="none",rule="orders-write",provider="keycloak"}"#,
            2,
        ),
    ];
    let stats = d.envoy.admin_until("stats/prometheus", |p| {
        prom_value(p, fetched).is_some_and(|n| n >= 1) && want.iter().all(|(s, n)| prom_value(p, s) == Some(*n))
    });
    let ours: Vec<&str> = stats.lines().filter(|l| l.starts_with("claimguard_")).collect();
    let why = || {
        format!(
            "the filter's series:\n{}\n--- envoy log ---\n{}",
            ours.join("\n"),
            d.envoy.log()
        )
    };
    assert!(
        prom_value(&stats, fetched).is_some_and(|n| n >= 1),
        "no successful JWKS fetch; {}",
        why()
    );
    for (series, n) in want {
        assert_eq!(prom_value(&stats, series), Some(n), "{series}; {}", why());
    }
    // The decision log says why, per request.
    let line = d.wait_for_log(
        r#""method":"POST","path":"/orders","peerPrincipal":"spiffe://cluster.local/ns/istio-ingress/sa/shop-istio","provider":"keycloak","reason":"insufficient_scope""#,
    );
    assert!(line.contains(r#""claimguard":"decision","decision":"deny""#), "{line}");
    assert!(line.contains(r#""status":403"#), "{line}");

    // The application's own calls leave through the outbound listener, where istiod put no
    // claimguard (`match: [{mode: SERVER}]`): a token for another service keeps its
    // Authorization header and is not asked for this workload's audience.
    let for_inventory = d
        .key
        .sign(&json!({"iss": d.issuer, "aud": "inventory-api", "sub": "orders", "exp": now() + 600}));
    let auth = format!("Bearer {for_inventory}");
    let (r, received) = d.call_out(&[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{r:?}\n{}", d.envoy.log());
    let received = received.expect("the call reached the other service");
    assert_eq!(received.header("authorization"), Some(auth.as_str()), "{received:?}");
    // The same token inbound is judged: not for this workload.
    d.expect_all(&[("inventory's token, inbound", "GET", "/orders", Some(for_inventory), 401)]);
    // Inbound, the token is kept for the workload to forward to reports
    // (forwardOriginalToken), beside the identity headers.
    let served = d.upstream.served();
    d.expect_all(&[("reader again", "GET", "/orders", Some(reader.clone()), 200)]);
    assert_eq!(d.upstream.served(), served + 1);
    let received = d.upstream.last_received().unwrap();
    assert_eq!(
        received.header("authorization"),
        Some(format!("Bearer {reader}").as_str())
    );
    assert_eq!(received.header("x-user-sub"), Some("alice"));
    assert_eq!(received.header("x-user-scope"), Some("orders:read"));
    // SERVER mode changes listeners, not clusters: istiod builds the ServiceEntry's cluster
    // for every sidecar that sees the service, and the callout reaches it (the fetches above).
    assert!(d.has_cluster(&d.jwks_cluster), "no cluster {}", d.jwks_cluster);
    assert!(d.jwks.hits() >= 1, "no JWKS fetch reached the key server");
}

#[test]
fn reports_overlay_in_envoy() {
    let d = deploy("reports");
    let member = d.token(json!({"groups": ["reporting", "staff"]}));
    let contractor = d.token(json!({"groups": ["reporting"], "employment": "contractor", "sub": "carol"}));
    let outsider = d.token(json!({"groups": ["sales"], "scope": "orders:read orders:write"}));
    let other_api = d
        .key
        .sign(&json!({"iss": d.issuer, "aud": "orders-api", "groups": ["reporting"], "exp": now() + 600}));
    let s = |t: &String| Some(t.clone());
    // From orders (the trusted hop), as in the chain.
    d.expect_all(&[
        ("member reads", "GET", "/reports/q3", s(&member), 200),
        ("orders may only read", "POST", "/reports", s(&member), 403),
        ("other group", "GET", "/reports/q3", s(&outsider), 403),
        (
            "dry-run rule does not block yet",
            "GET",
            "/reports/q3",
            s(&contractor),
            200,
        ),
        ("no token", "GET", "/reports/q3", None, 401),
        ("healthz is not public here", "GET", "/healthz", None, 401),
        ("token for another API", "GET", "/reports/q3", s(&other_api), 401),
    ]);
    assert_eq!(d.upstream.served(), 2);
    let received = d.upstream.last_received().unwrap();
    assert_eq!(received.header("x-user-sub"), Some("carol"));
    assert_eq!(received.header("x-user-groups"), Some("reporting"));
    assert_eq!(
        received.header("authorization"),
        None,
        "the last hop consumes the token"
    );
    // Anyone but orders replaying a member's token: 403.
    d.expect_replays_refused("GET", "/reports/q3", &member);
    let line = d.wait_for_log(r#""decision":"dry_run_denied""#);
    assert!(line.contains(r#""rule":"no-contractors""#), "{line}");
    assert!(line.contains(r#""subject":"carol""#), "{line}");
}

#[test]
fn ingress_gateway_overlay_in_envoy() {
    let d = deploy("ingress-gateway");
    let customer = d.token(json!({"tenant": "acme"}));
    let blocked = d.token(json!({"tenant": "blocked-co"}));
    let s = |t: &String| Some(t.clone());
    d.expect_all(&[
        ("any valid token on /api", "GET", "/api/catalog", s(&customer), 200),
        ("POST too", "POST", "/api/cart", s(&customer), 200),
        ("blocked tenant", "GET", "/api/catalog", s(&blocked), 403),
        ("outside /api", "GET", "/admin", s(&customer), 403),
        ("no token", "GET", "/api/catalog", None, 401),
        ("health check", "GET", "/healthz", None, 200),
    ]);
    assert_eq!(d.upstream.served(), 3);
}

/// Migrating a workload from the WasmPlugin to the TrafficExtension: while both exist istiod
/// gives its listeners two claimguard filters (same phase and priority, the older first), and
/// the second sees a request without the token the first consumed. docs/istio.md says to
/// apply the TrafficExtension, then delete the WasmPlugin: a short window that refuses, never
/// one that lets requests through unchecked.
#[test]
fn a_wasm_plugin_and_a_traffic_extension_on_one_workload_refuse_valid_tokens() {
    // reports: its provider consumes the token once verified (claimguard's default).
    let wp_docs = render("reports");
    let te_docs = render_traffic_extension("reports");
    let wp = extension(&wp_docs).clone();
    let d = deploy_docs("reports, WasmPlugin and TrafficExtension", te_docs, |o| {
        o.filters_before.push(istiod_filter(&wp, &o.wasm));
    });
    let member = d.token(json!({"groups": ["reporting"]}));
    d.expect_all(&[
        ("valid token, judged twice", "GET", "/reports/q3", Some(member), 401),
        ("no token", "GET", "/reports/q3", None, 401),
    ]);
    assert_eq!(d.upstream.served(), 0, "nothing got through");
    // The first filter admitted the token; the second found none (one VM, both counted).
    let admitted =
        r#"claimguard_requests_total{outcome="allowed",reason="none",rule="reporting-group",provider="keycloak"}"#;
    let missing =
        r#"claimguard_requests_total{outcome="unauthenticated",reason="missing_token",rule="none",provider="none"}"#;
    let stats = d.envoy.admin_until("stats/prometheus", |p| {
        prom_value(p, admitted) == Some(1) && prom_value(p, missing) == Some(2)
    });
    assert_eq!(prom_value(&stats, admitted), Some(1), "{stats}");
    assert_eq!(prom_value(&stats, missing), Some(2), "{stats}");
}

// --- Inbound only ------------------------------------------------------------------------

/// Headers an application might send on its own calls: a token for the service it calls, and
/// every header the filter manages on the traffic it judges (claim headers it would strip
/// and set).
fn app_headers(d: &Deployed) -> Vec<(String, String)> {
    let token = d
        .key
        .sign(&json!({"iss": "https://idp.elsewhere.test", "aud": "inventory-api", "exp": now() + 600}));
    let mut headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    for h in &d.managed {
        headers.push((h.clone(), format!("set by the application ({h})")));
    }
    headers
}

#[test]
fn every_sidecar_leaves_the_applications_outbound_calls_untouched() {
    let sidecars: Vec<String> = manifests()
        .into_iter()
        .filter(|n| !is_gateway(extension(&render(n))))
        .collect();
    assert!(sidecars.len() >= 4, "{sidecars:?}");
    for name in sidecars {
        let d = deploy(&name);
        let owned = app_headers(&d);
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if name.starts_with("examples/") {
            assert!(headers.len() > 1, "{name}: expected claim headers to show: {headers:?}");
        }
        // Outbound: nothing judged, nothing stripped, nothing added.
        let (r, received) = d.call_out(&headers);
        assert_eq!(r.status, 200, "{name}: {r:?}\n{}", d.envoy.log());
        let received = received.unwrap_or_else(|| panic!("{name}: the call never left"));
        for (k, v) in &headers {
            assert_eq!(received.header_values(k), vec![*v], "{name}: {k} on the way out");
        }
        let ours: Vec<&(String, String)> = received
            .header_list
            .iter()
            .filter(|(k, _)| d.managed.contains(k) || k.starts_with("x-claimguard"))
            .collect();
        assert_eq!(
            ours.len(),
            d.managed.len(),
            "{name}: headers added on the way out: {ours:?}"
        );
        // Inbound, the same request is judged: no token for this workload.
        let r = http::request(d.envoy.port, "POST", "/inventory/reserve", &headers).unwrap();
        assert_eq!(r.status, 401, "{name}: inbound: {r:?}");
        assert_eq!(d.upstream.served(), 0, "{name}: inbound request reached the workload");
    }
}

/// Why the sidecar overlays say `match: [{mode: SERVER}]`: Istio's default
/// (CLIENT_AND_SERVER) also puts the filter on the outbound listener, where it judges the
/// application's own calls by this workload's rules.
#[test]
fn without_match_the_filter_would_judge_the_applications_own_calls() {
    let mut docs = render("orders");
    for d in docs.iter_mut().filter(|d| d["kind"] == "WasmPlugin") {
        d["spec"].as_object_mut().unwrap().remove("match");
    }
    let d = deploy_docs("orders without match", docs, |_| {});
    let for_inventory = d
        .key
        .sign(&json!({"iss": d.issuer, "aud": "inventory-api", "sub": "orders", "exp": now() + 600}));
    let auth = format!("Bearer {for_inventory}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let (r, received) = d.call_out(&[("authorization", &auth)]);
        // 503 while the keys are still being fetched; then the verdict.
        if r.status != 503 || Instant::now() > deadline {
            assert!(received.is_none(), "{received:?}");
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 401, "{r:?}\n{}", d.envoy.log());
    assert_eq!(d.elsewhere.as_ref().unwrap().served(), 0);
}

// --- Metrics in a default mesh -------------------------------------------------------------

/// The `stats_config` istio-agent writes into a sidecar's bootstrap by default (Istio 1.30.3;
/// the fixture names its source): Istio's own tags, and a stats matcher that lets through
/// only some prefixes, `wasm` (so `wasmcustom.claimguard.*`) among them.
fn istio_sidecar_stats_config() -> Value {
    let text = fs::read_to_string(fixture("istio-1.30.3-sidecar-stats-config.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["stats_config"].clone()
}

#[test]
fn stats_tags_configmap_labels_the_series_over_istios_own_stats_config() {
    let docs = render("orders");
    let fragment = stats_tags_bootstrap(&docs);
    // As istio-agent runs Envoy for a pod annotated
    // sidecar.istio.io/bootstrapOverride: claimguard-stats-tags (pkg/envoy/proxy.go): its
    // bootstrap, plus the ConfigMap's file with --config-yaml.
    let d = deploy_docs("orders with the stats-tags ConfigMap", docs.clone(), |o| {
        o.stats_config = Some(istio_sidecar_stats_config());
        o.config_yaml = Some(fragment);
    });
    let reader = d.token(json!({"scope": "orders:read"}));
    d.expect_all(&[
        ("reader", "GET", "/orders", Some(reader.clone()), 200),
        ("reader cannot create", "POST", "/orders", Some(reader), 403),
        ("no token", "GET", "/orders", None, 401),
    ]);
    let want = [
        r#"claimguard_requests_total{outcome="allowed",reason="none",rule="orders-read",provider="keycloak"}"#,
        r#"claimguard_requests_total{outcome="denied",reason="insufficient_scope",rule="none",provider="keycloak"}"#,
        r#"claimguard_requests_total{outcome="unauthenticated",reason="missing_token",rule="none",provider="none"}"#,
    ];
    let fetched = r#"claimguard_jwks_fetches_total{provider="keycloak",result="success"}"#;
    let stats = d.envoy.admin_until("stats/prometheus", |p| {
        want.iter().all(|s| prom_value(p, s) == Some(1)) && prom_value(p, fetched).is_some_and(|n| n >= 1)
    });
    let ours: Vec<&str> = stats.lines().filter(|l| l.starts_with("claimguard_")).collect();
    for series in want {
        assert_eq!(prom_value(&stats, series), Some(1), "{series} in:\n{}", ours.join("\n"));
    }
    assert!(
        prom_value(&stats, fetched).is_some_and(|n| n >= 1),
        "{}",
        ours.join("\n")
    );
    // Istio's stats matcher is in force: Envoy's per-cluster series are not exported, and
    // claimguard's are only because Istio always lets the `wasm` prefix through.
    assert!(!stats.contains("envoy_cluster_upstream_cx_total"), "{stats}");
    drop(d);

    // Without the annotation the default mesh still exports the series (Istio always lets
    // the `wasm` prefix through), with the labels folded into the names.
    let d = deploy_docs("orders in a default sidecar", docs, |o| {
        o.stats_config = Some(istio_sidecar_stats_config());
    });
    d.expect_all(&[("no token", "GET", "/orders", None, 401)]);
    let folded = "claimguard_requests_total_outcome_unauthenticated_reason_missing_token_rule_none_provider_none{}";
    let stats = d
        .envoy
        .admin_until("stats/prometheus", |p| prom_value(p, folded) == Some(1));
    let ours: Vec<&str> = stats.lines().filter(|l| l.starts_with("claimguard_")).collect();
    assert_eq!(prom_value(&stats, folded), Some(1), "{}", ours.join("\n"));
    assert!(!stats.contains("claimguard_requests_total{"), "{}", ours.join("\n"));
}

// --- FAIL_RELOAD or FAIL_CLOSE -------------------------------------------------------------

/// The test-only module that traps on `x-claimguard-fault: trap` (`make build-faults`).
fn faults_wasm() -> PathBuf {
    let path = match std::env::var_os("CLAIMGUARD_FAULTS_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => root().join("target/faults/claimguard.wasm"),
    };
    assert!(
        path.exists(),
        "{} is missing: `make build-faults` builds it",
        path.display()
    );
    path
}

/// After a VM trap, FAIL_CLOSE leaves the plugin failed: every later request is refused
/// until the plugin is pushed again or the pod restarts. FAIL_RELOAD (istio/components/
/// fail-reload) refuses the request that trapped just the same, refuses the next ones for
/// Envoy's reload backoff (`reload_config`, which istiod leaves at its 1 s base), and then
/// serves from a fresh VM that enforces the same rules.
#[test]
fn after_a_trap_fail_reload_serves_and_enforces_again_fail_close_refuses_everything() {
    for (strategy, docs) in [
        ("FAIL_CLOSE", render("orders")),
        ("FAIL_RELOAD", parse_docs(&kustomize_with("orders", &["fail-reload"]))),
    ] {
        assert_eq!(extension(&docs)["spec"]["failStrategy"], strategy);
        let d = deploy_docs(strategy, docs, |o| o.wasm = faults_wasm());
        let reader = d.token(json!({"scope": "orders:read"}));
        let auth = format!("Bearer {reader}");
        d.expect_all(&[("before the trap", "GET", "/orders", Some(reader.clone()), 200)]);
        let served = d.upstream.served();
        let get = |headers: &[(&str, &str)]| d.send(Peer::Trusted, "GET", "/orders", headers).status;
        let trap = get(&[("authorization", &auth), ("x-claimguard-fault", "trap")]);
        assert!(trap >= 500, "{strategy}: the trapping request must fail closed: {trap}");
        let trapped = Instant::now();
        // Well past the reload backoff: FAIL_CLOSE must still refuse, FAIL_RELOAD serve.
        let mut statuses = Vec::new();
        while trapped.elapsed() < Duration::from_secs(4) {
            let status = get(&[("authorization", &auth)]);
            statuses.push(status);
            if status == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match strategy {
            "FAIL_CLOSE" => {
                assert!(statuses.iter().all(|s| *s >= 500), "{strategy}: {statuses:?}");
                assert!(get(&[]) >= 500, "{strategy}");
                assert_eq!(d.upstream.served(), served, "{strategy}: nothing gets through");
            }
            _ => {
                let recovered = trapped.elapsed();
                assert_eq!(
                    statuses.last(),
                    Some(&200),
                    "{strategy}: {statuses:?}\n{}",
                    d.envoy.log()
                );
                assert!(
                    statuses.iter().rev().skip(1).all(|s| *s >= 500),
                    "{strategy}: only refusals until the reload: {statuses:?}"
                );
                println!("{strategy}: a fresh VM served {recovered:?} after the trap ({statuses:?})");
                assert_eq!(get(&[]), 401, "{strategy}: the fresh VM enforces");
                assert_eq!(get(&[("authorization", &auth)]), 200);
                assert_eq!(d.upstream.served(), served + 2);
            }
        }
    }
}
