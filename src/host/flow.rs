//! What the filter does on each proxy-wasm callback, written against the [`Host`] trait rather
//! than the ABI, so that it compiles natively and is unit-tested with a fake host (the tests
//! at the bottom). `host/glue.rs` implements [`Host`] with [`crate::host`]'s ABI wrappers and
//! forwards each callback here.
//!
//! One VM's state is a [`Vm`]: the config, the shared JWKS and ALB key caches, the requests
//! paused for keys, the verified-token cache, the decision memo, counters and the clock. Per
//! request ([`on_request_headers`]): replay a remembered outcome, or strip managed headers,
//! evaluate, and allow (header operations), answer (the exact local reply), or pause the
//! request while its keys are fetched. Per tick ([`on_tick`]): refresh the key caches, send
//! their callouts, and wake the paused requests whose keys arrived, whose fetch failed or
//! whose wait ran out, each answered by a last evaluation. A JWKS wait and an ALB key wait
//! differ only in what they wait for ([`Awaited`]): both are paused, capped, woken and
//! answered by the same code.
//!
//! Time comes in from the host (the tick's and the callout's `now_ms`, and [`Host::now_ms`]
//! for requests, read through [`Clock`]); nothing here reads a clock or a global of its own.
//!
//! Re-entrancy: a local reply or a resume can make the host call back into this VM
//! synchronously (response headers, stream end). So no `RefCell` borrow of the [`Vm`] is held
//! across [`Host::send_reply`] or [`Host::resume`] (the tests' fake host checks it), callouts
//! are dispatched before any request is woken in a tick, and requests are only woken from
//! the tick, never from a callout response.

use crate::base::abi::{decode_pairs, DecodedPair};
use crate::base::clock::Clock;
use crate::config::Config;
use crate::keys::alb::{AlbKeyCache, KeyEvent, KeyFetch};
use crate::keys::jwk::KeySet;
use crate::keys::remote::{Event, FetchRequest, FetchResult, JwksCache, KeyWait, SharedStore};
use crate::policy::identity::HeaderOps;
use crate::policy::RuleAction;
use crate::request::cache::VerifiedTokenCache;
use crate::request::decision::{evaluate_cached, managed_present, Decision, Evaluation, HttpRequest, KeyLookup, Peer};
use crate::request::memo::{memo_bytes, DecisionMemo, MemoOutcome, MemoSpec, RequestKey};
use crate::request::metrics::{
    decision_line, jwks_metric, labels, request_metric, Labels, LogBudget, MEMO_EVICTIONS, REJECTED_CACHE_EVICTIONS,
    TOKEN_CACHE_EVICTIONS,
};
use crate::token::Header;
use proxy_wasm::types::{Action, LogLevel, MetricType};
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Decision lines per second (and burst) each VM may write; the rest are counted.
const DECISION_LOG_PER_SECOND: u32 = 50;
const DECISION_LOG_BURST: u32 = 200;

/// Requests one VM may hold paused for keys (JWKS and ALB waits together); past this,
/// requests are answered at once.
pub const MAX_WAITERS: usize = 4096;

/// Body cap for an ALB key callout's response.
const ALB_KEY_MAX_BYTES: usize = 4096;

/// The body of every 500 the filter sends itself.
const INTERNAL_ERROR_BODY: &str = r#"{"error":"internal_error","message":"authentication could not be performed"}"#;

/// What one request needs from the proxy, and what the key caches need (shared data, through
/// [`SharedStore`]). Calls that fail report `Self::Error`, shown in log lines; the callers fail
/// closed on it. `glue.rs` implements it with the ABI wrappers; the tests with a fake.
pub trait Host: SharedStore + Clone {
    type Error: fmt::Display;

    /// The host's wall clock (ms), or None when it cannot be read.
    fn now_ms(&self) -> Option<u64>;
    /// Writes a log line (a line the host refuses is dropped: nothing sensible is left to do).
    fn log(&self, level: LogLevel, msg: &str);
    /// The level the host logs this filter at.
    fn log_level(&self) -> Result<Option<LogLevel>, Self::Error>;

    /// The current request's header map, serialized as the ABI hands it over
    /// ([`crate::base::abi::encode_pairs`]'s layout).
    fn request_headers(&self) -> Result<Vec<u8>, Self::Error>;
    fn remove_request_header(&self, name: &str) -> Result<(), Self::Error>;
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), Self::Error>;
    /// A property of the current request or its connection (path segments joined by NUL);
    /// None when the host cannot give it.
    fn property(&self, path: &[u8]) -> Option<Vec<u8>>;
    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Self::Error>;
    /// Answers the current request with a local reply.
    fn send_reply(&self, status: u32, headers: &[(String, String)], body: &str) -> Result<(), Self::Error>;
    /// Continues the current request, paused earlier.
    fn resume(&self) -> Result<(), Self::Error>;
    /// Makes `context_id` the current request (or root); an error when it is gone.
    fn set_effective_context(&self, context_id: u32) -> Result<(), Self::Error>;

    /// The id of a counter or gauge, defined on first use; None when the host refuses.
    fn define_metric(&self, kind: MetricType, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, by: i64);
    fn record_metric(&self, id: u32, value: u64);
    /// This VM's linear memory, in 64 KiB pages.
    fn memory_pages(&self) -> usize;

    /// Sends an HTTP callout; its token comes back with the response.
    fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Result<u32, Self::Error>;
    /// The response headers of the callout being answered, serialized (empty when the
    /// callout failed: Envoy then calls back with none).
    fn callout_headers(&self) -> Vec<u8>;
    /// The first `size` bytes of that response's body.
    fn callout_body(&self, size: usize) -> Vec<u8>;
}

/// What a paused request waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Awaited {
    /// A JWKS cache slot to change: its version or its failed attempts, as they were when the
    /// request paused.
    Jwks { slot: usize, version: u64, failures: u32 },
    /// One ALB key (source, kid) to be settled: published or known to be missing.
    Alb { source: usize, kid: String },
}

