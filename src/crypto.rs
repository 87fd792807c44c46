//! Raw signature verification: one public key, one algorithm, the signed bytes and the
//! signature bytes. This is the single place claimguard checks a signature, for tokens and
//! for the Wycheproof vectors alike. It uses the RustCrypto primitives (the same ones
//! jwt-simple uses in its pure-Rust mode) directly, so a token is parsed once, by
//! [`crate::token`], and nothing here interprets JOSE headers or claims.

use crate::alg::Alg;
use p256::ecdsa::signature::Verifier as _;
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};

/// A public key of one of the supported families.
#[derive(Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey, Option<FastRsa>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
    /// A shared secret (`hmacSecret`), never from a JWKS.
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKey::Rsa(..) => "Rsa",
            PublicKey::P256(_) => "P256",
            PublicKey::P384(_) => "P384",
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Hmac(_) => "Hmac",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Rsa,
    Point,
    Length,
}

impl PublicKey {
    /// `n` and `e` big-endian. Size and exponent policy is the caller's (see `jwks`).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<PublicKey, KeyError> {
        let key = RsaPublicKey::new_with_max_size(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e), 8192)
            .map_err(|_| KeyError::Rsa)?;
        Ok(PublicKey::Rsa(key, FastRsa::new(n, e)))
    }

    /// An uncompressed SEC1 point (`04 || x || y`), checked to lie on P-256.
    pub fn p256(sec1: &[u8]) -> Result<PublicKey, KeyError> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(PublicKey::P256)
            .map_err(|_| KeyError::Point)
    }

    pub fn p384(sec1: &[u8]) -> Result<PublicKey, KeyError> {
        p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(PublicKey::P384)
            .map_err(|_| KeyError::Point)
    }

    pub fn ed25519(x: &[u8]) -> Result<PublicKey, KeyError> {
        ed25519_compact::PublicKey::from_slice(x)
            .map(PublicKey::Ed25519)
            .map_err(|_| KeyError::Length)
    }

    /// RSA modulus size in bits (0 for other key types).
    pub fn rsa_bits(&self) -> usize {
        match self {
            PublicKey::Rsa(k, _) => k.n().bits(),
            _ => 0,
        }
    }

    /// Whether this key's family can serve `alg` at all.
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa(..) => alg.is_rsa(),
            PublicKey::P256(_) => alg == Alg::ES256,
            PublicKey::P384(_) => alg == Alg::ES384,
            PublicKey::Ed25519(_) => alg == Alg::EdDSA,
            PublicKey::Hmac(_) => alg.is_hmac(),
        }
    }

    /// Verifies `sig` over `msg` with `alg`. ECDSA signatures are the JWS form (raw
    /// `r || s`, RFC 7518 §3.4), never DER. False for any mismatch or malformed input.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (PublicKey::Rsa(_, Some(fast)), Alg::RS256) => fast.verify_pkcs1(&SHA256_PREFIX, &Sha256::digest(msg), sig),
            (PublicKey::Rsa(_, Some(fast)), Alg::RS384) => fast.verify_pkcs1(&SHA384_PREFIX, &Sha384::digest(msg), sig),
            (PublicKey::Rsa(_, Some(fast)), Alg::RS512) => fast.verify_pkcs1(&SHA512_PREFIX, &Sha512::digest(msg), sig),
            (PublicKey::Rsa(k, _), Alg::RS256) => {
                rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig)
            }
            (PublicKey::Rsa(k, _), Alg::RS384) => {
                rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig)
            }
            (PublicKey::Rsa(k, _), Alg::RS512) => {
                rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig)
            }
            (PublicKey::Rsa(k, _), Alg::PS256) => rsa_pss(k, Pss::new::<Sha256>(), &Sha256::digest(msg), sig),
            (PublicKey::Rsa(k, _), Alg::PS384) => rsa_pss(k, Pss::new::<Sha384>(), &Sha384::digest(msg), sig),
            (PublicKey::Rsa(k, _), Alg::PS512) => rsa_pss(k, Pss::new::<Sha512>(), &Sha512::digest(msg), sig),
            (PublicKey::P256(k), Alg::ES256) => p256::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::P384(k), Alg::ES384) => p384::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::Ed25519(k), Alg::EdDSA) => ed25519_compact::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::Hmac(secret), Alg::HS256) => ct_eq(&hmac_sha256::HMAC::mac(msg, secret), sig),
            (PublicKey::Hmac(secret), Alg::HS384) => ct_eq(&hmac_sha512::sha384::HMAC::mac(msg, secret), sig),
            (PublicKey::Hmac(secret), Alg::HS512) => ct_eq(&hmac_sha512::HMAC::mac(msg, secret), sig),
            _ => false,
        }
    }
}

