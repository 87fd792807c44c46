//! AWS ALB signing keys: per-`kid` public keys, fetched as PEM from the ALB's regional key
//! endpoint and shared across worker VMs.
//!
//! Keys by `kid` never change, so fetched keys are kept for the life of the configuration.
//! Across worker VMs, shared data holds (prefix = the provider's key URL):
//! * `P|key|KID`: the key as a JWK (published once, by whichever VM fetched it);
//! * `P|neg|KID`: until when a `kid` the endpoint did not serve is not asked for again;
//! * `P|want`: the kids some VM is waiting for (bounded);
//! * `P|lease`: which VM may fetch now, and `P|last`: when the last fetch started.

use crate::keys::jwk::{parse_jwks, KeySet};
use crate::keys::remote::HttpUrl;
use crate::keys::remote::{FetchResult, KeyWait, SharedStore};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The header an ALB puts its user claims token in.
pub const ALB_DATA_HEADER: &str = "x-amzn-oidc-data";
/// Headers an ALB adds that carry no signature of their own: anyone in front of the mesh could
/// have set them, so they are removed unless a provider says to keep them.
pub const ALB_UNSIGNED_HEADERS: &[&str] = &["x-amzn-oidc-identity", "x-amzn-oidc-accesstoken"];

/// `8-4-4-4-12` hexadecimal digits: the only shape of `kid` that is ever put in a URL path.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8usize, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point (RFC 5480).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A PEM `PUBLIC KEY` holding a P-256 key → the equivalent JWK (then checked like any JWK:
/// the point must be on the curve).
pub fn pem_to_jwk(pem: &str, kid: &str) -> Result<Value, String> {
    let text = pem.trim();
    let body = text
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("not a PEM PUBLIC KEY block")?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(b64).map_err(|_| "PEM body is not base64")?;
    let point = der
        .strip_prefix(&P256_SPKI_PREFIX[..])
        .filter(|p| p.len() == 65 && p.first() == Some(&0x04))
        .ok_or("not an uncompressed P-256 public key (ALB keys are ES256)")?;
    let (x, y) = (
        point.get(1..33).unwrap_or_default(),
        point.get(33..65).unwrap_or_default(),
    );
    Ok(
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
              "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}),
    )
}

/// A verified-ALB provider, compiled.
#[derive(Debug, Clone)]
pub struct AlbProvider {
    pub region: String,
    pub signers: Vec<String>,
    /// Base URL; a key is fetched from `BASE/KID`.
    pub keys_url: HttpUrl,
    pub cluster: String,
    pub timeout_ms: u64,
    pub wait_ms: u64,
    /// At most one key fetch per this interval per proxy.
    pub min_interval_ms: u64,
    /// Leave `x-amzn-oidc-identity` / `x-amzn-oidc-accesstoken` on requests.
    pub keep_unsigned_headers: bool,
    pub shared_key: String,
}

/// Most kids one source keeps (an ALB uses one key at a time; several ALBs share a region).
pub const MAX_KIDS: usize = 64;
/// Kids waited for at once, per source.
const MAX_WANTED: usize = 8;
/// A kid the endpoint answered 4xx for is not asked for again within this.
const NOT_FOUND_MS: u64 = 60_000;
/// After a failed fetch (5xx, timeout), the same kid waits this long.
const FAILED_MS: u64 = 5_000;
/// Body cap for a PEM key.
const MAX_PEM_BYTES: usize = 4096;

/// One HTTP GET for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFetch {
    pub source: usize,
    pub kid: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// What a fetch did, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    Fetched { source: usize, kid: String },
    NotFound { source: usize, kid: String, status: u16 },
    Failed { source: usize, kid: String, error: String },
}

/// One ALB provider's keys in this VM.
pub struct AlbSource {
    pub alb: AlbProvider,
    keys: KeySet,
    negative: HashMap<String, u64>,
    in_flight: Option<String>,
}

/// Every ALB provider's keys in this VM (index = source, in provider order).
pub struct AlbKeyCache {
    pub sources: Vec<AlbSource>,
    holder: u64,
}

