//! The side-by-side benchmark behind `make bench`: one Envoy (`--concurrency 1`) with three
//! listeners on 127.0.0.1 in front of the same upstream cluster, driven in turn by `wrk`:
//!
//! * `no_auth`: router only, the floor;
//! * `native`: Envoy's `jwt_authn` (JWT cache on) + `rbac`, the policy below;
//! * `claimguard`: the wasm filter as istiod renders a WasmPlugin, the same policy.
//!
//! The policy on both: tokens from one issuer for one audience, RS256 and ES256 keys from one
//! JWKS, and the claim rule "`groups` contains `orders-readers`". On the native side that
//! rule is exactly what Istio generates for an AuthorizationPolicy `when:
//! request.auth.claims[groups]`: `jwt_authn` puts the payload into dynamic metadata
//! (`payload_in_metadata`) and an RBAC `metadata` principal matches the list with `one_of`.
//! Neither side forwards the token upstream (`jwt_authn`'s `forward: false` default, and
//! claimguard's `forwardOriginalToken: false` default).
//!
//! The upstream is a second Envoy whose only listener answers 200 with `direct_response`: it
//! costs almost nothing and runs in its own process, so the listeners differ only by their
//! filters. Every `wrk` run counts responses whose status is not the expected one (a Lua
//! `response` callback), so an error page can never pass for throughput.

use super::envoy::{self, Envoy, EnvoyOptions};
use super::keys::{Signer, TestKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use claimguard::crypto::alg::Alg;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://idp.bench.claimguard.test";
pub const AUDIENCE: &str = "orders-api";
/// The claim rule: `groups` must contain this value.
pub const GROUP: &str = "orders-readers";
/// Entries of both token caches (Envoy's `jwt_cache_size`, claimguard's default).
pub const JWT_CACHE_SIZE: usize = claimguard::request::cache::DEFAULT_CAPACITY;
/// Distinct tokens the warm scenarios rotate through.
pub const WARM_POOL: usize = 100;

/// The listeners, in the order every round starts from. `empty_wasm` is the floor any
/// proxy-wasm filter pays: `examples/empty_filter` built with its `headers` feature, which
/// reads the request header map once (as claimguard does first) and lets the request through.
pub const LISTENERS: [&str; 4] = ["no_auth", "native", "claimguard", "empty_wasm"];

/// `examples/empty_filter` with `--features headers`: `$EMPTY_FILTER_WASM`, else where
/// `make empty-filter` builds it.
pub fn empty_filter_path() -> PathBuf {
    match std::env::var_os("EMPTY_FILTER_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => envoy::repo_root().join("target/empty_filter/wasm32-wasip1/release/empty_filter.wasm"),
    }
}

/// The `empty_wasm` listener's filter: its own VM, no configuration.
fn empty_filter() -> Value {
    let mut f = envoy::wasm_filter(&empty_filter_path(), "");
    f["name"] = json!("empty_filter");
    f["typed_config"]["config"]["name"] = json!("empty_filter");
    f["typed_config"]["config"]["root_id"] = json!("");
    f["typed_config"]["config"]["vm_config"]["vm_id"] = json!("empty_filter");
    f
}

/// The wrk script: rotates tokens from a file (one per line), counts unexpected statuses.
/// Arguments after `--`: TOKENS_FILE EXPECTED_STATUS MODE, where MODE `cycle` reuses the
/// pool and `once` sends each token at most once and stops the thread when none are left.
pub const WRK_SCRIPT: &str = r#"-- claimguard bench (tools/src/bench.rs)
local threads = {}
function setup(thread) table.insert(threads, thread) end

-- Wall-clock µs (wrk gives scripts no clock): only read at the start and when a pool runs out,
-- because wrk reports the configured duration even for a thread that stopped early.
local function now_us()
  local p = io.popen("date +%s%N")
  local ns = tonumber(p:read("*l"))
  p:close()
  return math.floor(ns / 1000)
end

local tokens, n, expected, once = {}, 0, 200, false
function init(args)
  for line in io.lines(args[1]) do n = n + 1; tokens[n] = line end
  expected = tonumber(args[2])
  once = args[3] == "once"
  unexpected, exhausted, sent, ran_us = 0, 0, 0, 0
  if once then started_us = now_us() end
end

function request()
  if sent >= n then
    if once then
      exhausted = 1
      ran_us = now_us() - started_us
      wrk.thread:stop()
    end
    sent = 0
  end
  sent = sent + 1
  return wrk.format("GET", "/orders", {["Authorization"] = "Bearer " .. tokens[sent]})
end

function response(status, headers, body)
  if status ~= expected then unexpected = unexpected + 1 end
end

function done(summary, latency, requests)
  local unexp, exh, ran = 0, 0, 0
  for _, t in ipairs(threads) do
    unexp = unexp + t:get("unexpected")
    exh = exh + t:get("exhausted")
    ran = math.max(ran, t:get("ran_us"))
  end
  local duration = summary.duration
  if exh > 0 and ran > 0 then duration = ran end
  local e = summary.errors
  io.write(string.format(
    'CLAIMGUARD_BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"unexpected":%d,"exhausted":%d,"socket_errors":%d}\n',
    summary.requests, duration, latency:percentile(50), latency:percentile(99),
    unexp, exh, e.connect + e.read + e.write + e.timeout))
end
"#;

/// How a run is sized.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub wrk: PathBuf,
    /// Seconds per (scenario, listener, round).
    pub seconds: u64,
    pub rounds: u32,
    pub connections: u32,
    /// Never-seen tokens minted per (cold or deny scenario, round); a run that uses them all
    /// stops early and is measured over the time it ran (wall clock, read by the script).
    pub cold_tokens: usize,
    /// Scenario names to run (all when empty): warm-rs256 warm-es256 cold-rs256 cold-es256 deny-rs256.
    pub scenarios: Vec<String>,
    /// What the listeners route to and whether the token caches are on.
    pub method: Method,
}

/// How the listeners are set up (`BENCH_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `upstream` (the default): every listener routes to the upstream Envoy; the token caches
    /// are on, at their defaults (Envoy's `jwt_cache_config`, claimguard's `jwtCacheSize`).
    Upstream,
    /// `direct-nocache`: every route answers 200 itself (`direct_response`), so the filters
    /// are all the work there is, and both sides verify every request: `jwt_authn` without
    /// `jwt_cache_config`, claimguard with `jwtCacheSize: 0` (which also turns its decision
    /// memo off). What a user who has not tuned either side gets on tokens that never repeat.
    DirectNoCache,
    /// `direct`: every route answers 200 itself, as in `direct-nocache`, with both token caches
    /// on at their defaults, as in `upstream`. Without an upstream Envoy on the load
    /// generator's core capping every listener's requests/s, a warm lead (or its absence)
    /// shows in requests/s, not only in CPU per request.
    Direct,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Upstream => "upstream",
            Method::DirectNoCache => "direct-nocache",
            Method::Direct => "direct",
        }
    }

    fn caches(self) -> bool {
        self != Method::DirectNoCache
    }
}

