//! Remote JWKS in a real Envoy, with a JWKS server under the test's control: cold start,
//! one fetch per proxy across workers, rotation within one request, outages with warm and
//! cold keys, garbage and oversized answers, and a flood of random kids.
//!
//! The JWKS cluster is named the way istiod names a ServiceEntry's cluster
//! (`outbound|80||idp.test`); claimguard derives that name from `jwksUri`.

mod common;

use claimguard::crypto::alg::Alg;
use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http::{self, Response};
use claimguard_tools::jwks_server::{JwksServer, Mode};
use claimguard_tools::keys::TestKey;
use common::*;
use serde_json::{json, Value};
use std::thread::sleep;
use std::time::{Duration, Instant};

const JWKS_CLUSTER: &str = "outbound|80||idp.test";

struct Remote {
    jwks: JwksServer,
    upstream: EchoUpstream,
    envoy: Envoy,
}

impl Remote {
    fn start(initial: Value, provider_extra: Value, concurrency: u32) -> Remote {
        let jwks = JwksServer::start(initial).expect("jwks server");
        let upstream = EchoUpstream::start(0).expect("upstream");
        let mut provider = json!({
            "name": "idp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwksUri": "http://idp.test/jwks.json",
            "jwksWaitTimeout": "3s"
        });
        for (k, v) in provider_extra.as_object().expect("object") {
            provider[k] = v.clone();
        }
        let mut opts = EnvoyOptions::new(&json!({"providers": [provider]}), upstream.port);
        opts.clusters.push((JWKS_CLUSTER.to_string(), jwks.port));
        opts.concurrency = concurrency;
        let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        Remote { jwks, upstream, envoy }
    }

    fn call(&self, token: &str) -> Response {
        http::get(
            self.envoy.port,
            "/orders",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log()))
    }

    fn expect(&self, token: &str, status: u16, what: &str) -> Response {
        let r = self.call(token);
        assert_eq!(
            r.status,
            status,
            "{what}: {r:?}\n--- envoy log ---\n{}",
            self.envoy.log()
        );
        r
    }

    /// Waits until a valid token passes (the first fetch has landed).
    fn warm(&self, token: &str) {
        self.expect(token, 200, "warm-up");
    }
}

fn key(alg: Alg, kid: &str) -> TestKey {
    if alg.is_rsa() {
        TestKey::from_rsa(&keys().rsa, alg, kid)
    } else {
        TestKey::generate(alg, kid)
    }
}

