//! The proxy-wasm layer (with its host calls, [`crate::host::hostabi`], the only code that imports
//! `proxy_wasm`): read the plugin config (refusing a bad one), hand each request to
//! [`crate::request::decision::evaluate`] and carry out the decision; drive the shared JWKS cache from
//! the root context's tick and HTTP callouts.
//!
//! Host calls go through [`crate::host::hostabi`], not the SDK's `hostcalls`: a host call that fails
//! or answers a status nobody expected is an error handled here (the request, the config or
//! the callout fails closed), never a panic inside the VM.
//!
//! Re-entrancy: a local reply or a resume issued from the root context can make Envoy call
//! back into this VM synchronously (response headers, stream end). So no `RefCell` borrow of
//! the VM state is held across such host calls, callouts are dispatched before any request is
//! woken in a tick, and requests are only woken from `on_tick`, never from a callout response.

use crate::base::clock::Clock;
use crate::config::Config;
use crate::host::hostabi;
use crate::host::roots::Roots;
use crate::keys::alb::{AlbKeyCache, KeyEvent, KeyFetch};
use crate::keys::jwk::KeySet;
use crate::keys::remote::{Event, FetchRequest, FetchResult, JwksCache, KeyWait, SharedStore, StoreError};
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
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType, Status};
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;

// `_initialize` (WASI reactor start: runs static constructors). The SDK's dispatcher is not
// used: see the exports below.
proxy_wasm::main! {{}}

// The proxy-wasm callbacks, dispatched here instead of by the SDK (src/host/roots.rs says why).
// The SDK defines every `proxy_on_*` symbol itself, so these are linked under a
// `claimguard_on_*` name; `make build` keeps only them (src/host/exports.json, wasm-metadce)
// and renames them to `proxy_on_*`. The SDK still provides `proxy_abi_version_0_2_1` and
// `proxy_on_memory_allocate`; the host calls are src/host/hostabi.rs's.

thread_local! {
    static ROOTS: RefCell<Roots<Rc<Root>>> = RefCell::new(Roots::default());
}

/// The root context `id`, created on first sight (`proxy_on_vm_start` or `_configure`).
fn root(id: u32) -> Rc<Root> {
    let now = now_ms().unwrap_or(0);
    ROOTS.with(|r| {
        r.borrow_mut().get_or_add(id, now, || {
            Rc::new(Root {
                context_id: id,
                vm: RefCell::new(None),
            })
        })
    })
}

fn known_root(id: u32) -> Option<Rc<Root>> {
    ROOTS.with(|r| r.borrow().get(id))
}

#[export_name = "claimguard_on_context_create"]
pub extern "C" fn on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        root(context_id);
    } else {
        ROOTS.with(|r| r.borrow_mut().created(context_id, root_context_id));
    }
}

#[export_name = "claimguard_on_vm_start"]
pub extern "C" fn on_vm_start(root_context_id: u32, _vm_configuration_size: usize) -> bool {
    root(root_context_id);
    true
}

#[export_name = "claimguard_on_configure"]
pub extern "C" fn on_configure(root_context_id: u32, _plugin_configuration_size: usize) -> bool {
    let ok = root(root_context_id).on_configure();
    if !ok && known_root(root_context_id).is_some_and(|r| r.vm.borrow().is_none()) {
        // Refused at its first configuration: the host discards this root.
        ROOTS.with(|r| r.borrow_mut().remove(root_context_id));
    }
    ok
}

#[export_name = "claimguard_on_tick"]
pub extern "C" fn on_tick(root_context_id: u32) {
    let Some(root) = known_root(root_context_id) else {
        return;
    };
    if let Some(now) = now_ms() {
        // Roots the host deleted (they stopped ticking) go, with their caches; dropped here,
        // outside the registry's borrow (a Vm flushes its counters when it goes).
        let gone = ROOTS.with(|r| r.borrow_mut().tick(root_context_id, now));
        for g in &gone {
            log(
                LogLevel::Info,
                &format!("root context {} stopped ticking: dropped its state", g.context_id),
            );
        }
        drop(gone);
    }
    root.on_tick();
}