impl BenchOptions {
    /// From `BENCH_SECONDS`, `BENCH_ROUNDS`, `BENCH_CONNECTIONS`, `BENCH_COLD_TOKENS`,
    /// `BENCH_SCENARIOS` (space-separated) and `WRK`, with defaults for a quiet machine.
    pub fn from_env() -> Result<BenchOptions, String> {
        fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number")),
                _ => Ok(default),
            }
        }
        let o = BenchOptions {
            wrk: std::env::var_os("WRK")
                .filter(|w| !w.is_empty())
                .map_or_else(|| PathBuf::from("wrk"), PathBuf::from),
            seconds: num("BENCH_SECONDS", 10)?,
            rounds: num("BENCH_ROUNDS", 3)?,
            connections: num("BENCH_CONNECTIONS", 16)?,
            cold_tokens: num("BENCH_COLD_TOKENS", 30_000)?,
            scenarios: std::env::var("BENCH_SCENARIOS")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            method: match std::env::var("BENCH_METHOD").unwrap_or_default().trim() {
                "" | "upstream" => Method::Upstream,
                "direct-nocache" => Method::DirectNoCache,
                "direct" => Method::Direct,
                other => {
                    return Err(format!(
                        "BENCH_METHOD={other:?}: known methods are upstream, direct and direct-nocache"
                    ))
                }
            },
        };
        if o.seconds == 0 || o.seconds > 600 {
            return Err("BENCH_SECONDS must be 1..=600".into());
        }
        if o.rounds == 0 || o.rounds > 50 {
            return Err("BENCH_ROUNDS must be 1..=50".into());
        }
        if o.connections == 0 || o.connections > 1000 {
            return Err("BENCH_CONNECTIONS must be 1..=1000".into());
        }
        if o.cold_tokens < 100 {
            return Err("BENCH_COLD_TOKENS must be at least 100".into());
        }
        for s in &o.scenarios {
            if !SCENARIOS.iter().any(|k| k.name == *s) {
                let names: Vec<&str> = SCENARIOS.iter().map(|k| k.name).collect();
                return Err(format!("unknown scenario {s:?} (known: {})", names.join(" ")));
            }
        }
        Ok(o)
    }
}

/// Which tokens a scenario sends and what each listener must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// [`WARM_POOL`] valid tokens, reused.
    Warm,
    /// Valid tokens, each sent once per listener.
    Cold,
    /// Never-seen tokens whose signature is invalid (a real signature by another key, over
    /// other bytes).
    BadSignature,
    /// Valid tokens without the group: the claim rule refuses them.
    Forbidden,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub alg: Alg,
    pub pool: Pool,
}

pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "warm-rs256",
        alg: Alg::RS256,
        pool: Pool::Warm,
    },
    Scenario {
        name: "warm-es256",
        alg: Alg::ES256,
        pool: Pool::Warm,
    },
    Scenario {
        name: "cold-rs256",
        alg: Alg::RS256,
        pool: Pool::Cold,
    },
    Scenario {
        name: "cold-es256",
        alg: Alg::ES256,
        pool: Pool::Cold,
    },
    Scenario {
        name: "deny-rs256",
        alg: Alg::RS256,
        pool: Pool::BadSignature,
    },
    // Not in the default set (see `DEFAULT_SCENARIOS`): the other families, mostly for
    // `BENCH_METHOD=direct-nocache`, where a warm pool is verified on every request.
    Scenario {
        name: "warm-es384",
        alg: Alg::ES384,
        pool: Pool::Warm,
    },
    Scenario {
        name: "warm-eddsa",
        alg: Alg::EdDSA,
        pool: Pool::Warm,
    },
    Scenario {
        name: "warm-ps256",
        alg: Alg::PS256,
        pool: Pool::Warm,
    },
];

/// The scenarios `make bench` runs when `BENCH_SCENARIOS` is unset.
pub const DEFAULT_SCENARIOS: [&str; 5] = ["warm-rs256", "warm-es256", "cold-rs256", "cold-es256", "deny-rs256"];

impl Pool {
    /// The status listener `listener` (an entry of [`LISTENERS`]) must answer.
    pub fn expected_status(self, listener: &str) -> u16 {
        match (self, listener) {
            (_, "no_auth" | "empty_wasm") | (Pool::Warm | Pool::Cold, _) => 200,
            (Pool::BadSignature, _) => 401,
            (Pool::Forbidden, _) => 403,
        }
    }
}

/// Keys and token minting for the benchmark.
pub struct BenchKeys {
    /// Not in the JWKS, same kid as the RS256 key: its signatures are well-formed but invalid.
    pub stranger: TestKey,
    /// One signing key per benchmarked algorithm ([`BENCH_ALGS`]), all in the JWKS.
    signers: Vec<(Alg, String, Signer)>,
    /// The JWKS entries of `signers`' keys.
    public: Vec<Value>,
    /// A real RS256 signature by `stranger` over other bytes: invalid on every bad-signature
    /// token (each still costs the verifier a full public-key operation), minted once.
    stranger_signature: Vec<u8>,
}

/// The algorithms the benchmark's JWKS has a key for: every asymmetric family claimguard
/// verifies (RSA PKCS#1 and PSS, P-256, P-384, Ed25519).
pub const BENCH_ALGS: [Alg; 5] = [Alg::RS256, Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::PS256];

impl Default for BenchKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl BenchKeys {
    pub fn new() -> BenchKeys {
        let rsa = TestKey::rsa(Alg::RS256, "bench-rsa");
        let ec = TestKey::generate(Alg::ES256, "bench-ec");
        let stranger = TestKey::rsa(Alg::RS256, "bench-rsa");
        // PS256 on its own RSA-2048 key: a JWK names one algorithm.
        let others = [
            TestKey::generate(Alg::ES384, "bench-ec384"),
            TestKey::generate(Alg::EdDSA, "bench-ed25519"),
            TestKey::rsa(Alg::PS256, "bench-pss"),
        ];
        let mut signers = Vec::new();
        let mut public = Vec::new();
        for (alg, k) in BENCH_ALGS.into_iter().zip([rsa, ec].iter().chain(others.iter())) {
            debug_assert_eq!(alg.name(), k.alg.name());
            signers.push((alg, k.kid.clone(), k.signer()));
            public.push(k.public_jwk());
        }
        BenchKeys {
            signers,
            public,
            stranger_signature: stranger.signer()(b"claimguard bench: not the signed bytes"),
            stranger,
        }
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": self.public })
    }