#[test]
fn cold_start_fetches_once_then_verifies() {
    let a = key(Alg::ES256, "a");
    let r = Remote::start(a.jwks(), json!({}), 1);
    // The first request may wait for the first fetch; it must not fail.
    r.warm(&a.sign(&good_claims()));
    for _ in 0..20 {
        r.expect(&a.sign(&good_claims()), 200, "warm");
    }
    assert_eq!(r.jwks.hits(), 1, "{:?}", r.jwks.hit_log());
    let stats = r.envoy.admin("stats?filter=claimguard");
    assert!(
        stats.contains("claimguard.jwks_fetches_total.result.success.provider.idp: 1"),
        "{stats}"
    );
    assert!(stats.contains("claimguard.jwks_keys.provider.idp: 1"), "{stats}");
    assert!(r.envoy.log().contains(r#""claimguard":"jwks_fetched""#));
}

#[test]
fn one_fetch_per_refresh_with_four_workers() {
    let a = key(Alg::ES256, "a");
    let r = Remote::start(
        a.jwks(),
        json!({"jwksRefreshInterval": "3s", "jwksMinRefreshInterval": "1s"}),
        4,
    );
    r.warm(&a.sign(&good_claims()));
    let start = Instant::now();
    // Traffic on all workers while refreshes come due: ~8 s = the first fetch and two refreshes.
    while start.elapsed() < Duration::from_millis(7_500) {
        for _ in 0..8 {
            r.expect(&a.sign(&good_claims()), 200, "steady");
        }
        sleep(Duration::from_millis(100));
    }
    let hits = r.jwks.hits();
    // Four workers fetching on their own would give ~12.
    assert!((2..=4).contains(&hits), "{hits} fetches: {:?}", r.jwks.hit_log());
}

#[test]
fn rotation_is_accepted_within_one_request() {
    let a = key(Alg::RS256, "2024-a");
    let b = key(Alg::ES256, "2025-b");
    let r = Remote::start(a.jwks(), json!({"jwksRefetchCooldown": "1s"}), 2);
    r.warm(&a.sign(&good_claims()));
    // The identity provider rotates: B appears. The first B token triggers one refetch and
    // passes, without a single 401.
    r.jwks.set_jwks(json!({"keys": [a.public_jwk(), b.public_jwk()]}));
    // Past the 1 s refetch cooldown as the VM sees it: a request reads the clock its VM took on
    // the last 200 ms tick (src/base/clock.rs), so 1.1 s after the last fetch it may still be inside.
    sleep(Duration::from_millis(1_500));
    let before = r.jwks.hits();
    r.expect(&b.sign(&good_claims()), 200, "first token with the new kid");
    assert_eq!(r.jwks.hits(), before + 1);
    r.expect(&a.sign(&good_claims()), 200, "old key still listed");
    // A kid the provider never published: one more refetch at most, then 401 unknown kid.
    let c = key(Alg::ES256, "never-published");
    sleep(Duration::from_millis(1_500));
    let resp = r.expect(&c.sign(&good_claims()), 401, "unknown kid after refetch");
    assert_eq!(resp.json()["message"], "token is signed with an unknown key (kid)");
    assert_eq!(
        r.upstream.served(),
        3,
        "warm-up, the new-kid token and the old-key token only"
    );
}

#[test]
fn random_kid_flood_causes_at_most_one_fetch_per_cooldown() {
    let a = key(Alg::ES256, "a");
    let r = Remote::start(
        a.jwks(),
        json!({"jwksRefetchCooldown": "2s", "jwksWaitTimeout": "1s"}),
        2,
    );
    r.warm(&a.sign(&good_claims()));
    let before = r.jwks.hits();
    let start = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    let mut n = 0;
    // Bounded: at most 300 requests or 4.5 s, to 127.0.0.1 only.
    while n < 300 && start.elapsed() < Duration::from_millis(4_500) {
        let k = TestKey::generate(Alg::ES256, &format!("random-{n}"));
        *statuses.entry(r.call(&k.sign(&good_claims())).status).or_insert(0) += 1;
        n += 1;
    }
    let fetches = r.jwks.hits() - before;
    let cooldowns = start.elapsed().as_millis() / 2_000 + 1;
    assert!(
        fetches as u128 <= cooldowns,
        "{fetches} fetches in {:?} for {n} requests",
        start.elapsed()
    );
    assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), vec![401], "{statuses:?}");
    assert_eq!(r.upstream.served(), 1, "only the warm-up request reached the upstream");
    // And a valid token is unaffected.
    r.expect(&a.sign(&good_claims()), 200, "after the flood");
}