#[export_name = "claimguard_on_http_call_response"]
pub extern "C" fn on_http_call_response(
    root_context_id: u32,
    token_id: u32,
    num_headers: usize,
    body_size: usize,
    num_trailers: usize,
) {
    if let Some(root) = known_root(root_context_id) {
        root.on_http_call_response(token_id, num_headers, body_size, num_trailers);
    }
}

#[export_name = "claimguard_on_request_headers"]
pub extern "C" fn on_request_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> Action {
    let Some(root) = ROOTS.with(|r| r.borrow().root_of_stream(context_id)) else {
        // Fail closed: with several plugins in this VM, a stream the host did not announce
        // could be any of theirs.
        return Filter { context_id, vm: None }.internal_error("the host did not say which plugin this stream is for");
    };
    let vm = root.vm.borrow().clone();
    Filter { context_id, vm }.on_http_request_headers()
}

/// Decision lines per second (and burst) each VM may write; the rest are counted.
const DECISION_LOG_PER_SECOND: u32 = 50;
const DECISION_LOG_BURST: u32 = 200;

/// Requests one VM may hold paused for keys; past this, requests are answered at once.
const MAX_WAITERS: usize = 4096;

/// How often each VM looks at the shared JWKS state and wakes waiting requests.
const TICK_MS: u32 = 200;

/// The request's headers borrowed from `decoded` (see [`hostabi::get_header_map_pairs`]).
fn borrowed<'a>(decoded: &'a [crate::base::abi::DecodedPair<'a>]) -> Vec<Header<'a>> {
    decoded.iter().map(|(k, v)| (&**k, &**v)).collect()
}

fn log(level: LogLevel, msg: &str) {
    // Nothing sensible is left to do when the host cannot log.
    let _ = hostabi::log(level, msg);
}

fn now_ms() -> Option<u64> {
    Some(hostabi::get_current_time_nanos().ok()? / 1_000_000)
}

/// The calling workload from Envoy's connection attributes: `connection.mtls` (a one-byte
/// bool), `connection.uri_san_peer_certificate` (the first URI SAN: a SPIFFE ID has exactly
/// one) and `source.address`. A property the host cannot give is absent, never a match-all.
fn peer() -> Peer {
    // Property paths as the host reads them: the segments joined by NUL.
    let prop = |path: &[u8]| hostabi::get_property(path).ok().flatten();
    let text = |v: Vec<u8>| String::from_utf8(v).ok();
    let mtls = prop(b"connection\0mtls").is_some_and(|b| b.as_slice() == [1]);
    let uri_san = prop(b"connection\0uri_san_peer_certificate").and_then(text);
    let address = prop(b"source\0address").and_then(text);
    Peer::from_connection(mtls, uri_san.as_deref(), address.as_deref())
}

/// Envoy's shared data (one map per vm_id, shared by every worker's VM).
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostabi::get_shared_data(key) {
            Ok((Some(v), Some(cas))) => Some((v, cas)),
            _ => None,
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        hostabi::set_shared_data(key, value, cas).map_err(|e| {
            if e.is(Status::CasMismatch) {
                StoreError::CasMismatch
            } else {
                StoreError::Other
            }
        })
    }
}

