//! The verified-token cache: a bounded, per-VM LRU map from a token's exact bytes to its
//! already verified claims. A hit skips parsing and the signature check (the
//! expensive part: hundreds of µs for RS256 in V8) but never the time-dependent claim checks,
//! which run on every request. An entry is only valid for the provider and key-set
//! generation it was verified under, so a rotated-out key stops being trusted at once, and
//! only until the token's `exp` (plus the clock skew): an expired entry is dropped when met.
//! A new plugin config starts a new, empty cache.
//!
//! Tokens whose signature did not verify are remembered too, but only for
//! [`NEGATIVE_TTL_SECONDS`] and in a separate, smaller LRU: a client retrying a bad token is
//! answered without another public-key operation, and a flood of distinct bad tokens can
//! never evict the good ones.
//!
//! Both are bounded twice: by entries (`jwtCacheSize`) and by bytes (`jwtCacheBytes`; the
//! rejected cache gets an eighth). A byte is counted as an entry's weight ([`Weigh`]): its key,
//! an estimate of the heap its value owns, and a fixed overhead. Without the byte bound, 4096
//! tokens of the largest `maxTokenBytes` with their parsed claims could hold hundreds of MiB in
//! one VM, and a Wasm VM's memory never shrinks.

use rsa::sha2::{Digest, Sha256};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::rc::Rc;

/// The sizes a config may give the cache, with their defaults (bounds of `jwtCacheSize` and
/// `jwtCacheBytes`, checked by `config::compile`).
pub use crate::config::model::{DEFAULT_BYTES, DEFAULT_CAPACITY, MAX_BYTES, MAX_CAPACITY, MIN_BYTES};

/// How long a failed signature check is remembered.
pub const NEGATIVE_TTL_SECONDS: u64 = 5;

/// A keyed 64-bit hash of the token's bytes: it only picks the slot. A hit also needs the
/// stored token to equal the presented one byte for byte, so a collision (chosen or not) can
/// only cost a miss, never admit a token that was not verified. The seed comes from the host
/// (random per VM), so the slots tokens land in cannot be predicted from outside.
///
/// Why not the SHA-256 of the token, as before: inside V8 it cost ~3 µs per request on a
/// 600-byte RS256 token, half of a cache hit; this costs a few dozen multiplications.
pub fn slot_hash(seed: u64, token: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ (token.len() as u64).wrapping_mul(K);
    let mut chunks = token.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    for (d, b) in w.iter_mut().zip(chunks.remainder()) {
        *d = *b;
    }
    h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    // murmur3's fmix64: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `a == b`, eight bytes at a time. Slice equality compiles to `memcmp`, which on wasm32 is
/// a loop over single bytes: on a 600-byte RS256 token that was most of a cache hit's own
/// time in V8. (It reads both to the end: a hit compares every byte anyway.)
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or_default());
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = 0u64;
    for (p, q) in (&mut x).zip(&mut y) {
        diff |= word(p) ^ word(q);
    }
    for (p, q) in x.remainder().iter().zip(y.remainder()) {
        diff |= u64::from(p ^ q);
    }
    diff == 0
}

/// The map's hasher: keys are already [`slot_hash`] values.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in all the same.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node<V> {
    hash: u64,
    /// Empty (no allocation) once the entry is removed.
    key: Box<[u8]>,
    /// None once the entry is removed: a free node must not keep its old value's heap alive,
    /// or the byte count would not be what the VM holds.
    value: Option<V>,
    /// What the entry counts against the byte budget.
    weight: usize,
    prev: u32,
    next: u32,
}

/// What a cached value owns on the heap, as this target lays it out (its inline size is
/// counted with the node): an honest estimate, so that a byte budget bounds what a VM holds.
pub(crate) trait Weigh {
    fn heap_bytes(&self) -> usize;
}

/// What one entry costs besides its key and its value's heap: the node in the slab, its slot in
/// the map (a `u64` and a `u32`, at a load factor of 7/8) and the allocator's header on the key.
fn overhead<V>() -> usize {
    size_of::<Node<V>>() + 2 * size_of::<(u64, u32)>() + ALLOC_HEADER
}

/// What an allocator adds to each block: dlmalloc's chunk header on wasm32, rounded up.
pub(crate) const ALLOC_HEADER: usize = 8;

