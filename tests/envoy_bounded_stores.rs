//! Issue 20, point 5, in a real Envoy: a flood of unique long URLs and unique large tokens
//! cannot take the VM past the byte caps of its stores (`jwtCacheBytes`). Without the caps
//! this flood would hold about 40 MB (2000 request shapes of 16 KB in the decision memo,
//! 1500 verified tokens of 6 KB); with them the VM's linear memory stays within a few MiB
//! of where it started, and the evictions are counted.

mod common;

use common::*;
use serde_json::json;

/// `wasmcustom.claimguard.<name>: N` in Envoy's stats text.
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.split_once(&format!("{name}: "))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn floods_of_unique_urls_and_tokens_stay_within_the_byte_caps() {
    let stack = Stack::start(&plugin_config());
    let warm = keys().ec.sign(&good_claims());
    let bearer = format!("Bearer {warm}");
    for _ in 0..20 {
        assert_eq!(stack.get("/orders", &[("authorization", &bearer)]).status, 200);
    }
    let before = stack
        .envoy
        .admin_until("stats?filter=vm_memory_bytes", |s| stat(s, "vm_memory_bytes") > 0);
    let before = stat(&before, "vm_memory_bytes");

    // 2000 unique 16 KB paths, each sent twice (a shape the memo sees twice is one it keeps
    // even when full): 64 MB of keys offered to a 2 MiB memo.
    let filler = "x".repeat(16 * 1024);
    for i in 0..2000 {
        let path = format!("/orders/{i}/{filler}");
        for _ in 0..2 {
            let r = stack.get(&path, &[("authorization", &bearer)]);
            assert_eq!(r.status, 200, "{i}: {}", r.body);
        }
    }
    // 1500 unique tokens of about 6 KB each: 9 MB of verified tokens offered to a 4 MiB cache.
    let padding = "p".repeat(4 * 1024);
    for i in 0..1500 {
        let t = keys().ec.sign(&with(
            with(good_claims(), "jti", json!(format!("flood-{i}"))),
            "pad",
            json!(padding),
        ));
        let r = stack.get("/orders", &[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(r.status, 200, "{i}: {}", r.body);
    }

    let stats = stack.envoy.admin_until("stats?filter=claimguard", |s| {
        stat(s, "cache_evictions_total.cache.memo") > 0 && stat(s, "cache_evictions_total.cache.token") > 0
    });
    let (memo, token) = (
        stat(&stats, "cache_evictions_total.cache.memo"),
        stat(&stats, "cache_evictions_total.cache.token"),
    );
    let after = stat(&stats, "vm_memory_bytes");
    println!("VM memory {before} -> {after} bytes; evictions: memo {memo}, token {token}");
    assert!(
        memo > 0 && token > 0,
        "evictions are counted: memo {memo}, token {token}\n{stats}"
    );
    // The caps: 4 MiB of tokens, 512 KiB rejected, 2 MiB of memo; allow the allocator its
    // fragmentation and the request buffers their peak, but nowhere near the 40 MB offered.
    assert!(
        after <= before + 16 * 1024 * 1024,
        "VM memory grew from {before} to {after} bytes"
    );
    // Still answering, and from the caches.
    assert_eq!(stack.get("/orders", &[("authorization", &bearer)]).status, 200);
}