/// A request paused while keys are fetched.
struct Waiter {
    context_id: u32,
    slot: usize,
    version: u64,
    failures: u32,
    deadline_ms: u64,
    /// For an ALB token: (ALB source, kid) it waits for, instead of a JWKS slot.
    alb: Option<(usize, String)>,
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
    fn define(config: &Config, provider: usize) -> SourceMetrics {
        let m = |t: MetricType, what: &str| hostabi::define_metric(t, &jwks_metric(config, provider, what)).ok();
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

fn incr(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostabi::increment_metric(id, 1);
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

    fn flush(&mut self) {
        if self.pending > 0 {
            if let Some(id) = self.id {
                let _ = hostabi::increment_metric(id, i64::try_from(self.pending).unwrap_or(i64::MAX));
            }
            self.pending = 0;
        }
    }
}

/// Adds `n`, counted elsewhere in the VM, to a counter (no host call for 0).
fn increment(id: Option<u32>, n: u64) {
    Batched { id, pending: n }.flush();
}

fn gauge(id: Option<u32>, v: u64) {
    if let Some(id) = id {
        let _ = hostabi::record_metric(id, v);
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
struct Vm {
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
impl Drop for Vm {
    fn drop(&mut self) {
        self.flush_counters();
    }
}

impl Vm {
    /// Hands the batched request-path counters to the host.
    fn flush_counters(&mut self) {
        for c in &mut self.request_counters {
            c.flush();
        }
        self.cache_metrics.0.flush();
        self.cache_metrics.1.flush();
        if let Some(c) = &mut self.token_cache {
            let (verified, rejected) = c.take_evictions();
            increment(self.eviction_metrics.0, verified);
            increment(self.eviction_metrics.1, rejected);
        }
        if let Some(m) = &mut self.memo {
            m.hits.flush();
            m.misses.flush();
            increment(m.evictions, m.memo.take_evictions());
        }
    }
}

/// Records this VM's linear memory when it changed (it only grows).
fn record_memory(vm: &mut Vm) {
    let pages = core::arch::wasm32::memory_size(0);
    if pages != vm.memory_pages {
        vm.memory_pages = pages;
        gauge(vm.memory_metric, (pages as u64).saturating_mul(65_536));
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
fn evaluate_in(vm: &mut Vm, req: &HttpRequest, now_ms: u64, final_attempt: bool) -> Evaluation {
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

struct Root {
    context_id: u32,
    /// Set by a configuration the filter accepted. Behind a RefCell, not `&mut self`: a
    /// root's callback can re-enter the VM (waking a paused request continues its filter
    /// chain), and the streams of this root must still find its Vm then.
    vm: RefCell<Option<Rc<RefCell<Vm>>>>,
}

impl Root {
    fn on_http_call_response(&self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(vm_rc) = self.vm.borrow().clone() else { return };
        let now = now_ms().unwrap_or(0);
        let follow_up = {
            let mut vm = vm_rc.borrow_mut();
            let (slot, discovery) = match vm.callouts.remove(&token_id) {
                Some(Callout::Jwks { slot, discovery }) => (slot, discovery),
                Some(Callout::AlbKey { source, kid }) => {
                    let result = read_callout_response(body_size, 4096);
                    let event = vm.alb.on_fetch_done(&HostStore, source, &kid, now, result);
                    report_alb_event(&vm, event);
                    return;
                }
                None => return,
            };
            let max = vm.cache.slots.get(slot).map_or(0, |s| s.remote.max_bytes);
            let result = read_callout_response(body_size, max);
            let mut events = Vec::new();
            let next = vm
                .cache
                .on_fetch_done(&HostStore, slot, now, discovery, result, &mut events);
            report_events(&vm, &events);
            next
        };
        // Discovery found the jwks_uri: fetch it now, under the same lease.
        if let Some(req) = follow_up {
            dispatch(&vm_rc, req, now);
        }
    }
}

fn read_callout_response(body_size: usize, max_bytes: usize) -> FetchResult {
    let buf = hostabi::get_header_map_pairs(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let headers = crate::base::abi::decode_pairs(&buf).unwrap_or_default();
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
        hostabi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
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

fn dispatch(vm_rc: &Rc<RefCell<Vm>>, req: FetchRequest, now: u64) {
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
    match hostabi::dispatch_http_call(&req.cluster, &headers, req.timeout_ms) {
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
            let mut vm = vm_rc.borrow_mut();
            let mut events = Vec::new();
            let error = format!("cannot call cluster {:?} ({status:?}): is it defined?", req.cluster);
            // A failed dispatch never yields a discovery follow-up.
            let _ = vm.cache.on_fetch_done(
                &HostStore,
                req.source,
                now,
                req.discovery,
                FetchResult::Failed(error),
                &mut events,
            );
            report_events(&vm, &events);
        }
    }
}

fn dispatch_alb(vm_rc: &Rc<RefCell<Vm>>, f: KeyFetch, now: u64) {
    let headers = vec![
        (":method", "GET"),
        (":path", f.path.as_str()),
        (":authority", f.authority.as_str()),
        ("accept", "application/x-pem-file, text/plain"),
        ("user-agent", "claimguard"),
    ];
    match hostabi::dispatch_http_call(&f.cluster, &headers, f.timeout_ms) {
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
            let mut vm = vm_rc.borrow_mut();
            let error = format!("cannot call cluster {:?} ({status:?}): is it defined?", f.cluster);
            let event = vm
                .alb
                .on_fetch_done(&HostStore, f.source, &f.kid, now, FetchResult::Failed(error));
            report_alb_event(&vm, event);
        }
    }
}

fn report_alb_event(vm: &Vm, event: Option<KeyEvent>) {
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
            incr(vm.alb_metrics.0);
            (
                LogLevel::Info,
                json!({"claimguard": "alb_key_fetched", "provider": provider(source), "kid": kid}),
            )
        }
        KeyEvent::NotFound { source, kid, status } => {
            incr(vm.alb_metrics.1);
            (
                LogLevel::Warn,
                json!({"claimguard": "alb_key_not_found", "provider": provider(source), "kid": kid, "status": status}),
            )
        }
        KeyEvent::Failed { source, kid, error } => {
            incr(vm.alb_metrics.2);
            (
                LogLevel::Warn,
                json!({"claimguard": "alb_key_fetch_failed", "provider": provider(source), "kid": kid, "error": error}),
            )
        }
    };
    log(level, &line.to_string());
}

fn report_events(vm: &Vm, events: &[Event]) {
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
                incr(m.and_then(|m| m.fetch_success));
                (
                    LogLevel::Info,
                    json!({"claimguard": "jwks_fetched", "provider": provider, "keys": keys, "version": version}),
                )
            }
            Event::NotModified { .. } => {
                incr(m.and_then(|m| m.fetch_not_modified));
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
                incr(m.and_then(|m| m.fetch_failure));
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
                incr(m.and_then(|m| m.expired));
                (
                    LogLevel::Warn,
                    json!({"claimguard": "jwks_expired", "provider": provider, "version": version,
                           "ageSeconds": age_ms / 1000,
                           "serving": if *bootstrap_fallback { "bootstrap_keys" } else { "jwks_unavailable" }}),
                )
            }
        };
        log(level, &line.to_string());
    }
}

impl Root {
    fn on_configure(&self) -> bool {
        let bytes = match hostabi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log(LogLevel::Error, &format!("cannot read plugin configuration: {e:?}"));
                return false;
            }
        };
        let cfg = match Config::from_json(&bytes) {
            Ok(cfg) => cfg,
            Err(e) => {
                // Refusing the config keeps the proxy on its last good state (or, at start-up,
                // keeps the listener from serving with a broken filter).
                log(LogLevel::Error, &format!("rejected plugin configuration: {e}"));
                return false;
            }
        };
        for w in &cfg.warnings {
            log(LogLevel::Warn, w);
        }
        log(
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
                    metrics.push(SourceMetrics::define(&cfg, i));
                }
                None => slot_of.push(None),
            }
        }
        // Lease holder identity: random per VM (std seeds RandomState from WASI random_get).
        let holder = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        // Requests paused under the previous config are carried over: they must be answered;
        // and what it counted is handed to the host before it goes.
        let waiters = self
            .vm
            .borrow()
            .as_ref()
            .and_then(|old| {
                old.try_borrow_mut().ok().map(|mut o| {
                    o.flush_counters();
                    std::mem::take(&mut o.waiters)
                })
            })
            .unwrap_or_default();
        // The token cache's slot-hash seed: random per VM, like the holder identity.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let uses_peer = cfg.uses_peer();
        let token_cache = (cfg.jwt_cache_size > 0)
            .then(|| VerifiedTokenCache::with_budget(cfg.jwt_cache_size, cfg.jwt_cache_bytes, seed));
        let spec = MemoSpec::new(&cfg);
        if let Some(why) = spec.off() {
            log(LogLevel::Info, &format!("decision memo off: {why}"));
        }
        let memo = spec.off().is_none().then(|| VmMemo {
            spec,
            memo: DecisionMemo::with_budget(cfg.jwt_cache_size, memo_bytes(cfg.jwt_cache_bytes)),
            seed: seed.rotate_left(32) ^ 0x6d65_6d6f,
            hits: Batched::new(
                hostabi::define_metric(MetricType::Counter, "claimguard.decision_memo_total.result.hit").ok(),
            ),
            misses: Batched::new(
                hostabi::define_metric(MetricType::Counter, "claimguard.decision_memo_total.result.miss").ok(),
            ),
            evictions: hostabi::define_metric(MetricType::Counter, MEMO_EVICTIONS).ok(),
        });
        let vm = Some(Rc::new(RefCell::new(Vm {
            config: Rc::new(cfg),
            cache: JwksCache::new(remotes, holder),
            slot_of,
            provider_of,
            metrics,
            waiters,
            refused_metric: hostabi::define_metric(MetricType::Counter, "claimguard.claim_header_refused_total").ok(),
            dropped_metric: hostabi::define_metric(MetricType::Counter, "claimguard.decision_logs_dropped_total").ok(),
            request_metrics: HashMap::default(),
            request_counters: Vec::new(),
            log_budget: LogBudget::new(DECISION_LOG_PER_SECOND, DECISION_LOG_BURST),
            token_cache,
            cache_metrics: (
                Batched::new(
                    hostabi::define_metric(MetricType::Counter, "claimguard.token_cache_total.result.hit").ok(),
                ),
                Batched::new(
                    hostabi::define_metric(MetricType::Counter, "claimguard.token_cache_total.result.miss").ok(),
                ),
            ),
            eviction_metrics: (
                hostabi::define_metric(MetricType::Counter, TOKEN_CACHE_EVICTIONS).ok(),
                hostabi::define_metric(MetricType::Counter, REJECTED_CACHE_EVICTIONS).ok(),
            ),
            callouts: HashMap::new(),
            alb: AlbKeyCache::new(alb_sources, holder),
            alb_of,
            alb_metrics: (
                hostabi::define_metric(MetricType::Counter, "claimguard.alb_key_fetch_total.result.fetched").ok(),
                hostabi::define_metric(MetricType::Counter, "claimguard.alb_key_fetch_total.result.not_found").ok(),
                hostabi::define_metric(MetricType::Counter, "claimguard.alb_key_fetch_total.result.failed").ok(),
            ),
            memory_metric: hostabi::define_metric(MetricType::Gauge, "claimguard.vm_memory_bytes").ok(),
            memory_pages: 0,
            uses_peer,
            debug_logs: (false, 0),
            clock: Clock::default(),
            memo,
        })));
        // Keys the proxy already fetched (a new config, or a VM started late) serve from the
        // first request, and so does their expiry: not the bootstrap keys until the first tick.
        if let Some(vm) = &vm {
            let mut vm = vm.borrow_mut();
            let mut events = Vec::new();
            vm.cache.load(&HostStore, &mut events);
            report_events(&vm, &events);
        }
        *self.vm.borrow_mut() = vm;
        // The tick drives the JWKS cache, and also the clock and the batched counters.
        if let Err(e) = hostabi::set_tick_period_ms(TICK_MS) {
            log(LogLevel::Error, &format!("cannot set tick period: {e:?}"));
            return false;
        }
        true
    }

    fn on_tick(&self) {
        let Some(vm_rc) = self.vm.borrow().clone() else { return };
        let Some(now) = now_ms() else { return };
        let (fetches, alb_fetches) = {
            let mut vm = vm_rc.borrow_mut();
            vm.clock.ticked(now);
            vm.flush_counters();
            let mut events = Vec::new();
            let fetches = vm.cache.tick(&HostStore, now, &mut events);
            let alb_fetches = vm.alb.tick(&HostStore, now);
            report_events(&vm, &events);
            for (slot, m) in vm.metrics.iter().enumerate() {
                if let Some(s) = vm.cache.slots.get(slot) {
                    gauge(m.keys, s.keys.as_ref().map_or(0, |k| k.keys.len() as u64));
                    if s.meta.fetched_at > 0 {
                        gauge(m.age_seconds, now.saturating_sub(s.meta.fetched_at) / 1000);
                    }
                }
            }
            (fetches, alb_fetches)
        };
        // Callouts first: waking a request below may re-enter the VM and move the SDK's notion
        // of the active context away from this root context.
        for f in fetches {
            dispatch(&vm_rc, f, now);
        }
        for f in alb_fetches {
            dispatch_alb(&vm_rc, f, now);
        }
        self.wake_waiters(&vm_rc, now);
    }
}