/// A `B` of Rust's `BTreeMap` (a node has room for `2B - 1` pairs) and the pairs a node
/// holds on average once a map has split: serde_json's `Map` is a `BTreeMap`.
const BTREE_CAPACITY: usize = 11;
const BTREE_FILL: usize = 6;
const BTREE_NODE: usize =
    BTREE_CAPACITY * (size_of::<String>() + size_of::<Value>()) + 2 * size_of::<usize>() + 8 + ALLOC_HEADER;

/// Heap bytes of a parsed claims map: string and vector capacities and B-tree nodes, with
/// the target's sizes. Against a counting allocator (x86_64 and wasm32, maps of 5 to 3000
/// claims, nested ones included) it was never below the truth and at most 30% above it.
fn claims_heap_bytes(m: &Map<String, Value>) -> usize {
    let nodes = match m.len() {
        0 => 0,
        1..=BTREE_CAPACITY => BTREE_NODE,
        // Leaves about half full, and a root with its edges.
        n => (n.div_ceil(BTREE_FILL) + 1) * BTREE_NODE + (BTREE_CAPACITY + 1) * size_of::<usize>(),
    };
    nodes
        + m.iter()
            .map(|(k, v)| string_heap_bytes(k) + json_heap_bytes(v))
            .sum::<usize>()
}

pub(crate) fn string_heap_bytes(s: &String) -> usize {
    match s.capacity() {
        0 => 0,
        c => c + ALLOC_HEADER,
    }
}

fn json_heap_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => string_heap_bytes(s),
        Value::Array(a) => {
            let own = match a.capacity() {
                0 => 0,
                c => c * size_of::<Value>() + ALLOC_HEADER,
            };
            own + a.iter().map(json_heap_bytes).sum::<usize>()
        }
        Value::Object(m) => claims_heap_bytes(m),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Heap bytes of an `Rc<str>`: its two counts and the bytes.
pub(crate) fn rc_str_heap_bytes(s: &str) -> usize {
    2 * size_of::<usize>() + s.len() + ALLOC_HEADER
}

/// A bounded map from byte strings (tokens; the decision memo's request keys) to values that
/// forgets the least recently used first: a slab of nodes in a doubly linked recency list,
/// found through their [`slot_hash`]. Every operation is O(1) but an insertion, which evicts
/// as many entries as it takes to keep within both bounds. Two keys with the same hash share
/// a slot: the later one replaces the earlier.
///
/// The byte bound covers the live entries (each node counts in its entry's weight); the slab
/// and the slot map never shrink, but their size is bounded by the entry count.
#[derive(Debug)]
pub(crate) struct Lru<V> {
    slots: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    nodes: Vec<Node<V>>,
    /// Most and least recently used.
    head: u32,
    tail: u32,
    /// Nodes of removed entries, for reuse (emptied: they hold no heap).
    free: Vec<u32>,
    capacity: usize,
    /// The weight of the entries held, and its bound.
    bytes: usize,
    max_bytes: usize,
    /// Entries dropped for room (see [`Lru::take_evictions`]).
    evictions: u64,
}

impl<V> Lru<V> {
    /// At most `capacity` entries weighing at most `max_bytes` in all.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Lru<V> {
        Lru {
            slots: HashMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: Vec::new(),
            capacity: capacity.clamp(1, NIL as usize - 1),
            bytes: 0,
            max_bytes,
            evictions: 0,
        }
    }

    fn unlink(&mut self, i: u32) {
        let Some(n) = self.nodes.get(i as usize) else { return };
        let (prev, next) = (n.prev, n.next);
        match self.nodes.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.nodes.get_mut(next as usize) {
            Some(nx) => nx.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.prev = NIL;
            n.next = old;
        }
        match self.nodes.get_mut(old as usize) {
            Some(o) => o.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    /// The node in `hash`'s slot whose key `is_key` accepts.
    fn find_by(&self, hash: u64, is_key: impl FnOnce(&[u8]) -> bool) -> Option<u32> {
        let i = *self.slots.get(&hash)?;
        self.nodes
            .get(i as usize)
            .filter(|n| n.hash == hash && is_key(&n.key))
            .map(|_| i)
    }

    /// The node holding exactly `key`.
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.find_by(hash, |k| same_bytes(k, key))
    }

    /// The value, marked as just used.
    fn get(&mut self, hash: u64, key: &[u8]) -> Option<&V> {
        self.get_by(hash, |k| same_bytes(k, key))
    }

    /// The value of the key in `hash`'s slot that `is_key` accepts (a caller comparing a key
    /// it holds in pieces), marked as just used.
    pub(crate) fn get_by(&mut self, hash: u64, is_key: impl FnOnce(&[u8]) -> bool) -> Option<&V> {
        let i = self.find_by(hash, is_key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        self.nodes.get(i as usize).and_then(|n| n.value.as_ref())
    }

    /// Removes a live entry; false if `i` is not one.
    fn remove_node(&mut self, i: u32) -> bool {
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return false;
        };
        if n.value.is_none() {
            return false;
        }
        let hash = n.hash;
        // Free the key's and the value's heap now, not when the node is reused.
        n.key = Box::default();
        n.value = None;
        self.bytes = self.bytes.saturating_sub(std::mem::take(&mut n.weight));
        self.unlink(i);
        if self.slots.get(&hash) == Some(&i) {
            self.slots.remove(&hash);
        }
        self.free.push(i);
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The weight of the entries held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Entries dropped for room since the last call: pushed out by an insertion, or too heavy
    /// to be stored at all. (An entry removed because it went stale, or replaced by its own
    /// key, is not counted.)
    pub(crate) fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evictions)
    }

    fn remove(&mut self, hash: u64, key: &[u8]) {
        if let Some(i) = self.find(hash, key) {
            self.remove_node(i);
        }
    }
}

