//! Verifying one parsed token against one provider: algorithm allow-list, key choice by `kid`
//! and algorithm (never by the token's say-so alone), the signature, then `iss`, `aud`, `exp`,
//! `nbf` and `iat` with the provider's clock skew. `now` is passed in (seconds since the epoch).

pub mod alb;
pub mod provider;

use crate::crypto::alg::Alg;
use crate::keys::jwk::{KeySet, VerificationKey};
use crate::token::{Jwt, TokenError};
use crate::verify::provider::Provider;
use serde_json::{Map, Value};

/// Why a request was not authenticated. Each variant has a stable `reason` code (for metrics
/// and logs) and a human description safe to send to the client (it never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    MultipleTokens,
    /// A token header is present but not in the configured form (`malformedTokenHeaderAction`).
    UnreadableHeader {
        header: String,
        prefix: String,
    },
    TooLarge {
        limit: usize,
    },
    Malformed(String),
    AlgNone,
    AlgNotAllowed(Alg),
    UnsupportedAlg,
    UnknownIssuer,
    UnknownKid,
    WrongType,
    WrongTokenUse,
    /// `sub` absent, or matching none of the provider's `subjects`.
    WrongSubject,
    WrongClient,
    WrongSigner,
    KeyAlgMismatch,
    BadSignature,
    Expired,
    MissingExpiration,
    NotYetValid,
    IssuedInFuture,
    /// `exp - iat` beyond the provider's `maxLifetime` (`lifetime`: None when the token lacks
    /// `iat` or `exp`, so that its lifetime has no bound).
    LifetimeTooLong {
        max: u64,
        lifetime: Option<u64>,
    },
    InvalidClaim {
        claim: &'static str,
        why: &'static str,
    },
    MissingAudience,
    WrongAudience,
    /// A claim the provider requires (the `txnToken` preset's) is absent or null.
    MissingClaim(&'static str),
}

impl AuthError {
    /// Stable, low-cardinality code.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::MultipleTokens => "multiple_tokens",
            AuthError::UnreadableHeader { .. } => "malformed_header",
            AuthError::TooLarge { .. } => "token_too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgNone => "alg_none",
            AuthError::AlgNotAllowed(_) => "alg_not_allowed",
            AuthError::UnsupportedAlg => "alg_not_allowed",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::WrongType => "wrong_type",
            AuthError::WrongTokenUse => "wrong_token_use",
            AuthError::WrongClient => "wrong_client",
            AuthError::WrongSigner => "wrong_signer",
            AuthError::KeyAlgMismatch => "key_alg_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::MissingExpiration => "missing_exp",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::WrongSubject => "wrong_subject",
            AuthError::LifetimeTooLong { .. } => "lifetime_too_long",
            AuthError::InvalidClaim { .. } => "invalid_claim",
            AuthError::MissingAudience => "missing_audience",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
        }
    }

    pub fn description(&self) -> String {
        match self {
            AuthError::Missing => "a bearer token is required".into(),
            AuthError::MultipleTokens => "the request carries more than one token".into(),
            AuthError::UnreadableHeader { header, prefix } if prefix.is_empty() => {
                format!("the {header} header is empty")
            }
            AuthError::UnreadableHeader { header, prefix } => {
                format!("the {header} header is not in the form '{}<token>'", prefix)
            }
            AuthError::TooLarge { limit } => format!("token is larger than {limit} bytes"),
            AuthError::Malformed(why) => format!("token is malformed: {why}"),
            AuthError::AlgNone => "unsigned tokens (alg none) are not accepted".into(),
            AuthError::AlgNotAllowed(a) => format!("algorithm {a} is not allowed"),
            AuthError::UnsupportedAlg => "token algorithm is not supported".into(),
            AuthError::UnknownIssuer => "token issuer is not accepted".into(),
            AuthError::UnknownKid => "token is signed with an unknown key (kid)".into(),
            AuthError::WrongType => "token type (typ) is not the one this issuer uses".into(),
            AuthError::WrongTokenUse => "token_use is not the one this provider accepts".into(),
            AuthError::WrongSubject => "token subject (sub) is not accepted".into(),
            AuthError::WrongClient => "token client_id is not allowed".into(),
            AuthError::WrongSigner => "token was not signed by an accepted load balancer".into(),
            AuthError::KeyAlgMismatch => "no key fits the token's kid and algorithm".into(),
            AuthError::BadSignature => "token signature is invalid".into(),
            AuthError::Expired => "token has expired".into(),
            AuthError::MissingExpiration => "token has no expiration (exp)".into(),
            AuthError::NotYetValid => "token is not yet valid (nbf)".into(),
            AuthError::IssuedInFuture => "token is issued in the future (iat)".into(),
            AuthError::LifetimeTooLong { max, lifetime: Some(l) } => {
                format!("token lifetime (exp - iat) is {l}s; at most {max}s is accepted")
            }
            AuthError::LifetimeTooLong { max, lifetime: None } => {
                format!("token has no iat or no exp, so its lifetime is unbounded; at most {max}s is accepted")
            }
            AuthError::InvalidClaim { claim, why } => format!("claim {claim} {why}"),
            AuthError::MissingAudience => "token has no audience (aud)".into(),
            AuthError::WrongAudience => "token audience is not allowed".into(),
            AuthError::MissingClaim(c) => format!("token has no {c} claim, which is required"),
        }
    }
}

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::TooLarge { limit } => AuthError::TooLarge { limit },
            TokenError::Malformed(m) => AuthError::Malformed(m),
            TokenError::AlgNone => AuthError::AlgNone,
            TokenError::UnsupportedAlg => AuthError::UnsupportedAlg,
        }
    }
}

