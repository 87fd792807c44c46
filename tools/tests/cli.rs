//! The `claimguard` command, run as a user runs it (the built binary): help and exit codes,
//! `check` on every shipped config and on broken ones, `explain` against what a real Envoy
//! with the filter does for the same requests, `keygen` + `mint` + `explain` round trips,
//! `--jwks URL` through a real HTTP fetch, and `import-istio` against golden files.

#[path = "../../tests/common/mod.rs"]
mod common;

use claimguard::crypto::alg::Alg;
use claimguard_tools::jwks_server::JwksServer;
use claimguard_tools::keys::TestKey;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_claimguard");

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run claimguard")
}

fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn claimguard");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(o), stderr(o)))
}

/// A scratch directory, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("claimguard-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        Tmp(d)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8 path").to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Help and exit codes

const SUBCOMMANDS: [&str; 8] = [
    "check",
    "explain",
    "keygen",
    "mint",
    "import-istio",
    "upstream",
    "demo",
    "stats-tags",
];

#[test]
fn every_subcommand_has_help_with_the_exit_codes() {
    let top = run(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    for sub in SUBCOMMANDS {
        assert!(
            stdout(&top).contains(sub),
            "top-level help lacks {sub}:\n{}",
            stdout(&top)
        );
        let o = run(&[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{sub} --help");
        let text = stdout(&o);
        assert!(text.contains(&format!("Usage: claimguard {sub}")), "{sub}:\n{text}");
        assert!(
            text.contains("Exit status"),
            "{sub} --help documents no exit status:\n{text}"
        );
    }
    assert!(stdout(&run(&["keygen", "--help"])).contains("TEST TOOLING"));
    assert!(stdout(&run(&["mint", "--help"])).contains("TEST TOOLING"));
}

#[test]
fn usage_errors_exit_2() {
    let t = Tmp::new("usage");
    let cfg = t.write("c.json", &plugin_config().to_string());
    #[rustfmt::skip]
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage: claimguard"),
        (vec!["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (vec!["check"], "the following required arguments were not provided"),
        (vec!["check", "--bogus", "x.json"], "unexpected argument '--bogus'"),
        (vec!["explain", "--path", "/"], "--config <FILE>"),
        (vec!["explain", "--config", &cfg, "--header", "no-colon"], "must be NAME:VALUE"),
        (vec!["explain", "--config", &cfg, "--at", "yesterday"], "neither seconds since the epoch nor a UTC time"),
        (vec!["explain", "--config", &cfg, "--jwks-timeout", "soon"], "is not a duration"),
        (vec!["keygen", "--alg", "HS256"], "HS256 is HMAC"),
        (vec!["keygen", "--alg", "RS1"], "\"RS1\" is not one of"),
        (vec!["mint", "--key", "k.pem", "--iss", "i", "--ttl", "5 weeks"], "is not a duration"),
        (vec!["mint", "--key", "k.pem", "--iss", "i", "--claim", "novalue"], "must be NAME=VALUE"),
        (vec!["mint", "--key", "k.pem"], "--iss <ISS>"),
        (vec!["import-istio"], "the following required arguments were not provided"),
    ];
    for (args, want) in cases {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?}: wanted {want:?} in:\n{}",
            stderr(&o)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// check

/// Every file under `dir` (recursively) with one of the extensions.
fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            out.extend(files_under(&p, exts));
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| exts.contains(&x))
        {
            out.push(p.canonicalize().unwrap_or(p));
        }
    }
    out.sort();
    out
}

/// The files kustomizations under `dir` apply as patches (`patches[].path`,
/// `patchesStrategicMerge`), canonicalised.
fn kustomize_patches(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for k in files_under(dir, &["yaml", "yml"]) {
        if !k
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("kustomization"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&k).expect("kustomization");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("kustomization YAML");
        let base = k.parent().expect("dir");
        let mut add = |rel: &str| {
            if let Ok(p) = base.join(rel).canonicalize() {
                out.push(p);
            }
        };
        for p in v.get("patches").and_then(|p| p.as_sequence()).into_iter().flatten() {
            if let Some(path) = p.get("path").and_then(|x| x.as_str()) {
                add(path);
            }
        }
        for p in v
            .get("patchesStrategicMerge")
            .and_then(|p| p.as_sequence())
            .into_iter()
            .flatten()
        {
            if let Some(path) = p.as_str() {
                add(path);
            }
        }
    }
    out
}

#[test]
fn check_accepts_every_shipped_config() {
    // Bare plugin configs (JSON) under examples/, one by one.
    let examples: Vec<PathBuf> = files_under(&root().join("examples"), &["json"])
        .into_iter()
        // Not the Grafana dashboard, nor build output (examples/empty_filter builds a module).
        .filter(|p| {
            !p.components()
                .any(|c| c.as_os_str() == "grafana" || c.as_os_str() == "target")
        })
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for f in &examples {
        let o = run(&["check", f.to_str().expect("path")]);
        assert_eq!(o.status.code(), Some(0), "{}: {}", f.display(), stderr(&o));
        assert!(stdout(&o).contains(": OK"), "{}", stdout(&o));
    }
    // Kubernetes YAML under istio/ and examples/ (kustomize bases, overlays, components):
    // kustomization files and other kinds are skipped, every WasmPlugin found must be valid.
    // Patch files (partial objects a kustomization applies) are not manifests on their own.
    let mut patches = kustomize_patches(&root().join("istio"));
    patches.extend(kustomize_patches(&root().join("examples")));
    let mut yaml = files_under(&root().join("istio"), &["yaml", "yml"]);
    yaml.extend(files_under(&root().join("examples"), &["yaml", "yml"]));
    yaml.retain(|p| !patches.contains(p));
    if !yaml.is_empty() {
        let mut args = vec!["check", "--json"];
        args.extend(yaml.iter().map(|p| p.to_str().expect("path")));
        let o = run(&args);
        let v = json_out(&o);
        assert_eq!(o.status.code(), Some(0), "{v:#}");
        assert!(v["summary"]["configs"].as_u64() >= Some(1), "{v:#}");
        assert_eq!(v["summary"]["invalid"], 0, "{v:#}");
    }
}

const WASMPLUGIN_STREAM: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: orders
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: orders-auth
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  match:
  - mode: SERVER
  url: oci://registry.example.com/claimguard/claimguard:0.1.0
  phase: AUTHN
  failStrategy: FAIL_CLOSE
  pluginConfig:
    providers:
    - name: idp
      issuer: https://idp.example.com
      audiences: [orders-api]
      jwksUri: https://idp.example.com/keys
    rules:
    - name: readers
      paths: ["/orders*"]
      when:
      - claim: scope
        values: ["orders:read"]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: reports-auth
  namespace: shop
spec:
  url: oci://registry.example.com/claimguard/claimguard:0.1.0
  pluginConfig:
    providers:
    - issuer: https://idp.example.com
      jwksUri: https://idp.example.com/keys
      audiences: [reports]
    rules:
    - name: a
      paths: ["/a"]
    - name: b
      paths: ["/b"]
    - name: c
      when:
      - values: ["x"]
"#;

#[test]
fn check_names_file_document_plugin_and_field_of_each_error() {
    let t = Tmp::new("broken");
    let stream = t.write("stream.yaml", WASMPLUGIN_STREAM);
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, String)> = vec![
        ("unknown-field.json",
         r#"{"providers":[{"issuer":"https://i","jwks":{"keys":[]},"fromHeader":[]}]}"#,
         "unknown-field.json: providers[0].fromHeader: unknown field `fromHeader`".into()),
        ("empty.json", "{}", "empty.json: missing field `providers`".into()),
        ("no-key.json", r#"{"providers":[{"issuer":"https://i","jwks":{"keys":[]}}]}"#,
         "no-key.json: providers[0].jwks: no usable verification key".into()),
        ("bad-mode.json", r#"{"providers":[{"issuer":"https://i","jwksUri":"https://i/k"}],"mode":"audit"}"#,
         "bad-mode.json: mode: \"audit\" is not one of enforce, dryRun".into()),
        ("bad-duration.json", r#"{"providers":[{"issuer":"https://i","jwksUri":"https://i/k","maxStale":"forever"}]}"#,
         "bad-duration.json: providers[0].maxStale: \"forever\" is not a duration".into()),
        ("bad-json.json", r#"{"providers": ["#, "bad-json.json: invalid JSON".into()),
        ("bad-yaml.yaml", "kind: WasmPlugin\nspec: [unclosed\n", "bad-yaml.yaml: document 1: invalid YAML".into()),
        ("no-plugin-config.yaml",
         "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: bare\nspec:\n  url: oci://x/y:1\n",
         "no-plugin-config.yaml: document 1 (WasmPlugin \"bare\"): spec.pluginConfig: is missing".into()),
    ];
    for (name, text, want) in &cases {
        let p = t.write(name, text);
        let o = run(&["check", &p]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stdout(&o));
        assert!(
            stderr(&o).contains(want.as_str()),
            "{name}: wanted {want:?} in:\n{}",
            stderr(&o)
        );
    }

    // A multi-document stream: the valid plugin passes, the broken one is named by document,
    // WasmPlugin name and field path.
    let o = run(&["check", "-v", &stream]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("document 2 (WasmPlugin \"orders-auth\"): OK"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("document 1 (ServiceAccount \"orders\"): skipped: ServiceAccount, not a WasmPlugin"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains(
            "stream.yaml: document 3 (WasmPlugin \"reports-auth\"): rules[2].when[0].claim: is required (or key, in Istio's request.auth.claims[...] form)"
        ),
        "{}",
        stderr(&o)
    );

    // The same stream on stdin (as from `kustomize build | claimguard check -`), as JSON.
    let o = run_stdin(&["check", "--json", "-"], WASMPLUGIN_STREAM);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    let docs = &v["files"][0]["documents"];
    assert_eq!(v["files"][0]["file"], "<stdin>");
    assert_eq!(docs[0]["status"], "skipped");
    assert_eq!(docs[1]["status"], "ok");
    assert_eq!(docs[1]["name"], "orders-auth");
    assert_eq!(docs[2]["status"], "invalid");
    assert_eq!(docs[2]["document"], 3);
    assert_eq!(docs[2]["name"], "reports-auth");
    assert_eq!(docs[2]["error"]["path"], "rules[2].when[0].claim");
    assert_eq!(
        v["summary"],
        json!({"configs": 2, "invalid": 1, "warnings": 0, "skipped": 1})
    );

    // Nothing to check at all is a failure, not a silent success.
    let svc = t.write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n");
    let o = run(&["check", &svc]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no plugin config found"), "{}", stderr(&o));
    let o = run(&["check", &t.path("missing.json")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.json: No such file"), "{}", stderr(&o));
}

#[test]
fn check_warns_about_risky_settings() {
    let t = Tmp::new("risky");
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NTY3ODkw";
    let yaml = format!(
        r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: risky
spec:
  url: https://example.com/claimguard.wasm
  failStrategy: FAIL_OPEN
  pluginConfig:
    mode: dryRun
    decisionHeader: true
    providers:
    - name: remote
      issuer: http://idp.internal
      jwksUri: http://idp.internal/keys
      maxStale: 72h
      allowMissing: true
      requireExpiration: false
      clockSkewSeconds: 600
    - name: shared-secret
      issuer: https://hs.example.com
      audiences: [api]
      algorithms: [HS256]
      hmacSecret: {secret}
    rules:
    - name: readers
      when:
      - claim: scope
        values: [read]
"#
    );
    let p = t.write("risky.yaml", &yaml);
    let o = run(&["check", &p]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "warning: providers[0]: no audiences or clientIds configured, so the aud claim is not checked",
        "warning: spec.failStrategy: FAIL_OPEN lets every request through",
        "warning: spec.sha256: not set",
        "warning: providers[1].hmacSecret: a shared secret in the plugin config",
        "warning: providers[0].maxStale: 72h keeps serving keys",
        "warning: providers[0].jwksUri: keys are fetched over plain http from idp.internal",
        "warning: providers[0].requireExpiration: false accepts tokens without exp",
        "warning: providers[0].clockSkewSeconds: 600s",
        "warning: providers[0].allowMissing: requests without a token pass, and no enforced ALLOW rule requires one",
        "warning: mode: dryRun: no rule is enforced",
        "warning: decisionHeader: tells every client why it was refused",
        "warning: spec.match: no match, so Istio's default mode CLIENT_AND_SERVER applies: the filter also runs on the outbound listeners of every sidecar of the namespace (no selector)",
    ] {
        assert!(text.contains(want), "wanted {want:?} in:\n{text}");
    }
    let o = run(&["check", "--deny-warnings", &p]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&run(&["check", "--json", &p]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["summary"]["warnings"], 12, "{v:#}");

    // The shipped example with a plain, careful config has no warnings.
    let o = run(&[
        "check",
        "--deny-warnings",
        root().join("examples/config.json").to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

/// A claimguard plugin manifest: `kind` WasmPlugin or TrafficExtension, `outer` the spec
/// fields beside the module (selector, match, phase, ...), `module` url/failStrategy/... and
/// `plugin_config` (the module fields sit under spec.wasm in a TrafficExtension).
fn plugin_manifest(kind: &str, name: &str, outer: Value, module: Value, plugin_config: Value) -> Value {
    let mut module = module;
    module["pluginConfig"] = plugin_config;
    let mut spec = outer;
    if kind == "TrafficExtension" {
        spec["wasm"] = module;
    } else {
        for (k, v) in module.as_object().expect("object") {
            spec[k] = v.clone();
        }
    }
    json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": kind,
           "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

fn yaml_stream(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn careful_config(forward: bool) -> Value {
    json!({"providers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["orders-api"],
                          "jwksUri": "https://idp.example.com/keys", "forwardOriginalToken": forward}]})
}

/// Every warning of every plugin document in a `check --json` report.
fn check_warnings(v: &Value) -> Vec<String> {
    v["files"]
        .as_array()
        .expect("files")
        .iter()
        .flat_map(|f| f["documents"].as_array().cloned().unwrap_or_default())
        .flat_map(|d| d["warnings"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn check_accepts_traffic_extensions_like_wasmplugins() {
    let t = Tmp::new("traffic-extension");
    let sidecar =
        json!({"selector": {"matchLabels": {"app": "orders"}}, "match": [{"mode": "SERVER"}], "phase": "AUTHN"});
    let oci = json!({"url": "oci://registry.example.com/claimguard/claimguard:0.1.0", "failStrategy": "FAIL_CLOSE"});
    let good = plugin_manifest(
        "TrafficExtension",
        "orders-auth",
        sidecar.clone(),
        oci.clone(),
        careful_config(false),
    );
    let mut typo = careful_config(false);
    typo["rules"] = json!([{"name": "r", "when": [{"values": ["x"]}]}]);
    let bad = plugin_manifest("TrafficExtension", "bad-rule", sidecar.clone(), oci.clone(), typo);
    let mut no_config = good.clone();
    no_config["metadata"]["name"] = json!("no-config");
    no_config["spec"]["wasm"]
        .as_object_mut()
        .expect("wasm")
        .remove("pluginConfig");
    let lua = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
                     "metadata": {"name": "headers"}, "spec": {"lua": {"inlineCode": "function envoy_on_request(h) end"}}});
    let neither = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
                         "metadata": {"name": "empty"}, "spec": {"phase": "AUTHN"}});
    let stream = t.write("te.yaml", &yaml_stream(&[good.clone(), bad, no_config, lua, neither]));
    let o = run(&["check", "-v", &stream]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.contains("te.yaml: document 1 (TrafficExtension \"orders-auth\"): OK"),
        "{out}"
    );
    assert!(
        out.contains("te.yaml: document 4 (TrafficExtension \"headers\"): skipped: TrafficExtension with a Lua filter, not WebAssembly"),
        "{out}"
    );
    for want in [
        "te.yaml: document 2 (TrafficExtension \"bad-rule\"): rules[0].when[0].claim: is required",
        "te.yaml: document 3 (TrafficExtension \"no-config\"): spec.wasm.pluginConfig: is missing",
        "te.yaml: document 5 (TrafficExtension \"empty\"): spec.wasm: is missing: a TrafficExtension needs exactly one of wasm or lua",
    ] {
        assert!(err.contains(want), "wanted {want:?} in:\n{err}");
    }
    // A careful TrafficExtension has no warnings; the module's own settings are read (and
    // named) under spec.wasm.
    let o = run_stdin(&["check", "--deny-warnings", "-"], &yaml_stream(&[good]));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let risky = plugin_manifest(
        "TrafficExtension",
        "risky",
        sidecar,
        json!({"url": "https://example.com/claimguard.wasm", "failStrategy": "FAIL_OPEN"}),
        careful_config(false),
    );
    let v = json_out(&run_stdin(&["check", "--json", "-"], &yaml_stream(&[risky])));
    assert_eq!(
        check_warnings(&v),
        vec![
            "spec.wasm.failStrategy: FAIL_OPEN lets every request through, unauthenticated, when the filter fails to load or crashes",
            "spec.wasm.sha256: not set, so the module downloaded from spec.wasm.url is not pinned",
        ],
        "{v:#}"
    );
}

#[test]
fn check_warns_about_a_sidecar_plugin_without_match_server() {
    let oci = json!({"url": "oci://registry.example.com/claimguard/claimguard:0.1.0", "failStrategy": "FAIL_CLOSE"});
    let orders = json!({"matchLabels": {"app": "orders"}});
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("selector, no match", json!({"selector": orders}),
         Some("spec.match: no match, so Istio's default mode CLIENT_AND_SERVER applies: the filter also runs on the outbound listeners of the sidecar it selects (selector app=orders), demanding a token for this workload's audience on every call the application makes and removing their Authorization header; add match: [{mode: SERVER}]")),
        ("no selector", json!({}), Some("outbound listeners of every sidecar of the namespace (no selector)")),
        ("CLIENT_AND_SERVER", json!({"selector": orders, "match": [{"mode": "CLIENT_AND_SERVER"}]}),
         Some("spec.match: a match that is not only mode SERVER")),
        ("SERVER and CLIENT", json!({"selector": orders, "match": [{"mode": "SERVER"}, {"mode": "CLIENT"}]}),
         Some("spec.match: a match that is not only mode SERVER")),
        ("ports only", json!({"selector": orders, "match": [{"ports": [{"number": 8080}]}]}),
         Some("spec.match: a match that is not only mode SERVER")),
        ("SERVER", json!({"selector": orders, "match": [{"mode": "SERVER"}]}), None),
        ("SERVER with ports", json!({"selector": orders, "match": [{"mode": "SERVER", "ports": [{"number": 8080}]}]}), None),
        ("gateway targetRefs", json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shop"}]}), None),
        ("gateway selector", json!({"selector": {"matchLabels": {"istio": "ingressgateway"}}}), None),
    ];
    for kind in ["WasmPlugin", "TrafficExtension"] {
        for (what, outer, want) in &cases {
            let m = plugin_manifest(kind, "p", outer.clone(), oci.clone(), careful_config(false));
            let o = run_stdin(&["check", "--json", "-"], &yaml_stream(&[m]));
            assert_eq!(o.status.code(), Some(0), "{kind} {what}: {}", stderr(&o));
            let ws = check_warnings(&json_out(&o));
            match want {
                Some(w) => assert!(
                    ws.len() == 1 && ws[0].contains(w),
                    "{kind} {what}: wanted {w:?} in {ws:?}"
                ),
                None => assert!(ws.is_empty(), "{kind} {what}: {ws:?}"),
            }
            // As every warning: exit 1 with --deny-warnings.
            let o = run_stdin(
                &["check", "--deny-warnings", "-"],
                &yaml_stream(&[plugin_manifest(
                    kind,
                    "p",
                    outer.clone(),
                    oci.clone(),
                    careful_config(false),
                )]),
            );
            assert_eq!(
                o.status.code(),
                Some(if want.is_some() { 1 } else { 0 }),
                "{kind} {what}"
            );
        }
    }
}

#[test]
fn check_says_what_to_change_beside_istio_security() {
    let t = Tmp::new("coexist");
    let oci = json!({"url": "oci://registry.example.com/claimguard/claimguard:0.1.0", "failStrategy": "FAIL_CLOSE"});
    let sidecar = |phase: &str| json!({"selector": {"matchLabels": {"app": "orders"}}, "match": [{"mode": "SERVER"}], "phase": phase});
    let plugin = |forward: bool, phase: &str| {
        plugin_manifest(
            "WasmPlugin",
            "orders-auth",
            sidecar(phase),
            oci.clone(),
            careful_config(forward),
        )
    };
    let policy = |name: &str, ns: &str, app: &str, extra: Value| {
        let mut p = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": {"name": name, "namespace": ns},
                           "spec": {"selector": {"matchLabels": {"app": app}},
                                    "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                p[k] = v.clone();
            }
        }
        p
    };
    let require_jwt = policy("require-jwt", "shop", "orders", json!({}));
    let ra = json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                    "metadata": {"name": "jwt", "namespace": "shop"},
                    "spec": {"jwtRules": [{"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/keys"}]}});
    let advice = "Set forwardOriginalToken: true on those providers while both run, or remove these Istio policies once claimguard alone enforces";
    let denies = "AuthorizationPolicy \"shop/require-jwt\" (spec.rules[0].from[0].source.requestPrincipals) never matches, so the requests it admitted get 403, because claimguard runs first (phase AUTHN, before Istio's jwt_authn) and removes the token of provider(s) \"idp\"";
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Value>, Option<&str>)> = vec![
        ("requestPrincipals beside a stripping provider", vec![plugin(false, "AUTHN"), require_jwt.clone()], Some(denies)),
        ("a RequestAuthentication (namespace-wide)", vec![plugin(false, "AUTHN"), ra.clone()],
         Some("Istio's own security for this workload: RequestAuthentication \"shop/jwt\" verifies nothing")),
        ("a DENY on notRequestPrincipals",
         vec![plugin(false, "AUTHN"), json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "deny-anon", "namespace": "shop"},
                 "spec": {"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/admin/*"]}}]}]}})],
         Some("DENY AuthorizationPolicy \"shop/deny-anon\" (spec.rules[0].from[0].source.notRequestPrincipals) sees every request as anonymous")),
        ("a when on request.auth.claims",
         vec![plugin(false, "AUTHN"), policy("admins", "istio-system", "orders",
             json!({"spec": {"selector": {"matchLabels": {"app": "orders"}}, "rules": [{"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]}]}}))],
         Some("ALLOW AuthorizationPolicy \"istio-system/admins\" (spec.rules[0].when[0] request.auth.claims[groups]) sees every request as anonymous")),
        ("providers forward the token", vec![plugin(true, "AUTHN"), require_jwt.clone(), ra.clone()], None),
        ("another workload", vec![plugin(false, "AUTHN"), policy("p", "shop", "reports", json!({}))], None),
        ("another namespace", vec![plugin(false, "AUTHN"), policy("p", "web", "orders", json!({}))], None),
        ("a dry-run policy", vec![plugin(false, "AUTHN"),
             policy("p", "shop", "orders", json!({"metadata": {"name": "p", "namespace": "shop", "annotations": {"istio.io/dry-run": "true"}}}))], None),
        ("claimguard after Istio's authentication (phase AUTHZ)", vec![plugin(false, "AUTHZ"), require_jwt.clone(), ra.clone()], None),
        ("a policy that does not read the token", vec![plugin(false, "AUTHN"),
             policy("p", "shop", "orders", json!({"spec": {"selector": {"matchLabels": {"app": "orders"}}, "rules": [{"from": [{"source": {"namespaces": ["web"]}}]}]}}))], None),
    ];
    for (what, docs, want) in &cases {
        let o = run_stdin(&["check", "--json", "-"], &yaml_stream(docs));
        assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        let v = json_out(&o);
        let ws = check_warnings(&v);
        match want {
            Some(w) => {
                assert_eq!(ws.len(), 1, "{what}: {ws:?}");
                assert!(
                    ws[0].contains(w) && ws[0].ends_with(advice),
                    "{what}: wanted {w:?} in {ws:?}"
                );
            }
            None => assert!(ws.is_empty(), "{what}: {ws:?}"),
        }
    }

    // Across files (the plugin in one, Istio's policies in another), in text, and as a warning
    // for --deny-warnings.
    let plugin_file = t.write("plugin.yaml", &yaml_stream(&[plugin(false, "AUTHN")]));
    let policy_file = t.write("policies.yaml", &yaml_stream(std::slice::from_ref(&require_jwt)));
    let o = run(&["check", "-v", &plugin_file, &policy_file]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("  warning: Istio's own security for this workload: {denies}")),
        "{out}"
    );
    assert!(
        out.contains("policies.yaml: document 1 (AuthorizationPolicy \"require-jwt\"): skipped: AuthorizationPolicy, Istio's own security (selector app=orders)"),
        "{out}"
    );
    assert!(
        out.contains("checked 1 plugin config(s): 0 invalid, 1 warning(s), 1 document(s) skipped"),
        "{out}"
    );
    let o = run(&["check", "--deny-warnings", &plugin_file, &policy_file]);
    assert_eq!(o.status.code(), Some(1));
    // A file of Istio policies alone has no plugin config to check.
    let o = run(&["check", &policy_file]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no plugin config found"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// explain against a real Envoy

/// `examples/NAME` with its first provider on the shared test keys, issuer and audience (as
/// the Envoy tests run the examples).
fn example_with_test_keys(name: &str) -> Value {
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(root().join("examples").join(name)).expect(name)).expect("json");
    let k = keys();
    cfg["providers"][0]["issuer"] = json!(ISSUER);
    cfg["providers"][0]["audiences"] = json!([AUDIENCE]);
    cfg["providers"][0]["jwks"] = json!(json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string());
    cfg
}

/// examples/policy.json with the shared test keys (as tests/envoy_policy.rs runs it).
fn policy_config() -> Value {
    let mut cfg = example_with_test_keys("policy.json");
    cfg["providers"][0]["outputClaimToHeaders"] = json!([{"header": "x-user", "claim": "sub"}]);
    cfg
}

fn policy_token(extra: Value) -> String {
    let mut c = good_claims();
    let m = c.as_object_mut().expect("object");
    m.remove("scope");
    m.extend(extra.as_object().expect("object").clone());
    keys().ec.sign(&c)
}

/// (what, method, path, token, status, reason)
type EnvoyCase<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, u16, &'a str);

#[test]
fn explain_predicts_what_envoy_does() {
    let cfg = policy_config();
    let t = Tmp::new("envoy");
    let cfg_path = t.write("policy.json", &cfg.to_string());
    let stack = Stack::start(&cfg);
    let reader = policy_token(json!({"scope": "openid orders:read"}));
    let blocked = policy_token(json!({"scope": "orders:read", "tenant": "blocked-co"}));
    let expired = keys().ec.sign(&with(good_claims(), "exp", json!(1)));
    let stranger = keys().stranger_rsa.sign(&good_claims());
    #[rustfmt::skip]
    let cases: Vec<EnvoyCase> = vec![
        ("reader reads", "GET", "/orders/42", Some(&reader), 200, "none"),
        ("public health", "GET", "/healthz", None, 200, "none"),
        ("no token", "GET", "/orders", None, 401, "missing_token"),
        ("expired", "GET", "/orders", Some(&expired), 401, "expired"),
        ("forged signature", "GET", "/orders", Some(&stranger), 401, "bad_signature"),
        ("reader cannot write", "POST", "/orders", Some(&reader), 403, "insufficient_scope"),
        ("blocked tenant", "GET", "/orders/42", Some(&blocked), 403, "policy_denied"),
        ("escaped slash", "GET", "/admin%2Fusers", Some(&reader), 400, "bad_path"),
    ];
    for (name, method, path, token, want, reason) in cases {
        let mut args = vec![
            "explain", "--json", "--config", &cfg_path, "--method", method, "--path", path,
        ];
        if let Some(tok) = token {
            args.extend(["--token", tok]);
        }
        let o = run(&args);
        let ex = json_out(&o);
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = claimguard_tools::http::request(stack.envoy.port, method, path, &headers).expect("request");

        assert_eq!(r.status, want, "{name}: Envoy said {r:?}");
        assert_eq!(ex["status"], want, "{name}: explain said {ex:#}");
        assert_eq!(o.status.code(), Some(if want == 200 { 0 } else { 1 }), "{name}");
        assert_eq!(ex["reasonCode"], reason, "{name}: {ex:#}");
        if want == 200 {
            // The upstream received exactly the headers explain predicted, and not the removed ones.
            let echoed = r.json();
            for h in ex["upstreamHeaders"].as_array().expect("array") {
                let (k, v) = (h[0].as_str().expect("k"), h[1].as_str().expect("v"));
                assert_eq!(echoed["headers"][k], v, "{name}: {echoed:#}");
            }
            for k in ex["removedHeaders"].as_array().expect("array") {
                assert!(
                    echoed["headers"].get(k.as_str().expect("k")).is_none(),
                    "{name}: {echoed:#}"
                );
            }
        } else {
            // The same local reply: body and WWW-Authenticate.
            let body: Value = serde_json::from_str(ex["body"].as_str().expect("body")).expect("body json");
            assert_eq!(r.json(), body, "{name}");
            let www = ex["responseHeaders"]
                .as_array()
                .expect("array")
                .iter()
                .find(|h| h[0] == "www-authenticate")
                .map(|h| h[1].as_str().expect("v").to_string());
            assert_eq!(r.header("www-authenticate").map(str::to_owned), www, "{name}");
        }
    }
}

#[test]
fn explain_traces_each_step_rule_and_header() {
    let cfg = policy_config();
    let t = Tmp::new("trace");
    let cfg_path = t.write("policy.json", &cfg.to_string());
    let explain = |method: &str, path: &str, token: &str, extra: &[&str]| {
        let mut args = vec![
            "explain", "--config", &cfg_path, "--method", method, "--path", path, "--token", token,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let reader = policy_token(json!({"scope": "openid orders:read"}));
    let o = explain("GET", "/orders/42", &reader, &[]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    for want in [
        "[ok  ] token      found in header authorization (\"Bearer \" prefix)",
        "[ok  ] parse      header alg ES256, kid \"ec-2024\", typ JWT",
        &format!("[ok  ] provider   iss \"{ISSUER}\" selects \"corp-idp\""),
        "[ok  ] keys       provider \"corp-idp\": 2 key(s)",
        "[ok  ] algorithm  ES256 is in the provider's algorithms (RS256, ES256)",
        "[ok  ] key        kid \"ec-2024\" with ES256 selects EC P-256 (kid ec-2024)",
        "[ok  ] signature  valid ES256 signature",
        &format!("[ok  ] iss        \"{ISSUER}\", provider issuer \"{ISSUER}\""),
        "[ok  ] exp        exp ",
        &format!("[ok  ] aud        aud \"{AUDIENCE}\" against audiences [\"{AUDIENCE}\"]"),
        "DENY blocked-tenant: when[0] (tenant) does not hold",
        "ALLOW readers: matched",
        "policy:   allow (rule \"readers\")",
        "decision: allow (200)",
        "upstream header: x-user: alice",
        "removed header:  authorization",
    ] {
        assert!(text.contains(want), "wanted {want:?} in:\n{text}");
    }

    // 401: the failing step is marked and the trace stops there.
    let o = explain("GET", "/orders", &keys().stranger_rsa.sign(&good_claims()), &[]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text.contains("[ok  ] key        kid \"rsa-2024\" with RS256 selects RSA-2048"),
        "{text}"
    );
    assert!(text.contains("[FAIL] signature  token signature is invalid"), "{text}");
    assert!(!text.contains("] iss "), "{text}");
    assert!(text.contains("decision: deny (401)"), "{text}");
    assert!(
        text.contains("response header: www-authenticate: Bearer realm=\"orders-api\", error=\"invalid_token\""),
        "{text}"
    );

    let unknown_kid = TestKey::generate(Alg::ES256, "rotated-away").sign(&good_claims());
    let o = explain("GET", "/orders", &unknown_kid, &["--json"]);
    let v = json_out(&o);
    let last = v["steps"].as_array().expect("steps").last().expect("a step").clone();
    assert_eq!(
        last,
        json!({"step": "key", "ok": false, "detail": "token is signed with an unknown key (kid) (2 key(s) in the set)"})
    );

    // A token of an issuer nobody configured.
    let other = keys().ec.sign(&with(good_claims(), "iss", json!("https://elsewhere")));
    let v = json_out(&explain("GET", "/orders", &other, &["--json"]));
    assert_eq!(v["reasonCode"], "unknown_issuer");
    assert_eq!(v["steps"][2]["step"], "provider");
    assert_eq!(v["steps"][2]["ok"], false);

    // --at moves the clock: an hour later the token has expired; RFC 3339 works too.
    let later = (now() + 3600).to_string();
    let o = explain("GET", "/orders/42", &reader, &["--at", &later]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("[FAIL] exp        token has expired: exp "),
        "{}",
        stdout(&o)
    );
    let o = explain(
        "GET",
        "/orders/42",
        &reader,
        &["--at", "2001-09-09T01:46:40Z", "--json"],
    );
    let v = json_out(&o);
    assert_eq!(v["at"], 1_000_000_000u64);
    assert_eq!(v["reasonCode"], "issued_in_future");

    // 403: the rule that refused, and why the others did not admit.
    let o = explain("POST", "/orders", &reader, &["--json"]);
    let v = json_out(&o);
    assert_eq!(v["status"], 403);
    assert_eq!(v["policy"], "deny (no ALLOW rule matched)");
    assert!(
        v["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("ALLOW writers: "))),
        "{v:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// keygen, mint, --jwks URL

#[test]
fn keygen_mint_explain_round_trip_for_each_algorithm() {
    let t = Tmp::new("roundtrip");
    for alg in ["RS256", "ES256", "EdDSA"] {
        // keygen prints the private key, then the matching JWKS; it says it is test tooling.
        let o = run(&["keygen", "--alg", alg, "--kid", "dev-1"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).contains("TEST TOOLING"), "{}", stderr(&o));
        let text = stdout(&o);
        let split = text.find("\n{").expect("a JWKS after the PEM") + 1;
        let (pem, jwks) = text.split_at(split);
        assert!(
            pem.starts_with("-----BEGIN ") && pem.contains("PRIVATE KEY-----"),
            "{pem}"
        );
        let jwks_v: Value = serde_json::from_str(jwks).expect("jwks json");
        assert_eq!(jwks_v["keys"][0]["kid"], "dev-1");
        assert_eq!(jwks_v["keys"][0]["alg"], alg);
        let key = t.write(&format!("{alg}.pem"), pem);
        let jwks_path = t.write(&format!("{alg}.jwks.json"), jwks);

        let mint = run(&[
            "mint",
            "--key",
            &key,
            "--kid",
            "dev-1",
            "--iss",
            "https://dev.example",
            "--aud",
            "api",
            "--aud",
            "admin",
            "--sub",
            "bob",
            "--claim",
            "roles=[\"admin\",\"ops\"]",
            "--claim",
            "tier=3",
            "--claim",
            "team=payments",
            "--ttl",
            "15m",
        ]);
        assert_eq!(mint.status.code(), Some(0), "{}", stderr(&mint));
        assert!(stderr(&mint).contains("TEST TOOLING"));
        let token = stdout(&mint).trim().to_string();
        let t_path = t.write(&format!("{alg}.token"), &token);

        let cfg = json!({
            "providers": [{"name": "dev", "issuer": "https://dev.example", "audiences": ["api"],
                           "jwksUri": "https://dev.example/keys",
                           "outputClaimToHeaders": [{"header": "x-roles", "claim": "roles"}]}],
            "rules": [{"name": "admins", "when": [{"key": "request.auth.claims[roles]", "values": ["admin"]},
                                                  {"claim": "tier", "values": ["3"]}]}]
        });
        let cfg_path = t.write("dev.json", &cfg.to_string());
        let o = run(&[
            "explain",
            "--json",
            "--config",
            &cfg_path,
            "--jwks",
            &jwks_path,
            "--token",
            &format!("@{t_path}"),
        ]);
        let v = json_out(&o);
        assert_eq!(o.status.code(), Some(0), "{alg}: {v:#}");
        assert_eq!(v["subject"], "bob");
        assert_eq!(v["upstreamHeaders"], json!([["x-roles", "admin,ops"]]), "{alg}");
        let exp = v["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["step"] == "exp")
            .expect("exp step")
            .clone();
        // mint and explain run as separate processes, so a second boundary can fall between
        // them: the remaining lifetime is 900 s minus the (small) time the test took so far.
        let detail = exp["detail"].as_str().expect("detail");
        let left: u64 = detail
            .split("(in ")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{alg}: no remaining lifetime in {exp}"));
        assert!((890..=900).contains(&left), "{alg}: {exp}");
        let aud = v["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["step"] == "aud")
            .expect("aud")
            .clone();
        assert_eq!(
            aud["detail"],
            "aud [\"api\",\"admin\"] against audiences [\"api\"] and clientIds []"
        );

        // The same token from standard input, and a different kid that is not in the set.
        let o = run_stdin(
            &["explain", "--config", &cfg_path, "--jwks", &jwks_path, "--token", "-"],
            &token,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    }
    // --out writes files; mint infers the algorithm from the key.
    let dir = t.path("keys");
    let o = run(&["keygen", "--alg", "ES256", "--kid", "k9", "--out", &dir]);
    assert_eq!(o.status.code(), Some(0));
    let key = format!("{dir}/k9.pem");
    let token = stdout(&run(&["mint", "--key", &key, "--iss", "i", "--ttl", "30s"]))
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let o = run(&["mint", "--key", &key, "--alg", "RS256", "--iss", "i"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a RS256 key"), "{}", stderr(&o));
}

/// `mint --txn-token` (test tooling standing in for a Transaction Token Service): a token
/// typed txntoken+jwt with a fresh UUID txn, five minutes to live and the claims given, which
/// the filter's txnToken preset accepts and hands to the application; the draft's required
/// claims are insisted on, and one audience (the trust domain).
#[test]
fn mint_txn_token_makes_what_the_txn_token_preset_accepts() {
    let t = Tmp::new("txn-token");
    let dir = t.path("keys");
    let o = run(&["keygen", "--alg", "ES256", "--kid", "tts", "--out", &dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let key = format!("{dir}/tts.pem");
    let base = [
        "mint",
        "--txn-token",
        "--key",
        &key,
        "--kid",
        "tts",
        "--iss",
        "https://tts.trust-domain.example",
    ];
    let mint = |extra: &[&str]| run(&[&base[..], extra].concat());
    let o = mint(&[
        "--aud",
        "trust-domain.example",
        "--sub",
        "alice",
        "--claim",
        "scope=trade.stocks",
        "--claim",
        "req_wl=apigateway.trust-domain.example",
        "--claim",
        r#"tctx={"action":"BUY","ticker":"MSFT"}"#,
        "--claim",
        r#"rctx={"req_ip":"69.151.72.123","authn":"face"}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("TEST TOOLING"), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let part = |i: usize| -> Value {
        let seg = token.split('.').nth(i).expect("three parts");
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, seg).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    };
    let (header, claims) = (part(0), part(1));
    assert_eq!(header["typ"], "txntoken+jwt");
    assert_eq!(header["kid"], "tts");
    let txn = claims["txn"].as_str().expect("txn");
    let groups: Vec<usize> = txn.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{txn}");
    assert!(
        txn.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) && txn.as_bytes()[14] == b'4',
        "{txn}"
    );
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 300);
    assert_eq!(claims["aud"], "trust-domain.example");
    assert_eq!(claims["tctx"]["action"], "BUY");
    // Another token, another transaction.
    let again = stdout(&mint(&[
        "--aud", "td", "--sub", "a", "--claim", "scope=s", "--claim", "req_wl=w",
    ]));
    assert!(!again.contains(txn));

    let jwks = t.path("keys/jwks.json");
    let cfg = json!({
        "providers": [{"name": "txn", "preset": {"name": "txnToken"}, "issuer": "https://tts.trust-domain.example",
                       "audiences": ["trust-domain.example"], "jwksUri": "https://tts.trust-domain.example/jwks"}],
        "rules": [{"name": "buy", "when": [{"claim": "tctx.action", "values": ["BUY"]}]}]
    });
    let cfg_path = t.write("txn.json", &cfg.to_string());
    let header_arg = format!("txn-token:{token}");
    let o = run(&[
        "explain",
        "--json",
        "--config",
        &cfg_path,
        "--jwks",
        &jwks,
        "--header",
        &header_arg,
    ]);
    let v = json_out(&o);
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["txn"], txn);
    assert_eq!(
        v["upstreamHeaders"],
        json!([["x-txn-id", txn], ["x-txn-subject", "alice"]]),
        "{v:#}"
    );
    assert_eq!(v["removedHeaders"], json!([]), "the Txn-Token is passed on: {v:#}");

    // The draft's required claims, and one trust domain.
    let o = mint(&["--sub", "alice"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("a Transaction Token needs --aud TRUST_DOMAIN, --claim scope=..., --claim req_wl="),
        "{}",
        stderr(&o)
    );
    let o = mint(&[
        "--aud", "a", "--aud", "b", "--sub", "s", "--claim", "scope=x", "--claim", "req_wl=w",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("give --aud once"), "{}", stderr(&o));
    // An explicit txn and lifetime win.
    let o = mint(&[
        "--aud", "td", "--sub", "s", "--claim", "scope=x", "--claim", "req_wl=w", "--claim", "txn=tx-1", "--ttl", "30s",
    ]);
    let claims: Value = {
        let seg = stdout(&o).trim().split('.').nth(1).expect("payload").to_string();
        serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, seg).expect("b64"),
        )
        .expect("json")
    };
    assert_eq!(claims["txn"], "tx-1");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 30);
    assert!(stdout(&run(&["mint", "--help"])).contains("--txn-token"));
}

#[test]
fn explain_fetches_jwks_from_a_url_with_a_timeout() {
    let key = TestKey::generate(Alg::ES256, "served-1");
    let server = JwksServer::start(key.jwks()).expect("jwks server");
    let t = Tmp::new("url");
    let cfg = t.write("c.json", &plugin_config().to_string());
    let token = key.sign(&good_claims());
    let url = format!("http://127.0.0.1:{}/jwks.json", server.port);
    let o = run(&[
        "explain", "--config", &cfg, "--jwks", &url, "--token", &token, "--path", "/orders",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("[ok  ] key        kid \"served-1\" with ES256 selects EC P-256"),
        "{}",
        stdout(&o)
    );
    assert!(server.hits() >= 1);

    // A port nobody listens on: a clear error and exit 1, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let started = std::time::Instant::now();
    let o = run(&[
        "explain",
        "--config",
        &cfg,
        "--jwks",
        &format!("http://127.0.0.1:{port}/jwks"),
        "--jwks-timeout",
        "2s",
        "--token",
        &token,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("--jwks http://127.0.0.1:{port}/jwks:")),
        "{}",
        stderr(&o)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // A server that accepts but never answers: the timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let started = std::time::Instant::now();
    let o = run(&[
        "explain",
        "--config",
        &cfg,
        "--jwks",
        &format!("http://127.0.0.1:{port}/jwks"),
        "--jwks-timeout",
        "1s",
        "--token",
        &token,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).to_lowercase().contains("timeout") || stderr(&o).contains("timed out"),
        "{}",
        stderr(&o)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// import-istio

/// Each `tests/fixtures/istio-import/NAME.yaml` (input) has `NAME.expected.yaml` (the
/// WasmPlugin on stdout), `NAME.expected.stderr` (notes, untranslated constructs, the check)
/// and an exit status (1 when something could not be translated). UPDATE_GOLDEN=1 rewrites
/// the expected files.
#[test]
fn import_istio_matches_golden_files() {
    let dir = root().join("tests/fixtures/istio-import");
    let expected_exit = |name: &str| if name.contains("untranslatable") { 1 } else { 0 };
    let mut inputs: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && !n.ends_with(".expected.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 4, "{inputs:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for input in &inputs {
        let name = input.trim_end_matches(".yaml");
        let o = Command::new(BIN)
            .current_dir(&dir)
            .args(["import-istio", input])
            .output()
            .expect("run import-istio");
        let (out, err) = (stdout(&o), stderr(&o));
        let (yaml_path, err_path) = (
            dir.join(format!("{name}.expected.yaml")),
            dir.join(format!("{name}.expected.stderr")),
        );
        if update {
            std::fs::write(&yaml_path, &out).expect("write golden");
            std::fs::write(&err_path, &err).expect("write golden");
        }
        assert_eq!(
            out,
            std::fs::read_to_string(&yaml_path).expect("golden yaml"),
            "{name}: stdout"
        );
        assert_eq!(
            err,
            std::fs::read_to_string(&err_path).expect("golden stderr"),
            "{name}: stderr"
        );
        assert_eq!(o.status.code(), Some(expected_exit(name)), "{name}: {err}");

        // What import-istio prints passes the filter's validation in `check`.
        let c = run_stdin(&["check", "-"], &out);
        assert_eq!(c.status.code(), Some(0), "{name}: {}", stderr(&c));
        assert!(stdout(&c).contains("(WasmPlugin \"claimguard\"): OK"), "{}", stdout(&c));
    }
}

#[test]
fn import_istio_reports_every_untranslated_construct_in_json() {
    let dir = root().join("tests/fixtures/istio-import");
    let o = run(&[
        "import-istio",
        "--json",
        dir.join("untranslatable.yaml").to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    assert_eq!(v["ok"], false);
    let paths: Vec<(&str, &str)> = v["untranslated"]
        .as_array()
        .expect("array")
        .iter()
        .map(|u| (u["name"].as_str().unwrap_or(""), u["path"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("payments-allow", "spec.rules[1].to[0].operation.ports"),
            ("payments-allow", "spec.rules[2].when[0].key"),
            ("payments-deny-internal", "spec.rules[0].from[0].source.remoteIpBlocks"),
            ("payments-ext-authz", "spec.action"),
        ]
    );
    // Peer identities and the connection's address carry over; nothing that needed an
    // untranslatable condition was let through (rules[1] and rules[2] are gone), and the DENY
    // rule lost only its remoteIpBlocks.
    let rules = &v["wasmPlugin"]["spec"]["pluginConfig"]["rules"];
    assert_eq!(
        *rules,
        json!([{"name": "payments-allow.0", "principals": ["cluster.local/ns/checkout/sa/checkout"], "namespaces": ["checkout"]},
               {"action": "DENY", "name": "payments-deny-internal.0", "notIpBlocks": ["10.0.0.0/8"], "paths": ["/internal/*"]}])
    );
    assert_eq!(
        v["wasmPlugin"]["spec"]["selector"],
        json!({"matchLabels": {"app": "payments"}})
    );
    assert_eq!(v["check"]["valid"], true);

    // -o writes the same YAML the golden file holds for stdout.
    let t = Tmp::new("import-out");
    let out = t.path("plugin.yaml");
    let o = Command::new(BIN)
        .current_dir(&dir)
        .args(["import-istio", "keycloak-orders.yaml", "-o", &out])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        std::fs::read_to_string(&out).expect("written"),
        std::fs::read_to_string(dir.join("keycloak-orders.expected.yaml")).expect("golden")
    );

    // Inputs for different workloads cannot become one WasmPlugin without saying so.
    let both = [dir.join("keycloak-orders.yaml"), dir.join("multi-issuer.yaml")];
    let o = run(&[
        "import-istio",
        "--json",
        both[0].to_str().expect("p"),
        both[1].to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    let msgs: Vec<&str> = v["untranslated"]
        .as_array()
        .expect("a")
        .iter()
        .filter_map(|u| u["path"].as_str())
        .collect();
    assert_eq!(msgs, vec!["spec.selector", "metadata.namespace"], "{v:#}");
    let o = run(&["import-istio", root().join("examples/config.json").to_str().expect("p")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no RequestAuthentication or AuthorizationPolicy found"),
        "{}",
        stderr(&o)
    );
}

/// The imported Keycloak policy decides like Istio would: staff may write, customers may read,
/// health checks need no token, and a request without a token elsewhere is refused (403, as
/// Istio's RBAC filter answers when no ALLOW rule matches).
#[test]
fn imported_policy_decides_like_istio() {
    let dir = root().join("tests/fixtures/istio-import");
    let plugin = dir.join("keycloak-orders.expected.yaml");
    let plugin = plugin.to_str().expect("p");
    let key = TestKey::generate(Alg::ES256, "kc-1");
    let t = Tmp::new("imported");
    let jwks = t.write("jwks.json", &key.jwks().to_string());
    let iss = "https://keycloak.example.com/realms/shop";
    let token = |roles: Value| {
        key.sign(
            &json!({"iss": iss, "sub": "u-1", "aud": "orders-api", "exp": now() + 300,
                          "realm_access": {"roles": roles}}),
        )
    };
    let (customer, staff) = (token(json!(["customer"])), token(json!(["staff"])));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<&str>, u64)> = vec![
        ("GET", "/orders/7", Some(&customer), 200),
        ("POST", "/orders", Some(&customer), 403),
        ("POST", "/orders", Some(&staff), 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/orders/7", None, 403),
    ];
    for (method, path, tok, want) in cases {
        let mut args = vec![
            "explain", "--json", "--config", plugin, "--jwks", &jwks, "--method", method, "--path", path,
        ];
        if let Some(tok) = tok {
            args.extend(["--token", tok]);
        }
        let v = json_out(&run(&args));
        assert_eq!(v["status"], want, "{method} {path}: {v:#}");
        if want == 200 && tok.is_some() {
            // forwardOriginalToken: true keeps the token; the claim headers are added (and the
            // one whose claim is absent, x-user-email, is removed rather than passed through).
            assert_eq!(v["removedHeaders"], json!(["x-user-email"]), "{v:#}");
            assert!(
                v["upstreamHeaders"]
                    .as_array()
                    .expect("a")
                    .contains(&json!(["x-user-id", "u-1"])),
                "{v:#}"
            );
        }
    }
}

/// The rules of an `import-istio --json` report's plugin config, by name.
fn imported_rules(v: &Value) -> Vec<Value> {
    let plugin = v
        .get("wasmPlugin")
        .or_else(|| v.get("trafficExtension"))
        .expect("plugin");
    plugin
        .pointer("/spec/pluginConfig/rules")
        .or_else(|| plugin.pointer("/spec/wasm/pluginConfig/rules"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn rule<'a>(rules: &'a [Value], name: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {rules:#?}"))
}

/// An `istio.io/dry-run: "true"` policy stays dry-run: each of its rules gets `dryRun: true`,
/// so claimguard only reports what it would refuse, while the enforced policy beside it keeps
/// deciding. The shadow allow-nothing follows the same rule.
#[test]
fn import_istio_keeps_dry_run_policies_dry_run() {
    let dir = root().join("tests/fixtures/istio-import");
    let input = dir.join("dry-run.yaml");
    let input = input.to_str().expect("p");
    let o = run(&["import-istio", "--json", input]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_out(&o);
    let rules = imported_rules(&v);
    for name in ["refunds-deny-blocked.0", "payments-staff-only.0"] {
        assert_eq!(rule(&rules, name)["dryRun"], true, "{name}");
    }
    for name in ["payments-allow.0", "payments-allow.1"] {
        assert!(rule(&rules, name).get("dryRun").is_none(), "{name}");
    }
    assert_eq!(rules.len(), 4, "{rules:#?}");

    // What the imported plugin does with a token of the blocked tenant: the enforced policy
    // admits it, the dry-run DENY only shows in the shadow decision.
    let plugin = dir.join("dry-run.expected.yaml");
    let plugin = plugin.to_str().expect("p");
    let key = TestKey::generate(Alg::ES256, "login-1");
    let t = Tmp::new("import-dry-run");
    let jwks = t.write("jwks.json", &key.jwks().to_string());
    let token = key.sign(
        &json!({"iss": "https://login.example.net", "sub": "u-1", "aud": "payments",
                                  "exp": now() + 300, "tenant": "blocked-co"}),
    );
    let explain = |config: &str| {
        json_out(&run(&[
            "explain",
            "--json",
            "--config",
            config,
            "--jwks",
            &jwks,
            "--token",
            &token,
            "--path",
            "/refunds/1",
        ]))
    };
    let ex = explain(plugin);
    assert_eq!(ex["status"], 200, "{ex:#}");
    assert_eq!(ex["shadow"], "deny (DENY rule \"refunds-deny-blocked.0\")", "{ex:#}");
    // Without the annotation the same policy refuses.
    let enforced = std::fs::read_to_string(input)
        .expect("fixture")
        .replace("\"istio.io/dry-run\": \"true\"", "\"istio.io/dry-run\": \"false\"");
    let enforced_in = t.write("enforced.yaml", &enforced);
    let out = t.path("enforced-plugin.yaml");
    assert_eq!(run(&["import-istio", &enforced_in, "-o", &out]).status.code(), Some(0));
    assert_eq!(explain(&out)["status"], 403);

    // Istio's allow-nothing logic per decision: an enforced ALLOW policy whose rules could not
    // be carried over still refuses everything even though dry-run ALLOW rules exist, and a
    // dry-run allow-nothing policy refuses everything in the shadow decision only.
    let ra = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: p\nspec:\n  jwtRules:\n  - issuer: https://i.example\n    jwksUri: https://i.example/keys\n    audiences: [p]\n";
    let policy = |name: &str, dry_run: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: p\n  annotations:\n    istio.io/dry-run: \"{dry_run}\"\nspec:\n{spec}")
    };
    let only_ports = "  rules:\n  - to:\n    - operation:\n        ports: [\"8443\"]\n";
    let readers = "  rules:\n  - to:\n    - operation:\n        methods: [GET]\n";
    let o = run_stdin(
        &["import-istio", "--json", "-"],
        &format!(
            "{ra}{}{}",
            policy("ports", "false", only_ports),
            policy("readers", "true", readers)
        ),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let rules = imported_rules(&json_out(&o));
    assert_eq!(
        rules,
        vec![
            json!({"name": "readers.0", "dryRun": true, "methods": ["GET"]}),
            json!({"name": "istio-allow-nothing", "action": "DENY"})
        ]
    );
    let o = run_stdin(
        &["import-istio", "--json", "-"],
        &format!("{ra}{}", policy("nothing", "1", "  {}\n")),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        imported_rules(&json_out(&o)),
        vec![json!({"name": "istio-allow-nothing-dry-run", "action": "DENY", "dryRun": true})]
    );
    // A value Istio refuses is reported, and the policy is not made enforcing.
    let o = run_stdin(
        &["import-istio", "--json", "-"],
        &format!("{ra}{}", policy("maybe", "yes", readers)),
    );
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    assert_eq!(
        v["untranslated"][0]["path"], "metadata.annotations[istio.io/dry-run]",
        "{v:#}"
    );
    assert_eq!(
        imported_rules(&v),
        vec![json!({"name": "maybe.0", "dryRun": true, "methods": ["GET"]})]
    );
}

/// (method, path, peer SPIFFE ID without `spiffe://`, with a token, status, deciding rule)
type PeerCase<'a> = (&'a str, &'a str, Option<&'a str>, bool, u64, &'a str);

/// `serviceAccounts` and `trustDomains` (and their `not` forms) decide like Istio's matchers
/// for the identities Istio issues (`spiffe://TD/ns/NS/sa/SA`): the imported golden plugin,
/// run through `explain` with each peer.
#[test]
fn imported_peer_identities_decide_like_istio() {
    let dir = root().join("tests/fixtures/istio-import");
    let plugin = dir.join("peer-identities.expected.yaml");
    let plugin = plugin.to_str().expect("p");
    let key = TestKey::generate(Alg::ES256, "idp-1");
    let t = Tmp::new("peer-ids");
    let jwks = t.write("jwks.json", &key.jwks().to_string());
    let token =
        key.sign(&json!({"iss": "https://idp.example.com", "sub": "u-1", "aud": "orders-api", "exp": now() + 300}));
    #[rustfmt::skip]
    let cases: Vec<PeerCase> = vec![
        // serviceAccounts: any trust domain; a bare name is in the policy's namespace (shop).
        ("POST", "/orders", Some("cluster.local/ns/checkout/sa/checkout"), false, 200, "orders-callers.0"),
        ("POST", "/orders", Some("other.example/ns/shop/sa/cart"), false, 200, "orders-callers.0"),
        ("POST", "/orders", Some("cluster.local/ns/web/sa/checkout"), false, 403, ""),
        ("POST", "/orders", Some("cluster.local/ns/checkout/sa/checkout-v2"), false, 403, ""),
        ("POST", "/orders", None, false, 403, ""),
        // serviceAccounts AND trustDomains.
        ("GET", "/catalog", Some("east.example.com/ns/web/sa/frontend"), false, 200, "orders-callers.1"),
        ("GET", "/catalog", Some("cluster.local/ns/web/sa/frontend"), false, 200, "orders-callers.1"),
        ("GET", "/catalog", Some("west.example.com/ns/web/sa/frontend"), false, 403, ""),
        // trustDomains AND notServiceAccounts AND a user token.
        ("PUT", "/orders/7", Some("cluster.local/ns/app/sa/worker"), true, 200, "orders-callers.2"),
        ("PUT", "/orders/7", Some("cluster.local/ns/web/sa/legacy"), true, 403, ""),
        ("PUT", "/orders/7", Some("cluster.localhost/ns/app/sa/worker"), true, 403, ""),
        ("PUT", "/orders/7", Some("cluster.local/ns/app/sa/worker"), false, 403, ""),
        // principals AND trustDomains: only the principals in the trust domain remain.
        ("PUT", "/reports/x", Some("cluster.local/ns/batch/sa/nightly"), false, 200, "orders-callers.3"),
        ("PUT", "/reports/x", Some("legacy.example.com/ns/batch/sa/cron"), false, 403, ""),
        // DENY: the debug service account, or a peer from neither trust domain (no peer too).
        ("GET", "/admin/x", Some("cluster.local/ns/shop/sa/debug"), false, 403, "orders-no-debug.0.0.0"),
        ("GET", "/admin/x", Some("partner.example.com/ns/web/sa/frontend"), false, 403, "orders-no-debug.0.1.0"),
        ("GET", "/admin/x", None, false, 403, "orders-no-debug.0.1.0"),
        ("GET", "/admin/x", Some("cluster.local/ns/web/sa/frontend"), false, 200, "orders-callers.1"),
    ];
    for (method, path, peer, with_token, want, deciding) in cases {
        let peer_arg = peer.map(|p| format!("spiffe://{p}"));
        let mut args = vec![
            "explain", "--json", "--config", plugin, "--jwks", &jwks, "--method", method, "--path", path,
        ];
        if let Some(p) = &peer_arg {
            args.extend(["--peer-principal", p]);
        }
        if with_token {
            args.extend(["--token", &token]);
        }
        let v = json_out(&run(&args));
        let what = format!("{method} {path} from {peer:?} (token: {with_token})");
        assert_eq!(v["status"], want, "{what}: {v:#}");
        if !deciding.is_empty() {
            assert!(
                v["policy"]
                    .as_str()
                    .is_some_and(|p| p.contains(&format!("\"{deciding}\""))),
                "{what}: {}",
                v["policy"]
            );
        }
    }

    // What claimguard's patterns cannot say exactly is reported, never widened.
    let o = run(&[
        "import-istio",
        "--json",
        dir.join("peer-identities-untranslatable.yaml").to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    let paths: Vec<&str> = v["untranslated"]
        .as_array()
        .expect("a")
        .iter()
        .filter_map(|u| u["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        vec![
            "spec.rules[0].from[0].source.trustDomains",
            "spec.rules[0].from[1].source.serviceAccounts",
            "spec.rules[0].from[2].source.serviceAccounts",
            "spec.rules[0].from[0].source.trustDomains",
        ]
    );
    assert_eq!(
        imported_rules(&v),
        vec![
            json!({"name": "ledger-allow.0", "principals": ["*/ns/billing/sa/invoicer"]}),
            json!({"name": "ledger-deny.0", "action": "DENY", "paths": ["/admin/*"], "principals": ["*/ns/web/sa/frontend"]}),
        ]
    );
    // A bare service account takes the policy's namespace, else --namespace, else it is reported.
    let ns_less = std::fs::read_to_string(dir.join("peer-identities.yaml"))
        .expect("fixture")
        .replace("  namespace: shop\n", "");
    let o = run_stdin(&["import-istio", "--json", "-"], &ns_less);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    assert!(
        v["untranslated"]
            .as_array()
            .expect("a")
            .iter()
            .any(|u| u["path"] == "spec.rules[0].from[0].source.serviceAccounts"
                && u["message"].as_str().is_some_and(|m| m.contains("give --namespace"))),
        "{v:#}"
    );
    let o = run_stdin(&["import-istio", "--json", "--namespace", "shop", "-"], &ns_less);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        imported_rules(&json_out(&o)),
        imported_rules(&json_out(&run(&[
            "import-istio",
            "--json",
            dir.join("peer-identities.yaml").to_str().expect("p")
        ])))
    );
}

/// `--kind TrafficExtension`: the same plugin in Istio's successor API, every field where
/// the TrafficExtension CRD (istio/api `kubernetes/customresourcedefinitions.gen.yaml`,
/// `extensions/v1alpha1/traffic_extension.proto`) has it: selector, targetRefs, phase,
/// priority and match under spec; url, sha256, pluginConfig, pluginName, failStrategy,
/// vmConfig, ... under spec.wasm.
#[test]
fn import_istio_emits_a_traffic_extension() {
    const SPEC: [&str; 7] = ["selector", "targetRefs", "phase", "priority", "match", "wasm", "lua"];
    const WASM: [&str; 10] = [
        "url",
        "sha256",
        "imagePullPolicy",
        "imagePullSecret",
        "verificationKey",
        "pluginConfig",
        "pluginName",
        "failStrategy",
        "vmConfig",
        "type",
    ];
    let dir = root().join("tests/fixtures/istio-import");
    let mut inputs: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && !n.ends_with(".expected.yaml"))
        .collect();
    inputs.sort();
    for input in &inputs {
        let import = |extra: &[&str]| {
            let mut args = vec!["import-istio"];
            args.extend_from_slice(extra);
            args.push(input);
            Command::new(BIN).current_dir(&dir).args(&args).output().expect("run")
        };
        let (wp, te) = (import(&["--json"]), import(&["--json", "--kind", "TrafficExtension"]));
        assert_eq!(wp.status.code(), te.status.code(), "{input}");
        let (wp, te) = (json_out(&wp), json_out(&te));
        assert_eq!(te["kind"], "TrafficExtension");
        let (w, x) = (&wp["wasmPlugin"], &te["trafficExtension"]);
        assert_eq!(x["apiVersion"], "extensions.istio.io/v1alpha1");
        assert_eq!(x["kind"], "TrafficExtension");
        assert_eq!(x["metadata"], w["metadata"], "{input}");
        let spec = x["spec"].as_object().expect("spec");
        let wasm = spec["wasm"].as_object().expect("spec.wasm");
        assert!(spec.keys().all(|k| SPEC.contains(&k.as_str())), "{input}: {spec:?}");
        assert!(wasm.keys().all(|k| WASM.contains(&k.as_str())), "{input}: {wasm:?}");
        for (k, v) in w["spec"].as_object().expect("spec") {
            let moved = if WASM.contains(&k.as_str()) {
                &x["spec"]["wasm"][k]
            } else {
                &x["spec"][k]
            };
            assert_eq!(moved, v, "{input}: {k}");
        }
        assert_eq!(
            spec.len() - 1 + wasm.len(),
            w["spec"].as_object().expect("spec").len(),
            "{input}"
        );
        assert_eq!(te["untranslated"], wp["untranslated"], "{input}");
        assert_eq!(te["check"], wp["check"], "{input}");
        // `check` reads it back as a TrafficExtension.
        let c = run_stdin(&["check", "-"], te["yaml"].as_str().expect("yaml"));
        assert_eq!(c.status.code(), Some(0), "{input}: {}", stderr(&c));
        assert!(
            stdout(&c).contains("(TrafficExtension \"claimguard\"): OK"),
            "{}",
            stdout(&c)
        );
    }
    // One rendering kept as a file, for reading.
    let o = Command::new(BIN)
        .current_dir(&dir)
        .args(["import-istio", "--kind", "TrafficExtension", "keycloak-orders.yaml"])
        .output()
        .expect("run");
    let golden = dir.join("keycloak-orders.traffic-extension.expected.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, stdout(&o)).expect("write golden");
    }
    assert_eq!(stdout(&o), std::fs::read_to_string(&golden).expect("golden"));
    // The option is case-insensitive; anything else is a usage error.
    let o = run(&[
        "import-istio",
        "--kind",
        "trafficextension",
        dir.join("keycloak-orders.yaml").to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["import-istio", "--kind", "EnvoyFilter", "x.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("[possible values: WasmPlugin, TrafficExtension]"),
        "{}",
        stderr(&o)
    );
}

/// While the imported Istio policies stay applied, import-istio says (on stderr, not in the
/// YAML) what `check` says about both together.
#[test]
fn import_istio_says_what_to_change_beside_istio_policies() {
    let dir = root().join("tests/fixtures/istio-import");
    let o = Command::new(BIN)
        .current_dir(&dir)
        .args(["import-istio", "dry-run.yaml"])
        .output()
        .expect("run");
    let (out, err) = (stdout(&o), stderr(&o));
    let advice = "AuthorizationPolicy \"payments/payments-allow\" (spec.rules[0].from[0].source.requestPrincipals) never matches, so the requests it admitted get 403, because claimguard runs first (phase AUTHN, before Istio's jwt_authn) and removes the token of provider(s) \"https://login.example.net\". Set forwardOriginalToken: true on those providers while both run, or remove these Istio policies once claimguard alone enforces";
    assert!(err.contains(&format!("note: migration: Istio's own security for this workload: RequestAuthentication \"payments/payments-jwt\" verifies nothing; {advice}")), "{err}");
    assert!(
        !out.contains("forwardOriginalToken") && !out.contains("migration"),
        "{out}"
    );
    // The same words from `check` on the Istio policies and the imported plugin together.
    let t = Tmp::new("import-advice");
    let plugin = t.write("plugin.yaml", &out);
    let v = json_out(&run(&[
        "check",
        "--json",
        &plugin,
        dir.join("dry-run.yaml").to_str().expect("p"),
    ]));
    let ws = check_warnings(&v);
    assert_eq!(ws.len(), 1, "{ws:?}");
    assert!(ws[0].ends_with(advice), "{ws:?}");
    // Providers that forward the token: nothing to change, only when to remove Istio's.
    let err = stderr(
        &Command::new(BIN)
            .current_dir(&dir)
            .args(["import-istio", "keycloak-orders.yaml"])
            .output()
            .expect("run"),
    );
    assert!(err.contains("note: migration: the imported Istio policies can stay applied beside this plugin during a migration (every provider has forwardOriginalToken: true); remove them once claimguard alone enforces"), "{err}");
}

/// `keygen` makes a new key every time, RSA included: never one of the committed test keys
/// (`tools/testkeys/keys/`), whose private halves anyone can read.
#[test]
fn keygen_rsa_keys_are_fresh_never_the_committed_test_keys() {
    let a = stdout(&run(&["keygen", "--alg", "RS256", "--kid", "a"]));
    let b = stdout(&run(&["keygen", "--alg", "RS256", "--kid", "a"]));
    let pem = |s: &str| s[..s.find("-----END PRIVATE KEY-----").expect("a PEM private key")].to_string();
    assert_ne!(pem(&a), pem(&b), "two keygen runs gave the same key");
    let fixtures = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testkeys/keys"));
    for e in std::fs::read_dir(fixtures).unwrap() {
        let fixture = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(
            !fixture.contains(&pem(&a)[28..]),
            "keygen handed out a committed test key"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Claims bound to the request (examples/tenancy.json)

/// examples/tenancy.json with the shared test keys (as tests/envoy_tenancy.rs runs it).
fn tenancy_config() -> Value {
    example_with_test_keys("tenancy.json")
}

#[test]
fn explain_shows_the_request_values_bindings_compared() {
    let t = Tmp::new("tenancy");
    let cfg_path = t.write("tenancy.json", &tenancy_config().to_string());
    let alice = keys().ec.sign(&with(good_claims(), "tenants", json!(["acme"])));
    let o = run(&[
        "explain",
        "--config",
        &cfg_path,
        "--path",
        "/tenants/acme/../globex/orders",
        "--token",
        &alice,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    for want in [
        r#"DENY other-tenant: matched (when[0] tenants notValuesFrom path:tenant = "globex")"#,
        r#"ALLOW tenant-members: when[0] (tenants valuesFrom path:tenant = "globex") does not hold"#,
    ] {
        assert!(text.contains(want), "wanted {want:?} in:\n{text}");
    }
    let v = json_out(&run(&[
        "explain",
        "--json",
        "--config",
        &cfg_path,
        "--path",
        "/reports",
        "--header",
        "x-tenant-id:acme",
        "--token",
        &keys().ec.sign(&with(good_claims(), "org", json!({"id": "acme"}))),
    ]));
    assert_eq!(v["status"], 200, "{v:#}");
    let rules: Vec<&str> = v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rules
            .contains(&r#"ALLOW reports-for-own-org: matched (when[0] org.id valuesFrom header:x-tenant-id = "acme")"#),
        "{rules:#?}"
    );
}

#[test]
fn check_refuses_a_binding_to_a_capture_a_path_does_not_define() {
    let t = Tmp::new("tenancy-check");
    let mut cfg = tenancy_config();
    cfg["rules"][2]["paths"] = json!(["/tenants/{tenant}", "/orgs/{org}/{**}"]);
    let p = t.write("bad-binding.json", &cfg.to_string());
    let o = run(&["check", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let want = r#"bad-binding.json: rules[2].when[0].valuesFrom: "path:tenant" binds {tenant}, but paths[1] "/orgs/{org}/{**}" does not define it"#;
    assert!(stderr(&o).contains(want), "wanted {want:?} in:\n{}", stderr(&o));
    let ok = t.write("tenancy.json", &tenancy_config().to_string());
    assert_eq!(run(&["check", &ok]).status.code(), Some(0));
}

#[test]
fn import_istio_says_istio_has_no_equivalent_of_bindings() {
    let help = stdout(&run(&["import-istio", "--help"]));
    assert!(
        help.contains("Istio has no equivalent of claimguard's claims bound to the request"),
        "{help}"
    );
    let policy = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: api-jwt
  namespace: api
spec:
  selector:
    matchLabels:
      app: api
  jwtRules:
  - issuer: https://login.example.net
    jwksUri: https://login.example.net/.well-known/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tenants
  namespace: api
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: ["/tenants/*"]
    when:
    - key: request.auth.claims[tenant]
      valuesFrom: path:tenant
"#;
    let o = run_stdin(&["import-istio", "--json", "-"], policy);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    let reported: Vec<(&str, &str)> = v["untranslated"]
        .as_array()
        .expect("array")
        .iter()
        .map(|u| (u["path"].as_str().unwrap_or(""), u["message"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(reported.len(), 1, "{v:#}");
    assert_eq!(reported[0].0, "spec.rules[0].when[0].valuesFrom");
    assert!(reported[0].1.contains("Istio has no equivalent of valuesFrom"), "{v:#}");
}
