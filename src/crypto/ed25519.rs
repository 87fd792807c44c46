//! EdDSA (Ed25519, RFC 8032): the key, its fast path with fixed-base tables, and the
//! `ed25519-compact` crate's verification as the reference.
//!
//! A verify checks that `s·B - k·A - R` has small order (the cofactored equation, with
//! `k = SHA-512(R || A || M) mod L`), and refuses a non-canonical `s` (not below `L`) or an
//! encoding of `A` or `R` that is non-canonical, off the curve or of small order: exactly the
//! checks `ed25519-compact` makes, in the same order of strictness. `ed25519-compact` computes
//! `s·B - k·A` with a sliding-window ladder (a doubling per bit) on 51-bit limbs, whose 128-bit
//! products WebAssembly has to emulate. Here `curve25519-dalek`'s 32-bit-limb arithmetic
//! (64-bit products, native to WebAssembly) computes both products from fixed-base radix-16
//! tables: one for `B`, built once per VM, and one for `-A`, built on a key's first use, with
//! the key's decoding and checks. Neither point changes between requests, so no doublings are
//! left but the four each table multiplication ends with.
//!
//! Everything here is public (signature, message, key); the table lookups happen to be
//! constant time (`curve25519-dalek`'s), which verification does not need. Unit tests, every
//! Wycheproof Ed25519 vector (`tests/wycheproof.rs`) and the differential fuzz target
//! `crypto_diff` compare this path with `ed25519-compact`.
//!
//! Memory: a table is 32 × 8 affine Niels points (30 KiB).

use super::alg::Alg;
use super::{KeyError, Verifier};
use ::rsa::sha2::{Digest, Sha512};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable;
use std::sync::OnceLock;

/// An Ed25519 public key; its table (of `-A`) is built on first use, or `None` if `A` is not a
/// usable point (every signature then fails, as with `ed25519-compact`).
pub struct Ed25519Key {
    x: [u8; 32],
    table: OnceLock<Option<Box<EdwardsBasepointTable>>>,
}

impl Clone for Ed25519Key {
    fn clone(&self) -> Self {
        Ed25519Key {
            x: self.x,
            table: OnceLock::new(),
        }
    }
}

fn base_table() -> &'static EdwardsBasepointTable {
    static B: OnceLock<Box<EdwardsBasepointTable>> = OnceLock::new();
    B.get_or_init(|| Box::new(EdwardsBasepointTable::create(&ED25519_BASEPOINT_POINT)))
}

/// A canonical encoding of a point that is not of small order (`ed25519-compact`'s
/// `decode_point`): `decompress` alone would also take a `y` at or above `p` and a negative
/// zero `x`, and re-encoding refuses both.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let p = CompressedEdwardsY(*bytes).decompress()?;
    (p.compress().as_bytes() == bytes && !p.is_small_order()).then_some(p)
}

impl Ed25519Key {
    /// The 32-byte public key `x`.
    pub fn new(x: &[u8]) -> Result<Ed25519Key, KeyError> {
        Ok(Ed25519Key {
            x: x.try_into().map_err(|_| KeyError::Length)?,
            table: OnceLock::new(),
        })
    }

    fn table(&self) -> Option<&EdwardsBasepointTable> {
        self.table
            .get_or_init(|| decode_point(&self.x).map(|a| Box::new(EdwardsBasepointTable::create(&-a))))
            .as_deref()
    }

    /// Verifies a 64-byte signature `R || s` over `msg`.
    fn verify_fast(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (Some(r_bytes), Some(s_bytes)) = (sig.get(..32), sig.get(32..)) else {
            return false;
        };
        let (Ok(r_bytes), Ok(s_bytes)) = (<[u8; 32]>::try_from(r_bytes), <[u8; 32]>::try_from(s_bytes)) else {
            return false; // not 64 bytes
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let Some(minus_a) = self.table() else {
            return false;
        };
        let Some(r) = decode_point(&r_bytes) else {
            return false;
        };
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(self.x);
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        (base_table().mul_base(&s) + minus_a.mul_base(&k) - r).is_small_order()
    }
}

impl Verifier for Ed25519Key {
    fn fits(&self, alg: Alg) -> bool {
        alg == Alg::EdDSA
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        alg == Alg::EdDSA && self.verify_fast(msg, sig)
    }

    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        alg == Alg::EdDSA
            && ed25519_compact::Signature::from_slice(sig)
                .map(|s| ed25519_compact::PublicKey::new(self.x).verify(msg, &s).is_ok())
                .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        crate::crypto::test_bytes::<Sha512>(seed, n)
    }