/// The unverified `iss` of a token, used only to pick which provider verifies it.
pub fn claimed_issuer<'a>(jwt: &'a Jwt) -> Option<&'a str> {
    jwt.claims.get("iss").and_then(Value::as_str)
}

/// Verifies `jwt` for `provider` at time `now`. The caller has already matched the issuer.
/// `keys` is the provider's current key set (inline, or fetched from its `jwksUri`).
pub fn verify(provider: &Provider, keys: &KeySet, jwt: &Jwt, now: u64) -> Result<(), AuthError> {
    verify_signed(provider, keys, jwt)?;
    check_claims(provider, &jwt.claims, now)
}

/// Everything about a token that does not depend on the time: algorithm allow-list, `typ`,
/// claim types, key choice and signature. What the verified-token cache remembers.
pub fn verify_signed(provider: &Provider, keys: &KeySet, jwt: &Jwt) -> Result<(), AuthError> {
    if !provider.algorithms.contains(&jwt.alg) {
        return Err(AuthError::AlgNotAllowed(jwt.alg));
    }
    if let Some(want) = &provider.token_type {
        let typ = jwt
            .header
            .get("typ")
            .and_then(Value::as_str)
            .map(|t| t.to_ascii_lowercase());
        let typ = typ.as_deref().map(|t| t.strip_prefix("application/").unwrap_or(t));
        if typ != Some(want.as_str()) {
            return Err(AuthError::WrongType);
        }
    }
    // Claim types first: the signature verifier decodes the registered claims with fixed
    // types too, and a type error must read as such, not as a failed signature.
    check_claim_types(&jwt.claims)?;
    verify_signature(keys, jwt)
}

/// Registered claims must have their RFC 7519 types: `iss`, `sub`, `jti`, `nonce` strings;
/// `aud` a string or array of strings; `exp`, `nbf`, `iat` non-negative numbers ([`numeric_date`]).
pub fn check_claim_types(claims: &Map<String, Value>) -> Result<(), AuthError> {
    claim_types(&Registered::of(claims)).map(drop)
}

/// The registered claims a verified token is checked on, found in one pass over the claims.
/// Eight `Map::get`s were a tenth of a cold request's time outside the signature in V8
/// (host_profile, hs256): each compares the name against the members one `memcmp` call at a
/// time, and most names are three bytes long.
#[derive(Default)]
struct Registered<'a> {
    iss: Option<&'a Value>,
    sub: Option<&'a Value>,
    jti: Option<&'a Value>,
    nonce: Option<&'a Value>,
    exp: Option<&'a Value>,
    nbf: Option<&'a Value>,
    iat: Option<&'a Value>,
    aud: Option<&'a Value>,
}

