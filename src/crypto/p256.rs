//! ES256 (ECDSA over P-256 with SHA-256): the key, its fast path with fixed-base tables, and
//! the `p256` crate's `ecdsa` verification as the reference.
//!
//! A verify computes `u1·G + u2·Q` with two fixed-base tables ([`super::fixed_base`]), eight
//! bits a window: one for the generator, one per key. Measured in V8 (`make vm-profile`):
//! 720–840 µs a verify with `ecdsa`'s ladder, 220–250 µs with five-bit windows, 183–217 µs
//! with six (about 3.9× faster than the ladder in each of three runs); with eight-bit windows
//! and no final normalisation, 135 µs against the ladder's 708 in a quiet run (the figures
//! behind the window width are in [`super::fixed_base`]). `jwt_authn` with BoringSSL: 86 µs of
//! filter CPU a cold ES256 request in the latest `make bench` run.
//!
//! Everything here is public (signature, message, key), so lookups are variable time. The
//! field and point arithmetic (complete formulas) is still the `p256` crate's; only the
//! multiplication is organised differently. Parsing of `r` and `s` (non-zero, below `n`),
//! `s⁻¹`, the reduction of the digest and of `x(R)` modulo `n` are the same as `ecdsa`'s
//! `verify_prehashed`; the unit tests compare the two on random and edge-case signatures and
//! `tests/wycheproof.rs` runs every Wycheproof P-256 vector through this path.
//!
//! Memory: a table is 4224 affine points (about 300 KiB). The generator's is built once per
//! process (per VM) on first use; a key's on its first verification: about 4200 point
//! additions and one batched inversion (about 13 ms inside V8), once per key and VM (a key
//! set replaced by a JWKS refresh gets new tables as its keys are used).

use super::alg::Alg;
use super::fixed_base;
use super::{KeyError, Verifier};
use ::p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use ::p256::elliptic_curve::ops::Reduce;
use ::p256::{AffinePoint, NistP256, Scalar, U256};
use ::rsa::sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// A P-256 fixed-base table.
pub type Table = fixed_base::Table<NistP256, 8>;

fn generator_table() -> Option<&'static Table> {
    static G: OnceLock<Option<Table>> = OnceLock::new();
    G.get_or_init(|| Table::new(&AffinePoint::GENERATOR)).as_ref()
}

/// A P-256 public key with its table, built on first use.
pub struct P256Key {
    point: AffinePoint,
    table: OnceLock<Option<Table>>,
}

impl P256Key {
    /// An uncompressed SEC1 point (`04 || x || y`), checked to lie on P-256.
    pub fn from_sec1(sec1: &[u8]) -> Result<P256Key, KeyError> {
        ::p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(|k| P256Key::new(*k.as_affine()))
            .map_err(|_| KeyError::Point)
    }

    pub fn new(point: AffinePoint) -> P256Key {
        P256Key {
            point,
            table: OnceLock::new(),
        }
    }

    pub fn point(&self) -> &AffinePoint {
        &self.point
    }

    /// Whether the key's table has been built.
    #[cfg(test)]
    fn table_built(&self) -> bool {
        self.table.get().is_some()
    }

    /// Verifies a JWS ES256 signature (`r || s`, 64 bytes) over `digest` = SHA-256 of the
    /// signing input.
    pub fn verify_prehashed(&self, digest: &[u8; 32], sig: &[u8]) -> bool {
        let Ok(signature) = ::p256::ecdsa::Signature::from_slice(sig) else {
            return false; // wrong length, r or s zero or not below n
        };
        let (r, s) = signature.split_scalars();
        let z = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(digest));
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

impl Verifier for P256Key {
    fn fits(&self, alg: Alg) -> bool {
        alg == Alg::ES256
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        alg == Alg::ES256 && self.verify_prehashed(&Sha256::digest(msg).into(), sig)
    }

    /// `ecdsa`'s `verify_prehash` on the same digest and signature.
    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(signature) = ::p256::ecdsa::Signature::from_slice(sig) else {
            return false;
        };
        let Ok(key) = ::p256::ecdsa::VerifyingKey::from_affine(self.point) else {
            return false;
        };
        alg == Alg::ES256 && key.verify_prehash(&Sha256::digest(msg), &signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::p256::ecdsa::signature::hazmat::PrehashVerifier;
    use ::p256::ecdsa::{SigningKey, VerifyingKey};
    use ::p256::elliptic_curve::PrimeField as _;

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        crate::crypto::test_bytes::<Sha256>(seed, n)
    }