impl<V: Weigh> Lru<V> {
    pub(crate) fn insert(&mut self, hash: u64, key: &[u8], value: V) {
        // Whatever holds the slot (this token again, or another with the same hash) goes.
        if let Some(&i) = self.slots.get(&hash) {
            self.remove_node(i);
        }
        let weight = (key.len() + ALLOC_HEADER)
            .saturating_add(value.heap_bytes())
            .saturating_add(overhead::<V>());
        if weight > self.max_bytes {
            // It would push out everything and still not fit (what held its slot is gone all
            // the same: that was this key's older value, or a stranger).
            self.evictions += 1;
            return;
        }
        while self.slots.len() >= self.capacity || self.bytes.saturating_add(weight) > self.max_bytes {
            if !self.remove_node(self.tail) {
                break;
            }
            self.evictions += 1;
        }
        self.bytes = self.bytes.saturating_add(weight);
        let node = Node {
            hash,
            key: key.into(),
            value: Some(value),
            weight,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(n) = self.nodes.get_mut(i as usize) {
                    *n = node;
                }
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.slots.insert(hash, i);
        self.push_front(i);
    }
}

#[derive(Debug, Clone)]
struct Entry {
    provider: usize,
    generation: u64,
    /// Seconds since the epoch after which the token can no longer pass (`exp` + skew).
    valid_until: u64,
    token: CachedToken,
}

#[derive(Debug, Clone)]
struct Rejected {
    /// Where the token was (an index in `Config::token_locations`): the verdict is about the
    /// providers reading there, and holds for no other location.
    location: usize,
    /// The provider whose check failed.
    provider: usize,
    /// Every provider's key generation when it failed: any key change forgets the verdict.
    generations: Vec<u64>,
    until: u64,
}

/// What the cache holds for a verified token, shared (not copied) with every request that
/// presents it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedToken {
    /// The claims as signed (what `check_claims` reads).
    pub claims: Rc<Map<String, Value>>,
    /// The claims rules see: with the provider's `claimAliases` applied (the same map when
    /// it has none).
    pub identity_claims: Rc<Map<String, Value>>,
    /// The payload segment, for `outputPayloadToHeader`.
    pub payload_b64: Rc<str>,
    /// The claim checks, made once: a hit only compares the dates with the time.
    pub checks: crate::verify::ClaimChecks,
    /// Whose token it is, as [`crate::request::decision::Identity`] names it.
    pub who: TokenOwner,
}

/// The verified token's provider, issuer, `sub` and principal (`iss/sub`), made once.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOwner {
    pub provider: Rc<str>,
    pub issuer: Rc<str>,
    pub subject: Option<Rc<str>>,
    pub principal: Rc<str>,
}

impl Weigh for CachedToken {
    /// The claims (twice when aliases made a second map), the payload and the owner's names,
    /// each in its `Rc`. Counted in full by every entry holding them, shared or not.
    fn heap_bytes(&self) -> usize {
        let map =
            |m: &Map<String, Value>| 2 * size_of::<usize>() + size_of::<Map<String, Value>>() + claims_heap_bytes(m);
        let identity = if Rc::ptr_eq(&self.claims, &self.identity_claims) {
            0
        } else {
            map(&self.identity_claims)
        };
        let who = &self.who;
        map(&self.claims)
            + identity
            + rc_str_heap_bytes(&self.payload_b64)
            + rc_str_heap_bytes(&who.provider)
            + rc_str_heap_bytes(&who.issuer)
            + who.subject.as_deref().map_or(0, rc_str_heap_bytes)
            + rc_str_heap_bytes(&who.principal)
    }
}

