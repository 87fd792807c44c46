//! `claimguard check`: the filter's own validation (`Config::from_json`) on every plugin config
//! found in the given files, plus warnings for settings that are valid but risky, for a sidecar
//! plugin that would also run on outbound traffic, and for Istio security policies beside it
//! that it would break.

use crate::input::{load, Content, Doc};
use crate::istio::{coexistence_advice, outbound_warning, Manifest, Security};
use crate::{display_name, read_input, JsonFlag, Verdict};
use claimguard::config::Config;
use claimguard::policy::{Mode, RuleAction};
use serde_json::{json, Value};
use std::path::PathBuf;

pub const AFTER_HELP: &str = "\
Inputs: a bare plugin config (JSON), or Kubernetes YAML/JSON with one or more documents; the
spec.pluginConfig of every WasmPlugin and the spec.wasm.pluginConfig of every TrafficExtension
are checked (a Lua TrafficExtension is skipped), other kinds are skipped (listed with
--verbose and in --json). `-` reads standard input, e.g.
  kustomize build istio/ | claimguard check -

Errors name the file, the document (1-based) and WasmPlugin name, and the field path, e.g.
  istio/wasmplugin.yaml: document 1 (WasmPlugin \"claimguard\"): rules[2].when[0].claim: ...

Warnings (valid but risky): no audiences/clientIds, failStrategy FAIL_OPEN, maxStale over 24h,
HMAC secrets in the config, mode dryRun, every rule dry-run, allowMissing with no rule that
requires a token, requireExpiration false, keys fetched over plain http, large clock skew,
decisionHeader / exposeRuleNames, KEEP_UNCHANGED escaped slashes, an unpinned module URL.

Sidecars: a plugin with a selector (or none: every sidecar of the namespace) and no
match: [{mode: SERVER}] also runs on the pod's outbound listeners (Istio's default mode is
CLIENT_AND_SERVER): calls the application makes would need a token for this workload's
audience and lose their Authorization header. Gateways (targetRefs, or a selector such as
istio: ingressgateway) are not warned about.

Istio's own security: when the inputs also hold a RequestAuthentication or an enforced
AuthorizationPolicy for the same workload (same namespace or istio-system, overlapping
selector), a plugin in phase AUTHN runs before Istio's jwt_authn and removes the token unless
its provider sets forwardOriginalToken: true, so Istio sees none and a policy on
requestPrincipals or request.auth.* denies every request. The warning says what to change:
forwardOriginalToken: true while both run, or remove the Istio policies once claimguard alone
enforces.

Files without a plugin config (kustomization.yaml, a ServiceEntry) are fine as long as at
least one plugin config is found overall.

