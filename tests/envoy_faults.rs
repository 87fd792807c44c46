//! Faults fail closed, in a real Envoy: a broken config pushed by ECDS (the way istiod pushes
//! a WasmPlugin) is refused and the previous config keeps enforcing; a VM that traps answers
//! 5xx and lets nothing through.

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn broken_config_push_is_refused_and_the_old_config_keeps_enforcing() {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut opts = EnvoyOptions::new(&plugin_config(), upstream.port);
    opts.ecds = true;
    let mut envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let token = keys().ec.sign(&good_claims());
    let call = |envoy: &Envoy, t: Option<&str>| {
        let auth = t.map(|t| format!("Bearer {t}"));
        let hs: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        http::get(envoy.port, "/orders", &hs).expect("request").status
    };
    assert_eq!(call(&envoy, Some(&token)), 200, "{}", envoy.log());
    assert_eq!(call(&envoy, None), 401);

    // A broken config: refused, with the field path in the log; the old one still enforces.
    let mut broken = plugin_config();
    broken["providers"][0]["issuer"] = json!("");
    envoy.push_plugin_config(&broken).expect("push");
    assert!(
        envoy.ecds_stat("config_fail") >= 1,
        "{}",
        envoy.admin("stats?filter=extension_config_discovery")
    );
    assert!(envoy
        .log()
        .contains("rejected plugin configuration: providers[0].issuer: must not be empty"));
    for _ in 0..5 {
        assert_eq!(call(&envoy, Some(&token)), 200, "old config must keep serving");
        assert_eq!(call(&envoy, None), 401, "old config must keep enforcing");
    }

    // A good config change is applied.
    let mut changed = plugin_config();
    changed["providers"][0]["audiences"] = json!(["another-api"]);
    envoy.push_plugin_config(&changed).expect("push");
    assert!(envoy.ecds_stat("config_reload") >= 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while call(&envoy, Some(&token)) != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "new audience never applied:\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn faults_wasm() -> PathBuf {
    match std::env::var_os("CLAIMGUARD_FAULTS_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/faults/claimguard.wasm"),
    }
}

#[test]
fn a_trapping_vm_fails_closed() {
    let wasm = faults_wasm();
    assert!(
        wasm.exists(),
        "{} is missing: `make build-faults` builds it",
        wasm.display()
    );
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut opts = EnvoyOptions::new(&plugin_config(), upstream.port);
    opts.wasm = wasm;
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let token = keys().ec.sign(&good_claims());
    assert_eq!(
        http::get(envoy.port, "/orders", &[("authorization", &format!("Bearer {token}"))])
            .expect("r")
            .status,
        200
    );
    let served = upstream.served();

    let trap = http::get(
        envoy.port,
        "/orders",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-claimguard-fault", "trap"),
        ],
    )
    .expect("trap request");
    assert!(trap.status >= 500, "a trapped VM must answer 5xx, got {trap:?}");
    // After the crash: no unauthenticated request may pass, whatever state the VM is in.
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = http::get(envoy.port, "/orders", &[]).expect("request");
        assert!(r.status == 401 || r.status >= 500, "got {r:?} after the trap");
        statuses.push(r.status);
        let r = http::get(envoy.port, "/orders", &[("authorization", "Bearer x.y.z")]).expect("request");
        assert!(r.status == 401 || r.status >= 500, "got {r:?} after the trap");
        statuses.push(r.status);
    }
    println!(
        "trap answered {}; then {statuses:?} in {:?}",
        trap.status,
        started.elapsed()
    );
    assert_eq!(upstream.served(), served, "nothing reached the upstream after the trap");
    assert!(
        envoy.log().to_lowercase().contains("unreachable")
            || envoy.log().contains("Function: proxy_on_request_headers failed"),
        "{}",
        envoy.log()
    );
}
