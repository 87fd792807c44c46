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

use crate::base::json::parse_strict;
use crate::crypto::alg::Alg;
use crate::keys::alb::{is_uuid, AlbProvider};
use crate::keys::jwk::KeySet;
use crate::token::TokenError;
use crate::verify::provider::Provider;
use crate::verify::{check_claim_types, AuthError};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};

/// base64url that accepts canonical `=` padding or none (what ALBs send), nothing else.
const PADDED_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::keys::alb::pem_to_jwk;
    use claimguard_testkeys::TestKey;
    use serde_json::json;

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
}
