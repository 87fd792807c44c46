//! Remote JWKS across worker VMs: one fetch per proxy, shared, refreshed, rotated, and kept
//! through outages. Pure logic over two small host abilities, [`SharedStore`] (Envoy's shared
//! data: get with a CAS token, set with CAS) and a clock passed in as milliseconds, so the
//! whole state machine is unit-tested natively with a fake store.
//!
//! Per remote source (one URL), shared data holds:
//! * `KEY|meta`: a small JSON [`Meta`]: version, fetch times, backoff, etag, last error;
//! * `KEY|body`: `VERSION\n` + the JWKS document last published;
//! * `KEY|lease`: `HOLDER UNTIL_MS`: which VM may fetch now;
//! * `KEY|want`: the time a VM last asked for an early refetch (unknown `kid`).
//!
//! Each VM's tick reads `meta` (a few hundred bytes), re-parses `body` only when the version
//! changed, and decides whether a fetch is due; the lease elects one fetcher. The request path
//! only ever reads the VM-local parsed [`KeySet`].

use crate::config::{HttpUrl, RemoteJwks};
use crate::jwks::{parse_jwks, KeySet};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Envoy shared data, as the cache needs it.
pub trait SharedStore {
    /// The value and its CAS token, or None when the key does not exist.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Sets the value; with `cas`, only if the key still has that token.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    CasMismatch,
    Other,
}

/// What every VM knows about one source, published in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    /// Bumped on every successful publish of a new body; 0 = never fetched.
    pub version: u64,
    /// Last success (a new body or a 304), ms since the epoch.
    pub fetched_at: u64,
    /// Refresh due after this.
    pub fresh_until: u64,
    pub last_attempt: u64,
    /// Backoff: no attempt before this.
    pub next_attempt: u64,
    pub failures: u32,
    pub last_error: String,
    pub etag: Option<String>,
    /// The `jwks_uri` found by OIDC discovery.
    pub discovered_jwks_uri: Option<String>,
    pub keys: u32,
}

/// The longest backoff between failed attempts.
pub const MAX_BACKOFF_MS: u64 = 300_000;

fn backoff_ms(failures: u32) -> u64 {
    // 1 s, 2 s, 4 s, ... capped.
    1000u64
        .saturating_mul(1u64 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF_MS)
}

/// One HTTP GET the host should send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub source: usize,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    pub etag: Option<String>,
    /// This fetch is the discovery document, not the JWKS.
    pub discovery: bool,
}

/// What came back from a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    Response {
        status: u16,
        body: Vec<u8>,
        /// Body bytes the host saw (the body is not read when over the cap).
        body_size: usize,
        cache_control: Option<String>,
        etag: Option<String>,
    },
    /// The callout could not be made or failed (connection, timeout, unknown cluster).
    Failed(String),
}

/// What happened, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Fetched {
        source: usize,
        keys: usize,
        version: u64,
    },
    NotModified {
        source: usize,
    },
    Discovered {
        source: usize,
        jwks_uri: String,
    },
    FetchFailed {
        source: usize,
        error: String,
        failures: u32,
        retry_in_ms: u64,
    },
    /// A new version was published by some VM and parsed here.
    Loaded {
        source: usize,
        keys: usize,
        version: u64,
    },
    /// A published body did not parse here (never expected: bodies are checked before publish).
    LoadFailed {
        source: usize,
        error: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    None,
    /// We created the lease key (it did not exist, so CAS could not protect the write):
    /// confirm on the next tick that our write survived before fetching.
    Claimed {
        until: u64,
    },
    Held {
        until: u64,
    },
}

/// A VM's view of one remote source.
pub struct Slot {
    pub remote: RemoteJwks,
    /// Fetched keys (replace the inline bootstrap keys once present).
    pub keys: Option<KeySet>,
    pub version: u64,
    pub meta: Meta,
    lease: LeaseState,
    in_flight: bool,
    /// Unknown kids already refetched for, until when (bounded).
    negative: HashMap<String, u64>,
    /// This VM wants a fetch as soon as the lease and cooldown allow.
    wanted_since: Option<u64>,
}

/// Bound on remembered unknown kids per source.
const MAX_NEGATIVE_KIDS: usize = 1024;

/// What a request with an unknown `kid` (or with no keys at all) should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWait {
    /// Pause until the version changes, an attempt completes, or `deadline_ms`.
    Wait { deadline_ms: u64 },
    /// No fetch will come soon enough: answer now.
    GiveUp,
}

