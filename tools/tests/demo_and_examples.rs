//! `make demo` must serve: run the demo binary in self-test mode (it starts Envoy with the
//! example config, sends the printed requests and checks each status). And every shipped
//! example config must pass the filter's own validation.

use claimguard::config::Config;
use std::process::Command;

#[test]
fn demo_serves_the_requests_it_prints() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO_BIN_EXE_claimguard"))
        .current_dir(root)
        .args(["demo", "--config", "examples/config.json", "--port", "0", "--self-test"])
        .output()
        .expect("run claimguard demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("self-test: all 5 requests answered as expected"),
        "{stdout}"
    );
    // The printed commands are ready to paste: one curl per example, with a real token.
    assert_eq!(stdout.matches("curl -i http://127.0.0.1:").count(), 5, "{stdout}");
    assert_eq!(stdout.matches("-H 'Authorization: Bearer ey").count(), 4, "{stdout}");
}

#[test]
fn example_configs_are_valid() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).expect("read");
            if let Err(e) = Config::from_json(&bytes) {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the example configs in {}", dir.display());
}

#[test]
fn cli_check_names_the_field_of_a_bad_config() {
    let dir = std::env::temp_dir().join(format!("claimguard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"providers":[{"issuer":"https://i","jwks":{"keys":[]},"fromHeader":[]}]}"#,
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_claimguard"))
        .arg("check")
        .arg(&bad)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("providers[0].fromHeader: unknown field `fromHeader`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_says_why_allowed_unauthenticated_and_forbidden() {
    let dir = std::env::temp_dir().join(format!("claimguard-explain-{}", std::process::id()));
    let bin = env!("CARGO_BIN_EXE_claimguard");
    let run = |args: &[&str]| Command::new(bin).args(args).output().expect("run claimguard");
    let out = run(&[
        "keygen",
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--out",
        dir.to_str().expect("dir"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = serde_json::json!({
        "providers": [{"name": "idp", "issuer": "https://idp.example", "audiences": ["api"], "jwks": "{}",
                       "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}]}],
        "rules": [{"name": "readers", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["read"]}]}]
    });
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    let jwks = dir.join("jwks.json");
    let key = dir.join("k1.pem");
    let mint = |scope: &str| {
        let out = run(&[
            "mint",
            "--key",
            key.to_str().expect("k"),
            "--alg",
            "ES256",
            "--kid",
            "k1",
            "--iss",
            "https://idp.example",
            "--aud",
            "api",
            "--sub",
            "alice",
            "--ttl",
            "600",
            "--claim",
            &format!("scope={scope}"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let explain = |token: &str, extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            cfg_path.to_str().expect("c"),
            "--jwks",
            jwks.to_str().expect("j"),
            "--path",
            "/orders/1",
            "--token",
            token,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let reader = mint("read");
    let out = explain(&reader, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("decision: allow (200)")
            && text.contains("ALLOW readers: matched")
            && text.contains("upstream header: x-user: alice"),
        "{text}"
    );

    // An hour later the same token has expired: 401, exit 1.
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("t")
        .as_secs()
        + 3600)
        .to_string();
    let out = explain(&reader, &["--at", &later]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reason:   expired (token has expired)"));

    // No read scope: 403, with the rule that did not hold, as JSON.
    let out = explain(&mint("write"), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["status"], 403);
    assert_eq!(v["rules"][0], "ALLOW readers: when[0] (scope) does not hold");
    let _ = std::fs::remove_dir_all(&dir);
}
