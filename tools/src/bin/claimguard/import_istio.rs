//! `claimguard import-istio`: Istio `RequestAuthentication` + `AuthorizationPolicy` YAML →
//! one claimguard `WasmPlugin` (or `TrafficExtension`). The plugin's rule schema is
//! Istio-shaped, so most fields carry over as they are; everything that does not (remote IPs,
//! ports, CUSTOM actions, connection `when` keys, ...) is reported, never dropped silently, and
//! makes the exit status 1.
//!
//! When something cannot be translated, the result errs towards refusing: an ALLOW (or AUDIT)
//! alternative that depends on it is left out (claimguard admits less than Istio did), while a
//! DENY rule keeps its other conditions (claimguard denies more). The output is validated with
//! the filter's own config validation before it is printed.

use crate::check::{coexistence_warning, risk_warnings};
use crate::input::documents;
use crate::istio::{dry_run_annotation, security, Manifest, PluginKind, Security, Target};
use crate::source_identity;
use crate::{display_name, read_input, JsonFlag, Verdict};
use claimguard::config::Config;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

pub const AFTER_HELP: &str = "\
Translated: RequestAuthentication jwtRules (issuer, audiences, jwksUri, jwks, fromHeaders,
fromParams, fromCookies, outputClaimToHeaders, outputPayloadToHeader, forwardOriginalToken,
spaceDelimitedClaims, timeout; no key source means OIDC discovery from the issuer) and
AuthorizationPolicy ALLOW/DENY/AUDIT rules: from.source requestPrincipals, principals,
namespaces, ipBlocks, serviceAccounts, trustDomains (and their not* forms),
to.operation hosts/notHosts/methods/notMethods/paths/notPaths, when on request.auth.claims[..]
(nested [a][b]), request.auth.principal, request.auth.audiences, request.auth.presenter and
request.headers[..], values/notValues; selector.matchLabels becomes the selector. A policy
annotated istio.io/dry-run: \"true\" stays dry-run: each of its rules gets dryRun: true.

