//! Decision lines at Istio's default proxy log level (`warning`): what an operator acts on
//! (dry-run denials, policy denials, AUDIT matches, the proxy failing requests) is visible
//! without touching the mesh; routine refusals (401, 400) appear once the `wasm` logger is at
//! `info`, which is what `sidecar.istio.io/componentLogLevel: "wasm:info"` sets on a pod.

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn config() -> Value {
    let mut c = plugin_config();
    c["rules"] = json!([
        {"name": "sunset", "action": "DENY", "dryRun": true, "paths": ["/v1/*"]},
        {"name": "watch-exports", "action": "AUDIT", "paths": ["/exports/*"]},
        {"name": "no-admin", "action": "DENY", "paths": ["/admin/*"]},
        {"name": "any", "paths": ["/*"]}
    ]);
    c
}

/// The decision or audit lines in Envoy's log that contain every one of `needles`.
fn lines_with(envoy: &Envoy, needles: &[&str]) -> Vec<String> {
    envoy
        .log()
        .lines()
        .filter(|l| l.contains("\"claimguard\":") && needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn wait_for_line(envoy: &Envoy, needles: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = lines_with(envoy, needles);
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn operator_lines_are_visible_at_istios_default_level() {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut opts = EnvoyOptions::new(&config(), upstream.port);
    // Istio's default `--proxyLogLevel` (and the `warning` of `sidecar.istio.io/logLevel`).
    opts.log_level = "warning".into();
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let token = format!("Bearer {}", keys().ec.sign(&good_claims()));
    let auth = [("authorization", token.as_str())];
    let get = |path: &str, headers: &[(&str, &str)]| http::get(envoy.port, path, headers).expect("request");

    // A dry-run denial passes and is logged: the rollout in docs/istio.md reads this line.
    assert_eq!(get("/v1/orders", &auth).status, 200);
    let dry = wait_for_line(&envoy, &["\"decision\":\"dry_run_denied\"", "\"rule\":\"sunset\""]);
    assert_eq!(dry.len(), 1, "{}", envoy.log());
    assert!(dry[0].contains("warning"), "logged at warning: {}", dry[0]);

    // A policy denial (403), and an AUDIT match.
    assert_eq!(get("/admin/users", &auth).status, 403);
    let denied = wait_for_line(&envoy, &["\"decision\":\"deny\"", "\"status\":403"]);
    assert_eq!(denied.len(), 1, "{}", envoy.log());
    assert_eq!(get("/exports/q3", &auth).status, 200);
    let audit = wait_for_line(&envoy, &["\"claimguard\":\"audit\"", "\"rule\":\"watch-exports\""]);
    assert_eq!(audit.len(), 1, "{}", envoy.log());

    // Routine refusals stay below warning...
    assert_eq!(get("/orders", &[]).status, 401);
    assert_eq!(get("/orders", &[("authorization", "Bearer x.y.z")]).status, 401);
    std::thread::sleep(Duration::from_millis(300));
    assert!(lines_with(&envoy, &["\"status\":401"]).is_empty(), "{}", envoy.log());

    // ...and appear with the wasm logger at info, as the pod annotation sets it.
    let r = http::request(envoy.admin_port, "POST", "/logging?wasm=info", &[]).expect("admin");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get("/orders", &[("authorization", "Bearer x.y.z")]).status, 401);
    let info = wait_for_line(&envoy, &["\"status\":401", "\"reason\":\"malformed\""]);
    assert_eq!(info.len(), 1, "{}", envoy.log());
}
