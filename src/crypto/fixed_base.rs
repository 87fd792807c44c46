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
//! | P-256 | 8 | 33 | 4224 points, about 330 KiB | 66 | 4–5 ms |
//! | P-384 | 6 | 65 | 2080 points, about 203 KiB | 130 | about 20 ms |
//!
//! The window width trades a key's first verification (and the table's memory) for every
//! later one. For P-256 (`make vm-profile`, one run of each on a busy machine, so compared
//! through the `ecdsa` ladder timed in the same run): six-bit windows 218 µs against the
//! ladder's 818 (0.27), eight-bit ones 168 µs against 1,061 (0.16), for a table built in about
//! 13 ms instead of 4–6 ms. For P-384, eight-bit windows would make a
//! key's table take about 50 ms and 650 KiB, so it keeps six.
//!
//! Everything here is public (signature, message, key), so lookups are variable time. For
//! P-384 the field and point arithmetic (complete formulas) is `primeorder`'s, the crate `p256`
//! and `p384` are built on; only the multiplication is organised differently. P-256 uses this
//! module's layout and digits with a field and Jacobian sums of its own (`super::p256`: a
//! verify 132.5 → 37.8 µs, a key's table 13.6 → 4.0 ms in the quietest of three alternating
//! `make vm-profile` rounds).

use ::p256::elliptic_curve::group::{Curve, Group};
use ::p256::elliptic_curve::{Field, PrimeField};
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

/// A table entry: an affine point's coordinates (never the identity: `j·2^(Wi)·P` with
/// `0 < j < n` and `n` prime is not).
#[derive(Clone, Copy)]
struct Entry<F> {
    x: F,
    y: F,
}

/// The multiples `j·2^(W·i)·P`, `i < windows`, `1 ≤ j ≤ 2^(W-1)`, at `i·2^(W-1) + j - 1`.
pub struct Table<C: PrimeCurveParams, const W: usize> {
    points: Box<[Entry<C::FieldElement>]>,
}

/// ECDSA's verification equation on two tables, as `ecdsa`'s `verify_prehashed` computes
/// it: `x(u1·G + u2·Q) mod n = r` with `u1 = z·s⁻¹`, `u2 = r·s⁻¹` (`z` the reduced digest; the
/// caller has checked `0 < r, s < n`).
pub fn ecdsa_holds<C: PrimeCurveParams, const W: usize>(
    g: &Table<C, W>,
    q: &Table<C, W>,
    z: &C::Scalar,
    r: &C::Scalar,
    s_inv: &C::Scalar,
) -> bool {
    let mut sum = Sum::identity();
    // x(R) mod n = r without normalising R; the identity never matches (as in `ecdsa`).
    g.add_multiple(&mut sum, &(*z * s_inv)) && q.add_multiple(&mut sum, &(*r * s_inv)) && sum.x_is(r)
}

/// A sum of table entries in projective coordinates `(X : Y : Z)`, `x = X/Z`, `y = Y/Z`.
/// Kept here rather than as `primeorder`'s `ProjectivePoint` so that the final comparison with
/// `r` can be made as `X = r·Z`, without the field inversion `to_affine` costs (a P-256
/// verify went from 146 to 135 µs, `make vm-profile` alternating builds; P-384 unchanged).
struct Sum<C: PrimeCurveParams> {
    x: C::FieldElement,
    y: C::FieldElement,
    z: C::FieldElement,
}

impl<C: PrimeCurveParams> Sum<C> {
    /// The identity, `(0 : 1 : 0)`.
    fn identity() -> Sum<C> {
        Sum {
            x: C::FieldElement::ZERO,
            y: C::FieldElement::ONE,
            z: C::FieldElement::ZERO,
        }
    }

