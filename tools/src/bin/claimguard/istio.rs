//! What Istio objects say about where they apply and how they meet claimguard, shared by
//! `check` and `import-istio`: the two manifest kinds that carry the filter (`WasmPlugin`, and
//! `TrafficExtension`, which supersedes it), which workloads an object attaches to, whether a
//! sidecar plugin also runs on outbound traffic, and what happens to Istio's own
//! `RequestAuthentication` / `AuthorizationPolicy` on a workload where claimguard runs first.

use serde_json::{Map, Value};

/// The Kubernetes kinds that carry the filter and its `pluginConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PluginKind {
    /// `extensions.istio.io/v1alpha1 WasmPlugin`: module fields directly under `spec`.
    #[value(name = "WasmPlugin")]
    WasmPlugin,
    /// `extensions.istio.io/v1alpha1 TrafficExtension`: module fields under `spec.wasm`
    /// (`url`, `sha256`, `pluginConfig`, `pluginName`, `failStrategy`, ...), while `selector`,
    /// `targetRefs`, `phase`, `priority` and `match` stay under `spec`.
    #[value(name = "TrafficExtension")]
    TrafficExtension,
}

impl PluginKind {
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "WasmPlugin",
            PluginKind::TrafficExtension => "TrafficExtension",
        }
    }

    /// Where the module's own fields live: `spec` or `spec.wasm`.
    pub fn module_path(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "spec",
            PluginKind::TrafficExtension => "spec.wasm",
        }
    }

    /// A manifest of this kind around `spec` (selector, phase, match, ...) and the module fields
    /// (url, failStrategy, pluginConfig, ...).
    pub fn spec(self, mut spec: Map<String, Value>, module: Map<String, Value>) -> Value {
        match self {
            PluginKind::WasmPlugin => spec.extend(module),
            PluginKind::TrafficExtension => {
                spec.insert("wasm".into(), Value::Object(module));
            }
        }
        Value::Object(spec)
    }
}

/// A claimguard `WasmPlugin` or `TrafficExtension` as read from a manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub kind: PluginKind,
    pub spec: Value,
    pub target: Target,
}

impl Manifest {
    /// The module fields: `spec` of a WasmPlugin, `spec.wasm` of a TrafficExtension.
    pub fn module(&self) -> &Value {
        match self.kind {
            PluginKind::WasmPlugin => &self.spec,
            PluginKind::TrafficExtension => self.spec.get("wasm").unwrap_or(&Value::Null),
        }
    }

    /// The message path of a module field: `spec.failStrategy` / `spec.wasm.failStrategy`.
    pub fn module_field(&self, field: &str) -> String {
        format!("{}.{field}", self.kind.module_path())
    }
}

/// Istio's default root namespace: policies there apply to every namespace.
const ROOT_NAMESPACE: &str = "istio-system";

/// Which workloads an Istio object attaches to: its namespace, and `selector.matchLabels` or
/// `targetRefs` (neither: every workload of the namespace).
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub namespace: Option<String>,
    pub selector: Option<Map<String, Value>>,
    pub target_refs: Option<Vec<Value>>,
}

impl Target {
    pub fn of(doc: &Value) -> Target {
        let spec = doc.get("spec").unwrap_or(&Value::Null);
        Target {
            namespace: doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            selector: spec
                .pointer("/selector/matchLabels")
                .and_then(Value::as_object)
                .cloned(),
            target_refs: spec
                .get("targetRefs")
                .and_then(Value::as_array)
                .cloned()
                .or_else(|| spec.get("targetRef").map(|r| vec![r.clone()])),
        }
    }

    /// Whether the selector names a gateway by one of the labels Istio's gateways carry
    /// (`istio: ingressgateway`, Gateway API's `gateway.networking.k8s.io/gateway-name`, ...).
    pub fn selects_gateway(&self) -> bool {
        self.selector.as_ref().is_some_and(|labels| {
            labels.iter().any(|(k, v)| {
                let v = v.as_str().unwrap_or("");
                (k == "istio" && v.contains("gateway"))
                    || matches!(
                        k.as_str(),
                        "gateway.networking.k8s.io/gateway-name" | "gateway.istio.io/managed" | "istio.io/gateway-name"
                    )
            })
        })
    }

    /// Whether it attaches to sidecars: no targetRefs (those name gateways, waypoints) and no
    /// gateway selector.
    pub fn sidecars(&self) -> bool {
        self.target_refs.is_none() && !self.selects_gateway()
    }

