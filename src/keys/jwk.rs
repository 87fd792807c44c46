//! JWK sets (RFC 7517) → verification keys. Owns what makes a key acceptable: RSA moduli of
//! at least 2048 bits with a sane exponent, EC points on their named curve, `kty`/`crv`/`alg`
//! agreeing with each other, no private material. A key that breaks a rule is reported with
//! its path (`keys[1].n`) so a config author can find it; keys meant for encryption
//! (`use: enc`) or of types claimguard does not verify with are skipped, not fatal.

use crate::crypto::alg::Alg;
use crate::crypto::PublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

pub const MIN_RSA_BITS: usize = 2048;
/// More keys than any identity provider publishes; bounds what a JWKS can make a VM hold.
pub const MAX_KEYS: usize = 64;
/// Larger moduli only cost verification time; nobody issues JWTs with them.
pub const MAX_RSA_BITS: usize = 8192;
/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output; 32 bytes for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// One public key and the algorithms it may verify.
pub struct VerificationKey {
    pub kid: Option<String>,
    /// What the key is, for messages: `RSA-2048`, `EC P-256`, `OKP Ed25519`, `oct`.
    pub description: String,
    key: PublicKey,
    /// The algorithms this key serves: those its family fits, narrowed to its JWK `alg`.
    /// The key decides the algorithm, never the token (no RS256/HS256 confusion).
    algorithms: Vec<Alg>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("description", &self.description)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

impl VerificationKey {
    /// Whether this key may verify `alg` (its type fits and its JWK `alg`, if any, agrees).
    pub fn supports(&self, alg: Alg) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Checks `sig` over `signing_input` with `alg`.
    pub fn verify(&self, alg: Alg, signing_input: &[u8], sig: &[u8]) -> bool {
        self.supports(alg) && self.key.verify(alg, signing_input, sig)
    }

    /// The public key itself (for differential tests against its crate reference).
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    pub fn algorithms(&self) -> Vec<Alg> {
        self.algorithms.clone()
    }

