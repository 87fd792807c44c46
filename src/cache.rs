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

use rsa::sha2::{Digest, Sha256};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Entries per VM unless the config's `jwtCacheSize` says otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The largest `jwtCacheSize` accepted (an entry holds a token's claims: about 1 KiB).
pub const MAX_CAPACITY: usize = 100_000;
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
    key: Box<[u8]>,
    value: V,
    prev: u32,
    next: u32,
}

/// A bounded map from byte strings (tokens; the decision memo's request keys) to values that
/// forgets the least recently used first: a slab of nodes in a doubly linked recency list,
/// found through their [`slot_hash`]. Every operation is O(1). Two keys with the same hash
/// share a slot: the later one replaces the earlier.
#[derive(Debug)]
pub(crate) struct Lru<V> {
    slots: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    nodes: Vec<Node<V>>,
    /// Most and least recently used.
    head: u32,
    tail: u32,
    /// Nodes of removed entries, for reuse (their values are stale until overwritten).
    free: Vec<u32>,
    capacity: usize,
}

impl<V> Lru<V> {
    pub(crate) fn new(capacity: usize) -> Lru<V> {
        Lru {
            slots: HashMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: Vec::new(),
            capacity: capacity.clamp(1, NIL as usize - 1),
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
        self.nodes.get(i as usize).map(|n| &n.value)
    }

    fn remove_node(&mut self, i: u32) {
        let Some(hash) = self.nodes.get(i as usize).map(|n| n.hash) else {
            return;
        };
        self.unlink(i);
        if self.slots.get(&hash) == Some(&i) {
            self.slots.remove(&hash);
        }
        self.free.push(i);
    }

    fn remove(&mut self, hash: u64, key: &[u8]) {
        if let Some(i) = self.find(hash, key) {
            self.remove_node(i);
        }
    }

    pub(crate) fn insert(&mut self, hash: u64, key: &[u8], value: V) {
        // Whatever holds the slot (this token again, or another with the same hash) goes.
        if let Some(&i) = self.slots.get(&hash) {
            self.remove_node(i);
        }
        while self.slots.len() >= self.capacity && self.tail != NIL {
            self.remove_node(self.tail);
        }
        let node = Node {
            hash,
            key: key.into(),
            value,
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

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
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
    /// Whose token it is, as [`crate::decision::Identity`] names it.
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
    /// At most `capacity` verified tokens, plus an eighth of that (at least 16) rejected ones.
    /// `seed` keys the slot hash: random per VM (the host passes it in).
    pub fn new(capacity: usize, seed: u64) -> VerifiedTokenCache {
        VerifiedTokenCache {
            verified: Lru::new(capacity),
            rejected: Lru::new((capacity / 8).max(16)),
            seed,
        }
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
        if now > e.valid_until || e.generation != generation {
            // Past its exp (or verified under keys that are gone): it can never hit again.
            self.verified.remove(h, token.as_bytes());
            return None;
        }
        if e.provider != provider {
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

    /// The provider whose signature check this token failed within the last
    /// [`NEGATIVE_TTL_SECONDS`], if the keys of every provider are still those it failed with.
    pub fn rejected(&mut self, token: &str, generations: &[u64], now: u64) -> Option<usize> {
        let h = self.hash(token);
        let r = self.rejected.get(h, token.as_bytes())?;
        if now >= r.until || r.generations != generations {
            self.rejected.remove(h, token.as_bytes());
            return None;
        }
        Some(r.provider)
    }

    /// Remembers, briefly, that this token's signature failed for `provider`.
    pub fn insert_rejected(&mut self, token: &str, provider: usize, generations: Vec<u64>, now: u64) {
        let h = self.hash(token);
        self.rejected.insert(
            h,
            token.as_bytes(),
            Rejected {
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

    fn claims(sub: &str) -> CachedToken {
        let m = Rc::new(json!({"sub": sub}).as_object().cloned().unwrap());
        let key = crate::devtools::keys::TestKey::generate(crate::alg::Alg::ES256, "k");
        let cfg = json!({"providers": [{"issuer": "i", "jwks": key.jwks().to_string()}]});
        let c = crate::config::Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let checks = crate::verify::ClaimChecks::new(&c.providers[0], &m);
        CachedToken {
            claims: m.clone(),
            identity_claims: m,
            payload_b64: "".into(),
            checks,
            who: TokenOwner {
                provider: "p".into(),
                issuer: "i".into(),
                subject: Some(sub.into()),
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
        c.insert_rejected(h, 1, vec![0, 3], NOW);
        assert_eq!(c.rejected(h, &[0, 3], NOW), Some(1));
        assert_eq!(c.rejected(h, &[0, 3], NOW + NEGATIVE_TTL_SECONDS - 1), Some(1));
        assert_eq!(c.rejected(h, &[0, 3], NOW + NEGATIVE_TTL_SECONDS), None, "window over");
        c.insert_rejected(h, 1, vec![0, 3], NOW);
        assert_eq!(c.rejected(h, &[0, 4], NOW), None, "a key changed");
        assert_eq!(c.rejected(h, &[0, 3], NOW), None, "and the verdict is gone");
        assert!(c.get(h, 1, 3, NOW).is_none(), "never a positive hit");
    }

    #[test]
    fn bad_tokens_cannot_evict_good_ones() {
        let mut c = VerifiedTokenCache::new(16, SEED);
        for i in 0..16 {
            put(&mut c, &format!("good{i}"));
        }
        for i in 0..10_000 {
            c.insert_rejected(&format!("bad{i}"), 0, vec![0], NOW);
        }
        assert_eq!(c.len(), 16);
        assert!((0..16).all(|i| has(&mut c, &format!("good{i}"))));
        assert!(c.rejected.len() <= 16);
    }

    #[test]
    fn a_shared_slot_is_never_a_hit_for_the_other_token() {
        // Two tokens forced into one slot (same hash): each lookup still compares the bytes.
        let mut l: Lru<u32> = Lru::new(8);
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
        let mut l: Lru<u64> = Lru::new(5);
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
