//! Remote JWKS across worker VMs: one fetch per proxy, shared, refreshed, rotated, and kept
//! through outages. Pure logic over two small host abilities, [`SharedStore`] (Envoy's shared
//! data: get with a CAS token, set with CAS) and a clock passed in as milliseconds, so the
//! whole state machine is unit-tested natively with a fake store.
//!
//! Per remote source (one URL), shared data holds:
//! * `KEY|set`: the published key set, one value: a JSON [`SetHeader`] line (fetched-at, etag)
//!   then the JWKS document. Its CAS token *is* the set's version: Envoy gives every write a
//!   new token, so one version is one write of one document, whichever VM reads it, and a VM
//!   takes (version, keys, fetched-at, etag) from a single read. Only a document that parsed
//!   to a usable set is ever written, and only with CAS against the version the fetcher saw
//!   when it began, so a slower fetcher cannot publish over a newer set.
//! * `KEY|status`: a small JSON [`Meta`] updated with CAS: the version last published (a hint
//!   telling VMs when to read `set`), when it was last confirmed, refresh, backoff, last error.
//! * `KEY|lease`: `HOLDER UNTIL_MS`: which VM may fetch now;
//! * `KEY|want`: the time a VM last asked for an early refetch (unknown `kid`).
//!
//! Each VM's tick reads `status` (a few hundred bytes), reads and parses `set` only when the
//! hinted version is not the one it holds, and decides whether a fetch is due; the lease
//! elects one fetcher. The request path only ever reads the VM-local parsed [`KeySet`].
//! (`status` replaced an earlier `meta` key whose version was a counter; the new names keep
//! a VM of the earlier layout, still draining during an upgrade, out of this one's keys.)

use crate::keys::jwk::{parse_jwks, KeySet};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where and how a provider's keys are fetched (`jwksUri` or OIDC discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The JWKS URL, or the discovery document's when `discovery` is set.
    pub url: HttpUrl,
    pub discovery: bool,
    /// The Envoy cluster the callout goes through (Istio: `outbound|443||host`); `None` means
    /// derive it from the URL being fetched.
    pub cluster: Option<String>,
    pub timeout_ms: u64,
    pub max_bytes: usize,
    pub refresh_ms: u64,
    pub min_refresh_ms: u64,
    pub max_refresh_ms: u64,
    pub cooldown_ms: u64,
    pub max_stale_ms: u64,
    /// `bootstrapJwksFallback`: once fetched keys are past `maxStale`, verify with the inline
    /// `jwks` again instead of answering 503. Off by default: a set that was once replaced is
    /// not trusted again just because the issuer cannot be reached.
    pub bootstrap_fallback: bool,
    pub wait_ms: u64,
    /// Shared-data key prefix: one fetched set per URL per proxy, whichever VM fetched it.
    pub shared_key: String,
}

