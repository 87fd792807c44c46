//! AWS Application Load Balancer user claims (`x-amzn-oidc-data`): parsing, checking and the
//! per-`kid` public keys, fetched as PEM from the ALB's regional key endpoint.
//!
//! An ALB that authenticates users (OIDC or Cognito) signs a token of its own with ES256 and
//! forwards it in `x-amzn-oidc-data`. It is a JWT in shape but not in encoding: its segments
//! are base64url *with* `=` padding, so strict JWT libraries refuse it, and ones that strip the
//! padding before verifying compute the signature over different bytes. The signing input is
//! therefore kept exactly as received. The header carries `kid` (a UUID), `signer` (the ALB's
//! ARN), `iss`, `client` and `exp`; the key for a `kid` lives at
//! `https://public-keys.auth.elb.REGION.amazonaws.com/KID` as a PEM SubjectPublicKeyInfo.
//!
//! Keys by `kid` never change, so fetched keys are kept for the life of the configuration.
//! Across worker VMs, shared data holds (prefix = the provider's key URL):
//! * `P|key|KID`: the key as a JWK (published once, by whichever VM fetched it);
//! * `P|neg|KID`: until when a `kid` the endpoint did not serve is not asked for again;
//! * `P|want`: the kids some VM is waiting for (bounded);
//! * `P|lease`: which VM may fetch now, and `P|last`: when the last fetch started.

use crate::alg::Alg;
use crate::config::{AlbProvider, Provider};
use crate::json::parse_strict;
use crate::jwks::{parse_jwks, KeySet};
use crate::jwks_cache::{FetchResult, KeyWait, SharedStore};
use crate::token::TokenError;
use crate::verify::{check_claim_types, AuthError};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The header an ALB puts its user claims token in.
pub const ALB_DATA_HEADER: &str = "x-amzn-oidc-data";
/// Headers an ALB adds that carry no signature of their own: anyone in front of the mesh could
/// have set them, so they are removed unless a provider says to keep them.
pub const ALB_UNSIGNED_HEADERS: &[&str] = &["x-amzn-oidc-identity", "x-amzn-oidc-accesstoken"];

/// base64url that accepts canonical `=` padding or none (what ALBs send), nothing else.
const PADDED_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

/// A parsed `x-amzn-oidc-data` token whose signature has not been checked yet.
#[derive(Debug)]
pub struct AlbToken<'a> {
    /// `header.payload` exactly as received, padding included: what the ALB signed.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
    pub kid: String,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// The payload segment as received (for `outputPayloadToHeader`).
    pub payload_b64: &'a str,
}

fn decode_object(segment: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = PADDED_URL_SAFE
        .decode(segment)
        .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))?;
    match parse_strict(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AuthError::Malformed(format!("{what} is not a JSON object"))),
        Err(_) => Err(AuthError::Malformed(format!("{what} is not valid JSON"))),
    }
}

/// Parses an ALB token strictly (three segments, padded or unpadded base64url, JSON objects
/// without duplicate members, `alg` ES256, `kid` a UUID).
pub fn parse(raw: &str, max_bytes: usize) -> Result<AlbToken<'_>, AuthError> {
    if raw.len() > max_bytes {
        return Err(AuthError::from(TokenError::TooLarge { limit: max_bytes }));
    }
    let mut parts = raw.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed(
            "a JWT must have exactly three dot-separated parts".into(),
        ));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(AuthError::Malformed("a JWT part is empty".into()));
    }
    let header = decode_object(h, "header")?;
    let claims = decode_object(p, "payload")?;
    let signature = PADDED_URL_SAFE
        .decode(s)
        .map_err(|_| AuthError::Malformed("signature is not base64url".into()))?;
    match header.get("alg") {
        Some(Value::String(a)) if a == "ES256" => {}
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(AuthError::AlgNone),
        Some(Value::String(a)) => {
            return Err(match Alg::from_name(a) {
                Some(alg) => AuthError::AlgNotAllowed(alg),
                None => AuthError::UnsupportedAlg,
            })
        }
        _ => return Err(AuthError::Malformed("header alg must be a string".into())),
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if is_uuid(k) => k.to_ascii_lowercase(),
        Some(Value::String(_)) => return Err(AuthError::Malformed("header kid is not a UUID".into())),
        _ => return Err(AuthError::Malformed("header has no kid".into())),
    };
    Ok(AlbToken {
        signing_input: raw.get(..h.len() + 1 + p.len()).unwrap_or(""),
        signature,
        kid,
        header,
        claims,
        payload_b64: p,
    })
}

