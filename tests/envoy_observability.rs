//! "Why was this request denied?" answered from Envoy itself: the exact Prometheus series per
//! outcome, reason, rule and provider; one JSON decision line per denial with the trace IDs
//! that came with the request and never the token; the optional reason header; a bounded log
//! volume under a flood.

mod common;

use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http::{self, Response};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn config() -> Value {
    let mut cfg = plugin_config();
    cfg["rules"] = json!([
        {"name": "health", "public": true, "paths": ["/healthz"]},
        {"name": "blocked-tenant", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked-co"]}]},
        {"name": "readers", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["orders:read"]}]},
        {"name": "legacy", "paths": ["/v1/*"]},
        {"name": "legacy-sunset", "action": "DENY", "dryRun": true, "paths": ["/v1/*"]}
    ]);
    // A second provider whose keys can never be fetched: its tokens get 503 jwks_unavailable.
    cfg["providers"].as_array_mut().expect("providers").push(json!({
        "name": "remote-idp", "issuer": "https://remote.test", "jwksUri": "http://127.0.0.1:9/jwks.json",
        "jwksCluster": "no-such-cluster", "jwksWaitTimeout": "1s"
    }));
    cfg
}

fn start(cfg: &Value) -> (EchoUpstream, Envoy) {
    let upstream = EchoUpstream::start(0).expect("upstream");
    let envoy =
        Envoy::start(&EnvoyOptions::new(cfg, upstream.port), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

fn get(envoy: &Envoy, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut hs: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        hs.push(("authorization", a));
    }
    http::get(envoy.port, path, &hs).expect("request")
}

fn tok(extra: Value) -> String {
    let mut c = good_claims();
    c.as_object_mut()
        .expect("o")
        .extend(extra.as_object().expect("o").clone());
    keys().ec.sign(&c)
}

#[test]
fn prometheus_series_per_outcome_reason_rule_and_provider() {
    let (_up, envoy) = start(&config());
    let reader = tok(json!({}));
    let expired = tok(json!({"exp": 1}));
    let blocked = tok(json!({"tenant": "blocked-co"}));
    let no_scope = tok(json!({"scope": "other"}));
    let remote = keys()
        .ec
        .sign(&with(good_claims(), "iss", json!("https://remote.test")));
    let plan: Vec<(&str, Option<&str>, u16, usize)> = vec![
        ("/orders", Some(&reader), 200, 3),
        ("/healthz", None, 200, 1),
        ("/orders", None, 401, 2),
        ("/orders", Some(&expired), 401, 1),
        ("/orders", Some(&blocked), 403, 2),
        ("/orders", Some(&no_scope), 403, 1),
        ("/v1/old", Some(&reader), 200, 1),
        ("/orders", Some(&remote), 503, 1),
    ];
    for (path, t, status, times) in &plan {
        for _ in 0..*times {
            assert_eq!(get(&envoy, path, *t, &[]).status, *status, "{path} {t:?}");
        }
    }
    let series = [
        r#"claimguard_requests_total{outcome="allowed",reason="none",rule="readers",provider="test-idp"} 3"#,
        r#"claimguard_requests_total{outcome="allowed",reason="none",rule="health",provider="none"} 1"#,
        r#"claimguard_requests_total{outcome="unauthenticated",reason="missing_token",rule="none",provider="none"} 2"#,
        r#"claimguard_requests_total{outcome="unauthenticated",reason="expired",rule="none",provider="test-idp"} 1"#,
        r#"claimguard_requests_total{outcome="denied",reason="policy_denied",rule="blocked-tenant",provider="test-idp"} 2"#,
        r#"claimguard_requests_total{outcome="denied",reason="insufficient_scope",rule="none",provider="test-idp"} 1"#,
        r#"claimguard_requests_total{outcome="dry_run_denied",reason="policy_denied",rule="legacy-sunset",provider="test-idp"} 1"#,
        r#"claimguard_requests_total{outcome="jwks_unavailable",reason="jwks_unavailable",rule="none",provider="remote-idp"} 1"#,
        r#"claimguard_jwks_fetches_total{provider="remote-idp",result="failure"}"#,
        r#"claimguard_jwks_keys{provider="remote-idp"} 0"#,
        // Verified-token cache: reader x4 (1 miss, 3 hits), expired (miss), blocked x2
        // (miss, hit), no-scope (miss).
        r#"claimguard_token_cache_total{result="hit"} 4"#,
        r#"claimguard_token_cache_total{result="miss"} 4"#,
    ];
    let prom = envoy.admin_until("stats/prometheus", |p| series.iter().all(|s| p.contains(s)));
    for s in series {
        assert!(
            prom.contains(s),
            "missing series {s}\n{}",
            prom.lines()
                .filter(|l| l.contains("claimguard"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn denial_lines_carry_trace_ids_and_never_the_token() {
    let (_up, envoy) = start(&config());
    let blocked = tok(json!({"tenant": "blocked-co", "sub": "mallory"}));
    let trace = [
        ("x-request-id", "req-7f3a"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-amzn-trace-id", "Root=1-67891233-abcdef012345678912345678"),
    ];
    assert_eq!(get(&envoy, "/orders/9?x=1", Some(&blocked), &trace).status, 403);
    let expired = tok(json!({"exp": 1}));
    assert_eq!(
        get(&envoy, "/orders", Some(&expired), &[("x-request-id", "req-exp")]).status,
        401
    );
    let reader = tok(json!({}));
    assert_eq!(get(&envoy, "/orders", Some(&reader), &[]).status, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = envoy.log();
        if let Some(l) = log.lines().find(|l| l.contains("req-7f3a")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no decision line:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let json_part = &line[line.find('{').expect("json")..];
    let v: Value = serde_json::from_str(json_part).expect("decision line is JSON");
    assert_eq!(v["claimguard"], "decision");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["status"], 403);
    assert_eq!(v["reason"], "policy_denied");
    assert_eq!(v["rule"], "blocked-tenant");
    assert_eq!(v["provider"], "test-idp");
    assert_eq!(v["issuer"], ISSUER);
    assert_eq!(v["subject"], "mallory");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/orders/9");
    assert_eq!(
        v["tokenFingerprint"],
        claimguard::request::decision::token_fingerprint(&blocked)
    );
    for (k, val) in trace {
        assert_eq!(v[k], val, "{k}");
    }
    let log = envoy.log();
    assert!(log.contains(r#""x-request-id":"req-exp""#), "the 401 has its line too");
    for t in [&blocked, &expired, &reader] {
        let sig = t.rsplit('.').next().expect("sig");
        assert!(
            !log.contains(t.as_str()) && !log.contains(sig),
            "a token or signature reached the log"
        );
    }
    // Allowed requests are logged at debug only.
    assert!(!log.lines().any(|l| l.contains(r#""decision":"allow""#)));
}

#[test]
fn optional_reason_header() {
    let mut cfg = config();
    cfg["decisionHeader"] = json!(true);
    let (_up, envoy) = start(&cfg);
    let r = get(&envoy, "/orders", Some(&tok(json!({"exp": 1}))), &[]);
    assert_eq!(r.header("x-claimguard-reason"), Some("expired"));
    let (_up2, plain) = start(&config());
    let r = get(&plain, "/orders", Some(&tok(json!({"exp": 1}))), &[]);
    assert_eq!(r.header("x-claimguard-reason"), None, "off by default");
}

#[test]
fn log_volume_is_bounded_under_a_flood() {
    let (_up, envoy) = start(&config());
    let started = Instant::now();
    // Bounded: 600 requests to 127.0.0.1.
    for i in 0..600 {
        let r = get(&envoy, "/orders", None, &[("x-request-id", &format!("flood-{i}"))]);
        assert_eq!(r.status, 401);
    }
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let lines = envoy.log().lines().filter(|l| l.contains("flood-")).count();
    // Burst 200 plus 50 per second.
    let bound = 200.0 + 50.0 * (secs + 1.0);
    assert!((lines as f64) <= bound, "{lines} lines in {secs:.1}s (bound {bound})");
    let stats = envoy.admin("stats?filter=decision_logs_dropped");
    let dropped: u64 = stats
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        dropped as usize + lines,
        600,
        "every line written or counted as dropped: {stats}"
    );
}
