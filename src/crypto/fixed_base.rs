//! Fixed-base tables for ECDSA verification on the NIST prime-order curves (P-256, P-384).
//!
//! A verify computes `u1·G + u2·Q` and compares its x coordinate with `r`. The RustCrypto
//! `ecdsa` crate does that with a joint wNAF ladder: one point doubling per scalar bit and an
//! addition every few bits. But neither point changes between requests: `G` is the curve's
//! generator and `Q` one of a JWKS's few keys. So each gets a table, built once, of every
//! multiple `j·2^(6i)·P` for the six-bit windows `i` of a scalar and `j = 1..=32`, in affine
//! form. A scalar written in signed base-64 digits `d_i ∈ [-31, 32]` is then `Σ d_i·2^(6i)`, and
//! its multiple of `P` is the sum of one table entry (negated for a negative digit) per
//! non-zero digit: one mixed addition per window and no doublings.
//!
//! | curve | windows | table | mixed additions a verify (at most) |
//! |---|--:|--:|--:|
//! | P-256 | 43 | 1376 points, about 97 KiB | 86 |
//! | P-384 | 65 | 2080 points, about 203 KiB | 130 |
//!
//! Everything here is public (signature, message, key), so lookups are variable time. The
//! field and point arithmetic (complete formulas) is `primeorder`'s, the crate `p256` and
//! `p384` are built on; only the multiplication is organised differently.

use ::p256::elliptic_curve::group::{Curve, Group};
use ::p256::elliptic_curve::PrimeField;
use primeorder::{AffinePoint, PrimeCurveParams, ProjectivePoint};

/// Bits per digit.
pub const W: usize = 6;
/// Table entries per window: the largest digit magnitude, `2^(W-1)`.
pub const HALF: usize = 1 << (W - 1);
/// Windows of the largest scalar here (P-384's 384 bits and a carry out of the top window).
const MAX_WINDOWS: usize = (384 + 1usize).div_ceil(W);

/// Windows of a scalar of curve `C`: its bits, and one more for the carry the signed digits
/// may push out of the top window (P-256: 43, where the top window's spare bits absorb it;
/// P-384: 65).
pub fn windows<C: PrimeCurveParams>() -> usize {
    (C::Scalar::NUM_BITS as usize + 1).div_ceil(W)
}

/// The multiples `j·2^(W·i)·P`, `i < windows`, `1 ≤ j ≤ HALF`, at `i·HALF + j - 1`.
pub struct Table<C: PrimeCurveParams> {
    points: Box<[AffinePoint<C>]>,
}

impl<C: PrimeCurveParams> Table<C> {
    pub fn new(p: &AffinePoint<C>) -> Table<C> {
        let windows = windows::<C>();
        let mut projective = Vec::with_capacity(windows * HALF);
        let mut base = ProjectivePoint::<C>::from(*p);
        for _ in 0..windows {
            let mut multiple = base;
            projective.push(multiple);
            for _ in 1..HALF {
                multiple += base;
                projective.push(multiple);
            }
            // HALF·base doubled: the next window's base, 2^W·base.
            base = Group::double(&multiple);
        }
        let mut points = vec![AffinePoint::<C>::IDENTITY; projective.len()];
        <ProjectivePoint<C> as Curve>::batch_normalize(&projective, &mut points);
        Table {
            points: points.into_boxed_slice(),
        }
    }

    /// Adds `k·P` to `acc`; false only if the table is shorter than the curve's scalars need
    /// (never, by construction).
    pub fn add_multiple(&self, acc: &mut ProjectivePoint<C>, k: &C::Scalar) -> bool {
        let (digits, n) = signed_digits::<C>(k);
        for (i, d) in digits.iter().take(n).enumerate() {
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
    pub fn mul(&self, k: &C::Scalar) -> ProjectivePoint<C> {
        let mut acc = ProjectivePoint::<C>::IDENTITY;
        assert!(self.add_multiple(&mut acc, k));
        acc
    }
}

/// `k = Σ d_i·2^(W·i)` over the first `n` digits (`n` = [`windows`]), every `d_i` in
/// `[-(HALF-1), HALF]`.
pub fn signed_digits<C: PrimeCurveParams>(k: &C::Scalar) -> ([i8; MAX_WINDOWS], usize) {
    let repr = k.to_repr();
    let bytes: &[u8] = repr.as_ref(); // big-endian
    let len = bytes.len();
    let bit = |i: usize| -> u8 {
        if i >= 8 * len {
            return 0;
        }
        bytes.get(len - 1 - i / 8).map_or(0, |b| (b >> (i % 8)) & 1)
    };
    let n = windows::<C>().min(MAX_WINDOWS);
    let mut digits = [0i8; MAX_WINDOWS];
    let mut carry = 0u8;
    for (w, digit) in digits.iter_mut().take(n).enumerate() {
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
    // A scalar is below n < 2^bits, and the windows cover bits + 1: the top window is at most
    // 2^(bits mod W or W) - 1 + carry ≤ HALF, so it never carries further.
    debug_assert_eq!(carry, 0);
    (digits, n)
}
