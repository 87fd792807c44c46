//! What Istio objects say about claimguard, shared by `check` and `import-istio`: the two
//! manifest kinds that carry the filter (`WasmPlugin`, and `TrafficExtension`, which supersedes
//! it).

use serde_json::Value;

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
    /// Where the module's own fields live: `spec` or `spec.wasm`.
    pub fn module_path(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "spec",
            PluginKind::TrafficExtension => "spec.wasm",
        }
    }
}

/// A claimguard `WasmPlugin` or `TrafficExtension` as read from a manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub kind: PluginKind,
    pub spec: Value,
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
