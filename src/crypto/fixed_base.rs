//! Fixed-base tables for ECDSA verification on the NIST prime-order curves (P-256, P-384).
//!
//! A verify computes `u1·G + u2·Q` and compares its x coordinate with `r`. The RustCrypto
//! `ecdsa` crate does that with a joint wNAF ladder: one point doubling per scalar bit and an
//! addition every few bits. But neither point changes between requests: `G` is the curve's
//! generator and `Q` one of a JWKS's few keys. So each gets a table, built once, of every
//! multiple `j·2^(Wi)·P` for the `W`-bit windows `i` of a scalar and `j = 1..=2^(W-1)`, in
//! affine form. A scalar written in signed base-`2^W` digits `d_i ∈ [-(2^(W-1)-1), 2^(W-1)]` is
//! then `Σ d_i·2^(Wi)`, and its multiple of `P` is the sum of one table entry (negated for a
//! negative digit) per non-zero digit: one mixed addition per window and no doublings.
//!
//! | curve | `W` | windows | table | mixed additions a verify (at most) | a key's table in V8 |
//! |---|--:|--:|--:|--:|--:|
//! | P-256 | 8 | 33 | 4224 points, about 300 KiB | 66 | about 13 ms |
//! | P-384 | 6 | 65 | 2080 points, about 203 KiB | 130 | about 20 ms |
//!
//! The window width trades a key's first verification (and the table's memory) for every
//! later one: for P-256, eight-bit windows verify about a quarter faster than six-bit ones
//! (`make vm-profile`, the ratio to the `ecdsa` ladder in one run: 0.16 against 0.27), for a
//! table built in about 13 ms instead of 4–6 ms. For P-384, eight-bit windows would make a
//! key's table take about 50 ms and 650 KiB, so it keeps six.
//!
//! Everything here is public (signature, message, key), so lookups are variable time. The
//! field and point arithmetic (complete formulas) is `primeorder`'s, the crate `p256` and
//! `p384` are built on; only the multiplication is organised differently.

use ::p256::elliptic_curve::group::{Curve, Group};
use ::p256::elliptic_curve::PrimeField;
use primeorder::{AffinePoint, PrimeCurveParams, ProjectivePoint};

/// The narrowest window any table here uses.
const MIN_W: usize = 6;
/// Windows of the largest scalar at the narrowest window (P-384's 384 bits and a carry out
/// of the top window).
const MAX_WINDOWS: usize = (384 + 1usize).div_ceil(MIN_W);

/// Table entries per window at width `w`: the largest digit magnitude, `2^(w-1)`.
pub const fn half(w: usize) -> usize {
    1 << (w - 1)
}

/// Windows of a scalar of curve `C` at width `W`: its bits, and one more for the carry the
/// signed digits may push out of the top window (P-256 at 8: 33, P-384 at 6: 65).
pub fn windows<C: PrimeCurveParams, const W: usize>() -> usize {
    (C::Scalar::NUM_BITS as usize + 1).div_ceil(W)
}

/// The multiples `j·2^(W·i)·P`, `i < windows`, `1 ≤ j ≤ 2^(W-1)`, at `i·2^(W-1) + j - 1`.
pub struct Table<C: PrimeCurveParams, const W: usize> {
    points: Box<[AffinePoint<C>]>,
}

impl<C: PrimeCurveParams, const W: usize> Table<C, W> {
    const HALF: usize = half(W);

    pub fn new(p: &AffinePoint<C>) -> Table<C, W> {
        const { assert!(MIN_W <= W && W <= 14, "digits are i16 and windows at most MAX_WINDOWS") };
        let windows = windows::<C, W>();
        let mut projective = Vec::with_capacity(windows * Self::HALF);
        let mut base = ProjectivePoint::<C>::from(*p);
        for _ in 0..windows {
            let mut multiple = base;
            projective.push(multiple);
            for _ in 1..Self::HALF {
                multiple += base;
                projective.push(multiple);
            }
            // 2^(W-1)·base doubled: the next window's base, 2^W·base.
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
        let (digits, n) = signed_digits::<C, W>(k);
        for (i, d) in digits.iter().take(n).enumerate() {
            let magnitude = d.unsigned_abs() as usize;
            if magnitude == 0 {
                continue;
            }
            let Some(point) = self.points.get(i * Self::HALF + magnitude - 1) else {
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
/// `[-(2^(W-1)-1), 2^(W-1)]`.
pub fn signed_digits<C: PrimeCurveParams, const W: usize>(k: &C::Scalar) -> ([i16; MAX_WINDOWS], usize) {
    let repr = k.to_repr();
    let bytes: &[u8] = repr.as_ref(); // big-endian
    let len = bytes.len();
    let bit = |i: usize| -> u8 {
        if i >= 8 * len {
            return 0;
        }
        bytes.get(len - 1 - i / 8).map_or(0, |b| (b >> (i % 8)) & 1)
    };
    let n = windows::<C, W>().min(MAX_WINDOWS);
    let mut digits = [0i16; MAX_WINDOWS];
    let mut carry = 0u16;
    for (w, digit) in digits.iter_mut().take(n).enumerate() {
        let mut v = carry;
        for b in 0..W {
            v += u16::from(bit(W * w + b)) << b;
        }
        // v ≤ 2^W: above 2^(W-1), borrow from the next window.
        if usize::from(v) > half(W) {
            *digit = v as i16 - (1 << W);
            carry = 1;
        } else {
            *digit = v as i16;
            carry = 0;
        }
    }
    // A scalar is below n < 2^bits and the windows cover at least bits + 1, so the top window
    // holds at most W - 1 of the scalar's bits: it is at most 2^(W-1) - 1 + carry and never
    // carries further.
    debug_assert_eq!(carry, 0);
    (digits, n)
}
