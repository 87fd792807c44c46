//! Shared fixture for the real-Envoy tests: named test keys generated once per test binary,
//! named tokens (in the style of Envoy's jwt_authn test fixtures), and a running
//! Envoy + echo upstream pair that is torn down when the test ends.

#![allow(dead_code)]

use claimguard::crypto::alg::Alg;
use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http::{self, Response};
use claimguard_tools::keys::TestKey;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://idp.claimguard.test";
pub const AUDIENCE: &str = "orders-api";

pub struct Keys {
    pub rsa: TestKey,
    pub ec: TestKey,
    /// Not in the JWKS: signs tokens that must fail.
    pub stranger_rsa: TestKey,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: TestKey::rsa(Alg::RS256, "rsa-2024"),
        ec: TestKey::generate(Alg::ES256, "ec-2024"),
        stranger_rsa: TestKey::rsa(Alg::RS256, "rsa-2024"),
    })
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The plugin config the tests run: one provider, keys inline, default Authorization header.
pub fn plugin_config() -> Value {
    let k = keys();
    json!({
        "providers": [{
            "name": "test-idp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": json!({"keys": [k.rsa.public_jwk(), k.ec.public_jwk()]}).to_string()
        }]
    })
}

/// Claims of a token that should be accepted.
pub fn good_claims() -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, "scope": "orders:read"})
}

pub fn with(mut claims: Value, k: &str, v: Value) -> Value {
    claims[k] = v;
    claims
}

pub struct Stack {
    pub upstream: EchoUpstream,
    pub envoy: Envoy,
}

impl Stack {
    pub fn start(plugin_config: &Value) -> Stack {
        let upstream = EchoUpstream::start(0).expect("echo upstream");
        let opts = EnvoyOptions::new(plugin_config, upstream.port);
        let envoy = Envoy::start(&opts, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        Stack { upstream, envoy }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http::get(self.envoy.port, path, headers)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.envoy.log()))
    }

    pub fn get_with_token(&self, token: &str) -> Response {
        self.get("/orders", &[("authorization", &format!("Bearer {token}"))])
    }
}

/// The value of one exact series (`name{labels}`) in Envoy's `stats/prometheus` output, if
/// it is exported. (A substring match on "series N" would also accept N0, N1, ...)
pub fn prom_value(stats: &str, series: &str) -> Option<u64> {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// `(hits, misses)` of the counter `METRIC_total.result.{hit,miss}` in Envoy's stats text
/// (0 when a counter was never touched).
pub fn hit_miss(stats: &str, metric: &str) -> (u64, u64) {
    let count = |result: &str| {
        let name = format!("{metric}_total.result.{result}: ");
        stats
            .lines()
            .find_map(|l| l.split_once(&name).and_then(|(_, v)| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    (count("hit"), count("miss"))
}

/// `hit_miss` once it equals `want` (these counters reach Envoy on the filter's tick), or
/// what it is after the wait.
pub fn hit_miss_once(stack: &Stack, metric: &str, want: (u64, u64)) -> (u64, u64) {
    let stats = stack
        .envoy
        .admin_until(&format!("stats?filter={metric}"), |s| hit_miss(s, metric) == want);
    hit_miss(&stats, metric)
}