/// A parsed `http(s)://host[:port]/path` URL, enough for an Envoy HTTP callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?} must start with https:// or http://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || path.contains('#')
            || path.chars().any(char::is_whitespace)
        {
            return Err(format!(
                "{s:?} is not a usable URL (host required; no userinfo, fragment or spaces)"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port: u16 = p.parse().map_err(|_| format!("{s:?} has an invalid port"))?;
                (h.to_string(), port)
            }
            _ => (authority.to_string(), if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        Ok(HttpUrl {
            https,
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }

    /// The `:authority` to send: the host, with the port when it is not the scheme's default.
    pub fn authority(&self) -> String {
        if self.port == if self.https { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Istio's name for the cluster that reaches this host: `outbound|PORT||HOST`.
    pub fn istio_cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.host)
    }
}

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

/// What every VM knows about one source's fetching, published in shared data (`KEY|status`).
/// Bookkeeping and hints only: which keys a version holds comes from `KEY|set` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    /// The version (CAS token of `KEY|set`) last published; 0 = never. A VM holding another
    /// version reads `KEY|set`.
    pub version: u64,
    /// Last success for `version` (its fetch, or a 304 confirming it), ms since the epoch.
    pub fetched_at: u64,
    /// Refresh due after this.
    pub fresh_until: u64,
    pub last_attempt: u64,
    /// Backoff: no attempt before this.
    pub next_attempt: u64,
    pub failures: u32,
    pub last_error: String,
    /// The `jwks_uri` found by OIDC discovery.
    pub discovered_jwks_uri: Option<String>,
    pub keys: u32,
    /// The (version, fetched-at) whose expiry past `maxStale` was reported, so that one VM
    /// reports it rather than every worker.
    pub expiry_reported: Option<(u64, u64)>,
}

impl Meta {
    /// An early refetch asked for at `asked` (ms) that no attempt has begun, and no fetch
    /// succeeded, since: the one rule for "still to be fetched" (`JwksCache::due`) and "worth
    /// waiting for" (`Slot::ask_pending`).
    fn unanswered(&self, asked: u64) -> bool {
        asked > self.last_attempt && asked > self.fetched_at
    }
}

/// The first line of `KEY|set`: what belongs to that one document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SetHeader {
    /// When the document was fetched, ms since the epoch.
    pub fetched_at: u64,
    pub etag: Option<String>,
}

/// The longest backoff between failed attempts.
pub const MAX_BACKOFF_MS: u64 = 300_000;

/// How often a CAS update of `KEY|status` is retried when another VM wrote in between.
const STATUS_CAS_TRIES: usize = 8;

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
    /// A published set did not parse here (never expected: sets are checked before they are
    /// published). This VM keeps the version and keys it had; it does not claim this one.
    LoadFailed {
        source: usize,
        version: u64,
        error: String,
    },
    /// This VM's fetch succeeded, but another VM published after it began: that set stands.
    Superseded {
        source: usize,
        version: u64,
    },
    /// The fetched keys passed `maxStale` without a successful refresh: tokens of the provider
    /// now get 503 `jwks_unavailable` (or, with `bootstrapJwksFallback`, the inline keys).
    /// Reported by one VM per set and confirmation time.
    Expired {
        source: usize,
        version: u64,
        /// Since the set was last fetched or confirmed.
        age_ms: u64,
        bootstrap_fallback: bool,
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
    /// The fetched set this VM verifies with, as taken from one read of `KEY|set`.
    pub keys: Option<KeySet>,
    /// Its version (that read's CAS token); 0 = none taken yet.
    pub version: u64,
    /// When `keys` were last fetched or confirmed (304): `maxStale` runs from here.
    pub fetched_at: u64,
    /// The ETag of `keys`' document.
    etag: Option<String>,
    /// A published version that did not parse here: not taken, and not read again.
    rejected: u64,
    pub meta: Meta,
    lease: LeaseState,
    in_flight: bool,
    /// The published version when this VM's fetch began: it publishes only over that one.
    fetch_base: u64,
    /// The version whose ETag the fetch in flight sent (a 304 confirms that set); 0 = none.
    sent_etag_of: u64,
    /// The (version, fetched-at) whose expiry this VM has handled.
    expiry_seen: Option<(u64, u64)>,
    /// Unknown kids already refetched for, until when (bounded).
    negative: HashMap<String, u64>,
    /// This VM wants a fetch as soon as the lease and cooldown allow.
    wanted_since: Option<u64>,
}

impl Slot {
    /// `keys` while within `maxStale` of their last fetch or confirmation.
    fn usable(&self, now_ms: u64) -> Option<&KeySet> {
        let keys = self.keys.as_ref()?;
        (now_ms <= self.fetched_at.saturating_add(self.remote.max_stale_ms)).then_some(keys)
    }

    /// This VM asked for an early refetch that no attempt has begun or answered since (what
    /// [`JwksCache::due`] still acts on): an ask a fetch already answered is not pending.
    fn ask_pending(&self) -> bool {
        self.wanted_since.is_some_and(|asked| self.meta.unanswered(asked))
    }

    /// Some set was published for this source, as far as this VM knows.
    fn published(&self) -> bool {
        self.version != 0 || self.rejected != 0 || self.meta.version != 0
    }
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

/// A slot's fetching, in the three things every completed attempt moves: the set this VM
/// holds (a new one), the failed attempts (a failure), the freshness (a success, a `304` too).
/// A paused request compares it with what it saw when it paused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub version: u64,
    pub failures: u32,
    pub fresh_until: u64,
}

impl JwksCache {
    pub fn new(remotes: Vec<RemoteJwks>, holder: u64) -> JwksCache {
        let slots = remotes
            .into_iter()
            .map(|remote| Slot {
                remote,
                keys: None,
                version: 0,
                fetched_at: 0,
                etag: None,
                rejected: 0,
                meta: Meta::default(),
                lease: LeaseState::None,
                in_flight: false,
                fetch_base: 0,
                sent_etag_of: 0,
                expiry_seen: None,
                negative: HashMap::new(),
                wanted_since: None,
            })
            .collect();
        JwksCache { slots, holder }
    }

    /// Fetched keys of a source that are still within `maxStale`.
    pub fn usable_keys(&self, source: usize, now_ms: u64) -> Option<&KeySet> {
        self.slots.get(source)?.usable(now_ms)
    }

    /// The keys a provider with this source verifies with at `now_ms`, given its inline
    /// `bootstrap` keys (None when it has none):
    /// * fetched keys while within `maxStale` of their last fetch or confirmation;
    /// * the bootstrap keys until a set has been published (what they are for);
    /// * after that, once the fetched keys are past `maxStale`: none, so the provider's
    ///   tokens get 503 `jwks_unavailable`; the bootstrap keys only with
    ///   `bootstrapJwksFallback`. Keys once replaced are not trusted again by default.
    pub fn key_set<'a>(&'a self, source: usize, now_ms: u64, bootstrap: Option<&'a KeySet>) -> Option<&'a KeySet> {
        let s = self.slots.get(source)?;
        if let Some(keys) = s.usable(now_ms) {
            return Some(keys);
        }
        if !s.published() || s.remote.bootstrap_fallback {
            bootstrap
        } else {
            None
        }
    }

    /// Whether a set was ever published for this source, as far as this VM knows: from then
    /// on the bootstrap keys no longer serve (unless `bootstrapJwksFallback`).
    pub fn has_fetched(&self, source: usize) -> bool {
        self.slots.get(source).is_some_and(Slot::published)
    }

    pub fn version(&self, source: usize) -> u64 {
        self.slots.get(source).map_or(0, |s| s.version)
    }

    /// Where fetching for `source` stands, as a request waiting for it sees it.
    pub fn progress(&self, source: usize) -> Progress {
        self.slots.get(source).map_or(Progress::default(), |s| Progress {
            version: s.version,
            failures: s.meta.failures,
            fresh_until: s.meta.fresh_until,
        })
    }

    pub fn last_attempt(&self, source: usize) -> u64 {
        self.slots.get(source).map_or(0, |s| s.meta.last_attempt)
    }

    /// Takes what shared data holds, without fetching: for a VM that starts, or restarts
    /// with a new configuration, so that its first requests see the proxy's keys (or their
    /// expiry) rather than the bootstrap keys until its first tick.
    pub fn load(&mut self, store: &dyn SharedStore, events: &mut Vec<Event>) {
        for i in 0..self.slots.len() {
            self.refresh_from_store(store, i, events);
        }
    }

    /// Reads shared state, loads new versions, and returns the fetches this VM should send.
    pub fn tick(&mut self, store: &dyn SharedStore, now_ms: u64, events: &mut Vec<Event>) -> Vec<FetchRequest> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            self.refresh_from_store(store, i, events);
            self.check_expiry(store, i, now_ms, events);
            if let Some(req) = self.maybe_fetch(store, i, now_ms) {
                out.push(req);
            }
        }
        out
    }

    fn refresh_from_store(&mut self, store: &dyn SharedStore, i: usize, events: &mut Vec<Event>) {
        let Some(slot) = self.slots.get_mut(i) else { return };
        if let Some(meta) = store
            .get(&k(slot, "status"))
            .and_then(|(b, _)| serde_json::from_slice::<Meta>(&b).ok())
        {
            slot.meta = meta;
        }
        let hint = slot.meta.version;
        if hint != 0 && hint != slot.version && hint != slot.rejected {
            let set_key = k(slot, "set");
            if let Some((bytes, cas)) = store.get(&set_key) {
                let cas = u64::from(cas);
                if let Some(keys) = take_set(slot, i, &bytes, cas, None, events) {
                    events.push(Event::Loaded {
                        source: i,
                        keys,
                        version: slot.version,
                    });
                }
                if cas != hint {
                    // The hint lags the set (its publisher stopped between the two writes):
                    // point it at the set, so that VMs stop reading it every tick.
                    let (ours, fetched_at) = (slot.version, slot.fetched_at);
                    let count = slot.keys.as_ref().map_or(0, |k| k.keys.len());
                    let count = u32::try_from(count).unwrap_or(u32::MAX);
                    update_status(store, slot, |m| {
                        if m.version != hint {
                            return false; // moved on meanwhile
                        }
                        point_hint(store, m, &set_key, ours, fetched_at, count);
                        true
                    });
                }
            }
        }
        if slot.version != 0 && slot.meta.version == slot.version {
            // A 304 (whichever VM got it) that confirmed this very set counts here too.
            slot.fetched_at = slot.fetched_at.max(slot.meta.fetched_at);
        }
    }

    /// Reports (once per proxy, through `status`) that this VM's keys passed `maxStale`.
    fn check_expiry(&mut self, store: &dyn SharedStore, i: usize, now_ms: u64, events: &mut Vec<Event>) {
        let Some(slot) = self.slots.get_mut(i) else { return };
        if slot.keys.is_none() || slot.usable(now_ms).is_some() {
            return;
        }
        let mark = (slot.version, slot.fetched_at);
        if slot.expiry_seen == Some(mark) {
            return;
        }
        slot.expiry_seen = Some(mark);
        let mut first = false;
        update_status(store, slot, |m| {
            first = m.expiry_reported != Some(mark);
            m.expiry_reported = Some(mark);
            first
        });
        if first {
            events.push(Event::Expired {
                source: i,
                version: slot.version,
                age_ms: now_ms.saturating_sub(slot.fetched_at),
                bootstrap_fallback: slot.remote.bootstrap_fallback,
            });
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
        m.unanswered(asked) && now_ms >= m.last_attempt.saturating_add(slot.remote.cooldown_ms)
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
                let until = lease_until(slot, now_ms);
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
        // Record the attempt before sending, so every VM's cooldown sees it at once; the same
        // read gives the version this fetch may publish over.
        if !update_status(store, slot, |m| {
            m.last_attempt = now_ms;
            true
        }) {
            slot.lease = LeaseState::None;
            release(store, slot, holder);
            return None;
        }
        slot.fetch_base = slot.meta.version;
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
        let outcome = match evaluate_response(&slot.remote, discovery, result) {
            Outcome::NotModified(_) if slot.sent_etag_of == 0 => {
                Outcome::Failed("HTTP status 304 to a request without If-None-Match".into())
            }
            other => other,
        };
        let mut failed = None;
        match outcome {
            Outcome::Discovered(uri) => {
                slot.meta.discovered_jwks_uri = Some(uri.clone());
                update_status(store, slot, |m| {
                    m.discovered_jwks_uri = Some(uri.clone());
                    true
                });
                events.push(Event::Discovered { source, jwks_uri: uri });
                // Fetch the JWKS right away, under the same lease, renewed for this fetch.
                renew(store, slot, holder, lease_until(slot, now_ms));
                slot.in_flight = true;
                return Some(request_for(source, slot));
            }
            Outcome::NotModified(max_age) => {
                let confirmed = slot.sent_etag_of;
                confirm(store, slot, confirmed, now_ms, max_age);
                events.push(Event::NotModified { source });
            }
            // The same document as the set this VM holds and shared data still publishes (a
            // server without ETags, or one that ignores If-None-Match): a confirmation, as a
            // 304 is. Publishing it again would make a new version, and every VM's token cache
            // and decision memo would be emptied for a set that did not change.
            Outcome::Keys {
                ref doc,
                max_age,
                ref etag,
                ..
            } if unchanged(store, slot, doc, etag.as_deref()) => {
                let held = slot.version;
                confirm(store, slot, held, now_ms, max_age);
                events.push(Event::NotModified { source });
            }
            Outcome::Keys {
                doc,
                keys,
                max_age,
                etag,
            } => {
                let fresh_until = now_ms + ttl(&slot.remote, max_age);
                let set_key = k(slot, "set");
                let header = SetHeader {
                    fetched_at: now_ms,
                    etag,
                };
                let published = publish(store, slot, source, &header, &doc, keys, events);
                let ours = slot.version;
                let count = slot.keys.as_ref().map_or(0, |k| k.keys.len());
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                match published {
                    Ok(own) => {
                        // The set this VM now holds: its own, or the one that superseded it.
                        let fetched_at = if own { now_ms } else { slot.fetched_at };
                        update_status(store, slot, |m| {
                            point_hint(store, m, &set_key, ours, fetched_at, count);
                            succeeded(m, fresh_until);
                            true
                        });
                    }
                    Err(e) => failed = Some(e),
                }
            }
            Outcome::Failed(error) => failed = Some(error),
        }
        if let Some(error) = failed {
            let mut failures = 0;
            let mut retry = 0;
            // The JWKS at a discovered jwks_uri failed: the identity provider may have moved
            // its keys, so the next attempt reads the discovery document again (the found URI
            // lives in shared data, which outlives a config push: nothing else would clear it).
            let rediscover = slot.remote.discovery && !discovery;
            let ok = update_status(store, slot, |m| {
                m.failures = m.failures.saturating_add(1);
                (failures, retry) = (m.failures, backoff_ms(m.failures));
                m.next_attempt = now_ms + retry;
                m.last_error = error.clone();
                if rediscover {
                    m.discovered_jwks_uri = None;
                }
                true
            });
            if !ok {
                if rediscover {
                    slot.meta.discovered_jwks_uri = None;
                }
                // Not recorded for every VM; this VM still backs off.
                failures = slot.meta.failures.saturating_add(1);
                retry = backoff_ms(failures);
                slot.meta.failures = failures;
                slot.meta.next_attempt = now_ms + retry;
            }
            events.push(Event::FetchFailed {
                source,
                error,
                failures,
                retry_in_ms: retry,
            });
        }
        release(store, slot, holder);
        slot.lease = LeaseState::None;
        slot.sent_etag_of = 0;
        None
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
        let fetch_in_flight = slot.in_flight || lease_busy(store, slot, now_ms);
        if let Some(kid) = kid {
            if slot.negative.get(kid).is_some_and(|until| *until > now_ms) {
                // Asked for within the cooldown. While the fetch that asking started is
                // still to come (asked for, or in flight), this request waits for it like the
                // first one did: during a key rotation, every request carrying the new kid
                // before the fetch lands is answered by it, not refused at once.
                if fetch_in_flight || slot.ask_pending() {
                    return KeyWait::Wait { deadline_ms };
                }
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
        let cooling = m.version > 0 && now_ms < m.last_attempt.saturating_add(slot.remote.cooldown_ms);
        if cooling && !fetch_in_flight {
            return KeyWait::GiveUp;
        }
        if slot.usable(now_ms).is_none() && now_ms < m.next_attempt && !fetch_in_flight {
            // No keys (cold, or past maxStale) and backing off: wait for the next attempt
            // only if it comes within the wait; in a long outage, answer 503 at once.
            if m.next_attempt > deadline_ms {
                return KeyWait::GiveUp;
            }
        }
        slot.wanted_since = Some(now_ms);
        let _ = store.set(&k(slot, "want"), now_ms.to_string().as_bytes(), None);
        KeyWait::Wait { deadline_ms }
    }
}

/// Points the status hint at the set shared data holds *now* (read inside the CAS update of
/// `status`, so the last status write after the last set write names the last set), with the
/// fetched-at and key count of `ours` when that is the one.
fn point_hint(store: &dyn SharedStore, m: &mut Meta, set_key: &str, ours: u64, fetched_at: u64, keys: u32) {
    let Some(current) = store.get(set_key).map(|(_, cas)| u64::from(cas)) else {
        return;
    };
    if m.version != current {
        m.version = current;
        m.fetched_at = 0;
    }
    if current == ours {
        m.fetched_at = m.fetched_at.max(fetched_at);
        m.keys = keys;
    }
}

/// A fetch confirmed the set `confirmed` (a 304 to its ETag, or the same document again):
/// its fetched-at moves to now where it is still the set, and the next refresh is scheduled.
fn confirm(store: &dyn SharedStore, slot: &mut Slot, confirmed: u64, now_ms: u64, max_age: Option<u64>) {
    if slot.version == confirmed {
        slot.fetched_at = slot.fetched_at.max(now_ms);
    }
    let fresh_until = now_ms + ttl(&slot.remote, max_age);
    update_status(store, slot, |m| {
        if m.version == confirmed {
            m.fetched_at = m.fetched_at.max(now_ms);
        }
        succeeded(m, fresh_until);
        true
    });
}

/// Whether a fetched document is the set this VM holds, still the one shared data publishes,
/// byte for byte and with the same ETag (a new ETag is published, so If-None-Match sends it).
fn unchanged(store: &dyn SharedStore, slot: &Slot, doc: &str, etag: Option<&str>) -> bool {
    if slot.version == 0 || slot.etag.as_deref() != etag {
        return false;
    }
    let Some((bytes, cas)) = store.get(&k(slot, "set")) else {
        return false;
    };
    u64::from(cas) == slot.version
        && bytes
            .iter()
            .position(|&b| b == b'\n')
            .and_then(|i| bytes.get(i + 1..))
            .is_some_and(|published| published == doc.as_bytes())
}

/// A successful attempt (new set, 304, or another VM's newer set): no backoff, next refresh.
fn succeeded(m: &mut Meta, fresh_until: u64) {
    m.fresh_until = fresh_until;
    m.failures = 0;
    m.next_attempt = 0;
    m.last_error.clear();
}

/// Writes a checked set to `KEY|set` with CAS against the version this fetch began from,
/// then takes what is there now (its own write, whose CAS token is its version, or a set
/// another VM published in between). Ok(whether it is this VM's own write); Err: the set
/// could not be written, or read back.
fn publish(
    store: &dyn SharedStore,
    slot: &mut Slot,
    source: usize,
    header: &SetHeader,
    doc: &str,
    keys: KeySet,
    events: &mut Vec<Event>,
) -> Result<bool, String> {
    let head = serde_json::to_string(header).map_err(|e| format!("cannot publish: {e}"))?;
    let value = format!("{head}\n{doc}").into_bytes();
    let key = k(slot, "set");
    // Envoy ignores CAS for a key that does not exist yet: two first publishes can both land.
    // Each still gets its own CAS token, so each version is still one document.
    let base = u32::try_from(slot.fetch_base).ok().filter(|c| *c != 0);
    // With no version to CAS against, a set that exists now was published after this fetch
    // began: it stands (the window between this read and the write is Envoy's to close).
    let newer_exists = base.is_none() && store.get(&key).is_some();
    let written = !newer_exists
        && match store.set(&key, &value, base) {
            Ok(()) => true,
            Err(StoreError::CasMismatch) => false,
            Err(StoreError::Other) => return Err("cannot publish the key set to shared data".into()),
        };
    let Some((bytes, cas)) = store.get(&key) else {
        return Err("the published key set is not in shared data".into());
    };
    let version = u64::from(cas);
    let count = keys.keys.len();
    let own = written && bytes == value;
    match take_set(slot, source, &bytes, version, own.then_some(keys), events) {
        Some(_) if own => events.push(Event::Fetched {
            source,
            keys: count,
            version,
        }),
        Some(n) => events.push(Event::Loaded {
            source,
            keys: n,
            version,
        }),
        None => {}
    }
    if !own {
        events.push(Event::Superseded { source, version });
    }
    Ok(own)
}

/// Takes one read of `KEY|set` (value and CAS token) as this VM's keys; a value that does not
/// parse is remembered as rejected and never claimed. `parsed`: the set the value's document
/// was parsed to already (the fetcher's own write). Returns the number of keys taken, or
/// None when nothing changed.
fn take_set(
    slot: &mut Slot,
    source: usize,
    bytes: &[u8],
    version: u64,
    parsed: Option<KeySet>,
    events: &mut Vec<Event>,
) -> Option<usize> {
    if version == 0 || version == slot.version || version == slot.rejected {
        return None;
    }
    match read_set(bytes, parsed) {
        Ok((header, keys)) => {
            let n = keys.keys.len();
            slot.keys = Some(keys);
            slot.version = version;
            slot.fetched_at = header.fetched_at;
            slot.etag = header.etag;
            // New keys: unknown kids deserve a new look.
            slot.negative.clear();
            Some(n)
        }
        Err(error) => {
            slot.rejected = version;
            events.push(Event::LoadFailed { source, version, error });
            None
        }
    }
}

/// `HEADER\nDOCUMENT` → the header and the document's usable keys.
fn read_set(bytes: &[u8], parsed: Option<KeySet>) -> Result<(SetHeader, KeySet), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "published set is not UTF-8".to_string())?;
    let (head, doc) = text
        .split_once('\n')
        .ok_or_else(|| "published set has no header line".to_string())?;
    let header: SetHeader = serde_json::from_str(head).map_err(|e| format!("published set header: {e}"))?;
    let keys = match parsed {
        Some(k) => k,
        None => serde_json::from_str(doc)
            .map_err(|e| e.to_string())
            .and_then(|v| parse_jwks(&v).map_err(|(p, why)| format!("{p}: {why}")))?,
    };
    if keys.is_empty() {
        return Err("published set has no usable keys".into());
    }
    Ok((header, keys))
}