impl Weigh for Entry {
    fn heap_bytes(&self) -> usize {
        self.token.heap_bytes()
    }
}

impl Weigh for Rejected {
    fn heap_bytes(&self) -> usize {
        self.generations.capacity() * size_of::<u64>() + ALLOC_HEADER
    }
}

#[derive(Debug)]
pub struct VerifiedTokenCache {
    verified: Lru<Entry>,
    rejected: Lru<Rejected>,
    seed: u64,
}

/// First 16 hex digits of the token's SHA-256: how decision lines name a token without
/// revealing it. Only computed for lines that are written.
pub fn token_fingerprint(token: &str) -> String {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut out = String::with_capacity(16);
    for b in hash.iter().take(8) {
        // Both nibbles are < 16: the digits always exist.
        out.extend(char::from_digit(u32::from(b >> 4), 16));
        out.extend(char::from_digit(u32::from(b & 15), 16));
    }
    out
}

impl VerifiedTokenCache {
    /// [`VerifiedTokenCache::with_budget`] with the default byte budget.
    pub fn new(capacity: usize, seed: u64) -> VerifiedTokenCache {
        VerifiedTokenCache::with_budget(capacity, DEFAULT_BYTES, seed)
    }

    /// At most `capacity` verified tokens weighing at most `max_bytes`, plus an eighth of
    /// both (at least 16 entries) for rejected ones. `seed` keys the slot hash: random per VM
    /// (the host passes it in).
    pub fn with_budget(capacity: usize, max_bytes: usize, seed: u64) -> VerifiedTokenCache {
        VerifiedTokenCache {
            verified: Lru::new(capacity, max_bytes),
            rejected: Lru::new((capacity / 8).max(16), max_bytes / 8),
            seed,
        }
    }

    /// Entries dropped for room since the last call, (verified, rejected): pushed out by an
    /// insertion or too heavy to store (not those that expired or went stale).
    pub fn take_evictions(&mut self) -> (u64, u64) {
        (self.verified.take_evictions(), self.rejected.take_evictions())
    }

