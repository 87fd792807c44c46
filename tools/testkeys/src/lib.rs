//! Test and demo keys for claimguard: a key pair, its public JWK, tokens signed with it.
//!
//! RSA keys come from a pool of sixteen committed 2048-bit keys (`keys/rsa-N.pem`), handed out
//! in turn: generating one costs tens of milliseconds, and the suite asks for many. They are
//! public, so they are for tests and demos only; [`TestKey::fresh`] generates a new key of any
//! kind (what `claimguard mint` uses). EC, EdDSA and HMAC keys are generated (cheap).
//!
//! The crate does not depend on the filter (the filter's own unit tests use it), so it names
//! the JOSE algorithms itself: every constructor takes anything whose `Display` is the
//! algorithm's name, such as `claimguard::crypto::alg::Alg`.

#![allow(clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};
use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The JOSE algorithms a test key signs with (RFC 7518 names).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// The algorithm whose name `alg` displays as; panics on any other name (a test bug).
    pub fn of(alg: impl Display) -> Alg {
        let name = alg.to_string();
        Alg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .unwrap_or_else(|| fail("algorithm", format!("{name:?} is not a JOSE signature algorithm")))
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
        )
    }
}

impl Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The committed RSA keys (PKCS#8 PEM), generated once with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`.
const RSA_POOL: [&str; 16] = [
    include_str!("../keys/rsa-0.pem"),
    include_str!("../keys/rsa-1.pem"),
    include_str!("../keys/rsa-2.pem"),
    include_str!("../keys/rsa-3.pem"),
    include_str!("../keys/rsa-4.pem"),
    include_str!("../keys/rsa-5.pem"),
    include_str!("../keys/rsa-6.pem"),
    include_str!("../keys/rsa-7.pem"),
    include_str!("../keys/rsa-8.pem"),
    include_str!("../keys/rsa-9.pem"),
    include_str!("../keys/rsa-10.pem"),
    include_str!("../keys/rsa-11.pem"),
    include_str!("../keys/rsa-12.pem"),
    include_str!("../keys/rsa-13.pem"),
    include_str!("../keys/rsa-14.pem"),
    include_str!("../keys/rsa-15.pem"),
];

static NEXT_RSA: AtomicUsize = AtomicUsize::new(0);

/// A signing key with its algorithm and `kid` (empty `kid` = tokens carry none).
pub struct TestKey {
    pub alg: Alg,
    pub kid: String,
    inner: Inner,
}

enum Inner {
    Rsa(RS256KeyPair),
    Es256(ES256KeyPair),
    Es384(ES384KeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

fn fail<T>(what: &str, e: impl std::fmt::Display) -> T {
    // Dev tooling only (never in the filter): a failure to generate or sign is a bug.
    panic!("{what}: {e}")
}

impl TestKey {
    /// The next committed 2048-bit RSA key for `alg` (RS* or PS*): sixteen calls in a process
    /// get sixteen different keys, then the pool starts again.
    pub fn rsa(alg: impl Display, kid: &str) -> TestKey {
        let alg = Alg::of(alg);
        let pem = RSA_POOL[NEXT_RSA.fetch_add(1, Ordering::Relaxed) % RSA_POOL.len()];
        let kp = RS256KeyPair::from_pem(pem).unwrap_or_else(|e| fail("RSA fixture", e));
        TestKey {
            alg,
            kid: kid.into(),
            inner: Inner::Rsa(kp),
        }
    }

    /// The same RSA key material as `other`, used with another algorithm or kid.
    pub fn from_rsa(other: &TestKey, alg: impl Display, kid: &str) -> TestKey {
        let alg = Alg::of(alg);
        match &other.inner {
            Inner::Rsa(kp) => {
                let der = kp.to_der().unwrap_or_else(|e| fail("RSA export", e));
                let kp = RS256KeyPair::from_der(&der).unwrap_or_else(|e| fail("RSA import", e));
                TestKey {
                    alg,
                    kid: kid.into(),
                    inner: Inner::Rsa(kp),
                }
            }
            _ => fail("from_rsa", "not an RSA key"),
        }
    }

    /// A key of the right type for `alg`: RSA from the committed pool, others generated (HMAC
    /// keys get 32 random bytes).
    pub fn generate(alg: impl Display, kid: &str) -> TestKey {
        let alg = Alg::of(alg);
        if alg.is_rsa() {
            return TestKey::rsa(alg, kid);
        }
        TestKey::fresh(alg, kid)
    }

    /// A newly generated key of the right type for `alg` (RSA: 2048 bits), never from the pool.
    pub fn fresh(alg: impl Display, kid: &str) -> TestKey {
        let alg = Alg::of(alg);
        let inner = match alg {
            a if a.is_rsa() => Inner::Rsa(RS256KeyPair::generate(2048).unwrap_or_else(|e| fail("RSA keygen", e))),
            Alg::ES256 => Inner::Es256(ES256KeyPair::generate()),
            Alg::ES384 => Inner::Es384(ES384KeyPair::generate()),
            Alg::EdDSA => Inner::Ed(Ed25519KeyPair::generate()),
            _ => Inner::Hmac(HS256Key::generate().to_bytes()),
        };
        TestKey {
            alg,
            kid: kid.into(),
            inner,
        }
    }

    pub fn hmac(alg: impl Display, secret: &[u8]) -> TestKey {
        TestKey {
            alg: Alg::of(alg),
            kid: String::new(),
            inner: Inner::Hmac(secret.to_vec()),
        }
    }

    /// Loads a key written by [`TestKey::to_pem`].
    pub fn from_pem(alg: impl Display, kid: &str, pem: &str) -> Result<TestKey, String> {
        let alg = Alg::of(alg);
        let inner = match alg {
            a if a.is_rsa() => Inner::Rsa(RS256KeyPair::from_pem(pem).map_err(|e| e.to_string())?),
            Alg::ES256 => Inner::Es256(ES256KeyPair::from_pem(pem).map_err(|e| e.to_string())?),
            Alg::ES384 => Inner::Es384(ES384KeyPair::from_pem(pem).map_err(|e| e.to_string())?),
            Alg::EdDSA => Inner::Ed(Ed25519KeyPair::from_pem(pem).map_err(|e| e.to_string())?),
            _ => return Err("HMAC secrets are not stored as PEM".into()),
        };
        Ok(TestKey {
            alg,
            kid: kid.into(),
            inner,
        })
    }

    pub fn to_pem(&self) -> String {
        match &self.inner {
            Inner::Rsa(k) => k.to_pem().unwrap_or_else(|e| fail("pem", e)),
            Inner::Es256(k) => k.to_pem().unwrap_or_else(|e| fail("pem", e)),
            Inner::Es384(k) => k.to_pem().unwrap_or_else(|e| fail("pem", e)),
            Inner::Ed(k) => k.to_pem(),
            Inner::Hmac(_) => fail("pem", "HMAC secrets are not stored as PEM"),
        }
    }

    /// The public key as a PEM SubjectPublicKeyInfo (what an ALB's key endpoint serves).
    pub fn public_pem(&self) -> String {
        match &self.inner {
            Inner::Rsa(k) => k.public_key().to_pem().unwrap_or_else(|e| fail("pem", e)),
            Inner::Es256(k) => k.public_key().to_pem().unwrap_or_else(|e| fail("pem", e)),
            Inner::Es384(k) => k.public_key().to_pem().unwrap_or_else(|e| fail("pem", e)),
            Inner::Ed(k) => k.public_key().to_pem(),
            Inner::Hmac(_) => fail("pem", "HMAC secrets have no public key"),
        }
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.inner {
            Inner::Rsa(k) => {
                let c = k.public_key().to_components();
                json!({"kty": "RSA", "n": b(&c.n), "e": b(&c.e)})
            }
            Inner::Es256(k) => {
                let p = k.public_key().public_key().to_bytes_uncompressed();
                json!({"kty": "EC", "crv": "P-256", "x": b(&p[1..33]), "y": b(&p[33..65])})
            }
            Inner::Es384(k) => {
                let p = k.public_key().public_key().to_bytes_uncompressed();
                json!({"kty": "EC", "crv": "P-384", "x": b(&p[1..49]), "y": b(&p[49..97])})
            }
            Inner::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b(&k.public_key().to_bytes())})
            }
            Inner::Hmac(s) => json!({"kty": "oct", "k": b(s)}),
        };
        jwk["alg"] = json!(self.alg.name());
        jwk["use"] = json!("sig");
        if !self.kid.is_empty() {
            jwk["kid"] = json!(self.kid);
        }
        jwk
    }

    /// `{"keys": [this key]}`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.public_jwk()]})
    }

    /// Signs exactly `claims` (no claim is added) with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_typed("JWT", claims)
    }

    /// As [`TestKey::sign`], with the JOSE header's `typ` set to `typ` (`JWT` for `sign`),
    /// e.g. `txntoken+jwt` for a Transaction Token or `at+jwt` for an RFC 9068 access token.
    pub fn sign_typed(&self, typ: &str, claims: &Value) -> String {
        let opts = HeaderOptions {
            signature_type: Some(typ.to_string()),
            ..HeaderOptions::default()
        };
        let map: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        let mut c = Claims::with_custom_claims(map, Duration::from_secs(1));
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        let kid = self.kid.as_str();
        macro_rules! with_kid {
            ($k:expr) => {
                with_kid!($k, sign_with_options)
            };
            ($k:expr, $method:ident) => {{
                let mut k = $k;
                if !kid.is_empty() {
                    k = k.with_key_id(kid);
                }
                k.$method(c, &opts)
            }};
        }
        let r = match (&self.inner, self.alg) {
            (Inner::Rsa(k), alg) => {
                let der = k.to_der().unwrap_or_else(|e| fail("RSA export", e));
                match alg {
                    Alg::RS256 => {
                        with_kid!(RS256KeyPair::from_der(&der).unwrap_or_else(|e| fail("der", e)))
                    }
                    Alg::RS384 => {
                        with_kid!(RS384KeyPair::from_der(&der).unwrap_or_else(|e| fail("der", e)))
                    }
                    Alg::RS512 => {
                        with_kid!(RS512KeyPair::from_der(&der).unwrap_or_else(|e| fail("der", e)))
                    }
                    Alg::PS256 => {
                        with_kid!(PS256KeyPair::from_der(&der).unwrap_or_else(|e| fail("der", e)))
                    }
                    Alg::PS384 => {
                        with_kid!(PS384KeyPair::from_der(&der).unwrap_or_else(|e| fail("der", e)))
                    }
                    Alg::PS512 => {
                        with_kid!(PS512KeyPair::from_der(&der).unwrap_or_else(|e| fail("der", e)))
                    }
                    other => fail("sign", format!("{other} with an RSA key")),
                }
            }
            (Inner::Es256(k), _) => {
                with_kid!(ES256KeyPair::from_bytes(&k.to_bytes()).unwrap_or_else(|e| fail("key", e)))
            }
            (Inner::Es384(k), _) => {
                with_kid!(ES384KeyPair::from_bytes(&k.to_bytes()).unwrap_or_else(|e| fail("key", e)))
            }
            (Inner::Ed(k), _) => {
                with_kid!(Ed25519KeyPair::from_bytes(&k.to_bytes()).unwrap_or_else(|e| fail("key", e)))
            }
            (Inner::Hmac(s), Alg::HS256) => with_kid!(HS256Key::from_bytes(s), authenticate_with_options),
            (Inner::Hmac(s), Alg::HS384) => with_kid!(HS384Key::from_bytes(s), authenticate_with_options),
            (Inner::Hmac(s), Alg::HS512) => with_kid!(HS512Key::from_bytes(s), authenticate_with_options),
            (_, other) => fail("sign", format!("{other} with this key")),
        };
        r.unwrap_or_else(|e| fail("sign", e))
    }
}