    /// Token `i` of a pool (distinct `jti` and `sub` per `tag` and `i`).
    pub fn token(&self, alg: Alg, pool: Pool, tag: &str, i: usize, now: u64) -> String {
        let group = if pool == Pool::Forbidden { "guests" } else { GROUP };
        let (kid, signer) = match self.signers.iter().find(|(a, _, _)| *a == alg) {
            Some((_, kid, signer)) => (kid, signer),
            None => panic!("the benchmark has no {} key", alg.name()),
        };
        let kid = if pool == Pool::BadSignature {
            &self.stranger.kid
        } else {
            kid
        };
        let header = json!({"alg": alg.name(), "typ": "JWT", "kid": kid});
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"), "iat": now,
            "exp": now + 7200, "groups": [group, "staff"], "jti": format!("{tag}-{i}")});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match pool {
            Pool::BadSignature => self.stranger_signature.clone(),
            _ => signer(input.as_bytes()),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// `count` tokens, minted on every core.
    pub fn pool(&self, alg: Alg, pool: Pool, tag: &str, count: usize) -> Vec<String> {
        let now = unix_now();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
        let chunk = count.div_ceil(threads).max(1);
        let mut out = vec![String::new(); count];
        std::thread::scope(|s| {
            for (c, slot) in out.chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    for (j, t) in slot.iter_mut().enumerate() {
                        *t = self.token(alg, pool, tag, c * chunk + j, now);
                    }
                });
            }
        });
        out
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// claimguard's plugin config for the benchmark policy (token cache and memo at their defaults).
pub fn claimguard_config(jwks: &Value) -> Value {
    claimguard_config_for(jwks, Method::Upstream)
}

/// claimguard's plugin config for the benchmark policy under `method`.
pub fn claimguard_config_for(jwks: &Value, method: Method) -> Value {
    let mut config = json!({
        "providers": [{
            "name": "bench-idp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": BENCH_ALGS.iter().map(|a| a.name()).collect::<Vec<_>>(),
            "jwks": jwks.to_string()
        }],
        "rules": [{"name": "readers", "when": [{"claim": "groups", "values": [GROUP]}]}]
    });
    if !method.caches() {
        config["jwtCacheSize"] = json!(0);
    }
    config
}

/// Envoy's `jwt_authn` + `rbac` filters with the same policy (JWT cache on).
pub fn native_filters(jwks: &Value) -> Vec<Value> {
    native_filters_for(jwks, Method::Upstream)
}

/// Envoy's `jwt_authn` + `rbac` filters with the same policy under `method`.
pub fn native_filters_for(jwks: &Value, method: Method) -> Vec<Value> {
    let mut filters = vec![
        json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"bench-idp": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "local_jwks": {"inline_string": jwks.to_string()},
                    "payload_in_metadata": "jwt_payload",
                    "clock_skew_seconds": 60,
                    "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE}
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench-idp"}}]
            }
        }),
        json!({
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"readers": {
                    "permissions": [{"any": true}],
                    "principals": [{"metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": "jwt_payload"}, {"key": "groups"}],
                        "value": {"list_match": {"one_of": {"string_match": {"exact": GROUP}}}}
                    }}]
                }}}
            }
        }),
    ];
    if !method.caches() {
        if let Some(p) = filters[0]["typed_config"]["providers"]["bench-idp"].as_object_mut() {
            p.remove("jwt_cache_config");
        }
    }
    filters
}

pub fn loopback(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router",
           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// A listener on 127.0.0.1 (port 0) whose one route is `route` (a `Route` without `match`).
pub fn listener(name: &str, route: Value, mut filters: Vec<Value>) -> Value {
    let mut entry = route;
    entry["match"] = json!({"prefix": "/"});
    filters.push(router());
    json!({
        "name": name,
        "address": loopback(0),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [entry]}]},
                "http_filters": filters
            }
        }]}]
    })
}

/// The upstream: one listener answering 200 from Envoy itself.
pub fn upstream_bootstrap() -> Value {
    json!({
        "node": {"id": "claimguard-bench-upstream", "cluster": "bench"},
        "admin": {"address": loopback(0)},
        "static_resources": {"listeners": [
            listener("upstream", json!({"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}), vec![])
        ]}
    })
}

/// The proxy under test: the four [`LISTENERS`], one upstream cluster.
pub fn proxy_bootstrap(wasm: &Path, jwks: &Value, upstream_port: u16) -> Value {
    proxy_bootstrap_for(wasm, jwks, upstream_port, Method::Upstream)
}

/// The proxy under test under `method`: the four [`LISTENERS`] routing to the upstream cluster, or
/// each answering 200 itself.
pub fn proxy_bootstrap_for(wasm: &Path, jwks: &Value, upstream_port: u16, method: Method) -> Value {
    let to_app = match method {
        Method::Upstream => json!({"route": {"cluster": "app"}}),
        Method::DirectNoCache | Method::Direct => {
            json!({"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}})
        }
    };
    let cg = envoy::wasm_filter(wasm, &claimguard_config_for(jwks, method).to_string());
    json!({
        "node": {"id": "claimguard-bench", "cluster": "bench"},
        "stats_config": {"stats_tags": claimguard::request::metrics::STATS_TAGS.iter()
            .map(|(name, regex)| json!({"tag_name": name, "regex": regex})).collect::<Vec<_>>()},
        "admin": {"address": loopback(0)},
        "static_resources": {
            "listeners": [
                listener("no_auth", to_app.clone(), vec![]),
                listener("native", to_app.clone(), native_filters_for(jwks, method)),
                listener("claimguard", to_app.clone(), vec![cg]),
                listener("empty_wasm", to_app, vec![empty_filter()]),
            ],
            "clusters": [app_cluster(upstream_port)]
        }
    })
}

/// The one upstream cluster every listener routes to.
pub fn app_cluster(upstream_port: u16) -> Value {
    json!({
        "name": "app",
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": loopback(upstream_port)}}
        ]}]}
    })
}

/// A proxy for comparing modules (`examples/ab.rs`, `examples/icount.rs`): `no_auth` and
/// `native` first when `baselines`, then one listener and VM per module (`m0`, `m1`, ...),
/// each with the benchmark's claimguard config (a path ending in `+filterState` sets
/// `filterState`). Returns the bootstrap and the listener names in order.
pub fn modules_bootstrap(
    node_id: &str,
    jwks: &Value,
    modules: &[String],
    baselines: bool,
    upstream_port: u16,
) -> (Value, Vec<String>) {
    let to_app = json!({"route": {"cluster": "app"}});
    let (mut listeners, mut names) = (Vec::new(), Vec::new());
    if baselines {
        listeners.push(listener("no_auth", to_app.clone(), vec![]));
        listeners.push(listener("native", to_app.clone(), native_filters(jwks)));
        names.extend(["no_auth".to_string(), "native".to_string()]);
    }
    for (i, m) in modules.iter().enumerate() {
        // Suffixes: `+filterState` (filter state on), `+nocache` (`jwtCacheSize: 0`).
        let (path, no_cache) = match m.strip_suffix("+nocache") {
            Some(p) => (p, true),
            None => (m.as_str(), false),
        };
        let (path, filter_state) = match path.strip_suffix("+filterState") {
            Some(p) => (p, true),
            None => (path, false),
        };
        let mut config = claimguard_config(jwks);
        config["filterState"] = json!(filter_state);
        if no_cache {
            config["jwtCacheSize"] = json!(0);
        }
        let mut f = envoy::wasm_filter(Path::new(path), &config.to_string());
        f["typed_config"]["config"]["vm_config"]["vm_id"] = json!(format!("m{i}"));
        let name = format!("m{i}");
        listeners.push(listener(&name, to_app.clone(), vec![f]));
        names.push(name);
    }
    let boot = json!({
        "node": {"id": node_id, "cluster": "bench"},
        "admin": {"address": loopback(0)},
        "static_resources": {"listeners": listeners, "clusters": [app_cluster(upstream_port)]}
    });
    (boot, names)
}

/// The running rig: upstream Envoy, proxy Envoy, listener ports.
pub struct Rig {
    pub upstream: Envoy,
    pub proxy: Envoy,
    /// Ports of [`LISTENERS`], same order.
    pub ports: [u16; 4],
    pub keys: BenchKeys,
    pub dir: PathBuf,
    /// The proxy has CPU 0 to itself; the upstream and wrk share CPU 1 (see [`Rig::pin`]).
    pub pinned: bool,
}

/// CPU time (user + system) a process has used so far, in µs, from `/proc/PID/stat`.
fn process_cpu_us(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces), starting with field 3.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split(' ');
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) * 1e6 / ticks as f64)
}

