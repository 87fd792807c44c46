//! Two claimguard plugins in one VM, each deciding its own streams.
//!
//! claimguard dispatches proxy-wasm callbacks itself (`src/host/roots.rs`): a stream's only state
//! in the VM is the root context it was created under, as `proxy_on_context_create` says. Two
//! listeners whose filters have the same name, root id, vm_id and code but different plugin
//! configs share one VM with two root contexts; requests alternating between them must each
//! be decided by their own listener's config (the memo and token cache included).

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{bootstrap, wasm_filter, wasm_path, Envoy, EnvoyOptions};
use claimguard_tools::http;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// `plugin_config()` with one rule: GET /orders needs `scope` to contain `scope`.
fn needs_scope(scope: &str) -> Value {
    let mut cfg = plugin_config();
    cfg["rules"] = json!([{
        "name": format!("needs-{scope}"),
        "methods": ["GET"],
        "paths": ["/orders"],
        "when": [{"claim": "scope", "values": [scope]}]
    }]);
    cfg
}

#[test]
fn each_listener_is_decided_by_its_own_plugin_config() {
    let upstream = EchoUpstream::start(0).expect("echo upstream");
    let reads = EnvoyOptions::new(&needs_scope("orders:read"), upstream.port);
    let dir = std::env::temp_dir().join(format!("claimguard-two-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut boot = bootstrap(&reads, &dir);
    // A second listener: the same filter chain, the same filter name, root id and vm_id (so
    // the same VM), but a config that needs another scope.
    let mut second = boot["static_resources"]["listeners"][0].clone();
    second["name"] = json!("writes");
    second["address"]["socket_address"]["port_value"] = json!(0);
    let writes_config = needs_scope("orders:write").to_string();
    let filters = &mut second["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let at = filters
        .as_array()
        .expect("filters")
        .iter()
        .position(|f| f["name"] == "istio.claimguard")
        .expect("claimguard filter");
    filters[at] = wasm_filter(&wasm_path(), &writes_config);
    boot["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners")
        .push(second);
    let mut o = EnvoyOptions::new(&json!({}), upstream.port);
    o.raw_bootstrap = Some(boot);
    o.concurrency = 1;
    let envoy = Envoy::start(&o, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let port = |name: &str| {
        envoy
            .listener_port_named(name)
            .unwrap_or_else(|| panic!("{name} not bound: {:?}", envoy.listener_ports()))
    };
    let (read_port, write_port) = (port("ingress"), port("writes"));

    let reader = keys().ec.sign(&good_claims());
    let writer = keys().ec.sign(&with(good_claims(), "scope", json!("orders:write")));
    // Interleaved, and each token several times, so the second request of a token on a
    // listener is a memo / token-cache hit: a hit must never carry over to the other plugin.
    let mut outcomes = Vec::new();
    for round in 0..5 {
        for (listener, p) in [("reads", read_port), ("writes", write_port)] {
            for (who, token) in [("reader", &reader), ("writer", &writer)] {
                let r = http::get(p, "/orders", &[("authorization", &format!("Bearer {token}"))])
                    .unwrap_or_else(|e| panic!("request failed: {e}\n{}", envoy.log()));
                outcomes.push((round, listener, who, r.status));
            }
        }
    }
    for (round, listener, who, status) in &outcomes {
        let want = match (*listener, *who) {
            ("reads", "reader") | ("writes", "writer") => 200,
            _ => 403,
        };
        assert_eq!(*status, want, "round {round}: {who} on {listener}\n{}", envoy.log());
    }
    // Both configurations were loaded (each VM logs one line per root it configures).
    let log = envoy.log();
    assert!(
        log.matches("configured 1 provider(s)").count() >= 2,
        "expected two configured roots:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