Peer identities: serviceAccounts ns/sa (or sa, in the policy's namespace) become principals
*/ns/ns/sa/sa (any trust domain, as in Istio); trustDomains td become td/* (td* and * as they
are). Both in one source must hold together: service accounts x exact trust domains become
exact principals td/ns/ns/sa/sa, principals are kept where their trust domain matches; what
no exact/prefix*/*suffix pattern expresses (a *suffix trust domain, td* beside service
accounts) is reported. Istio also accepts SPIFFE IDs with extra path segments
(td/ns/ns/x/sa/sa); claimguard matches the TD/ns/NS/sa/SA form its CA issues.

Output: a WasmPlugin (--kind TrafficExtension: its successor, extensions.istio.io/v1alpha1,
Istio 1.30 or later, with url, failStrategy and pluginConfig under spec.wasm) in phase AUTHN
with failStrategy FAIL_CLOSE, and match: [{mode: SERVER}] on sidecars (not on a gateway
selector), as an AuthorizationPolicy governs a sidecar's inbound traffic only.

Not translated, and reported (stderr, or \"untranslated\" in --json): remoteIpBlocks, ports,
CUSTOM actions, when keys other than request.auth.* and request.headers[..], targetRefs,
selectors that differ between inputs, unknown fields. ALLOW alternatives that need them are
left out (fewer requests admitted), DENY rules lose only those conditions (more denied).

Istio has no equivalent of claimguard's claims bound to the request (valuesFrom /
notValuesFrom: a claim compared with a path capture, a header or a query parameter, for
tenant and owner checks): AuthorizationPolicy values are fixed strings, so nothing imported
uses them. Add them to the plugin's rules by hand (docs/rules.md, \"Claims bound to the
request\"); a policy that spells one rule per tenant can then become one rule.

Istio admits a request without any token unless a policy requires one, so every provider
gets allowMissing: true; rules requiring requestPrincipals or claims still demand a token.

While Istio's policies stay applied beside the plugin, claimguard (phase AUTHN, before
Istio's jwt_authn) removes the token unless forwardOriginalToken: true, and an
AuthorizationPolicy on requestPrincipals would deny everything: a note on stderr says what to
change (forwardOriginalToken: true during the migration, or remove the Istio policies).

Exit status: 0 everything translated, 1 something could not be translated (the plugin is
still printed) or the result is not a valid config, 2 usage error.";

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Istio YAML files (several documents each); `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// What to emit: a WasmPlugin, or the TrafficExtension that supersedes it (Istio 1.30 or
    /// later; the same phase, selector and match; url, failStrategy and pluginConfig under
    /// spec.wasm).
    #[arg(long, value_enum, ignore_case = true, default_value = "WasmPlugin")]
    kind: PluginKind,
    /// metadata.name of the WasmPlugin / TrafficExtension.
    #[arg(long, default_value = "claimguard")]
    name: String,
    /// metadata.namespace of the output (default: the inputs' namespace); also the namespace
    /// of a service account given without one in a policy without metadata.namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The module's url (spec.url, or spec.wasm.url): where the filter is pulled from.
    #[arg(long, default_value = "oci://registry.example.com/claimguard/claimguard:0.1.0")]
    url: String,
    /// Write the YAML to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    json: JsonFlag,
}

/// Where an input construct came from: file, document, object.
#[derive(Clone)]
struct Origin {
    file: String,
    document: usize,
    kind: String,
    name: String,
    /// metadata.namespace, else --namespace: where Istio resolves a bare service account.
    namespace: Option<String>,
}

impl Origin {
    fn at(&self, path: &str, message: impl Into<String>) -> Value {
        json!({"file": self.file, "document": self.document, "kind": self.kind, "name": self.name,
               "path": path, "message": message.into()})
    }
}

fn text(v: &Value) -> String {
    format!(
        "{}: document {} ({} {:?}): {}: {}",
        v["file"].as_str().unwrap_or(""),
        v["document"],
        v["kind"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        v["path"].as_str().unwrap_or(""),
        v["message"].as_str().unwrap_or("")
    )
}

#[derive(Default)]
struct Import {
    providers: Vec<Value>,
    rules: Vec<Value>,
    untranslated: Vec<Value>,
    notes: Vec<Value>,
    /// (selector, where it came from) of every input object.
    selectors: Vec<(Option<Value>, String)>,
    namespaces: Vec<String>,
    /// An enforced ALLOW policy was seen: in Istio, requests must then match an ALLOW rule.
    allow_policy: bool,
    /// A dry-run ALLOW policy was seen: Istio's shadow decision then requires a match of a
    /// dry-run ALLOW rule.
    allow_policy_dry_run: bool,
    /// The Istio objects read, for the advice on running both.
    security: Vec<Security>,
}

const JWT_RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputClaimToHeaders",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "spaceDelimitedClaims",
    "timeout",
];

impl Import {
    fn untranslated(&mut self, o: &Origin, path: &str, message: impl Into<String>) {
        self.untranslated.push(o.at(path, message));
    }

    fn common(&mut self, o: &Origin, doc: &Value, spec: &Value) {
        if let Some(ns) = doc.pointer("/metadata/namespace").and_then(Value::as_str) {
            if !self.namespaces.iter().any(|n| n == ns) {
                self.namespaces.push(ns.to_string());
            }
        }
        let selector = spec.pointer("/selector/matchLabels").cloned();
        self.selectors.push((selector, format!("{} {:?}", o.kind, o.name)));
        for f in ["targetRef", "targetRefs"] {
            if spec.get(f).is_some() {
                self.untranslated.push(o.at(
                    &format!("spec.{f}"),
                    "not translated: attach the WasmPlugin with a selector (or add targetRefs by hand)",
                ));
            }
        }
    }

    fn request_authentication(&mut self, o: &Origin, doc: &Value) {
        let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        self.common(o, doc, &spec);
        for (k, _) in spec.as_object().into_iter().flatten() {
            if !matches!(k.as_str(), "jwtRules" | "selector" | "targetRef" | "targetRefs") {
                self.untranslated(
                    o,
                    &format!("spec.{k}"),
                    "not translated: unknown RequestAuthentication field",
                );
            }
        }
        let rules = spec
            .get("jwtRules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if rules.is_empty() {
            self.notes
                .push(o.at("spec.jwtRules", "no jwtRules: nothing to translate"));
        }
        for (i, r) in rules.iter().enumerate() {
            let path = format!("spec.jwtRules[{i}]");
            let Some(issuer) = r.get("issuer").and_then(Value::as_str) else {
                self.untranslated(o, &format!("{path}.issuer"), "not translated: a jwtRule without issuer");
                continue;
            };
            let mut p = Map::new();
            p.insert("name".into(), json!(issuer));
            for (k, v) in r.as_object().into_iter().flatten() {
                if k == "timeout" {
                    continue;
                }
                if JWT_RULE_FIELDS.contains(&k.as_str()) {
                    p.insert(k.clone(), v.clone());
                } else {
                    self.untranslated(
                        o,
                        &format!("{path}.{k}"),
                        "not translated: claimguard has no such provider field",
                    );
                }
            }
            if let Some(t) = r.get("timeout") {
                if r.get("jwksUri").is_some() || r.get("jwks").is_none() {
                    p.insert("timeout".into(), t.clone());
                } else {
                    self.notes
                        .push(o.at(&format!("{path}.timeout"), "ignored: inline jwks are never fetched"));
                }
            }
            if r.get("jwksUri").is_none() && r.get("jwks").is_none() {
                // Istio discovers the JWKS from the issuer's OpenID configuration.
                p.insert("oidcDiscovery".into(), json!(true));
            }
            // Istio's RequestAuthentication admits requests that carry no token at all; only an
            // AuthorizationPolicy makes one necessary.
            p.insert("allowMissing".into(), json!(true));
            if let Some(existing) = self.providers.iter().find(|q| q["issuer"] == json!(issuer)) {
                if existing != &Value::Object(p.clone()) {
                    self.untranslated(
                        o,
                        &path,
                        format!("not translated: issuer {issuer:?} is configured differently by an earlier jwtRule (kept that one)"),
                    );
                }
                continue;
            }
            self.providers.push(Value::Object(p));
        }
    }

    fn authorization_policy(&mut self, o: &Origin, doc: &Value) {
        let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        self.common(o, doc, &spec);
        for (k, _) in spec.as_object().into_iter().flatten() {
            if !matches!(
                k.as_str(),
                "rules" | "action" | "selector" | "targetRef" | "targetRefs" | "provider"
            ) {
                self.untranslated(
                    o,
                    &format!("spec.{k}"),
                    "not translated: unknown AuthorizationPolicy field",
                );
            }
        }
        let action = spec.get("action").and_then(Value::as_str).unwrap_or("ALLOW");
        if !matches!(action, "ALLOW" | "DENY" | "AUDIT") {
            let what = if action == "CUSTOM" {
                "not translated: CUSTOM delegates to an external authorizer (spec.provider); claimguard has none"
            } else {
                "not translated: unknown action"
            };
            self.untranslated(o, "spec.action", format!("{action}: {what}; the policy was left out"));
            return;
        }
        let dry_run = match dry_run_annotation(doc) {
            Some(d) => d,
            None => {
                self.untranslated(
                    o,
                    "metadata.annotations[istio.io/dry-run]",
                    "not a boolean (true/false), which Istio's validation refuses; imported as dry-run, so the policy enforces nothing until you decide",
                );
                true
            }
        };
        if dry_run {
            let what = if action == "AUDIT" {
                "istio.io/dry-run on an AUDIT policy, which Istio's validation refuses (only ALLOW and DENY); its rules were imported with dryRun: true"
            } else {
                "istio.io/dry-run: every rule from this policy has dryRun: true, so claimguard logs what it would decide and enforces none of them"
            };
            self.notes.push(o.at("metadata.annotations", what));
            self.allow_policy_dry_run |= action == "ALLOW";
        } else {
            self.allow_policy |= action == "ALLOW";
        }
        let Some(rules) = spec.get("rules").and_then(Value::as_array) else {
            let what = if action == "ALLOW" {
                "an ALLOW policy without rules (allow-nothing) admits nothing by itself"
            } else {
                "a policy without rules matches nothing"
            };
            self.notes.push(o.at("spec.rules", what));
            return;
        };
        let deny = action == "DENY";
        for (i, rule) in rules.iter().enumerate() {
            let rpath = format!("spec.rules[{i}]");
            for (k, _) in rule.as_object().into_iter().flatten() {
                if !matches!(k.as_str(), "from" | "to" | "when") {
                    self.untranslated(o, &format!("{rpath}.{k}"), "not translated: unknown rule field");
                }
            }
            let mut when = Vec::new();
            let mut rule_ok = true;
            for (j, w) in rule
                .get("when")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                match self.condition(o, &format!("{rpath}.when[{j}]"), w, deny) {
                    Some(c) => when.push(c),
                    None => rule_ok = deny,
                }
                if !rule_ok {
                    break;
                }
            }
            if !rule_ok {
                continue;
            }
            let sources = self.alternatives(o, &rpath, rule, "from", "source", deny, &SOURCE_FIELDS);
            let operations = self.alternatives(o, &rpath, rule, "to", "operation", deny, &OPERATION_FIELDS);
            let multi = sources.len() * operations.len() > 1;
            for (sj, s) in sources.iter().enumerate() {
                for (ok, op) in operations.iter().enumerate() {
                    let mut name = format!("{}.{}", o.name, i);
                    if multi {
                        name = format!("{name}.{sj}.{ok}");
                    }
                    let base = name.clone();
                    let mut n = 2;
                    while self.rules.iter().any(|r| r["name"] == json!(name)) {
                        name = format!("{base}-{n}");
                        n += 1;
                    }
                    let mut r = Map::new();
                    r.insert("name".into(), json!(name));
                    if action != "ALLOW" {
                        r.insert("action".into(), json!(action));
                    }
                    if dry_run {
                        r.insert("dryRun".into(), json!(true));
                    }
                    r.extend(s.clone());
                    r.extend(op.clone());
                    if !when.is_empty() {
                        r.insert("when".into(), json!(when));
                    }
                    self.rules.push(Value::Object(r));
                }
            }
        }
    }

    /// `from[]` or `to[]`: the alternatives (OR), each a set of fields (AND). An absent list
    /// is one alternative with no condition. `None` elements were untranslatable and left
    /// out (ALLOW/AUDIT) or had their untranslatable fields dropped (DENY).
    #[allow(clippy::too_many_arguments)]
    fn alternatives(
        &mut self,
        o: &Origin,
        rpath: &str,
        rule: &Value,
        list: &str,
        inner: &str,
        deny: bool,
        fields: &[(&str, &str)],
    ) -> Vec<Map<String, Value>> {
        let Some(items) = rule.get(list).and_then(Value::as_array) else {
            return vec![Map::new()];
        };
        let consequence = if deny {
            "dropped from this DENY rule, which now denies more"
        } else {
            "this alternative was left out, so fewer requests are admitted"
        };
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let ipath = format!("{rpath}.{list}[{j}].{inner}");
            let mut m = Map::new();
            let mut keep = true;
            let empty = Map::new();
            let fields_of_item = item.get(inner).and_then(Value::as_object).unwrap_or(&empty);
            let mut peer_identity = false;
            for (k, v) in fields_of_item {
                match fields.iter().find(|(f, _)| f == k) {
                    Some((_, t)) if *t == PEER_IDENTITY => peer_identity = true,
                    Some((_, "")) | None => {
                        let why = fields
                            .iter()
                            .find(|(f, _)| f == k)
                            .map(|_| untranslatable_reason(k))
                            .unwrap_or("unknown field");
                        self.untranslated(
                            o,
                            &format!("{ipath}.{k}"),
                            format!("not translated: {why}; {consequence}"),
                        );
                        keep = keep && deny;
                    }
                    Some((_, target)) => {
                        m.insert((*target).to_string(), v.clone());
                    }
                }
            }
            if peer_identity {
                let ids = source_identity::translate(fields_of_item, o.namespace.as_deref());
                for (field, why) in &ids.untranslated {
                    self.untranslated(
                        o,
                        &format!("{ipath}.{field}"),
                        format!("not translated: {why}; {consequence}"),
                    );
                    keep = keep && deny;
                }
                if let Some(why) = ids.matches_nothing {
                    self.notes
                        .push(o.at(&ipath, format!("{why}: left out, as it admits or denies nothing")));
                    continue;
                }
                if let Some(p) = ids.principals {
                    m.insert("principals".into(), json!(p));
                }
                if !ids.not_principals.is_empty() {
                    let mut not: Vec<Value> = m
                        .get("notPrincipals")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for p in ids.not_principals {
                        if !not.contains(&json!(p)) {
                            not.push(json!(p));
                        }
                    }
                    m.insert("notPrincipals".into(), Value::Array(not));
                }
            }
            if keep {
                out.push(m);
            }
        }
        out
    }

    /// One `when` condition; None when it cannot be expressed (reported).
    fn condition(&mut self, o: &Origin, path: &str, w: &Value, deny: bool) -> Option<Value> {
        let key = w.get("key").and_then(Value::as_str).unwrap_or("");
        let supported = key.starts_with("request.auth.claims[")
            || key.starts_with("request.headers[")
            || matches!(
                key,
                "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter"
            );
        let consequence = if deny {
            "dropped from this DENY rule, which now denies more"
        } else {
            "the rule was left out, so fewer requests are admitted"
        };
        if !supported {
            let why = match key {
                "source.ip" | "remote.ip" | "source.namespace" | "source.principal" | "destination.ip"
                | "destination.port" | "connection.sni" => {
                    "claimguard's when conditions read only request.auth.* and request.headers[...] (peer identity and address go in from.source: principals, namespaces, ipBlocks)"
                }
                _ => "claimguard evaluates only request.auth.* and request.headers[...]",
            };
            self.untranslated(
                o,
                &format!("{path}.key"),
                format!("{key:?} not translated: {why}; {consequence}"),
            );
            return None;
        }
        let mut c = Map::new();
        c.insert("key".into(), json!(key));
        for (k, v) in w.as_object().into_iter().flatten() {
            match k.as_str() {
                "key" => {}
                "values" | "notValues" => {
                    c.insert(k.clone(), v.clone());
                }
                "valuesFrom" | "notValuesFrom" => {
                    self.untranslated(
                        o,
                        &format!("{path}.{k}"),
                        format!(
                            "not translated: Istio has no equivalent of {k} (a claim compared with the request); it is claimguard's own, written in the plugin's rules; {consequence}"
                        ),
                    );
                    return None;
                }
                _ => {
                    self.untranslated(
                        o,
                        &format!("{path}.{k}"),
                        format!("not translated: unknown field; {consequence}"),
                    );
                    return None;
                }
            }
        }
        Some(Value::Object(c))
    }
}

/// Istio field → claimguard rule field ("" when claimguard cannot evaluate it, "principals"
/// for the peer-identity fields `source_identity` translates).
const SOURCE_FIELDS: [(&str, &str); 14] = [
    ("requestPrincipals", "requestPrincipals"),
    ("notRequestPrincipals", "notRequestPrincipals"),
    ("principals", "principals"),
    ("notPrincipals", "notPrincipals"),
    ("namespaces", "namespaces"),
    ("notNamespaces", "notNamespaces"),
    ("ipBlocks", "ipBlocks"),
    ("notIpBlocks", "notIpBlocks"),
    ("remoteIpBlocks", ""),
    ("notRemoteIpBlocks", ""),
    ("serviceAccounts", PEER_IDENTITY),
    ("notServiceAccounts", PEER_IDENTITY),
    ("trustDomains", PEER_IDENTITY),
    ("notTrustDomains", PEER_IDENTITY),
];

/// Marks the source fields translated together by `source_identity::translate`.
const PEER_IDENTITY: &str = "(peer identity)";

const OPERATION_FIELDS: [(&str, &str); 8] = [
    ("hosts", "hosts"),
    ("notHosts", "notHosts"),
    ("methods", "methods"),
    ("notMethods", "notMethods"),
    ("paths", "paths"),
    ("notPaths", "notPaths"),
    ("ports", ""),
    ("notPorts", ""),
];

fn untranslatable_reason(field: &str) -> &'static str {
    match field {
        "remoteIpBlocks" | "notRemoteIpBlocks" => {
            "claimguard matches the connection's address (ipBlocks), not the original client's from X-Forwarded-For"
        }
        "ports" | "notPorts" => "claimguard does not match ports (attach the WasmPlugin per workload/port instead)",
        _ => "unsupported",
    }
}

pub fn run(a: &ImportArgs) -> Result<Verdict, String> {
    let mut im = Import::default();
    let mut inputs = 0;
    for path in &a.files {
        let name = display_name(path);
        let docs = documents(&read_input(path)?).map_err(|e| format!("{name}: {e}"))?;
        for (i, doc) in docs.iter().enumerate() {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
            let o = Origin {
                file: name.clone(),
                document: i + 1,
                kind: kind.clone(),
                name: doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                namespace: doc
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| a.namespace.clone()),
            };
            im.security.extend(security(doc));
            match kind.as_str() {
                "RequestAuthentication" => {
                    inputs += 1;
                    im.request_authentication(&o, doc);
                }
                "AuthorizationPolicy" => {
                    inputs += 1;
                    im.authorization_policy(&o, doc);
                }
                "" if doc.is_null() => {}
                _ => im
                    .notes
                    .push(o.at("kind", format!("skipped: {kind:?} is not an Istio security policy"))),
            }
        }
    }
    if inputs == 0 {
        return Err("no RequestAuthentication or AuthorizationPolicy found in the input".into());
    }
    if im.providers.is_empty() {
        return Err("no RequestAuthentication jwtRules found: claimguard needs at least one issuer".into());
    }
    let distinct: Vec<&Option<Value>> = im.selectors.iter().fold(Vec::new(), |mut acc, (s, _)| {
        if !acc.contains(&s) {
            acc.push(s);
        }
        acc
    });
    let selector = match distinct.as_slice() {
        [one] => (*one).clone(),
        _ => {
            let listed: Vec<String> = im
                .selectors
                .iter()
                .map(|(s, w)| {
                    format!(
                        "{w}: {}",
                        s.as_ref()
                            .map(Value::to_string)
                            .unwrap_or_else(|| "namespace-wide".into())
                    )
                })
                .collect();
            im.untranslated.push(json!({"path": "spec.selector", "message": format!(
                "not translated: the inputs select different workloads ({}); the {} has no selector, import each workload's policies separately",
                listed.join("; "), a.kind.name())}));
            None
        }
    };
    let namespace = match (&a.namespace, im.namespaces.as_slice()) {
        (Some(n), _) => Some(n.clone()),
        (None, []) => None,
        (None, [one]) => Some(one.clone()),
        (None, many) => {
            im.untranslated
                .push(json!({"path": "metadata.namespace", "message": format!(
                "not translated: the inputs come from several namespaces ({}); give --namespace", many.join(", "))}));
            None
        }
    };
    // An ALLOW rule that counts for the enforced (dry_run false) or the shadow decision.
    let allow_rule = |r: &Value, dry_run: bool| r.get("action").is_none() && r.get("dryRun").is_some() == dry_run;
    if im.allow_policy && !im.rules.iter().any(|r| allow_rule(r, false)) {
        // Istio: with an ALLOW policy present, a request no ALLOW rule matches is denied. None
        // survived translation (or the policy allows nothing): deny everything explicitly, or
        // claimguard, having no ALLOW rule, would admit every request.
        im.rules.push(json!({"name": "istio-allow-nothing", "action": "DENY"}));
        im.notes.push(json!({"path": "rules", "message":
            "an ALLOW policy exists but no ALLOW rule could be carried over: added DENY rule istio-allow-nothing, which refuses every request as Istio would"}));
    }
    if im.allow_policy_dry_run && !im.rules.iter().any(|r| allow_rule(r, true)) {
        // The same for Istio's shadow decision: a dry-run ALLOW policy nothing of which
        // survived would log every request as denied.
        im.rules
            .push(json!({"name": "istio-allow-nothing-dry-run", "action": "DENY", "dryRun": true}));
        im.notes.push(json!({"path": "rules", "message":
            "a dry-run ALLOW policy exists but none of its rules could be carried over: added dry-run DENY rule istio-allow-nothing-dry-run, which logs every request as denied, as Istio's shadow rules would"}));
    }
    let mut plugin_config = json!({"providers": im.providers});
    if !im.rules.is_empty() {
        plugin_config["rules"] = json!(im.rules);
    }
    let mut metadata = json!({"name": a.name});
    if let Some(ns) = &namespace {
        metadata["namespace"] = json!(ns);
    }
    let target = Target {
        namespace: namespace.clone(),
        selector: selector.as_ref().and_then(Value::as_object).cloned(),
        target_refs: None,
    };
    let mut outer = Map::new();
    outer.insert("phase".into(), json!("AUTHN"));
    if let Some(s) = &selector {
        outer.insert("selector".into(), json!({"matchLabels": s}));
    }
    if target.sidecars() {
        // An AuthorizationPolicy on a sidecar governs inbound requests only; without a match
        // the plugin would also run on the pod's outbound listeners.
        outer.insert("match".into(), json!([{"mode": "SERVER"}]));
    } else {
        im.notes.push(json!({"path": "spec.match", "message": format!(
            "not set: the selector ({}) picks a gateway, whose traffic Istio treats as CLIENT (mode SERVER would take the filter off it)",
            target.describe())}));
    }
    let mut module = Map::new();
    module.insert("url".into(), json!(a.url));
    module.insert("failStrategy".into(), json!("FAIL_CLOSE"));
    module.insert("pluginConfig".into(), plugin_config.clone());
    let spec = a.kind.spec(outer, module);
    let plugin = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": a.kind.name(),
                        "metadata": metadata, "spec": spec});
    let manifest = Manifest {
        kind: a.kind,
        spec,
        target,
    };
    // What `claimguard check` would say about the result: the filter's own validation.
    let (valid, check_warnings) = match Config::from_json(plugin_config.to_string().as_bytes()) {
        Ok(cfg) => {
            // Istio's policies stay applied until this plugin replaces them: what to change
            // meanwhile, as `check` says it about both together.
            let advice = coexistence_warning(&cfg, &manifest, &im.security).unwrap_or_else(|| {
                "the imported Istio policies can stay applied beside this plugin during a migration (every provider has forwardOriginalToken: true); remove them once claimguard alone enforces".into()
            });
            im.notes.push(json!({"path": "migration", "message": advice}));
            (Ok(()), risk_warnings(&cfg, &plugin_config, Some(&manifest)))
        }
        Err(e) => (Err(e.to_string()), Vec::new()),
    };
    let yaml = serde_yaml_ng::to_string(&plugin).map_err(|e| e.to_string())?;
    let yaml = format!(
        "# Generated by claimguard import-istio from {}.\n{yaml}",
        a.files.iter().map(|f| display_name(f)).collect::<Vec<_>>().join(", ")
    );
    if let Some(out) = &a.output {
        std::fs::write(out, &yaml).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let ok = im.untranslated.is_empty() && valid.is_ok();
    if a.json.json {
        let key = match a.kind {
            PluginKind::WasmPlugin => "wasmPlugin",
            PluginKind::TrafficExtension => "trafficExtension",
        };
        let out = json!({"ok": ok, "kind": a.kind.name(), key: plugin, "yaml": yaml, "untranslated": im.untranslated,
            "notes": im.notes, "check": {"valid": valid.is_ok(), "error": valid.as_ref().err(), "warnings": check_warnings}});
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    } else {
        if a.output.is_none() {
            print!("{yaml}");
        }
        for n in &im.notes {
            if n.get("file").is_some() {
                eprintln!("note: {}", text(n));
            } else {
                eprintln!(
                    "note: {}: {}",
                    n["path"].as_str().unwrap_or(""),
                    n["message"].as_str().unwrap_or("")
                );
            }
        }
        for u in &im.untranslated {
            if u.get("file").is_some() {
                eprintln!("untranslated: {}", text(u));
            } else {
                eprintln!(
                    "untranslated: {}: {}",
                    u["path"].as_str().unwrap_or(""),
                    u["message"].as_str().unwrap_or("")
                );
            }
        }
        match &valid {
            Ok(()) => {
                eprintln!("check: the generated plugin config is valid");
                for w in &check_warnings {
                    eprintln!("check: warning: {w}");
                }
            }
            Err(e) => eprintln!("check: the generated plugin config is NOT valid: {e}"),
        }
        if !im.untranslated.is_empty() {
            eprintln!(
                "import-istio: {} construct(s) could not be translated (see above)",
                im.untranslated.len()
            );
        }
    }
    Ok(if ok { Verdict::Ok } else { Verdict::Refused })
}