fn sk(alb: &AlbProvider, part: &str) -> String {
    format!("{}|{part}", alb.shared_key)
}

impl AlbKeyCache {
    /// `sources`: each ALB provider's settings and its configured (inline) keys.
    pub fn new(sources: Vec<(AlbProvider, KeySet)>, holder: u64) -> AlbKeyCache {
        AlbKeyCache {
            sources: sources
                .into_iter()
                .map(|(alb, keys)| AlbSource {
                    alb,
                    keys,
                    negative: HashMap::new(),
                    in_flight: None,
                })
                .collect(),
            holder,
        }
    }

    pub fn keys(&self, source: usize) -> Option<&KeySet> {
        self.sources.get(source).map(|s| &s.keys)
    }

    fn has_kid(&self, source: usize, kid: &str) -> bool {
        self.sources
            .get(source)
            .is_some_and(|s| s.keys.find_by_kid(kid).next().is_some())
    }

    /// Loads `kid` from shared data if some VM published it. True when this VM now has it.
    fn load(&mut self, store: &dyn SharedStore, source: usize, kid: &str) -> bool {
        if self.has_kid(source, kid) {
            return true;
        }
        let Some(s) = self.sources.get_mut(source) else {
            return false;
        };
        let Some((bytes, _)) = store.get(&sk(&s.alb, &format!("key|{kid}"))) else {
            return false;
        };
        let Ok(jwk) = serde_json::from_slice::<Value>(&bytes) else {
            return false;
        };
        match parse_jwks(&json!({ "keys": [jwk] })) {
            Ok(set) if !set.is_empty() => {
                if s.keys.keys.len() >= MAX_KIDS {
                    // Bounded: the oldest fetched key goes (it is still in shared data).
                    s.keys.keys.remove(0);
                }
                s.keys.keys.extend(set.keys);
                true
            }
            _ => false,
        }
    }

    fn negative_until(&self, store: &dyn SharedStore, source: usize, kid: &str) -> u64 {
        let Some(s) = self.sources.get(source) else {
            return u64::MAX;
        };
        let local = s.negative.get(kid).copied().unwrap_or(0);
        let shared = store
            .get(&sk(&s.alb, &format!("neg|{kid}")))
            .and_then(|(b, _)| String::from_utf8_lossy(&b).trim().parse::<u64>().ok())
            .unwrap_or(0);
        local.max(shared)
    }

    /// A request's ALB token names `kid`, which this VM lacks: load it, or wait for a fetch.
    /// `Wait` with a deadline in the past never happens; `GiveUp` means "answer now" (the key
    /// is known to be missing, or was just loaded: evaluate again).
    pub fn on_missing_key(&mut self, store: &dyn SharedStore, source: usize, kid: &str, now_ms: u64) -> KeyWait {
        if !is_uuid(kid) || self.load(store, source, kid) {
            return KeyWait::GiveUp;
        }
        if self.negative_until(store, source, kid) > now_ms {
            return KeyWait::GiveUp;
        }
        let Some(s) = self.sources.get(source) else {
            return KeyWait::GiveUp;
        };
        let want_key = sk(&s.alb, "want");
        let mut wanted = read_want(store, &want_key);
        if !wanted.iter().any(|w| w == kid) {
            if wanted.len() >= MAX_WANTED {
                // A flood of made-up kids must not grow shared state: the oldest goes.
                wanted.remove(0);
            }
            wanted.push(kid.to_string());
            let _ = store.set(&want_key, wanted.join(" ").as_bytes(), None);
        }
        KeyWait::Wait {
            deadline_ms: now_ms + s.alb.wait_ms,
        }
    }

    /// A waiting request's kid is settled: loaded here, or known to be missing.
    pub fn settled(&mut self, store: &dyn SharedStore, source: usize, kid: &str, now_ms: u64) -> bool {
        self.load(store, source, kid) || self.negative_until(store, source, kid) > now_ms
    }