impl Root {
    /// Answers or resumes every paused request whose keys changed, whose fetch attempt
    /// finished, or whose wait ran out.
    fn wake_waiters(&self, vm_rc: &Rc<RefCell<Vm>>, now: u64) {
        let ready: Vec<Waiter> = {
            let mut guard = vm_rc.borrow_mut();
            let vm = &mut *guard;
            let cache = &vm.cache;
            let alb = &mut vm.alb;
            let mut is_ready = |w: &Waiter| {
                if now >= w.deadline_ms {
                    return true;
                }
                if let Some((source, kid)) = &w.alb {
                    return alb.settled(&HostStore, *source, kid, now);
                }
                let failures = cache.slots.get(w.slot).map_or(0, |s| s.meta.failures);
                cache.version(w.slot) != w.version || failures != w.failures
            };
            let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) =
                std::mem::take(&mut vm.waiters).into_iter().partition(|w| is_ready(w));
            vm.waiters = waiting;
            ready
        };
        for w in ready {
            if hostabi::set_effective_context(w.context_id).is_err() {
                continue; // the request is gone
            }
            // From here on the request is ours to answer: a host call that fails refuses it
            // (500) rather than leaving it paused.
            let refuse = |what: &str| {
                Filter {
                    context_id: w.context_id,
                    vm: None,
                }
                .internal_error(what)
            };
            let buf = match hostabi::get_header_map_pairs(MapType::HttpRequestHeaders) {
                Ok(b) => b,
                Err(e) => {
                    refuse(&format!("cannot read request headers: {e}"));
                    continue;
                }
            };
            let decoded = match crate::base::abi::decode_pairs(&buf) {
                Ok(d) => d,
                Err(e) => {
                    refuse(&format!("cannot read request headers: {e}"));
                    continue;
                }
            };
            let headers = borrowed(&decoded);
            let mut req = HttpRequest::from_headers(&headers);
            if vm_rc.borrow().uses_peer {
                req = req.with_peer(peer());
            }
            let ev = {
                let mut vm = vm_rc.borrow_mut();
                let ev = evaluate_in(&mut vm, &req, now, true);
                report(&mut vm, &req, &ev, now);
                ev
            };
            match ev.decision {
                Decision::Allow { .. } => {
                    let refused_metric = vm_rc.borrow().refused_metric;
                    match apply_header_ops(&ev.header_ops, refused_metric) {
                        Ok(()) => {
                            if let Err(e) = hostabi::resume_http_request() {
                                refuse(&format!("cannot resume the request: {e}"));
                            }
                        }
                        Err(e) => {
                            log(LogLevel::Error, &format!("{e}; refusing the request"));
                            send_reply(
                                500,
                                &[],
                                r#"{"error":"internal_error","message":"authentication could not be performed"}"#,
                            );
                        }
                    }
                }
                Decision::Deny(d) => send_reply(d.status, &d.headers, &d.body),
                Decision::NeedKeys { .. } => {
                    // Not produced with final_attempt; fail closed all the same.
                    send_reply(
                        503,
                        &[],
                        r#"{"error":"jwks_unavailable","message":"signing keys are not available"}"#,
                    );
                }
            }
        }
        let _ = hostabi::set_effective_context(self.context_id);
    }
}

