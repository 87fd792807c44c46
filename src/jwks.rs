//! JWK sets (RFC 7517) → verification keys. Owns what makes a key acceptable: RSA moduli of
//! at least 2048 bits with a sane exponent, EC points on their named curve, `kty`/`crv`/`alg`
//! agreeing with each other, no private material. A key that breaks a rule is reported with
//! its path (`keys[1].n`) so a config author can find it; keys meant for encryption
//! (`use: enc`) or of types claimguard does not verify with are skipped, not fatal.

use crate::alg::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::{
    ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, ES256PublicKey, ES384PublicKey, Ed25519PublicKey,
    EdDSAPublicKeyLike, HS256Key, HS384Key, HS512Key, MACLike, NoCustomClaims, PS256PublicKey, PS384PublicKey,
    PS512PublicKey, RS256PublicKey, RS384PublicKey, RS512PublicKey, RSAPublicKeyLike, UnixTimeStamp,
    VerificationOptions,
};
use serde_json::{Map, Value};

pub const MIN_RSA_BITS: usize = 2048;
/// Larger moduli only cost verification time; nobody issues JWTs with them.
pub const MAX_RSA_BITS: usize = 8192;
/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output; 32 bytes for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// One public key, ready to verify with each algorithm it may be used for.
pub struct VerificationKey {
    pub kid: Option<String>,
    /// What the key is, for messages: `RSA-2048`, `EC P-256`, `OKP Ed25519`, `oct`.
    pub description: String,
    verifiers: Vec<SigVerifier>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("description", &self.description)
            .field("algorithms", &self.algorithms())
            .finish()
    }
}

/// A key bound to one algorithm. jwt-simple's key types carry the algorithm in their type, so
/// a key can never be used with an algorithm it was not built for (no RS256/HS256 confusion).
enum SigVerifier {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
}

impl SigVerifier {
    fn alg(&self) -> Alg {
        match self {
            SigVerifier::RS256(_) => Alg::RS256,
            SigVerifier::RS384(_) => Alg::RS384,
            SigVerifier::RS512(_) => Alg::RS512,
            SigVerifier::PS256(_) => Alg::PS256,
            SigVerifier::PS384(_) => Alg::PS384,
            SigVerifier::PS512(_) => Alg::PS512,
            SigVerifier::ES256(_) => Alg::ES256,
            SigVerifier::ES384(_) => Alg::ES384,
            SigVerifier::EdDSA(_) => Alg::EdDSA,
            SigVerifier::HS256(_) => Alg::HS256,
            SigVerifier::HS384(_) => Alg::HS384,
            SigVerifier::HS512(_) => Alg::HS512,
        }
    }