impl Rig {
    /// On a machine with at least two CPUs and `taskset`: the proxy (every thread) on CPU 0,
    /// the upstream on CPU 1, and wrk runs on CPU 1 too. The listeners under test then never
    /// compete with the load generator for a core, and the proxy's CPU time per request
    /// measures what each listener's filters cost.
    fn pin(&mut self) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pin = |pid: Option<u32>, cpu: &str| {
            pid.is_some_and(|pid| {
                Command::new("taskset")
                    .args(["-a", "-c", "-p", cpu, &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        };
        self.pinned = cpus >= 2 && pin(self.proxy.pid(), "0") && pin(self.upstream.pid(), "1");
    }

    pub fn start(keys: BenchKeys) -> Result<Rig, String> {
        Rig::start_with(keys, Method::Upstream)
    }

    /// The rig with its listeners set up as `method` says.
    pub fn start_with(keys: BenchKeys, method: Method) -> Result<Rig, String> {
        let mut up = EnvoyOptions::new(&json!({}), 0);
        up.raw_bootstrap = Some(upstream_bootstrap());
        up.log_level = "warn".into();
        let upstream = Envoy::start(&up, Duration::from_secs(60)).map_err(|e| format!("upstream: {e}"))?;
        let mut o = EnvoyOptions::new(&json!({}), 0);
        o.raw_bootstrap = Some(proxy_bootstrap_for(&o.wasm, &keys.jwks(), upstream.port, method));
        o.log_level = "warn".into();
        o.concurrency = 1;
        let proxy = Envoy::start(&o, Duration::from_secs(60)).map_err(|e| format!("proxy: {e}"))?;
        let bound = proxy.listener_ports();
        let mut ports = [0u16; 4];
        for (i, name) in LISTENERS.iter().enumerate() {
            ports[i] = bound
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("listener {name} is not bound: {bound:?}"))?;
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("claimguard-bench-{}-{seq}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        fs::write(dir.join("bench.lua"), WRK_SCRIPT).map_err(|e| format!("bench.lua: {e}"))?;
        let mut rig = Rig {
            upstream,
            proxy,
            ports,
            keys,
            dir,
            pinned: false,
        };
        rig.pin();
        Ok(rig)
    }

    /// Writes a token pool for wrk; returns its path.
    pub fn write_pool(&self, name: &str, tokens: &[String]) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("{name}.tokens"));
        let mut text = tokens.join("\n");
        text.push('\n');
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// One wrk run against listener `index` of [`LISTENERS`].
    pub fn run(
        &self,
        o: &BenchOptions,
        index: usize,
        tokens: &Path,
        expected: u16,
        once: bool,
        seconds: u64,
    ) -> Result<RunResult, String> {
        let port = self.ports.get(index).copied().ok_or("no such listener")?;
        let mut cmd = if self.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(&o.wrk);
            c
        } else {
            Command::new(&o.wrk)
        };
        let cpu_before = self.proxy.pid().and_then(process_cpu_us);
        let mut child = cmd
            .args(["-t1", &format!("-c{}", o.connections), &format!("-d{seconds}s")])
            .args(["--timeout", "5s", "--latency", "-s"])
            .arg(self.dir.join("bench.lua"))
            .arg(format!("http://127.0.0.1:{port}/orders"))
            .arg("--")
            .arg(tokens)
            .arg(expected.to_string())
            .arg(if once { "once" } else { "cycle" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {} (make bench-tools installs it): {e}", o.wrk.display()))?;
        // Bounded: wrk stops by itself after `seconds`; it is killed if it hangs past that.
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("wrk did not finish within {}s", seconds + 30));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(format!("wrk: {e}")),
            }
        }
        let out = child.wait_with_output().map_err(|e| format!("wrk: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("CLAIMGUARD_BENCH "))
            .ok_or_else(|| {
                format!(
                    "wrk gave no result:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("wrk result {line:?}: {e}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let cpu_after = self.proxy.pid().and_then(process_cpu_us);
        let proxy_cpu_us = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if n("requests") > 0 => Some((a - b) / n("requests") as f64),
            _ => None,
        };
        Ok(RunResult {
            proxy_cpu_us,
            requests: n("requests"),
            duration_us: n("duration_us").max(1),
            p50_us: n("p50_us"),
            p99_us: n("p99_us"),
            unexpected: n("unexpected"),
            exhausted: n("exhausted") > 0,
            socket_errors: n("socket_errors"),
        })
    }

    /// The claimguard worker VM's linear memory (the `claimguard.vm_memory_bytes` gauge).
    pub fn vm_memory_bytes(&self) -> Option<u64> {
        self.proxy.admin("stats?filter=vm_memory_bytes").lines().find_map(|l| {
            l.split_once("vm_memory_bytes: ")
                .and_then(|(_, v)| v.trim().parse().ok())
        })
    }

    /// Envoy's `/memory` `allocated` (the whole proxy process, heap only).
    pub fn proxy_allocated_bytes(&self) -> Option<u64> {
        let v: Value = serde_json::from_str(&self.proxy.admin("memory")).ok()?;
        v["allocated"].as_str()?.parse().ok()
    }
}

/// One smoke check: a listener, a pool, what it must answer, what it did.
pub struct SmokeRun {
    pub listener: &'static str,
    pub pool: Pool,
    pub expected: u16,
    pub result: RunResult,
}

/// The quick proof (part of `make test`) that the listeners answer what the benchmark
/// assumes: 200 to valid tokens on all four (`seconds` each), 401 to invalid signatures and
/// 403 to a claim-rule denial on `native` and `claimguard` (1 s each), counted by the same
/// wrk script the benchmark uses.
pub fn smoke(o: &BenchOptions, seconds: u64) -> Result<Vec<SmokeRun>, String> {
    let rig = Rig::start_with(BenchKeys::new(), o.method)?;
    let mut out = Vec::new();
    for (pool, listeners, secs) in [
        (Pool::Warm, &LISTENERS[..], seconds),
        (Pool::BadSignature, &LISTENERS[1..3], 1),
        (Pool::Forbidden, &LISTENERS[1..3], 1),
    ] {
        let tokens = rig.keys.pool(Alg::RS256, pool, &format!("smoke-{pool:?}"), WARM_POOL);
        let path = rig.write_pool(&format!("smoke-{pool:?}"), &tokens)?;
        for name in listeners {
            let index = LISTENERS.iter().position(|l| l == name).unwrap_or(0);
            let expected = pool.expected_status(name);
            let result = rig.run(o, index, &path, expected, false, secs)?;
            out.push(SmokeRun {
                listener: name,
                pool,
                expected,
                result,
            });
        }
    }
    Ok(out)
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    /// The proxy process's CPU time per request (µs), over the run.
    pub proxy_cpu_us: Option<f64>,
    pub requests: u64,
    pub duration_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Responses whose status was not the expected one.
    pub unexpected: u64,
    /// A `once` pool ran out before the time was up (the run is measured over its own time).
    pub exhausted: bool,
    pub socket_errors: u64,
}

impl RunResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 * 1e6 / self.duration_us as f64
    }
}

/// The rounds of one scenario on one listener.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub runs: Vec<RunResult>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Series {
    pub fn rps(&self) -> f64 {
        median(self.runs.iter().map(RunResult::rps).collect())
    }
    /// Median proxy CPU µs per request (None if it could not be read).
    pub fn cpu_us(&self) -> Option<f64> {
        let v: Vec<f64> = self.runs.iter().filter_map(|r| r.proxy_cpu_us).collect();
        (!v.is_empty()).then(|| median(v))
    }
    pub fn p50_ms(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_us as f64 / 1000.0).collect())
    }
    pub fn p99_ms(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_us as f64 / 1000.0).collect())
    }
    pub fn unexpected(&self) -> u64 {
        self.runs.iter().map(|r| r.unexpected + r.socket_errors).sum()
    }
    pub fn requests(&self) -> u64 {
        self.runs.iter().map(|r| r.requests).sum()
    }
    pub fn exhausted(&self) -> usize {
        self.runs.iter().filter(|r| r.exhausted).count()
    }
}