pub struct JwksCache {
    pub slots: Vec<Slot>,
    /// This VM's identity for leases (random, passed in).
    holder: u64,
}

fn k(slot: &Slot, part: &str) -> String {
    format!("{}|{part}", slot.remote.shared_key)
}

impl JwksCache {
    pub fn new(remotes: Vec<RemoteJwks>, holder: u64) -> JwksCache {
        let slots = remotes
            .into_iter()
            .map(|remote| Slot {
                remote,
                keys: None,
                version: 0,
                meta: Meta::default(),
                lease: LeaseState::None,
                in_flight: false,
                negative: HashMap::new(),
                wanted_since: None,
            })
            .collect();
        JwksCache { slots, holder }
    }

    /// Fetched keys of a source that are still within `maxStale`.
    pub fn usable_keys(&self, source: usize, now_ms: u64) -> Option<&KeySet> {
        let s = self.slots.get(source)?;
        let keys = s.keys.as_ref()?;
        (now_ms <= s.meta.fetched_at.saturating_add(s.remote.max_stale_ms)).then_some(keys)
    }

    /// Whether a source has ever had keys here (for telling "stale" from "never fetched").
    pub fn has_fetched(&self, source: usize) -> bool {
        self.slots.get(source).is_some_and(|s| s.keys.is_some())
    }

    pub fn version(&self, source: usize) -> u64 {
        self.slots.get(source).map_or(0, |s| s.version)
    }

    pub fn last_attempt(&self, source: usize) -> u64 {
        self.slots.get(source).map_or(0, |s| s.meta.last_attempt)
    }

