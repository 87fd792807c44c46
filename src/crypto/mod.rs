//! Raw signature verification: one public key, one algorithm, the signed bytes and the
//! signature bytes. This is the single place claimguard checks a signature, for tokens and
//! for the Wycheproof vectors alike. Nothing here interprets JOSE headers or claims: a token
//! is parsed once, by [`crate::token`].
//!
//! One file per key family, each behind the narrow [`Verifier`] trait: [`rsa`] and [`p256`]
//! have fast paths of their own (what makes a cold request competitive inside V8), and each
//! keeps the crate implementation (`rsa`, `p256`'s `ecdsa`) as [`Verifier::verify_reference`],
//! which unit tests, `tests/wycheproof.rs` and the differential fuzz target `crypto_diff`
//! compare it with. [`p384`], [`ed25519`] and [`hmac`] are the crates' own verification.

pub mod alg;
pub mod ed25519;
pub mod fixed_base;
pub mod hmac;
pub mod limbs;
pub mod p256;
pub mod p256_field;
pub mod p384;
pub mod rsa;
pub mod rsa_fma;

use crate::crypto::alg::Alg;
use std::sync::Arc;

/// What every key family offers. ECDSA signatures are the JWS form (raw `r || s`, RFC 7518
/// §3.4), never DER. Each call is false for any mismatch or malformed input, never a panic.
pub trait Verifier {
    /// Whether this key's family can serve `alg` at all.
    fn fits(&self, alg: Alg) -> bool;
    /// Verifies `sig` over `msg` with `alg`: what the filter runs (a fast path where there is one).
    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool;
    /// The same check by the family's crate implementation: the reference [`Verifier::verify`]
    /// must agree with on every input.
    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool;
}

/// A public key of one of the supported families.
#[derive(Clone)]
pub enum PublicKey {
    Rsa(rsa::RsaKey),
    /// The point with its fixed-base table for verification, shared by the key's clones.
    P256(Arc<p256::P256Key>),
    /// As for P-256: the table is shared by the key's clones.
    P384(Arc<p384::P384Key>),
    Ed25519(ed25519::Ed25519Key),
    /// A shared secret (`hmacSecret`), never from a JWKS.
    Hmac(hmac::HmacKey),
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
    /// `n` and `e` big-endian. Size and exponent policy is the caller's (see `keys::jwk`).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<PublicKey, KeyError> {
        rsa::RsaKey::new(n, e).map(PublicKey::Rsa)
    }

    /// An uncompressed SEC1 point (`04 || x || y`), checked to lie on P-256.
    pub fn p256(sec1: &[u8]) -> Result<PublicKey, KeyError> {
        p256::P256Key::from_sec1(sec1).map(|k| PublicKey::P256(Arc::new(k)))
    }

    pub fn p384(sec1: &[u8]) -> Result<PublicKey, KeyError> {
        p384::P384Key::new(sec1).map(|k| PublicKey::P384(Arc::new(k)))
    }

    pub fn ed25519(x: &[u8]) -> Result<PublicKey, KeyError> {
        ed25519::Ed25519Key::new(x).map(PublicKey::Ed25519)
    }

    pub fn hmac(secret: &[u8]) -> PublicKey {
        PublicKey::Hmac(hmac::HmacKey::new(secret))
    }

    /// RSA modulus size in bits (0 for other key types).
    pub fn rsa_bits(&self) -> usize {
        match self {
            PublicKey::Rsa(k) => k.bits(),
            _ => 0,
        }
    }

    /// Whether this key's family can serve `alg` at all.
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa(k) => k.fits(alg),
            PublicKey::P256(k) => k.fits(alg),
            PublicKey::P384(k) => k.fits(alg),
            PublicKey::Ed25519(k) => k.fits(alg),
            PublicKey::Hmac(k) => k.fits(alg),
        }
    }

    /// Verifies `sig` over `msg` with `alg` ([`Verifier::verify`] of the key's family).
    /// Static dispatch: the crate references stay out of the module where a fast path
    /// replaces them.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.fits(alg)
            && match self {
                PublicKey::Rsa(k) => k.verify(alg, msg, sig),
                PublicKey::P256(k) => k.verify(alg, msg, sig),
                PublicKey::P384(k) => k.verify(alg, msg, sig),
                PublicKey::Ed25519(k) => k.verify(alg, msg, sig),
                PublicKey::Hmac(k) => k.verify(alg, msg, sig),
            }
    }

    /// The family's crate implementation on the same input ([`Verifier::verify_reference`]).
    pub fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.fits(alg)
            && match self {
                PublicKey::Rsa(k) => k.verify_reference(alg, msg, sig),
                PublicKey::P256(k) => k.verify_reference(alg, msg, sig),
                PublicKey::P384(k) => k.verify_reference(alg, msg, sig),
                PublicKey::Ed25519(k) => k.verify_reference(alg, msg, sig),
                PublicKey::Hmac(k) => k.verify_reference(alg, msg, sig),
            }
    }
}

/// A deterministic stream of test bytes: digest `D` of (seed, counter), concatenated.
#[cfg(test)]
pub(crate) fn test_bytes<D: ::rsa::sha2::Digest>(seed: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(&D::digest([seed.to_le_bytes(), i.to_le_bytes()].concat()));
        i += 1;
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_family_never_verifies() {
        let k = PublicKey::hmac(&[1; 32]);
        let mac = hmac_sha256::HMAC::mac(b"m", [1u8; 32]);
        assert!(k.verify(Alg::HS256, b"m", &mac));
        assert!(!k.verify(Alg::RS256, b"m", &mac));
        assert!(!k.verify(Alg::HS384, b"m", &mac));
    }
}