/// Applies `change` to `KEY|status` with CAS, reading it again when another VM wrote in
/// between; `change` returns false to leave it as it is. This VM's view follows. False when
/// the store refused, or kept changing underneath.
fn update_status(store: &dyn SharedStore, slot: &mut Slot, mut change: impl FnMut(&mut Meta) -> bool) -> bool {
    let key = k(slot, "status");
    for _ in 0..STATUS_CAS_TRIES {
        let (mut meta, cas) = match store.get(&key) {
            Some((b, cas)) => (serde_json::from_slice::<Meta>(&b).unwrap_or_default(), Some(cas)),
            None => (Meta::default(), None),
        };
        if !change(&mut meta) {
            slot.meta = meta;
            return true;
        }
        let Ok(bytes) = serde_json::to_vec(&meta) else {
            return false;
        };
        match store.set(&key, &bytes, cas) {
            Ok(()) => {
                slot.meta = meta;
                return true;
            }
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Other) => return false,
        }
    }
    false
}

fn lease_until(slot: &Slot, now_ms: u64) -> u64 {
    now_ms + slot.remote.timeout_ms + 2_000
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

/// Extends our lease (a discovery document was fetched; the JWKS fetch follows under it).
fn renew(store: &dyn SharedStore, slot: &mut Slot, holder: u64, until: u64) {
    let key = k(slot, "lease");
    if let Some((b, cas)) = store.get(&key) {
        if parse_lease(&b).0 == holder
            && store
                .set(&key, format!("{holder} {until}").as_bytes(), Some(cas))
                .is_ok()
        {
            slot.lease = LeaseState::Held { until };
        }
    }
}

/// The fetch for a slot; remembers which set's ETag it sends (only the set this VM holds,
/// and only when it is the one published: a 304 then confirms exactly that set).
fn request_for(source: usize, slot: &mut Slot) -> FetchRequest {
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
    let etag = match (&slot.etag, discovery) {
        (Some(e), false) if slot.version != 0 && slot.version == slot.meta.version => Some(e.clone()),
        _ => None,
    };
    slot.sent_etag_of = if etag.is_some() { slot.version } else { 0 };
    FetchRequest {
        source,
        cluster: r.cluster.clone().unwrap_or_else(|| url.istio_cluster()),
        authority: url.authority(),
        path: url.path.clone(),
        timeout_ms: r.timeout_ms,
        etag,
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
    use crate::config::Config;
    use crate::crypto::alg::Alg;
    use claimguard_testkeys::TestKey;
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
        let Event::Fetched { keys: 1, version, .. } = ev[0] else {
            panic!("{ev:?}")
        };
        assert_ne!(version, 0);
        // Next tick: every VM has the keys, no one fetches again until the refresh is due.
        assert!(first_fetch(&mut vms, &store, 1_600).is_empty());
        for vm in &vms {
            assert_eq!(vm.usable_keys(0, 1_600).map(|k| k.keys.len()), Some(1));
            assert_eq!(vm.version(0), version);
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

    fn with_etag(mut r: FetchResult, tag: &str) -> FetchResult {
        if let FetchResult::Response { etag, .. } = &mut r {
            *etag = Some(tag.to_string());
        }
        r
    }

    /// A VM that fetched `key`'s set (ETag `"v1"`) at 1 200 ms.
    fn warm(store: &FakeStore, key: &TestKey, extra: serde_json::Value) -> JwksCache {
        let mut vm = JwksCache::new(vec![remote(extra)], 7);
        let mut ev = Vec::new();
        assert!(vm.tick(store, 1_000, &mut ev).is_empty()); // claim
        let r = vm.tick(store, 1_100, &mut ev);
        assert_eq!(r.len(), 1);
        vm.on_fetch_done(
            store,
            0,
            1_200,
            false,
            with_etag(ok(&key.jwks(), None), "\"v1\""),
            &mut ev,
        );
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
        let good = vm.version(0);
        for b in bad {
            let reqs = vm.tick(&store, now, &mut ev);
            assert_eq!(reqs.len(), 1, "at {now}");
            vm.on_fetch_done(&store, 0, now, false, b, &mut ev);
            assert_eq!(vm.version(0), good);
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
        // The same kid again before the tick sends the fetch, and while it is in flight: it
        // waits for that fetch too (a rotation's new kid on many requests at once).
        assert!(matches!(
            vm.on_missing_key(&store, 0, Some("k3"), t + 10),
            KeyWait::Wait { .. }
        ));
        let reqs = vm.tick(&store, t + 50, &mut ev);
        assert_eq!(reqs.len(), 1);
        assert!(matches!(
            vm.on_missing_key(&store, 0, Some("k3"), t + 55),
            KeyWait::Wait { .. }
        ));
        let before = vm.version(0);
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
        assert_ne!(vm.version(0), before);
        assert!(vm.usable_keys(0, t + 200).unwrap().find_by_kid("k3").next().is_some());
        // More random kids inside the next cooldown: refused at once, no fetch.
        for i in 0..500 {
            assert_eq!(
                vm.on_missing_key(&store, 0, Some(&format!("again-{i}")), t + 1_000),
                KeyWait::GiveUp
            );
        }
        assert!(vm.tick(&store, t + 1_100, &mut ev).is_empty());
        // A kid the fetch did not bring, asked for again once it has landed: refused at once.
        assert_eq!(vm.on_missing_key(&store, 0, Some("rnd-7"), t + 1_200), KeyWait::GiveUp);
        // The negative cache is bounded.
        assert!(vm.slots[0].negative.len() <= MAX_NEGATIVE_KIDS);
    }

    #[test]
    fn an_ask_answered_by_a_fetch_does_not_hold_later_requests() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({}));
        let mut ev = Vec::new();
        let t = 1_200 + 30_000;
        assert!(matches!(
            vm.on_missing_key(&store, 0, Some("x"), t),
            KeyWait::Wait { .. }
        ));
        assert_eq!(vm.tick(&store, t + 50, &mut ev).len(), 1);
        // Asked while that fetch is in flight: it answers this ask too.
        assert!(matches!(
            vm.on_missing_key(&store, 0, Some("y"), t + 60),
            KeyWait::Wait { .. }
        ));
        vm.on_fetch_done(&store, 0, t + 150, false, ok(&key.jwks(), None), &mut ev);
        for now in [t + 200, t + 300, t + 10_000] {
            vm.tick(&store, now, &mut ev);
            // The fetch landed without y: y is refused at once, every time, within the
            // cooldown; no request pauses for a fetch that will not come.
            assert_eq!(
                vm.on_missing_key(&store, 0, Some("y"), now + 1),
                KeyWait::GiveUp,
                "at {now}"
            );
        }
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
    fn the_same_document_again_is_a_confirmation_not_a_new_version() {
        // A server that sends no ETag (or ignores If-None-Match) answers every refresh with
        // 200 and the same body: the set is confirmed, as by a 304, and keeps its version,
        // so no VM's token cache or memo is emptied. A changed body, or a new ETag, is new.
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({"maxStale": "1h"}));
        let mut ev = Vec::new();
        let v = vm.version(0);
        let t = 1_200 + 600_000;
        assert_eq!(vm.tick(&store, t, &mut ev).len(), 1);
        let mut ev = Vec::new();
        let same = with_etag(ok(&key.jwks(), Some("max-age=120")), "\"v1\"");
        vm.on_fetch_done(&store, 0, t, false, same, &mut ev);
        assert_eq!(ev, [Event::NotModified { source: 0 }]);
        assert_eq!(vm.version(0), v);
        assert_eq!(vm.slots[0].meta.version, v);
        // Confirmed like a 304: maxStale and the next refresh run from now.
        assert!(vm.tick(&store, t + 100_000, &mut ev).is_empty());
        assert!(vm.usable_keys(0, t + 3_600_000 - 1).is_some());
        // The same body under a new ETag is published (If-None-Match must send the new one).
        let t = t + 120_000;
        assert_eq!(vm.tick(&store, t, &mut ev).len(), 1);
        let mut ev = Vec::new();
        vm.on_fetch_done(&store, 0, t, false, with_etag(ok(&key.jwks(), None), "\"v2\""), &mut ev);
        assert!(matches!(ev[..], [Event::Fetched { keys: 1, .. }]), "{ev:?}");
        let v2 = vm.version(0);
        assert_ne!(v2, v);
        // And a changed body (a key added) always is.
        let t = t + 600_000;
        assert_eq!(vm.tick(&store, t, &mut ev).len(), 1);
        let mut ev = Vec::new();
        let k2 = TestKey::generate(Alg::ES256, "k2");
        let both = json!({"keys": [key.public_jwk(), k2.public_jwk()]});
        vm.on_fetch_done(&store, 0, t, false, with_etag(ok(&both, None), "\"v2\""), &mut ev);
        assert!(matches!(ev[..], [Event::Fetched { keys: 2, .. }]), "{ev:?}");
        assert_ne!(vm.version(0), v2);
    }

    #[test]
    fn not_modified_extends_freshness() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({"maxStale": "1h"}));
        let mut other = JwksCache::new(vec![remote(json!({"maxStale": "1h"}))], 8);
        let mut ev = Vec::new();
        other.tick(&store, 1_300, &mut ev);
        let v = vm.version(0);
        let t = 1_200 + 600_000;
        let req = vm.tick(&store, t, &mut ev);
        assert_eq!(req[0].etag.as_deref(), Some("\"v1\""), "the held set's ETag is sent");
        let not_modified = FetchResult::Response {
            status: 304,
            body: vec![],
            body_size: 0,
            cache_control: Some("max-age=120".into()),
            etag: None,
        };
        vm.on_fetch_done(&store, 0, t, false, not_modified.clone(), &mut ev);
        assert!(ev.contains(&Event::NotModified { source: 0 }));
        assert_eq!(vm.version(0), v);
        assert!(vm.tick(&store, t + 100_000, &mut ev).is_empty());
        assert_eq!(vm.tick(&store, t + 120_000, &mut ev).len(), 1);
        // The 304 confirmed that very set, on every VM: maxStale runs from the 304.
        other.tick(&store, t + 100, &mut ev);
        for vm in [&vm, &other] {
            assert!(vm.usable_keys(0, 1_200 + 3_600_000 + 1).is_some());
            assert!(vm.usable_keys(0, t + 3_600_000 + 1).is_none());
        }
        // A 304 to a request that sent no If-None-Match confirms nothing: a failure.
        let mut cold = JwksCache::new(vec![remote(json!({}))], 9);
        let store = FakeStore::default();
        cold.tick(&store, 1_000, &mut ev);
        let req = cold.tick(&store, 1_100, &mut ev);
        assert_eq!(req[0].etag, None);
        let mut ev = Vec::new();
        cold.on_fetch_done(&store, 0, 1_200, false, not_modified, &mut ev);
        assert!(
            matches!(&ev[..], [Event::FetchFailed { error, .. }] if error.contains("304")),
            "{ev:?}"
        );
        assert!(cold.usable_keys(0, 1_300).is_none());
    }

    /// A VM whose one provider finds its keys by OIDC discovery (issuer
    /// `https://idp.test/realms/x`), and the discovery request its first ticks send.
    fn discovery_vm(store: &FakeStore) -> (JwksCache, FetchRequest) {
        let c = Config::from_json(
            json!({"providers": [{"issuer": "https://idp.test/realms/x", "oidcDiscovery": true}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let mut vm = JwksCache::new(vec![c.providers[0].remote.clone().unwrap()], 1);
        let mut ev = Vec::new();
        vm.tick(store, 1_000, &mut ev);
        let req = vm.tick(store, 1_100, &mut ev).pop().unwrap();
        assert!(req.discovery);
        (vm, req)
    }

    #[test]
    fn discovery_then_jwks() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let (mut vm, req) = discovery_vm(&store);
        let mut ev = Vec::new();
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

    #[test]
    fn a_failing_discovered_jwks_uri_is_discovered_again() {
        // The identity provider moved its keys: the jwks_uri found earlier now answers 404.
        // The next attempt reads the discovery document again and follows the new jwks_uri,
        // rather than asking the old one for ever (shared data outlives a config push).
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let (mut vm, _) = discovery_vm(&store);
        let mut ev = Vec::new();
        let doc = |uri: &str| ok(&json!({ "jwks_uri": uri }), None);
        let next = vm
            .on_fetch_done(&store, 0, 1_200, true, doc("https://idp.test/old/certs"), &mut ev)
            .unwrap();
        vm.on_fetch_done(&store, 0, 1_300, false, ok(&key.jwks(), None), &mut ev);
        assert_eq!(next.path, "/old/certs");
        // At the refresh the old URI is gone.
        let t = 1_300 + 600_000;
        let req = vm.tick(&store, t, &mut ev).pop().unwrap();
        assert!(!req.discovery);
        let gone = FetchResult::Response {
            status: 404,
            body: Vec::new(),
            body_size: 0,
            cache_control: None,
            etag: None,
        };
        assert!(vm.on_fetch_done(&store, 0, t + 50, false, gone, &mut ev).is_none());
        let req = vm.tick(&store, t + 1_200, &mut ev).pop().unwrap();
        assert!(req.discovery, "{req:?}");
        let next = vm
            .on_fetch_done(&store, 0, t + 1_300, true, doc("https://idp.test/new/certs"), &mut ev)
            .unwrap();
        assert_eq!(next.path, "/new/certs");
        // Keys kept working meanwhile.
        assert!(vm.usable_keys(0, t + 1_300).is_some());
    }

    // ---- Which keys serve: fetched, bootstrap, or none (issue 20, point 6) ----

    /// Which set `key_set` hands out: "fetched", "bootstrap" or "none".
    fn serving(vm: &JwksCache, now: u64, bootstrap: Option<&KeySet>) -> &'static str {
        match vm.key_set(0, now, bootstrap) {
            None => "none",
            Some(k) if bootstrap.is_some_and(|b| std::ptr::eq(b, k)) => "bootstrap",
            Some(k) if vm.slots[0].keys.as_ref().is_some_and(|f| std::ptr::eq(f, k)) => "fetched",
            Some(_) => "unknown",
        }
    }

    /// Ticks `vm` from `from` to `to` (ms, every 100 ms), answering every fetch with `answer`.
    fn run(vm: &mut JwksCache, store: &FakeStore, from: u64, to: u64, answer: &dyn Fn() -> FetchResult) -> Vec<Event> {
        let mut ev = Vec::new();
        let mut t = from;
        while t <= to {
            for r in vm.tick(store, t, &mut ev) {
                vm.on_fetch_done(store, 0, t, r.discovery, answer(), &mut ev);
            }
            t += 100;
        }
        ev
    }

    #[test]
    fn bootstrap_serves_until_the_first_fetch_and_stale_keys_fail_closed() {
        const HOUR: u64 = 3_600_000;
        let fetched = TestKey::generate(Alg::ES256, "fetched");
        let boot = parse_jwks(&TestKey::generate(Alg::ES256, "boot").jwks()).unwrap();
        let down = || FetchResult::Failed("connection refused".into());
        let good = || ok(&fetched.jwks(), None);
        // (bootstrapJwksFallback, inline keys, what happens, when asked, which set serves)
        type Story = fn(&mut JwksCache, &FakeStore, &dyn Fn() -> FetchResult, &dyn Fn() -> FetchResult) -> u64;
        let cold_never_fetched: Story = |vm, store, down, _| {
            run(vm, store, 1_000, 1_000 + 2 * HOUR, down);
            1_000 + 2 * HOUR
        };
        let fetched_then_down_within: Story = |vm, store, down, good| {
            run(vm, store, 1_000, 1_200, good);
            run(vm, store, 1_300, 1_300 + HOUR - 1_000, down);
            1_300 + HOUR - 1_000
        };
        let fetched_then_down_past: Story = |vm, store, down, good| {
            run(vm, store, 1_000, 1_200, good);
            run(vm, store, 1_300, 1_300 + HOUR + 60_000, down);
            1_300 + HOUR + 60_000
        };
        let expired_then_fetched_again: Story = |vm, store, down, good| {
            run(vm, store, 1_000, 1_200, good);
            run(vm, store, 1_300, 1_300 + HOUR + 60_000, down);
            // Backoff is at most 5 min: the next attempt succeeds.
            run(
                vm,
                store,
                1_300 + HOUR + 60_100,
                1_300 + HOUR + 60_000 + MAX_BACKOFF_MS + 200,
                good,
            );
            1_300 + HOUR + 60_000 + MAX_BACKOFF_MS + 200
        };
        let cases: &[(bool, bool, &str, Story, &str)] = &[
            (false, true, "cold, never fetched", cold_never_fetched, "bootstrap"),
            (true, true, "cold, never fetched", cold_never_fetched, "bootstrap"),
            (false, false, "cold, never fetched", cold_never_fetched, "none"),
            (
                false,
                true,
                "fetched, then down within maxStale",
                fetched_then_down_within,
                "fetched",
            ),
            (
                true,
                true,
                "fetched, then down within maxStale",
                fetched_then_down_within,
                "fetched",
            ),
            (
                false,
                true,
                "fetched, then down past maxStale",
                fetched_then_down_past,
                "none",
            ),
            (
                true,
                true,
                "fetched, then down past maxStale",
                fetched_then_down_past,
                "bootstrap",
            ),
            (
                false,
                false,
                "fetched, then down past maxStale",
                fetched_then_down_past,
                "none",
            ),
            (
                false,
                true,
                "expired, then fetched again",
                expired_then_fetched_again,
                "fetched",
            ),
            (
                true,
                true,
                "expired, then fetched again",
                expired_then_fetched_again,
                "fetched",
            ),
        ];
        for (fallback, inline, story, act, want) in cases {
            let store = FakeStore::default();
            let mut vm = JwksCache::new(
                vec![remote(
                    json!({"maxStale": "1h", "bootstrapJwksFallback": fallback, "jwks": boot_doc()}),
                )],
                3,
            );
            let now = act(&mut vm, &store, &down, &good);
            let bootstrap = inline.then_some(&boot);
            assert_eq!(
                serving(&vm, now, bootstrap),
                *want,
                "{story} (bootstrapJwksFallback {fallback}, inline keys {inline})"
            );
            // A VM that starts now (new config, late worker) agrees from its first request,
            // before its first tick.
            let mut fresh = JwksCache::new(vm.slots.iter().map(|s| s.remote.clone()).collect(), 4);
            fresh.load(&store, &mut Vec::new());
            assert_eq!(serving(&fresh, now, bootstrap), *want, "{story}: a VM started now");
        }
    }

    #[test]
    fn past_max_stale_a_request_does_not_wait_out_the_backoff() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let mut vm = warm(&store, &key, json!({"maxStale": "1h"}));
        let down = || FetchResult::Failed("down".into());
        let expiry = 1_200 + 3_600_000;
        run(&mut vm, &store, 1_300, expiry + 200_000, &down);
        let m = vm.slots[0].meta.clone();
        assert_eq!(m.next_attempt - m.last_attempt, MAX_BACKOFF_MS);
        let now = m.next_attempt - 100_000; // past the cooldown, well inside the backoff
        assert!(now > expiry && vm.usable_keys(0, now).is_none());
        assert_eq!(vm.on_missing_key(&store, 0, None, now), KeyWait::GiveUp);
        // Just before the next attempt, waiting for it is worth it.
        assert!(matches!(
            vm.on_missing_key(&store, 0, None, m.next_attempt - 1_000),
            KeyWait::Wait { .. }
        ));
    }

    fn boot_doc() -> serde_json::Value {
        TestKey::generate(Alg::ES256, "boot").jwks()
    }

    #[test]
    fn expiry_is_reported_once_per_proxy() {
        let store = FakeStore::default();
        let key = TestKey::generate(Alg::ES256, "k1");
        let extra = json!({"maxStale": "1h", "jwks": boot_doc(), "bootstrapJwksFallback": true});
        let mut vms = vec![warm(&store, &key, extra.clone())];
        vms.extend((8..10).map(|h| JwksCache::new(vec![remote(extra.clone())], h)));
        let mut ev = Vec::new();
        let down = || FetchResult::Failed("down".into());
        let past = 1_200 + 3_600_000 + 1;
        for t in [1_300, past - 100, past, past + 100, past + 60_000] {
            for vm in &mut vms {
                for r in vm.tick(&store, t, &mut ev) {
                    vm.on_fetch_done(&store, 0, t, r.discovery, down(), &mut ev);
                }
            }
        }
        let expired: Vec<&Event> = ev.iter().filter(|e| matches!(e, Event::Expired { .. })).collect();
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert!(matches!(
            expired[0],
            Event::Expired {
                bootstrap_fallback: true,
                age_ms,
                ..
            } if *age_ms >= 3_600_001
        ));
        for vm in &vms {
            assert!(vm.usable_keys(0, past).is_none());
            assert!(vm.has_fetched(0));
        }
    }

    // ---- One version, one key set, on every VM ----

    /// What the rest of the proxy does between two store operations of one VM.
    type Between<'a> = RefCell<Box<dyn FnMut(&FakeStore) + 'a>>;

    /// A store that lets the rest of the proxy run after every read and write of one VM.
    struct Interleaved<'a> {
        inner: &'a FakeStore,
        between: Between<'a>,
    }

    impl SharedStore for Interleaved<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            let r = self.inner.get(key);
            (self.between.borrow_mut())(self.inner);
            r
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let r = self.inner.set(key, value, cas);
            (self.between.borrow_mut())(self.inner);
            r
        }
    }

    /// Every (version → kids) any VM ever held: one version must always mean one set.
    #[derive(Default)]
    struct Versions(RefCell<HashMap<u64, Vec<String>>>);

    impl Versions {
        fn record(&self, who: &str, vm: &JwksCache) {
            let v = vm.version(0);
            if v == 0 {
                assert!(vm.slots[0].keys.is_none(), "{who}: keys without a version");
                return;
            }
            let mut kids: Vec<String> = vm.slots[0]
                .keys
                .as_ref()
                .map(|k| k.keys.iter().filter_map(|k| k.kid.clone()).collect())
                .unwrap_or_default();
            kids.sort();
            let mut seen = self.0.borrow_mut();
            let first = seen.entry(v).or_insert_with(|| kids.clone());
            assert_eq!(*first, kids, "{who}: version {v} names two different key sets");
        }
    }

    /// Ticks (and records) every reader.
    fn readers_tick(readers: &mut [JwksCache], store: &FakeStore, now: u64, seen: &Versions) {
        let mut ev = Vec::new();
        for (i, r) in readers.iter_mut().enumerate() {
            r.tick(store, now, &mut ev);
            seen.record(&format!("reader {i}"), r);
        }
    }

    /// Puts fetchers A and B both in flight for source 0 (the lease of A runs out while it
    /// fetches, and B takes it), after `warm_first` optionally published a first set.
    /// Returns the time both are in flight.
    fn two_in_flight(a: &mut JwksCache, b: &mut JwksCache, store: &FakeStore, warm_first: bool) -> u64 {
        let mut ev = Vec::new();
        let mut t = 1_000;
        if warm_first {
            a.tick(store, t, &mut ev);
            let r = a.tick(store, t + 100, &mut ev);
            assert_eq!(r.len(), 1);
            let w = TestKey::generate(Alg::ES256, "w");
            a.on_fetch_done(store, 0, t + 200, false, ok(&w.jwks(), None), &mut ev);
            b.tick(store, t + 300, &mut ev);
            t += 600_000 + 1_000; // refresh due
        }
        let mut started = false;
        for _ in 0..3 {
            started |= !a.tick(store, t, &mut ev).is_empty();
            t += 100;
        }
        assert!(started, "A fetches");
        t += 5_000 + 2_000 + 1; // A's lease runs out: A is slow, or its tick was late
        let mut started = false;
        for _ in 0..3 {
            started |= !b.tick(store, t, &mut ev).is_empty();
            t += 100;
        }
        assert!(started, "B fetches while A still does");
        t
    }

    #[test]
    fn racing_fetchers_and_readers_agree_on_every_version() {
        let x = TestKey::generate(Alg::ES256, "x");
        let y = TestKey::generate(Alg::ES256, "y");
        // For each way in: cold (no set yet: Envoy cannot CAS-protect the first write) and warm
        // (a set published: CAS decides); for each point k in A's publish where B's whole
        // publish runs; readers run after every read and write of either.
        for warm_first in [false, true] {
            for k in 0..40 {
                let store = FakeStore::default();
                let mut vms: Vec<JwksCache> = (1..=5).map(|h| JwksCache::new(vec![remote(json!({}))], h)).collect();
                let (a, rest) = vms.split_first_mut().unwrap();
                let (b, readers) = rest.split_first_mut().unwrap();
                let t = two_in_flight(a, b, &store, warm_first);
                let seen = Versions::default();
                seen.record("A", a);
                seen.record("B", b);
                // Two readers are as warm as A and B; the third has not loaded anything yet.
                readers_tick(&mut readers[..2], &store, t, &seen);
                let mut ops = 0;
                let mut b_ran = false;
                let mut events_b = Vec::new();
                {
                    let between = |inner: &FakeStore| {
                        readers_tick(readers, inner, t, &seen);
                        if ops == k && !b_ran {
                            b_ran = true;
                            let (b_store, readers2) = (inner, &mut *readers);
                            let nested = Interleaved {
                                inner: b_store,
                                between: RefCell::new(Box::new(|s: &FakeStore| readers_tick(readers2, s, t, &seen))),
                            };
                            b.on_fetch_done(&nested, 0, t, false, ok(&y.jwks(), None), &mut events_b);
                            drop(nested);
                            seen.record("B", b);
                        }
                        ops += 1;
                    };
                    let store_a = Interleaved {
                        inner: &store,
                        between: RefCell::new(Box::new(between)),
                    };
                    let mut events_a = Vec::new();
                    a.on_fetch_done(&store_a, 0, t, false, ok(&x.jwks(), None), &mut events_a);
                    drop(store_a);
                    seen.record("A", a);
                    if !b_ran {
                        b.on_fetch_done(&store, 0, t, false, ok(&y.jwks(), None), &mut events_b);
                    }
                    events_b.extend(events_a);
                }
                // Everyone settles on what shared data holds: one version, one set.
                let mut ev = Vec::new();
                for vm in vms.iter_mut() {
                    vm.tick(&store, t + 100, &mut ev);
                    seen.record("settled", vm);
                }
                let (_, cas) = store
                    .get(&format!("{}|set", vms[0].slots[0].remote.shared_key))
                    .unwrap();
                for (i, vm) in vms.iter().enumerate() {
                    assert_eq!(vm.version(0), u64::from(cas), "k {k}, warm {warm_first}: VM {i}");
                    assert_eq!(vm.slots[0].meta.version, u64::from(cas), "k {k}: status hint");
                }
                let published = events_b.iter().filter(|e| matches!(e, Event::Fetched { .. })).count();
                if warm_first {
                    // Both began from the same published version: CAS lets one of them through.
                    assert_eq!(published, 1, "k {k}: {events_b:?}");
                    assert!(events_b.iter().any(|e| matches!(e, Event::Superseded { .. })));
                } else {
                    assert!((1..=2).contains(&published), "k {k}: {events_b:?}");
                }
            }
        }
    }

    #[test]
    fn a_set_that_does_not_parse_is_never_claimed() {
        let key = TestKey::generate(Alg::ES256, "good");
        let cases: &[(&str, &[u8])] = &[
            ("no header line", b"{\"keys\": []}"),
            ("header not JSON", b"VERSION 7\n{\"keys\": []}"),
            ("document not JSON", b"{\"fetchedAt\": 5}\n<html>"),
            ("no usable key", b"{\"fetchedAt\": 5}\n{\"keys\": []}"),
            (
                "bad key",
                b"{\"fetchedAt\": 5}\n{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}",
            ),
            ("not UTF-8", b"{\"fetchedAt\": 5}\n\xff\xfe"),
        ];
        for (what, garbage) in cases {
            let store = FakeStore::default();
            let mut a = warm(&store, &key, json!({}));
            let mut readers: Vec<JwksCache> = (8..11).map(|h| JwksCache::new(vec![remote(json!({}))], h)).collect();
            let seen = Versions::default();
            readers_tick(&mut readers, &store, 1_300, &seen);
            let good = a.version(0);
            // Somehow (a bug, another build) a set that does not parse is published and hinted.
            let set_key = format!("{}|set", a.slots[0].remote.shared_key);
            store.set(&set_key, garbage, None).unwrap();
            let bad = u64::from(store.get(&set_key).unwrap().1);
            update_status(&store, &mut a.slots[0], |m| {
                m.version = bad;
                true
            });
            let mut ev = Vec::new();
            for t in [1_400, 1_500, 1_600] {
                for r in readers.iter_mut() {
                    r.tick(&store, t, &mut ev);
                    seen.record(what, r);
                }
            }
            for r in &readers {
                assert_eq!(r.version(0), good, "{what}: the old version and keys stay");
                assert!(r
                    .usable_keys(0, 1_600)
                    .is_some_and(|k| k.find_by_kid("good").next().is_some()));
            }
            let failed = ev
                .iter()
                .filter(|e| matches!(e, Event::LoadFailed { version, .. } if *version == bad))
                .count();
            assert_eq!(failed, readers.len(), "{what}: once per VM, not every tick: {ev:?}");
            // The next good publish is taken as usual (and not over a version nobody holds).
            let rotated = TestKey::generate(Alg::ES256, "rotated");
            let t = 1_200 + 600_000;
            let req = a.tick(&store, t, &mut ev);
            assert_eq!(req.len(), 1, "{what}");
            assert_eq!(req[0].etag, None, "{what}: the held set is not the published one");
            a.on_fetch_done(&store, 0, t, false, ok(&rotated.jwks(), None), &mut ev);
            for r in readers.iter_mut() {
                r.tick(&store, t + 100, &mut ev);
                seen.record(what, r);
                assert_eq!(r.version(0), a.version(0), "{what}");
                assert!(r
                    .usable_keys(0, t + 100)
                    .unwrap()
                    .find_by_kid("rotated")
                    .next()
                    .is_some());
            }
        }
    }
}
