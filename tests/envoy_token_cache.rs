//! The verified-token cache in a real Envoy: hits and misses counted, a bad signature
//! remembered (briefly) without ever letting it through, `jwtCacheSize` honoured and checked.

mod common;

use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use common::*;
use serde_json::json;
use std::time::Duration;

fn cache_counts(stack: &Stack, want: (u64, u64)) -> (u64, u64) {
    hit_miss_once(stack, "token_cache", want)
}

#[test]
fn hits_misses_and_remembered_bad_signatures_are_counted() {
    let stack = Stack::start(&plugin_config());
    let good = keys().rsa.sign(&good_claims());
    let forged = keys().stranger_rsa.sign(&good_claims());
    assert_eq!(stack.get_with_token(&good).status, 200);
    assert_eq!(stack.get_with_token(&good).status, 200);
    assert_eq!(cache_counts(&stack, (1, 1)), (1, 1));
    // A bad signature is a 401 every time; the second time it is answered from memory.
    assert_eq!(stack.get_with_token(&forged).status, 401);
    let again = stack.get_with_token(&forged);
    assert_eq!(again.status, 401);
    assert!(
        again
            .header("www-authenticate")
            .is_some_and(|h| h.contains("token signature is invalid")),
        "{:?}",
        again.headers
    );
    assert_eq!(cache_counts(&stack, (2, 2)), (2, 2));
}

#[test]
fn jwt_cache_size_zero_turns_the_cache_off() {
    let mut cfg = plugin_config();
    cfg["jwtCacheSize"] = json!(0);
    let stack = Stack::start(&cfg);
    let good = keys().ec.sign(&good_claims());
    for _ in 0..3 {
        assert_eq!(stack.get_with_token(&good).status, 200);
    }
    // Once the three requests are counted, the cache counters (flushed with them) are known.
    let stats = stack.envoy.admin_until("stats?filter=claimguard", |s| {
        s.contains("claimguard.requests_total.outcome.allowed.reason.none.rule.none.provider.test-idp: 3")
    });
    assert!(stats.contains("provider.test-idp: 3"), "{stats}");
    assert_eq!(hit_miss(&stats, "token_cache"), (0, 0));
}

#[test]
fn an_oversized_jwt_cache_is_refused_with_its_field() {
    let mut cfg = plugin_config();
    cfg["jwtCacheSize"] = json!(1_000_000);
    let err = match Envoy::start(&EnvoyOptions::new(&cfg, 9), Duration::from_secs(60)) {
        Ok(_) => panic!("Envoy served with jwtCacheSize 1000000"),
        Err(e) => e,
    };
    assert!(err.log.contains("jwtCacheSize: must be at most 100000"), "{err}");
}
