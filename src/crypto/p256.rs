//! ES256 (ECDSA over P-256 with SHA-256): the key, its fast path with fixed-base tables, and
//! the `p256` crate's `ecdsa` verification as the reference.
//!
//! A verify computes `u1·G + u2·Q` and compares its x coordinate with `r`. The RustCrypto
//! `ecdsa` crate does that with a joint wNAF ladder: about 256 point doublings and a hundred
//! additions, which costs about 740 µs inside V8 (`make vm-profile`). But neither point
//! changes between requests: `G` is the curve's generator and `Q` one of a JWKS's few keys.
//! So each gets a table, built once, of every multiple `j·2^(6i)·P` for the 43 six-bit
//! windows `i` of a scalar and `j = 1..=32`, in affine form. A scalar written in signed
//! base-64 digits `d_i ∈ [-31, 32]` is then `Σ d_i·2^(6i)`, and its multiple of `P` is the sum
//! of one table entry (negated for a negative digit) per non-zero digit: at most 43 mixed
//! additions and no doublings, 86 for the whole verify. Measured in V8 (`make vm-profile`):
//! 720–840 µs a verify with `ecdsa`'s ladder, 220–250 µs with five-bit windows, 183–217 µs
//! with six, about 3.9× faster than the ladder in each of three runs (`jwt_authn` with
//! BoringSSL: about 120 µs of filter CPU a cold ES256 request in `make bench`).

//! Everything here is public (signature, message, key), so lookups are variable time. The
//! field and point arithmetic (complete formulas) is still the `p256` crate's; only the
//! multiplication is organised differently. Parsing of `r` and `s` (non-zero, below `n`),
//! `s⁻¹`, the reduction of the digest and of `x(R)` modulo `n` are the same as `ecdsa`'s
//! `verify_prehashed`; the unit tests compare the two on random and edge-case signatures and
//! `tests/wycheproof.rs` runs every Wycheproof P-256 vector through this path.
//!
//! Memory: a table is 1376 affine points (about 97 KiB). The generator's is built once per
//! process (per VM) on first use; a key's on its first verification: about 1400 point
//! additions and one batched inversion (3.3–4.3 ms inside V8), once per key and VM (a key
//! set replaced by a JWKS refresh gets new tables as its keys are used).

use super::alg::Alg;
use super::{KeyError, Verifier};
use ::p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use ::p256::elliptic_curve::group::{Curve, Group};
use ::p256::elliptic_curve::ops::Reduce;
use ::p256::elliptic_curve::point::AffineCoordinates;
use ::p256::elliptic_curve::PrimeField;
use ::p256::{AffinePoint, ProjectivePoint, Scalar, U256};
use ::rsa::sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Bits per digit.
const W: usize = 6;
/// Table entries per window: the largest digit magnitude, `2^(W-1)`.
const HALF: usize = 1 << (W - 1);
/// Windows of a 256-bit scalar; the top one takes the last bit and the carry into it.
const WINDOWS: usize = 256usize.div_ceil(W);

/// The multiples `j·2^(W·i)·P`, `i < WINDOWS`, `1 ≤ j ≤ HALF`, at `i·HALF + j - 1`.
pub struct Table {
    points: Box<[AffinePoint]>,
}

impl Table {
    pub fn new(p: &AffinePoint) -> Table {
        let base0 = ProjectivePoint::from(*p);
        let mut projective = Vec::with_capacity(WINDOWS * HALF);
        let mut base = base0;
        for _ in 0..WINDOWS {
            let mut multiple = base;
            projective.push(multiple);
            for _ in 1..HALF {
                multiple += base;
                projective.push(multiple);
            }
            // HALF·base doubled: the next window's base, 2^W·base.
            base = multiple.double();
        }
        let mut points = vec![AffinePoint::IDENTITY; projective.len()];
        ProjectivePoint::batch_normalize(&projective, &mut points);
        Table {
            points: points.into_boxed_slice(),
        }
    }

    /// Adds `k·P` to `acc`.
    fn add_multiple(&self, acc: &mut ProjectivePoint, k: &Scalar) -> bool {
        let digits = signed_digits(k);
        for (i, d) in digits.iter().enumerate() {
            let magnitude = d.unsigned_abs() as usize;
            if magnitude == 0 {
                continue;
            }
            let Some(point) = self.points.get(i * HALF + magnitude - 1) else {
                return false;
            };
            if *d < 0 {
                *acc += -*point;
            } else {
                *acc += point;
            }
        }
        true
    }