/// DER `DigestInfo` prefixes (RFC 8017 §9.2 note 1).
const SHA256_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];
const SHA384_PREFIX: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30,
];
const SHA512_PREFIX: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40,
];

/// RSASSA-PKCS1-v1_5 verification for 2048-, 3072- and 4096-bit moduli with fixed-size
/// Montgomery arithmetic (`crypto-bigint`), set up once per key: the public operation
/// `s^e mod n` and a comparison with the expected encoding. Other sizes use the `rsa` crate.
#[derive(Clone)]
pub enum FastRsa {
    R2048(Box<FastKey<{ crypto_bigint::U2048::LIMBS }>>),
    R3072(Box<FastKey<{ crypto_bigint::U3072::LIMBS }>>),
    R4096(Box<FastKey<{ crypto_bigint::U4096::LIMBS }>>),
}

#[derive(Clone)]
pub struct FastKey<const LIMBS: usize> {
    params: crypto_bigint::modular::FixedMontyParams<LIMBS>,
    modulus: crypto_bigint::Uint<LIMBS>,
    /// The exponent's bits, most significant first (public: variable time is fine).
    e_bits: Vec<bool>,
}

impl<const LIMBS: usize> FastKey<LIMBS> {
    fn new(n: &[u8], e: &[u8]) -> Option<FastKey<LIMBS>> {
        let width = crypto_bigint::Uint::<LIMBS>::BYTES;
        let modulus = crypto_bigint::Uint::<LIMBS>::from_be_slice(&left_pad(n, width)?);
        let odd = Option::<crypto_bigint::Odd<crypto_bigint::Uint<LIMBS>>>::from(crypto_bigint::Odd::new(modulus))?;
        let params = crypto_bigint::modular::FixedMontyParams::new_vartime(odd);
        let mut e_bits = Vec::new();
        for byte in e {
            for i in (0..8).rev() {
                e_bits.push(byte >> i & 1 == 1);
            }
        }
        let first_one = e_bits.iter().position(|b| *b)?;
        e_bits.drain(..first_one);
        Some(FastKey {
            params,
            modulus,
            e_bits,
        })
    }

    fn verify(&self, em: &[u8], sig: &[u8]) -> bool {
        use crypto_bigint::modular::FixedMontyForm;
        let width = crypto_bigint::Uint::<LIMBS>::BYTES;
        let (Some(sig), Some(em)) = (left_pad(sig, width), left_pad(em, width)) else {
            return false;
        };
        let s = crypto_bigint::Uint::<LIMBS>::from_be_slice(&sig);
        if s >= self.modulus {
            return false;
        }
        let base = FixedMontyForm::new(&s, &self.params);
        let mut acc = base;
        for bit in self.e_bits.iter().skip(1) {
            acc = acc.square();
            if *bit {
                acc *= &base;
            }
        }
        acc.retrieve() == crypto_bigint::Uint::<LIMBS>::from_be_slice(&em)
    }
}

fn left_pad(bytes: &[u8], width: usize) -> Option<Vec<u8>> {
    let pad = width.checked_sub(bytes.len())?;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(bytes);
    Some(out)
}

impl FastRsa {
    fn new(n: &[u8], e: &[u8]) -> Option<FastRsa> {
        let first = n.iter().position(|b| *b != 0)?;
        let n = n.get(first..)?;
        match n.len() {
            256 => FastKey::new(n, e).map(|k| FastRsa::R2048(Box::new(k))),
            384 => FastKey::new(n, e).map(|k| FastRsa::R3072(Box::new(k))),
            512 => FastKey::new(n, e).map(|k| FastRsa::R4096(Box::new(k))),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            FastRsa::R2048(_) => 256,
            FastRsa::R3072(_) => 384,
            FastRsa::R4096(_) => 512,
        }
    }

