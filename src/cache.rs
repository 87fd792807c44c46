//! The verified-token cache: a bounded, per-VM LRU map from the SHA-256 of a token's exact
//! bytes to its already verified claims. A hit skips parsing and the signature check (the
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
use std::collections::{BTreeMap, HashMap};

/// Entries per VM unless the config's `jwtCacheSize` says otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The largest `jwtCacheSize` accepted (an entry holds a token's claims: about 1 KiB).
pub const MAX_CAPACITY: usize = 100_000;
/// How long a failed signature check is remembered.
pub const NEGATIVE_TTL_SECONDS: u64 = 5;

/// A bounded map that forgets the least recently used key first.
#[derive(Debug)]
struct Lru<V> {
    map: HashMap<[u8; 32], (V, u64)>,
    /// Last use → key; the smallest is the least recently used.
    order: BTreeMap<u64, [u8; 32]>,
    clock: u64,
    capacity: usize,
}

impl<V> Lru<V> {
    fn new(capacity: usize) -> Lru<V> {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The value, marked as just used.
    fn get(&mut self, key: &[u8; 32]) -> Option<&V> {
        let now = self.tick();
        let (value, used) = self.map.get_mut(key)?;
        self.order.remove(used);
        *used = now;
        self.order.insert(now, *key);
        Some(value)
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some((_, used)) = self.map.remove(key) {
            self.order.remove(&used);
        }
    }

    fn insert(&mut self, key: [u8; 32], value: V) {
        self.remove(&key);
        while self.map.len() >= self.capacity {
            match self.order.pop_first() {
                Some((_, old)) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        let now = self.tick();
        self.map.insert(key, (value, now));
        self.order.insert(now, key);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    provider: usize,
    generation: u64,
    /// Seconds since the epoch after which the token can no longer pass (`exp` + skew).
    valid_until: u64,
    claims: Map<String, Value>,
    /// The payload segment, for `outputPayloadToHeader`.
    payload_b64: String,
}

#[derive(Debug, Clone)]
struct Rejected {
    /// The provider whose check failed.
    provider: usize,
    /// Every provider's key generation when it failed: any key change forgets the verdict.
    generations: Vec<u64>,
    until: u64,
}

/// What a hit returns.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedToken {
    pub claims: Map<String, Value>,
    pub payload_b64: String,
}

#[derive(Debug)]
pub struct VerifiedTokenCache {
    verified: Lru<Entry>,
    rejected: Lru<Rejected>,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokenCache {
    /// At most `capacity` verified tokens, plus an eighth of that (at least 16) rejected ones.
    pub fn new(capacity: usize) -> VerifiedTokenCache {
        VerifiedTokenCache {
            verified: Lru::new(capacity),
            rejected: Lru::new((capacity / 8).max(16)),
        }
    }

    /// Verified tokens held.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.len() == 0
    }

    /// The verified claims of exactly this token, if it was verified for `provider` under key
    /// generation `generation` and can still be valid at `now`.
    pub fn get(&mut self, hash: &[u8; 32], provider: usize, generation: u64, now: u64) -> Option<CachedToken> {
        let e = self.verified.get(hash)?;
        if now > e.valid_until || e.generation != generation {
            // Past its exp (or verified under keys that are gone): it can never hit again.
            self.verified.remove(hash);
            return None;
        }
        if e.provider != provider {
            return None;
        }
        Some(CachedToken {
            claims: e.claims.clone(),
            payload_b64: e.payload_b64.clone(),
        })
    }

    /// Remembers a token whose signature verified, until `valid_until` (seconds since the
    /// epoch: its `exp` plus the clock skew; `u64::MAX` without `exp`). The least recently
    /// used entry goes first when full.
    pub fn insert(
        &mut self,
        hash: [u8; 32],
        provider: usize,
        generation: u64,
        claims: &Map<String, Value>,
        payload_b64: &str,
        valid_until: u64,
    ) {
        self.rejected.remove(&hash);
        self.verified.insert(
            hash,
            Entry {
                provider,
                generation,
                valid_until,
                claims: claims.clone(),
                payload_b64: payload_b64.to_string(),
            },
        );
    }

    /// The provider whose signature check this token failed within the last
    /// [`NEGATIVE_TTL_SECONDS`], if the keys of every provider are still those it failed with.
    pub fn rejected(&mut self, hash: &[u8; 32], generations: &[u64], now: u64) -> Option<usize> {
        let r = self.rejected.get(hash)?;
        if now >= r.until || r.generations != generations {
            self.rejected.remove(hash);
            return None;
        }
        Some(r.provider)
    }

    /// Remembers, briefly, that this token's signature failed for `provider`.
    pub fn insert_rejected(&mut self, hash: [u8; 32], provider: usize, generations: Vec<u64>, now: u64) {
        self.rejected.insert(
            hash,
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
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn claims(sub: &str) -> Map<String, Value> {
        json!({"sub": sub}).as_object().cloned().unwrap()
    }

    fn put(c: &mut VerifiedTokenCache, token: &str) {
        c.insert(token_hash(token), 0, 0, &claims(token), "", u64::MAX);
    }

    fn has(c: &mut VerifiedTokenCache, token: &str) -> bool {
        c.get(&token_hash(token), 0, 0, NOW).is_some()
    }

    #[test]
    fn hits_only_for_the_same_provider_and_key_generation() {
        let mut c = VerifiedTokenCache::new(8);
        let h = token_hash("a.b.c");
        c.insert(h, 0, 1, &claims("alice"), "b", u64::MAX);
        assert_eq!(c.get(&h, 0, 1, NOW).unwrap().claims["sub"], "alice");
        assert!(c.get(&h, 1, 1, NOW).is_none(), "another provider");
        assert!(c.get(&token_hash("a.b.d"), 0, 1, NOW).is_none());
        assert!(c.get(&h, 0, 2, NOW).is_none(), "keys changed since");
        assert!(c.get(&h, 0, 1, NOW).is_none(), "and the stale entry is gone for good");
        assert!(c.is_empty());
    }

    #[test]
    fn bounded() {
        let mut c = VerifiedTokenCache::new(3);
        for i in 0..10 {
            put(&mut c, &i.to_string());
        }
        assert_eq!(c.len(), 3);
        assert!(has(&mut c, "9"));
        assert!(!has(&mut c, "0"));
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut c = VerifiedTokenCache::new(3);
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
        let mut c = VerifiedTokenCache::new(8);
        let h = token_hash("t");
        c.insert(h, 0, 0, &claims("t"), "", NOW + 60);
        assert!(c.get(&h, 0, 0, NOW + 60).is_some());
        assert!(c.get(&h, 0, 0, NOW + 61).is_none());
        assert!(c.is_empty(), "an expired entry is dropped when met");
    }

    #[test]
    fn rejections_are_remembered_briefly_and_per_key_generation() {
        let mut c = VerifiedTokenCache::new(64);
        let h = token_hash("bad");
        c.insert_rejected(h, 1, vec![0, 3], NOW);
        assert_eq!(c.rejected(&h, &[0, 3], NOW), Some(1));
        assert_eq!(c.rejected(&h, &[0, 3], NOW + NEGATIVE_TTL_SECONDS - 1), Some(1));
        assert_eq!(c.rejected(&h, &[0, 3], NOW + NEGATIVE_TTL_SECONDS), None, "window over");
        c.insert_rejected(h, 1, vec![0, 3], NOW);
        assert_eq!(c.rejected(&h, &[0, 4], NOW), None, "a key changed");
        assert_eq!(c.rejected(&h, &[0, 3], NOW), None, "and the verdict is gone");
        assert!(c.get(&h, 1, 3, NOW).is_none(), "never a positive hit");
    }

    #[test]
    fn bad_tokens_cannot_evict_good_ones() {
        let mut c = VerifiedTokenCache::new(16);
        for i in 0..16 {
            put(&mut c, &format!("good{i}"));
        }
        for i in 0..10_000 {
            c.insert_rejected(token_hash(&format!("bad{i}")), 0, vec![0], NOW);
        }
        assert_eq!(c.len(), 16);
        assert!((0..16).all(|i| has(&mut c, &format!("good{i}"))));
        assert!(c.rejected.len() <= 16);
    }
}