    /// Picks at most one wanted kid per source to fetch, under a lease and a rate limit.
    pub fn tick(&mut self, store: &dyn SharedStore, now_ms: u64) -> Vec<KeyFetch> {
        let mut out = Vec::new();
        for i in 0..self.sources.len() {
            if let Some(f) = self.maybe_fetch(store, i, now_ms) {
                out.push(f);
            }
        }
        out
    }

    fn maybe_fetch(&mut self, store: &dyn SharedStore, i: usize, now_ms: u64) -> Option<KeyFetch> {
        let holder = self.holder;
        let s = self.sources.get(i)?;
        if s.in_flight.is_some() {
            return None;
        }
        let want_key = sk(&s.alb, "want");
        let wanted = read_want(store, &want_key);
        if wanted.is_empty() {
            return None;
        }
        let mut next = None;
        let mut keep = Vec::new();
        for kid in wanted.iter() {
            let published = store.get(&sk(&s.alb, &format!("key|{kid}"))).is_some();
            if published || self.negative_until(store, i, kid) > now_ms {
                continue; // settled: drop it from the list
            }
            keep.push(kid.clone());
            if next.is_none() {
                next = Some(kid.clone());
            }
        }
        let s = self.sources.get(i)?;
        if keep.len() != wanted.len() {
            let _ = store.set(&want_key, keep.join(" ").as_bytes(), None);
        }
        let kid = next?;
        // At most one key fetch per interval per proxy: made-up kids cannot flood the endpoint.
        let last = store
            .get(&sk(&s.alb, "last"))
            .and_then(|(b, _)| String::from_utf8_lossy(&b).trim().parse::<u64>().ok())
            .unwrap_or(0);
        if now_ms < last.saturating_add(s.alb.min_interval_ms) {
            return None;
        }
        let lease_key = sk(&s.alb, "lease");
        let until = now_ms + s.alb.timeout_ms + 2_000;
        match store.get(&lease_key) {
            None => {
                // Create it first; claim it with CAS on a later tick.
                let _ = store.set(&lease_key, b"0 0", None);
                return None;
            }
            Some((b, cas)) => {
                let t = String::from_utf8_lossy(&b);
                let mut it = t.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                let (h, exp) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                if h != 0 && h != holder && exp >= now_ms {
                    return None;
                }
                if store
                    .set(&lease_key, format!("{holder} {until}").as_bytes(), Some(cas))
                    .is_err()
                {
                    return None;
                }
            }
        }
        let _ = store.set(&sk(&s.alb, "last"), now_ms.to_string().as_bytes(), None);
        let fetch = KeyFetch {
            source: i,
            kid: kid.clone(),
            cluster: s.alb.cluster.clone(),
            authority: s.alb.keys_url.authority(),
            path: format!("{}/{kid}", s.alb.keys_url.path.trim_end_matches('/')),
            timeout_ms: s.alb.timeout_ms,
        };
        if let Some(s) = self.sources.get_mut(i) {
            s.in_flight = Some(kid);
        }
        Some(fetch)
    }