/// What one `make bench` measured.
pub struct Report {
    pub started: u64,
    pub options: BenchOptions,
    /// (scenario, series per listener in [`LISTENERS`] order)
    pub scenarios: Vec<(Scenario, [Series; 4])>,
    pub module_bytes: u64,
    pub vm_memory_warm: Option<u64>,
    pub vm_memory_end: Option<u64>,
    pub proxy_allocated_warm: Option<u64>,
    pub envoy_version: String,
    /// See [`Rig::pin`].
    pub pinned: bool,
}

/// Runs the whole benchmark, printing progress to stderr.
pub fn run(o: &BenchOptions) -> Result<Report, String> {
    let started = unix_now();
    let wasm = envoy::wasm_path();
    let module_bytes = fs::metadata(&wasm)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e} (run `make build`)", wasm.display()))?;
    eprintln!("bench: generating keys");
    let rig = Rig::start_with(BenchKeys::new(), o.method)?;
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            if o.scenarios.is_empty() {
                DEFAULT_SCENARIOS.contains(&s.name)
            } else {
                o.scenarios.iter().any(|n| n == s.name)
            }
        })
        .copied()
        .collect();

    // Warm-up: V8 compiles the filter lazily, and every cache starts empty. The warm-up sends
    // the very pools the warm scenarios reuse, so that their first round measures cache hits
    // on every listener, not the pool's first verification.
    let mut vm_memory_warm = None;
    let mut proxy_allocated_warm = None;
    let mut warm_pools: Vec<(Alg, PathBuf)> = Vec::new();
    // The warm scenarios' algorithms, and RS256 and ES256 always (V8 compiles the filter
    // lazily, and the cold and deny scenarios need it compiled too).
    let mut warm_algs = vec![Alg::RS256, Alg::ES256];
    for s in scenarios.iter().filter(|s| s.pool == Pool::Warm) {
        if !warm_algs.contains(&s.alg) {
            warm_algs.push(s.alg);
        }
    }
    for alg in warm_algs {
        let tag = format!("warm-{}", alg.name().to_ascii_lowercase());
        let pool = rig.keys.pool(alg, Pool::Warm, &tag, WARM_POOL);
        let path = rig.write_pool(&tag, &pool)?;
        warm_pools.push((alg, path.clone()));
        for (i, name) in LISTENERS.iter().enumerate() {
            let r = rig.run(o, i, &path, 200, false, 1)?;
            if r.unexpected > 0 {
                return Err(format!("warm-up on {name}: {} unexpected responses", r.unexpected));
            }
        }
        vm_memory_warm = rig.vm_memory_bytes();
        proxy_allocated_warm = rig.proxy_allocated_bytes();
    }

    let mut results = Vec::new();
    for s in scenarios {
        let mut series: [Series; 4] = Default::default();
        let warm_pool = match s.pool {
            Pool::Warm => match warm_pools.iter().find(|(a, _)| *a == s.alg) {
                Some((_, path)) => Some(path.clone()),
                None => return Err(format!("{}: no warm pool for {}", s.name, s.alg.name())),
            },
            _ => None,
        };
        for round in 0..o.rounds {
            // Never-seen pools: new tokens per round, each sent once to each listener (the
            // listeners' caches are separate, so one pool serves them all).
            let fresh = match &warm_pool {
                Some(_) => None,
                None => {
                    let t0 = Instant::now();
                    let tag = format!("{}-r{round}", s.name);
                    let pool = rig.keys.pool(s.alg, s.pool, &tag, o.cold_tokens);
                    eprintln!(
                        "bench: minted {} {} tokens in {:.1}s",
                        pool.len(),
                        s.name,
                        t0.elapsed().as_secs_f64()
                    );
                    Some(rig.write_pool(&tag, &pool)?)
                }
            };
            let (path, once) = match (&warm_pool, &fresh) {
                (Some(p), _) => (p, false),
                (None, Some(p)) => (p, true),
                (None, None) => return Err("no token pool".into()),
            };
            // Each round starts at the next listener, so that over the rounds no listener is
            // always the one run after the other two (when the machine has warmed, or drifted).
            for k in 0..LISTENERS.len() {
                let i = (k + round as usize) % LISTENERS.len();
                let Some(name) = LISTENERS.get(i) else { continue };
                let expected = s.pool.expected_status(name);
                let r = rig.run(o, i, path, expected, once, o.seconds)?;
                eprintln!(
                    "bench: {} round {} {:<10} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  unexpected {}{}",
                    s.name,
                    round + 1,
                    name,
                    r.rps(),
                    r.p50_us as f64 / 1000.0,
                    r.p99_us as f64 / 1000.0,
                    r.unexpected + r.socket_errors,
                    if r.exhausted {
                        "  (pool used up: shorter run)"
                    } else {
                        ""
                    }
                );
                if let Some(x) = series.get_mut(i) {
                    x.runs.push(r);
                }
            }
        }
        results.push((s, series));
    }
    let vm_memory_end = rig.vm_memory_bytes();
    Ok(Report {
        started,
        options: o.clone(),
        scenarios: results,
        module_bytes,
        vm_memory_warm,
        vm_memory_end,
        proxy_allocated_warm,
        envoy_version: envoy_version(),
        pinned: rig.pinned,
    })
}

