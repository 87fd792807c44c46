//! `make demo` must serve: run the demo binary in self-test mode (it starts Envoy with the
//! example config, sends the printed requests and checks each status). And every shipped
//! example config must pass the filter's own validation.

use claimguard::config::Config;
use std::process::Command;

#[test]
fn demo_serves_the_requests_it_prints() {
    let root = env!("CARGO_MANIFEST_DIR");
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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
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