impl Awaited {
    /// The `claimguard` name of the line logged when a request starts waiting.
    fn line(&self) -> &'static str {
        match self {
            Awaited::Jwks { .. } => "waiting_for_keys",
            Awaited::Alb { .. } => "waiting_for_alb_key",
        }
    }

    /// Whether what the request waits for has happened (the deadline aside).
    fn arrived(&self, jwks: &JwksCache, alb: &mut AlbKeyCache, store: &dyn SharedStore, now_ms: u64) -> bool {
        match self {
            Awaited::Jwks {
                slot,
                version,
                failures,
            } => {
                let now_failures = jwks.slots.get(*slot).map_or(0, |s| s.meta.failures);
                jwks.version(*slot) != *version || now_failures != *failures
            }
            Awaited::Alb { source, kid } => alb.settled(store, *source, kid, now_ms),
        }
    }
}

/// A request paused while keys are fetched.
#[derive(Debug)]
struct Waiter {
    context_id: u32,
    deadline_ms: u64,
    awaited: Awaited,
}

/// What an outstanding callout was for.
enum Callout {
    /// A JWKS (or discovery document) fetch for a cache slot.
    Jwks { slot: usize, discovery: bool },
    /// An ALB public key fetch.
    AlbKey { source: usize, kid: String },
}

/// Counters and gauges of one remote key source.
struct SourceMetrics {
    fetch_success: Option<u32>,
    fetch_failure: Option<u32>,
    fetch_not_modified: Option<u32>,
    keys: Option<u32>,
    age_seconds: Option<u32>,
    key_miss: Option<u32>,
    expired: Option<u32>,
}

impl SourceMetrics {
    fn define(host: &impl Host, config: &Config, provider: usize) -> SourceMetrics {
        let m = |t: MetricType, what: &str| host.define_metric(t, &jwks_metric(config, provider, what));
        SourceMetrics {
            fetch_success: m(MetricType::Counter, "success"),
            fetch_failure: m(MetricType::Counter, "failure"),
            fetch_not_modified: m(MetricType::Counter, "not_modified"),
            keys: m(MetricType::Gauge, "keys"),
            age_seconds: m(MetricType::Gauge, "age_seconds"),
            key_miss: m(MetricType::Counter, "key_miss_total"),
            expired: m(MetricType::Counter, "expired_total"),
        }
    }
}

fn incr(host: &impl Host, id: Option<u32>) {
    if let Some(id) = id {
        host.increment_metric(id, 1);
    }
}

/// Adds `n`, counted elsewhere in the VM, to a counter (no host call for 0).
fn increment(host: &impl Host, id: Option<u32>, n: u64) {
    Batched { id, pending: n }.flush(host);
}

fn gauge(host: &impl Host, id: Option<u32>, v: u64) {
    if let Some(id) = id {
        host.record_metric(id, v);
    }
}

/// A counter on the request path: counted in the VM and handed to the host on each tick
/// (every 200 ms) instead of one host call per request.
#[derive(Clone, Copy, Default)]
struct Batched {
    id: Option<u32>,
    pending: u64,
}

impl Batched {
    fn new(id: Option<u32>) -> Batched {
        Batched { id, pending: 0 }
    }

    fn add(&mut self) {
        self.pending = self.pending.saturating_add(1);
    }

    fn flush(&mut self, host: &impl Host) {
        if self.pending > 0 {
            if let Some(id) = self.id {
                host.increment_metric(id, i64::try_from(self.pending).unwrap_or(i64::MAX));
            }
            self.pending = 0;
        }
    }
}

/// The request counters' map is looked up on every request; its keys are a few short fixed
/// strings and indices, not attacker-chosen, so SipHash (a tenth of `report`'s time in V8)
/// buys nothing: this is rustc's FxHash.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// (outcome, reason, rule, provider): see [`crate::request::metrics::Labels`].
type LabelKey = (&'static str, &'static str, Option<usize>, Option<usize>);

/// Per-VM state shared by the root context and the request contexts.
pub struct Vm<H: Host> {
    host: H,
    config: Rc<Config>,
    cache: JwksCache,
    /// Provider index → cache slot, for providers with remote keys.
    slot_of: Vec<Option<usize>>,
    /// Cache slot → provider index.
    provider_of: Vec<usize>,
    metrics: Vec<SourceMetrics>,
    waiters: Vec<Waiter>,
    /// Counts claim headers refused for unsafe values.
    refused_metric: Option<u32>,
    /// Counts decision lines suppressed by the log budget.
    dropped_metric: Option<u32>,
    /// Request counters by label set (bounded: labels come from fixed sets and the config).
    /// Each label set's slot in `request_counters`.
    request_metrics: HashMap<LabelKey, usize, BuildHasherDefault<FxHasher>>,
    request_counters: Vec<Batched>,
    log_budget: LogBudget,
    /// Verified tokens of this VM (bounded; none with `jwtCacheSize: 0`).
    token_cache: Option<VerifiedTokenCache>,
    /// (hit, miss) counters of the verified-token cache.
    cache_metrics: (Batched, Batched),
    /// Evictions of the verified-token and rejected-token caches: counted by the caches,
    /// handed to the host with the batched counters.
    eviction_metrics: (Option<u32>, Option<u32>),
    callouts: HashMap<u32, Callout>,
    /// ALB providers' keys by kid.
    alb: AlbKeyCache,
    /// Provider index → ALB source, for ALB providers.
    alb_of: Vec<Option<usize>>,
    /// (fetched, not found, failed) counters of ALB key fetches.
    alb_metrics: (Option<u32>, Option<u32>, Option<u32>),
    /// The `claimguard.vm_memory_bytes` gauge (this VM's linear memory) and the size last
    /// recorded, so the host is only called when memory grew.
    memory_metric: Option<u32>,
    memory_pages: usize,
    /// [`Config::uses_peer`]: otherwise the connection's properties are only read for a
    /// decision line that is written.
    uses_peer: bool,
    /// Whether Envoy logs at debug (or trace) for this filter, and when that was last asked
    /// (ms): asked at most once a second, not on every allowed request.
    debug_logs: (bool, u64),
    /// The time requests read, refreshed by the tick ([`crate::base::clock`]).
    clock: Clock,
    /// Allowed requests' outcomes by request (none with `jwtCacheSize: 0` or when the config
    /// reads more than the memo keys; see [`crate::request::memo`]).
    memo: Option<VmMemo>,
}

