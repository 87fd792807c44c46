//! The proxy-wasm floor modules (`examples/floor/*.wat`, assembled by `make floor-modules`)
//! that BENCHMARKS.md measures beside claimguard do what it says they do, in a real Envoy in
//! front of an upstream that echoes what it received: each lets the request through, and
//! only `floor_headers_remove` takes the token header away (as a cached claimguard request
//! does). Without this, the floor figures could be those of a module Envoy refused to load.

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{repo_root, Envoy, EnvoyOptions};
use claimguard_tools::http;
use serde_json::json;
use std::time::Duration;

#[test]
fn the_floor_modules_let_requests_through_and_only_the_last_removes_the_token() {
    for (module, removes) in [
        ("floor", false),
        ("floor_headers", false),
        ("floor_headers_remove", true),
    ] {
        let wasm = repo_root().join(format!("target/floor/{module}.wasm"));
        assert!(wasm.exists(), "{}: run `make floor-modules`", wasm.display());
        let upstream = EchoUpstream::start(0).expect("echo upstream");
        let mut o = EnvoyOptions::new(&json!({}), upstream.port);
        o.wasm = wasm;
        let envoy = Envoy::start(&o, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{module}: {e}"));
        for _ in 0..3 {
            let r = http::get(
                envoy.port,
                "/orders/1",
                &[("authorization", "Bearer a.b.c"), ("x-other", "kept")],
            )
            .unwrap_or_else(|e| panic!("{module}: {e}\n{}", envoy.log()));
            assert_eq!(r.status, 200, "{module}: {}\n{}", r.body, envoy.log());
            let echoed = r.json();
            assert_eq!(echoed["path"], "/orders/1", "{module}");
            assert_eq!(echoed["headers"]["x-other"], "kept", "{module}: {echoed}");
            assert_eq!(
                echoed["headers"].get("authorization").is_none(),
                removes,
                "{module}: {echoed}"
            );
        }
    }
}