    /// A key fetch's outcome: publish the key for every VM, or remember that it is missing.
    pub fn on_fetch_done(
        &mut self,
        store: &dyn SharedStore,
        source: usize,
        kid: &str,
        now_ms: u64,
        result: FetchResult,
    ) -> Option<KeyEvent> {
        let holder = self.holder;
        let s = self.sources.get_mut(source)?;
        s.in_flight = None;
        let outcome = match result {
            FetchResult::Response {
                status: 200,
                body,
                body_size,
                ..
            } if body_size <= MAX_PEM_BYTES => {
                match std::str::from_utf8(&body)
                    .map_err(|_| "key is not text".to_string())
                    .and_then(|pem| pem_to_jwk(pem, kid))
                    .and_then(|jwk| {
                        parse_jwks(&json!({ "keys": [jwk.clone()] }))
                            .map_err(|(p, why)| format!("{p}: {why}"))
                            .map(|_| jwk)
                    }) {
                    Ok(jwk) => Ok(jwk),
                    Err(e) => Err((FAILED_MS, None, e)),
                }
            }
            FetchResult::Response { status: 200, .. } => {
                Err((FAILED_MS, None, format!("key is larger than {MAX_PEM_BYTES} bytes")))
            }
            FetchResult::Response { status, .. } if (400..500).contains(&status) => {
                Err((NOT_FOUND_MS, Some(status), format!("HTTP {status}")))
            }
            FetchResult::Response { status, .. } => Err((FAILED_MS, None, format!("HTTP {status}"))),
            FetchResult::Failed(e) => Err((FAILED_MS, None, e)),
        };
        let event = match outcome {
            Ok(jwk) => {
                let _ = store.set(&sk(&s.alb, &format!("key|{kid}")), jwk.to_string().as_bytes(), None);
                KeyEvent::Fetched {
                    source,
                    kid: kid.to_string(),
                }
            }
            Err((for_ms, status, error)) => {
                let until = now_ms + for_ms;
                if s.negative.len() >= 1024 {
                    s.negative.retain(|_, u| *u > now_ms);
                }
                s.negative.insert(kid.to_string(), until);
                let _ = store.set(&sk(&s.alb, &format!("neg|{kid}")), until.to_string().as_bytes(), None);
                match status {
                    Some(status) => KeyEvent::NotFound {
                        source,
                        kid: kid.to_string(),
                        status,
                    },
                    None => KeyEvent::Failed {
                        source,
                        kid: kid.to_string(),
                        error,
                    },
                }
            }
        };
        let lease_key = sk(&s.alb, "lease");
        if let Some((b, cas)) = store.get(&lease_key) {
            if String::from_utf8_lossy(&b).split_whitespace().next() == Some(&holder.to_string()) {
                let _ = store.set(&lease_key, b"0 0", Some(cas));
            }
        }
        let _ = self.load(store, source, kid);
        Some(event)
    }
}