    /// Adds the affine point `(x2, y2)` (not the identity): `primeorder`'s complete mixed
    /// addition for `a = -3` (Renes–Costello–Batina 2015, algorithm 5), the same formula its
    /// `ProjectivePoint += AffinePoint` uses, which is also correct when `self` is the
    /// identity or equals the point added.
    fn add_mixed(&mut self, x2: &C::FieldElement, y2: &C::FieldElement) {
        let b = C::EQUATION_B;
        let (x1, y1, z1) = (self.x, self.y, self.z);
        let xx = x1 * x2;
        let yy = y1 * y2;
        let xy_pairs = ((x1 + y1) * (*x2 + y2)) - (xx + yy);
        let yz_pairs = (*y2 * z1) + y1;
        let xz_pairs = (*x2 * z1) + x1;
        let bz_part = xz_pairs - (b * z1);
        let bz3_part = bz_part.double() + bz_part;
        let yy_m_bzz3 = yy - bz3_part;
        let yy_p_bzz3 = yy + bz3_part;
        let z3 = z1.double() + z1;
        let bxz_part = (b * xz_pairs) - (z3 + xx);
        let bxz3_part = bxz_part.double() + bxz_part;
        let xx3_m_zz3 = xx.double() + xx - z3;
        self.x = (yy_p_bzz3 * xy_pairs) - (yz_pairs * bxz3_part);
        self.y = (yy_p_bzz3 * yy_m_bzz3) + (xx3_m_zz3 * bxz3_part);
        self.z = (yy_m_bzz3 * yz_pairs) + (xy_pairs * xx3_m_zz3);
    }

    /// ECDSA's last step: whether `x(R) mod n = r`, for `R` this sum and `0 < r < n`. As
    /// `n < p < 2n` on both curves, that is `x(R) = r` or `x(R) = r + n` (if below `p`),
    /// compared as `X = r·Z`, resp. `X = (r + n)·Z`. The identity (`Z = 0`) never matches,
    /// as in `ecdsa`.
    fn x_is(&self, r: &C::Scalar) -> bool {
        if bool::from(self.z.is_zero()) {
            return false;
        }
        let r_bytes = r.to_repr();
        let Some(r_fe) = Option::<C::FieldElement>::from(C::FieldElement::from_repr(r_bytes)) else {
            return false;
        };
        if self.x == r_fe * self.z {
            return true;
        }
        // Above p there is no such x; above 2^bits not even the bytes.
        let Some(sum) = r_plus_n::<C>(r) else {
            return false;
        };
        match Option::<C::FieldElement>::from(C::FieldElement::from_repr(sum)) {
            Some(r_plus_n) => self.x == r_plus_n * self.z,
            None => false,
        }
    }

    /// The affine coordinates, for the tests.
    #[cfg(test)]
    fn to_affine(&self) -> AffinePoint<C> {
        use ::p256::elliptic_curve::point::AffineCoordinates;
        match Option::<C::FieldElement>::from(self.z.invert()) {
            None => AffinePoint::<C>::IDENTITY,
            Some(zi) => {
                let (x, y) = ((self.x * zi).to_repr(), (self.y * zi).to_repr());
                Option::from(AffinePoint::<C>::from_coordinates(&x, &y)).expect("on the curve")
            }
        }
    }
}

impl<C: PrimeCurveParams, const W: usize> Table<C, W> {
    const HALF: usize = half(W);

    /// `None` only if a multiple's coordinates do not decode (never: they are field elements).
    pub fn new(p: &AffinePoint<C>) -> Option<Table<C, W>> {
        use ::p256::elliptic_curve::point::AffineCoordinates;
        let points = multiples::<C, W>(p)
            .iter()
            .map(|a| {
                let x = Option::<C::FieldElement>::from(C::FieldElement::from_repr(a.x()))?;
                let y = Option::<C::FieldElement>::from(C::FieldElement::from_repr(a.y()))?;
                Some(Entry { x, y })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Table {
            points: points.into_boxed_slice(),
        })
    }

    /// Adds `k·P` to `acc`; false only if the table is shorter than the curve's scalars need
    /// (never, by construction).
    fn add_multiple(&self, acc: &mut Sum<C>, k: &C::Scalar) -> bool {
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
                acc.add_mixed(&point.x, &-point.y);
            } else {
                acc.add_mixed(&point.x, &point.y);
            }
        }
        true
    }

    /// `k·P`, for the tests.
    #[cfg(test)]
    fn mul(&self, k: &C::Scalar) -> ProjectivePoint<C> {
        let mut acc = Sum::identity();
        assert!(self.add_multiple(&mut acc, k));
        ProjectivePoint::from(acc.to_affine())
    }
}

