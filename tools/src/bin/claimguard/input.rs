//! Reading what operators have: a bare plugin config (JSON), or Kubernetes YAML (one or many
//! documents, `kubectl -o json` / `kind: List`, a kustomize-rendered stream) holding
//! WasmPlugins (`spec.pluginConfig`) or TrafficExtensions (`spec.wasm.pluginConfig`) whose
//! plugin config is the filter's, and the Istio security policies beside them.

use crate::istio::{security, Manifest, PluginKind, Security, Target};
use serde::Deserialize;
use serde_json::Value;

/// One document of an input file, classified.
pub struct Doc {
    /// 1-based position in the file's document stream.
    pub index: usize,
    /// `kind` and `metadata.name` of a Kubernetes object.
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub content: Content,
}

pub enum Content {
    /// A plugin config to validate: the JSON text the filter would receive, and the
    /// WasmPlugin / TrafficExtension it came from (None for a bare JSON config).
    Plugin { json: String, manifest: Option<Manifest> },
    /// An Istio RequestAuthentication / AuthorizationPolicy: not checked itself, but it
    /// changes what a claimguard plugin for the same workload must do.
    Security(Security),
    /// Not a plugin config, and why (an empty document, a Service, ...).
    Skipped(String),
    /// A WasmPlugin / TrafficExtension without a usable plugin config: the field path and the
    /// problem.
    Invalid { path: String, message: String },
}

impl Doc {
    /// `document 2 (WasmPlugin "claimguard")`, for messages.
    pub fn label(&self) -> String {
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => format!("document {} ({k} {n:?})", self.index),
            (Some(k), None) => format!("document {} ({k})", self.index),
            _ => format!("document {}", self.index),
        }
    }
}

/// Whether the text is JSON (a bare config, or a Kubernetes object / List in JSON).
fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Every document of a YAML stream (or the one JSON value), as JSON values.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    if looks_like_json(text) {
        return serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| format!("invalid JSON: {e}"));
    }
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml_ng::Value::deserialize(de).map_err(|e| format!("document {}: invalid YAML: {e}", i + 1))?;
        let json =
            serde_json::to_value(&v).map_err(|e| format!("document {}: cannot be read as JSON data: {e}", i + 1))?;
        out.push(json);
    }
    Ok(out)
}

/// Classifies every document of a file.
pub fn load(text: &str) -> Result<Vec<Doc>, String> {
    let bare_json = looks_like_json(text);
    let mut docs = Vec::new();
    for (i, v) in documents(text)?.into_iter().enumerate() {
        classify(i + 1, v, bare_json.then_some(text), &mut docs);
    }
    Ok(docs)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn classify(index: usize, v: Value, original_json: Option<&str>, out: &mut Vec<Doc>) {
    let kind = str_at(&v, &["kind"]).map(str::to_owned);
    let name = str_at(&v, &["metadata", "name"]).map(str::to_owned);
    let namespace = str_at(&v, &["metadata", "namespace"]).map(str::to_owned);
    let doc = |content| Doc {
        index,
        kind: kind.clone(),
        name: name.clone(),
        namespace: namespace.clone(),
        content,
    };
    match (&v, kind.as_deref()) {
        (Value::Null, _) => out.push(doc(Content::Skipped("empty document".into()))),
        (Value::Object(_), None) if v.get("apiVersion").is_none() => {
            // A bare plugin config. From a JSON file, the exact bytes go to the validator.
            let json = original_json.map(str::to_owned).unwrap_or_else(|| v.to_string());
            out.push(doc(Content::Plugin { json, manifest: None }))
        }
        (Value::Object(_), Some("List")) => {
            for item in v.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                classify(index, item, None, out);
            }
        }
        (Value::Object(_), Some(k @ ("WasmPlugin" | "TrafficExtension"))) => {
            let kind = if k == "WasmPlugin" {
                PluginKind::WasmPlugin
            } else {
                PluginKind::TrafficExtension
            };
            let spec = v.get("spec").cloned().unwrap_or(Value::Null);
            let manifest = Manifest {
                kind,
                target: Target::of(&v),
                spec,
            };
            if kind == PluginKind::TrafficExtension && manifest.spec.get("wasm").is_none() {
                let content = if manifest.spec.get("lua").is_some() {
                    Content::Skipped("TrafficExtension with a Lua filter, not WebAssembly".into())
                } else {
                    Content::Invalid {
                        path: "spec.wasm".into(),
                        message: "is missing: a TrafficExtension needs exactly one of wasm or lua".into(),
                    }
                };
                out.push(doc(content));
                return;
            }
            let at = manifest.module_field("pluginConfig");
            let content = match manifest.module().get("pluginConfig") {
                Some(pc @ Value::Object(_)) => Content::Plugin {
                    json: pc.to_string(),
                    manifest: Some(manifest.clone()),
                },
                Some(_) => Content::Invalid {
                    path: at,
                    message: "must be a mapping (the plugin config)".into(),
                },
                None => Content::Invalid {
                    path: at,
                    message: "is missing: the filter would get an empty configuration and refuse it (a kustomize patch? check the rendered output: kustomize build DIR | claimguard check -)".into(),
                },
            };
            out.push(doc(content))
        }
        (Value::Object(_), Some(k)) => match security(&v) {
            Some(s) => out.push(doc(Content::Security(s))),
            None => out.push(doc(Content::Skipped(format!(
                "{k}, not a WasmPlugin or TrafficExtension"
            )))),
        },
        (Value::Object(_), None) => out.push(doc(Content::Skipped(
            "no kind, not a WasmPlugin or TrafficExtension".into(),
        ))),
        _ => out.push(doc(Content::Invalid {
            path: String::new(),
            message: "is not a mapping (expected a plugin config or a Kubernetes object)".into(),
        })),
    }
}