struct VmMemo {
    spec: MemoSpec,
    memo: DecisionMemo,
    /// Keys the request hash, like the token cache's seed.
    seed: u64,
    hits: Batched,
    misses: Batched,
    /// Counted by the memo, handed to the host with the batched counters.
    evictions: Option<u32>,
}

/// A VM state replaced by a new config lives on while requests that began under it finish
/// (they hold it): what they count reaches the host when the last of them lets go.
impl<H: Host> Drop for Vm<H> {
    fn drop(&mut self) {
        self.flush_counters();
    }
}

impl<H: Host> Vm<H> {
    /// The state for the plugin configuration `bytes`, or None when it is refused (logged:
    /// the proxy keeps its last good state). Requests paused under `old` are carried over
    /// (they must be answered) and what it counted is handed to the host. `holder` names
    /// this VM in leases and `seed` keys its caches' hashes: both random per VM.
    pub fn configure(host: H, bytes: &[u8], old: Option<&RefCell<Vm<H>>>, holder: u64, seed: u64) -> Option<Vm<H>> {
        let cfg = match Config::from_json(bytes) {
            Ok(cfg) => cfg,
            Err(e) => {
                // Refusing the config keeps the proxy on its last good state (or, at start-up,
                // keeps the listener from serving with a broken filter).
                host.log(LogLevel::Error, &format!("rejected plugin configuration: {e}"));
                return None;
            }
        };
        for w in &cfg.warnings {
            host.log(LogLevel::Warn, w);
        }
        host.log(
            LogLevel::Info,
            &format!("configured {} provider(s): {}", cfg.providers.len(), summary(&cfg)),
        );
        let mut slot_of = Vec::new();
        let mut provider_of = Vec::new();
        let mut remotes = Vec::new();
        let mut metrics = Vec::new();
        let mut alb_of = Vec::new();
        let mut alb_sources = Vec::new();
        for p in &cfg.providers {
            match &p.alb {
                Some(a) => {
                    alb_of.push(Some(alb_sources.len()));
                    // Configured keys stay on the provider; the cache holds fetched ones.
                    alb_sources.push((a.clone(), KeySet::default()));
                }
                None => alb_of.push(None),
            }
        }
        for (i, p) in cfg.providers.iter().enumerate() {
            match &p.remote {
                Some(r) => {
                    slot_of.push(Some(remotes.len()));
                    provider_of.push(i);
                    remotes.push(r.clone());
                    metrics.push(SourceMetrics::define(&host, &cfg, i));
                }
                None => slot_of.push(None),
            }
        }
        let waiters = old
            .and_then(|old| {
                old.try_borrow_mut().ok().map(|mut o| {
                    o.flush_counters();
                    std::mem::take(&mut o.waiters)
                })
            })
            .unwrap_or_default();
        let uses_peer = cfg.uses_peer();
        let token_cache = (cfg.jwt_cache_size > 0)
            .then(|| VerifiedTokenCache::with_budget(cfg.jwt_cache_size, cfg.jwt_cache_bytes, seed));
        let spec = MemoSpec::new(&cfg);
        if let Some(why) = spec.off() {
            host.log(LogLevel::Info, &format!("decision memo off: {why}"));
        }
        let counter = |name: &str| host.define_metric(MetricType::Counter, name);
        let memo = spec.off().is_none().then(|| VmMemo {
            spec,
            memo: DecisionMemo::with_budget(cfg.jwt_cache_size, memo_bytes(cfg.jwt_cache_bytes)),
            seed: seed.rotate_left(32) ^ 0x6d65_6d6f,
            hits: Batched::new(counter("claimguard.decision_memo_total.result.hit")),
            misses: Batched::new(counter("claimguard.decision_memo_total.result.miss")),
            evictions: counter(MEMO_EVICTIONS),
        });
        let refused_metric = counter("claimguard.claim_header_refused_total");
        let dropped_metric = counter("claimguard.decision_logs_dropped_total");
        let cache_metrics = (
            Batched::new(counter("claimguard.token_cache_total.result.hit")),
            Batched::new(counter("claimguard.token_cache_total.result.miss")),
        );
        let eviction_metrics = (counter(TOKEN_CACHE_EVICTIONS), counter(REJECTED_CACHE_EVICTIONS));
        let alb_metrics = (
            counter("claimguard.alb_key_fetch_total.result.fetched"),
            counter("claimguard.alb_key_fetch_total.result.not_found"),
            counter("claimguard.alb_key_fetch_total.result.failed"),
        );
        let memory_metric = host.define_metric(MetricType::Gauge, "claimguard.vm_memory_bytes");
        let mut vm = Vm {
            host,
            config: Rc::new(cfg),
            cache: JwksCache::new(remotes, holder),
            slot_of,
            provider_of,
            metrics,
            waiters,
            refused_metric,
            dropped_metric,
            request_metrics: HashMap::default(),
            request_counters: Vec::new(),
            log_budget: LogBudget::new(DECISION_LOG_PER_SECOND, DECISION_LOG_BURST),
            token_cache,
            cache_metrics,
            eviction_metrics,
            callouts: HashMap::new(),
            alb: AlbKeyCache::new(alb_sources, holder),
            alb_of,
            alb_metrics,
            memory_metric,
            memory_pages: 0,
            uses_peer,
            debug_logs: (false, 0),
            clock: Clock::default(),
            memo,
        };
        // Keys the proxy already fetched (a new config, or a VM started late) serve from the
        // first request, and so does their expiry: not the bootstrap keys until the first tick.
        let mut events = Vec::new();
        vm.cache.load(&vm.host, &mut events);
        report_events(&vm, &events);
        Some(vm)
    }