/// Sets and removes the identity headers of an allowed request (and rewrites `:path` to the
/// canonical path it was judged on), and publishes filter state. A header that cannot be
/// changed is a failure to protect the upstream: the caller refuses the request (500).
fn apply_header_ops(ops: &HeaderOps, refused_metric: Option<u32>) -> Result<(), String> {
    for name in &ops.remove {
        hostabi::remove_header_map_value(MapType::HttpRequestHeaders, name)
            .map_err(|e| format!("cannot remove header {name}: {e:?}"))?;
    }
    for (name, value) in &ops.set {
        hostabi::replace_header_map_value(MapType::HttpRequestHeaders, name, value)
            .map_err(|e| format!("cannot set header {name}: {e:?}"))?;
    }
    for (name, why) in &ops.refused {
        incr(refused_metric);
        log(
            LogLevel::Warn,
            &json!({"claimguard": "claim_header_refused", "header": name, "why": why}).to_string(),
        );
    }
    for (key, value) in &ops.filter_state {
        // A one-segment property path is the key itself.
        let _ = hostabi::set_property(key.as_bytes(), value.as_bytes());
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

fn send_reply(status: u32, headers: &[(String, String)], body: &str) {
    if let Err(e) = hostabi::send_http_response(status, headers, body.as_bytes()) {
        log(LogLevel::Error, &format!("cannot send local reply: {e:?}"));
    }
}

struct Filter {
    context_id: u32,
    vm: Option<Rc<RefCell<Vm>>>,
}

impl Filter {
    fn internal_error(&self, what: &str) -> Action {
        // Fail closed: never let a request through that was not checked.
        log(LogLevel::Error, &format!("{what}; refusing the request"));
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        send_reply(
            500,
            &headers,
            r#"{"error":"internal_error","message":"authentication could not be performed"}"#,
        );
        Action::Pause
    }
}

impl Filter {
    fn on_http_request_headers(&self) -> Action {
        let Some(vm_rc) = self.vm.clone() else {
            return self.internal_error("no configuration");
        };
        let buf = match hostabi::get_header_map_pairs(MapType::HttpRequestHeaders) {
            Ok(b) => b,
            Err(e) => return self.internal_error(&format!("cannot read request headers: {e}")),
        };
        #[cfg(feature = "fault-injection")]
        if crate::base::abi::pair_spans(&buf).is_ok_and(|mut s| {
            s.any(|p| p.is_ok_and(|(k, v)| buf.get(k) == Some(b"x-claimguard-fault") && buf.get(v) == Some(b"trap")))
        }) {
            core::arch::wasm32::unreachable();
        }
        let Some(now) = vm_rc.borrow_mut().clock.now_ms(now_ms) else {
            return self.internal_error("cannot read the clock");
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
                        return match apply_header_ops(&outcome.header_ops, refused_metric) {
                            Ok(()) => Action::Continue,
                            Err(e) => self.internal_error(&e),
                        };
                    }
                }
            }
            key
        };
        let decoded = match crate::base::abi::decode_pairs(&buf) {
            Ok(d) => d,
            Err(e) => return self.internal_error(&format!("cannot read request headers: {e}")),
        };
        let headers = borrowed(&decoded);
        // Before anything else, on every request: no client-supplied copy of a header
        // claimguard sets ever reaches the upstream.
        {
            let vm = vm_rc.borrow();
            for name in managed_present(&vm.config, &headers) {
                if let Err(e) = hostabi::remove_header_map_value(MapType::HttpRequestHeaders, &name) {
                    drop(vm);
                    return self.internal_error(&format!("cannot remove header {name}: {e:?}"));
                }
            }
        }
        let mut vm = vm_rc.borrow_mut();
        let mut req = HttpRequest::from_headers(&headers);
        if vm.uses_peer {
            req = req.with_peer(peer());
        }
        let mut ev = evaluate_in(&mut vm, &req, now, false);
        if let Decision::NeedKeys { provider, kid } = &ev.decision {
            if let (Some(source), Some(kid)) = (vm.alb_of.get(*provider).copied().flatten(), kid.clone()) {
                let wait = vm.alb.on_missing_key(&HostStore, source, &kid, now);
                match wait {
                    KeyWait::Wait { deadline_ms } if vm.waiters.len() < MAX_WAITERS => {
                        vm.waiters.push(Waiter {
                            context_id: self.context_id,
                            slot: 0,
                            version: 0,
                            failures: 0,
                            deadline_ms,
                            alb: Some((source, kid.clone())),
                        });
                        log(
                            LogLevel::Debug,
                            &json!({"claimguard": "waiting_for_alb_key", "kid": kid, "deadlineMs": deadline_ms})
                                .to_string(),
                        );
                        return Action::Pause;
                    }
                    // Loaded from shared data, known missing, or too many waiting: decide now.
                    _ => ev = evaluate_in(&mut vm, &req, now, true),
                }
            }
        }
        if let Decision::NeedKeys { provider, kid } = &ev.decision {
            let slot = vm.slot_of.get(*provider).copied().flatten();
            let wait = match slot {
                Some(s) => {
                    incr(vm.metrics.get(s).and_then(|m| m.key_miss));
                    vm.cache.on_missing_key(&HostStore, s, kid.as_deref(), now)
                }
                None => KeyWait::GiveUp,
            };
            let full = vm.waiters.len() >= MAX_WAITERS;
            match (wait, slot) {
                (KeyWait::Wait { deadline_ms }, Some(s)) if !full => {
                    let (version, failures) = (
                        vm.cache.version(s),
                        vm.cache.slots.get(s).map_or(0, |x| x.meta.failures),
                    );
                    vm.waiters.push(Waiter {
                        context_id: self.context_id,
                        slot: s,
                        version,
                        failures,
                        deadline_ms,
                        alb: None,
                    });
                    log(
                        LogLevel::Debug,
                        &json!({"claimguard": "waiting_for_keys", "kid": kid, "deadlineMs": deadline_ms}).to_string(),
                    );
                    return Action::Pause;
                }
                _ => {
                    ev = evaluate_in(&mut vm, &req, now, true);
                }
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
            Decision::Allow { .. } => match apply_header_ops(&ev.header_ops, refused_metric) {
                Ok(()) => Action::Continue,
                Err(e) => self.internal_error(&e),
            },
            Decision::Deny(d) => {
                send_reply(d.status, &d.headers, &d.body);
                Action::Pause
            }
            Decision::NeedKeys { .. } => self.internal_error("keys still missing after the final attempt"),
        }
    }
}