/// The header's `signer`, `client`, `iss` and `exp`, and the payload's registered claims:
/// everything but the signature, checked before any key is fetched for the token.
pub fn check(p: &Provider, alb: &AlbProvider, t: &AlbToken, now: u64) -> Result<(), AuthError> {
    let signer = t.header.get("signer").and_then(Value::as_str);
    if !signer.is_some_and(|s| alb.signers.iter().any(|a| a == s)) {
        return Err(AuthError::WrongSigner);
    }
    if !p.client_ids.is_empty() {
        let client = t.header.get("client").and_then(Value::as_str);
        if !client.is_some_and(|c| p.client_ids.iter().any(|x| x == c)) {
            return Err(AuthError::WrongClient);
        }
    }
    if !p.issuer.is_empty() && t.header.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
        return Err(AuthError::UnknownIssuer);
    }
    check_claim_types(&t.claims)?;
    let skew = p.clock_skew_seconds;
    let header_exp = match t.header.get("exp") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(AuthError::InvalidClaim {
            claim: "exp",
            why: "must be a non-negative integer (seconds since the epoch)",
        })?),
    };
    let payload_exp = t.claims.get("exp").and_then(Value::as_u64);
    let exps = [header_exp, payload_exp];
    if exps.iter().flatten().any(|exp| now > exp.saturating_add(skew)) {
        return Err(AuthError::Expired);
    }
    if p.require_expiration && exps.iter().all(Option::is_none) {
        return Err(AuthError::MissingExpiration);
    }
    if t.claims
        .get("nbf")
        .and_then(Value::as_u64)
        .is_some_and(|nbf| now.saturating_add(skew) < nbf)
    {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

/// The signature, with the key of the token's `kid` (`UnknownKid` when this VM lacks it).
pub fn verify_signature(keys: &KeySet, t: &AlbToken) -> Result<(), AuthError> {
    let mut fitting = keys.find_by_kid(&t.kid).filter(|k| k.supports(Alg::ES256));
    let key = fitting.next().ok_or(AuthError::UnknownKid)?;
    if key.verify(Alg::ES256, t.signing_input.as_bytes(), &t.signature) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// The issuer to report for a verified ALB token: the identity provider the ALB used.
pub fn issuer_of(t: &AlbToken) -> String {
    t.header
        .get("iss")
        .or_else(|| t.claims.get("iss"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
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
    use crate::devtools::keys::TestKey;
    use crate::jwks_cache::StoreError;
    use std::cell::RefCell;

    pub const KID: &str = "4d6b6a3c-1f2e-4a5b-9c8d-7e6f5a4b3c2d";
    pub const ARN: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/orders/50dc6c495c0c9188";
    const NOW: u64 = 1_800_000_000;

    /// A token shaped like an ALB's: padded base64url segments, ALB header fields.
    pub fn alb_token(key: &TestKey, kid: &str, signer: &str, exp: u64, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "kid": kid, "alg": "ES256", "iss": "https://idp.example.com",
                            "client": "orders-client", "signer": signer, "exp": exp});
        key.sign_alb(&header, claims)
    }

    fn config(key: &TestKey) -> Config {
        let cfg = json!({"providers": [{"name": "alb", "issuer": "https://idp.example.com",
            "clientIds": ["orders-client"],
            "alb": {"region": "eu-west-1", "signers": [ARN], "keys": {KID: key.public_pem()}}}]});
        Config::from_json(cfg.to_string().as_bytes()).unwrap()
    }

    fn claims() -> Value {
        json!({"sub": "9f1c", "email": "ana@example.com", "exp": NOW + 60, "iss": "https://idp.example.com"})
    }

    #[test]
    fn uuid_kids_only() {
        assert!(is_uuid(KID));
        assert!(is_uuid("4D6B6A3C-1F2E-4A5B-9C8D-7E6F5A4B3C2D"));
        for bad in [
            "",
            "../../etc/passwd",
            "4d6b6a3c-1f2e-4a5b-9c8d",
            "4d6b6a3c-1f2e-4a5b-9c8d-7e6f5a4b3c2d/x",
            "4d6b6a3c_1f2e-4a5b-9c8d-7e6f5a4b3c2d",
            "4d6b6a3g-1f2e-4a5b-9c8d-7e6f5a4b3c2d",
            "%2e%2e",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn pem_round_trip_and_refusals() {
        let key = TestKey::generate(Alg::ES256, KID);
        let jwk = pem_to_jwk(&key.public_pem(), KID).unwrap();
        assert_eq!(jwk["x"], key.public_jwk()["x"]);
        assert_eq!(jwk["y"], key.public_jwk()["y"]);
        let rsa = TestKey::rsa(Alg::RS256, "r");
        assert!(pem_to_jwk(&rsa.public_pem(), KID).unwrap_err().contains("P-256"));
        assert!(pem_to_jwk("hello", KID).unwrap_err().contains("PEM"));
        assert!(pem_to_jwk("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----", KID).is_err());
    }

    #[test]
    fn padded_token_verifies_as_received_and_not_once_padding_is_stripped() {
        let key = TestKey::generate(Alg::ES256, KID);
        let c = config(&key);
        let p = &c.providers[0];
        let alb = p.alb.as_ref().unwrap();
        // Find a token whose segments really carry padding.
        let mut token = String::new();
        for i in 0..20 {
            let t = alb_token(&key, KID, ARN, NOW + 60, &with_pad(i));
            if t.split('.').take(2).any(|s| s.ends_with('=')) {
                token = t;
                break;
            }
        }
        assert!(token.contains('='), "fixture must be padded");
        let t = parse(&token, 16384).unwrap();
        check(p, alb, &t, NOW).unwrap();
        verify_signature(&p.keys, &t).unwrap();
        // A strict JWT parser refuses the ALB's encoding outright...
        assert!(crate::token::parse(&token, 16384).is_err());
        // ...and a verifier that strips the padding checks other bytes: the signature fails.
        let stripped: Vec<String> = token.split('.').map(|s| s.trim_end_matches('=').to_string()).collect();
        let stripped = stripped.join(".");
        let t2 = parse(&stripped, 16384).unwrap();
        assert_eq!(verify_signature(&p.keys, &t2), Err(AuthError::BadSignature));
    }

    fn with_pad(i: usize) -> Value {
        let mut c = claims();
        c["name"] = json!("x".repeat(i));
        c
    }

    #[test]
    fn header_checks_table() {
        let key = TestKey::generate(Alg::ES256, KID);
        let c = config(&key);
        let p = &c.providers[0];
        let alb = p.alb.as_ref().unwrap();
        let good = alb_token(&key, KID, ARN, NOW + 60, &claims());
        let run = |tok: &str| -> Result<(), AuthError> {
            let t = parse(tok, 16384)?;
            check(p, alb, &t, NOW)?;
            verify_signature(&p.keys, &t)
        };
        assert_eq!(run(&good), Ok(()));
        let other_arn = ARN.replace("orders", "billing");
        assert_eq!(
            run(&alb_token(&key, KID, &other_arn, NOW + 60, &claims())),
            Err(AuthError::WrongSigner)
        );
        assert_eq!(
            run(&alb_token(&key, KID, ARN, NOW - 600, &claims())),
            Err(AuthError::Expired)
        );
        let mut late = claims();
        late["exp"] = json!(NOW - 600);
        assert_eq!(
            run(&alb_token(&key, KID, ARN, NOW + 60, &late)),
            Err(AuthError::Expired)
        );
        let other = "00000000-0000-4000-8000-000000000000";
        assert_eq!(
            run(&alb_token(&key, other, ARN, NOW + 60, &claims())),
            Err(AuthError::UnknownKid)
        );
        assert!(matches!(run(&alb_token(&key, "../x", ARN, NOW + 60, &claims())),
            Err(AuthError::Malformed(m)) if m.contains("UUID")));
        let impostor = TestKey::generate(Alg::ES256, KID);
        assert_eq!(
            run(&alb_token(&impostor, KID, ARN, NOW + 60, &claims())),
            Err(AuthError::BadSignature)
        );
        // Tampering with one claim, padding kept, breaks the signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut c2 = claims();
        c2["email"] = json!("eve@example.com");
        parts[1] = base64::engine::general_purpose::URL_SAFE.encode(c2.to_string());
        assert_eq!(run(&parts.join(".")), Err(AuthError::BadSignature));
    }

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
