//! ES384 (ECDSA over P-384 with SHA-384): the key, its fast path with fixed-base tables, and
//! the `p384` crate's `ecdsa` verification as the reference.
//!
//! The same method as ES256 ([`super::fixed_base`]: a table for the generator, one per key,
//! one mixed addition per six-bit window of each scalar and no doublings), on `primeorder`'s
//! P-384 arithmetic. Measured in V8 (`make vm-profile`, the `es384` rows): the `ecdsa` crate's
//! ladder takes about 2.8 ms a verify. Parsing of `r` and `s` (non-zero, below `n`), `s⁻¹`,
//! the reduction of the digest (48 bytes, the field's size) and of `x(R)` modulo `n` are
//! `ecdsa`'s `verify_prehashed`'s; the unit tests compare the two on random and edge-case
//! signatures, and `tests/wycheproof.rs` runs every Wycheproof P-384 vector (SHA-384) through
//! both. Everything here is public (signature, message, key), so nothing needs to be
//! constant time.
//!
//! Memory: a table is 2080 affine points (about 203 KiB), the generator's once per VM and a
//! key's on its first verification (once per key and VM).

use super::alg::Alg;
use super::fixed_base;
use super::{KeyError, Verifier};
use ::p384::ecdsa::signature::hazmat::PrehashVerifier as _;
use ::p384::elliptic_curve::ops::Reduce;
use ::p384::{AffinePoint, NistP384, Scalar, U384};
use ::rsa::sha2::{Digest, Sha384};
use std::sync::OnceLock;

/// A P-384 fixed-base table.
pub type Table = fixed_base::Table<NistP384, 6>;

fn generator_table() -> Option<&'static Table> {
    static G: OnceLock<Option<Table>> = OnceLock::new();
    G.get_or_init(|| Table::new(&AffinePoint::GENERATOR)).as_ref()
}

/// A P-384 public key with its table, built on first use.
pub struct P384Key {
    point: AffinePoint,
    table: OnceLock<Option<Table>>,
}

impl P384Key {
    /// An uncompressed SEC1 point (`04 || x || y`), checked to lie on P-384.
    pub fn new(sec1: &[u8]) -> Result<P384Key, KeyError> {
        ::p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(|k| P384Key::from_point(*k.as_affine()))
            .map_err(|_| KeyError::Point)
    }

    pub fn from_point(point: AffinePoint) -> P384Key {
        P384Key {
            point,
            table: OnceLock::new(),
        }
    }

    pub fn point(&self) -> &AffinePoint {
        &self.point
    }

    /// Verifies a JWS ES384 signature (`r || s`, 96 bytes) over `digest` = SHA-384 of the
    /// signing input.
    pub fn verify_prehashed(&self, digest: &[u8; 48], sig: &[u8]) -> bool {
        let Ok(signature) = ::p384::ecdsa::Signature::from_slice(sig) else {
            return false; // wrong length, r or s zero or not below n
        };
        let (r, s) = signature.split_scalars();
        let z = <Scalar as Reduce<U384>>::reduce(&U384::from_be_slice(digest));
        // s is not zero (checked by `from_slice`), so it has an inverse.
        let Some(s_inv) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let (Some(g), Some(q)) = (
            generator_table(),
            self.table.get_or_init(|| Table::new(&self.point)).as_ref(),
        ) else {
            return false;
        };
        fixed_base::ecdsa_holds(g, q, &z, &r, &s_inv)
    }
}

impl Verifier for P384Key {
    fn fits(&self, alg: Alg) -> bool {
        alg == Alg::ES384
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        alg == Alg::ES384 && self.verify_prehashed(&Sha384::digest(msg).into(), sig)
    }

    /// `ecdsa`'s `verify_prehash` on the same digest and signature; JWS form (`r || s`,
    /// RFC 7518 §3.4), never DER.
    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(signature) = ::p384::ecdsa::Signature::from_slice(sig) else {
            return false;
        };
        let Ok(key) = ::p384::ecdsa::VerifyingKey::from_affine(self.point) else {
            return false;
        };
        alg == Alg::ES384 && key.verify_prehash(&Sha384::digest(msg), &signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::p384::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
    use ::p384::ecdsa::{SigningKey, VerifyingKey};
    use ::p384::elliptic_curve::PrimeField as _;

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        crate::crypto::test_bytes::<Sha384>(seed, n)
    }

