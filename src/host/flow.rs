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
use crate::keys::remote::{Event, FetchRequest, FetchResult, JwksCache, KeyWait, Progress, SharedStore};
use crate::policy::identity::HeaderOps;
use crate::policy::RuleAction;
use crate::request::cache::VerifiedTokenCache;
use crate::request::decision::{
    bound_values, evaluate_cached, managed_present, Decision, Evaluation, HttpRequest, KeyLookup, Peer,
};
use crate::request::memo::{memo_bytes, DecisionMemo, MemoOutcome, MemoSpec, RequestKey};
use crate::request::metrics::{
    bound_lines, decision_line, jwks_metric, labels, request_metric, Labels, LogBudget, MEMO_EVICTIONS,
    REJECTED_CACHE_EVICTIONS, TOKEN_CACHE_EVICTIONS,
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
    /// A JWKS cache slot's fetching to move on from where it was when the request paused (a
    /// `304` too: the set was confirmed, and a kid it lacks is answered now, not at the
    /// deadline).
    Jwks { slot: usize, at: Progress },
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
            Awaited::Jwks { slot, at } => jwks.progress(*slot) != *at,
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

/// The generation of a provider that has no usable keys: no verification was made under it.
const NO_KEYS_GENERATION: u64 = u64::MAX;

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
        // Fetched sets have versions from 1 (CAS tokens, at most u32::MAX); 0 is the inline
        // (bootstrap) set. A provider with no usable keys at all (fetched keys past
        // `maxStale`, no fallback) has a generation of its own: a token verified under the
        // bootstrap keys before the first fetch must not hit the cache (or the memo) again
        // once those keys no longer serve.
        match self.slot_of.get(provider).copied().flatten() {
            Some(slot) if self.jwks.usable_keys(slot, self.now_ms).is_some() => self.jwks.version(slot),
            Some(_) if self.key_set(provider).is_none() => NO_KEYS_GENERATION,
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
                at: vm.cache.progress(slot),
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
                let mut line = json!({"claimguard": "audit", "rule": config.policy.rule_name(t.rule),
                    "method": req.method, "path": ev.normalized_path, "subject": ev.subject});
                // The request values its bindings compared, as in the decision line.
                let bound = bound_lines(&config, req, ev, Some(t.rule));
                if let (false, Some(m)) = (bound.is_empty(), line.as_object_mut()) {
                    m.insert("bound".into(), json!(bound));
                }
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
            let bound = bound_values(&config, req, ev);
            let why: Vec<String> = pd.trace.iter().map(|t| config.policy.describe(t, &bound)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::abi::encode_pairs;
    use crate::crypto::alg::Alg;
    use crate::keys::remote::StoreError;
    use claimguard_testkeys::TestKey;
    use serde_json::Value;
    use std::cell::Cell;
    use std::rc::Weak;

    const NOW_MS: u64 = 1_800_000_000_000;
    const NOW_S: u64 = NOW_MS / 1000;
    const ROOT: u32 = 1;
    const JWKS_CLUSTER: &str = "outbound|443||idp.test";
    const ALB_KID: &str = "4d6b6a3c-1f2e-4a5b-9c8d-7e6f5a4b3c2d";
    const ALB_ARN: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/orders/50dc6c495c0c9188";
    const ALB_AUTHORITY: &str = "public-keys.auth.elb.eu-west-1.amazonaws.com";

    type Pairs = Vec<(String, String)>;

    #[derive(Debug, Clone, PartialEq)]
    struct Reply {
        context: u32,
        status: u32,
        headers: Pairs,
        body: Value,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Op {
        Remove(u32, String),
        Set(u32, String, String),
    }

    #[derive(Debug, Clone)]
    struct Sent {
        token: u32,
        cluster: String,
        headers: Pairs,
        timeout_ms: u64,
    }

    impl Sent {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }
    }

    #[derive(Debug)]
    struct FakeError(&'static str);

    impl fmt::Display for FakeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    /// What the fake proxy holds and what it was asked to do.
    #[derive(Default)]
    struct State {
        now: Cell<u64>,
        /// The effective context: a request's id, or the root's.
        current: Cell<u32>,
        /// Each live request's headers, as the upstream would get them.
        requests: RefCell<HashMap<u32, Pairs>>,
        replies: RefCell<Vec<Reply>>,
        ops: RefCell<Vec<Op>>,
        resumed: RefCell<Vec<u32>>,
        logs: RefCell<Vec<(LogLevel, String)>>,
        metric_names: RefCell<Vec<String>>,
        counters: RefCell<HashMap<String, i64>>,
        sent: RefCell<Vec<Sent>>,
        dispatch_fails: Cell<bool>,
        header_changes_fail: Cell<bool>,
        /// The answered callout's headers and body.
        callout: RefCell<(Pairs, Vec<u8>)>,
        store: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        cas: Cell<u32>,
        /// The VM under test: no borrow of it may be held across a reply or a resume.
        vm: RefCell<Weak<RefCell<Vm<Fake>>>>,
    }

    #[derive(Clone, Default)]
    struct Fake(Rc<State>);

    impl Fake {
        fn not_reentered(&self, what: &str) {
            if let Some(vm) = self.0.vm.borrow().upgrade() {
                assert!(vm.try_borrow_mut().is_ok(), "{what} while the VM state was borrowed");
            }
        }
    }

    /// Envoy's shared data: a fresh CAS token per write from one counter; CAS is ignored for a
    /// key that does not exist yet.
    impl SharedStore for Fake {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.store.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut m = self.0.store.borrow_mut();
            if let (Some(c), Some((_, cur))) = (cas, m.get(key)) {
                if c != 0 && c != *cur {
                    return Err(StoreError::CasMismatch);
                }
            }
            self.0.cas.set(self.0.cas.get() + 1);
            m.insert(key.to_string(), (value.to_vec(), self.0.cas.get()));
            Ok(())
        }
    }

    impl Host for Fake {
        type Error = FakeError;

        fn now_ms(&self) -> Option<u64> {
            Some(self.0.now.get())
        }
        fn log(&self, level: LogLevel, msg: &str) {
            self.0.logs.borrow_mut().push((level, msg.to_string()));
        }
        fn log_level(&self) -> Result<Option<LogLevel>, FakeError> {
            Ok(Some(LogLevel::Info))
        }
        fn request_headers(&self) -> Result<Vec<u8>, FakeError> {
            let requests = self.0.requests.borrow();
            let headers = requests.get(&self.0.current.get()).ok_or(FakeError("NotFound"))?;
            Ok(encode_pairs(headers))
        }
        fn remove_request_header(&self, name: &str) -> Result<(), FakeError> {
            if self.0.header_changes_fail.get() {
                return Err(FakeError("BadArgument"));
            }
            let id = self.0.current.get();
            self.0.ops.borrow_mut().push(Op::Remove(id, name.to_string()));
            if let Some(h) = self.0.requests.borrow_mut().get_mut(&id) {
                h.retain(|(k, _)| k != name);
            }
            Ok(())
        }
        fn set_request_header(&self, name: &str, value: &str) -> Result<(), FakeError> {
            if self.0.header_changes_fail.get() {
                return Err(FakeError("BadArgument"));
            }
            let id = self.0.current.get();
            self.0
                .ops
                .borrow_mut()
                .push(Op::Set(id, name.to_string(), value.to_string()));
            if let Some(h) = self.0.requests.borrow_mut().get_mut(&id) {
                h.retain(|(k, _)| k != name);
                h.push((name.to_string(), value.to_string()));
            }
            Ok(())
        }
        fn property(&self, _path: &[u8]) -> Option<Vec<u8>> {
            None
        }
        fn set_property(&self, _path: &[u8], _value: &[u8]) -> Result<(), FakeError> {
            Ok(())
        }
        fn send_reply(&self, status: u32, headers: &[(String, String)], body: &str) -> Result<(), FakeError> {
            self.not_reentered("a local reply");
            self.0.replies.borrow_mut().push(Reply {
                context: self.0.current.get(),
                status,
                headers: headers.to_vec(),
                body: serde_json::from_str(body).unwrap(),
            });
            Ok(())
        }
        fn resume(&self) -> Result<(), FakeError> {
            self.not_reentered("a resume");
            self.0.resumed.borrow_mut().push(self.0.current.get());
            Ok(())
        }
        fn set_effective_context(&self, context_id: u32) -> Result<(), FakeError> {
            if context_id != ROOT && !self.0.requests.borrow().contains_key(&context_id) {
                return Err(FakeError("BadArgument"));
            }
            self.0.current.set(context_id);
            Ok(())
        }
        fn define_metric(&self, _kind: MetricType, name: &str) -> Option<u32> {
            let mut names = self.0.metric_names.borrow_mut();
            names.push(name.to_string());
            Some(names.len() as u32 - 1)
        }
        fn increment_metric(&self, id: u32, by: i64) {
            let name = self.0.metric_names.borrow()[id as usize].clone();
            *self.0.counters.borrow_mut().entry(name).or_default() += by;
        }
        fn record_metric(&self, _id: u32, _value: u64) {}
        fn memory_pages(&self) -> usize {
            17
        }
        fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Result<u32, FakeError> {
            if self.0.dispatch_fails.get() {
                return Err(FakeError("BadArgument"));
            }
            let mut sent = self.0.sent.borrow_mut();
            let token = 100 + sent.len() as u32;
            sent.push(Sent {
                token,
                cluster: cluster.to_string(),
                headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                timeout_ms,
            });
            Ok(token)
        }
        fn callout_headers(&self) -> Vec<u8> {
            encode_pairs(&self.0.callout.borrow().0)
        }
        fn callout_body(&self, size: usize) -> Vec<u8> {
            self.0.callout.borrow().1[..size].to_vec()
        }
    }

    /// One VM of a fake proxy, driven as Envoy drives the glue.
    struct Proxy {
        host: Fake,
        vm: Rc<RefCell<Vm<Fake>>>,
    }

    impl Proxy {
        fn new(config: Value) -> Proxy {
            let host = Fake::default();
            host.0.now.set(NOW_MS);
            host.0.current.set(ROOT);
            let vm = Vm::configure(host.clone(), config.to_string().as_bytes(), None, 7, 42).unwrap();
            let vm = Rc::new(RefCell::new(vm));
            *host.0.vm.borrow_mut() = Rc::downgrade(&vm);
            Proxy { host, vm }
        }

        /// `GET /orders` on `api.example.com` with `extra` headers, as stream `context`.
        fn request(&self, context: u32, extra: &[(&str, &str)]) -> Action {
            self.request_to(context, "/orders", extra)
        }

        /// `GET path` on `api.example.com` with `extra` headers, as stream `context`.
        fn request_to(&self, context: u32, path: &str, extra: &[(&str, &str)]) -> Action {
            let mut headers: Pairs = vec![
                (":method".into(), "GET".into()),
                (":path".into(), path.into()),
                (":authority".into(), "api.example.com".into()),
            ];
            headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            self.host.0.requests.borrow_mut().insert(context, headers);
            self.host.0.current.set(context);
            on_request_headers(&self.vm, context)
        }

        fn tick(&self, at: u64) {
            self.host.0.now.set(at);
            self.host.0.current.set(ROOT);
            on_tick(&self.vm, ROOT, at);
        }

        /// Ticks every 200 ms from `from` until a callout goes out (at most 5 ticks); returns
        /// it and the time of that tick.
        fn tick_until_callout(&self, from: u64) -> (Sent, u64) {
            let before = self.sent().len();
            for i in 0..5 {
                let at = from + 200 * i;
                self.tick(at);
                if let Some(s) = self.sent().get(before) {
                    return (s.clone(), at);
                }
            }
            panic!("no callout after 5 ticks");
        }

        /// Answers callout `token` (with no headers at all when `status` is None: a failed
        /// callout).
        fn respond(&self, token: u32, status: Option<u16>, body: &[u8], at: u64) {
            let headers = status
                .map(|s| vec![(":status".to_string(), s.to_string())])
                .unwrap_or_default();
            *self.host.0.callout.borrow_mut() = (headers, body.to_vec());
            self.host.0.now.set(at);
            on_http_call_response(&self.vm, token, body.len(), at);
        }

        fn replies(&self) -> Vec<Reply> {
            self.host.0.replies.borrow().clone()
        }
        fn ops(&self, context: u32) -> Vec<Op> {
            let ops = self.host.0.ops.borrow();
            ops.iter()
                .filter(|op| matches!(op, Op::Remove(c, _) | Op::Set(c, _, _) if *c == context))
                .cloned()
                .collect()
        }
        fn resumed(&self) -> Vec<u32> {
            self.host.0.resumed.borrow().clone()
        }
        fn sent(&self) -> Vec<Sent> {
            self.host.0.sent.borrow().clone()
        }
        /// The request's headers now: what the upstream gets if it goes on.
        fn upstream(&self, context: u32) -> Pairs {
            self.host.0.requests.borrow()[&context].clone()
        }
        fn upstream_header(&self, context: u32, name: &str) -> Vec<String> {
            self.upstream(context)
                .into_iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v)
                .collect()
        }
        fn counter(&self, name: &str) -> i64 {
            self.host.0.counters.borrow().get(name).copied().unwrap_or(0)
        }
        /// The log lines named `{"claimguard": name, ...}`, parsed.
        fn lines(&self, name: &str) -> Vec<(LogLevel, Value)> {
            self.host
                .0
                .logs
                .borrow()
                .iter()
                .filter_map(|(l, m)| {
                    let v: Value = serde_json::from_str(m).ok()?;
                    (v["claimguard"] == name).then_some((*l, v))
                })
                .collect()
        }
        fn logged(&self, text: &str) -> bool {
            self.host.0.logs.borrow().iter().any(|(_, m)| m.contains(text))
        }
        fn waiting(&self) -> Vec<Awaited> {
            self.vm.borrow().waiters.iter().map(|w| w.awaited.clone()).collect()
        }
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "scope": "read",
                           "exp": NOW_S + 3600});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }

    fn bearer(key: &TestKey, extra: Value) -> String {
        format!("Bearer {}", key.sign(&claims(extra)))
    }

    /// One provider `idp` (issuer `https://idp.test`, audience `api`, `sub` to `x-sub`), with
    /// `keys` merged in (`jwks`, or `jwksUri`), and two rules: `blocked` (DENY `tenant:
    /// blocked`) and `readers` (`/orders*` needs `scope: read`).
    fn config(keys: Value) -> Value {
        let mut p = json!({"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                           "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]});
        p.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
        json!({"providers": [p], "rules": [
            {"name": "blocked", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked"]}]},
            {"name": "readers", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["read"]}]}
        ]})
    }

    fn remote_config() -> Value {
        config(json!({"jwksUri": "https://idp.test/jwks.json"}))
    }

    fn alb_provider() -> Value {
        json!({"name": "alb", "issuer": "https://alb.example.com", "clientIds": ["orders-client"],
               "alb": {"region": "eu-west-1", "signers": [ALB_ARN]}})
    }

    fn alb_token(key: &TestKey) -> String {
        let header = json!({"typ": "JWT", "kid": ALB_KID, "alg": "ES256", "iss": "https://alb.example.com",
                            "client": "orders-client", "signer": ALB_ARN, "exp": NOW_S + 60});
        let claims = json!({"sub": "9f1c", "email": "ana@example.com", "exp": NOW_S + 60,
                            "iss": "https://alb.example.com"});
        key.sign_alb(&header, &claims)
    }

    fn jwks_of(keys: &[&TestKey]) -> Vec<u8> {
        let keys: Vec<Value> = keys.iter().map(|k| k.public_jwk()).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn allows_with_its_header_operations_and_strips_forged_headers() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(json!({"jwks": key.jwks()})));
        let token = bearer(&key, json!({}));
        let got = p.request(10, &[("authorization", &token), ("x-sub", "mallory")]);
        assert_eq!(got, Action::Continue);
        assert!(p.replies().is_empty());
        // The forged copy goes first, before evaluation; then the verified claim is set and
        // the token header removed.
        let ops = p.ops(10);
        assert_eq!(ops.first(), Some(&Op::Remove(10, "x-sub".into())));
        assert!(ops.contains(&Op::Set(10, "x-sub".into(), "alice".into())), "{ops:?}");
        assert!(ops.contains(&Op::Remove(10, "authorization".into())), "{ops:?}");
        assert_eq!(p.upstream_header(10, "x-sub"), ["alice"]);
        assert!(p.upstream_header(10, "authorization").is_empty());
        // Counted on the request path, handed to the host on the tick.
        let allowed = "claimguard.requests_total.outcome.allowed.reason.none.rule.readers.provider.idp";
        assert_eq!(p.counter(allowed), 0);
        p.tick(NOW_MS + 200);
        assert_eq!(p.counter(allowed), 1);
        assert_eq!(p.counter("claimguard.token_cache_total.result.miss"), 1);
    }

    #[test]
    fn a_missing_token_gets_401_with_www_authenticate() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(json!({"jwks": key.jwks()})));
        assert_eq!(p.request(11, &[]), Action::Pause);
        let replies = p.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        let r = &replies[0];
        assert_eq!((r.context, r.status), (11, 401));
        let www = r.header("www-authenticate").unwrap();
        assert!(www.starts_with("Bearer realm=\"") && !www.contains("error="), "{www}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body["error"], "missing_token");
        assert!(p.resumed().is_empty());
        // Routine: its decision line is at info.
        let lines = p.lines("decision");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, LogLevel::Info);
        assert_eq!(
            (&lines[0].1["status"], &lines[0].1["reason"]),
            (&json!(401), &json!("missing_token"))
        );
    }

    #[test]
    fn an_invalid_token_gets_401_invalid_token() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let other = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(json!({"jwks": key.jwks()})));
        assert_eq!(
            p.request(12, &[("authorization", &bearer(&other, json!({})))]),
            Action::Pause
        );
        let r = &p.replies()[0];
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert!(p.ops(12).iter().all(|op| !matches!(op, Op::Set(..))));
    }

    /// Claims bound to the request: the decision line of a denial, a dry-run denial and an
    /// AUDIT line show the request values compared (`bound`), escaped and cut, however the
    /// request spells them.
    #[test]
    fn decision_and_audit_lines_show_the_bound_values() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut cfg = config(json!({"jwks": key.jwks()}));
        cfg["rules"] = json!([
            {"name": "other-tenant", "action": "DENY", "paths": ["/t/{tenant}/{**}"],
             "when": [{"claim": "tenants", "notValuesFrom": "path:tenant"}]},
            {"name": "header-tenant", "action": "DENY", "paths": ["/reports"],
             "when": [{"claim": "tenants", "notValuesFrom": "header:x-tenant-id"}]},
            {"name": "dry-owner", "action": "DENY", "dryRun": true, "paths": ["/t/{tenant}/{**}"],
             "when": [{"claim": "sub", "notValuesFrom": "query:owner"}]},
            {"name": "seen", "action": "AUDIT", "paths": ["/t/{tenant}/{**}"],
             "when": [{"claim": "tenants", "valuesFrom": "path:tenant", "ignoreCase": true}]},
            {"name": "members", "paths": ["/t/{tenant}/{**}"],
             "when": [{"claim": "tenants", "valuesFrom": "path:tenant"}]},
            {"name": "reports", "paths": ["/reports"]}
        ]);
        let p = Proxy::new(cfg);
        let token = bearer(&key, json!({"tenants": ["acme"]}));
        let auth = ("authorization", token.as_str());

        // A header value made to forge fields and lines: 403, one line, the value escaped.
        let forged = format!(
            "acme\",\"decision\":\"allow\"}}\n{{\"claimguard\":\"decision\u{202e}{}",
            "x".repeat(5000)
        );
        assert_eq!(
            p.request_to(21, "/reports", &[auth, ("x-tenant-id", &forged)]),
            Action::Pause
        );
        assert_eq!(p.replies()[0].status, 403);
        let lines = p.lines("decision");
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0].1;
        assert_eq!(
            (&line["decision"], &line["rule"]),
            (&json!("deny"), &json!("header-tenant"))
        );
        let bound = line["bound"].as_array().unwrap();
        assert_eq!(bound.len(), 1, "{line}");
        let shown = bound[0].as_str().unwrap();
        assert!(
            shown.starts_with(
                r#"header-tenant when[0]: tenants notValuesFrom header:x-tenant-id = "acme\",\"decision\":\"allow\"}\n{\"claimguard\":\"decision\u{202e}xxx"#
            ),
            "{shown}"
        );
        assert!(shown.ends_with(&format!("... ({} bytes)", forged.len())), "{shown}");
        assert!(shown.len() < 300, "{}", shown.len());
        let raw = p.host.0.logs.borrow()[0].1.clone();
        assert!(
            !raw.contains('\n') && !raw.contains('\u{202e}') && raw.len() < 1500,
            "{raw}"
        );

        // Allowed, with an AUDIT rule matching: its line shows its own binding's value.
        assert_eq!(
            p.request_to(22, "/t/acme/orders?owner=alice", &[auth]),
            Action::Continue
        );
        let audits = p.lines("audit");
        assert_eq!(audits.len(), 1, "{audits:?}");
        assert_eq!(
            audits[0].1["bound"],
            json!([r#"seen when[0]: tenants valuesFrom path:tenant = "acme" (ignoreCase)"#])
        );
        assert_eq!(p.lines("decision").len(), 1, "an allow is logged at debug only");

        // A dry-run denial: every compared value, and the trace names them.
        assert_eq!(p.request_to(23, "/t/acme/orders?owner=bob", &[auth]), Action::Continue);
        let lines = p.lines("decision");
        let line = &lines.last().unwrap().1;
        assert_eq!(
            (&line["decision"], &line["rule"]),
            (&json!("dry_run_denied"), &json!("dry-owner"))
        );
        assert_eq!(
            line["bound"],
            json!([
                r#"other-tenant when[0]: tenants notValuesFrom path:tenant = "acme""#,
                r#"dry-owner when[0]: sub notValuesFrom query:owner = "bob""#,
                r#"seen when[0]: tenants valuesFrom path:tenant = "acme" (ignoreCase)"#,
                r#"members when[0]: tenants valuesFrom path:tenant = "acme""#
            ])
        );
        assert!(
            line["trace"].as_array().unwrap().contains(&json!(
                r#"DENY dry-owner: matched (when[0] sub notValuesFrom query:owner = "bob")"#
            )),
            "{line}"
        );
        assert_eq!(p.lines("audit").len(), 2);
    }

    #[test]
    fn a_policy_denial_gets_403_and_nothing_is_set() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(json!({"jwks": key.jwks()})));
        let token = bearer(&key, json!({"tenant": "blocked"}));
        assert_eq!(p.request(13, &[("authorization", &token)]), Action::Pause);
        let replies = p.replies();
        assert_eq!(replies.len(), 1);
        assert_eq!((replies[0].context, replies[0].status), (13, 403));
        assert_eq!(replies[0].body["error"], "forbidden");
        assert_eq!(replies[0].header("cache-control"), Some("no-store"));
        assert!(p.ops(13).iter().all(|op| !matches!(op, Op::Set(..))));
        // An operator acts on policy denials: warn.
        assert!(p
            .host
            .0
            .logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == LogLevel::Warn && m.contains("policy_denied")));
        p.tick(NOW_MS + 200);
        assert_eq!(
            p.counter("claimguard.requests_total.outcome.denied.reason.policy_denied.rule.blocked.provider.idp"),
            1
        );
    }

    #[test]
    fn a_host_that_cannot_change_headers_fails_the_request_closed() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(json!({"jwks": key.jwks()})));
        p.host.0.header_changes_fail.set(true);
        assert_eq!(
            p.request(14, &[("authorization", &bearer(&key, json!({})))]),
            Action::Pause
        );
        let r = &p.replies()[0];
        assert_eq!(r.status, 500);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body["error"], "internal_error");
        assert!(p.logged("cannot remove header authorization: BadArgument; refusing the request"));
    }

    #[test]
    fn a_repeated_allowed_request_is_replayed_from_the_memo() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(json!({"jwks": key.jwks()})));
        let token = bearer(&key, json!({}));
        assert_eq!(p.request(20, &[("authorization", &token)]), Action::Continue);
        assert_eq!(p.request(21, &[("authorization", &token)]), Action::Continue);
        // The same operations, replayed without evaluating again.
        let replayed: Vec<Op> = p
            .ops(21)
            .into_iter()
            .map(|op| match op {
                Op::Remove(_, n) => Op::Remove(20, n),
                Op::Set(_, n, v) => Op::Set(20, n, v),
            })
            .collect();
        assert_eq!(replayed, p.ops(20));
        assert_eq!(p.upstream_header(21, "x-sub"), ["alice"]);
        assert!(p.replies().is_empty());
        p.tick(NOW_MS + 200);
        assert_eq!(p.counter("claimguard.decision_memo_total.result.miss"), 1);
        assert_eq!(p.counter("claimguard.decision_memo_total.result.hit"), 1);
        // Counted as evaluation would count it: the token was verified once.
        assert_eq!(p.counter("claimguard.token_cache_total.result.miss"), 1);
        assert_eq!(p.counter("claimguard.token_cache_total.result.hit"), 1);
        assert_eq!(
            p.counter("claimguard.requests_total.outcome.allowed.reason.none.rule.readers.provider.idp"),
            2
        );
        // A different request is evaluated: a denial is never replayed as an allow.
        let blocked = bearer(&key, json!({"tenant": "blocked"}));
        assert_eq!(p.request(22, &[("authorization", &blocked)]), Action::Pause);
        assert_eq!(p.replies()[0].status, 403);
    }

    /// A cold VM of `remote_config()` whose first request (stream `context`, kid `k1`) waited,
    /// got its keys and was resumed. Returns the time of the last tick.
    fn cold_start_allowed(p: &Proxy, key: &TestKey, context: u32) -> u64 {
        assert_eq!(
            p.request(context, &[("authorization", &bearer(key, json!({})))]),
            Action::Pause
        );
        assert!(p.replies().is_empty() && p.resumed().is_empty());
        assert!(matches!(
            p.waiting()[..],
            [Awaited::Jwks {
                slot: 0,
                at: Progress { version: 0, .. },
            }]
        ));
        let (sent, at) = p.tick_until_callout(NOW_MS);
        assert!(p.resumed().is_empty(), "woken before the keys came");
        assert_eq!(sent.cluster, JWKS_CLUSTER);
        assert_eq!(sent.header(":method"), Some("GET"));
        assert_eq!(sent.header(":path"), Some("/jwks.json"));
        assert_eq!(sent.header(":authority"), Some("idp.test"));
        assert_eq!(sent.header("accept"), Some("application/json"));
        assert_eq!(sent.timeout_ms, 5_000);
        p.respond(sent.token, Some(200), &jwks_of(&[key]), at + 50);
        assert!(p.resumed().is_empty(), "woken from a callout response, not the tick");
        p.tick(at + 200);
        at + 200
    }

    #[test]
    fn a_bootstrap_verified_token_is_not_served_from_the_caches_once_no_keys_serve() {
        // Verified (and remembered) under the inline keys before the first fetch; the fetched
        // set replaces them, then goes past maxStale without fallback: 503, not the old allow.
        let boot = TestKey::generate(Alg::ES256, "boot");
        let k1 = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(config(
            json!({"jwksUri": "https://idp.test/jwks.json", "maxStale": "1h",
                                         "jwks": boot.jwks().to_string()}),
        ));
        let token = bearer(&boot, json!({"exp": NOW_S + 7 * 86_400}));
        for ctx in [1, 2] {
            assert_eq!(p.request(ctx, &[("authorization", &token)]), Action::Continue);
        }
        let (sent, at) = p.tick_until_callout(NOW_MS);
        p.respond(sent.token, Some(200), &jwks_of(&[&k1]), at + 50);
        p.tick(at + 200);
        // The identity provider cannot be reached from here on.
        let mut t = at + 400;
        let until = at + 3_600_000 + 10_000;
        while t < until {
            let before = p.sent().len();
            p.tick(t);
            for s in p.sent().into_iter().skip(before) {
                p.respond(s.token, None, b"", t + 10);
            }
            t += 1_000;
        }
        assert_eq!(p.request(3, &[("authorization", &token)]), Action::Pause);
        p.tick(t + 6_000);
        let replies = p.replies();
        assert!(replies.iter().any(|r| r.context == 3 && r.status == 503), "{replies:?}");
        assert!(p.upstream_header(3, "x-sub").is_empty());
    }

    #[test]
    fn a_request_waits_for_the_jwks_and_is_resumed_allowed() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(remote_config());
        cold_start_allowed(&p, &key, 30);
        assert_eq!(p.resumed(), [30]);
        assert!(p.replies().is_empty());
        assert_eq!(p.upstream_header(30, "x-sub"), ["alice"]);
        assert!(p.waiting().is_empty());
        let waited = p.lines("waiting_for_keys");
        assert_eq!(waited.len(), 1);
        assert_eq!(waited[0].0, LogLevel::Debug);
        assert_eq!(waited[0].1["kid"], Value::Null);
        assert_eq!(waited[0].1["deadlineMs"], NOW_MS + 5_000);
        assert_eq!(p.lines("jwks_fetched").len(), 1);
        assert_eq!(
            p.counter("claimguard.jwks_fetches_total.result.success.provider.idp"),
            1
        );
        assert_eq!(p.counter("claimguard.jwks_key_miss_total.provider.idp"), 1);
        // The root context is the current one again after the waiters were answered.
        assert_eq!(p.host.0.current.get(), ROOT);
    }

    #[test]
    fn an_unknown_kid_waits_for_a_refetch_and_one_still_missing_gets_401() {
        let k1 = TestKey::generate(Alg::ES256, "k1");
        let k2 = TestKey::generate(Alg::ES256, "k2");
        let k3 = TestKey::generate(Alg::ES256, "k3");
        let p = Proxy::new(remote_config());
        let at = cold_start_allowed(&p, &k1, 31);
        // Past the refetch cooldown, a token signed with a new key waits for a refetch.
        let later = at + 31_000;
        p.tick(later);
        assert_eq!(
            p.request(32, &[("authorization", &bearer(&k2, json!({})))]),
            Action::Pause
        );
        assert!(matches!(p.waiting()[..], [Awaited::Jwks { slot: 0, at }] if at.version > 0));
        assert_eq!(p.lines("waiting_for_keys")[1].1["kid"], "k2");
        let (sent, at) = p.tick_until_callout(later + 200);
        p.respond(sent.token, Some(200), &jwks_of(&[&k1, &k2]), at + 50);
        p.tick(at + 200);
        assert_eq!(p.resumed(), [31, 32]);
        assert_eq!(p.upstream_header(32, "x-sub"), ["alice"]);
        // Within the cooldown no refetch can help: an unknown kid is answered at once.
        assert_eq!(
            p.request(33, &[("authorization", &bearer(&k3, json!({})))]),
            Action::Pause
        );
        let replies = p.replies();
        assert_eq!(replies.len(), 1);
        assert_eq!((replies[0].context, replies[0].status), (33, 401));
        assert!(replies[0].header("www-authenticate").unwrap().contains("invalid_token"));
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn a_refetch_without_the_kid_answers_its_waiter_401() {
        let k1 = TestKey::generate(Alg::ES256, "k1");
        let k2 = TestKey::generate(Alg::ES256, "k2");
        let p = Proxy::new(remote_config());
        let at = cold_start_allowed(&p, &k1, 34);
        let later = at + 31_000;
        p.tick(later);
        assert_eq!(
            p.request(35, &[("authorization", &bearer(&k2, json!({})))]),
            Action::Pause
        );
        let (sent, at) = p.tick_until_callout(later + 200);
        p.respond(sent.token, Some(200), &jwks_of(&[&k1]), at + 50);
        p.tick(at + 200);
        assert_eq!(p.resumed(), [34]);
        let replies = p.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!((replies[0].context, replies[0].status), (35, 401));
        assert!(replies[0]
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn a_refetch_answered_304_answers_its_waiter_at_once() {
        // The identity provider confirms its set (304 to If-None-Match): the kid is still
        // unknown, so the waiter gets its 401 on the next tick, not at jwksWaitTimeout.
        let k1 = TestKey::generate(Alg::ES256, "k1");
        let k2 = TestKey::generate(Alg::ES256, "k2");
        let p = Proxy::new(remote_config());
        assert_eq!(
            p.request(36, &[("authorization", &bearer(&k1, json!({})))]),
            Action::Pause
        );
        let (sent, at) = p.tick_until_callout(NOW_MS);
        *p.host.0.callout.borrow_mut() = (
            vec![(":status".into(), "200".into()), ("etag".into(), "\"v1\"".into())],
            jwks_of(&[&k1]),
        );
        on_http_call_response(&p.vm, sent.token, jwks_of(&[&k1]).len(), at + 50);
        p.tick(at + 200);
        assert_eq!(p.resumed(), [36]);
        let later = at + 31_000;
        p.tick(later);
        assert_eq!(
            p.request(37, &[("authorization", &bearer(&k2, json!({})))]),
            Action::Pause
        );
        let (sent, at) = p.tick_until_callout(later + 200);
        assert_eq!(sent.header("if-none-match"), Some("\"v1\""));
        p.respond(sent.token, Some(304), b"", at + 50);
        p.tick(at + 200);
        let replies = p.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!((replies[0].context, replies[0].status), (37, 401));
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn a_key_removed_at_a_refresh_stops_verifying_also_from_the_caches() {
        // Allowed (and remembered by the token cache and the memo) under k1; the refresh
        // brings a set without k1: the same request is refused, not replayed.
        let k1 = TestKey::generate(Alg::ES256, "k1");
        let k2 = TestKey::generate(Alg::ES256, "k2");
        let p = Proxy::new(remote_config());
        let at = cold_start_allowed(&p, &k1, 50);
        let token = bearer(&k1, json!({}));
        for ctx in 51..54 {
            assert_eq!(p.request(ctx, &[("authorization", &token)]), Action::Continue);
        }
        let (sent, t) = p.tick_until_callout(at + 600_000);
        assert_eq!(p.counter("claimguard.decision_memo_total.result.hit"), 2);
        p.respond(sent.token, Some(200), &jwks_of(&[&k2]), t + 50);
        p.tick(t + 200);
        assert_eq!(p.request(54, &[("authorization", &token)]), Action::Pause);
        let replies = p.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!((replies[0].context, replies[0].status), (54, 401));
        assert!(p.upstream_header(54, "x-sub").is_empty());
    }

    /// A cold VM of `remote_config()` with one request (stream 40) waiting and its fetch sent.
    fn waiting_with_fetch_sent() -> (Proxy, Sent, u64) {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(remote_config());
        assert_eq!(
            p.request(40, &[("authorization", &bearer(&key, json!({})))]),
            Action::Pause
        );
        let (sent, at) = p.tick_until_callout(NOW_MS);
        (p, sent, at)
    }

    fn assert_jwks_unavailable(p: &Proxy, context: u32) {
        let replies = p.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        let r = &replies[0];
        assert_eq!((r.context, r.status), (context, 503));
        assert_eq!(r.body["error"], "jwks_unavailable");
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(p.resumed().is_empty());
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn a_failed_fetch_answers_its_waiter_503() {
        let (p, sent, at) = waiting_with_fetch_sent();
        // Envoy answers a failed callout with no headers.
        p.respond(sent.token, None, b"", at + 50);
        let failed = p.lines("jwks_fetch_failed");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, LogLevel::Warn);
        assert_eq!(
            failed[0].1["error"],
            "callout failed (connection refused, reset or timeout)"
        );
        assert_eq!(
            p.counter("claimguard.jwks_fetches_total.result.failure.provider.idp"),
            1
        );
        assert!(p.replies().is_empty(), "answered from the tick only");
        p.tick(at + 200);
        assert_jwks_unavailable(&p, 40);
    }

    #[test]
    fn a_callout_that_cannot_be_sent_is_a_failed_fetch() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(remote_config());
        p.host.0.dispatch_fails.set(true);
        assert_eq!(
            p.request(41, &[("authorization", &bearer(&key, json!({})))]),
            Action::Pause
        );
        let mut at = NOW_MS;
        while p.lines("jwks_fetch_failed").is_empty() && at < NOW_MS + 1_000 {
            p.tick(at);
            at += 200;
        }
        let failed = p.lines("jwks_fetch_failed");
        assert_eq!(
            failed[0].1["error"],
            format!("cannot call cluster {JWKS_CLUSTER:?} (BadArgument): is it defined?")
        );
        // The tick that failed it wakes the waiter.
        assert_jwks_unavailable(&p, 41);
    }

    #[test]
    fn a_wait_that_runs_out_gets_503() {
        let (p, _sent, at) = waiting_with_fetch_sent();
        let mut t = at;
        while t + 200 < NOW_MS + 5_000 {
            t += 200;
            p.tick(t);
        }
        assert!(p.replies().is_empty(), "answered before its deadline");
        p.tick(NOW_MS + 5_000);
        assert_jwks_unavailable(&p, 40);
    }

    #[test]
    fn a_request_gone_while_it_waits_is_dropped() {
        let (p, sent, at) = waiting_with_fetch_sent();
        p.host.0.requests.borrow_mut().remove(&40);
        p.respond(sent.token, None, b"", at + 50);
        p.tick(at + 200);
        assert!(p.replies().is_empty() && p.resumed().is_empty());
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn an_alb_key_wait_goes_through_the_same_path() {
        let key = TestKey::generate(Alg::ES256, ALB_KID);
        let p = Proxy::new(json!({"providers": [alb_provider()]}));
        assert_eq!(p.request(50, &[("x-amzn-oidc-data", &alb_token(&key))]), Action::Pause);
        assert_eq!(
            p.waiting(),
            [Awaited::Alb {
                source: 0,
                kid: ALB_KID.into()
            }]
        );
        let waited = p.lines("waiting_for_alb_key");
        assert_eq!(waited.len(), 1);
        assert_eq!(
            (waited[0].1["kid"].as_str(), &waited[0].1["deadlineMs"]),
            (Some(ALB_KID), &json!(NOW_MS + 5_000))
        );
        let (sent, at) = p.tick_until_callout(NOW_MS);
        assert_eq!(sent.cluster, format!("outbound|443||{ALB_AUTHORITY}"));
        assert_eq!(sent.header(":path"), Some(format!("/{ALB_KID}").as_str()));
        assert_eq!(sent.header(":authority"), Some(ALB_AUTHORITY));
        assert_eq!(sent.header("accept"), Some("application/x-pem-file, text/plain"));
        p.respond(sent.token, Some(200), key.public_pem().as_bytes(), at + 50);
        assert_eq!(p.lines("alb_key_fetched").len(), 1);
        assert_eq!(p.counter("claimguard.alb_key_fetch_total.result.fetched"), 1);
        assert!(p.resumed().is_empty());
        p.tick(at + 200);
        assert_eq!(p.resumed(), [50]);
        assert!(p.replies().is_empty());
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn an_alb_kid_the_endpoint_does_not_serve_gets_401() {
        let key = TestKey::generate(Alg::ES256, ALB_KID);
        let p = Proxy::new(json!({"providers": [alb_provider()]}));
        assert_eq!(p.request(51, &[("x-amzn-oidc-data", &alb_token(&key))]), Action::Pause);
        let (sent, at) = p.tick_until_callout(NOW_MS);
        p.respond(sent.token, Some(404), b"", at + 50);
        assert_eq!(p.counter("claimguard.alb_key_fetch_total.result.not_found"), 1);
        p.tick(at + 200);
        let replies = p.replies();
        assert_eq!(replies.len(), 1);
        assert_eq!((replies[0].context, replies[0].status), (51, 401));
        assert!(p.resumed().is_empty());
    }

    #[test]
    fn waiters_are_capped_for_jwks_and_alb_together() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let alb_key = TestKey::generate(Alg::ES256, ALB_KID);
        let mut cfg = remote_config();
        cfg["providers"].as_array_mut().unwrap().push(alb_provider());
        let p = Proxy::new(cfg);
        let token = bearer(&key, json!({}));
        for i in 0..MAX_WAITERS as u32 {
            assert_eq!(p.request(1000 + i, &[("authorization", &token)]), Action::Pause);
        }
        assert_eq!(p.waiting().len(), MAX_WAITERS);
        assert!(p.replies().is_empty());
        // Full: a JWKS wait is refused, and so is an ALB one; both are answered at once.
        let jwks_ctx = 1000 + MAX_WAITERS as u32;
        assert_eq!(p.request(jwks_ctx, &[("authorization", &token)]), Action::Pause);
        assert_jwks_unavailable_reply(&p.replies(), jwks_ctx);
        assert_eq!(
            p.request(9_999, &[("x-amzn-oidc-data", &alb_token(&alb_key))]),
            Action::Pause
        );
        let replies = p.replies();
        assert_eq!(replies.len(), 2);
        assert_eq!((replies[1].context, replies[1].status), (9_999, 401));
        assert_eq!(p.waiting().len(), MAX_WAITERS);
    }

    fn assert_jwks_unavailable_reply(replies: &[Reply], context: u32) {
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!((replies[0].context, replies[0].status), (context, 503));
        assert_eq!(replies[0].body["error"], "jwks_unavailable");
    }

    #[test]
    fn a_new_config_carries_the_waiters_over() {
        let key = TestKey::generate(Alg::ES256, "k1");
        let p = Proxy::new(remote_config());
        assert_eq!(
            p.request(60, &[("authorization", &bearer(&key, json!({})))]),
            Action::Pause
        );
        let next = Vm::configure(
            p.host.clone(),
            remote_config().to_string().as_bytes(),
            Some(&p.vm),
            8,
            43,
        )
        .unwrap();
        assert!(p.vm.borrow().waiters.is_empty());
        assert_eq!(next.waiters.len(), 1);
        assert!(Vm::configure(p.host.clone(), b"{\"providers\": 1}", Some(&p.vm), 8, 43).is_none());
        assert!(p.logged("rejected plugin configuration"));
    }
}