/// Counts the request and writes its decision line within the log budget (see
/// [`decision_level`]; allows at debug), plus AUDIT lines. Returns its labels.
fn report(vm: &mut Vm, req: &HttpRequest, ev: &Evaluation, now_ms: u64) -> Labels {
    let config = vm.config.clone();
    // The peer is named in every decision line: read it for one if evaluation did not.
    let uses_peer = vm.uses_peer;
    let line = |ev: &Evaluation, l: &crate::request::metrics::Labels| {
        if uses_peer {
            decision_line(&config, req, ev, l)
        } else {
            let req = HttpRequest { peer: peer(), ..*req };
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
                    incr(vm.dropped_metric);
                    continue;
                }
                let line = json!({"claimguard": "audit", "rule": config.policy.rule_name(t.rule),
                    "method": req.method, "path": ev.normalized_path, "subject": ev.subject});
                log(LogLevel::Warn, &line.to_string());
            }
        }
    }
    if l.outcome == "allowed" {
        if debug_lines(vm, now_ms) {
            log(LogLevel::Debug, &line(ev, &l).to_string());
        }
        return l;
    }
    if !vm.log_budget.take(now_ms) {
        incr(vm.dropped_metric);
        return l;
    }
    let mut line = line(ev, &l);
    if l.outcome == "dry_run_denied" {
        if let (Some(pd), Some(m)) = (&ev.policy, line.as_object_mut()) {
            let why: Vec<String> = pd.trace.iter().map(|t| config.policy.describe(t)).collect();
            m.insert("trace".into(), json!(why));
        }
    }
    log(decision_level(ev, &l), &line.to_string());
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
fn request_counter(vm: &mut Vm, l: &Labels) -> usize {
    let Vm {
        config,
        request_metrics,
        request_counters,
        ..
    } = vm;
    *request_metrics
        .entry((l.outcome, l.reason, l.rule, l.provider))
        .or_insert_with(|| {
            request_counters.push(Batched::new(
                hostabi::define_metric(MetricType::Counter, &request_metric(config, l)).ok(),
            ));
            request_counters.len() - 1
        })
}

/// Whether allowed requests get a debug decision line: Envoy logs this filter at debug or
/// trace. Asked at most once a second, not on every request.
fn debug_lines(vm: &mut Vm, now_ms: u64) -> bool {
    if now_ms >= vm.debug_logs.1.saturating_add(1000) || now_ms < vm.debug_logs.1 {
        let debug = hostabi::get_log_level().is_ok_and(|lvl| matches!(lvl, Some(LogLevel::Trace | LogLevel::Debug)));
        vm.debug_logs = (debug, now_ms);
    }
    vm.debug_logs.0
}

/// `f` on this VM's memo with its key lookup, or None when the memo is off.
fn with_memo<R>(vm: &mut Vm, now_ms: u64, f: impl FnOnce(&mut VmMemo, &Config, &dyn KeyLookup) -> R) -> Option<R> {
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
fn memo_hit(vm: &mut Vm, key: &RequestKey, now_ms: u64) -> Option<Rc<MemoOutcome>> {
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
fn memo_offer(vm: &mut Vm, key: &RequestKey, ev: &Evaluation, labels: &Labels, now_ms: u64) {
    with_memo(vm, now_ms, |m, _, keys| m.memo.offer(keys, key, ev, labels));
}
