//! The benchmark's proof of honesty, run by `make test`: the harness behind `make bench`,
//! for about two seconds per listener, must see exactly the statuses the benchmark assumes
//! (200 for valid tokens on all four listeners, the empty proxy-wasm filter included; 401 for
//! invalid signatures and 403 for a claim-rule denial on both jwt_authn + RBAC and claimguard),
//! counted by the same wrk Lua script. Otherwise `make bench` could be measuring error pages.

use claimguard_tools::bench::{self, BenchOptions, Method, Pool};

#[test]
fn the_listeners_answer_what_the_benchmark_assumes() {
    let o = BenchOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    assert_statuses(
        &BenchOptions {
            method: Method::Upstream,
            ..o
        },
        2,
    );
}

/// `BENCH_METHOD=direct-nocache`: routes answering 200 themselves, both token caches off; the
/// same statuses, so its figures are no more error pages than the default method's.
#[test]
fn direct_nocache_listeners_answer_what_the_benchmark_assumes() {
    let o = BenchOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    assert_statuses(
        &BenchOptions {
            method: Method::DirectNoCache,
            ..o
        },
        1,
    );
}

fn assert_statuses(o: &BenchOptions, seconds: u64) {
    let runs = bench::smoke(o, seconds).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    for r in &runs {
        let x = &r.result;
        assert!(x.requests > 0, "{} {:?}: no requests completed", r.listener, r.pool);
        assert_eq!(
            (x.unexpected, x.socket_errors),
            (0, 0),
            "{} {:?}: expected every response to be {}",
            r.listener,
            r.pool,
            r.expected
        );
        // The proxy's CPU time per request is read for every run, and is plausible: more than
        // nothing, less than a whole millisecond for a cached or refused token.
        let cpu = x
            .proxy_cpu_us
            .unwrap_or_else(|| panic!("{} {:?}: no proxy CPU time", r.listener, r.pool));
        assert!(
            cpu > 0.0 && cpu < 1000.0,
            "{} {:?}: {cpu} µs/request",
            r.listener,
            r.pool
        );
        seen.push((r.listener, r.pool, r.expected));
    }
    assert_eq!(
        seen,
        vec![
            ("no_auth", Pool::Warm, 200),
            ("native", Pool::Warm, 200),
            ("claimguard", Pool::Warm, 200),
            ("empty_wasm", Pool::Warm, 200),
            ("native", Pool::BadSignature, 401),
            ("claimguard", Pool::BadSignature, 401),
            ("native", Pool::Forbidden, 403),
            ("claimguard", Pool::Forbidden, 403),
        ]
    );
}

#[test]
fn a_wrong_expectation_is_counted() {
    // The counter itself works: the same run, expecting 401 where 200 comes back, counts
    // every response as unexpected.
    let o = BenchOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    let rig = bench::Rig::start(bench::BenchKeys::new()).unwrap_or_else(|e| panic!("{e}"));
    let tokens = rig
        .keys
        .pool(claimguard::crypto::alg::Alg::ES256, Pool::Warm, "wrong", 10);
    let path = rig.write_pool("wrong", &tokens).unwrap();
    let claimguard = bench::LISTENERS.iter().position(|l| *l == "claimguard").unwrap();
    let r = rig.run(&o, claimguard, &path, 401, false, 1).unwrap();
    assert!(r.requests > 0);
    assert_eq!(r.unexpected, r.requests, "{r:?}");
}