    /// Reads shared state, loads new versions, and returns the fetches this VM should send.
    pub fn tick(&mut self, store: &dyn SharedStore, now_ms: u64, events: &mut Vec<Event>) -> Vec<FetchRequest> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            self.refresh_from_store(store, i, events);
            if let Some(req) = self.maybe_fetch(store, i, now_ms) {
                out.push(req);
            }
        }
        out
    }

    fn refresh_from_store(&mut self, store: &dyn SharedStore, i: usize, events: &mut Vec<Event>) {
        let Some(slot) = self.slots.get_mut(i) else { return };
        let Some((bytes, _)) = store.get(&k(slot, "meta")) else {
            return;
        };
        if let Ok(meta) = serde_json::from_slice::<Meta>(&bytes) {
            slot.meta = meta;
        }
        if slot.meta.version == slot.version {
            return;
        }
        let Some((body, _)) = store.get(&k(slot, "body")) else {
            return;
        };
        let text = String::from_utf8_lossy(&body);
        let Some((ver, doc)) = text.split_once('\n') else {
            return;
        };
        let ver: u64 = ver.parse().unwrap_or(0);
        match serde_json::from_str(doc)
            .map_err(|e| e.to_string())
            .and_then(|v| parse_jwks(&v).map_err(|(p, why)| format!("{p}: {why}")))
        {
            Ok(set) if !set.is_empty() => {
                events.push(Event::Loaded {
                    source: i,
                    keys: set.keys.len(),
                    version: ver,
                });
                slot.keys = Some(set);
                slot.version = ver;
                // New keys: unknown kids deserve a new look.
                slot.negative.clear();
            }
            Ok(_) => {
                slot.version = ver;
                events.push(Event::LoadFailed {
                    source: i,
                    error: "published set has no usable keys".into(),
                });
            }
            Err(e) => {
                slot.version = ver;
                events.push(Event::LoadFailed { source: i, error: e });
            }
        }
    }

    fn due(slot: &Slot, want: u64, now_ms: u64) -> bool {
        let m = &slot.meta;
        if now_ms < m.next_attempt {
            return false;
        }
        if m.version == 0 || now_ms >= m.fresh_until {
            return true;
        }
        // An early refetch asked for (unknown kid), at most once per cooldown. A request
        // that asked while a fetch was in flight was answered by that fetch when it
        // succeeded after the asking: the set it brought is the one that request (and the
        // VM's negative cache) judged; a kid still missing asks again after the cooldown.
        let asked = want.max(slot.wanted_since.unwrap_or(0));
        asked > m.last_attempt
            && asked > m.fetched_at
            && now_ms >= m.last_attempt.saturating_add(slot.remote.cooldown_ms)
    }

    fn maybe_fetch(&mut self, store: &dyn SharedStore, i: usize, now_ms: u64) -> Option<FetchRequest> {
        let holder = self.holder;
        let slot = self.slots.get_mut(i)?;
        if slot.in_flight {
            return None;
        }
        let want = store
            .get(&k(slot, "want"))
            .and_then(|(b, _)| String::from_utf8_lossy(&b).trim().parse::<u64>().ok())
            .unwrap_or(0);
        if !Self::due(slot, want, now_ms) {
            slot.lease = LeaseState::None;
            return None;
        }
        let lease_key = k(slot, "lease");
        match slot.lease {
            LeaseState::Claimed { until } => {
                // Proceed only if our unprotected write was not overwritten.
                let ours = store.get(&lease_key).is_some_and(|(b, _)| parse_lease(&b).0 == holder);
                if !ours || now_ms > until {
                    slot.lease = LeaseState::None;
                    return None;
                }
                slot.lease = LeaseState::Held { until };
            }
            LeaseState::Held { .. } | LeaseState::None => {
                let until = now_ms + slot.remote.timeout_ms + 2_000;
                let value = format!("{holder} {until}");
                match store.get(&lease_key) {
                    Some((b, cas)) => {
                        let (h, exp) = parse_lease(&b);
                        if h != holder && h != 0 && exp >= now_ms {
                            return None; // another VM is fetching
                        }
                        if store.set(&lease_key, value.as_bytes(), Some(cas)).is_err() {
                            return None; // lost the race
                        }
                        slot.lease = LeaseState::Held { until };
                    }
                    None => {
                        if store.set(&lease_key, value.as_bytes(), None).is_ok() {
                            slot.lease = LeaseState::Claimed { until };
                        }
                        return None;
                    }
                }
            }
        }
        // Record the attempt before sending, so every VM's cooldown sees it at once.
        let mut meta = slot.meta.clone();
        meta.last_attempt = now_ms;
        if !publish_meta(store, slot, &meta) {
            slot.lease = LeaseState::None;
            release(store, slot, holder);
            return None;
        }
        slot.in_flight = true;
        slot.wanted_since = None;
        Some(request_for(i, slot))
    }

    /// Feeds a fetch's outcome back; publishes a good set for every VM.
    pub fn on_fetch_done(
        &mut self,
        store: &dyn SharedStore,
        source: usize,
        now_ms: u64,
        discovery: bool,
        result: FetchResult,
        events: &mut Vec<Event>,
    ) -> Option<FetchRequest> {
        let holder = self.holder;
        let slot = self.slots.get_mut(source)?;
        slot.in_flight = false;
        // Re-read meta: another VM may have published meanwhile.
        if let Some((b, _)) = store.get(&k(slot, "meta")) {
            if let Ok(m) = serde_json::from_slice::<Meta>(&b) {
                slot.meta = m;
            }
        }
        let outcome = evaluate_response(&slot.remote, discovery, result);
        let mut meta = slot.meta.clone();
        let follow_up = match outcome {
            Outcome::Discovered(uri) => {
                meta.discovered_jwks_uri = Some(uri.clone());
                events.push(Event::Discovered { source, jwks_uri: uri });
                // Fetch the JWKS right away, under the same lease.
                publish_meta(store, slot, &meta);
                slot.in_flight = true;
                return Some(request_for(source, slot));
            }
            Outcome::NotModified(max_age) => {
                meta.fetched_at = now_ms;
                meta.fresh_until = now_ms + ttl(&slot.remote, max_age);
                meta.failures = 0;
                meta.next_attempt = 0;
                meta.last_error.clear();
                events.push(Event::NotModified { source });
                None
            }
            Outcome::Keys {
                doc,
                keys,
                max_age,
                etag,
            } => {
                let version = meta.version.max(slot.version) + 1;
                let body = format!("{version}\n{doc}");
                if store.set(&k(slot, "body"), body.as_bytes(), None).is_ok() {
                    meta.version = version;
                    meta.fetched_at = now_ms;
                    meta.fresh_until = now_ms + ttl(&slot.remote, max_age);
                    meta.failures = 0;
                    meta.next_attempt = 0;
                    meta.last_error.clear();
                    meta.etag = etag;
                    meta.keys = u32::try_from(keys.keys.len()).unwrap_or(u32::MAX);
                    events.push(Event::Fetched {
                        source,
                        keys: keys.keys.len(),
                        version,
                    });
                    slot.keys = Some(keys);
                    slot.version = version;
                    slot.negative.clear();
                }
                None
            }
            Outcome::Failed(error) => {
                meta.failures = meta.failures.saturating_add(1);
                let retry = backoff_ms(meta.failures);
                meta.next_attempt = now_ms + retry;
                meta.last_error = error.clone();
                events.push(Event::FetchFailed {
                    source,
                    error,
                    failures: meta.failures,
                    retry_in_ms: retry,
                });
                None
            }
        };
        publish_meta(store, slot, &meta);
        release(store, slot, holder);
        slot.lease = LeaseState::None;
        follow_up
    }

    /// A request's token names `kid`, which the current set lacks (or there are no keys and
    /// `kid` is None). Decides whether the request should wait for a refetch.
    pub fn on_missing_key(
        &mut self,
        store: &dyn SharedStore,
        source: usize,
        kid: Option<&str>,
        now_ms: u64,
    ) -> KeyWait {
        let Some(slot) = self.slots.get_mut(source) else {
            return KeyWait::GiveUp;
        };
        let deadline_ms = now_ms + slot.remote.wait_ms;
        if let Some(kid) = kid {
            if slot.negative.get(kid).is_some_and(|until| *until > now_ms) {
                return KeyWait::GiveUp;
            }
            // Remember it for a cooldown either way: a flood of random kids costs one fetch.
            if slot.negative.len() >= MAX_NEGATIVE_KIDS {
                slot.negative.retain(|_, until| *until > now_ms);
                if slot.negative.len() >= MAX_NEGATIVE_KIDS {
                    slot.negative.clear();
                }
            }
            slot.negative.insert(kid.to_string(), now_ms + slot.remote.cooldown_ms);
        }
        let m = &slot.meta;
        let fetch_in_flight = slot.in_flight || lease_busy(store, slot, now_ms);
        let cooling = m.version > 0 && now_ms < m.last_attempt.saturating_add(slot.remote.cooldown_ms);
        if cooling && !fetch_in_flight {
            return KeyWait::GiveUp;
        }
        if slot.keys.is_none() && now_ms < m.next_attempt && !fetch_in_flight {
            // Cold and backing off: wait for the next attempt if it comes within the wait.
            if m.next_attempt > deadline_ms {
                return KeyWait::GiveUp;
            }
        }
        slot.wanted_since = Some(now_ms);
        let _ = store.set(&k(slot, "want"), now_ms.to_string().as_bytes(), None);
        KeyWait::Wait { deadline_ms }
    }
}