fn envoy_version() -> String {
    Command::new(envoy::envoy_binary())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            // "version: <commit>/1.40.0/Clean/RELEASE/BoringSSL"
            text.split("version: ")
                .nth(1)
                .and_then(|v| v.split('/').nth(1))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `model name` × cores, kernel.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn date(unix: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm), UTC.
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(|| "n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
}

/// The heading of `BENCHMARKS.md`'s newest run, and of the log of the runs before it.
pub const LATEST_RUN: &str = "## Latest run";
pub const LOG: &str = "## Log";

/// `(line index, level)` of each ATX heading outside fenced code blocks.
fn headings(lines: &[&str]) -> Vec<(usize, usize)> {
    let mut fence = false;
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        let level = t.bytes().take_while(|b| *b == b'#').count();
        if !fence && (1..=6).contains(&level) && t.as_bytes().get(level) == Some(&b' ') {
            out.push((i, level));
        }
    }
    out
}

/// `BENCHMARKS.md` with `run` (a `### DATE` section, as [`Report::markdown`] writes it)
/// recorded: `run` replaces the run in the `## Latest run` section (after that section's own
/// introduction), and the run it replaces moves, unchanged, to the end of the `## Log`
/// section, which lists the older runs oldest first. The method sections stay where they
/// are, so the file keeps its shape: the method and the latest tables at the top, every
/// older run below. A missing `Latest run` section is created before the first `##`
/// section, a missing `Log` at the end.
pub fn record_run(doc: &str, run: &str) -> String {
    let lines: Vec<&str> = doc.lines().collect();
    let heads = headings(&lines);
    // A section runs to the next heading of its level or above.
    let section_end = |start: usize, level: usize| {
        heads
            .iter()
            .find(|&&(i, l)| i > start && l <= level)
            .map_or(lines.len(), |&(i, _)| i)
    };
    let find = |title: &str| {
        heads
            .iter()
            .find(|&&(i, l)| l == 2 && lines.get(i).is_some_and(|t| t.trim_end() == title))
            .map(|&(i, _)| i)
    };
    let text = |from: usize, to: usize| lines.get(from..to).unwrap_or_default().join("\n");

    // Edits as (replaced line range, new text), applied in line order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut previous = String::new();
    match find(LATEST_RUN) {
        Some(latest) => {
            let end = section_end(latest, 2);
            let first_run = heads
                .iter()
                .find(|&&(i, l)| i > latest && i < end && l == 3)
                .map_or(end, |&(i, _)| i);
            previous = text(first_run, end);
            edits.push((first_run, end, run.to_string()));
        }
        None => {
            let at = heads.iter().find(|&&(_, l)| l == 2).map_or(lines.len(), |&(i, _)| i);
            edits.push((at, at, format!("{LATEST_RUN}\n\n{run}")));
        }
    }
    match find(LOG) {
        Some(log) => {
            let end = section_end(log, 2);
            edits.push((end, end, previous));
        }
        None => edits.push((lines.len(), lines.len(), format!("{LOG}\n\n{previous}"))),
    }
    edits.sort_by_key(|e| e.0);

    // Blocks separated by exactly one blank line.
    let mut blocks = Vec::new();
    let mut at = 0;
    for (from, to, new) in edits {
        blocks.push(text(at, from));
        blocks.push(new);
        at = to.max(at);
    }
    blocks.push(text(at, lines.len()));
    let blocks: Vec<&str> = blocks
        .iter()
        .map(|b| b.trim_matches('\n'))
        .filter(|b| !b.is_empty())
        .collect();
    format!("{}\n", blocks.join("\n\n"))
}