    /// Whether the two may select a workload in common. Label selectors are compared as far as
    /// the manifests allow: they overlap unless they demand different values for one label.
    pub fn may_overlap(&self, other: &Target) -> bool {
        let namespaces = match (&self.namespace, &other.namespace) {
            (Some(a), Some(b)) => a == b || a == ROOT_NAMESPACE || b == ROOT_NAMESPACE,
            // One applied with `kubectl -n`: taken to be applied beside the other.
            _ => true,
        };
        if !namespaces {
            return false;
        }
        match (&self.target_refs, &other.target_refs) {
            (Some(a), Some(b)) => a.iter().any(|r| {
                b.iter()
                    .any(|s| r.get("kind") == s.get("kind") && r.get("name") == s.get("name"))
            }),
            (Some(_), None) | (None, Some(_)) => false,
            (None, None) => match (&self.selector, &other.selector) {
                (Some(a), Some(b)) => a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v)),
                _ => true,
            },
        }
    }

    /// `ns/name`-free description for messages: `selector app=orders`, `every workload of the
    /// namespace`, `targetRefs Gateway/shop`.
    pub fn describe(&self) -> String {
        if let Some(refs) = &self.target_refs {
            let r: Vec<String> = refs
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.get("kind").and_then(Value::as_str).unwrap_or("?"),
                        r.get("name").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect();
            return format!("targetRefs {}", r.join(", "));
        }
        match &self.selector {
            Some(labels) => {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                format!("selector {}", l.join(","))
            }
            None => "every workload of the namespace".into(),
        }
    }
}

/// The warning for a plugin that reaches sidecars without `match: [{mode: SERVER}]`: Istio's
/// default mode, `CLIENT_AND_SERVER`, also puts it on the pod's outbound listeners.
pub fn outbound_warning(m: &Manifest) -> Option<String> {
    if !m.target.sidecars() {
        // Gateways and waypoints (targetRefs, a gateway selector) have their own shape: a
        // gateway's traffic is CLIENT traffic, so SERVER would take the filter off it.
        return None;
    }
    let server_only = m.spec.get("match").and_then(Value::as_array).is_some_and(|ms| {
        !ms.is_empty()
            && ms
                .iter()
                .all(|s| s.get("mode").and_then(Value::as_str) == Some("SERVER"))
    });
    if server_only {
        return None;
    }
    let reach = match &m.target.selector {
        Some(_) => format!("the sidecar it selects ({})", m.target.describe()),
        None => "every sidecar of the namespace (no selector)".into(),
    };
    let what = match m.spec.get("match") {
        None => "no match, so Istio's default mode CLIENT_AND_SERVER applies".to_string(),
        Some(_) => "a match that is not only mode SERVER".into(),
    };
    Some(format!(
        "spec.match: {what}: the filter also runs on the outbound listeners of {reach}, demanding a token for this workload's audience on every call the application makes and removing their Authorization header; add match: [{{mode: SERVER}}]"
    ))
}

/// An Istio `RequestAuthentication` or `AuthorizationPolicy` that may meet claimguard on a
/// workload.
#[derive(Clone, Debug)]
pub struct Security {
    pub kind: String,
    /// `namespace/name` (or `name`).
    pub name: String,
    pub target: Target,
    /// For an enforced ALLOW/DENY AuthorizationPolicy: its action and the first field that
    /// reads the request's JWT identity (requestPrincipals, notRequestPrincipals, a
    /// `request.auth.*` when key). None for a RequestAuthentication, or a policy that does not
    /// read the token.
    pub needs_token: Option<(String, String)>,
}

/// Reads a RequestAuthentication / AuthorizationPolicy (None for other kinds, and for a
/// dry-run policy, which never refuses anything).
pub fn security(doc: &Value) -> Option<Security> {
    let kind = doc.get("kind").and_then(Value::as_str)?;
    if !matches!(kind, "RequestAuthentication" | "AuthorizationPolicy") {
        return None;
    }
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let name = match doc.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    let mut needs_token = None;
    if kind == "AuthorizationPolicy" {
        if dry_run_annotation(doc) != Some(false) {
            return None;
        }
        let spec = doc.get("spec").unwrap_or(&Value::Null);
        let action = spec.get("action").and_then(Value::as_str).unwrap_or("ALLOW");
        if matches!(action, "ALLOW" | "DENY") {
            needs_token = token_condition(spec).map(|p| (action.to_string(), p));
        }
    }
    Some(Security {
        kind: kind.to_string(),
        name,
        target: Target::of(doc),
        needs_token,
    })
}

/// The first rule field that reads the request's JWT identity.
fn token_condition(spec: &Value) -> Option<String> {
    let rules = spec.get("rules").and_then(Value::as_array)?;
    for (i, r) in rules.iter().enumerate() {
        for (j, f) in r
            .get("from")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for field in ["requestPrincipals", "notRequestPrincipals"] {
                if f.pointer(&format!("/source/{field}")).is_some() {
                    return Some(format!("spec.rules[{i}].from[{j}].source.{field}"));
                }
            }
        }
        for (j, w) in r
            .get("when")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(k) = w
                .get("key")
                .and_then(Value::as_str)
                .filter(|k| k.starts_with("request.auth."))
            {
                return Some(format!("spec.rules[{i}].when[{j}] {k}"));
            }
        }
    }
    None
}