    /// Verified tokens held.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.len() == 0
    }

    fn hash(&self, token: &str) -> u64 {
        slot_hash(self.seed, token.as_bytes())
    }

    /// The verified claims of exactly this token, if it was verified for `provider` under key
    /// generation `generation` and can still be valid at `now`.
    pub fn get(&mut self, token: &str, provider: usize, generation: u64, now: u64) -> Option<CachedToken> {
        let h = self.hash(token);
        let e = self.verified.get(h, token.as_bytes())?;
        // Another provider's entry is not judged by this provider's key generation: asking
        // each provider reading a header in turn must not drop it.
        if e.provider != provider {
            return None;
        }
        if now > e.valid_until || e.generation != generation {
            // Past its exp (or verified under keys that are gone): it can never hit again.
            self.verified.remove(h, token.as_bytes());
            return None;
        }
        Some(e.token.clone())
    }

    /// Remembers a token whose signature verified, until `valid_until` (seconds since the
    /// epoch: its `exp` plus the clock skew; `u64::MAX` without `exp`). The least recently
    /// used entry goes first when full.
    pub fn insert(&mut self, token: &str, provider: usize, generation: u64, verified: CachedToken, valid_until: u64) {
        let h = self.hash(token);
        self.rejected.remove(h, token.as_bytes());
        self.verified.insert(
            h,
            token.as_bytes(),
            Entry {
                provider,
                generation,
                valid_until,
                token: verified,
            },
        );
    }

    /// The provider whose signature check this token, found at `location`, failed within the
    /// last [`NEGATIVE_TTL_SECONDS`], if the keys of every provider are still those it failed
    /// with. Found elsewhere, other providers read it: no answer.
    pub fn rejected(&mut self, token: &str, location: usize, generations: &[u64], now: u64) -> Option<usize> {
        let h = self.hash(token);
        let r = self.rejected.get(h, token.as_bytes())?;
        if now >= r.until || r.generations != generations {
            self.rejected.remove(h, token.as_bytes());
            return None;
        }
        (r.location == location).then_some(r.provider)
    }

    /// Remembers, briefly, that this token's signature failed for `provider`.
    pub fn insert_rejected(&mut self, token: &str, location: usize, provider: usize, generations: Vec<u64>, now: u64) {
        let h = self.hash(token);
        self.rejected.insert(
            h,
            token.as_bytes(),
            Rejected {
                location,
                provider,
                generations,
                until: now.saturating_add(NEGATIVE_TTL_SECONDS),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        let base: Vec<u8> = (0..40u8).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, a));
            assert!(!same_bytes(a, &base[..len + 1]), "lengths differ at {len}");
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x80;
                assert!(!same_bytes(a, &b), "byte {at} of {len}");
            }
        }
    }
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const SEED: u64 = 0x0123_4567_89ab_cdef;

    impl Weigh for u32 {
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    impl Weigh for u64 {
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    fn claims(sub: &str) -> CachedToken {
        cached(json!({"sub": sub}), "")
    }

    /// A cached token with these claims and payload segment.
    fn cached(claims: Value, payload_b64: &str) -> CachedToken {
        let m = Rc::new(claims.as_object().cloned().unwrap());
        let key = claimguard_testkeys::TestKey::generate(crate::crypto::alg::Alg::ES256, "k");
        let cfg = json!({"providers": [{"issuer": "i", "jwks": key.jwks().to_string()}]});
        let c = crate::config::Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let checks = crate::verify::ClaimChecks::new(&c.providers[0], &m);
        let sub = m.get("sub").and_then(Value::as_str).unwrap_or("").to_string();
        CachedToken {
            claims: m.clone(),
            identity_claims: m,
            payload_b64: payload_b64.into(),
            checks,
            who: TokenOwner {
                provider: "p".into(),
                issuer: "i".into(),
                subject: Some(sub.as_str().into()),
                principal: format!("i/{sub}").into(),
            },
        }
    }

    fn put(c: &mut VerifiedTokenCache, token: &str) {
        c.insert(token, 0, 0, claims(token), u64::MAX);
    }

    fn has(c: &mut VerifiedTokenCache, token: &str) -> bool {
        c.get(token, 0, 0, NOW).is_some()
    }

    #[test]
    fn hits_only_for_the_same_provider_and_key_generation() {
        let mut c = VerifiedTokenCache::new(8, SEED);
        let h = "a.b.c";
        c.insert(h, 0, 1, claims("alice"), u64::MAX);
        assert_eq!(c.get(h, 0, 1, NOW).unwrap().claims["sub"], "alice");
        assert!(c.get(h, 1, 1, NOW).is_none(), "another provider");
        assert!(c.get("a.b.d", 0, 1, NOW).is_none());
        assert!(c.get(h, 0, 2, NOW).is_none(), "keys changed since");
        assert!(c.get(h, 0, 1, NOW).is_none(), "and the stale entry is gone for good");
        assert!(c.is_empty());
    }

    #[test]
    fn another_providers_entry_survives_a_lookup_under_other_keys() {
        // Two providers read Authorization: the first with fetched keys (generation 3), the
        // second inline (0). Looking the second's token up for the first, as the readers are
        // asked in turn, must leave it cached.
        let mut c = VerifiedTokenCache::new(8, SEED);
        let h = "a.b.c";
        c.insert(h, 1, 0, claims("bob"), u64::MAX);
        assert!(c.get(h, 0, 3, NOW).is_none());
        assert_eq!(c.get(h, 1, 0, NOW).unwrap().claims["sub"], "bob");
    }

    #[test]
    fn bounded() {
        let mut c = VerifiedTokenCache::new(3, SEED);
        for i in 0..10 {
            put(&mut c, &i.to_string());
        }
        assert_eq!(c.len(), 3);
        assert!(has(&mut c, "9"));
        assert!(!has(&mut c, "0"));
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut c = VerifiedTokenCache::new(3, SEED);
        for t in ["a", "b", "c"] {
            put(&mut c, t);
        }
        // "a" is the oldest insert, but was just used: "b" goes instead.
        assert!(has(&mut c, "a"));
        put(&mut c, "d");
        assert!(has(&mut c, "a"));
        assert!(!has(&mut c, "b"));
        assert!(has(&mut c, "c"));
        assert!(has(&mut c, "d"));
        // Re-inserting counts as a use and never duplicates.
        put(&mut c, "c");
        put(&mut c, "e");
        assert_eq!(c.len(), 3);
        assert!(!has(&mut c, "a"));
        assert!(has(&mut c, "c"));
    }

    #[test]
    fn entries_end_at_their_valid_until() {
        let mut c = VerifiedTokenCache::new(8, SEED);
        let h = "t";
        c.insert(h, 0, 0, claims("t"), NOW + 60);
        assert!(c.get(h, 0, 0, NOW + 60).is_some());
        assert!(c.get(h, 0, 0, NOW + 61).is_none());
        assert!(c.is_empty(), "an expired entry is dropped when met");
    }

    #[test]
    fn rejections_are_remembered_briefly_and_per_key_generation() {
        let mut c = VerifiedTokenCache::new(64, SEED);
        let h = "bad";
        c.insert_rejected(h, 0, 1, vec![0, 3], NOW);
        assert_eq!(c.rejected(h, 0, &[0, 3], NOW), Some(1));
        assert_eq!(c.rejected(h, 1, &[0, 3], NOW), None, "another location");
        assert_eq!(c.rejected(h, 0, &[0, 3], NOW + NEGATIVE_TTL_SECONDS - 1), Some(1));
        assert_eq!(
            c.rejected(h, 0, &[0, 3], NOW + NEGATIVE_TTL_SECONDS),
            None,
            "window over"
        );
        c.insert_rejected(h, 0, 1, vec![0, 3], NOW);
        assert_eq!(c.rejected(h, 0, &[0, 4], NOW), None, "a key changed");
        assert_eq!(c.rejected(h, 0, &[0, 3], NOW), None, "and the verdict is gone");
        assert!(c.get(h, 1, 3, NOW).is_none(), "never a positive hit");
    }

    #[test]
    fn bad_tokens_cannot_evict_good_ones() {
        let mut c = VerifiedTokenCache::new(16, SEED);
        for i in 0..16 {
            put(&mut c, &format!("good{i}"));
        }
        for i in 0..10_000 {
            c.insert_rejected(&format!("bad{i}"), 0, 0, vec![0], NOW);
        }
        assert_eq!(c.len(), 16);
        assert!((0..16).all(|i| has(&mut c, &format!("good{i}"))));
        assert!(c.rejected.len() <= 16);
    }

    #[test]
    fn a_shared_slot_is_never_a_hit_for_the_other_token() {
        // Two tokens forced into one slot (same hash): each lookup still compares the bytes.
        let mut l: Lru<u32> = Lru::new(8, usize::MAX);
        l.insert(7, b"token-a", 1);
        assert_eq!(l.get(7, b"token-b"), None);
        assert_eq!(l.get(7, b"token-a"), Some(&1));
        l.insert(7, b"token-b", 2);
        assert_eq!(l.get(7, b"token-a"), None, "the later token took the slot");
        assert_eq!(l.get(7, b"token-b"), Some(&2));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn lru_matches_a_reference_model() {
        // Random inserts, lookups and removals against a plain Vec kept in recency order.
        let mut l: Lru<u64> = Lru::new(5, usize::MAX);
        let mut model: Vec<(String, u64)> = Vec::new(); // most recent first
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("t{}", x % 9);
            let h = slot_hash(SEED, key.as_bytes());
            match (x >> 8) % 3 {
                0 => {
                    l.insert(h, key.as_bytes(), step);
                    model.retain(|(k, _)| *k != key);
                    model.insert(0, (key, step));
                    model.truncate(5);
                }
                1 => {
                    let want = model.iter().position(|(k, _)| *k == key).map(|i| model.remove(i));
                    let got = l.get(h, key.as_bytes()).copied();
                    assert_eq!(got, want.as_ref().map(|(_, v)| *v), "step {step}");
                    if let Some(e) = want {
                        model.insert(0, e);
                    }
                }
                _ => {
                    l.remove(h, key.as_bytes());
                    model.retain(|(k, _)| *k != key);
                }
            }
            assert_eq!(l.len(), model.len());
            assert!(l.nodes.len() <= 6, "the slab stays bounded");
        }
    }

    /// Key `n`: its length depends only on `n`, from 2 to about 600 bytes.
    fn weighted_key(n: u64) -> String {
        format!("t{n}{}", "x".repeat((n * 97 % 600) as usize))
    }

    #[test]
    fn lru_with_a_byte_budget_matches_a_reference_model() {
        // As above, with keys of many lengths and a budget of a few of them: an insertion
        // evicts from the least recently used end until both bounds hold, and counts each.
        let per_entry = ALLOC_HEADER + overhead::<u64>();
        let max_bytes = 1500 + 4 * per_entry;
        let mut l: Lru<u64> = Lru::new(6, max_bytes);
        let mut model: Vec<(String, u64)> = Vec::new(); // most recent first
        let weight = |k: &str| k.len() + per_entry;
        let mut evicted = 0u64;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = weighted_key(x % 13);
            let h = slot_hash(SEED, key.as_bytes());
            match (x >> 8) % 3 {
                0 => {
                    l.insert(h, key.as_bytes(), step);
                    model.retain(|(k, _)| *k != key);
                    model.insert(0, (key, step));
                    while model.len() > 6 || model.iter().map(|(k, _)| weight(k)).sum::<usize>() > max_bytes {
                        model.pop();
                        evicted += 1;
                    }
                }
                1 => {
                    let want = model.iter().position(|(k, _)| *k == key).map(|i| model.remove(i));
                    let got = l.get(h, key.as_bytes()).copied();
                    assert_eq!(got, want.as_ref().map(|(_, v)| *v), "step {step}");
                    if let Some(e) = want {
                        model.insert(0, e);
                    }
                }
                _ => {
                    l.remove(h, key.as_bytes());
                    model.retain(|(k, _)| *k != key);
                }
            }
            assert_eq!(l.len(), model.len(), "step {step}");
            assert_eq!(
                l.bytes(),
                model.iter().map(|(k, _)| weight(k)).sum::<usize>(),
                "step {step}"
            );
            assert!(l.bytes() <= max_bytes);
        }
        assert_eq!(l.take_evictions(), evicted);
        assert!(evicted > 1000, "the byte bound was exercised: {evicted}");
        assert_eq!(l.take_evictions(), 0, "taken");
    }

    #[test]
    fn an_entry_heavier_than_the_budget_is_not_stored() {
        let mut l: Lru<u64> = Lru::new(8, 4096);
        l.insert(1, b"small", 1);
        let big = vec![b'x'; 4096];
        l.insert(2, &big, 2);
        assert_eq!(l.get(2, &big), None);
        assert_eq!(l.get(1, b"small"), Some(&1), "nothing was pushed out for it");
        assert_eq!(l.len(), 1);
        assert_eq!(l.take_evictions(), 1, "counted as dropped");
        // The same through the token cache: a token above the rejected cache's budget (an
        // eighth) is verified again next time, one below the main budget is kept.
        let mut c = VerifiedTokenCache::with_budget(64, 64 << 10, SEED);
        let token = "t".repeat(9 << 10);
        c.insert_rejected(&token, 0, 0, vec![0], NOW);
        assert_eq!(c.rejected(&token, 0, &[0], NOW), None);
        put(&mut c, &token);
        assert!(has(&mut c, &token));
        assert_eq!(c.take_evictions(), (0, 1));
        let huge = "t".repeat(64 << 10);
        put(&mut c, &huge);
        assert!(!has(&mut c, &huge));
        assert!(has(&mut c, &token));
        assert_eq!(c.take_evictions(), (1, 0));
    }

    #[test]
    fn a_flood_of_long_tokens_stays_within_the_byte_budgets() {
        // 10k distinct 6 KiB tokens, each verified (with a 4.5 KiB payload) and rejected, under
        // the default budgets: far more than fit, far fewer than the entry bound.
        let mut c = VerifiedTokenCache::new(DEFAULT_CAPACITY, SEED);
        let verified = cached(json!({"sub": "s", "groups": ["a", "b"]}), &"p".repeat(4608));
        let hot = "hot".repeat(2048);
        c.insert(&hot, 0, 0, verified.clone(), u64::MAX);
        let token = |i: usize| format!("{i:06}{}", "t".repeat(6 << 10));
        let n = 10_000;
        for i in 0..n {
            c.insert(&token(i), 0, 0, verified.clone(), u64::MAX);
            c.insert_rejected(&format!("bad{}", token(i)), 0, 0, vec![0], NOW);
            assert!(c.verified.bytes() <= DEFAULT_BYTES, "step {i}");
            assert!(c.rejected.bytes() <= DEFAULT_BYTES / 8, "step {i}");
            // Used on every request: never the least recently used.
            assert!(has(&mut c, &hot), "step {i}");
        }
        let (kept, kept_bad) = (c.len(), c.rejected.len());
        assert!((300..DEFAULT_CAPACITY / 4).contains(&kept), "{kept}");
        assert!(kept_bad > 50 && kept_bad < kept, "{kept_bad}");
        assert!(c.verified.bytes() > DEFAULT_BYTES * 9 / 10, "the budget is used");
        // Every entry that went was counted, and the ones kept are the most recent.
        assert_eq!(c.take_evictions(), ((n + 1 - kept) as u64, (n - kept_bad) as u64));
        assert!((n + 1 - kept..n).all(|i| has(&mut c, &token(i))));
        assert!(!has(&mut c, &token(n - kept)));
        assert!((n - kept_bad..n).all(|i| c.rejected(&format!("bad{}", token(i)), 0, &[0], NOW).is_some()));
        assert!(c
            .rejected(&format!("bad{}", token(n - kept_bad - 1)), 0, &[0], NOW)
            .is_none());
    }

    #[test]
    fn typical_entries_weigh_a_few_kib() {
        // A Keycloak access token: 21 claims, 1 KiB of payload, RS256 (a 342-byte signature).
        let claims = json!({
            "exp": NOW + 300, "iat": NOW, "auth_time": NOW, "jti": "0b8e5e6c-3a3b-4e0f-9a3e-0e4b6c0a7b7e",
            "iss": "https://keycloak.example.com/realms/prod", "aud": ["orders", "account"],
            "sub": "f2d4a1c6-7c1e-4bd6-9f8e-3f0d1b2a9c55", "typ": "Bearer", "azp": "web-frontend",
            "sid": "5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", "acr": "1",
            "allowed-origins": ["https://app.example.com"],
            "realm_access": {"roles": ["offline_access", "uma_authorization", "default-roles-prod", "reader"]},
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]},
                                "orders": {"roles": ["orders:read", "orders:write"]}},
            "scope": "openid email profile orders", "email_verified": true, "name": "Alice Example",
            "preferred_username": "alice", "given_name": "Alice", "family_name": "Example",
            "email": "alice@example.com"
        });
        let payload = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims.to_string());
        let token = format!(
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.{payload}.{}",
            "s".repeat(342)
        );
        let mut l: Lru<Entry> = Lru::new(8, usize::MAX);
        let entry = Entry {
            provider: 0,
            generation: 0,
            valid_until: u64::MAX,
            token: cached(claims, &payload),
        };
        l.insert(1, token.as_bytes(), entry);
        let (token_len, weight) = (token.len(), l.bytes());
        // On a 64-bit target (where the tests run); wasm32's smaller pointers and values make
        // it about 7.5 KiB (its claims map: 4.3 KiB measured, 4.7 KiB estimated).
        assert!((1300..1500).contains(&token_len), "{token_len}");
        assert!((9 << 10..12 << 10).contains(&weight), "{weight}");
        // A minimal ES256 token: five claims, 0.25 KiB (about 1.3 KiB in wasm32).
        let claims =
            json!({"iss": "https://idp.example.com", "aud": "api", "sub": "alice", "exp": NOW + 300, "iat": NOW});
        let payload = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims.to_string());
        let token = format!("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.{payload}.{}", "s".repeat(86));
        let entry = Entry {
            provider: 0,
            generation: 0,
            valid_until: u64::MAX,
            token: cached(claims, &payload),
        };
        l.insert(2, token.as_bytes(), entry);
        let weight = l.bytes() - weight;
        assert!((1 << 10..2 << 10).contains(&weight), "{weight}");
    }

    #[test]
    fn removed_entries_keep_no_heap() {
        let mut c = VerifiedTokenCache::with_budget(4, 1 << 20, SEED);
        for t in ["a", "b", "c"] {
            put(&mut c, t);
        }
        c.insert(&"d".repeat(1000), 0, 0, claims("d"), NOW);
        let before = c.verified.bytes();
        // Expired: dropped when met, its node emptied for reuse.
        assert!(c.get(&"d".repeat(1000), 0, 0, NOW + 1).is_none());
        assert!(c.verified.bytes() < before - 1000);
        assert!(c
            .verified
            .nodes
            .iter()
            .filter(|n| n.value.is_none())
            .all(|n| n.key.is_empty()));
        assert_eq!(c.take_evictions(), (0, 0), "going stale is not an eviction");
    }

    #[test]
    fn slot_hash_depends_on_every_byte_the_length_and_the_seed() {
        let base = slot_hash(SEED, b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln");
        let mut t = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln".to_vec();
        for i in 0..t.len() {
            t[i] ^= 1;
            assert_ne!(slot_hash(SEED, &t), base, "byte {i}");
            t[i] ^= 1;
        }
        assert_ne!(slot_hash(SEED, b"abc"), slot_hash(SEED, b"abc\0"));
        assert_ne!(slot_hash(SEED, b"abc"), slot_hash(SEED ^ 1, b"abc"));
    }

    #[test]
    fn fingerprints_are_the_first_16_hex_digits_of_the_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(token_fingerprint("abc"), "ba7816bf8f01cfea");
    }
}