/// The table's points in affine form, `j·2^(W·i)·P` at `i·2^(W-1) + j - 1` (`i` below
/// [`windows`], `1 ≤ j ≤ 2^(W-1)`), computed with `primeorder`'s complete formulas and one
/// batched inversion, kept by [`Table`] in the curve's field. (P-256's tables, in a field of
/// their own, are built in `super::p256` and compared with these in its tests.)
pub fn multiples<C: PrimeCurveParams, const W: usize>(p: &AffinePoint<C>) -> Vec<AffinePoint<C>> {
    const { assert!(MIN_W <= W && W <= 14, "digits are i16 and windows at most MAX_WINDOWS") };
    let half = half(W);
    let windows = windows::<C, W>();
    let mut projective = Vec::with_capacity(windows * half);
    let mut base = ProjectivePoint::<C>::from(*p);
    for _ in 0..windows {
        let mut multiple = base;
        projective.push(multiple);
        for _ in 1..half {
            multiple += base;
            projective.push(multiple);
        }
        // 2^(W-1)·base doubled: the next window's base, 2^W·base.
        base = Group::double(&multiple);
    }
    let mut affine = vec![AffinePoint::<C>::IDENTITY; projective.len()];
    <ProjectivePoint<C> as Curve>::batch_normalize(&projective, &mut affine);
    affine
}