    /// A shared-secret key for the HMAC algorithms in `algs`. Callers enforce the minimum length.
    pub fn hmac(secret: &[u8], algs: &[Alg]) -> VerificationKey {
        VerificationKey {
            kid: None,
            description: "oct (hmacSecret)".into(),
            key: PublicKey::hmac(secret),
            algorithms: algs.iter().copied().filter(|a| a.is_hmac()).collect(),
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
        Some(Value::Array(keys)) if keys.len() > MAX_KEYS => {
            return Err((
                "keys".into(),
                format!("has {} keys; at most {MAX_KEYS} are accepted", keys.len()),
            ));
        }
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
    match jwk.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if !ops.iter().any(|o| o == "verify" || o == "sign") => {
            return Ok(Parsed::Skip("key_ops does not include verify".into()));
        }
        Some(Value::Array(_)) => {}
        Some(_) => return Err(field_err("key_ops", "must be an array of strings")),
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
    let (description, key, algorithms) = match kty {
        "RSA" => rsa_key(jwk, jwk_alg)?,
        "EC" => ec_key(jwk, jwk_alg)?,
        "OKP" => okp_key(jwk, jwk_alg)?,
        "oct" => {
            // A published symmetric key is a leaked secret, and a key set mixing symmetric and
            // asymmetric keys is ambiguous: refuse it rather than quietly skip it.
            return Err(field_err(
                "kty",
                "symmetric (oct) keys must never be published in a JWKS; configure hmacSecret on the provider",
            ));
        }
        other => return Ok(Parsed::Skip(format!("kty {other:?} is not supported"))),
    };
    if algorithms.is_empty() {
        return Err(field_err(
            "alg",
            format!("{description} key cannot be used with alg {:?}", jwk_alg.map(Alg::name)),
        ));
    }
    Ok(Parsed::Key(VerificationKey {
        kid,
        description,
        key,
        algorithms,
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

type Compiled = (String, PublicKey, Vec<Alg>);

fn narrowed(family: &[Alg], jwk_alg: Option<Alg>) -> Vec<Alg> {
    family
        .iter()
        .copied()
        .filter(|a| jwk_alg.is_none_or(|j| j == *a))
        .collect()
}

fn rsa_key(jwk: &Map<String, Value>, jwk_alg: Option<Alg>) -> Result<Compiled, FieldError> {
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
    if roca_fingerprint(n) {
        return Err(field_err(
            "n",
            "RSA modulus has the ROCA fingerprint (CVE-2017-15361): the private key can be recovered",
        ));
    }
    let key = PublicKey::rsa(n, e).map_err(|_| field_err("n", "is not a usable RSA public key"))?;
    let family = [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512];
    Ok((format!("RSA-{bits}"), key, narrowed(&family, jwk_alg)))
}

fn ec_key(jwk: &Map<String, Value>, jwk_alg: Option<Alg>) -> Result<Compiled, FieldError> {
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
    let key = if alg == Alg::ES256 {
        PublicKey::p256(&point)
    } else {
        PublicKey::p384(&point)
    };
    let key = key.map_err(|_| field_err("x", format!("(x, y) is not a valid point on {crv}")))?;
    Ok((format!("EC {crv}"), key, vec![alg]))
}

fn okp_key(jwk: &Map<String, Value>, jwk_alg: Option<Alg>) -> Result<Compiled, FieldError> {
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
    let key = PublicKey::ed25519(&x).map_err(|_| field_err("x", "is not a valid Ed25519 public key"))?;
    Ok(("OKP Ed25519".into(), key, vec![Alg::EdDSA]))
}

/// The ROCA test (Nemec et al., CCS 2017): moduli from the vulnerable Infineon library are
/// `n ≡ 65537^k (mod p)` for every small prime `p` below; a random modulus passes for all of
/// them with negligible probability.
fn roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: [u64; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107,
        109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let r = n.iter().fold(0u64, |acc, b| (acc * 256 + u64::from(*b)) % p);
        // Walk the subgroup generated by 65537 mod p.
        let g = 65537 % p;
        let mut x = 1u64;
        for _ in 0..p {
            if x == r {
                return true;
            }
            x = x * g % p;
        }
        false
    })
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
    use claimguard_testkeys::TestKey;
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
            {"kty": "XYZ"},
            {"kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}
        ]}));
        assert_eq!(set.skipped.len(), 3);
        assert!(set.rejected.is_empty());
    }

    #[test]
    fn published_secrets_are_refused() {
        let set = one(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}));
        assert_eq!(set.rejected[0].0, "keys[0].kty");
    }

    #[test]
    fn roca_moduli_are_refused() {
        // A random odd modulus is (overwhelmingly) not ROCA-shaped.
        let rsa = TestKey::rsa(Alg::RS256, "r");
        let n = URL_SAFE_NO_PAD.decode(rsa.public_jwk()["n"].as_str().unwrap()).unwrap();
        assert!(!roca_fingerprint(&n));
        // 65537^k itself is in every subgroup: the fingerprint fires.
        let mut x: Vec<u8> = vec![1];
        for _ in 0..3 {
            // x *= 65537 (big-endian byte vector)
            let mut carry = 0u64;
            for b in x.iter_mut().rev() {
                let v = u64::from(*b) * 65537 + carry;
                *b = (v & 0xff) as u8;
                carry = v >> 8;
            }
            while carry > 0 {
                x.insert(0, (carry & 0xff) as u8);
                carry >>= 8;
            }
        }
        assert!(roca_fingerprint(&x));
    }

    #[test]
    fn document_shape_errors() {
        assert_eq!(parse_jwks(&json!([])).err().unwrap().0, "");
        assert_eq!(parse_jwks(&json!({})).err().unwrap().0, "keys");
        assert_eq!(parse_jwks(&json!({"keys": {}})).err().unwrap().0, "keys");
        let many: Vec<Value> = (0..65).map(|i| json!({"kty": "XYZ", "kid": i})).collect();
        assert!(parse_jwks(&json!({"keys": many}))
            .err()
            .unwrap()
            .1
            .contains("at most 64"));
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
