//! The decision memo: an allowed request answered with the outcome of an identical one.
//!
//! On a cached token the filter still decodes and validates every header, finds the token,
//! normalises the path, evaluates the policy and builds the header operations: the VM side of
//! a cached request was about 15k instructions (callgrind on `node --no-liftoff
//! examples/host_profile.mjs`, commit 367bde3), more than Envoy spends on entering an empty
//! Wasm filter (`examples/icount.rs`). Most traffic repeats: the same caller on the same route. So the
//! outcome of an allowed request is remembered (once the memo is half full, only for a shape
//! allowed before, so that one-off URLs cannot push out the repeated ones), keyed by every
//! input evaluation reads:
//!
//! * `:method`, `:path` (query included), `:authority` and `host`;
//! * every header a token may be read from (`fromHeaders`; `cookie` for `fromCookies`);
//! * every header a rule reads (`request.headers[...]`, a `header:NAME` binding) and, with
//!   `allowCorsPreflight`, `origin` and `access-control-request-method`.
//!
//! A remembered outcome holds only while the provider's keys are those the token was verified
//! under, and while the token's time claims hold: both are checked on every hit, as the
//! verified-token cache checks its entries. A request carrying a managed header, a keyed
//! header twice, another spelling of a managed or keyed header (`x_env` for `x-env`), a
//! method override, or any keyed value that is not byte for byte the remembered one is
//! evaluated in full. So is every request under a config whose decisions read more than these inputs (the
//! calling peer, ALB tokens, AUDIT rules, which log), every request that was not a plain allow
//! (denials, dry-run denials, requests without a token) and, in the host, every request while
//! debug decision lines are on (they need the whole evaluation). `jwtCacheSize: 0` turns the
//! memo off with the cache.
//!
//! A key holds the whole `:path`, so one-off long URLs would make entries of tens of KiB: the
//! memo is bounded in bytes as well as in entries ([`memo_bytes`]), and counts what it evicts.
//!
//! Nothing here decides: a hit replays what evaluation decided. The tests replay randomised
//! requests through both and require the same outcome.

use crate::base::abi::pair_spans;
use crate::config::Config;
use crate::policy::identity::HeaderOps;
use crate::request::cache::{rc_str_heap_bytes, same_bytes, slot_hash, string_heap_bytes, Lru, Weigh, ALLOC_HEADER};
use crate::request::decision::{Decision, Evaluation, KeyLookup};
use crate::request::metrics::Labels;
use crate::token::Location;
use crate::verify::ClaimChecks;
use std::cell::Cell;
use std::mem::size_of;
use std::rc::Rc;

/// The most header names a key may have: a config reading more is never memoized.
pub const MAX_KEYED: usize = 16;

/// The memo's byte budget for a given `jwtCacheBytes`: half the token cache's. An entry holds
/// the request's keyed headers (its token and path among them) and the header operations,
/// about 2 KiB with a Keycloak token and a short path: less than the token's own entry, which
/// also holds its parsed claims. A miss costs an evaluation, not a signature check.
pub const fn memo_bytes(jwt_cache_bytes: usize) -> usize {
    jwt_cache_bytes / 2
}

/// Request shapes noted once (by hash), direct-mapped: a shape is remembered on its second
/// allowed request.
const SEEN_SLOTS: usize = 1024;

/// Which inputs key a request under one config.
#[derive(Debug, Clone)]
pub struct MemoSpec {
    /// Why this config's requests are never memoized.
    off: Option<&'static str>,
    /// Header names (lower-case) whose values evaluation may read. The pseudo-headers and
    /// `host` are matched exactly, as [`crate::request::decision::HttpRequest::from_headers`] reads
    /// them; the rest ASCII case-insensitively, as token extraction and rules do.
    keyed: Vec<(Box<[u8]>, bool)>,
    /// Managed headers (lower-case): a request carrying one is evaluated in full.
    managed: Vec<Box<[u8]>>,
    /// Names that, in a spelling not keyed (any case, `_` for `-`), make evaluation do more than
    /// a replay could: managed and token headers in another spelling (stripped), keyed
    /// headers in another spelling (rules read `x_env` as `x-env`), method overrides (the
    /// request is judged under each method). A request carrying one is evaluated in full.
    loose: Vec<Box<[u8]>>,
}