/// `r + n` in the scalar's big-endian encoding, for ECDSA's last step (`x(R) mod n = r` also
/// holds for `x(R) = r + n`), computed as `r + (n - 1) + 1`; `None` if it does not fit in
/// those bytes.
pub fn r_plus_n<C: PrimeCurveParams>(r: &C::Scalar) -> Option<<C::Scalar as PrimeField>::Repr> {
    let n_minus_1 = (-C::Scalar::ONE).to_repr();
    let mut sum = r.to_repr();
    let mut carry = 1u16;
    let n_minus_1: &[u8] = n_minus_1.as_ref();
    let digits: &mut [u8] = sum.as_mut();
    for (out, m) in digits.iter_mut().zip(n_minus_1).rev() {
        let v = u16::from(*out) + u16::from(*m) + carry;
        *out = v as u8;
        carry = v >> 8;
    }
    (carry == 0).then_some(sum)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ::p256::elliptic_curve::ops::Reduce;

    /// `(x·z : y·z : z)`: the affine point `(x, y)` with a projective scale.
    fn scaled<C: PrimeCurveParams>(x: C::FieldElement, y: C::FieldElement, z: C::FieldElement) -> Sum<C> {
        Sum { x: x * z, y: y * z, z }
    }

    /// A point whose x coordinate lies in `[n, p)`, so `x(R) mod n = x - n`: the branch of
    /// [`Sum::x_is`] that random signatures reach with probability about 2^-32 (P-256).
    fn check_large_x<C: PrimeCurveParams>()
    where
        C::Scalar: Reduce<C::Uint>,
    {
        let n_minus_1 = (-C::Scalar::ONE).to_repr();
        // x = n + i for the first i that puts x on the curve.
        let mut x =
            Option::<C::FieldElement>::from(C::FieldElement::from_repr(n_minus_1)).unwrap() + C::FieldElement::ONE;
        let mut i = 0u64;
        let y = loop {
            let rhs = x.square() * x + C::EQUATION_A * x + C::EQUATION_B;
            if let Some(y) = Option::<C::FieldElement>::from(rhs.sqrt()) {
                break y;
            }
            x += C::FieldElement::ONE;
            i += 1;
            assert!(i < 1000);
        };
        let r = C::Scalar::from(i); // x - n
        let z = C::FieldElement::from(7) + x;
        let sum = scaled::<C>(x, y, z);
        assert!(sum.x_is(&r), "x(R) = r + n");
        assert!(!sum.x_is(&(r + C::Scalar::ONE)));
        // An x below n matches itself only.
        let g = AffinePoint::<C>::GENERATOR;
        use ::p256::elliptic_curve::point::AffineCoordinates;
        let gx = Option::<C::FieldElement>::from(C::FieldElement::from_repr(g.x())).unwrap();
        let gy = Option::<C::FieldElement>::from(C::FieldElement::from_repr(g.y())).unwrap();
        let r_g = Option::<C::Scalar>::from(C::Scalar::from_repr(g.x())).unwrap();
        assert!(scaled::<C>(gx, gy, z).x_is(&r_g));
        assert!(!scaled::<C>(gx, gy, z).x_is(&(r_g + C::Scalar::ONE)));
        // The identity matches nothing.
        assert!(!Sum::<C>::identity().x_is(&r_g));
        assert!(!Sum::<C>::identity().x_is(&C::Scalar::ZERO));
    }

    /// A scalar from the test stream, below `2^(bits - 1)` (so below `n`).
    fn scalar<C: PrimeCurveParams>(seed: u64) -> C::Scalar {
        let mut repr = C::Scalar::ZERO.to_repr();
        let bytes: &mut [u8] = repr.as_mut();
        let len = bytes.len();
        bytes.copy_from_slice(&crate::crypto::test_bytes::<::rsa::sha2::Sha512>(seed, len));
        bytes[0] &= 0x7f;
        Option::from(C::Scalar::from_repr(repr)).unwrap()
    }

    /// 0, ±1, ±2, single bits (given) with their neighbours, and all ones below the top bit.
    fn edge_scalars<C: PrimeCurveParams>(bits: &[u32]) -> Vec<C::Scalar> {
        let two = C::Scalar::ONE.double();
        let mut v = vec![C::Scalar::ZERO, C::Scalar::ONE, -C::Scalar::ONE, two, -two];
        for &bit in bits {
            let mut s = C::Scalar::ONE;
            for _ in 0..bit {
                s = s.double();
            }
            v.extend([s, s - C::Scalar::ONE, -s]);
        }
        let mut ones = C::Scalar::ZERO;
        for _ in 0..C::Scalar::NUM_BITS - 1 {
            ones = ones.double() + C::Scalar::ONE;
        }
        v.push(ones);
        v
    }

    fn check_digits<C: PrimeCurveParams, const W: usize>(windows: usize, bits: &[u32]) {
        for k in edge_scalars::<C>(bits).into_iter().chain((0..200).map(scalar::<C>)) {
            let (digits, n) = signed_digits::<C, W>(&k);
            assert_eq!(n, windows);
            let mut back = C::Scalar::ZERO;
            for d in digits[..n].iter().rev() {
                for _ in 0..W {
                    back = back.double();
                }
                let m = C::Scalar::from(u64::from(d.unsigned_abs()));
                back += if *d < 0 { -m } else { m };
                assert!(-(half(W) as i16 - 1) <= *d && *d <= half(W) as i16);
            }
            assert!(back == k);
        }
    }

    fn check_table<C: PrimeCurveParams, const W: usize>(bits: &[u32]) {
        let g = ProjectivePoint::<C>::GENERATOR;
        let q = (g * scalar::<C>(7)).to_affine();
        let (table, g_table) = (
            Table::<C, W>::new(&q).unwrap(),
            Table::<C, W>::new(&g.to_affine()).unwrap(),
        );
        for k in edge_scalars::<C>(bits).into_iter().chain((100..120).map(scalar::<C>)) {
            assert!(table.mul(&k) == ProjectivePoint::from(q) * k);
            assert!(g_table.mul(&k) == g * k);
        }
    }

    #[test]
    fn digits_recompose_the_scalar_and_stay_in_range() {
        check_digits::<::p256::NistP256, 8>(33, &[4, 5, 15, 16, 31, 254, 255]);
        check_digits::<::p384::NistP384, 6>(65, &[4, 5, 6, 31, 32, 377, 378, 382, 383]);
    }

    #[test]
    fn table_multiples_match_the_ladder() {
        check_table::<::p256::NistP256, 8>(&[4, 5, 15, 16, 31, 254, 255]);
        check_table::<::p384::NistP384, 6>(&[4, 5, 6, 31, 32, 377, 378, 382, 383]);
    }

    #[test]
    fn x_of_r_at_or_above_n_is_compared_modulo_n() {
        check_large_x::<::p256::NistP256>();
        check_large_x::<::p384::NistP384>();
    }
}
