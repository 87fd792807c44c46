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
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
    /// A shared secret (`hmacSecret`), never from a JWKS.
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKey::Rsa(_) => "Rsa",
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
        RsaPublicKey::new_with_max_size(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e), 8192)
            .map(PublicKey::Rsa)
            .map_err(|_| KeyError::Rsa)
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
            PublicKey::Rsa(k) => k.n().bits(),
            _ => 0,
        }
    }

    /// Whether this key's family can serve `alg` at all.
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa(_) => alg.is_rsa(),
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
            (PublicKey::Rsa(k), Alg::RS256) => rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig),
            (PublicKey::Rsa(k), Alg::RS384) => rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig),
            (PublicKey::Rsa(k), Alg::RS512) => rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig),
            (PublicKey::Rsa(k), Alg::PS256) => rsa_pss(k, Pss::new::<Sha256>(), &Sha256::digest(msg), sig),
            (PublicKey::Rsa(k), Alg::PS384) => rsa_pss(k, Pss::new::<Sha384>(), &Sha384::digest(msg), sig),
            (PublicKey::Rsa(k), Alg::PS512) => rsa_pss(k, Pss::new::<Sha512>(), &Sha512::digest(msg), sig),
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
}