#[test]
fn outage_with_warm_keys_keeps_accepting_and_backs_off() {
    let a = key(Alg::ES256, "a");
    let r = Remote::start(
        a.jwks(),
        json!({"jwksRefreshInterval": "1s", "jwksMinRefreshInterval": "1s", "maxStale": "1h"}),
        1,
    );
    r.warm(&a.sign(&good_claims()));
    r.jwks.set_mode(Mode::Status(500));
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(9) {
        r.expect(&a.sign(&good_claims()), 200, "during the outage");
        sleep(Duration::from_millis(250));
    }
    let times: Vec<Instant> = r.jwks.hit_log().into_iter().skip(1).map(|(t, _)| t).collect();
    let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!(times.len() >= 3, "retries expected: {gaps:?}");
    // Backoff: 1 s, 2 s, 4 s (± a tick), never a hammer.
    for (i, g) in gaps.iter().enumerate() {
        let want = 1000u128 << i;
        assert!(
            *g + 300 >= want && *g <= want + 700,
            "gap {i} was {g} ms, want ~{want}: {gaps:?}"
        );
    }
    assert!(r.envoy.log().contains(r#""claimguard":"jwks_fetch_failed""#));
    let stats = r.envoy.admin("stats?filter=claimguard");
    assert!(
        stats.contains("claimguard.jwks_fetches_total.result.failure.provider.idp: "),
        "{stats}"
    );
}

#[test]
fn cold_start_with_the_server_down_fails_closed_with_503() {
    let a = key(Alg::ES256, "a");
    for mode in [Mode::Status(500), Mode::Drop, Mode::Hang] {
        // The server misbehaves from its very first request.
        let jwks = JwksServer::start(a.jwks()).expect("jwks");
        jwks.set_mode(mode.clone());
        let upstream = EchoUpstream::start(0).expect("upstream");
        let cfg = json!({"providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "jwksUri": "http://idp.test/jwks.json", "jwksWaitTimeout": "1s", "timeout": "500ms"}]});
        let mut opts = EnvoyOptions::new(&cfg, upstream.port);
        opts.clusters.push((JWKS_CLUSTER.to_string(), jwks.port));
        let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let resp = http::get(
            envoy.port,
            "/orders",
            &[("authorization", &format!("Bearer {}", a.sign(&good_claims())))],
        )
        .expect("request");
        assert_eq!(resp.status, 503, "{mode:?}: {resp:?}\n{}", envoy.log());
        assert_eq!(resp.json()["error"], "jwks_unavailable", "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode:?}: bounded wait, took {:?}",
            started.elapsed()
        );
        assert_eq!(upstream.served(), 0, "{mode:?}: nothing reaches the upstream");
        // Bad tokens are still plain 401s, not 503s: garbage never waits for keys.
        let garbage = http::get(envoy.port, "/orders", &[("authorization", "Bearer x.y.z")]).expect("request");
        assert_eq!(garbage.status, 401, "{mode:?}");
    }
}

#[test]
fn garbage_and_oversized_answers_never_replace_a_good_set() {
    let a = key(Alg::ES256, "a");
    let r = Remote::start(
        a.jwks(),
        json!({"jwksRefreshInterval": "1s", "jwksMinRefreshInterval": "1s", "jwksMaxBytes": 65536}),
        1,
    );
    r.warm(&a.sign(&good_claims()));
    for mode in [Mode::Garbage, Mode::Huge, Mode::Status(404)] {
        r.jwks.set_mode(mode.clone());
        let before = r.jwks.hits();
        assert!(
            r.jwks.wait_for_hits(before + 1, Duration::from_secs(6)) > before,
            "{mode:?}: no refetch"
        );
        sleep(Duration::from_millis(300));
        r.expect(&a.sign(&good_claims()), 200, &format!("after {mode:?}"));
    }
    // An empty or key-less set is garbage too.
    r.jwks.set_jwks(json!({"keys": []}));
    r.jwks.set_mode(Mode::Serve);
    let before = r.jwks.hits();
    r.jwks.wait_for_hits(before + 1, Duration::from_secs(10));
    sleep(Duration::from_millis(300));
    r.expect(&a.sign(&good_claims()), 200, "after an empty set");
    let log = r.envoy.log();
    assert!(log.contains("response is not JSON"), "{log}");
    assert!(log.contains("jwksMaxBytes"), "{log}");
    assert!(log.contains("HTTP status 404"), "{log}");
    assert!(log.contains("JWKS has no usable key"), "{log}");
}

#[test]
fn oidc_discovery_finds_the_jwks() {
    let a = key(Alg::ES256, "a");
    let jwks = JwksServer::start(a.jwks()).expect("jwks");
    let upstream = EchoUpstream::start(0).expect("upstream");
    let issuer = "http://idp.test";
    let cfg = json!({"providers": [{"name": "idp", "issuer": issuer, "audiences": [AUDIENCE], "oidcDiscovery": true}]});
    let mut opts = EnvoyOptions::new(&cfg, upstream.port);
    opts.clusters.push((JWKS_CLUSTER.to_string(), jwks.port));
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let token = a.sign(&with(good_claims(), "iss", json!(issuer)));
    let r = http::get(envoy.port, "/orders", &[("authorization", &format!("Bearer {token}"))]).expect("request");
    assert_eq!(r.status, 200, "{r:?}\n{}", envoy.log());
    let paths: Vec<String> = jwks.hit_log().into_iter().map(|(_, p)| p).collect();
    assert_eq!(paths, vec!["/.well-known/openid-configuration", "/jwks.json"]);
}

#[test]
fn inline_keys_bootstrap_until_the_first_fetch() {
    let a = key(Alg::ES256, "inline-a");
    let b = key(Alg::ES256, "remote-b");
    let jwks = JwksServer::start(b.jwks()).expect("jwks");
    jwks.set_mode(Mode::Status(503));
    let upstream = EchoUpstream::start(0).expect("upstream");
    let cfg = json!({"providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "jwks": a.jwks(), "jwksUri": "http://idp.test/jwks.json", "jwksWaitTimeout": "1s"}]});
    let mut opts = EnvoyOptions::new(&cfg, upstream.port);
    opts.clusters.push((JWKS_CLUSTER.to_string(), jwks.port));
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let call = |k: &TestKey| {
        http::get(
            envoy.port,
            "/orders",
            &[("authorization", &format!("Bearer {}", k.sign(&good_claims())))],
        )
        .expect("request")
        .status
    };
    // The identity provider is down: the inline key works at once.
    assert_eq!(call(&a), 200, "{}", envoy.log());
    // It comes back: its set replaces the bootstrap keys.
    jwks.set_mode(Mode::Serve);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&b) != 200 {
        assert!(Instant::now() < deadline, "remote keys never arrived:\n{}", envoy.log());
        sleep(Duration::from_millis(200));
    }
    assert_eq!(call(&a), 401, "the bootstrap key is gone once the provider answers");
}

/// A request paused for keys must stay paused when its body arrives. In Envoy a filter that
/// stopped at the headers and then answers a body callback with Continue lets the request
/// through (headers included) before any decision: the proxy-wasm SDK's default body
/// callback does exactly that.
#[test]
fn a_request_body_never_releases_a_request_waiting_for_keys() {
    use std::io::{Read, Write};
    let a = key(Alg::ES256, "a");
    let jwks = JwksServer::start(a.jwks()).expect("jwks");
    jwks.set_mode(Mode::Hang);
    let upstream = EchoUpstream::start(0).expect("upstream");
    let cfg = json!({"providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "jwksUri": "http://idp.test/jwks.json", "jwksWaitTimeout": "1s", "timeout": "500ms"}]});
    let mut opts = EnvoyOptions::new(&cfg, upstream.port);
    opts.clusters.push((JWKS_CLUSTER.to_string(), jwks.port));
    let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    // A forged token (right kid, wrong key): it may only pass if the body releases it.
    let forged = TestKey::generate(Alg::ES256, "a").sign(&good_claims());
    for (what, body_frames) in [("body with the headers", 1), ("body after the headers", 2)] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let head = format!(
            "POST /orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {forged}\r\ncontent-type: application/json\r\ncontent-length: 13\r\nconnection: close\r\n\r\n"
        );
        if body_frames == 1 {
            s.write_all(format!("{head}{{\"order\": 42}}").as_bytes())
                .expect("write");
        } else {
            s.write_all(head.as_bytes()).expect("write");
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"{\"order\": 4").expect("write");
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"2}").expect("write");
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 503"), "{what}: {out}\n{}", envoy.log());
        assert_eq!(upstream.served(), 0, "{what}: the request reached the upstream\n{out}");
    }
}
