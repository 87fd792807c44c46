//! `claimguard explain --peer-principal/--source-ip`: the offline decision for a request from a
//! given workload, on the shipped `examples/mesh-identity.json` and `examples/delegation.json`.

use claimguard::crypto::alg::Alg;
use claimguard_tools::keys::TestKey;
use serde_json::{json, Value};
use std::process::{Command, Output};

const ISSUER: &str = "https://idp.example.com";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Fixture {
    dir: std::path::PathBuf,
    key: TestKey,
}

impl Fixture {
    /// `tag`: tests run in parallel, each with its own key and directory.
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("claimguard-explain-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let key = TestKey::generate(Alg::ES256, "k1");
        std::fs::write(dir.join("jwks.json"), key.jwks().to_string()).expect("jwks");
        Fixture { dir, key }
    }

    fn token(&self, extra: Value) -> String {
        let mut c = json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice", "exp": now() + 600});
        c.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        self.key.sign(&c)
    }

    fn explain(&self, example: &str, token: &str, args: &[&str]) -> (Output, Value) {
        let cfg = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .join("examples")
            .join(example);
        let jwks = self.dir.join("jwks.json");
        let mut all = vec![
            "explain",
            "--config",
            cfg.to_str().expect("cfg"),
            "--jwks",
            jwks.to_str().expect("jwks"),
            "--token",
            token,
            "--json",
        ];
        all.extend_from_slice(args);
        let out = Command::new(env!("CARGO_BIN_EXE_claimguard"))
            .args(&all)
            .output()
            .expect("run claimguard");
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out, v)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn explain_takes_the_peer_into_account() {
    let f = Fixture::new("peer");
    let buyer = f.token(json!({"groups": ["buyers"]}));
    let order = ["--method", "POST", "--path", "/orders"];

    // From the frontend (Istio's form of the ID is accepted too): allowed.
    let (out, v) = f.explain(
        "mesh-identity.json",
        &buyer,
        &[
            &order[..],
            &[
                "--peer-principal",
                "cluster.local/ns/web/sa/frontend",
                "--source-ip",
                "10.1.2.3",
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["peerPrincipal"], "spiffe://cluster.local/ns/web/sa/frontend");
    assert_eq!(v["sourceIp"], "10.1.2.3");
    assert!(
        v["rules"]
            .as_array()
            .expect("rules")
            .contains(&json!("ALLOW buyers-via-frontend: matched")),
        "{v}"
    );

    // The same user through the gateway: the rule wants the frontend.
    let gateway = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
    let (out, v) = f.explain(
        "mesh-identity.json",
        &buyer,
        &[&order[..], &["--peer-principal", gateway]].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["status"], 403);
    assert!(
        v["rules"]
            .as_array()
            .expect("rules")
            .contains(&json!("ALLOW buyers-via-frontend: peer principal not in principals")),
        "{v}"
    );

    // Without a peer: the provider's trustedPrincipals refuse the token.
    let (out, v) = f.explain("mesh-identity.json", &buyer, &order);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["peerPrincipal"], Value::Null);
    assert_eq!(
        v["reason"],
        "untrusted_peer (tokens of this issuer are only accepted through a trusted workload)"
    );

    // Text output names the peer.
    let cfg = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("examples/mesh-identity.json");
    let jwks = f.dir.join("jwks.json");
    let out = Command::new(env!("CARGO_BIN_EXE_claimguard"))
        .args([
            "explain",
            "--config",
            cfg.to_str().expect("c"),
            "--jwks",
            jwks.to_str().expect("j"),
        ])
        .args(["--token", &buyer, "--method", "POST", "--path", "/orders"])
        .args([
            "--peer-principal",
            "spiffe://cluster.local/ns/web/sa/frontend",
            "--source-ip",
            "::1",
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("peer:     spiffe://cluster.local/ns/web/sa/frontend from ::1"),
        "{text}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_claimguard"))
        .args([
            "explain",
            "--config",
            cfg.to_str().expect("c"),
            "--source-ip",
            "localhost",
        ])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--source-ip \"localhost\" is not an IP address"));
}

#[test]
fn explain_delegation_rules() {
    let f = Fixture::new("delegation");
    let acting = f.token(json!({"scope": "orders:read orders:write", "act": {"sub": "agent:assistant"}}));
    let (out, v) = f.explain("delegation.json", &acting, &["--path", "/orders/1"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let (out, v) = f.explain("delegation.json", &acting, &["--method", "POST", "--path", "/orders"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        v["rules"]
            .as_array()
            .expect("rules")
            .contains(&json!("DENY agents-only-read: matched")),
        "{v}"
    );
    // An agent workload presenting the user's own token needs the user's may_act consent.
    let agent = ["--peer-principal", "spiffe://cluster.local/ns/agents/sa/assistant"];
    let user = f.token(json!({"scope": "orders:read"}));
    let (out, v) = f.explain("delegation.json", &user, &[&agent[..], &["--path", "/orders"]].concat());
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert!(
        v["rules"]
            .as_array()
            .expect("rules")
            .contains(&json!("DENY agent-workloads-need-consent: matched")),
        "{v}"
    );
    let consented = f.token(json!({"scope": "orders:read", "may_act": {"sub": "agent:assistant"}}));
    let (out, v) = f.explain(
        "delegation.json",
        &consented,
        &[&agent[..], &["--path", "/orders"]].concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{v}");
}