impl<'a> Registered<'a> {
    fn of(claims: &'a Map<String, Value>) -> Registered<'a> {
        let mut r = Registered::default();
        for (name, v) in claims {
            // Byte patterns: compared inline, not by a `memcmp` call per candidate.
            let slot = match name.as_bytes() {
                [b'i', b's', b's'] => &mut r.iss,
                [b's', b'u', b'b'] => &mut r.sub,
                [b'j', b't', b'i'] => &mut r.jti,
                [b'n', b'o', b'n', b'c', b'e'] => &mut r.nonce,
                [b'e', b'x', b'p'] => &mut r.exp,
                [b'n', b'b', b'f'] => &mut r.nbf,
                [b'i', b'a', b't'] => &mut r.iat,
                [b'a', b'u', b'd'] => &mut r.aud,
                _ => continue,
            };
            *slot = Some(v);
        }
        r
    }
}

/// [`check_claim_types`], returning the dates it read (`exp`, `nbf`, `iat`) so that
/// [`ClaimChecks::new`] does not read them again.
fn claim_types(r: &Registered) -> Result<Dates, AuthError> {
    for (claim, v) in [("iss", r.iss), ("sub", r.sub), ("jti", r.jti), ("nonce", r.nonce)] {
        if v.is_some_and(|v| !v.is_string()) {
            return Err(AuthError::InvalidClaim {
                claim,
                why: "must be a string",
            });
        }
    }
    let dates = (
        date_value(r.exp, "exp")?,
        date_value(r.nbf, "nbf")?,
        date_value(r.iat, "iat")?,
    );
    audiences(r.aud)?;
    Ok(dates)
}

/// Chooses the key by `kid` and algorithm and checks the signature (nothing else).
pub fn verify_signature(keys: &KeySet, jwt: &Jwt) -> Result<(), AuthError> {
    let check = |k: &VerificationKey| k.verify(jwt.alg, jwt.signing_input.as_bytes(), &jwt.signature);
    match &jwt.kid {
        Some(kid) => {
            let mut seen_kid = false;
            let mut fitting = keys
                .find_by_kid(kid)
                .inspect(|_| seen_kid = true)
                .filter(|k| k.supports(jwt.alg));
            if let Some(key) = fitting.next() {
                // Several keys may share a kid (an identity provider mid-rotation): each is a
                // key the provider published, so any of them verifying is a valid signature,
                // whatever their order (jwt_authn tries each the same way).
                return if check(key) || fitting.any(check) {
                    Ok(())
                } else {
                    Err(AuthError::BadSignature)
                };
            }
            // A kid-less key (such as hmacSecret) may still verify a token that names a kid.
            let mut anonymous = keys
                .keys
                .iter()
                .filter(|k| k.kid.is_none() && k.supports(jwt.alg))
                .peekable();
            if anonymous.peek().is_none() {
                return Err(if seen_kid {
                    AuthError::KeyAlgMismatch
                } else {
                    AuthError::UnknownKid
                });
            }
            if anonymous.any(check) {
                Ok(())
            } else {
                Err(AuthError::BadSignature)
            }
        }
        None => {
            // No kid: like Envoy, try every key that fits the algorithm.
            let mut candidates = keys.keys.iter().filter(|k| k.supports(jwt.alg)).peekable();
            if candidates.peek().is_none() {
                return Err(AuthError::KeyAlgMismatch);
            }
            if candidates.any(check) {
                Ok(())
            } else {
                Err(AuthError::BadSignature)
            }
        }
    }
}

/// A NumericDate (RFC 7519 §2: seconds since the epoch, "non-integer values can be
/// represented") in whole seconds: a non-negative number below 2^64, as Envoy's
/// `jwt_verify_lib` reads it, for the claim named `claim`. A fraction is cut towards the
/// stricter side: down for `exp`, up for the others (`nbf`, `iat`), so a token is never
/// valid longer or sooner than it says. None for anything else.
pub fn numeric_date(value: &Value, claim: &str) -> Option<u64> {
    let Value::Number(n) = value else { return None };
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    // 2^64: every f64 below it fits a u64 once rounded (the largest is 2^64 - 2048).
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    let f = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0 && *f < LIMIT)?;
    let whole = if claim == "exp" { f.floor() } else { f.ceil() };
    Some(whole as u64)
}

/// NumericDate as claimguard accepts it ([`numeric_date`]). `value` is the claim `claim`'s,
/// if present.
fn date_value(value: Option<&Value>, claim: &'static str) -> Result<Option<u64>, AuthError> {
    match value {
        None => Ok(None),
        Some(v @ Value::Number(_)) => numeric_date(v, claim).map(Some).ok_or(AuthError::InvalidClaim {
            claim,
            why: "must be a non-negative number (seconds since the epoch)",
        }),
        Some(_) => Err(AuthError::InvalidClaim {
            claim,
            why: "must be a number (seconds since the epoch)",
        }),
    }
}

pub fn check_claims(provider: &Provider, claims: &Map<String, Value>, now: u64) -> Result<(), AuthError> {
    ClaimChecks::new(provider, claims).at(provider, now)
}

/// `exp`, `nbf`, `iat`.
type Dates = (Option<u64>, Option<u64>, Option<u64>);

/// [`check_claims`] split into what a token's claims decide once and what depends on the
/// time, so that a cached token is re-checked without reading its claims again. The order
/// of the checks (and so which error a token with several faults gets) is the same.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimChecks {
    /// Types, `iss`, and the three dates parsed: before any time comparison.
    before: Result<(), AuthError>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    /// `maxLifetime`: `exp - iat` within the provider's limit (time-independent, checked after
    /// the dates).
    lifetime: Result<(), AuthError>,
    /// `token_use`, `subjects`, the audience and the required claims: after the time
    /// comparisons.
    after: Result<(), AuthError>,
}

impl ClaimChecks {
    pub fn new(provider: &Provider, claims: &Map<String, Value>) -> ClaimChecks {
        let mut c = ClaimChecks {
            before: Ok(()),
            exp: None,
            nbf: None,
            iat: None,
            lifetime: Ok(()),
            after: Ok(()),
        };
        let r = Registered::of(claims);
        let before = || -> Result<Dates, AuthError> {
            let dates = claim_types(&r)?;
            if r.iss.and_then(Value::as_str) != Some(provider.issuer.as_str()) {
                return Err(AuthError::UnknownIssuer);
            }
            Ok(dates)
        };
        match before() {
            Ok((exp, nbf, iat)) => (c.exp, c.nbf, c.iat) = (exp, nbf, iat),
            Err(e) => c.before = Err(e),
        }
        if let Some(max) = provider.max_lifetime_seconds {
            let lifetime = match (c.iat, c.exp) {
                (Some(iat), Some(exp)) => Some(exp.saturating_sub(iat)),
                _ => None,
            };
            if lifetime.is_none_or(|l| l > max) {
                c.lifetime = Err(AuthError::LifetimeTooLong { max, lifetime });
            }
        }
        c.after = (|| {
            if let Some(want) = &provider.token_use {
                if claims.get("token_use").and_then(Value::as_str) != Some(want.name()) {
                    return Err(AuthError::WrongTokenUse);
                }
            }
            if !provider.subjects.is_empty() {
                let sub = r.sub.and_then(Value::as_str);
                if !sub.is_some_and(|s| provider.subjects.iter().any(|p| p.matches(s))) {
                    return Err(AuthError::WrongSubject);
                }
            }
            check_audience(provider, r.aud, claims)?;
            match provider
                .required_claims
                .iter()
                .find(|c| claims.get(**c).is_none_or(Value::is_null))
            {
                Some(c) => Err(AuthError::MissingClaim(c)),
                None => Ok(()),
            }
        })();
        c
    }

