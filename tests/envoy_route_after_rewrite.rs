//! The rewritten `:path` is also the path Envoy routes on: claimguard's canonical path is
//! what was judged, so a route chosen on the spelling that arrived (Envoy's defaults do not
//! normalise) would send the request somewhere else than the judged path says. Envoy clears
//! its route cache when a wasm filter changes request headers; this checks that it does,
//! with one route for `/docs/` to an upstream and everything else answered 418 by Envoy.

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{bootstrap, Envoy, EnvoyOptions};
use claimguard_tools::http;
use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_rewritten_path_is_routed_as_rewritten() {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let mut cfg = plugin_config();
    cfg["rules"] = json!([{"name": "docs", "public": true, "paths": ["/docs/*"]}]);
    let mut opts = EnvoyOptions::new(&cfg, upstream.port);
    let dir = std::env::temp_dir().join(format!("claimguard-route-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut b = bootstrap(&opts, &dir);
    let hcm = &mut b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["route_config"] = json!({"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [
        {"match": {"prefix": "/docs/"}, "route": {"cluster": "app"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 418, "body": {"inline_string": "not routed to the app"}}}
    ]}]});
    opts.raw_bootstrap = Some(b);
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));

    // Arrives as `/x/../docs/a`, which the route table sends to the 418; judged (public) and
    // rewritten as `/docs/a`, which it sends to the app.
    let r = http::get(envoy.port, "/x/../docs/a", &[]).expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    let got = upstream.last_received().expect("the app was reached");
    assert_eq!(got.raw_path, "/docs/a");
    // And the other way: `/docs/../admin` matches the app's route as sent, but is judged (and
    // rewritten) as `/admin`, which needs a token: refused before any routing matters.
    let before = upstream.served();
    let r = http::get(envoy.port, "/docs/../admin", &[]).expect("request");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(upstream.served(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
