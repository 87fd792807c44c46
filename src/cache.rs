//! The verified-token cache: a bounded, per-VM map from the SHA-256 of a token's exact bytes to
//! its already verified claims. A hit skips parsing and the signature check (the expensive
//! part: about a millisecond for RS256 in V8) but never the time-dependent claim checks,
//! which run on every request. An entry is only valid for the provider and key-set
//! generation it was verified under, so a rotated-out key stops being trusted at once.

use rsa::sha2::{Digest, Sha256};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};

pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    provider: usize,
    generation: u64,
    claims: Map<String, Value>,
    /// Where the token was found and its kid-less payload segment, for identity headers.
    payload_b64: String,
}

/// What a hit returns.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedToken {
    pub claims: Map<String, Value>,
    pub payload_b64: String,
}

#[derive(Debug)]
pub struct VerifiedTokenCache {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokenCache {
    pub fn new(capacity: usize) -> VerifiedTokenCache {
        VerifiedTokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The verified claims of exactly this token, if it was verified for `provider` under key
    /// generation `generation`.
    pub fn get(&self, hash: &[u8; 32], provider: usize, generation: u64) -> Option<CachedToken> {
        self.map
            .get(hash)
            .filter(|e| e.provider == provider && e.generation == generation)
            .map(|e| CachedToken {
                claims: e.claims.clone(),
                payload_b64: e.payload_b64.clone(),
            })
    }

    /// Remembers a token whose signature verified. Oldest entries go first when full.
    pub fn insert(
        &mut self,
        hash: [u8; 32],
        provider: usize,
        generation: u64,
        claims: &Map<String, Value>,
        payload_b64: &str,
    ) {
        if self.map.contains_key(&hash) {
            self.map.remove(&hash);
            self.order.retain(|h| *h != hash);
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(
            hash,
            Entry {
                provider,
                generation,
                claims: claims.clone(),
                payload_b64: payload_b64.to_string(),
            },
        );
        self.order.push_back(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(sub: &str) -> Map<String, Value> {
        json!({"sub": sub}).as_object().cloned().unwrap()
    }

    #[test]
    fn hits_only_for_the_same_provider_and_key_generation() {
        let mut c = VerifiedTokenCache::new(8);
        let h = token_hash("a.b.c");
        c.insert(h, 0, 1, &claims("alice"), "b");
        assert_eq!(c.get(&h, 0, 1).unwrap().claims["sub"], "alice");
        assert!(c.get(&h, 1, 1).is_none(), "another provider");
        assert!(c.get(&h, 0, 2).is_none(), "keys changed since");
        assert!(c.get(&token_hash("a.b.d"), 0, 1).is_none());
    }

    #[test]
    fn bounded() {
        let mut c = VerifiedTokenCache::new(3);
        for i in 0..10 {
            c.insert(token_hash(&i.to_string()), 0, 0, &claims("x"), "");
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&token_hash("9"), 0, 0).is_some());
        assert!(c.get(&token_hash("0"), 0, 0).is_none());
    }
}