impl Report {
    /// The run's section of `BENCHMARKS.md` (see [`record_run`]).
    pub fn markdown(&self, command: &str) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(s, "\n### {}\n", date(self.started));
        let _ = writeln!(s, "* machine: {}", machine());
        let _ = writeln!(
            s,
            "* method: `{}` ({})",
            o.method.name(),
            match o.method {
                Method::Upstream => "listeners route to an upstream Envoy answering 200; token caches on at their defaults",
                Method::Direct =>
                    "routes answer 200 themselves (`direct_response`); token caches on at their defaults",
                Method::DirectNoCache =>
                    "routes answer 200 themselves (`direct_response`); `jwt_authn` without `jwt_cache_config`, claimguard `jwtCacheSize: 0`",
            }
        );
        let _ = writeln!(
            s,
            "* Envoy {} `--concurrency 1`, wrk 1 thread × {} connections, {} s × {} rounds per \
             listener and scenario, interleaved, each round starting at the next listener \
             (no_auth, native, claimguard, empty_wasm; native, claimguard, empty_wasm, no_auth; …); \
             figures are medians \
             over the rounds",
            self.envoy_version, o.connections, o.seconds, o.rounds
        );
        if self.pinned {
            let _ = writeln!(
                s,
                "* the proxy pinned to CPU 0, the upstream Envoy and wrk to CPU 1 (`taskset`); \
                 proxy CPU is the proxy process's user + system time per request"
            );
        }
        let _ = writeln!(s, "* command: `{command}`\n");
        let _ = writeln!(
            s,
            "| scenario | listener | req/s | p50 ms | p99 ms | proxy CPU µs/req | requests | unexpected status |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|");
        for (sc, series) in &self.scenarios {
            for (name, x) in LISTENERS.iter().zip(series.iter()) {
                let short = if x.exhausted() > 0 {
                    format!(" ({} of {} runs used up their pool early)", x.exhausted(), x.runs.len())
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0}{short} | {:.3} | {:.3} | {} | {} | {} |",
                    sc.name,
                    name,
                    x.rps(),
                    x.p50_ms(),
                    x.p99_ms(),
                    x.cpu_us().map_or("n/a".into(), |c| format!("{c:.1}")),
                    x.requests(),
                    x.unexpected()
                );
            }
        }
        let _ = writeln!(
            s,
            "\n| scenario | claimguard / native req/s | claimguard / empty_wasm req/s | claimguard / no_auth req/s | p99 claimguard / native | filters' CPU µs/req: native | claimguard | empty_wasm | rounds claimguard ≥ native: req/s | p99 |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (sc, [a, b, c, e]) in &self.scenarios {
            let ratio = |x: f64, y: f64| if y > 0.0 { format!("{:.2}", x / y) } else { "n/a".into() };
            // What the filters add to the proxy's CPU time per request, over no_auth's.
            let added = |x: &Series| match (x.cpu_us(), a.cpu_us()) {
                (Some(x), Some(base)) => format!("{:.1}", x - base),
                _ => "n/a".into(),
            };
            // Round by round (each round runs the listeners back to back), how often claimguard
            // kept up: the medians alone hide whether a ratio near 1 is a lead or noise.
            let rounds = b.runs.len().min(c.runs.len());
            let pairs = || b.runs.iter().zip(c.runs.iter());
            let ahead = pairs().filter(|(n, g)| g.rps() >= n.rps()).count();
            let tail = pairs().filter(|(n, g)| g.p99_us <= n.p99_us).count();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {ahead} of {rounds} | {tail} of {rounds} |",
                sc.name,
                ratio(c.rps(), b.rps()),
                ratio(c.rps(), e.rps()),
                ratio(c.rps(), a.rps()),
                ratio(c.p99_ms(), b.p99_ms()),
                added(b),
                added(c),
                added(e)
            );
        }
        let _ = writeln!(s, "\n| footprint | |\n|---|--:|");
        let _ = writeln!(s, "| claimguard.wasm | {} bytes |", self.module_bytes);
        let _ = writeln!(
            s,
            "| claimguard worker VM linear memory after warm-up | {} |",
            mib(self.vm_memory_warm)
        );
        let _ = writeln!(
            s,
            "| claimguard worker VM linear memory at the end | {} |",
            mib(self.vm_memory_end)
        );
        let _ = writeln!(
            s,
            "| proxy heap (`/memory` allocated, all four listeners) after warm-up | {} |",
            mib(self.proxy_allocated_warm)
        );
        s
    }

    /// Responses that did not have the expected status, over every run.
    pub fn unexpected(&self) -> u64 {
        self.scenarios
            .iter()
            .flat_map(|(_, s)| s.iter())
            .map(Series::unexpected)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date(1_795_567_020), "2026-11-25 00:37 UTC");
    }

    const RUN_A: &str = "### 2026-01-01 00:00 UTC\n\n* command: `make bench`\n\n| a |\n|---|\n| 1 |\n\nNotes on A.";
    const RUN_B: &str = "### 2026-01-02 00:00 UTC\n\n| b |\n|---|\n| 2 |";
    const RUN_C: &str = "\n### 2026-01-03 00:00 UTC\n\n| c |\n|---|\n| 3 |\n";

    #[test]
    fn a_recorded_run_becomes_the_latest_and_the_one_before_moves_to_the_end_of_the_log() {
        let doc = format!(
            "# Benchmarks\n\nIntro.\n\n{LATEST_RUN}\n\nThe newest run.\n\n{RUN_B}\n\n\
             ## Method\n\n```sh\n## not a heading\nmake bench\n```\n\n{LOG}\n\nOldest first.\n\n{RUN_A}\n"
        );
        let got = record_run(&doc, RUN_C);
        let want = format!(
            "# Benchmarks\n\nIntro.\n\n{LATEST_RUN}\n\nThe newest run.\n\n{}\n\n\
             ## Method\n\n```sh\n## not a heading\nmake bench\n```\n\n{LOG}\n\nOldest first.\n\n{RUN_A}\n\n{RUN_B}\n",
            RUN_C.trim()
        );
        assert_eq!(got, want);
        // And again: B stays, C follows it.
        let again = record_run(&got, RUN_A);
        assert!(again.ends_with(&format!("{RUN_B}\n\n{}\n", RUN_C.trim())), "{again}");
        assert_eq!(again.matches("### ").count(), 4, "{again}");
    }

    #[test]
    fn a_file_without_the_sections_gets_them() {
        let got = record_run("# Benchmarks\n\nIntro.\n\n## Method\n\nText.\n", RUN_A);
        assert_eq!(
            got,
            format!("# Benchmarks\n\nIntro.\n\n{LATEST_RUN}\n\n{RUN_A}\n\n## Method\n\nText.\n\n{LOG}\n")
        );
        // The first run into an empty file, then the second.
        let first = record_run("", RUN_A);
        assert_eq!(first, format!("{LATEST_RUN}\n\n{RUN_A}\n\n{LOG}\n"));
        assert_eq!(
            record_run(&first, RUN_B),
            format!("{LATEST_RUN}\n\n{RUN_B}\n\n{LOG}\n\n{RUN_A}\n")
        );
    }

    #[test]
    fn the_committed_file_has_the_shape_make_bench_keeps() {
        let at = |what: &str| {
            BENCHMARKS
                .find(what)
                .unwrap_or_else(|| panic!("BENCHMARKS.md: no {what:?}"))
        };
        let (latest, method, log) = (at(LATEST_RUN), at("\n## What is compared\n"), at(&format!("\n{LOG}\n")));
        assert!(
            latest < method && method < log,
            "Latest run, then the method, then the Log"
        );
        // The latest run: its `###` section, up to the next `##` section.
        let run = &BENCHMARKS[latest..method];
        let run = run[run.find("\n### ").unwrap()..].trim();
        assert!(run.contains("* command: `make bench"), "{run}");

        // What `Report::markdown` writes is a `###` section that takes its place.
        let date = date(1_795_567_020);
        let doc = record_run(BENCHMARKS, &format!("\n### {date}\n\n| x |\n"));
        let log = doc.find(&format!("\n{LOG}\n")).unwrap();
        assert!(doc[..log].contains(&format!("{LATEST_RUN}\n")) && doc[..log].contains(&format!("### {date}\n")));
        assert!(!doc[..log].contains(run) && doc.ends_with(&format!("{run}\n")));
        assert_eq!(doc.len(), BENCHMARKS.len() + format!("### {date}\n\n| x |\n\n").len());
    }

    /// The file `make bench` records into, as committed.
    const BENCHMARKS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md"));

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn expected_statuses() {
        for pool in [Pool::Warm, Pool::Cold, Pool::BadSignature, Pool::Forbidden] {
            assert_eq!(pool.expected_status("no_auth"), 200, "{pool:?}");
        }
        assert_eq!(Pool::Cold.expected_status("native"), 200);
        assert_eq!(Pool::BadSignature.expected_status("claimguard"), 401);
        assert_eq!(Pool::Forbidden.expected_status("native"), 403);
    }

    #[test]
    fn four_listeners_one_cluster_and_the_same_rule() {
        let jwks = json!({"keys": []});
        let b = proxy_bootstrap(Path::new("/x.wasm"), &jwks, 4242);
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        let names: Vec<&str> = listeners.iter().map(|l| l["name"].as_str().unwrap()).collect();
        assert_eq!(names, LISTENERS);
        // The floor: the empty proxy-wasm filter, in its own VM, without configuration.
        let empty = &listeners[3]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
        assert_eq!(empty["typed_config"]["config"]["vm_config"]["vm_id"], "empty_filter");
        assert!(
            empty["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
                .as_str()
                .unwrap()
                .ends_with("empty_filter.wasm")
        );
        for l in listeners {
            let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
            assert_eq!(l["address"]["socket_address"]["address"], "127.0.0.1");
            assert_eq!(
                hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
                "app"
            );
        }
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1);
        let native = &native_filters(&jwks);
        let provider = &native[0]["typed_config"]["providers"]["bench-idp"];
        assert_eq!(provider["jwt_cache_config"]["jwt_cache_size"], JWT_CACHE_SIZE);
        assert_eq!(provider["issuer"], ISSUER);
        let principal = &native[1]["typed_config"]["rules"]["policies"]["readers"]["principals"][0]["metadata"];
        assert_eq!(principal["path"][1]["key"], "groups");
        assert_eq!(
            principal["value"]["list_match"]["one_of"]["string_match"]["exact"],
            GROUP
        );
        let cg = claimguard_config(&jwks);
        assert_eq!(cg["rules"][0]["when"][0], json!({"claim": "groups", "values": [GROUP]}));
        assert_eq!(cg["providers"][0]["issuer"], ISSUER);
    }

    #[test]
    fn direct_nocache_answers_on_every_route_with_both_caches_off() {
        let jwks = json!({"keys": []});
        let b = proxy_bootstrap_for(Path::new("/x.wasm"), &jwks, 4242, Method::DirectNoCache);
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        for l in listeners {
            let route =
                &l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0];
            assert_eq!(route["direct_response"]["status"], 200, "{}", l["name"]);
            assert!(route.get("route").is_none(), "{}", l["name"]);
        }
        let native = native_filters_for(&jwks, Method::DirectNoCache);
        let provider = &native[0]["typed_config"]["providers"]["bench-idp"];
        assert!(provider.get("jwt_cache_config").is_none());
        assert_eq!(provider["issuer"], ISSUER);
        let cg = claimguard_config_for(&jwks, Method::DirectNoCache);
        assert_eq!(cg["jwtCacheSize"], 0);
        // The compiled config agrees: no token cache, and so no decision memo either.
        let keys = BenchKeys::new();
        let c = claimguard::config::Config::from_json(
            claimguard_config_for(&keys.jwks(), Method::DirectNoCache)
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.jwt_cache_size(), 0);
        // The default method is unchanged.
        assert!(claimguard_config(&jwks).get("jwtCacheSize").is_none());
    }

    #[test]
    fn direct_answers_on_every_route_with_both_caches_on() {
        let jwks = json!({"keys": []});
        let b = proxy_bootstrap_for(Path::new("/x.wasm"), &jwks, 4242, Method::Direct);
        for l in b["static_resources"]["listeners"].as_array().unwrap() {
            let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
            let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
            assert_eq!(route["direct_response"]["status"], 200, "{}", l["name"]);
        }
        let native = native_filters_for(&jwks, Method::Direct);
        assert_eq!(
            native[0]["typed_config"]["providers"]["bench-idp"]["jwt_cache_config"]["jwt_cache_size"],
            JWT_CACHE_SIZE
        );
        assert!(claimguard_config_for(&jwks, Method::Direct)
            .get("jwtCacheSize")
            .is_none());
    }

    #[test]
    fn pools_are_distinct_and_verify_as_intended() {
        use claimguard::config::Config;
        use claimguard::request::decision::{evaluate, Decision, HttpRequest};
        let keys = BenchKeys::new();
        let config = Config::from_json(claimguard_config(&keys.jwks()).to_string().as_bytes()).unwrap();
        let now = unix_now();
        for (alg, pool, want) in [
            (Alg::RS256, Pool::Cold, 200u32),
            (Alg::ES256, Pool::Warm, 200),
            (Alg::ES384, Pool::Warm, 200),
            (Alg::EdDSA, Pool::Cold, 200),
            (Alg::PS256, Pool::Warm, 200),
            (Alg::RS256, Pool::BadSignature, 401),
            (Alg::RS256, Pool::Forbidden, 403),
        ] {
            let tokens = keys.pool(alg, pool, "t", 5);
            let mut unique = tokens.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 5);
            for t in &tokens {
                let h = vec![
                    (":method".to_string(), "GET".to_string()),
                    (":path".to_string(), "/orders".to_string()),
                    ("authorization".to_string(), format!("Bearer {t}")),
                ];
                let h_refs = claimguard::token::header_refs(&h);
                let status = match evaluate(&config, &config, &HttpRequest::from_headers(&h_refs), now, true).decision {
                    Decision::Allow { .. } => 200,
                    Decision::Deny(d) => d.status,
                    Decision::NeedKeys { .. } => 503,
                };
                assert_eq!(status, want, "{alg} {pool:?}");
            }
        }
    }
}