    fn keypair(seed: u64) -> ed25519_compact::KeyPair {
        ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&bytes(seed, 32)).unwrap())
    }

    fn both(key: &Ed25519Key, msg: &[u8], sig: &[u8]) -> bool {
        let fast = key.verify(Alg::EdDSA, msg, sig);
        assert_eq!(fast, key.verify_reference(Alg::EdDSA, msg, sig), "sig {sig:02x?}");
        fast
    }

    /// The eight points of small order (the torsion subgroup), encoded.
    fn small_order_points() -> Vec<[u8; 32]> {
        let t = curve25519_dalek::constants::EIGHT_TORSION;
        t.iter().map(|p| p.compress().to_bytes()).collect()
    }

    #[test]
    fn agrees_with_ed25519_compact_on_valid_and_tampered_signatures() {
        for seed in 0..24u64 {
            let kp = keypair(seed);
            let key = Ed25519Key::new(kp.pk.as_ref()).unwrap();
            let msg = bytes(100 + seed, (seed * 7 % 90) as usize);
            let sig = kp.sk.sign(&msg, None).to_vec();
            assert!(both(&key, &msg, &sig), "seed {seed}");
            for i in [0usize, 13, 31, 32, 50, 63] {
                let mut bad = sig.clone();
                bad[i] ^= 1 << (seed % 8);
                assert!(!both(&key, &msg, &bad));
            }
            let mut bad_msg = msg.clone();
            bad_msg.push(0);
            assert!(!both(&key, &bad_msg, &sig));
            let other = Ed25519Key::new(keypair(5000 + seed).pk.as_ref()).unwrap();
            assert!(!both(&other, &msg, &sig));
            assert!(!key.verify(Alg::ES256, &msg, &sig));
        }
    }

    #[test]
    fn malformed_signatures_and_keys_are_refused_by_both() {
        let kp = keypair(1);
        let key = Ed25519Key::new(kp.pk.as_ref()).unwrap();
        let msg = b"header.payload";
        let sig = kp.sk.sign(msg, None).to_vec();
        // s + L: the same point equation, but s is not canonical.
        let l = Scalar::ZERO - Scalar::ONE; // L - 1
        let mut s_plus_l = [0u8; 32];
        let mut carry = 1u16; // (L - 1) + 1 + s, byte by byte
        for (i, out) in s_plus_l.iter_mut().enumerate() {
            let v = u16::from(sig[32 + i]) + u16::from(l.as_bytes()[i]) + carry;
            *out = v as u8;
            carry = v >> 8;
        }
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            sig[..63].to_vec(),
            [sig.as_slice(), &[0]].concat(),
            [&sig[..32], &s_plus_l[..]].concat(),
            [&sig[..32], &[0xff; 32][..]].concat(),
            vec![0; 64],
        ];
        // R of small order, non-canonical (y = p, y = p + 1) or a negative zero x.
        let p_bytes = {
            let mut p = [0xffu8; 32];
            p[0] = 0xed;
            p[31] = 0x7f;
            p
        };
        let mut p_plus_1 = p_bytes;
        p_plus_1[0] = 0xee;
        let mut neg_zero_x = [0u8; 32];
        neg_zero_x[0] = 1;
        neg_zero_x[31] = 0x80; // y = 1, x = 0 with the sign bit
        for r in small_order_points().into_iter().chain([p_bytes, p_plus_1, neg_zero_x]) {
            cases.push([&r[..], &sig[32..]].concat());
        }
        for bad in &cases {
            assert!(!both(&key, msg, bad), "{bad:02x?}");
        }
        // Keys of small order, non-canonical or off the curve: every signature fails.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2; // y = 2 is not on the curve
        for a in small_order_points().into_iter().chain([p_bytes, neg_zero_x, off_curve]) {
            let weak = Ed25519Key::new(&a).unwrap();
            assert!(!both(&weak, msg, &sig));
            // With s = 0 and R = the identity, a small-order A passes a cofactored check if the
            // key were not refused.
            let identity = EdwardsPoint::default().compress().to_bytes();
            assert!(!both(&weak, msg, &[&identity[..], &[0u8; 32][..]].concat()));
        }
        assert!(Ed25519Key::new(&[0u8; 31]).is_err());
    }

    #[test]
    fn a_torsion_component_in_r_passes_the_cofactored_check_in_both() {
        // s = r + k·a with R' = r·B + T (T of small order): s·B - k·A - R' = -T, which the
        // cofactored equation accepts (and a cofactorless one would not). Both must accept.
        let seed = bytes(9, 32);
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&seed).unwrap());
        let key = Ed25519Key::new(kp.pk.as_ref()).unwrap();
        let h: [u8; 64] = Sha512::digest(&seed).into();
        let a = Scalar::from_bytes_mod_order(curve25519_dalek::scalar::clamp_integer(h[..32].try_into().unwrap()));
        let msg = b"torsion";
        for (i, t) in curve25519_dalek::constants::EIGHT_TORSION.iter().enumerate() {
            let r = Scalar::from_bytes_mod_order_wide(&bytes(50 + i as u64, 64).try_into().unwrap());
            let big_r = (EdwardsPoint::mul_base(&r) + t).compress().to_bytes();
            let k = Scalar::from_bytes_mod_order_wide(
                &Sha512::new()
                    .chain_update(big_r)
                    .chain_update(kp.pk.as_ref())
                    .chain_update(msg)
                    .finalize()
                    .into(),
            );
            let s = r + k * a;
            let sig = [&big_r[..], s.as_bytes()].concat();
            if i == 0 {
                assert!(both(&key, msg, &sig), "the plain signature");
            } else if (EdwardsPoint::mul_base(&r) + t).is_small_order() {
                assert!(!both(&key, msg, &sig));
            } else {
                assert!(both(&key, msg, &sig), "torsion point {i}");
            }
        }
    }
}