    #[test]
    fn agrees_with_ecdsa_on_valid_and_tampered_signatures() {
        for seed in 0..24u64 {
            let sk = SigningKey::from_bytes(&bytes(1000 + seed, 32)[..].try_into().unwrap()).unwrap();
            let vk = VerifyingKey::from(&sk);
            let key = P256Key::new(*vk.as_affine());
            let digest: [u8; 32] = Sha256::digest(bytes(seed, 40)).into();
            let sig: p256::ecdsa::Signature =
                p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&sk, &digest).unwrap();
            let sig = sig.to_bytes();
            assert!(key.verify_prehashed(&digest, &sig), "seed {seed}");
            assert!(vk
                .verify_prehash(&digest, &p256::ecdsa::Signature::from_slice(&sig).unwrap())
                .is_ok());
            // High s (n - s) is accepted by both (JWS does not ask for low s).
            let (r, s) = p256::ecdsa::Signature::from_slice(&sig).unwrap().split_scalars();
            let high = p256::ecdsa::Signature::from_scalars(r.to_repr(), (-*s).to_repr()).unwrap();
            assert!(key.verify_prehashed(&digest, &high.to_bytes()));
            // Any flipped bit of the signature or the digest, and the wrong key, fail in both.
            for i in [0usize, 13, 31, 32, 50, 63] {
                let mut bad = sig.to_vec();
                bad[i] ^= 1 << (seed % 8);
                let ours = key.verify_prehashed(&digest, &bad);
                let theirs = p256::ecdsa::Signature::from_slice(&bad)
                    .map(|s| vk.verify_prehash(&digest, &s).is_ok())
                    .unwrap_or(false);
                assert_eq!(ours, theirs);
                assert!(!ours);
            }
            let mut bad_digest = digest;
            bad_digest[(seed % 32) as usize] ^= 0x80;
            assert!(!key.verify_prehashed(&bad_digest, &sig));
            let other = P256Key::new(
                *VerifyingKey::from(&SigningKey::from_bytes(&bytes(5000 + seed, 32)[..].try_into().unwrap()).unwrap())
                    .as_affine(),
            );
            assert!(!other.verify_prehashed(&digest, &sig));
        }
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let sk = SigningKey::from_bytes(&bytes(1, 32)[..].try_into().unwrap()).unwrap();
        let key = P256Key::new(*VerifyingKey::from(&sk).as_affine());
        let digest = [7u8; 32];
        let n_bytes = (-Scalar::ONE).to_repr(); // n - 1
        let mut n = U256::from_be_slice(&n_bytes);
        n = n.wrapping_add(&U256::ONE);
        let n_be = n.to_be_bytes();
        let one = Scalar::ONE.to_repr();
        for sig in [
            vec![],
            vec![0u8; 63],
            vec![0u8; 65],
            vec![0u8; 64],                             // r = s = 0
            [one.as_slice(), &[0u8; 32]].concat(),     // s = 0
            [&[0u8; 32][..], one.as_slice()].concat(), // r = 0
            [&n_be[..], one.as_slice()].concat(),      // r = n
            [one.as_slice(), &n_be[..]].concat(),      // s = n
            vec![0xff; 64],                            // above n
        ] {
            assert!(!key.verify_prehashed(&digest, &sig), "{sig:02x?}");
        }
        // r = s = 1: a valid-looking pair that no key signs.
        assert!(!key.verify_prehashed(&digest, &[one.as_slice(), one.as_slice()].concat()));
    }

    #[test]
    fn the_key_table_is_built_once_on_first_use() {
        let sk = SigningKey::from_bytes(&bytes(2, 32)[..].try_into().unwrap()).unwrap();
        let key = P256Key::new(*VerifyingKey::from(&sk).as_affine());
        assert!(!key.table_built());
        let digest = [9u8; 32];
        let sig: p256::ecdsa::Signature =
            p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&sk, &digest).unwrap();
        assert!(key.verify_prehashed(&digest, &sig.to_bytes()));
        assert!(key.table_built());
        assert!(key.verify_prehashed(&digest, &sig.to_bytes()));
    }
}