impl TestKey {
    /// Signs arbitrary header and payload *text* (duplicate members, odd types, any header
    /// field): the signature is valid for this key, so only claimguard's rules can refuse the
    /// token. RS256/384/512, ES256, ES384 and HMAC keys.
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(payload_json)
        );
        let sig = self.sign_bytes(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// A token as an AWS ALB writes `x-amzn-oidc-data`: base64url segments *with* `=`
    /// padding, signed over exactly those bytes (ES256 keys).
    pub fn sign_alb(&self, header: &Value, claims: &Value) -> String {
        use base64::engine::general_purpose::URL_SAFE;
        let input = format!(
            "{}.{}",
            URL_SAFE.encode(header.to_string()),
            URL_SAFE.encode(claims.to_string())
        );
        let sig = self.sign_bytes(input.as_bytes());
        format!("{input}.{}", URL_SAFE.encode(sig))
    }

    /// A raw signature over `msg` with this key's algorithm.
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        match (&self.inner, self.alg) {
            (Inner::Es256(k), _) => {
                let sk = p256::ecdsa::SigningKey::from_slice(&k.to_bytes()).unwrap_or_else(|e| fail("p256", e));
                let sig: p256::ecdsa::Signature = sk.sign(msg);
                sig.to_vec()
            }
            (Inner::Es384(k), _) => {
                let sk = p384::ecdsa::SigningKey::from_slice(&k.to_bytes()).unwrap_or_else(|e| fail("p384", e));
                let sig: p384::ecdsa::Signature = sk.sign(msg);
                sig.to_vec()
            }
            (Inner::Rsa(k), alg @ (Alg::RS256 | Alg::RS384 | Alg::RS512)) => {
                use rsa::pkcs8::DecodePrivateKey;
                use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
                let der = k.to_der().unwrap_or_else(|e| fail("RSA export", e));
                let sk = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap_or_else(|e| fail("pkcs8", e));
                let r = match alg {
                    Alg::RS384 => sk.sign(rsa::Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg)),
                    Alg::RS512 => sk.sign(rsa::Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg)),
                    _ => sk.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg)),
                };
                r.unwrap_or_else(|e| fail("RSA sign", e))
            }
            (Inner::Hmac(s), Alg::HS384) => hmac_sha512::sha384::HMAC::mac(msg, s).to_vec(),
            (Inner::Hmac(s), Alg::HS512) => hmac_sha512::HMAC::mac(msg, s).to_vec(),
            (Inner::Hmac(s), _) => hmac_sha256::HMAC::mac(msg, s).to_vec(),
            _ => fail("sign_bytes", "RS256/384/512, ES256, ES384 and HMAC keys only"),
        }
    }
}