    /// EMSA-PKCS1-v1_5 (RFC 8017 §9.2): `00 01 FF..FF 00 || DigestInfo prefix || hash`,
    /// compared in full with `sig^e mod n`; the signature must be exactly `k` bytes.
    fn verify_pkcs1(&self, prefix: &[u8], hash: &[u8], sig: &[u8]) -> bool {
        let k = self.len();
        let t_len = prefix.len() + hash.len();
        if sig.len() != k || k < t_len + 11 {
            return false;
        }
        let mut em = Vec::with_capacity(k);
        em.extend_from_slice(&[0x00, 0x01]);
        em.resize(k - t_len - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(hash);
        match self {
            FastRsa::R2048(key) => key.verify(&em, sig),
            FastRsa::R3072(key) => key.verify(&em, sig),
            FastRsa::R4096(key) => key.verify(&em, sig),
        }
    }
}

fn rsa_pkcs1(k: &RsaPublicKey, scheme: Pkcs1v15Sign, hashed: &[u8], sig: &[u8]) -> bool {
    // A signature must be exactly the modulus length (RFC 8017 §8.2.2 step 1).
    sig.len() == k.size() && k.verify(scheme, hashed, sig).is_ok()
}

fn rsa_pss(k: &RsaPublicKey, scheme: Pss, hashed: &[u8], sig: &[u8]) -> bool {
    sig.len() == k.size() && k.verify(scheme, hashed, sig).is_ok()
}

/// Constant-time equality for MACs.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn wrong_family_never_verifies() {
        let k = PublicKey::Hmac(vec![1; 32]);
        let mac = hmac_sha256::HMAC::mac(b"m", [1u8; 32]);
        assert!(k.verify(Alg::HS256, b"m", &mac));
        assert!(!k.verify(Alg::RS256, b"m", &mac));
        assert!(!k.verify(Alg::HS384, b"m", &mac));
    }

    #[test]
    fn fast_rsa_agrees_with_the_rsa_crate() {
        use crate::devtools::keys::TestKey;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for (alg, sig_alg) in [
            (Alg::RS256, Alg::RS256),
            (Alg::RS384, Alg::RS384),
            (Alg::RS512, Alg::RS512),
        ] {
            let k = TestKey::rsa(alg, "k");
            let jwk = k.public_jwk();
            let n = b64.decode(jwk["n"].as_str().unwrap()).unwrap();
            let e = b64.decode(jwk["e"].as_str().unwrap()).unwrap();
            let key = PublicKey::rsa(&n, &e).unwrap();
            let PublicKey::Rsa(slow, Some(fast)) = &key else {
                panic!("2048-bit keys take the fast path")
            };
            let msg = b"header.payload";
            let sig = k.sign_bytes(msg);
            assert!(key.verify(sig_alg, msg, &sig), "{alg}");
            let prefix: &[u8] = match alg {
                Alg::RS384 => &SHA384_PREFIX,
                Alg::RS512 => &SHA512_PREFIX,
                _ => &SHA256_PREFIX,
            };
            let hash: Vec<u8> = match alg {
                Alg::RS384 => Sha384::digest(msg).to_vec(),
                Alg::RS512 => Sha512::digest(msg).to_vec(),
                _ => Sha256::digest(msg).to_vec(),
            };
            assert!(fast.verify_pkcs1(prefix, &hash, &sig));
            let mut bad = sig.clone();
            bad[100] ^= 1;
            assert!(!key.verify(sig_alg, msg, &bad));
            assert!(!key.verify(sig_alg, b"header.payloaD", &sig));
            assert!(!key.verify(sig_alg, msg, &sig[1..]));
            // The slow path agrees on every one of these.
            let slow_ok = |s: &[u8], m: &[u8]| rsa_pkcs1(slow, Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(m), s);
            if alg == Alg::RS256 {
                assert!(slow_ok(&sig, msg));
                assert!(!slow_ok(&bad, msg));
            }
        }
    }
}