fn lease_busy(store: &dyn SharedStore, slot: &Slot, now_ms: u64) -> bool {
    store.get(&k(slot, "lease")).is_some_and(|(b, _)| {
        let (h, until) = parse_lease(&b);
        h != 0 && until >= now_ms
    })
}

fn parse_lease(b: &[u8]) -> (u64, u64) {
    let t = String::from_utf8_lossy(b);
    let mut it = t.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn release(store: &dyn SharedStore, slot: &Slot, holder: u64) {
    let key = k(slot, "lease");
    if let Some((b, cas)) = store.get(&key) {
        if parse_lease(&b).0 == holder {
            let _ = store.set(&key, b"0 0", Some(cas));
        }
    }
}

fn publish_meta(store: &dyn SharedStore, slot: &mut Slot, meta: &Meta) -> bool {
    let Ok(bytes) = serde_json::to_vec(meta) else {
        return false;
    };
    // The lease serialises writers; CAS only guards against a stale view.
    let ok = store.set(&k(slot, "meta"), &bytes, None).is_ok();
    if ok {
        slot.meta = meta.clone();
    }
    ok
}

fn request_for(source: usize, slot: &Slot) -> FetchRequest {
    let r = &slot.remote;
    let discovered = slot
        .meta
        .discovered_jwks_uri
        .as_deref()
        .and_then(|u| HttpUrl::parse(u).ok());
    let (url, discovery) = match (r.discovery, discovered) {
        (true, Some(jwks)) => (jwks, false),
        (true, None) => (r.url.clone(), true),
        (false, _) => (r.url.clone(), false),
    };
    FetchRequest {
        source,
        cluster: r.cluster.clone().unwrap_or_else(|| url.istio_cluster()),
        authority: url.authority(),
        path: url.path.clone(),
        timeout_ms: r.timeout_ms,
        etag: if discovery { None } else { slot.meta.etag.clone() },
        discovery,
    }
}

fn ttl(r: &RemoteJwks, max_age_s: Option<u64>) -> u64 {
    match max_age_s {
        Some(s) => s.saturating_mul(1000).clamp(r.min_refresh_ms, r.max_refresh_ms),
        None => r.refresh_ms,
    }
}

enum Outcome {
    Keys {
        doc: String,
        keys: KeySet,
        max_age: Option<u64>,
        etag: Option<String>,
    },
    NotModified(Option<u64>),
    Discovered(String),
    Failed(String),
}

/// `Cache-Control: max-age=N` (no-store/no-cache mean "refresh at the minimum").
pub fn max_age(cache_control: &str) -> Option<u64> {
    let mut out = None;
    for d in cache_control.split(',') {
        let d = d.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(0);
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            out = v.trim_matches('"').parse().ok();
        }
    }
    out
}