    /// The token's `exp` in whole seconds, if it has a valid one.
    pub fn exp(&self) -> Option<u64> {
        self.exp
    }

    /// The outcome at `now` (for the provider the checks were made for).
    pub fn at(&self, provider: &Provider, now: u64) -> Result<(), AuthError> {
        self.before.clone()?;
        let skew = provider.clock_skew_seconds;
        match self.exp {
            Some(exp) if now > exp.saturating_add(skew) => return Err(AuthError::Expired),
            None if provider.require_expiration => return Err(AuthError::MissingExpiration),
            _ => {}
        }
        if self.nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| now.saturating_add(skew) < iat) {
            return Err(AuthError::IssuedInFuture);
        }
        self.lifetime.clone()?;
        self.after.clone()
    }
}

/// A token's `aud`, checked to be a string or an array of strings (without copying it).
enum Audiences<'a> {
    One(&'a str),
    /// Every item is a string.
    Many(&'a [Value]),
}

impl<'a> Audiences<'a> {
    fn is_empty(&self) -> bool {
        matches!(self, Audiences::Many(items) if items.is_empty())
    }

    fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        let (one, many) = match self {
            Audiences::One(s) => (Some(*s), None),
            Audiences::Many(items) => (None, Some(items.iter().filter_map(Value::as_str))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

fn audiences(aud: Option<&Value>) -> Result<Audiences<'_>, AuthError> {
    let bad = AuthError::InvalidClaim {
        claim: "aud",
        why: "must be a string or an array of strings",
    };
    match aud {
        None => Ok(Audiences::Many(&[])),
        Some(Value::String(s)) => Ok(Audiences::One(s.as_str())),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(Audiences::Many(items)),
        Some(_) => Err(bad),
    }
}

/// `aud` against `audiences` (and `clientIds`); a token without `aud` (Cognito access tokens)
/// is checked by its `client_id` against `clientIds`.
fn check_audience(provider: &Provider, aud: Option<&Value>, claims: &Map<String, Value>) -> Result<(), AuthError> {
    let auds = audiences(aud)?;
    if provider.audiences.is_empty() && provider.client_ids.is_empty() {
        return Ok(());
    }
    if auds.is_empty() {
        if provider.client_ids.is_empty() {
            return Err(AuthError::MissingAudience);
        }
        return match claims.get("client_id") {
            Some(Value::String(c)) if provider.client_ids.iter().any(|id| id == c) => Ok(()),
            Some(Value::String(_)) => Err(AuthError::WrongClient),
            Some(_) => Err(AuthError::InvalidClaim {
                claim: "client_id",
                why: "must be a string",
            }),
            None => Err(AuthError::MissingAudience),
        };
    }
    let allowed = |a: &str| provider.audiences.iter().chain(&provider.client_ids).any(|p| p == a);
    if auds.iter().any(allowed) {
        Ok(())
    } else {
        Err(AuthError::WrongAudience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::token::parse;
    use claimguard_testkeys::TestKey;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn registered_finds_what_get_finds() {
        let names = [
            "iss", "sub", "jti", "nonce", "exp", "nbf", "iat", "aud", "ISS", "is", "isss", "nonc", "nonces", "au", "",
            "groups",
        ];
        let claims: Map<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), json!(i)))
            .collect();
        let r = Registered::of(&claims);
        let got = [r.iss, r.sub, r.jti, r.nonce, r.exp, r.nbf, r.iat, r.aud];
        for (name, v) in ["iss", "sub", "jti", "nonce", "exp", "nbf", "iat", "aud"]
            .iter()
            .zip(got)
        {
            assert_eq!(v, claims.get(*name), "{name}");
        }
        let empty = Map::new();
        let r = Registered::of(&empty);
        assert!([r.iss, r.sub, r.jti, r.nonce, r.exp, r.nbf, r.iat, r.aud]
            .iter()
            .all(Option::is_none));
    }

    struct Fixture {
        rsa: TestKey,
        ec: TestKey,
        config: Config,
    }

    fn fixture() -> Fixture {
        let rsa = TestKey::rsa(Alg::RS256, "rsa-1");
        let ec = TestKey::generate(Alg::ES256, "ec-1");
        let cfg = json!({"providers": [{
            "issuer": "https://idp.example",
            "audiences": ["orders", "reports"],
            "jwks": {"keys": [rsa.public_jwk(), ec.public_jwk()]}
        }]});
        let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        Fixture { rsa, ec, config }
    }

    fn good_claims() -> Value {
        json!({"iss": "https://idp.example", "aud": "orders", "sub": "alice", "iat": NOW - 10, "exp": NOW + 300})
    }

    fn run(f: &Fixture, token: &str) -> Result<(), AuthError> {
        let jwt = parse(token, 8192)?;
        verify(&f.config.providers[0], &f.config.providers[0].keys, &jwt, NOW)
    }

    fn with(mut claims: Value, k: &str, v: Value) -> Value {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v;
        }
        claims
    }

    #[test]
    fn keys_sharing_a_kid_are_each_tried() {
        // Two RSA keys and a P-256 key under one kid (an identity provider mid-rotation):
        // a token signed by any of them verifies, in either order of the set; one signed by
        // none is a bad signature, not an unknown key.
        let a = TestKey::rsa(Alg::RS256, "k");
        // (RSA test keys come from a pool shared with other tests: take one that differs.)
        let b = std::iter::repeat_with(|| TestKey::rsa(Alg::RS256, "k"))
            .find(|b| b.public_jwk() != a.public_jwk())
            .unwrap();
        let e = TestKey::generate(Alg::ES256, "k");
        let stranger = TestKey::generate(Alg::ES256, "k");
        for order in [[&a, &b, &e], [&b, &e, &a], [&e, &a, &b]] {
            let cfg = json!({"providers": [{
                "issuer": "https://idp.example",
                "audiences": ["orders"],
                "jwks": {"keys": order.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()}
            }]});
            let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
            let p = &config.providers[0];
            for (signer, want) in [
                (&a, Ok(())),
                (&b, Ok(())),
                (&e, Ok(())),
                (&stranger, Err(AuthError::BadSignature)),
            ] {
                let token = signer.sign(&good_claims());
                let jwt = parse(&token, 8192).unwrap();
                assert_eq!(verify(p, &p.keys, &jwt, NOW), want, "{:?}", signer.public_jwk());
            }
        }
    }

    #[test]
    fn outcomes_table() {
        let f = fixture();
        let other_rsa = TestKey::rsa(Alg::RS256, "rsa-1"); // same kid, different key
        let ps = TestKey::from_rsa(&f.rsa, Alg::PS256, "rsa-1");
        let rs_unknown = TestKey::from_rsa(&f.rsa, Alg::RS256, "nope");
        let g = good_claims;
        let cases: Vec<(&str, String, Result<(), AuthError>)> = vec![
            ("GoodRS256", f.rsa.sign(&g()), Ok(())),
            ("GoodES256", f.ec.sign(&g()), Ok(())),
            (
                "AudArray",
                f.rsa.sign(&with(g(), "aud", json!(["x", "reports"]))),
                Ok(()),
            ),
            ("ExpInSkew", f.rsa.sign(&with(g(), "exp", json!(NOW - 30))), Ok(())),
            (
                "Expired",
                f.rsa.sign(&with(g(), "exp", json!(NOW - 61))),
                Err(AuthError::Expired),
            ),
            (
                "NoExp",
                f.rsa.sign(&with(g(), "exp", Value::Null)),
                Err(AuthError::MissingExpiration),
            ),
            (
                "ExpString",
                f.rsa.sign(&with(g(), "exp", json!("1"))),
                Err(AuthError::InvalidClaim {
                    claim: "exp",
                    why: "must be a number (seconds since the epoch)",
                }),
            ),
            // RFC 7519 §2: a NumericDate may have a fraction (jwt_verify_lib reads one too).
            (
                "ExpFloat",
                f.rsa.sign(&with(g(), "exp", json!(NOW as f64 + 600.5))),
                Ok(()),
            ),
            (
                "ExpFloatPast",
                f.rsa.sign(&with(g(), "exp", json!(1.5e9))),
                Err(AuthError::Expired),
            ),
            // Fractions are cut towards the stricter side: exp down, nbf and iat up.
            (
                "ExpFractionRoundsDown",
                f.rsa.sign(&with(g(), "exp", json!(NOW as f64 - 60.5))),
                Err(AuthError::Expired),
            ),
            (
                "NbfFractionRoundsUp",
                f.rsa.sign(&with(g(), "nbf", json!(NOW as f64 + 60.5))),
                Err(AuthError::NotYetValid),
            ),
            (
                "IatFractionRoundsUp",
                f.rsa.sign(&with(g(), "iat", json!(NOW as f64 + 60.5))),
                Err(AuthError::IssuedInFuture),
            ),
            (
                "ExpNegative",
                f.rsa.sign(&with(g(), "exp", json!(-1))),
                Err(AuthError::InvalidClaim {
                    claim: "exp",
                    why: "must be a non-negative number (seconds since the epoch)",
                }),
            ),
            (
                "NbfNegativeFraction",
                f.rsa.sign(&with(g(), "nbf", json!(-0.5))),
                Err(AuthError::InvalidClaim {
                    claim: "nbf",
                    why: "must be a non-negative number (seconds since the epoch)",
                }),
            ),
            (
                "NbfFuture",
                f.rsa.sign(&with(g(), "nbf", json!(NOW + 61))),
                Err(AuthError::NotYetValid),
            ),
            ("NbfInSkew", f.rsa.sign(&with(g(), "nbf", json!(NOW + 59))), Ok(())),
            (
                "IatFuture",
                f.rsa.sign(&with(g(), "iat", json!(NOW + 3600))),
                Err(AuthError::IssuedInFuture),
            ),
            (
                "WrongIss",
                f.rsa.sign(&with(g(), "iss", json!("https://idp.example/"))),
                Err(AuthError::UnknownIssuer),
            ),
            (
                "WrongAud",
                f.rsa.sign(&with(g(), "aud", json!("billing"))),
                Err(AuthError::WrongAudience),
            ),
            (
                "EmptyAudArray",
                f.rsa.sign(&with(g(), "aud", json!([]))),
                Err(AuthError::MissingAudience),
            ),
            (
                "NoAud",
                f.rsa.sign(&with(g(), "aud", Value::Null)),
                Err(AuthError::MissingAudience),
            ),
            (
                "AudNumber",
                f.rsa.sign(&with(g(), "aud", json!(5))),
                Err(AuthError::InvalidClaim {
                    claim: "aud",
                    why: "must be a string or an array of strings",
                }),
            ),
            (
                "SubNumber",
                f.rsa.sign(&with(g(), "sub", json!(5))),
                Err(AuthError::InvalidClaim {
                    claim: "sub",
                    why: "must be a string",
                }),
            ),
            ("OtherKeySameKid", other_rsa.sign(&g()), Err(AuthError::BadSignature)),
            ("NonExistKid", rs_unknown.sign(&g()), Err(AuthError::UnknownKid)),
            // The JWK says RS256: the same RSA key may not be used with PS256.
            ("KeyAlgMismatch", ps.sign(&g()), Err(AuthError::KeyAlgMismatch)),
        ];
        for (name, token, want) in cases {
            assert_eq!(run(&f, &token), want, "{name}");
        }
    }

    #[test]
    fn every_supported_asymmetric_algorithm_verifies() {
        let rsa = TestKey::rsa(Alg::RS256, "seed");
        for alg in Alg::DEFAULT_ALLOWED {
            let key = if alg.is_rsa() {
                TestKey::from_rsa(&rsa, alg, "k")
            } else {
                TestKey::generate(alg, "k")
            };
            let cfg =
                json!({"providers": [{"issuer": "https://idp.example", "audiences": ["orders"], "jwks": key.jwks()}]});
            let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
            let t = key.sign(&good_claims());
            let jwt = parse(&t, 8192).unwrap();
            assert_eq!(jwt.alg, alg);
            assert_eq!(
                verify(&c.providers[0], &c.providers[0].keys, &jwt, NOW),
                Ok(()),
                "{alg}"
            );
            let stranger = if alg.is_rsa() {
                TestKey::from_rsa(&TestKey::rsa(alg, "x"), alg, "k")
            } else {
                TestKey::generate(alg, "k")
            };
            let bad = stranger.sign(&good_claims());
            assert_eq!(
                verify(&c.providers[0], &c.providers[0].keys, &parse(&bad, 8192).unwrap(), NOW),
                Err(AuthError::BadSignature),
                "{alg}"
            );
        }
    }

    #[test]
    fn embedded_key_headers_never_select_the_key() {
        // The attacker signs with their own key and points jku/x5u/jwk/x5c at it, reusing our kid.
        let f = fixture();
        let attacker = TestKey::generate(Alg::ES256, "ec-1");
        let t = attacker.sign(&good_claims());
        let (h, rest) = t.split_once('.').unwrap();
        let mut header: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).unwrap(),
        )
        .unwrap();
        header["jku"] = json!("https://attacker.example/jwks.json");
        header["x5u"] = json!("https://attacker.example/cert.pem");
        header["x5c"] = json!(["MIIB"]);
        let b64 = |v: &Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
        let forged = format!("{}.{rest}", b64(&header));
        assert_eq!(run(&f, &forged), Err(AuthError::BadSignature));
        // An embedded JWK object is never looked at.
        header["jwk"] = attacker.public_jwk();
        let forged = format!("{}.{rest}", b64(&header));
        assert_eq!(run(&f, &forged), Err(AuthError::BadSignature));
        // Without the header games the attacker's token fails the same way.
        assert_eq!(run(&f, &t), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let f = fixture();
        let t = f.ec.sign(&good_claims());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            with(good_claims(), "sub", json!("admin")).to_string(),
        );
        parts[1] = &forged;
        assert_eq!(run(&f, &parts.join(".")), Err(AuthError::BadSignature));
    }

    #[test]
    fn allow_list_is_enforced_before_keys() {
        let f = fixture();
        let es384 = TestKey::generate(Alg::ES384, "ec-1");
        assert_eq!(run(&f, &es384.sign(&good_claims())), Err(AuthError::KeyAlgMismatch));
        let cfg = json!({"providers": [{"issuer": "https://idp.example", "algorithms": ["ES256"],
            "jwks": {"keys": [f.rsa.public_jwk(), f.ec.public_jwk()]}}]});
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let t = f.rsa.sign(&good_claims());
        let jwt = parse(&t, 8192).unwrap();
        assert_eq!(
            verify(&c.providers[0], &c.providers[0].keys, &jwt, NOW),
            Err(AuthError::AlgNotAllowed(Alg::RS256))
        );
    }

    #[test]
    fn kidless_tokens_try_fitting_keys() {
        let f = fixture();
        let anon = TestKey::from_rsa(&f.rsa, Alg::RS256, "");
        assert_eq!(run(&f, &anon.sign(&good_claims())), Ok(()));
    }

    #[test]
    fn hmac_with_configured_secret() {
        let secret = [9u8; 32];
        let cfg = json!({"providers": [{"issuer": "https://idp.example", "algorithms": ["HS256"],
            "hmacSecret": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret)}]});
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let good = TestKey::hmac(Alg::HS256, &secret).sign(&good_claims());
        let bad = TestKey::hmac(Alg::HS256, &[8u8; 32]).sign(&good_claims());
        let p = &c.providers[0];
        assert_eq!(verify(p, &p.keys, &parse(&good, 8192).unwrap(), NOW), Ok(()));
        assert_eq!(
            verify(p, &p.keys, &parse(&bad, 8192).unwrap(), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn descriptions_never_echo_the_token() {
        let f = fixture();
        let t = f.rsa.sign(&with(good_claims(), "exp", json!(1)));
        let e = run(&f, &t).unwrap_err();
        assert_eq!(e.reason(), "expired");
        assert!(!e.description().contains(&t[..20]));
    }

    /// `maxLifetime`: `exp - iat` at the limit passes, one second over is refused, and a
    /// token without `iat` (or `exp`) has no bounded lifetime and is refused too. Checked
    /// after the dates, so an expired token still reports `expired`.
    #[test]
    fn max_lifetime_bounds_exp_minus_iat() {
        let key = TestKey::generate(Alg::ES256, "k");
        let cfg = json!({"providers": [{"issuer": "https://idp.example", "audiences": ["orders"],
            "maxLifetime": "5m", "jwks": {"keys": [key.public_jwk()]}}]});
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.max_lifetime_seconds, Some(300));
        let check = |claims: Value| verify(p, &p.keys, &parse(&key.sign(&claims), 8192).unwrap(), NOW);
        let base = json!({"iss": "https://idp.example", "aud": "orders", "iat": NOW - 10});
        assert_eq!(check(with(base.clone(), "exp", json!(NOW + 290))), Ok(()));
        let over = check(with(base.clone(), "exp", json!(NOW + 291)));
        assert_eq!(
            over,
            Err(AuthError::LifetimeTooLong {
                max: 300,
                lifetime: Some(301)
            })
        );
        assert_eq!(over.unwrap_err().reason(), "lifetime_too_long");
        let no_iat = with(with(base.clone(), "exp", json!(NOW + 60)), "iat", Value::Null);
        let e = check(no_iat).unwrap_err();
        assert_eq!(
            e,
            AuthError::LifetimeTooLong {
                max: 300,
                lifetime: None
            }
        );
        assert!(e.description().contains("unbounded"), "{}", e.description());
        // Expired and too long: the date check speaks first.
        let old = json!({"iss": "https://idp.example", "aud": "orders", "iat": NOW - 10_000, "exp": NOW - 100});
        assert_eq!(check(old), Err(AuthError::Expired));
        // Without maxLifetime, a day-long token is fine.
        let f = fixture();
        let long = with(good_claims(), "exp", json!(NOW + 86_400));
        assert_eq!(run(&f, &f.rsa.sign(&long)), Ok(()));
    }

    #[test]
    fn max_lifetime_config_errors_name_the_field() {
        let refused = |extra: Value| {
            let mut p = json!({"issuer": "https://idp.example", "jwksUri": "https://idp.example/jwks"});
            for (k, v) in extra.as_object().unwrap() {
                p[k] = v.clone();
            }
            Config::from_json(json!({"providers": [p]}).to_string().as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(refused(json!({"maxLifetime": "soon"})).starts_with("providers[0].maxLifetime: "));
        assert!(refused(json!({"maxLifetime": "500ms"})).contains("whole number of seconds"));
        let alb = json!({"providers": [{"name": "alb", "maxLifetime": "1m", "alb": {"region": "eu-west-1",
            "signers": ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/x/50dc6c495c0c9188"]}}]});
        let e = Config::from_json(alb.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("providers[0].maxLifetime: does not apply to ALB"), "{e}");
    }

    /// `subjects`: `sub` must match one of the patterns; an absent `sub` matches none.
    #[test]
    fn subjects_constrain_sub() {
        let key = TestKey::generate(Alg::ES256, "k");
        let cfg = json!({"providers": [{"issuer": "https://idp.example", "audiences": ["orders"],
            "subjects": ["spiffe://cluster.local/ns/orders/*", "svc-reports"],
            "jwks": {"keys": [key.public_jwk()]}}]});
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let p = &c.providers[0];
        let check = |claims: Value| verify(p, &p.keys, &parse(&key.sign(&claims), 8192).unwrap(), NOW);
        let base = json!({"iss": "https://idp.example", "aud": "orders", "iat": NOW, "exp": NOW + 60});
        for ok in ["spiffe://cluster.local/ns/orders/sa/api", "svc-reports"] {
            assert_eq!(check(with(base.clone(), "sub", json!(ok))), Ok(()), "{ok}");
        }
        for bad in [
            json!("spiffe://cluster.local/ns/other/sa/api"),
            json!("SVC-REPORTS"),
            json!("svc-reports2"),
        ] {
            assert_eq!(
                check(with(base.clone(), "sub", bad.clone())),
                Err(AuthError::WrongSubject),
                "{bad}"
            );
        }
        let e = check(base).unwrap_err();
        assert_eq!((e.clone(), e.reason()), (AuthError::WrongSubject, "wrong_subject"));
        let empty = json!({"providers": [{"issuer": "https://i", "jwksUri": "https://i/j", "subjects": []}]});
        let e = Config::from_json(empty.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("providers[0].subjects: must not be empty"), "{e}");
    }

    /// The `txnToken` preset at verification: a Txn-Token with the draft's claims passes; a
    /// user's access token (another `typ`, or none), a token without `txn` (or a null one),
    /// one that lives longer than ten minutes, one for another trust domain and one without
    /// `req_wl` are refused, each with its own reason.
    #[test]
    fn txn_tokens_verify_as_the_draft_says() {
        let key = TestKey::generate(Alg::ES256, "tts");
        let cfg = json!({"providers": [{"name": "txn", "preset": {"name": "txnToken"},
            "issuer": "https://tts.trust-domain.example", "audiences": ["trust-domain.example"],
            "jwks": {"keys": [key.public_jwk()]}}]});
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let p = &c.providers[0];
        let check = |token: String| verify(p, &p.keys, &parse(&token, 8192).unwrap(), NOW);
        let txn = |claims: &Value| key.sign_typed("txntoken+jwt", claims);
        // The draft's example body (iat..exp is 6 minutes), with the issuer claimguard needs.
        let good = json!({"iss": "https://tts.trust-domain.example", "iat": NOW - 10, "exp": NOW + 350,
            "aud": "trust-domain.example", "txn": "97053963-771d-49cc-a4e3-20aad399c312",
            "sub": "d084sdrt234fsaw34tr23t", "req_wl": "apigateway.trust-domain.example",
            "rctx": {"req_ip": "69.151.72.123", "authn": "face"}, "scope": "trade.stocks",
            "tctx": {"action": "BUY", "ticker": "MSFT", "quantity": "100",
                     "customer_type": {"geo": "US", "level": "VIP"}}});
        assert_eq!(check(txn(&good)), Ok(()));
        assert_eq!(check(key.sign_typed("application/txntoken+jwt", &good)), Ok(()));
        let cases: Vec<(&str, String, AuthError)> = vec![
            ("AccessTokenTyp", key.sign_typed("at+jwt", &good), AuthError::WrongType),
            ("PlainJwt", key.sign(&good), AuthError::WrongType),
            (
                "NoTxn",
                txn(&with(good.clone(), "txn", Value::Null)),
                AuthError::MissingClaim("txn"),
            ),
            (
                "NoReqWl",
                txn(&with(good.clone(), "req_wl", Value::Null)),
                AuthError::MissingClaim("req_wl"),
            ),
            (
                "NoScope",
                txn(&with(good.clone(), "scope", Value::Null)),
                AuthError::MissingClaim("scope"),
            ),
            (
                "NoSub",
                txn(&with(good.clone(), "sub", Value::Null)),
                AuthError::MissingClaim("sub"),
            ),
            (
                "TooLongLived",
                txn(&with(good.clone(), "exp", json!(NOW + 591))),
                AuthError::LifetimeTooLong {
                    max: 600,
                    lifetime: Some(601),
                },
            ),
            (
                "NoIat",
                txn(&with(good.clone(), "iat", Value::Null)),
                AuthError::LifetimeTooLong {
                    max: 600,
                    lifetime: None,
                },
            ),
            (
                "Expired",
                txn(&with(good.clone(), "exp", json!(NOW - 61))),
                AuthError::Expired,
            ),
            (
                "OtherTrustDomain",
                txn(&with(good.clone(), "aud", json!("other-domain.example"))),
                AuthError::WrongAudience,
            ),
            (
                "NoAud",
                txn(&with(good.clone(), "aud", Value::Null)),
                AuthError::MissingAudience,
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(check(token), Err(want), "{name}");
        }
        let null_txn: Value = serde_json::from_str(
            &good
                .to_string()
                .replace(r#""txn":"97053963-771d-49cc-a4e3-20aad399c312""#, r#""txn":null"#),
        )
        .unwrap();
        let e = check(txn(&null_txn)).unwrap_err();
        assert_eq!(e, AuthError::MissingClaim("txn"));
        assert_eq!(
            (e.reason(), e.description().as_str()),
            ("missing_claim", "token has no txn claim, which is required")
        );
    }
}