impl MemoSpec {
    pub fn new(config: &Config) -> MemoSpec {
        let mut keyed: Vec<(Box<[u8]>, bool)> = Vec::new();
        let mut add = |name: &str, exact: bool| {
            let lower = name.to_ascii_lowercase().into_bytes().into_boxed_slice();
            if !keyed.iter().any(|(k, _)| *k == lower) {
                keyed.push((lower, exact));
            }
        };
        for name in [":method", ":path", ":authority", "host"] {
            add(name, true);
        }
        for loc in &config.token_locations {
            match loc {
                Location::Header { name, .. } => add(name, false),
                Location::Cookie(_) => add("cookie", false),
                // The query is part of `:path`.
                Location::Param(_) => {}
            }
        }
        for name in config.policy.header_names() {
            add(name, false);
        }
        if config.allow_cors_preflight {
            add("origin", false);
            add("access-control-request-method", false);
        }
        let off = if config.jwt_cache_size == 0 {
            Some("jwtCacheSize is 0")
        } else if config.uses_peer() {
            Some("decisions read the calling peer")
        } else if config.policy.has_audit_rules() {
            Some("AUDIT rules log each match")
        } else if config.providers.iter().any(|p| p.alb.is_some()) {
            Some("ALB tokens are checked on every request")
        } else if keyed.len() > MAX_KEYED {
            Some("decisions read too many request headers")
        } else {
            None
        };
        let mut loose: Vec<Box<[u8]>> = Vec::new();
        let names = config
            .underscore_watched
            .iter()
            .map(String::as_str)
            .chain(crate::request::decision::METHOD_OVERRIDE_HEADERS)
            .map(str::as_bytes)
            .chain(keyed.iter().filter(|(_, exact)| !exact).map(|(k, _)| &**k));
        for name in names {
            if !loose.iter().any(|l| **l == *name) {
                loose.push(name.into());
            }
        }
        MemoSpec {
            off,
            keyed,
            managed: config
                .managed_headers
                .iter()
                .map(|m| m.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect(),
            loose,
        }
    }

    /// Why this config's requests are never memoized, if they are not.
    pub fn off(&self) -> Option<&'static str> {
        self.off
    }

    /// The key of a request from its serialized header map (`proxy_get_header_map_pairs`'s
    /// buffer, read in place), or None when it must be evaluated in full: the memo is off, the
    /// buffer is malformed, a managed header is present, a keyed one repeats, or a header
    /// named in `loose` is, in a spelling not keyed.
    pub fn key<'b>(&self, buf: &'b [u8], seed: u64) -> Option<RequestKey<'b>> {
        if self.off.is_some() {
            return None;
        }
        let mut values: [Option<&[u8]>; MAX_KEYED] = [None; MAX_KEYED];
        for pair in pair_spans(buf).ok()? {
            let (name, value) = pair.ok()?;
            let name = buf.get(name)?;
            // Lengths first: most names are neither keyed nor managed.
            let same = |k: &[u8]| k.len() == name.len() && k.eq_ignore_ascii_case(name);
            if self.managed.iter().any(|m| same(m)) {
                return None;
            }
            let Some(i) = self.keyed.iter().position(|(k, _)| same(k)) else {
                if self
                    .loose
                    .iter()
                    .any(|l| crate::base::abi::same_header_loosely(l, name))
                {
                    return None;
                }
                continue;
            };
            let (k, exact) = self.keyed.get(i)?;
            let slot = values.get_mut(i)?;
            // A spelling evaluation might read differently (`HOST` for `host`), or a second
            // value: evaluate in full.
            if (*exact && **k != *name) || slot.is_some() {
                return None;
            }
            *slot = Some(buf.get(value)?);
        }
        let n = self.keyed.len();
        let mut hash = seed;
        for (i, v) in values.iter().take(n).enumerate() {
            let v = *v;
            let len = v.map_or(0, <[u8]>::len) as u64;
            let tag = len << 8 | (i as u64) << 1 | u64::from(v.is_some());
            let v = v.unwrap_or_default();
            hash = slot_hash(hash.rotate_left(29) ^ tag, v.get(..SAMPLED / 2).unwrap_or(v));
            if let Some(tail) = v.len().checked_sub(SAMPLED / 2).and_then(|at| v.get(at..)) {
                hash = slot_hash(hash, tail);
            }
        }
        Some(RequestKey { values, n, hash })
    }
}

/// Of each value, only the first and last `SAMPLED / 2` bytes (and the length) are hashed: the
/// hash only picks a bucket, a hit compares every byte. A token's end is its signature, as
/// varied as anything in the request; hashing all 600 bytes of an RS256 token was a fifth of
/// the key's time in V8.
const SAMPLED: usize = 128;