    /// Checks only the signature over `token`: jwt-simple's own claim checks are neutralised
    /// (time frozen at 0, future accepted) because [`crate::verify`] owns the claims.
    fn verify(&self, token: &str, max_token_bytes: usize) -> Result<(), SignatureError> {
        let opts = VerificationOptions {
            accept_future: true,
            time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(0)),
            artificial_time: Some(UnixTimeStamp::from_secs(0)),
            max_token_length: Some(max_token_bytes),
            max_header_length: Some(max_token_bytes),
            ..VerificationOptions::default()
        };
        let o = Some(opts);
        let r = match self {
            SigVerifier::RS256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::RS384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::RS512(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::PS256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::PS384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::PS512(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::ES256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::ES384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::EdDSA(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::HS256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::HS384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            SigVerifier::HS512(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
        };
        r.map_err(|e| match e.downcast_ref::<jwt_simple::JWTError>() {
            Some(jwt_simple::JWTError::InvalidSignature | jwt_simple::JWTError::InvalidAuthenticationTag) => {
                SignatureError::Invalid
            }
            Some(jwt_simple::JWTError::NotJWT) => SignatureError::Rejected("token type (typ) is not JWT"),
            _ => SignatureError::Rejected("token could not be verified"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not match the key.
    Invalid,
    /// The verifier refused the token before or after the signature check.
    Rejected(&'static str),
}

impl VerificationKey {
    /// Whether this key may verify `alg` (its type fits and its JWK `alg`, if any, agrees).
    pub fn supports(&self, alg: Alg) -> bool {
        self.verifiers.iter().any(|v| v.alg() == alg)
    }

    pub fn verify(&self, alg: Alg, token: &str, max_token_bytes: usize) -> Result<(), SignatureError> {
        match self.verifiers.iter().find(|v| v.alg() == alg) {
            Some(v) => v.verify(token, max_token_bytes),
            None => Err(SignatureError::Rejected("key does not support the token's algorithm")),
        }
    }

    pub fn algorithms(&self) -> Vec<Alg> {
        self.verifiers.iter().map(SigVerifier::alg).collect()
    }

    /// A shared-secret key for the HMAC algorithms in `algs`. Callers enforce the minimum length.
    pub fn hmac(secret: &[u8], algs: &[Alg]) -> VerificationKey {
        let verifiers = algs
            .iter()
            .filter_map(|a| match a {
                Alg::HS256 => Some(SigVerifier::HS256(HS256Key::from_bytes(secret))),
                Alg::HS384 => Some(SigVerifier::HS384(HS384Key::from_bytes(secret))),
                Alg::HS512 => Some(SigVerifier::HS512(HS512Key::from_bytes(secret))),
                _ => None,
            })
            .collect();
        VerificationKey {
            kid: None,
            description: "oct (hmacSecret)".into(),
            verifiers,
        }
    }
}

/// The usable keys of one JWKS, and what was left out of it and why.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// Keys that break a rule: (path, why). Inline config treats any as fatal.
    pub rejected: Vec<(String, String)>,
    /// Keys that are fine but not for us (encryption keys, unknown types): (path, why).
    pub skipped: Vec<(String, String)>,
}

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn find_by_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys.iter().filter(move |k| k.kid.as_deref() == Some(kid))
    }
}

/// Parses a JWKS document (`{"keys":[...]}`). Errors only when the document itself is not a
/// JWKS; individual bad keys land in [`KeySet::rejected`].
pub fn parse_jwks(doc: &Value) -> Result<KeySet, (String, String)> {
    let obj = doc.as_object().ok_or_else(|| {
        (
            String::new(),
            "a JWKS must be a JSON object with a \"keys\" array".to_string(),
        )
    })?;
    let keys = match obj.get("keys") {
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(("keys".into(), "must be an array of JWKs".into())),
        None => return Err(("keys".into(), "is required".into())),
    };
    let mut set = KeySet::default();
    for (i, key) in keys.iter().enumerate() {
        let path = format!("keys[{i}]");
        match parse_jwk(key) {
            Ok(Parsed::Key(k)) => set.keys.push(k),
            Ok(Parsed::Skip(why)) => set.skipped.push((path, why)),
            Err((field, why)) => {
                let p = if field.is_empty() {
                    path
                } else {
                    format!("{path}.{field}")
                };
                set.rejected.push((p, why))
            }
        }
    }
    Ok(set)
}

enum Parsed {
    Key(VerificationKey),
    Skip(String),
}

type FieldError = (String, String);

fn field_err(field: &str, why: impl Into<String>) -> FieldError {
    (field.to_string(), why.into())
}

fn parse_jwk(v: &Value) -> Result<Parsed, FieldError> {
    let jwk = v
        .as_object()
        .ok_or_else(|| field_err("", "a JWK must be a JSON object"))?;
    let kty = str_field(jwk, "kty")?.ok_or_else(|| field_err("kty", "is required"))?;
    let kid = str_field(jwk, "kid")?.map(str::to_owned);
    if let Some(u) = str_field(jwk, "use")? {
        if u != "sig" {
            return Ok(Parsed::Skip(format!("use is {u:?}, not \"sig\"")));
        }
    }
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        if jwk.contains_key(private) && kty != "oct" {
            return Err(field_err(
                private,
                "private key material must never be published in a JWKS",
            ));
        }
    }
    let jwk_alg = match str_field(jwk, "alg")? {
        None => None,
        Some(name) => match Alg::from_name(name) {
            Some(a) => Some(a),
            None => {
                return Ok(Parsed::Skip(format!(
                    "alg {name:?} is not a supported signature algorithm"
                )))
            }
        },
    };
    let (description, verifiers) = match kty {
        "RSA" => rsa_key(jwk, jwk_alg)?,
        "EC" => ec_key(jwk, jwk_alg)?,
        "OKP" => okp_key(jwk, jwk_alg)?,
        "oct" => {
            return Ok(Parsed::Skip(
                "symmetric (oct) keys in a JWKS are never used; configure hmacSecret on the provider".into(),
            ))
        }
        other => return Ok(Parsed::Skip(format!("kty {other:?} is not supported"))),
    };
    if verifiers.is_empty() {
        return Err(field_err(
            "alg",
            format!("{description} key cannot be used with alg {:?}", jwk_alg.map(Alg::name)),
        ));
    }
    Ok(Parsed::Key(VerificationKey {
        kid,
        description,
        verifiers,
    }))
}

fn str_field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, FieldError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(field_err(name, "must be a string")),
    }
}

fn b64_field(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, FieldError> {
    let s = str_field(jwk, name)?.ok_or_else(|| field_err(name, "is required"))?;
    // Some identity providers pad JWK members; padding carries no information, so accept it here
    // (never in tokens, where encodings must be canonical).
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| field_err(name, format!("is not valid base64url: {e}")))
}

fn rsa_key(jwk: &Map<String, Value>, jwk_alg: Option<Alg>) -> Result<(String, Vec<SigVerifier>), FieldError> {
    let n = b64_field(jwk, "n")?;
    let e = b64_field(jwk, "e")?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let bits = bit_len(n);
    if bits < MIN_RSA_BITS {
        return Err(field_err(
            "n",
            format!("RSA modulus is {bits} bits; at least {MIN_RSA_BITS} are required"),
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(field_err(
            "n",
            format!("RSA modulus is {bits} bits; at most {MAX_RSA_BITS} are accepted"),
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err(field_err("n", "RSA modulus must be odd"));
    }
    if e.len() > 4 || e.is_empty() {
        return Err(field_err("e", "RSA exponent must be between 3 and 2^32-1"));
    }
    let e_val = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if e_val < 3 || e_val % 2 == 0 {
        return Err(field_err(
            "e",
            format!("RSA exponent {e_val} is unsafe; it must be odd and at least 3"),
        ));
    }
    if let Some(a) = jwk_alg {
        if !a.is_rsa() {
            return Err(field_err("alg", format!("{a} does not fit an RSA key")));
        }
    }
    let bad = |_| field_err("n", "is not a usable RSA public key");
    let mut out = Vec::new();
    for a in [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512] {
        if jwk_alg.is_some_and(|j| j != a) {
            continue;
        }
        out.push(match a {
            Alg::RS256 => SigVerifier::RS256(RS256PublicKey::from_components(n, e).map_err(bad)?),
            Alg::RS384 => SigVerifier::RS384(RS384PublicKey::from_components(n, e).map_err(bad)?),
            Alg::RS512 => SigVerifier::RS512(RS512PublicKey::from_components(n, e).map_err(bad)?),
            Alg::PS256 => SigVerifier::PS256(PS256PublicKey::from_components(n, e).map_err(bad)?),
            Alg::PS384 => SigVerifier::PS384(PS384PublicKey::from_components(n, e).map_err(bad)?),
            _ => SigVerifier::PS512(PS512PublicKey::from_components(n, e).map_err(bad)?),
        });
    }
    Ok((format!("RSA-{bits}"), out))
}

fn ec_key(jwk: &Map<String, Value>, jwk_alg: Option<Alg>) -> Result<(String, Vec<SigVerifier>), FieldError> {
    let crv = str_field(jwk, "crv")?.ok_or_else(|| field_err("crv", "is required for an EC key"))?;
    let (alg, len) = match crv {
        "P-256" => (Alg::ES256, 32),
        "P-384" => (Alg::ES384, 48),
        other => {
            return Err(field_err(
                "crv",
                format!("curve {other:?} is not supported (P-256, P-384)"),
            ))
        }
    };
    if let Some(a) = jwk_alg {
        if a != alg {
            return Err(field_err(
                "alg",
                format!("{a} does not fit curve {crv}; it needs {alg}"),
            ));
        }
    }
    let x = b64_field(jwk, "x")?;
    let y = b64_field(jwk, "y")?;
    if x.len() != len {
        return Err(field_err(
            "x",
            format!("must be {len} bytes for {crv}, got {}", x.len()),
        ));
    }
    if y.len() != len {
        return Err(field_err(
            "y",
            format!("must be {len} bytes for {crv}, got {}", y.len()),
        ));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let off_curve = |_| field_err("x", format!("(x, y) is not a valid point on {crv}"));
    let v = if alg == Alg::ES256 {
        SigVerifier::ES256(ES256PublicKey::from_bytes(&point).map_err(off_curve)?)
    } else {
        SigVerifier::ES384(ES384PublicKey::from_bytes(&point).map_err(off_curve)?)
    };
    Ok((format!("EC {crv}"), vec![v]))
}

fn okp_key(jwk: &Map<String, Value>, jwk_alg: Option<Alg>) -> Result<(String, Vec<SigVerifier>), FieldError> {
    let crv = str_field(jwk, "crv")?.ok_or_else(|| field_err("crv", "is required for an OKP key"))?;
    if crv != "Ed25519" {
        return Err(field_err(
            "crv",
            format!("curve {crv:?} is not supported for signatures (Ed25519)"),
        ));
    }
    if let Some(a) = jwk_alg {
        if a != Alg::EdDSA {
            return Err(field_err(
                "alg",
                format!("{a} does not fit an Ed25519 key; it needs EdDSA"),
            ));
        }
    }
    let x = b64_field(jwk, "x")?;
    if x.len() != 32 {
        return Err(field_err("x", format!("must be 32 bytes for Ed25519, got {}", x.len())));
    }
    let k = Ed25519PublicKey::from_bytes(&x).map_err(|_| field_err("x", "is not a valid Ed25519 public key"))?;
    Ok(("OKP Ed25519".into(), vec![SigVerifier::EdDSA(k)]))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or(&[])
}

fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::keys::TestKey;
    use serde_json::json;

    fn one(doc: Value) -> KeySet {
        parse_jwks(&doc).unwrap()
    }

    #[test]
    fn accepts_rsa_ec_okp_and_binds_algorithms() {
        let rsa = TestKey::rsa(Alg::RS256, "r1");
        let ec = TestKey::generate(Alg::ES256, "e1");
        let ed = TestKey::generate(Alg::EdDSA, "o1");
        let mut rsa_no_alg = rsa.public_jwk();
        rsa_no_alg.as_object_mut().unwrap().remove("alg");
        let set = one(json!({"keys": [rsa.public_jwk(), ec.public_jwk(), ed.public_jwk(), rsa_no_alg]}));
        assert!(set.rejected.is_empty(), "{:?}", set.rejected);
        assert_eq!(set.keys.len(), 4);
        assert_eq!(set.keys[0].algorithms(), vec![Alg::RS256]);
        assert_eq!(set.keys[1].algorithms(), vec![Alg::ES256]);
        assert_eq!(set.keys[2].algorithms(), vec![Alg::EdDSA]);
        // An RSA JWK without alg may verify any RSA algorithm, never an EC or HMAC one.
        assert_eq!(set.keys[3].algorithms().len(), 6);
        assert!(!set.keys[3].supports(Alg::HS256));
        assert!(set.keys[0].description.starts_with("RSA-2048"));
    }

    #[test]
    fn rejects_weak_and_inconsistent_keys_with_paths() {
        let rsa = TestKey::rsa(Alg::RS256, "r1");
        let ec = TestKey::generate(Alg::ES256, "e1");
        let mut short = rsa.public_jwk();
        // 1024-bit modulus: keep the top half of the real one.
        let n = URL_SAFE_NO_PAD.decode(short["n"].as_str().unwrap()).unwrap();
        short["n"] = json!(URL_SAFE_NO_PAD.encode(&n[..128]));
        let mut e1 = rsa.public_jwk();
        e1["e"] = json!("AQ");
        let mut wrong_crv_alg = ec.public_jwk();
        wrong_crv_alg["alg"] = json!("ES384");
        let mut off_curve = ec.public_jwk();
        off_curve["y"] = off_curve["x"].clone();
        let mut private = ec.public_jwk();
        private["d"] = json!("AAAA");
        let mut rsa_as_es = rsa.public_jwk();
        rsa_as_es["alg"] = json!("ES256");
        let mut short_x = ec.public_jwk();
        short_x["x"] = json!("AAAA");
        let set =
            one(json!({"keys": [short, e1, wrong_crv_alg, off_curve, private, rsa_as_es, short_x, {"kid": "x"}, 5]}));
        let paths: Vec<&str> = set.rejected.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "keys[0].n",
                "keys[1].e",
                "keys[2].alg",
                "keys[3].x",
                "keys[4].d",
                "keys[5].alg",
                "keys[6].x",
                "keys[7].kty",
                "keys[8]"
            ]
        );
        assert!(set.rejected[0].1.contains("1024 bits"), "{}", set.rejected[0].1);
        assert!(set.keys.is_empty());
    }

    #[test]
    fn skips_encryption_and_unknown_keys() {
        let set = one(json!({"keys": [
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "XYZ"},
            {"kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}
        ]}));
        assert_eq!(set.skipped.len(), 4);
        assert!(set.rejected.is_empty());
    }

    #[test]
    fn document_shape_errors() {
        assert_eq!(parse_jwks(&json!([])).err().unwrap().0, "");
        assert_eq!(parse_jwks(&json!({})).err().unwrap().0, "keys");
        assert_eq!(parse_jwks(&json!({"keys": {}})).err().unwrap().0, "keys");
    }

    #[test]
    fn bit_length() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[1]), 1);
        assert_eq!(bit_len(&[0x80, 0]), 16);
        assert_eq!(strip_leading_zeros(&[0, 0, 5]), &[5]);
        assert_eq!(strip_leading_zeros(&[0, 0]), &[] as &[u8]);
    }
}