fn evaluate_response(r: &RemoteJwks, discovery: bool, result: FetchResult) -> Outcome {
    let (status, body, body_size, cc, etag) = match result {
        FetchResult::Failed(e) => return Outcome::Failed(e),
        FetchResult::Response {
            status,
            body,
            body_size,
            cache_control,
            etag,
        } => (status, body, body_size, cache_control, etag),
    };
    let max_age = cc.as_deref().and_then(max_age);
    if status == 304 && !discovery {
        return Outcome::NotModified(max_age);
    }
    if status != 200 {
        return Outcome::Failed(format!("HTTP status {status}"));
    }
    if body_size > r.max_bytes || body.len() > r.max_bytes {
        return Outcome::Failed(format!(
            "response is {body_size} bytes; jwksMaxBytes is {}",
            r.max_bytes
        ));
    }
    let doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Outcome::Failed(format!("response is not JSON: {e}")),
    };
    if discovery {
        return match doc.get("jwks_uri").and_then(|v| v.as_str()) {
            Some(u) if HttpUrl::parse(u).is_ok() => Outcome::Discovered(u.to_string()),
            Some(_) => Outcome::Failed("discovery document's jwks_uri is not an http(s) URL".into()),
            None => Outcome::Failed("discovery document has no jwks_uri".into()),
        };
    }
    match parse_jwks(&doc) {
        Ok(set) if !set.is_empty() => Outcome::Keys {
            doc: doc.to_string(),
            keys: set,
            max_age,
            etag,
        },
        Ok(set) => {
            let why = set
                .rejected
                .first()
                .map(|(p, w)| format!("{p}: {w}"))
                .unwrap_or_else(|| "no usable signing key".into());
            Outcome::Failed(format!("JWKS has no usable key ({why})"))
        }
        Err((p, why)) => Outcome::Failed(format!("not a JWKS: {p} {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Alg;
    use crate::config::Config;
    use crate::devtools::keys::TestKey;
    use serde_json::json;
    use std::cell::RefCell;

    /// Envoy's shared data semantics: a CAS token per write; CAS ignored for missing keys.
    #[derive(Default)]
    struct FakeStore {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next: RefCell<u32>,
    }

    impl SharedStore for FakeStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.map.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut m = self.map.borrow_mut();
            if let (Some(c), Some((_, cur))) = (cas, m.get(key)) {
                if c != 0 && c != *cur {
                    return Err(StoreError::CasMismatch);
                }
            }
            *self.next.borrow_mut() += 1;
            let n = *self.next.borrow();
            m.insert(key.to_string(), (value.to_vec(), n));
            Ok(())
        }
    }

    fn remote(extra: serde_json::Value) -> RemoteJwks {
        let mut p = json!({"issuer": "https://idp.test", "jwksUri": "https://idp.test/jwks.json"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        let c = Config::from_json(json!({"providers": [p]}).to_string().as_bytes()).unwrap();
        c.providers[0].remote.clone().unwrap()
    }

    fn ok(doc: &serde_json::Value, cc: Option<&str>) -> FetchResult {
        let body = doc.to_string().into_bytes();
        FetchResult::Response {
            status: 200,
            body_size: body.len(),
            body,
            cache_control: cc.map(str::to_owned),
            etag: None,
        }
    }

    /// Runs ticks of several VMs until one asks to fetch; returns (vm index, request).
    fn first_fetch(vms: &mut [JwksCache], store: &FakeStore, now: u64) -> Vec<(usize, FetchRequest)> {
        let mut out = Vec::new();
        let mut ev = Vec::new();
        for (i, vm) in vms.iter_mut().enumerate() {
            for r in vm.tick(store, now, &mut ev) {
                out.push((i, r));
            }
        }
        out
    }

    /// `vms` at cold start, ticked until the first fetch is sent: tick 1 (the lease key does
    /// not exist yet; every VM may claim, none fetches yet), tick 2 (exactly one VM's claim
    /// survived and it fetches). Returns (that VM's index, its request).
    fn first_fetch_in_flight(vms: &mut [JwksCache], store: &FakeStore) -> (usize, FetchRequest) {
        assert!(first_fetch(vms, store, 1_000).is_empty());
        let fetches = first_fetch(vms, store, 1_200);
        assert_eq!(fetches.len(), 1, "{fetches:?}");
        fetches[0].clone()
    }

    #[test]
    fn one_fetch_for_many_vms_and_everyone_loads_it() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vms: Vec<JwksCache> = (1..=4).map(|h| JwksCache::new(vec![remote(json!({}))], h)).collect();
        let (who, req) = first_fetch_in_flight(&mut vms, &store);
        assert_eq!(req.cluster, "outbound|443||idp.test");
        assert_eq!((req.authority.as_str(), req.path.as_str()), ("idp.test", "/jwks.json"));
        // Nobody else fetches while it is in flight.
        assert!(first_fetch(&mut vms, &store, 1_400).is_empty());
        let mut ev = Vec::new();
        vms[who].on_fetch_done(&store, 0, 1_500, false, ok(&key.jwks(), None), &mut ev);
        assert!(matches!(
            ev[0],
            Event::Fetched {
                keys: 1,
                version: 1,
                ..
            }
        ));
        // Next tick: every VM has the keys, no one fetches again until the refresh is due.
        assert!(first_fetch(&mut vms, &store, 1_600).is_empty());
        for vm in &vms {
            assert_eq!(vm.usable_keys(0, 1_600).map(|k| k.keys.len()), Some(1));
            assert_eq!(vm.version(0), 1);
        }
        // Refresh after the 10 min default: one fetch again (lease now exists: CAS, no confirm tick).
        let fetches = first_fetch(&mut vms, &store, 1_500 + 600_000);
        assert_eq!(fetches.len(), 1);
    }

    #[test]
    fn asking_during_a_fetch_is_answered_by_it() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vms: Vec<JwksCache> = (1..=2).map(|h| JwksCache::new(vec![remote(json!({}))], h)).collect();
        let (who, _) = first_fetch_in_flight(&mut vms, &store);
        let other = 1 - who;
        // A request on the other VM needs a key while the first fetch is in flight.
        assert!(matches!(
            vms[other].on_missing_key(&store, 0, Some("k1"), 1_300),
            KeyWait::Wait { .. }
        ));
        let mut ev = Vec::new();
        vms[who].on_fetch_done(&store, 0, 1_500, false, ok(&key.jwks(), None), &mut ev);
        assert!(first_fetch(&mut vms, &store, 1_600).is_empty());
        assert!(vms[other]
            .usable_keys(0, 1_600)
            .is_some_and(|k| k.find_by_kid("k1").next().is_some()));
        // That ask was answered: no fetch once the cooldown has passed, nor later, until the
        // refresh is due.
        for t in [1_200 + 30_000, 1_200 + 31_000, 1_200 + 300_000] {
            assert!(first_fetch(&mut vms, &store, t).is_empty(), "refetch at {t}");
        }
        // A kid still missing after the cooldown asks again, and gets one fetch.
        let t = 1_200 + 300_000;
        assert!(matches!(
            vms[other].on_missing_key(&store, 0, Some("k2"), t),
            KeyWait::Wait { .. }
        ));
        assert_eq!(first_fetch(&mut vms, &store, t + 50).len(), 1);
    }

    #[test]
    fn cache_control_within_bounds() {
        let r = remote(json!({"jwksMinRefreshInterval": "2m", "jwksMaxRefreshInterval": "1h"}));
        assert_eq!(ttl(&r, Some(30)), 120_000);
        assert_eq!(ttl(&r, Some(1800)), 1_800_000);
        assert_eq!(ttl(&r, Some(86_400)), 3_600_000);
        assert_eq!(ttl(&r, None), 600_000);
        assert_eq!(max_age("public, max-age=300"), Some(300));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("private"), None);
    }

    fn warm(store: &FakeStore, key: &TestKey, extra: serde_json::Value) -> JwksCache {
        let mut vm = JwksCache::new(vec![remote(extra)], 7);
        let mut ev = Vec::new();
        assert!(vm.tick(store, 1_000, &mut ev).is_empty()); // claim
        let r = vm.tick(store, 1_100, &mut ev);
        assert_eq!(r.len(), 1);
        vm.on_fetch_done(store, 0, 1_200, false, ok(&key.jwks(), None), &mut ev);
        vm
    }

    #[test]
    fn failures_back_off_and_keep_the_last_good_keys_until_max_stale() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({"maxStale": "1h"}));
        let mut ev = Vec::new();
        let mut t = 1_200 + 600_000;
        let mut attempts = Vec::new();
        while t < 1_200 + 600_000 + 60_000 {
            for _ in vm.tick(&store, t, &mut ev) {
                attempts.push(t);
                vm.on_fetch_done(
                    &store,
                    0,
                    t,
                    false,
                    FetchResult::Failed("connection refused".into()),
                    &mut ev,
                );
            }
            t += 100;
        }
        // 1 s, 2 s, 4 s, 8 s, 16 s between attempts: backoff, not a hammer.
        let gaps: Vec<u64> = attempts.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
        assert_eq!(gaps, vec![1, 2, 4, 8, 16], "{attempts:?}");
        assert!(vm.usable_keys(0, t).is_some(), "stale keys are kept");
        assert!(
            vm.usable_keys(0, 1_200 + 3_600_000 + 1).is_none(),
            "but not past maxStale"
        );
        assert!(ev.iter().any(|e| matches!(e, Event::FetchFailed { failures: 5, .. })));
    }

    #[test]
    fn garbage_never_replaces_a_good_set() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({}));
        let t = 1_200 + 600_000;
        let mut ev = Vec::new();
        let bad = [
            FetchResult::Response {
                status: 200,
                body: b"<html>".to_vec(),
                body_size: 6,
                cache_control: None,
                etag: None,
            },
            ok(&json!({"keys": []}), None),
            ok(&json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}), None),
            FetchResult::Response {
                status: 500,
                body: vec![],
                body_size: 0,
                cache_control: None,
                etag: None,
            },
            FetchResult::Response {
                status: 200,
                body: vec![],
                body_size: 10_000_000,
                cache_control: None,
                etag: None,
            },
        ];
        let mut now = t;
        for b in bad {
            let reqs = vm.tick(&store, now, &mut ev);
            assert_eq!(reqs.len(), 1, "at {now}");
            vm.on_fetch_done(&store, 0, now, false, b, &mut ev);
            assert_eq!(vm.version(0), 1);
            assert!(vm.usable_keys(0, now).is_some());
            now += MAX_BACKOFF_MS + 1;
        }
        let errors: Vec<&str> = ev
            .iter()
            .filter_map(|e| match e {
                Event::FetchFailed { error, .. } => Some(error.as_str()),
                _ => None,
            })
            .collect();
        assert!(errors[0].contains("not JSON"), "{errors:?}");
        assert!(errors[1].contains("no usable"), "{errors:?}");
        assert!(errors[2].contains("keys[0].n"), "{errors:?}");
        assert!(errors[3].contains("500"), "{errors:?}");
        assert!(errors[4].contains("jwksMaxBytes"), "{errors:?}");
    }

    #[test]
    fn unknown_kid_refetches_once_per_cooldown() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({}));
        let mut ev = Vec::new();
        // Within the cooldown after the warm fetch: no refetch, answer at once.
        assert_eq!(vm.on_missing_key(&store, 0, Some("k2"), 2_000), KeyWait::GiveUp);
        // After the cooldown: one request waits and asks for a refetch; the tick sends it.
        let t = 1_200 + 30_000;
        assert!(matches!(
            vm.on_missing_key(&store, 0, Some("k3"), t),
            KeyWait::Wait { .. }
        ));
        let reqs = vm.tick(&store, t + 50, &mut ev);
        assert_eq!(reqs.len(), 1);
        // A flood of random kids meanwhile: they wait on the same fetch, no new ones.
        for i in 0..500 {
            let _ = vm.on_missing_key(&store, 0, Some(&format!("rnd-{i}")), t + 60);
        }
        assert!(vm.tick(&store, t + 100, &mut ev).is_empty());
        let rotated = TestKey::generate(Alg::ES256, "k3");
        vm.on_fetch_done(
            &store,
            0,
            t + 150,
            false,
            ok(&json!({"keys": [key.public_jwk(), rotated.public_jwk()]}), None),
            &mut ev,
        );
        assert_eq!(vm.version(0), 2);
        assert!(vm.usable_keys(0, t + 200).unwrap().find_by_kid("k3").next().is_some());
        // More random kids inside the next cooldown: refused at once, no fetch.
        for i in 0..500 {
            assert_eq!(
                vm.on_missing_key(&store, 0, Some(&format!("again-{i}")), t + 1_000),
                KeyWait::GiveUp
            );
        }
        assert!(vm.tick(&store, t + 1_100, &mut ev).is_empty());
        // The negative cache is bounded.
        assert!(vm.slots[0].negative.len() <= MAX_NEGATIVE_KIDS);
    }

    #[test]
    fn cold_start_waits_then_fails_closed() {
        let store = FakeStore::default();
        let mut vm = JwksCache::new(vec![remote(json!({"jwksWaitTimeout": "2s"}))], 9);
        let mut ev = Vec::new();
        assert!(vm.usable_keys(0, 0).is_none());
        assert_eq!(
            vm.on_missing_key(&store, 0, None, 1_000),
            KeyWait::Wait { deadline_ms: 3_000 }
        );
        vm.tick(&store, 1_000, &mut ev);
        let r = vm.tick(&store, 1_100, &mut ev);
        assert_eq!(r.len(), 1);
        vm.on_fetch_done(
            &store,
            0,
            1_200,
            false,
            FetchResult::Failed("no healthy upstream".into()),
            &mut ev,
        );
        assert!(vm.usable_keys(0, 1_300).is_none());
        assert!(vm.last_attempt(0) >= 1_100);
        // Backing off far beyond the wait: new requests give up at once.
        let mut now = 2_000;
        for _ in 0..8 {
            for _ in vm.tick(&store, now, &mut ev) {
                vm.on_fetch_done(&store, 0, now, false, FetchResult::Failed("down".into()), &mut ev);
            }
            now += MAX_BACKOFF_MS;
        }
        let m = vm.slots[0].meta.clone();
        assert_eq!(vm.on_missing_key(&store, 0, None, m.last_attempt + 1), KeyWait::GiveUp);
    }

    #[test]
    fn not_modified_extends_freshness() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({}));
        let mut ev = Vec::new();
        let t = 1_200 + 600_000;
        assert_eq!(vm.tick(&store, t, &mut ev).len(), 1);
        let r = FetchResult::Response {
            status: 304,
            body: vec![],
            body_size: 0,
            cache_control: Some("max-age=120".into()),
            etag: None,
        };
        vm.on_fetch_done(&store, 0, t, false, r, &mut ev);
        assert!(ev.contains(&Event::NotModified { source: 0 }));
        assert_eq!(vm.version(0), 1);
        assert!(vm.tick(&store, t + 100_000, &mut ev).is_empty());
        assert_eq!(vm.tick(&store, t + 120_000, &mut ev).len(), 1);
    }

    #[test]
    fn discovery_then_jwks() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let r = {
            let c = Config::from_json(
                json!({"providers": [{"issuer": "https://idp.test/realms/x", "oidcDiscovery": true}]})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
            c.providers[0].remote.clone().unwrap()
        };
        let mut vm = JwksCache::new(vec![r], 1);
        let mut ev = Vec::new();
        vm.tick(&store, 1_000, &mut ev);
        let req = vm.tick(&store, 1_100, &mut ev).pop().unwrap();
        assert!(req.discovery);
        assert_eq!(req.path, "/realms/x/.well-known/openid-configuration");
        let next = vm
            .on_fetch_done(
                &store,
                0,
                1_200,
                true,
                ok(&json!({"jwks_uri": "https://keys.idp.test:8443/certs"}), None),
                &mut ev,
            )
            .unwrap();
        assert!(!next.discovery);
        assert_eq!(
            (next.cluster.as_str(), next.authority.as_str(), next.path.as_str()),
            ("outbound|8443||keys.idp.test", "keys.idp.test:8443", "/certs")
        );
        vm.on_fetch_done(&store, 0, 1_300, false, ok(&key.jwks(), None), &mut ev);
        assert!(vm.usable_keys(0, 1_400).is_some());
    }
}