/// A random (version 4) UUID, e.g. a Transaction Token's `txn`: 122 bits from the same
/// generator as the keys.
pub fn random_uuid() -> String {
    let bytes = HS256Key::generate().to_bytes();
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(&bytes) {
        *d = *s;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A token with the given header and payload and a junk signature: for `alg: none` and other
/// tokens no key should ever accept.
pub fn unsigned_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

/// Signs messages with a private key parsed once: minting many tokens (the benchmark's
/// never-seen-before pools) without re-importing the key for every signature.
pub type Signer = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

impl TestKey {
    /// A [`Signer`] for this key's algorithm: RS256/384/512, PS256/384/512, ES256, ES384 and
    /// EdDSA.
    pub fn signer(&self) -> Signer {
        use p256::ecdsa::signature::Signer as _;
        use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
        match (&self.inner, self.alg) {
            (Inner::Rsa(k), alg @ (Alg::RS256 | Alg::RS384 | Alg::RS512)) => {
                use rsa::pkcs8::DecodePrivateKey;
                let der = k.to_der().unwrap_or_else(|e| fail("RSA export", e));
                let sk = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap_or_else(|e| fail("pkcs8", e));
                Box::new(move |msg: &[u8]| {
                    let r = match alg {
                        Alg::RS384 => sk.sign(rsa::Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg)),
                        Alg::RS512 => sk.sign(rsa::Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg)),
                        _ => sk.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg)),
                    };
                    r.unwrap_or_else(|e| fail("RSA sign", e))
                })
            }
            (Inner::Rsa(k), alg @ (Alg::PS256 | Alg::PS384 | Alg::PS512)) => {
                use rsa::pkcs8::DecodePrivateKey;
                let der = k.to_der().unwrap_or_else(|e| fail("RSA export", e));
                let sk = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap_or_else(|e| fail("pkcs8", e));
                Box::new(move |msg: &[u8]| {
                    let mut rng = rand_core::OsRng;
                    let r = match alg {
                        Alg::PS384 => sk.sign_with_rng(&mut rng, rsa::Pss::new::<Sha384>(), &Sha384::digest(msg)),
                        Alg::PS512 => sk.sign_with_rng(&mut rng, rsa::Pss::new::<Sha512>(), &Sha512::digest(msg)),
                        _ => sk.sign_with_rng(&mut rng, rsa::Pss::new::<Sha256>(), &Sha256::digest(msg)),
                    };
                    r.unwrap_or_else(|e| fail("RSA-PSS sign", e))
                })
            }
            (Inner::Es256(k), _) => {
                let sk = p256::ecdsa::SigningKey::from_slice(&k.to_bytes()).unwrap_or_else(|e| fail("p256", e));
                Box::new(move |msg: &[u8]| {
                    let sig: p256::ecdsa::Signature = sk.sign(msg);
                    sig.to_vec()
                })
            }
            (Inner::Es384(k), _) => {
                let sk = p384::ecdsa::SigningKey::from_slice(&k.to_bytes()).unwrap_or_else(|e| fail("p384", e));
                Box::new(move |msg: &[u8]| {
                    let sig: p384::ecdsa::Signature = sk.sign(msg);
                    sig.to_vec()
                })
            }
            (Inner::Ed(k), _) => {
                let kp = ed25519_compact::KeyPair::from_slice(&k.to_bytes()).unwrap_or_else(|e| fail("ed25519", e));
                Box::new(move |msg: &[u8]| kp.sk.sign(msg, None).to_vec())
            }
            _ => fail("signer", "RSA, ES256, ES384 and EdDSA keys only"),
        }
    }
}