    /// Hands the batched request-path counters to the host.
    fn flush_counters(&mut self) {
        let host = &self.host;
        for c in &mut self.request_counters {
            c.flush(host);
        }
        self.cache_metrics.0.flush(host);
        self.cache_metrics.1.flush(host);
        if let Some(c) = &mut self.token_cache {
            let (verified, rejected) = c.take_evictions();
            increment(host, self.eviction_metrics.0, verified);
            increment(host, self.eviction_metrics.1, rejected);
        }
        if let Some(m) = &mut self.memo {
            m.hits.flush(host);
            m.misses.flush(host);
            increment(host, m.evictions, m.memo.take_evictions());
        }
    }
}

/// Records this VM's linear memory when it changed (it only grows).
fn record_memory<H: Host>(vm: &mut Vm<H>) {
    let pages = vm.host.memory_pages();
    if pages != vm.memory_pages {
        vm.memory_pages = pages;
        gauge(&vm.host, vm.memory_metric, (pages as u64).saturating_mul(65_536));
    }
}

/// The keys each provider verifies with at one moment: fetched keys while usable, else the
/// inline `jwks` (bootstrap) until a set was published or with `bootstrapJwksFallback`, else
/// none ([`JwksCache::key_set`]).
struct VmKeys<'a> {
    config: &'a Config,
    jwks: &'a JwksCache,
    slot_of: &'a [Option<usize>],
    alb: &'a AlbKeyCache,
    alb_of: &'a [Option<usize>],
    now_ms: u64,
}

impl KeyLookup for VmKeys<'_> {
    fn key_set(&self, provider: usize) -> Option<&KeySet> {
        if let Some(source) = self.alb_of.get(provider).copied().flatten() {
            return self.alb.keys(source);
        }
        let inline = self
            .config
            .providers
            .get(provider)
            .map(|p| &p.keys)
            .filter(|k| !k.is_empty());
        match self.slot_of.get(provider).copied().flatten() {
            Some(slot) => self.jwks.key_set(slot, self.now_ms, inline),
            None => inline,
        }
    }

    fn generation(&self, provider: usize) -> u64 {
        // Fetched sets have versions from 1; 0 is the inline (bootstrap) set.
        match self.slot_of.get(provider).copied().flatten() {
            Some(slot) if self.jwks.usable_keys(slot, self.now_ms).is_some() => self.jwks.version(slot),
            _ => 0,
        }
    }
}

/// Evaluates `req` with this VM's keys and verified-token cache, and counts the cache result.
fn evaluate_in<H: Host>(vm: &mut Vm<H>, req: &HttpRequest, now_ms: u64, final_attempt: bool) -> Evaluation {
    let Vm {
        config,
        cache,
        slot_of,
        token_cache,
        cache_metrics,
        alb,
        alb_of,
        ..
    } = vm;
    let keys = VmKeys {
        config,
        jwks: cache,
        slot_of,
        alb,
        alb_of,
        now_ms,
    };
    let ev = evaluate_cached(config, &keys, token_cache.as_mut(), req, now_ms / 1000, final_attempt);
    match ev.token_cache {
        Some(true) => cache_metrics.0.add(),
        Some(false) => cache_metrics.1.add(),
        None => {}
    }
    ev
}

