//! `make demo-chain` started and exercised, bounded: the three hops of istio/overlays with mTLS
//! between them, every request the demo prints sent and answered as documented (the user's
//! token through the chain; replays from other pods, handshakes without a valid
//! certificate, and a token for another API at each hop, refused), then stopped.

use claimguard_tools::chain::{self, ChainConfigs};
use claimguard_tools::envoy::repo_root;

#[test]
fn chain_demo_answers_every_printed_request_as_documented() {
    let dir = std::env::temp_dir().join(format!("claimguard-demo-chain-{}", std::process::id()));
    let configs = ChainConfigs::from_overlays(&repo_root()).unwrap_or_else(|e| panic!("{e}"));
    let demo = chain::start(&dir, configs, 0).unwrap_or_else(|e| panic!("{e}"));
    let failures = demo.run_examples().expect("requests");
    assert_eq!(failures, 0, "{}", demo.logs());
    // The apps saw exactly what the examples say reached them.
    let examples = chain::examples();
    let count = |f: fn(&chain::ChainExample) -> bool| examples.iter().filter(|e| f(e)).count() as u64;
    assert_eq!(demo.orders_app.served(), count(|e| e.reaches.0));
    assert_eq!(demo.reports_app.served(), count(|e| e.reaches.1));
    assert!(examples.iter().any(|e| e.want == 200), "a request that passes");
    assert!(
        examples.iter().filter(|e| e.reason == Some("untrusted_peer")).count() >= 3,
        "replays that are refused"
    );
    // Stopped: dropping the chain stops its Envoys and servers.
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}