fn read_want(store: &dyn SharedStore, key: &str) -> Vec<String> {
    store
        .get(key)
        .map(|(b, _)| {
            String::from_utf8_lossy(&b)
                .split_whitespace()
                .filter(|k| is_uuid(k))
                .take(MAX_WANTED)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::crypto::alg::Alg;
    use crate::keys::remote::StoreError;
    use claimguard_testkeys::TestKey;
    use std::cell::RefCell;
    const KID: &str = "4d6b6a3c-1f2e-4a5b-9c8d-7e6f5a4b3c2d";
    const ARN: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/orders/50dc6c495c0c9188";

    #[derive(Default)]
    struct FakeStore(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedStore for FakeStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut m = self.0.borrow_mut();
            let cur = m.get(key).map(|(_, c)| *c);
            if let (Some(want), Some(have)) = (cas, cur) {
                if want != have {
                    return Err(StoreError::CasMismatch);
                }
            }
            m.insert(key.to_string(), (value.to_vec(), cur.unwrap_or(0) + 1));
            Ok(())
        }
    }

    fn remote_cache(holder: u64) -> AlbKeyCache {
        let cfg = json!({"providers": [{"name": "alb", "alb": {"region": "eu-west-1", "signers": [ARN]}}]});
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let alb = c.providers[0].alb.clone().unwrap();
        AlbKeyCache::new(vec![(alb, KeySet::default())], holder)
    }

    #[test]
    fn one_vm_fetches_every_vm_loads() {
        let store = FakeStore::default();
        let (mut a, mut b) = (remote_cache(1), remote_cache(2));
        let t0 = 1_000_000;
        assert!(matches!(a.on_missing_key(&store, 0, KID, t0), KeyWait::Wait { .. }));
        assert!(matches!(b.on_missing_key(&store, 0, KID, t0), KeyWait::Wait { .. }));
        // First tick creates the lease; the next one claims it. Only one VM fetches.
        assert!(a.tick(&store, t0).is_empty());
        let fa = a.tick(&store, t0 + 200);
        let fb = b.tick(&store, t0 + 200);
        assert_eq!(fa.len() + fb.len(), 1);
        let f = fa.into_iter().chain(fb).next().unwrap();
        assert_eq!(f.path, format!("/{KID}"));
        assert_eq!(f.authority, "public-keys.auth.elb.eu-west-1.amazonaws.com");
        assert_eq!(f.cluster, "outbound|443||public-keys.auth.elb.eu-west-1.amazonaws.com");
        let key = TestKey::generate(Alg::ES256, KID);
        let ok = FetchResult::Response {
            status: 200,
            body: key.public_pem().into_bytes(),
            body_size: key.public_pem().len(),
            cache_control: None,
            etag: None,
        };
        let fetcher = if f.source == 0 && a.sources[0].in_flight.is_some() {
            &mut a
        } else {
            &mut b
        };
        assert_eq!(
            fetcher.on_fetch_done(&store, 0, KID, t0 + 300, ok),
            Some(KeyEvent::Fetched {
                source: 0,
                kid: KID.into()
            })
        );
        assert!(a.settled(&store, 0, KID, t0 + 400));
        assert!(b.settled(&store, 0, KID, t0 + 400));
        assert!(b.keys(0).unwrap().find_by_kid(KID).next().is_some());
        // Nothing left to fetch.
        assert!(a.tick(&store, t0 + 5_000).is_empty() && b.tick(&store, t0 + 5_000).is_empty());
    }

    #[test]
    fn not_found_kids_are_remembered_and_fetches_are_rate_limited() {
        let store = FakeStore::default();
        let mut a = remote_cache(1);
        let t0 = 1_000_000;
        let kids: Vec<String> = (0..20).map(|i| format!("00000000-0000-4000-8000-{i:012}")).collect();
        for k in &kids {
            assert!(matches!(a.on_missing_key(&store, 0, k, t0), KeyWait::Wait { .. }));
        }
        // The wait list is bounded.
        assert!(read_want(&store, &sk(&a.sources[0].alb, "want")).len() <= MAX_WANTED);
        a.tick(&store, t0);
        let mut fetches = 0;
        let mut t = t0;
        while t < t0 + 3_000 {
            t += 200;
            for f in a.tick(&store, t) {
                fetches += 1;
                let nf = FetchResult::Response {
                    status: 404,
                    body: vec![],
                    body_size: 0,
                    cache_control: None,
                    etag: None,
                };
                assert!(matches!(
                    a.on_fetch_done(&store, 0, &f.kid, t, nf),
                    Some(KeyEvent::NotFound { status: 404, .. })
                ));
                assert!(a.settled(&store, 0, &f.kid, t));
                assert_eq!(a.on_missing_key(&store, 0, &f.kid, t + 1), KeyWait::GiveUp);
            }
        }
        // At most one fetch per second (min interval), whatever the flood.
        assert!((2..=4).contains(&fetches), "{fetches}");
    }

    #[test]
    fn bad_kids_never_wait_and_failed_fetches_settle_waiters() {
        let store = FakeStore::default();
        let mut a = remote_cache(1);
        assert_eq!(a.on_missing_key(&store, 0, "not-a-uuid", 5), KeyWait::GiveUp);
        let t0 = 1_000_000;
        a.on_missing_key(&store, 0, KID, t0);
        a.tick(&store, t0);
        let f = a.tick(&store, t0 + 200).pop().unwrap();
        let ev = a.on_fetch_done(&store, 0, &f.kid, t0 + 300, FetchResult::Failed("timeout".into()));
        assert!(matches!(ev, Some(KeyEvent::Failed { .. })));
        assert!(a.settled(&store, 0, KID, t0 + 400));
        // ...and the kid is tried again once the short failure window has passed.
        assert!(!a.settled(&store, 0, KID, t0 + 300 + FAILED_MS + 1));
        let garbage = FetchResult::Response {
            status: 200,
            body: b"<html>".to_vec(),
            body_size: 6,
            cache_control: None,
            etag: None,
        };
        a.on_missing_key(&store, 0, KID, t0 + 10_000);
        let f = a.tick(&store, t0 + 10_000).pop().unwrap();
        assert!(matches!(
            a.on_fetch_done(&store, 0, &f.kid, t0 + 10_100, garbage),
            Some(KeyEvent::Failed { .. })
        ));
        assert!(a.keys(0).unwrap().is_empty());
    }
}
