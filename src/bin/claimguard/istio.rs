//! What Istio objects say about where they apply and how they meet claimguard, shared by
//! `check` and `import-istio`: the two manifest kinds that carry the filter (`WasmPlugin`, and
//! `TrafficExtension`, which supersedes it), which workloads an object attaches to, and whether a
//! sidecar plugin also runs on outbound traffic.

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

/// Which workloads an Istio object attaches to: `selector.matchLabels` or `targetRefs`
/// (neither: every workload of the namespace).
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub selector: Option<Map<String, Value>>,
    pub target_refs: Option<Vec<Value>>,
}

impl Target {
    pub fn of(doc: &Value) -> Target {
        let spec = doc.get("spec").unwrap_or(&Value::Null);
        Target {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(selector: Option<Value>, refs: Option<Value>) -> Target {
        Target {
            selector: selector.and_then(|s| s.as_object().cloned()),
            target_refs: refs.and_then(|r| r.as_array().cloned()),
        }
    }

    #[test]
    fn gateways_are_not_sidecars() {
        for labels in [
            json!({"istio": "ingressgateway"}),
            json!({"gateway.networking.k8s.io/gateway-name": "shop"}),
        ] {
            assert!(!target(Some(labels), None).sidecars());
        }
        assert!(target(Some(json!({"app": "orders"})), None).sidecars());
        assert!(target(None, None).sidecars());
        assert!(!target(None, Some(json!([{"kind": "Gateway", "name": "g"}]))).sidecars());
    }
}