/// The values of a request's keyed headers (borrowed from the host's buffer), and their hash.
#[derive(Debug)]
pub struct RequestKey<'b> {
    values: [Option<&'b [u8]>; MAX_KEYED],
    n: usize,
    hash: u64,
}

impl RequestKey<'_> {
    fn slots(&self) -> impl Iterator<Item = &Option<&[u8]>> {
        self.values.iter().take(self.n)
    }

    /// Each slot: 0 (absent), or 1, a little-endian `u32` length and the bytes.
    fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.slots().map(|v| 5 + v.map_or(0, <[u8]>::len)).sum());
        for v in self.slots() {
            match v {
                None => out.push(0),
                Some(b) => {
                    out.push(1);
                    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    /// Whether `stored` (a [`RequestKey::serialize`]d key) is this key.
    fn is(&self, mut stored: &[u8]) -> bool {
        for v in self.slots() {
            let Some((&tag, rest)) = stored.split_first() else {
                return false;
            };
            stored = rest;
            match (tag, v) {
                (0, None) => {}
                (1, Some(b)) => {
                    let Some((len, rest)) = stored.split_first_chunk::<4>() else {
                        return false;
                    };
                    let len = u32::from_le_bytes(*len) as usize;
                    if len != b.len() || rest.len() < len {
                        return false;
                    }
                    let (bytes, rest) = rest.split_at(len);
                    if !same_bytes(bytes, b) {
                        return false;
                    }
                    stored = rest;
                }
                _ => return false,
            }
        }
        stored.is_empty()
    }
}

/// What an allowed request did, replayed on a hit.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoOutcome {
    pub header_ops: HeaderOps,
    pub labels: Labels,
    /// The host's counter for `labels` (an index it assigns on the first hit), so that a hit
    /// does not look the labels up again.
    pub counter: Cell<Option<usize>>,
}

#[derive(Debug)]
struct Remembered {
    provider: usize,
    generation: u64,
    checks: ClaimChecks,
    outcome: Rc<MemoOutcome>,
}

impl Weigh for Remembered {
    /// The outcome in its `Rc` and its header operations' strings.
    fn heap_bytes(&self) -> usize {
        let vec = |cap: usize, item: usize| if cap == 0 { 0 } else { cap * item + ALLOC_HEADER };
        let pairs = |v: &Vec<(String, String)>| {
            vec(v.capacity(), size_of::<(String, String)>())
                + v.iter()
                    .map(|(a, b)| string_heap_bytes(a) + string_heap_bytes(b))
                    .sum::<usize>()
        };
        let ops = &self.outcome.header_ops;
        2 * size_of::<usize>()
            + size_of::<MemoOutcome>()
            + ALLOC_HEADER
            + vec(ops.remove.capacity(), size_of::<Rc<str>>())
            + ops.remove.iter().map(|r| rc_str_heap_bytes(r)).sum::<usize>()
            + pairs(&ops.set)
            + vec(ops.refused.capacity(), size_of::<(String, &str)>())
            + ops.refused.iter().map(|(h, _)| string_heap_bytes(h)).sum::<usize>()
            + pairs(&ops.filter_state)
    }
}

/// One VM's memo: at most `capacity` request shapes weighing at most its byte budget, least
/// recently used out first.
#[derive(Debug)]
pub struct DecisionMemo {
    entries: Lru<Remembered>,
    capacity: usize,
    seen: Vec<u64>,
}

impl DecisionMemo {
    /// [`DecisionMemo::with_budget`] with the byte budget of the default `jwtCacheBytes`.
    pub fn new(capacity: usize) -> DecisionMemo {
        DecisionMemo::with_budget(capacity, memo_bytes(crate::request::cache::DEFAULT_BYTES))
    }

    /// At most `capacity` request shapes weighing at most `max_bytes` (key, outcome and a
    /// fixed overhead each).
    pub fn with_budget(capacity: usize, max_bytes: usize) -> DecisionMemo {
        DecisionMemo {
            entries: Lru::new(capacity, max_bytes),
            capacity,
            seen: vec![0; SEEN_SLOTS],
        }
    }

    /// Entries dropped for room since the last call.
    pub fn take_evictions(&mut self) -> u64 {
        self.entries.take_evictions()
    }

    /// Request shapes remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// The outcome of an earlier request with exactly this key, if its token is still
    /// acceptable at `now` (seconds) under the keys it was verified with.
    pub fn get(
        &mut self,
        config: &Config,
        keys: &dyn KeyLookup,
        key: &RequestKey,
        now: u64,
    ) -> Option<Rc<MemoOutcome>> {
        let e = self.entries.get_by(key.hash, |stored| key.is(stored))?;
        let provider = config.providers.get(e.provider)?;
        if keys.generation(e.provider) != e.generation || e.checks.at(provider, now).is_err() {
            // Evaluation decides (and a new allow replaces this entry).
            return None;
        }
        Some(Rc::clone(&e.outcome))
    }

    /// Notes the outcome of a request evaluated in full: remembered when it is a plain allow
    /// of a verified token and this shape was allowed before.
    pub fn offer(&mut self, keys: &dyn KeyLookup, key: &RequestKey, ev: &Evaluation, labels: &Labels) {
        let Decision::Allow { identity: Some(id) } = &ev.decision else {
            return;
        };
        if labels.outcome != "allowed" || ev.cors_preflight || ev.token_cache.is_none() {
            return;
        }
        // While half the memo (in entries and in bytes) is free every allowed shape goes in;
        // past that only one seen before, so that a stream of one-off URLs cannot push out the
        // repeated ones.
        if self.entries.len() >= self.capacity / 2 || self.entries.bytes() >= self.entries.max_bytes() / 2 {
            let Some(seen) = self.seen.get_mut((key.hash % SEEN_SLOTS as u64) as usize) else {
                return;
            };
            if *seen != key.hash {
                *seen = key.hash;
                return;
            }
        }
        self.entries.insert(
            key.hash,
            &key.serialize(),
            Remembered {
                provider: id.provider_index,
                generation: keys.generation(id.provider_index),
                checks: id.checks.clone(),
                outcome: Rc::new(MemoOutcome {
                    header_ops: ev.header_ops.clone(),
                    labels: labels.clone(),
                    counter: Cell::new(None),
                }),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::alg::Alg;
    use crate::request::cache::VerifiedTokenCache;
    use crate::request::decision::{evaluate_cached, HttpRequest};
    use crate::request::metrics::labels;
    use crate::token::header_refs;
    use claimguard_testkeys::TestKey;
    use serde_json::{json, Value};

    const NOW: u64 = 1_800_000_000;
    const SEED: u64 = 0x5eed;

    /// Serializes pairs the way the host does.
    fn encode(pairs: &[(String, String)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// A fixed set of keys standing for the VM's: generation settable.
    struct Keys<'a> {
        config: &'a Config,
        generation: u64,
    }

    impl KeyLookup for Keys<'_> {
        fn key_set(&self, provider: usize) -> Option<&crate::keys::jwk::KeySet> {
            self.config.providers.get(provider).map(|p| &p.keys)
        }
        fn generation(&self, _provider: usize) -> u64 {
            self.generation
        }
    }

    struct World {
        config: Config,
        key: TestKey,
        other: TestKey,
    }

    fn world(extra: Value) -> World {
        let key = TestKey::generate(Alg::ES256, "k1");
        let other = TestKey::generate(Alg::ES256, "k1");
        let mut cfg = json!({
            "providers": [{"name": "idp", "issuer": "https://idp", "audiences": ["api"],
                "jwks": key.jwks().to_string(),
                "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}, {"name": "x-token"}],
                "fromCookies": ["session"],
                "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}],
            "rules": [
                {"name": "readers", "methods": ["GET"], "paths": ["/orders/*"],
                 "when": [{"claim": "groups", "values": ["readers"]}]},
                {"name": "prod-only", "paths": ["/env"],
                 "when": [{"key": "request.headers[x-env]", "values": ["prod"]}]},
                {"name": "public", "paths": ["/health"], "public": true}
            ]
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        World {
            config: Config::from_json(cfg.to_string().as_bytes()).unwrap(),
            key,
            other,
        }
    }

    fn token(k: &TestKey, sub: &str, groups: &[&str], exp: u64) -> String {
        k.sign(&json!({"iss": "https://idp", "aud": "api", "sub": sub, "groups": groups, "exp": exp, "iat": NOW - 10}))
    }

    /// Evaluates in full, then asks the memo: whenever the memo answers, it must answer what
    /// evaluation did.
    fn both(
        w: &World,
        cache: &mut VerifiedTokenCache,
        memo: &mut DecisionMemo,
        keys: &Keys,
        headers: &[(String, String)],
        now: u64,
    ) -> (Evaluation, Option<Rc<MemoOutcome>>) {
        let spec = MemoSpec::new(&w.config);
        let buf = encode(headers);
        let refs = header_refs(headers);
        let key = spec.key(&buf, SEED);
        let hit = key.as_ref().and_then(|k| memo.get(&w.config, keys, k, now));
        let ev = evaluate_cached(
            &w.config,
            keys,
            Some(cache),
            &HttpRequest::from_headers(&refs),
            now,
            false,
        );
        let l = labels(&w.config, &ev);
        if let Some(h) = &hit {
            assert_eq!(h.labels, l, "{headers:?}");
            assert_eq!(h.header_ops, ev.header_ops, "{headers:?}");
            assert!(matches!(ev.decision, Decision::Allow { .. }), "{headers:?}");
        }
        if let Some(k) = &key {
            memo.offer(keys, k, &ev, &l);
        }
        (ev, hit)
    }

    fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "api.test".to_string()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    }

    /// A bearer request for `GET /orders/1` that the rules allow (alice, a reader).
    fn alice(w: &World, exp: u64) -> Vec<(String, String)> {
        let bearer = format!("Bearer {}", token(&w.key, "alice", &["readers"], exp));
        request("GET", "/orders/1", &[("authorization", &bearer)])
    }

    fn keys_at(config: &Config, generation: u64) -> Keys<'_> {
        Keys { config, generation }
    }

    #[test]
    fn past_half_full_a_shape_is_remembered_on_its_second_allow() {
        let w = world(json!({}));
        // Capacity 1: half full from the start.
        let (mut cache, mut memo) = (VerifiedTokenCache::new(64, SEED), DecisionMemo::new(1));
        let keys = keys_at(&w.config, 0);
        let h = alice(&w, NOW + 3600);
        assert!(both(&w, &mut cache, &mut memo, &keys, &h, NOW).1.is_none());
        assert!(memo.is_empty(), "seen once: only noted");
        assert!(both(&w, &mut cache, &mut memo, &keys, &h, NOW).1.is_none());
        assert_eq!(memo.len(), 1);
        let (ev, hit) = both(&w, &mut cache, &mut memo, &keys, &h, NOW + 1);
        let hit = hit.expect("a hit");
        assert_eq!(hit.labels.outcome, "allowed");
        assert_eq!(&*hit.header_ops.remove[0], "authorization");
        assert_eq!(hit.header_ops, ev.header_ops);
    }

    #[test]
    fn below_half_full_the_first_allow_is_remembered() {
        let w = world(json!({}));
        let (mut cache, mut memo) = (VerifiedTokenCache::new(64, SEED), DecisionMemo::new(64));
        let keys = keys_at(&w.config, 0);
        let h = alice(&w, NOW + 3600);
        assert!(both(&w, &mut cache, &mut memo, &keys, &h, NOW).1.is_none());
        assert_eq!(memo.len(), 1);
        assert!(both(&w, &mut cache, &mut memo, &keys, &h, NOW).1.is_some());
        // A denial is never remembered.
        let other = format!("Bearer {}", token(&w.key, "bob", &["writers"], NOW + 3600));
        let d = request("GET", "/orders/1", &[("authorization", &other)]);
        for _ in 0..3 {
            let (ev, hit) = both(&w, &mut cache, &mut memo, &keys, &d, NOW);
            assert!(hit.is_none() && matches!(ev.decision, Decision::Deny(ref x) if x.status == 403));
        }
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn a_hit_needs_the_same_keys_and_a_token_still_in_date() {
        let w = world(json!({}));
        let (mut cache, mut memo) = (VerifiedTokenCache::new(64, SEED), DecisionMemo::new(64));
        let keys = keys_at(&w.config, 3);
        let h = alice(&w, NOW + 100);
        for _ in 0..2 {
            both(&w, &mut cache, &mut memo, &keys, &h, NOW);
        }
        assert!(both(&w, &mut cache, &mut memo, &keys, &h, NOW).1.is_some());
        let rotated = keys_at(&w.config, 4);
        let spec = MemoSpec::new(&w.config);
        let buf = encode(&h);
        let key = spec.key(&buf, SEED).unwrap();
        assert!(memo.get(&w.config, &rotated, &key, NOW).is_none(), "keys rotated");
        // Past exp plus the default 60 s skew: evaluation's 401, never the remembered allow.
        let (ev, hit) = both(&w, &mut cache, &mut memo, &keys, &h, NOW + 161);
        assert!(hit.is_none());
        assert!(matches!(ev.decision, Decision::Deny(ref d) if d.status == 401));
    }

    #[test]
    fn requests_it_cannot_answer_are_never_keyed() {
        let w = world(json!({}));
        let spec = MemoSpec::new(&w.config);
        let t = "Bearer a.b.c";
        // A managed header (claimguard sets x-sub) present.
        assert!(spec
            .key(
                &encode(&request("GET", "/", &[("authorization", t), ("x-sub", "eve")])),
                SEED
            )
            .is_none());
        // The same, spelled with `_` (stripped on evaluation, `HTTP_X_SUB` to a CGI upstream).
        for spelling in ["x_sub", "X_SUB"] {
            assert!(spec
                .key(
                    &encode(&request("GET", "/", &[("authorization", t), (spelling, "eve")])),
                    SEED
                )
                .is_none());
        }
        // Another spelling of a keyed header (rules read `x_env` as `x-env`).
        assert!(spec
            .key(
                &encode(&request("GET", "/", &[("authorization", t), ("x-env", "dev")])),
                SEED
            )
            .is_some());
        assert!(spec
            .key(
                &encode(&request(
                    "GET",
                    "/",
                    &[("authorization", t), ("x-env", "dev"), ("x_env", "prod")]
                )),
                SEED
            )
            .is_none());
        // A method override: evaluation reads the request under each method.
        for spelling in ["X-HTTP-Method-Override", "x_http_method", "x-method-override"] {
            assert!(spec
                .key(
                    &encode(&request("POST", "/", &[("authorization", t), (spelling, "DELETE")])),
                    SEED
                )
                .is_none());
        }
        // A keyed header twice.
        assert!(spec
            .key(
                &encode(&request("GET", "/", &[("authorization", t), ("authorization", t)])),
                SEED
            )
            .is_none());
        // A pseudo-header spelled otherwise than evaluation reads it.
        assert!(spec
            .key(&encode(&request("GET", "/", &[("HOST", "x")])), SEED)
            .is_none());
        // Malformed.
        assert!(spec.key(&[9, 0, 0, 0, 1], SEED).is_none());
        assert!(spec
            .key(&encode(&request("GET", "/", &[("authorization", t)])), SEED)
            .is_some());
        for (extra, why) in [
            (json!({"jwtCacheSize": 0}), "jwtCacheSize is 0"),
            (
                json!({"rules": [{"name": "a", "action": "AUDIT", "paths": ["/"]}]}),
                "AUDIT rules log each match",
            ),
            (
                json!({"rules": [{"name": "p", "principals": ["spiffe://x"]}]}),
                "decisions read the calling peer",
            ),
        ] {
            let w = world(extra);
            assert_eq!(MemoSpec::new(&w.config).off(), Some(why));
            assert!(MemoSpec::new(&w.config)
                .key(&encode(&request("GET", "/", &[("authorization", t)])), SEED)
                .is_none());
        }
    }

    #[test]
    fn a_flood_of_long_urls_stays_within_the_byte_budget() {
        // 10k one-off 8 KiB URLs, each allowed twice (past half full a shape needs two),
        // under the default budget; one repeated request is asked for on every step.
        let w = world(json!({}));
        let max_bytes = memo_bytes(crate::request::cache::DEFAULT_BYTES);
        let (mut cache, mut memo) = (
            VerifiedTokenCache::new(64, SEED),
            DecisionMemo::with_budget(crate::request::cache::DEFAULT_CAPACITY, max_bytes),
        );
        let keys = keys_at(&w.config, 0);
        let spec = MemoSpec::new(&w.config);
        let hot = alice(&w, NOW + 3600);
        let (ev, _) = both(&w, &mut cache, &mut memo, &keys, &hot, NOW);
        let l = labels(&w.config, &ev);
        let hot_buf = encode(&hot);
        let hot_key = spec.key(&hot_buf, SEED).unwrap();
        assert_eq!(memo.len(), 1);
        let bearer = hot.iter().find(|(k, _)| k == "authorization").unwrap().1.clone();
        let url = |i: usize| format!("/orders/1?q={i:06}&pad={}", "p".repeat(8 << 10));
        let n = 10_000;
        for i in 0..n {
            let buf = encode(&request("GET", &url(i), &[("authorization", &bearer)]));
            let key = spec.key(&buf, SEED).unwrap();
            memo.offer(&keys, &key, &ev, &l);
            memo.offer(&keys, &key, &ev, &l);
            assert!(memo.entries.bytes() <= max_bytes, "step {i}");
            assert!(memo.get(&w.config, &keys, &hot_key, NOW).is_some(), "step {i}");
        }
        let kept = memo.len();
        assert!((100..1000).contains(&kept), "{kept}");
        assert!(memo.entries.bytes() > max_bytes * 9 / 10, "the budget is used");
        // Every shape that went was counted, and the ones kept are the most recent.
        assert_eq!(memo.take_evictions(), (n + 1 - kept) as u64);
        let lookup = |memo: &mut DecisionMemo, i: usize| {
            let buf = encode(&request("GET", &url(i), &[("authorization", &bearer)]));
            let key = spec.key(&buf, SEED).unwrap();
            memo.get(&w.config, &keys, &key, NOW).is_some()
        };
        assert!((n + 1 - kept..n).all(|i| lookup(&mut memo, i)));
        assert!(!lookup(&mut memo, n - kept));
        assert_eq!(memo.take_evictions(), 0, "taken");
    }

    #[test]
    fn a_shape_heavier_than_the_budget_is_not_remembered() {
        let w = world(json!({}));
        let (mut cache, mut memo) = (
            VerifiedTokenCache::new(64, SEED),
            DecisionMemo::with_budget(64, 16 << 10),
        );
        let keys = keys_at(&w.config, 0);
        let t = format!("Bearer {}", token(&w.key, "alice", &["readers"], NOW + 3600));
        let small = request("GET", "/orders/1", &[("authorization", &t)]);
        let long = request(
            "GET",
            &format!("/orders/1?pad={}", "p".repeat(16 << 10)),
            &[("authorization", &t)],
        );
        both(&w, &mut cache, &mut memo, &keys, &small, NOW);
        for _ in 0..3 {
            let (ev, hit) = both(&w, &mut cache, &mut memo, &keys, &long, NOW);
            assert!(hit.is_none() && matches!(ev.decision, Decision::Allow { .. }));
        }
        assert_eq!(memo.len(), 1, "the small shape stays");
        assert!(both(&w, &mut cache, &mut memo, &keys, &small, NOW).1.is_some());
        assert_eq!(memo.take_evictions(), 3, "each refusal counts");
    }

    /// Random requests over a small alphabet of every input evaluation reads, each evaluated
    /// in full and then offered to the memo: every hit must be what evaluation decided, and
    /// the memo must answer most repeats.
    #[test]
    fn memo_matches_evaluation() {
        let w = world(json!({"allowCorsPreflight": true}));
        let (mut cache, mut memo) = (VerifiedTokenCache::new(256, SEED), DecisionMemo::new(1024));
        let keys = keys_at(&w.config, 0);
        let tokens = [
            token(&w.key, "alice", &["readers"], NOW + 3600),
            token(&w.key, "bob", &["writers"], NOW + 3600),
            token(&w.key, "carol", &["readers"], NOW + 40),
            token(&w.other, "mallory", &["readers"], NOW + 3600),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut pick = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut hits, mut allowed) = (0, 0);
        for step in 0..6000u64 {
            let t = &tokens[pick(4) as usize];
            let method = ["GET", "POST", "OPTIONS"][pick(3) as usize];
            let path = [
                "/orders/1",
                "/orders/2?x=1",
                "/env",
                "/health",
                "/orders/1?access_token=z",
                "/%2e%2e/orders/1",
                // Spellings the filter rewrites upstream: the memo must replay the rewrite.
                "//orders/./1?y=/../x",
                "/x/../orders/%31",
                "/orders;a/1",
            ][pick(9) as usize];
            let mut extra: Vec<(String, String)> = Vec::new();
            match pick(5) {
                0 => extra.push(("authorization".into(), format!("Bearer {t}"))),
                1 => extra.push(("x-token".into(), t.clone())),
                2 => extra.push(("cookie".into(), format!("session={t}"))),
                3 => {
                    extra.push(("authorization".into(), format!("Bearer {t}")));
                    extra.push(("cookie".into(), format!("session={t}")));
                }
                _ => extra.push(("authorization".into(), format!("bearer {t}"))),
            }
            if pick(3) == 0 {
                extra.push(("x-env".into(), ["prod", "dev"][pick(2) as usize].into()));
            }
            if pick(4) == 0 {
                extra.push(("origin".into(), "https://app".into()));
                extra.push(("access-control-request-method".into(), "GET".into()));
            }
            if pick(10) == 0 {
                extra.push(("x-sub".into(), "forged".into()));
            }
            if pick(3) == 0 {
                extra.push(("x-request-id".into(), format!("r{}", pick(1000))));
            }
            let mut h = request(method, path, &[]);
            h.extend(extra);
            // Time moves on: carol's token expires midway.
            let now = NOW + step / 40;
            let (ev, hit) = both(&w, &mut cache, &mut memo, &keys, &h, now);
            hits += usize::from(hit.is_some());
            allowed += usize::from(matches!(ev.decision, Decision::Allow { identity: Some(_) }));
        }
        assert!(hits > allowed / 3, "{hits} hits of {allowed} allowed");
    }

    /// Claims bound to the request (`valuesFrom`): a remembered allow is never replayed for
    /// another tenant or user. Random requests of three callers over tenants' and users' paths
    /// (spelled to confuse the capture), a tenant header and a tenant query parameter, each
    /// through full evaluation and the memo: every hit must be what evaluation decided.
    #[test]
    fn memo_never_replays_a_bound_allow_for_another_tenant_or_user() {
        let w = world(json!({
            "pathWithParametersAction": "MATCH_WITHOUT_PARAMETERS",
            "rules": [
                {"name": "cross-tenant", "action": "DENY", "paths": ["/tenants/{tenant}/{**}"],
                 "when": [{"claim": "tenants", "notValuesFrom": "path:tenant"}]},
                {"name": "tenant-members", "paths": ["/tenants/{tenant}/{**}"],
                 "when": [{"claim": "tenants", "valuesFrom": "path:tenant"}]},
                {"name": "own-user", "paths": ["/users/{sub}/{**}"],
                 "when": [{"claim": "sub", "valuesFrom": "path:sub"}]},
                {"name": "header-tenant", "paths": ["/reports"],
                 "when": [{"claim": "tenants", "valuesFrom": "header:x-tenant-id"}]},
                {"name": "query-tenant", "paths": ["/search"],
                 "when": [{"claim": "tenants", "valuesFrom": "query:tenant"}]}
            ]
        }));
        assert_eq!(MemoSpec::new(&w.config).off(), None);
        let (mut cache, mut memo) = (VerifiedTokenCache::new(256, SEED), DecisionMemo::new(1024));
        let keys = keys_at(&w.config, 0);
        let sign = |sub: &str, tenants: &[&str]| {
            w.key.sign(
                &json!({"iss": "https://idp", "aud": "api", "sub": sub, "tenants": tenants,
                "exp": NOW + 3600, "iat": NOW - 10}),
            )
        };
        let tokens = [
            sign("alice", &["acme"]),
            sign("bob", &["globex"]),
            sign("carol", &["acme", "globex"]),
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut pick = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let names = ["acme", "globex", "initech", "ACME", "alice", "bob", "carol"];
        let (mut hits, mut allowed, mut denied) = (0, 0, 0);
        for step in 0..8000u64 {
            let t = &tokens[pick(3) as usize];
            let a = names[pick(7) as usize];
            let b = names[pick(7) as usize];
            let path = match pick(12) {
                0 => format!("/tenants/{a}/orders"),
                1 => format!("/tenants/{a}/"),
                2 => format!("/tenants/{a}/../{b}/x"),
                3 => format!("//tenants//{a}//orders"),
                4 => format!("/tenants/{a};{b}/orders"),
                5 => format!("/tenants/{a}%2F{b}/orders"),
                6 => format!("/users/{a}/profile"),
                7 => format!("/users/{a}/./profile?u={b}"),
                8 => "/reports".to_string(),
                9 => format!("/search?tenant={a}"),
                10 => format!("/search?tenant={a}&tenant={b}"),
                _ => format!("/search?q=1&tenant={a}"),
            };
            let mut h = request("GET", &path, &[("authorization", &format!("Bearer {t}"))]);
            if pick(2) == 0 {
                h.push(("x-tenant-id".into(), b.into()));
            }
            let (ev, hit) = both(&w, &mut cache, &mut memo, &keys, &h, NOW + step / 100);
            hits += usize::from(hit.is_some());
            match ev.decision {
                Decision::Allow { .. } => allowed += 1,
                _ => denied += 1,
            }
        }
        assert!(hits > allowed / 3, "{hits} hits of {allowed} allowed");
        assert!(
            denied > 1000,
            "{denied} denied: the cross-tenant attempts must be there"
        );
    }
}
