//! `make demo-edge` started and exercised: an edge Envoy with native jwt_authn in front of a
//! claimguard sidecar. Every printed request is sent, and each answer must come from the
//! expected tier (a token the edge accepts but claimguard's rules deny; a forged identity
//! header replaced before the app; a call that skips the edge).

use claimguard_tools::demo_edge;
use std::path::Path;

#[test]
fn two_tier_demo_answers_every_printed_request_as_documented() {
    let dir = std::env::temp_dir().join(format!("claimguard-demo-edge-{}", std::process::id()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = demo_edge::start(&dir, &root.join("examples/edge/sidecar.json"), 0).unwrap_or_else(|e| panic!("{e}"));
    let failures = demo.run_examples(&dir, true).expect("requests");
    assert_eq!(failures, 0, "--- sidecar log ---\n{}", demo.sidecar.log());
    // Allowed requests only: the app never saw a refused one.
    let allowed = demo_edge::examples().iter().filter(|e| e.want == 200).count() as u64;
    assert_eq!(demo.app.served(), allowed);
    let _ = std::fs::remove_dir_all(&dir);
}