/// `istio.io/dry-run`, read as istiod reads it (Go's `strconv.ParseBool`): Some(true/false),
/// Some(false) when absent, None for a value Istio refuses.
pub fn dry_run_annotation(doc: &Value) -> Option<bool> {
    match doc.pointer("/metadata/annotations/istio.io~1dry-run") {
        None => Some(false),
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
            _ => None,
        },
        Some(_) => None,
    }
}

/// What to change when Istio's own security applies to a workload where a claimguard plugin
/// in phase AUTHN runs first: it runs before Istio's jwt_authn, and providers without
/// `forwardOriginalToken: true` remove the token, so Istio verifies nothing and every
/// `requestPrincipals` / `request.auth.*` condition sees a request without a token.
/// `stripping`: the providers that remove it. None when nothing needs to change.
pub fn coexistence_advice(stripping: &[String], istio: &[&Security]) -> Option<String> {
    if stripping.is_empty() || istio.is_empty() {
        return None;
    }
    let mut effects = Vec::new();
    for s in istio {
        match &s.needs_token {
            // An ALLOW on requestPrincipals, the usual "require a JWT", then admits nothing.
            Some((action, path)) if action == "ALLOW" && path.ends_with(".requestPrincipals") => effects.push(format!(
                "AuthorizationPolicy {:?} ({path}) never matches, so the requests it admitted get 403",
                s.name
            )),
            Some((action, path)) => effects.push(format!(
                "{action} AuthorizationPolicy {:?} ({path}) sees every request as anonymous",
                s.name
            )),
            None if s.kind == "RequestAuthentication" => {
                effects.push(format!("RequestAuthentication {:?} verifies nothing", s.name))
            }
            None => {}
        }
    }
    if effects.is_empty() {
        return None;
    }
    let providers: Vec<String> = stripping.iter().map(|p| format!("{p:?}")).collect();
    Some(format!(
        "Istio's own security for this workload: {}, because claimguard runs first (phase AUTHN, before Istio's jwt_authn) and removes the token of provider(s) {}. Set forwardOriginalToken: true on those providers while both run, or remove these Istio policies once claimguard alone enforces",
        effects.join("; "),
        providers.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(ns: Option<&str>, selector: Option<Value>, refs: Option<Value>) -> Target {
        Target {
            namespace: ns.map(str::to_owned),
            selector: selector.and_then(|s| s.as_object().cloned()),
            target_refs: refs.and_then(|r| r.as_array().cloned()),
        }
    }

    #[test]
    fn targets_overlap_unless_they_provably_differ() {
        let orders = target(Some("shop"), Some(json!({"app": "orders"})), None);
        let orders_v1 = target(Some("shop"), Some(json!({"app": "orders", "version": "v1"})), None);
        let reports = target(Some("shop"), Some(json!({"app": "reports"})), None);
        let shop = target(Some("shop"), None, None);
        let root = target(Some("istio-system"), None, None);
        let other_ns = target(Some("web"), Some(json!({"app": "orders"})), None);
        let gw = target(Some("shop"), None, Some(json!([{"kind": "Gateway", "name": "shop"}])));
        let gw2 = target(Some("shop"), None, Some(json!([{"kind": "Gateway", "name": "other"}])));
        let unset = target(None, Some(json!({"app": "orders"})), None);
        #[rustfmt::skip]
        let cases = [
            (&orders, &orders_v1, true), (&orders, &reports, false), (&orders, &shop, true),
            (&orders, &root, true), (&orders, &other_ns, false), (&orders, &gw, false),
            (&gw, &gw, true), (&gw, &gw2, false), (&unset, &orders, true), (&unset, &reports, false),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.may_overlap(b), want, "{a:?} vs {b:?}");
            assert_eq!(b.may_overlap(a), want, "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn dry_run_is_read_like_go_parse_bool() {
        let doc = |v: Value| json!({"metadata": {"annotations": {"istio.io/dry-run": v}}});
        for (v, want) in [
            (json!("true"), Some(true)),
            (json!("True"), Some(true)),
            (json!("1"), Some(true)),
            (json!("t"), Some(true)),
            (json!("false"), Some(false)),
            (json!("0"), Some(false)),
            (json!("yes"), None),
            (json!(""), None),
            (json!(true), Some(true)),
        ] {
            assert_eq!(dry_run_annotation(&doc(v.clone())), want, "{v}");
        }
        assert_eq!(dry_run_annotation(&json!({"metadata": {}})), Some(false));
    }

    #[test]
    fn gateways_are_not_sidecars() {
        for labels in [
            json!({"istio": "ingressgateway"}),
            json!({"gateway.networking.k8s.io/gateway-name": "shop"}),
        ] {
            assert!(!target(None, Some(labels), None).sidecars());
        }
        assert!(target(None, Some(json!({"app": "orders"})), None).sidecars());
        assert!(target(None, None, None).sidecars());
        assert!(!target(None, None, Some(json!([{"kind": "Gateway", "name": "g"}]))).sidecars());
    }
}