    fn signing_key(seed: u64) -> SigningKey {
        SigningKey::from_slice(&bytes(seed, 48)).unwrap()
    }

    #[test]
    fn agrees_with_ecdsa_on_valid_and_tampered_signatures() {
        for seed in 0..12u64 {
            let sk = signing_key(1000 + seed);
            let vk = VerifyingKey::from(&sk);
            let key = P384Key::from_point(*vk.as_affine());
            let digest: [u8; 48] = Sha384::digest(bytes(seed, 40)).into();
            let sig: ::p384::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
            let sig = sig.to_bytes();
            assert!(key.verify_prehashed(&digest, &sig), "seed {seed}");
            assert!(vk
                .verify_prehash(&digest, &::p384::ecdsa::Signature::from_slice(&sig).unwrap())
                .is_ok());
            // High s (n - s) is accepted by both (JWS does not ask for low s).
            let (r, s) = ::p384::ecdsa::Signature::from_slice(&sig).unwrap().split_scalars();
            let high = ::p384::ecdsa::Signature::from_scalars(r.to_repr(), (-*s).to_repr()).unwrap();
            assert!(key.verify_prehashed(&digest, &high.to_bytes()));
            assert!(vk.verify_prehash(&digest, &high).is_ok());
            // Any flipped bit of the signature or the digest, and the wrong key, fail in both.
            for i in [0usize, 13, 47, 48, 70, 95] {
                let mut bad = sig.to_vec();
                bad[i] ^= 1 << (seed % 8);
                let ours = key.verify_prehashed(&digest, &bad);
                let theirs = ::p384::ecdsa::Signature::from_slice(&bad)
                    .map(|s| vk.verify_prehash(&digest, &s).is_ok())
                    .unwrap_or(false);
                assert_eq!(ours, theirs);
                assert!(!ours);
            }
            let mut bad_digest = digest;
            bad_digest[(seed % 48) as usize] ^= 0x80;
            assert!(!key.verify_prehashed(&bad_digest, &sig));
            let other = P384Key::from_point(*VerifyingKey::from(&signing_key(5000 + seed)).as_affine());
            assert!(!other.verify_prehashed(&digest, &sig));
        }
    }

    #[test]
    fn verify_and_reference_agree_through_the_trait() {
        let sk = signing_key(3);
        let key = P384Key::new(&VerifyingKey::from(&sk).to_sec1_point(false).to_bytes()).unwrap();
        let msg = b"header.payload";
        let sig: ::p384::ecdsa::Signature = sk.sign_prehash(&Sha384::digest(msg)).unwrap();
        let sig = sig.to_bytes();
        assert!(key.verify(Alg::ES384, msg, &sig));
        assert!(key.verify_reference(Alg::ES384, msg, &sig));
        assert!(!key.verify(Alg::ES256, msg, &sig));
        assert!(!key.verify(Alg::ES384, b"header.payloaD", &sig));
        assert!(!key.verify_reference(Alg::ES384, b"header.payloaD", &sig));
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let key = P384Key::from_point(*VerifyingKey::from(&signing_key(1)).as_affine());
        let digest = [7u8; 48];
        let n_minus_1 = (-Scalar::ONE).to_repr();
        let n_be = U384::from_be_slice(&n_minus_1).wrapping_add(&U384::ONE).to_be_bytes();
        let one = Scalar::ONE.to_repr();
        for sig in [
            vec![],
            vec![0u8; 95],
            vec![0u8; 97],
            vec![0u8; 96],                             // r = s = 0
            [one.as_slice(), &[0u8; 48]].concat(),     // s = 0
            [&[0u8; 48][..], one.as_slice()].concat(), // r = 0
            [&n_be[..], one.as_slice()].concat(),      // r = n
            [one.as_slice(), &n_be[..]].concat(),      // s = n
            vec![0xff; 96],                            // above n
        ] {
            assert!(!key.verify_prehashed(&digest, &sig), "{sig:02x?}");
        }
        assert!(!key.verify_prehashed(&digest, &[one.as_slice(), one.as_slice()].concat()));
    }
}