    /// `k·P`, for the tests.
    #[cfg(test)]
    fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let mut acc = ProjectivePoint::IDENTITY;
        assert!(self.add_multiple(&mut acc, k));
        acc
    }
}

/// `k = Σ d_i·2^(W·i)` with every `d_i` in `[-(HALF-1), HALF]`.
fn signed_digits(k: &Scalar) -> [i8; WINDOWS] {
    let bytes = k.to_repr(); // big-endian
    let bit = |i: usize| -> u8 {
        if i >= 256 {
            return 0;
        }
        bytes.get(31 - i / 8).map_or(0, |b| (b >> (i % 8)) & 1)
    };
    let mut digits = [0i8; WINDOWS];
    let mut carry = 0u8;
    for (w, digit) in digits.iter_mut().enumerate() {
        let mut v = carry;
        for b in 0..W {
            v += bit(W * w + b) << b;
        }
        // v ≤ 2^W: above HALF, borrow from the next window.
        if usize::from(v) > HALF {
            *digit = (i16::from(v) - (1 << W)) as i8;
            carry = 1;
        } else {
            *digit = v as i8;
            carry = 0;
        }
    }
    // A scalar is below n < 2^256, so the top window (bits 252..257, of which 256 and 257 are
    // zero) is at most 15 + carry ≤ HALF and never carries further.
    debug_assert_eq!(carry, 0);
    digits
}

fn generator_table() -> &'static Table {
    static G: OnceLock<Table> = OnceLock::new();
    G.get_or_init(|| Table::new(&AffinePoint::GENERATOR))
}

/// A P-256 public key with its table, built on first use.
pub struct P256Key {
    point: AffinePoint,
    table: OnceLock<Table>,
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
        let u1 = z * s_inv;
        let u2 = *r * s_inv;
        let table = self.table.get_or_init(|| Table::new(&self.point));
        let mut sum = ProjectivePoint::IDENTITY;
        if !generator_table().add_multiple(&mut sum, &u1) || !table.add_multiple(&mut sum, &u2) {
            return false;
        }
        // The identity's affine x is 0 here, and r is never 0: rejected below, as in `ecdsa`.
        let x = sum.to_affine().x();
        let x = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&x));
        x == *r
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

    /// A deterministic stream of test bytes (SHA-256 in counter mode).
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(&Sha256::digest([seed.to_le_bytes(), i.to_le_bytes()].concat()));
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn scalar(seed: u64) -> Scalar {
        <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&bytes(seed, 32)))
    }

    fn edge_scalars() -> Vec<Scalar> {
        let mut v = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::ONE.double(),
            -Scalar::ONE.double(),
        ];
        // Single bits, runs of ones, and values near the digit boundaries.
        for bit in [4u32, 5, 15, 16, 31, 254, 255] {
            let mut s = Scalar::ONE;
            for _ in 0..bit {
                s = s.double();
            }
            v.push(s);
            v.push(s - Scalar::ONE);
            v.push(-s);
        }
        let mut ones = Scalar::ZERO;
        for _ in 0..255 {
            ones = ones.double() + Scalar::ONE;
        }
        v.push(ones);
        v
    }

    #[test]
    fn digits_recompose_the_scalar_and_stay_in_range() {
        for k in edge_scalars().into_iter().chain((0..200).map(scalar)) {
            let digits = signed_digits(&k);
            let mut back = Scalar::ZERO;
            for d in digits.iter().rev() {
                for _ in 0..W {
                    back = back.double();
                }
                let m = Scalar::from(u64::from(d.unsigned_abs()));
                back += if *d < 0 { -m } else { m };
                assert!(-(HALF as i16 - 1) <= i16::from(*d) && i16::from(*d) <= HALF as i16);
            }
            assert_eq!(back, k);
        }
    }

    #[test]
    fn table_multiples_match_the_ladder() {
        let q = (ProjectivePoint::GENERATOR * scalar(7)).to_affine();
        let table = Table::new(&q);
        for k in edge_scalars().into_iter().chain((100..140).map(scalar)) {
            assert_eq!(table.mul(&k), ProjectivePoint::from(q) * k);
            assert_eq!(generator_table().mul(&k), ProjectivePoint::GENERATOR * k);
        }
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