Exit status: 0 every config valid (warnings allowed unless --deny-warnings), 1 a config is
invalid, a file unreadable, or no plugin config found at all, 2 usage error.";

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Plugin config (JSON) or Kubernetes YAML files; `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    json: JsonFlag,
    /// Also list skipped documents (neither WasmPlugin nor TrafficExtension).
    #[arg(short, long)]
    verbose: bool,
    /// Exit 1 when there is any warning.
    #[arg(long)]
    deny_warnings: bool,
}

/// A warning about a valid config: where, and why it is risky.
pub fn risk_warnings(cfg: &Config, plugin: &Value, manifest: Option<&Manifest>) -> Vec<String> {
    let mut out: Vec<String> = cfg.warnings().to_vec();
    if let Some(m) = manifest {
        let module = m.module();
        if module.get("failStrategy").and_then(Value::as_str) == Some("FAIL_OPEN") {
            out.push(format!(
                "{}: FAIL_OPEN lets every request through, unauthenticated, when the filter fails to load or crashes",
                m.module_field("failStrategy")
            ));
        }
        let url = module.get("url").and_then(Value::as_str).unwrap_or("");
        if (url.starts_with("http://") || url.starts_with("https://")) && module.get("sha256").is_none() {
            out.push(format!(
                "{}: not set, so the module downloaded from {} is not pinned",
                m.module_field("sha256"),
                m.module_field("url")
            ));
        }
        out.extend(outbound_warning(m));
    }
    for (i, p) in cfg.providers().iter().enumerate() {
        let raw = plugin.get("providers").and_then(|ps| ps.get(i));
        if raw.and_then(|r| r.get("hmacSecret")).is_some() {
            out.push(format!(
                "providers[{i}].hmacSecret: a shared secret in the plugin config: whoever can read the WasmPlugin can mint tokens"
            ));
        }
        if let Some(r) = p.remote() {
            if r.max_stale_ms > 86_400_000 {
                out.push(format!(
                    "providers[{i}].maxStale: {}h keeps serving keys the issuer may have revoked for more than a day",
                    r.max_stale_ms / 3_600_000
                ));
            }
            if !r.url.https && !matches!(r.url.host.as_str(), "127.0.0.1" | "localhost" | "[::1]") {
                out.push(format!(
                    "providers[{i}].{}: keys are fetched over plain http from {}",
                    if r.discovery { "oidcDiscovery" } else { "jwksUri" },
                    r.url.host
                ));
            }
        }
        if !p.require_expiration() {
            out.push(format!(
                "providers[{i}].requireExpiration: false accepts tokens without exp, valid forever"
            ));
        }
        if p.clock_skew_seconds() > 300 {
            out.push(format!(
                "providers[{i}].clockSkewSeconds: {}s accepts tokens that long after they expired",
                p.clock_skew_seconds()
            ));
        }
        let requires_identity = cfg
            .policy()
            .rules()
            .iter()
            .any(|r| r.action == RuleAction::Allow && !r.dry_run && r.has_identity_conditions())
            && cfg.policy().mode() == Mode::Enforce;
        // A DENY rule without conditions (import-istio's allow-nothing) refuses everything anyway.
        let denies_all = plugin
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|r| {
                r.get("action").and_then(Value::as_str) == Some("DENY")
                    && r.as_object()
                        .is_some_and(|m| m.keys().all(|k| k == "name" || k == "action"))
            });
        if p.allow_missing() && !requires_identity && !denies_all {
            out.push(format!(
                "providers[{i}].allowMissing: requests without a token pass, and no enforced ALLOW rule requires one"
            ));
        }
    }
    if cfg.policy().mode() == Mode::DryRun && !cfg.policy().rules().is_empty() {
        out.push("mode: dryRun: no rule is enforced, every request with a valid (or no required) token passes".into());
    } else if !cfg.policy().rules().is_empty() && cfg.policy().rules().iter().all(|r| r.dry_run) {
        out.push("rules: every rule is dryRun, so none is enforced".into());
    }
    if plugin.get("pathWithEscapedSlashesAction").and_then(Value::as_str) == Some("KEEP_UNCHANGED") {
        out.push(
            "pathWithEscapedSlashesAction: KEEP_UNCHANGED: path rules see %2F as is, while the upstream may decode it"
                .into(),
        );
    }
    if cfg.decision_header() {
        out.push("decisionHeader: tells every client why it was refused (a debugging aid)".into());
    }
    if cfg.expose_rule_names() {
        out.push("exposeRuleNames: 403 bodies name the policy rule that refused".into());
    }
    out
}

/// One provider, in a line: issuer, keys, algorithms, token location.
pub fn describe_provider(p: &claimguard::verify::provider::Provider) -> String {
    let algs: Vec<&str> = p.algorithms().iter().map(|a| a.name()).collect();
    let keys = match p.remote() {
        Some(r) if r.discovery => format!("keys by OIDC discovery from {}{}", r.url.authority(), r.url.path),
        Some(r) => format!(
            "keys from {}{} (+{} inline)",
            r.url.authority(),
            r.url.path,
            p.keys().keys.len()
        ),
        None => format!("{} inline key(s)", p.keys().keys.len()),
    };
    format!(
        "provider {:?}: issuer {:?}, {keys}, algorithms {}, token from {}",
        p.name(),
        p.issuer(),
        algs.join(","),
        p.locations()
            .iter()
            .map(|l| l.describe())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The outcome for one document.
struct Checked {
    doc_json: Value,
    invalid: bool,
    warnings: usize,
    plugin: bool,
}

/// The advice for Istio RequestAuthentication / AuthorizationPolicy objects (from any input
/// file) that may select the same workload as this plugin, when it runs in phase AUTHN, ahead
/// of Istio's jwt_authn. In a later phase Istio has verified the token before claimguard
/// removes it, and nothing conflicts.
pub fn coexistence_warning(cfg: &Config, m: &Manifest, istio: &[Security]) -> Option<String> {
    if m.spec.get("phase").and_then(Value::as_str) != Some("AUTHN") {
        return None;
    }
    let near: Vec<&Security> = istio.iter().filter(|s| s.target.may_overlap(&m.target)).collect();
    let stripping: Vec<String> = cfg
        .providers()
        .iter()
        .filter(|p| !p.forward_original_token())
        .map(|p| p.name().to_string())
        .collect();
    coexistence_advice(&stripping, &near)
}

fn check_doc(file: &str, doc: &Doc, bare: bool, istio: &[Security], a: &CheckArgs) -> Checked {
    let where_ = if bare {
        file.to_string()
    } else {
        format!("{file}: {}", doc.label())
    };
    let mut j = json!({"document": doc.index, "kind": doc.kind, "name": doc.name, "namespace": doc.namespace});
    let mut out = Checked {
        doc_json: Value::Null,
        invalid: false,
        warnings: 0,
        plugin: false,
    };
    match &doc.content {
        Content::Skipped(why) => {
            j["status"] = json!("skipped");
            j["reason"] = json!(why);
            if a.verbose && !a.json.json {
                println!("{where_}: skipped: {why}");
            }
        }
        Content::Security(s) => {
            let why = format!(
                "{}, Istio's own security ({}): weighed against the claimguard plugins for the same workload",
                s.kind,
                s.target.describe()
            );
            j["status"] = json!("skipped");
            j["reason"] = json!(why);
            if a.verbose && !a.json.json {
                println!("{where_}: skipped: {why}");
            }
        }
        Content::Invalid { path, message } => {
            out.invalid = true;
            out.plugin = true;
            j["status"] = json!("invalid");
            j["error"] = json!({"path": path, "message": message});
            if !a.json.json {
                eprintln!("{where_}: {}", join_path(path, message));
            }
        }
        Content::Plugin { json: text, manifest } => {
            out.plugin = true;
            match Config::from_json(text.as_bytes()) {
                Err(e) => {
                    out.invalid = true;
                    j["status"] = json!("invalid");
                    j["error"] = json!({"path": e.path, "message": e.message});
                    if !a.json.json {
                        eprintln!("{where_}: {e}");
                    }
                }
                Ok(cfg) => {
                    let plugin: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                    let mut warnings = risk_warnings(&cfg, &plugin, manifest.as_ref());
                    if let Some(m) = manifest {
                        warnings.extend(coexistence_warning(&cfg, m, istio));
                    }
                    out.warnings = warnings.len();
                    let providers: Vec<String> = cfg.providers().iter().map(describe_provider).collect();
                    j["status"] = json!("ok");
                    j["warnings"] = json!(warnings);
                    j["providers"] = json!(providers);
                    j["rules"] = json!(cfg.policy().rules().len());
                    if !a.json.json {
                        println!("{where_}: OK");
                        for p in &providers {
                            println!("  {p}");
                        }
                        for w in &warnings {
                            println!("  warning: {w}");
                        }
                    }
                }
            }
        }
    }
    out.doc_json = j;
    out
}

fn join_path(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

pub fn run(a: &CheckArgs) -> Result<Verdict, String> {
    let (mut configs, mut invalid, mut warnings, mut skipped) = (0usize, 0usize, 0usize, 0usize);
    // Every file first: a RequestAuthentication in one file concerns a plugin in another.
    let loaded: Vec<(String, Result<Vec<Doc>, String>)> = a
        .files
        .iter()
        .map(|path| {
            let name = display_name(path);
            let docs = read_input(path).and_then(|text| load(&text).map_err(|e| format!("{name}: {e}")));
            (name, docs)
        })
        .collect();
    let istio: Vec<Security> = loaded
        .iter()
        .filter_map(|(_, docs)| docs.as_ref().ok())
        .flatten()
        .filter_map(|d| match &d.content {
            Content::Security(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let mut files = Vec::new();
    for (name, docs) in &loaded {
        let docs = match docs {
            Ok(d) => d,
            Err(e) => {
                invalid += 1;
                if !a.json.json {
                    eprintln!("{e}");
                }
                files.push(json!({"file": name, "error": e}));
                continue;
            }
        };
        let bare = docs.len() == 1 && docs.iter().all(|d| d.kind.is_none());
        let mut doc_json = Vec::new();
        let mut plugins = 0;
        for d in docs {
            let c = check_doc(name, d, bare, &istio, a);
            plugins += usize::from(c.plugin);
            invalid += usize::from(c.invalid);
            warnings += c.warnings;
            skipped += usize::from(!c.plugin);
            doc_json.push(c.doc_json);
        }
        configs += plugins;
        let mut f = json!({"file": name, "documents": doc_json});
        if plugins == 0 {
            // A kustomization.yaml or a ServiceEntry next to the WasmPlugins: fine, unless no
            // file at all holds a plugin config (checked below).
            let note = format!(
                "no plugin config ({} document(s), none a WasmPlugin or TrafficExtension)",
                docs.len()
            );
            f["note"] = json!(note);
        }
        files.push(f);
    }
    if configs == 0 && invalid == 0 {
        invalid += 1;
        if !a.json.json {
            eprintln!("claimguard check: no plugin config found in the given files");
        }
    }
    let failed = invalid > 0 || (a.deny_warnings && warnings > 0);
    if a.json.json {
        let out = json!({"ok": !failed, "files": files,
            "summary": {"configs": configs, "invalid": invalid, "warnings": warnings, "skipped": skipped}});
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    } else if a.files.len() > 1 || configs > 1 {
        println!(
            "checked {configs} plugin config(s): {invalid} invalid, {warnings} warning(s), {skipped} document(s) skipped"
        );
    }
    Ok(if failed { Verdict::Refused } else { Verdict::Ok })
}