/// The request's headers borrowed from `decoded`.
fn borrowed<'a>(decoded: &'a [DecodedPair<'a>]) -> Vec<Header<'a>> {
    decoded.iter().map(|(k, v)| (&**k, &**v)).collect()
}

/// The calling workload from Envoy's connection attributes: `connection.mtls` (a one-byte
/// bool), `connection.uri_san_peer_certificate` (the first URI SAN: a SPIFFE ID has exactly
/// one) and `source.address`. A property the host cannot give is absent, never a match-all.
fn peer(host: &impl Host) -> Peer {
    // Property paths as the host reads them: the segments joined by NUL.
    let text = |v: Vec<u8>| String::from_utf8(v).ok();
    let mtls = host.property(b"connection\0mtls").is_some_and(|b| b.as_slice() == [1]);
    let uri_san = host.property(b"connection\0uri_san_peer_certificate").and_then(text);
    let address = host.property(b"source\0address").and_then(text);
    Peer::from_connection(mtls, uri_san.as_deref(), address.as_deref())
}

fn send_reply(host: &impl Host, status: u32, headers: &[(String, String)], body: &str) {
    if let Err(e) = host.send_reply(status, headers, body) {
        host.log(LogLevel::Error, &format!("cannot send local reply: {e}"));
    }
}

/// Fails the current request closed with a 500 (and logs why): never let a request through
/// that was not checked.
pub fn refuse(host: &impl Host, what: &str) -> Action {
    host.log(LogLevel::Error, &format!("{what}; refusing the request"));
    let headers = [("content-type".to_string(), "application/json".to_string())];
    send_reply(host, 500, &headers, INTERNAL_ERROR_BODY);
    Action::Pause
}

/// Sets and removes the identity headers of an allowed request (and rewrites `:path` to the
/// canonical path it was judged on), and publishes filter state. A header that cannot be
/// changed is a failure to protect the upstream: the caller refuses the request (500).
fn apply_header_ops(host: &impl Host, ops: &HeaderOps, refused_metric: Option<u32>) -> Result<(), String> {
    for name in &ops.remove {
        host.remove_request_header(name)
            .map_err(|e| format!("cannot remove header {name}: {e}"))?;
    }
    for (name, value) in &ops.set {
        host.set_request_header(name, value)
            .map_err(|e| format!("cannot set header {name}: {e}"))?;
    }
    for (name, why) in &ops.refused {
        incr(host, refused_metric);
        host.log(
            LogLevel::Warn,
            &json!({"claimguard": "claim_header_refused", "header": name, "why": why}).to_string(),
        );
    }
    for (key, value) in &ops.filter_state {
        // A one-segment property path is the key itself.
        let _ = host.set_property(key.as_bytes(), value.as_bytes());
    }
    Ok(())
}

fn summary(cfg: &Config) -> String {
    cfg.providers
        .iter()
        .map(|p| match &p.remote {
            Some(r) => format!(
                "{} ({} inline key(s), remote {}{})",
                p.name,
                p.keys.keys.len(),
                r.url.authority(),
                r.url.path
            ),
            None => format!("{} ({} key(s))", p.name, p.keys.keys.len()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `proxy_on_request_headers` for a stream of this VM (`context_id`, the current context).
pub fn on_request_headers<H: Host>(vm_rc: &RefCell<Vm<H>>, context_id: u32) -> Action {
    let host = vm_rc.borrow().host.clone();
    let buf = match host.request_headers() {
        Ok(b) => b,
        Err(e) => return refuse(&host, &format!("cannot read request headers: {e}")),
    };
    #[cfg(all(feature = "fault-injection", target_arch = "wasm32"))]
    if crate::base::abi::pair_spans(&buf).is_ok_and(|mut s| {
        s.any(|p| p.is_ok_and(|(k, v)| buf.get(k) == Some(b"x-claimguard-fault") && buf.get(v) == Some(b"trap")))
    }) {
        core::arch::wasm32::unreachable();
    }
    let Some(now) = vm_rc.borrow_mut().clock.now_ms(|| host.now_ms()) else {
        return refuse(&host, "cannot read the clock");
    };
    // A request exactly like one allowed before (crate::request::memo): its outcome, replayed.
    let memo_key = {
        let mut guard = vm_rc.borrow_mut();
        let vm = &mut *guard;
        let key = vm.memo.as_ref().and_then(|m| m.spec.key(&buf, m.seed));
        if let Some(k) = &key {
            if !debug_lines(vm, now) {
                if let Some(outcome) = memo_hit(vm, k, now) {
                    let refused_metric = vm.refused_metric;
                    drop(guard);
                    return match apply_header_ops(&host, &outcome.header_ops, refused_metric) {
                        Ok(()) => Action::Continue,
                        Err(e) => refuse(&host, &e),
                    };
                }
            }
        }
        key
    };
    let decoded = match decode_pairs(&buf) {
        Ok(d) => d,
        Err(e) => return refuse(&host, &format!("cannot read request headers: {e}")),
    };
    let headers = borrowed(&decoded);
    // Before anything else, on every request: no client-supplied copy of a header
    // claimguard sets ever reaches the upstream.
    {
        let vm = vm_rc.borrow();
        for name in managed_present(&vm.config, &headers) {
            if let Err(e) = host.remove_request_header(&name) {
                drop(vm);
                return refuse(&host, &format!("cannot remove header {name}: {e}"));
            }
        }
    }
    let mut vm = vm_rc.borrow_mut();
    let mut req = HttpRequest::from_headers(&headers);
    if vm.uses_peer {
        req = req.with_peer(peer(&host));
    }
    let mut ev = evaluate_in(&mut vm, &req, now, false);
    if let Decision::NeedKeys { provider, kid } = &ev.decision {
        match wait_for_keys(&mut vm, *provider, kid.as_deref(), now) {
            Some((awaited, deadline_ms)) if vm.waiters.len() < MAX_WAITERS => {
                host.log(
                    LogLevel::Debug,
                    &json!({"claimguard": awaited.line(), "kid": kid, "deadlineMs": deadline_ms}).to_string(),
                );
                vm.waiters.push(Waiter {
                    context_id,
                    deadline_ms,
                    awaited,
                });
                return Action::Pause;
            }
            // Nothing coming soon enough, or too many waiting: decide now.
            _ => ev = evaluate_in(&mut vm, &req, now, true),
        }
    }
    let labels = report(&mut vm, &req, &ev, now);
    if let Some(k) = &memo_key {
        memo_offer(&mut vm, k, &ev, &labels, now);
    }
    record_memory(&mut vm);
    let refused_metric = vm.refused_metric;
    drop(vm);
    match ev.decision {
        Decision::Allow { .. } => match apply_header_ops(&host, &ev.header_ops, refused_metric) {
            Ok(()) => Action::Continue,
            Err(e) => refuse(&host, &e),
        },
        Decision::Deny(d) => {
            send_reply(&host, d.status, &d.headers, &d.body);
            Action::Pause
        }
        Decision::NeedKeys { .. } => refuse(&host, "keys still missing after the final attempt"),
    }
}

/// Whether a request whose keys are missing may wait for them, and until when: the ALB key
/// its kid names, or the next JWKS attempt for its provider, as the key cache decides (an
/// attempt in flight or due soon, no negative entry or cooldown in the way). None: answer now.
fn wait_for_keys<H: Host>(vm: &mut Vm<H>, provider: usize, kid: Option<&str>, now: u64) -> Option<(Awaited, u64)> {
    if let (Some(source), Some(kid)) = (vm.alb_of.get(provider).copied().flatten(), kid) {
        return match vm.alb.on_missing_key(&vm.host, source, kid, now) {
            KeyWait::Wait { deadline_ms } => Some((
                Awaited::Alb {
                    source,
                    kid: kid.to_string(),
                },
                deadline_ms,
            )),
            KeyWait::GiveUp => None,
        };
    }
    let slot = vm.slot_of.get(provider).copied().flatten()?;
    incr(&vm.host, vm.metrics.get(slot).and_then(|m| m.key_miss));
    match vm.cache.on_missing_key(&vm.host, slot, kid, now) {
        KeyWait::Wait { deadline_ms } => Some((
            Awaited::Jwks {
                slot,
                version: vm.cache.version(slot),
                failures: vm.cache.slots.get(slot).map_or(0, |s| s.meta.failures),
            },
            deadline_ms,
        )),
        KeyWait::GiveUp => None,
    }
}

/// `proxy_on_tick` for the root context `root_context_id` of this VM: takes the clock's
/// reading, flushes the batched counters, refreshes the key caches, sends their callouts,
/// then wakes the paused requests that are ready.
pub fn on_tick<H: Host>(vm_rc: &RefCell<Vm<H>>, root_context_id: u32, now: u64) {
    let (host, fetches, alb_fetches) = {
        let mut guard = vm_rc.borrow_mut();
        let vm = &mut *guard;
        vm.clock.ticked(now);
        vm.flush_counters();
        let mut events = Vec::new();
        let fetches = vm.cache.tick(&vm.host, now, &mut events);
        let alb_fetches = vm.alb.tick(&vm.host, now);
        report_events(vm, &events);
        for (slot, m) in vm.metrics.iter().enumerate() {
            if let Some(s) = vm.cache.slots.get(slot) {
                gauge(&vm.host, m.keys, s.keys.as_ref().map_or(0, |k| k.keys.len() as u64));
                if s.meta.fetched_at > 0 {
                    gauge(&vm.host, m.age_seconds, now.saturating_sub(s.meta.fetched_at) / 1000);
                }
            }
        }
        (vm.host.clone(), fetches, alb_fetches)
    };
    // Callouts first: waking a request below may re-enter the VM and move the host's notion
    // of the current context away from this root context.
    for f in fetches {
        dispatch(vm_rc, &host, f, now);
    }
    for f in alb_fetches {
        dispatch_alb(vm_rc, &host, f, now);
    }
    wake_waiters(vm_rc, &host, root_context_id, now);
}

/// Answers or resumes every paused request whose keys changed, whose fetch attempt
/// finished, or whose wait ran out: each is evaluated a last time from its headers.
fn wake_waiters<H: Host>(vm_rc: &RefCell<Vm<H>>, host: &H, root_context_id: u32, now: u64) {
    let ready: Vec<Waiter> = {
        let mut guard = vm_rc.borrow_mut();
        let vm = &mut *guard;
        let (cache, alb, store) = (&vm.cache, &mut vm.alb, &vm.host);
        let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut vm.waiters)
            .into_iter()
            .partition(|w| now >= w.deadline_ms || w.awaited.arrived(cache, alb, store, now));
        vm.waiters = waiting;
        ready
    };
    for w in ready {
        if host.set_effective_context(w.context_id).is_err() {
            continue; // the request is gone
        }
        // From here on the request is ours to answer: a host call that fails refuses it
        // (500) rather than leaving it paused.
        let buf = match host.request_headers() {
            Ok(b) => b,
            Err(e) => {
                refuse(host, &format!("cannot read request headers: {e}"));
                continue;
            }
        };
        let decoded = match decode_pairs(&buf) {
            Ok(d) => d,
            Err(e) => {
                refuse(host, &format!("cannot read request headers: {e}"));
                continue;
            }
        };
        let headers = borrowed(&decoded);
        let mut req = HttpRequest::from_headers(&headers);
        if vm_rc.borrow().uses_peer {
            req = req.with_peer(peer(host));
        }
        let (ev, refused_metric) = {
            let mut vm = vm_rc.borrow_mut();
            let ev = evaluate_in(&mut vm, &req, now, true);
            report(&mut vm, &req, &ev, now);
            (ev, vm.refused_metric)
        };
        match ev.decision {
            Decision::Allow { .. } => match apply_header_ops(host, &ev.header_ops, refused_metric) {
                Ok(()) => {
                    if let Err(e) = host.resume() {
                        refuse(host, &format!("cannot resume the request: {e}"));
                    }
                }
                Err(e) => {
                    host.log(LogLevel::Error, &format!("{e}; refusing the request"));
                    send_reply(host, 500, &[], INTERNAL_ERROR_BODY);
                }
            },
            Decision::Deny(d) => send_reply(host, d.status, &d.headers, &d.body),
            Decision::NeedKeys { .. } => {
                // Not produced with final_attempt; fail closed all the same.
                send_reply(
                    host,
                    503,
                    &[],
                    r#"{"error":"jwks_unavailable","message":"signing keys are not available"}"#,
                );
            }
        }
    }
    let _ = host.set_effective_context(root_context_id);
}

/// `proxy_on_http_call_response` for a callout of this VM, answered at `now` (ms).
pub fn on_http_call_response<H: Host>(vm_rc: &RefCell<Vm<H>>, token_id: u32, body_size: usize, now: u64) {
    let (host, follow_up) = {
        let mut guard = vm_rc.borrow_mut();
        let vm = &mut *guard;
        let (slot, discovery) = match vm.callouts.remove(&token_id) {
            Some(Callout::Jwks { slot, discovery }) => (slot, discovery),
            Some(Callout::AlbKey { source, kid }) => {
                let result = read_callout_response(&vm.host, body_size, ALB_KEY_MAX_BYTES);
                let event = vm.alb.on_fetch_done(&vm.host, source, &kid, now, result);
                report_alb_event(vm, event);
                return;
            }
            None => return,
        };
        let max = vm.cache.slots.get(slot).map_or(0, |s| s.remote.max_bytes);
        let result = read_callout_response(&vm.host, body_size, max);
        let mut events = Vec::new();
        let next = vm
            .cache
            .on_fetch_done(&vm.host, slot, now, discovery, result, &mut events);
        report_events(vm, &events);
        (vm.host.clone(), next)
    };
    // Discovery found the jwks_uri: fetch it now, under the same lease.
    if let Some(req) = follow_up {
        dispatch(vm_rc, &host, req, now);
    }
}

/// The answered callout as the key caches take it: status, body (none past `max_bytes`),
/// `cache-control` and `etag`; a callout answered without headers failed.
fn read_callout_response(host: &impl Host, body_size: usize, max_bytes: usize) -> FetchResult {
    let buf = host.callout_headers();
    let headers = decode_pairs(&buf).unwrap_or_default();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    };
    let Some(status) = header(":status").and_then(|s| s.parse::<u16>().ok()) else {
        // Envoy calls back with no headers when the callout failed or timed out.
        return FetchResult::Failed("callout failed (connection refused, reset or timeout)".into());
    };
    let body = if body_size <= max_bytes {
        host.callout_body(body_size)
    } else {
        Vec::new()
    };
    FetchResult::Response {
        status,
        body,
        body_size,
        cache_control: header("cache-control"),
        etag: header("etag"),
    }
}

fn dispatch<H: Host>(vm_rc: &RefCell<Vm<H>>, host: &H, req: FetchRequest, now: u64) {
    let mut headers = vec![
        (":method", "GET"),
        (":path", req.path.as_str()),
        (":authority", req.authority.as_str()),
        ("accept", "application/json"),
        ("user-agent", "claimguard"),
    ];
    if let Some(etag) = req.etag.as_deref() {
        headers.push(("if-none-match", etag));
    }
    match host.dispatch(&req.cluster, &headers, req.timeout_ms) {
        Ok(token) => {
            vm_rc.borrow_mut().callouts.insert(
                token,
                Callout::Jwks {
                    slot: req.source,
                    discovery: req.discovery,
                },
            );
        }
        Err(status) => {
            let mut guard = vm_rc.borrow_mut();
            let vm = &mut *guard;
            let mut events = Vec::new();
            let error = format!("cannot call cluster {:?} ({status}): is it defined?", req.cluster);
            // A failed dispatch never yields a discovery follow-up.
            let _ = vm.cache.on_fetch_done(
                &vm.host,
                req.source,
                now,
                req.discovery,
                FetchResult::Failed(error),
                &mut events,
            );
            report_events(vm, &events);
        }
    }
}

fn dispatch_alb<H: Host>(vm_rc: &RefCell<Vm<H>>, host: &H, f: KeyFetch, now: u64) {
    let headers = [
        (":method", "GET"),
        (":path", f.path.as_str()),
        (":authority", f.authority.as_str()),
        ("accept", "application/x-pem-file, text/plain"),
        ("user-agent", "claimguard"),
    ];
    match host.dispatch(&f.cluster, &headers, f.timeout_ms) {
        Ok(token) => {
            vm_rc.borrow_mut().callouts.insert(
                token,
                Callout::AlbKey {
                    source: f.source,
                    kid: f.kid,
                },
            );
        }
        Err(status) => {
            let mut guard = vm_rc.borrow_mut();
            let vm = &mut *guard;
            let error = format!("cannot call cluster {:?} ({status}): is it defined?", f.cluster);
            let event = vm
                .alb
                .on_fetch_done(&vm.host, f.source, &f.kid, now, FetchResult::Failed(error));
            report_alb_event(vm, event);
        }
    }
}

fn report_alb_event<H: Host>(vm: &Vm<H>, event: Option<KeyEvent>) {
    let Some(event) = event else { return };
    let provider = |source: &usize| {
        vm.alb_of
            .iter()
            .position(|s| *s == Some(*source))
            .and_then(|p| vm.config.providers.get(p))
            .map_or("-", |p| p.name.as_str())
    };
    let (level, line) = match &event {
        KeyEvent::Fetched { source, kid } => {
            incr(&vm.host, vm.alb_metrics.0);
            (
                LogLevel::Info,
                json!({"claimguard": "alb_key_fetched", "provider": provider(source), "kid": kid}),
            )
        }
        KeyEvent::NotFound { source, kid, status } => {
            incr(&vm.host, vm.alb_metrics.1);
            (
                LogLevel::Warn,
                json!({"claimguard": "alb_key_not_found", "provider": provider(source), "kid": kid, "status": status}),
            )
        }
        KeyEvent::Failed { source, kid, error } => {
            incr(&vm.host, vm.alb_metrics.2);
            (
                LogLevel::Warn,
                json!({"claimguard": "alb_key_fetch_failed", "provider": provider(source), "kid": kid, "error": error}),
            )
        }
    };
    vm.host.log(level, &line.to_string());
}

fn report_events<H: Host>(vm: &Vm<H>, events: &[Event]) {
    let host = &vm.host;
    for e in events {
        let slot = match e {
            Event::Fetched { source, .. }
            | Event::NotModified { source }
            | Event::Discovered { source, .. }
            | Event::FetchFailed { source, .. }
            | Event::Loaded { source, .. }
            | Event::LoadFailed { source, .. }
            | Event::Superseded { source, .. }
            | Event::Expired { source, .. } => *source,
        };
        let provider = vm
            .provider_of
            .get(slot)
            .and_then(|p| vm.config.providers.get(*p))
            .map_or("-", |p| p.name.as_str());
        let m = vm.metrics.get(slot);
        let (level, line) = match e {
            Event::Fetched { keys, version, .. } => {
                incr(host, m.and_then(|m| m.fetch_success));
                (
                    LogLevel::Info,
                    json!({"claimguard": "jwks_fetched", "provider": provider, "keys": keys, "version": version}),
                )
            }
            Event::NotModified { .. } => {
                incr(host, m.and_then(|m| m.fetch_not_modified));
                (
                    LogLevel::Info,
                    json!({"claimguard": "jwks_not_modified", "provider": provider}),
                )
            }
            Event::Discovered { jwks_uri, .. } => (
                LogLevel::Info,
                json!({"claimguard": "jwks_discovered", "provider": provider, "jwksUri": jwks_uri}),
            ),
            Event::FetchFailed {
                error,
                failures,
                retry_in_ms,
                ..
            } => {
                incr(host, m.and_then(|m| m.fetch_failure));
                (
                    LogLevel::Warn,
                    json!({"claimguard": "jwks_fetch_failed", "provider": provider, "error": error,
                           "failures": failures, "retryInMs": retry_in_ms}),
                )
            }
            Event::Loaded { keys, version, .. } => (
                LogLevel::Debug,
                json!({"claimguard": "jwks_loaded", "provider": provider, "keys": keys, "version": version}),
            ),
            Event::LoadFailed { error, version, .. } => (
                LogLevel::Error,
                json!({"claimguard": "jwks_load_failed", "provider": provider, "version": version, "error": error}),
            ),
            Event::Superseded { version, .. } => (
                LogLevel::Info,
                json!({"claimguard": "jwks_publish_superseded", "provider": provider, "version": version}),
            ),
            Event::Expired {
                version,
                age_ms,
                bootstrap_fallback,
                ..
            } => {
                incr(host, m.and_then(|m| m.expired));
                (
                    LogLevel::Warn,
                    json!({"claimguard": "jwks_expired", "provider": provider, "version": version,
                           "ageSeconds": age_ms / 1000,
                           "serving": if *bootstrap_fallback { "bootstrap_keys" } else { "jwks_unavailable" }}),
                )
            }
        };
        host.log(level, &line.to_string());
    }
}

/// Counts the request and writes its decision line within the log budget (see
/// [`decision_level`]; allows at debug), plus AUDIT lines. Returns its labels.
fn report<H: Host>(vm: &mut Vm<H>, req: &HttpRequest, ev: &Evaluation, now_ms: u64) -> Labels {
    let config = vm.config.clone();
    let host = vm.host.clone();
    // The peer is named in every decision line: read it for one if evaluation did not.
    let uses_peer = vm.uses_peer;
    let line = |ev: &Evaluation, l: &Labels| {
        if uses_peer {
            decision_line(&config, req, ev, l)
        } else {
            let req = HttpRequest {
                peer: peer(&host),
                ..*req
            };
            decision_line(&config, &req, ev, l)
        }
    };
    let l = labels(&config, ev);
    let slot = request_counter(vm, &l);
    if let Some(c) = vm.request_counters.get_mut(slot) {
        c.add();
    }
    if let Some(pd) = &ev.policy {
        for t in &pd.trace {
            let audit = config
                .policy
                .rules
                .get(t.rule)
                .is_some_and(|r| r.action == RuleAction::Audit);
            if audit && t.outcome.is_ok() {
                // Asked for by the rule's author: visible at Istio's default level, bounded.
                if !vm.log_budget.take(now_ms) {
                    incr(&host, vm.dropped_metric);
                    continue;
                }
                let line = json!({"claimguard": "audit", "rule": config.policy.rule_name(t.rule),
                    "method": req.method, "path": ev.normalized_path, "subject": ev.subject});
                host.log(LogLevel::Warn, &line.to_string());
            }
        }
    }
    if l.outcome == "allowed" {
        if debug_lines(vm, now_ms) {
            host.log(LogLevel::Debug, &line(ev, &l).to_string());
        }
        return l;
    }
    if !vm.log_budget.take(now_ms) {
        incr(&host, vm.dropped_metric);
        return l;
    }
    let mut line = line(ev, &l);
    if l.outcome == "dry_run_denied" {
        if let (Some(pd), Some(m)) = (&ev.policy, line.as_object_mut()) {
            let why: Vec<String> = pd.trace.iter().map(|t| config.policy.describe(t)).collect();
            m.insert("trace".into(), json!(why));
        }
    }
    host.log(decision_level(ev, &l), &line.to_string());
    l
}

/// The level of a decision line. Istio's sidecars log at `warning` by default, so what an
/// operator acts on is logged at warn: dry-run denials (the rollout reads them), policy
/// denials (403), and the proxy failing requests itself (5xx: keys unavailable, a host call
/// failed). Refused credentials (401) and unparseable requests (400) are routine on any
/// exposed API and stay at info (`sidecar.istio.io/componentLogLevel: "wasm:info"` shows them).
fn decision_level(ev: &Evaluation, l: &Labels) -> LogLevel {
    match &ev.decision {
        _ if l.outcome == "dry_run_denied" => LogLevel::Warn,
        Decision::Deny(d) if d.status == 403 || d.status >= 500 => LogLevel::Warn,
        Decision::NeedKeys { .. } => LogLevel::Warn,
        _ => LogLevel::Info,
    }
}

/// The slot in `vm.request_counters` of the counter for these labels (defined on first use).
fn request_counter<H: Host>(vm: &mut Vm<H>, l: &Labels) -> usize {
    let Vm {
        host,
        config,
        request_metrics,
        request_counters,
        ..
    } = vm;
    *request_metrics
        .entry((l.outcome, l.reason, l.rule, l.provider))
        .or_insert_with(|| {
            request_counters.push(Batched::new(
                host.define_metric(MetricType::Counter, &request_metric(config, l)),
            ));
            request_counters.len() - 1
        })
}

/// Whether allowed requests get a debug decision line: Envoy logs this filter at debug or
/// trace. Asked at most once a second, not on every request.
fn debug_lines<H: Host>(vm: &mut Vm<H>, now_ms: u64) -> bool {
    if now_ms >= vm.debug_logs.1.saturating_add(1000) || now_ms < vm.debug_logs.1 {
        let debug = vm
            .host
            .log_level()
            .is_ok_and(|lvl| matches!(lvl, Some(LogLevel::Trace | LogLevel::Debug)));
        vm.debug_logs = (debug, now_ms);
    }
    vm.debug_logs.0
}

/// `f` on this VM's memo with its key lookup, or None when the memo is off.
fn with_memo<H: Host, R>(
    vm: &mut Vm<H>,
    now_ms: u64,
    f: impl FnOnce(&mut VmMemo, &Config, &dyn KeyLookup) -> R,
) -> Option<R> {
    let Vm {
        config,
        cache,
        slot_of,
        alb,
        alb_of,
        memo,
        ..
    } = vm;
    let memo = memo.as_mut()?;
    let keys = VmKeys {
        config,
        jwks: cache,
        slot_of,
        alb,
        alb_of,
        now_ms,
    };
    Some(f(memo, config, &keys))
}

/// The remembered outcome of a request with this key, counted as the full evaluation would
/// count it (a token-cache hit, the request's labels), or None (counted as a memo miss).
fn memo_hit<H: Host>(vm: &mut Vm<H>, key: &RequestKey, now_ms: u64) -> Option<Rc<MemoOutcome>> {
    let outcome = with_memo(vm, now_ms, |m, config, keys| {
        let got = m.memo.get(config, keys, key, now_ms / 1000);
        if got.is_some() {
            m.hits.add();
        } else {
            m.misses.add();
        }
        got
    })??;
    vm.cache_metrics.0.add();
    // The labels' counter slot, found once per remembered outcome.
    let slot = match outcome.counter.get() {
        Some(slot) => slot,
        None => {
            let slot = request_counter(vm, &outcome.labels);
            outcome.counter.set(Some(slot));
            slot
        }
    };
    if let Some(c) = vm.request_counters.get_mut(slot) {
        c.add();
    }
    record_memory(vm);
    Some(outcome)
}

/// Offers a fully evaluated request to the memo.
fn memo_offer<H: Host>(vm: &mut Vm<H>, key: &RequestKey, ev: &Evaluation, labels: &Labels, now_ms: u64) {
    with_memo(vm, now_ms, |m, _, keys| m.memo.offer(keys, key, ev, labels));
}
