//! Arithmetic modulo the P-256 prime `p = 2^256 - 2^224 + 2^192 + 2^96 - 1`, shaped for
//! WebAssembly, for the ES256 fast path ([`super::p256`]).
//!
//! WebAssembly has a 64×64→64-bit multiply and no wider product, so the `p256` crate's field
//! (eight 32-bit limbs, as on any 32-bit target) spends most of its time on carry chains: each
//! 32×32-bit product must be split and its halves added with explicit carries, and every
//! addition or subtraction ends in a conditional correction by `p`. Here an element is ten
//! signed 26-bit limbs held in `i64`: a product of two limbs is below 2^60 even with several
//! bits of slack, so a column of ten products and a few reduction terms sums in one `i64` with
//! no carries, and additions, subtractions and small multiples are limb-wise with no carry at
//! all (the slack absorbs them until the next multiplication).
//!
//! Elements are in Montgomery form with `R = 2^260` (`a` is held as `a·R mod p`, not
//! necessarily reduced). As `p ≡ -1 (mod 2^96)`, `-p⁻¹ mod 2^26 = 1`: the Montgomery digit of a
//! column is its low 26 bits, and adding that digit times `p` (`2^256 - 2^224 + 2^192 + 2^96 -
//! 1`) is four shifted additions into later columns, folded into the product-scanning
//! multiplication itself. The result then has its bits from 256 up folded back once with
//! `2^256 ≡ 2^224 - 2^192 - 2^96 + 1`, which keeps every product's limbs within
//! [`Fe::mul`]'s bounds.
//!
//! Bounds. A *reduced* element (the result of [`Fe::mul`], [`Fe::square`], [`Fe::from_bytes`])
//! has limbs 0–8 within 11·2^18 < 2^21.5 of `[0, 2^26)` and limb 9 in `[0, 2^22)`, so every
//! limb is below 2^26.1 in magnitude and the value below 2^256.1. (Before the fold the value
//! is below `128·2^512.2/2^260 + p < 2^259.4`, so the folded-back multiple `t` of 2^256 is at
//! most 11 in magnitude, and the largest fold term `t·2^18` goes into limb 3.) Adding,
//! subtracting or negating adds limb bounds; multiplying by a small constant multiplies them.
//! [`Fe::mul`] is exact
//! when its inputs are sums of reduced elements with total weights `w1`, `w2` (a reduced
//! element weighs 1; `a + b` weighs 2, `4·a` 4) such that `w1·w2 ≤ 128`: a column is then at
//! most `10·128·2^52.2 < 2^62.6` plus the reduction terms (each below 2^48) and the carry. The
//! callers in [`super::p256`] state the weights they use; the debug build's overflow checks
//! (the unit tests) trap if a column ever overflows.
//!
//! Everything is public data (keys, signatures, digests), so nothing here is constant time:
//! [`Fe::canonical`] loops until the value is reduced and comparisons branch.

/// Low 26 bits.
const MASK: i64 = (1 << 26) - 1;

/// `p` in canonical limbs.
const P: [i64; 10] = [
    0x3ffffff, 0x3ffffff, 0x3ffffff, 0x3ffff, 0x0, 0x0, 0x0, 0x400, 0x3ff0000, 0x3fffff,
];

/// `R² mod p = 2^520 mod p`: `Fe::mul` by it takes a value into Montgomery form.
const R2: [i64; 10] = [
    0x300, 0x0, 0x3f00000, 0x3ffffff, 0x3fffffb, 0x3ffffbf, 0x3ffffff, 0x3f7ffff, 0xffffff, 0x1,
];

/// A field element in Montgomery form (see the module comment for the limb bounds).
#[derive(Clone, Copy, Debug)]
pub struct Fe([i64; 10]);

impl Fe {
    pub const ZERO: Fe = Fe([0; 10]);
    /// `1` in Montgomery form: `R mod p = 2^260 mod p`.
    pub const ONE: Fe = Fe([
        0x10, 0x0, 0x0, 0x3c00000, 0x3ffffff, 0x3ffffff, 0x3ffffff, 0x3ffbfff, 0xfffff, 0x0,
    ]);

    /// A canonical big-endian encoding (below `p`), or `None`.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Fe> {
        let limbs = limbs_of(bytes);
        if !below_p(&limbs) {
            return None;
        }
        Some(Fe(limbs).mul(&Fe(R2)))
    }

    /// The canonical big-endian encoding of the value (the tests compare values with the
    /// crate's through it).
    #[cfg(test)]
    pub fn to_bytes(&self) -> [u8; 32] {
        // Out of Montgomery form: a·R · 1 / R.
        let mut one = [0i64; 10];
        one[0] = 1;
        bytes_of(&self.mul(&Fe(one)).canonical())
    }

    /// Canonical limbs of the table entries ([`Compact`]): each limb in `[0, 2^26)`.
    pub fn to_compact(self) -> Compact {
        let l = self.canonical();
        Compact(l.map(|x| x as u32))
    }

    /// The limbs of the same value reduced into `[0, p)`, each in `[0, 2^26)`.
    fn canonical(&self) -> [i64; 10] {
        let mut l = self.0;
        // Carry limbs 0–8 into [0, 2^26) (limb 9 keeps the rest), then fold the bits from 256
        // up; repeat. A first fold by t leaves the value in (-|t|·2^224, 2^256 + t·2^224), so
        // at most two more folds (by ±1) are needed: four rounds always end with t = 0.
        for _ in 0..4 {
            let mut c = 0;
            for x in l.iter_mut().take(9) {
                let v = *x + c;
                *x = v & MASK;
                c = v >> 26;
            }
            l[9] += c;
            let t = l[9] >> 22;
            if t == 0 {
                break;
            }
            fold(&mut l, t);
        }
        // Now 0 ≤ value < 2^256 < 2p: subtract p once if it is not below.
        if !below_p(&l) {
            let mut c = 0;
            for (x, p) in l.iter_mut().zip(P) {
                let v = *x - p + c;
                *x = v & MASK;
                c = v >> 26;
            }
        }
        l
    }

    /// `self^(2^k)` (a loop, not unrolled into [`Fe::invert`]: 5 KB of module).
    #[inline(never)]
    fn square_n(&self, k: u32) -> Fe {
        let mut x = *self;
        for _ in 0..k {
            x = x.square();
        }
        x
    }

    /// `self^(p-2)`, the inverse of a non-zero value (0 for 0), by Fermat: 255 squarings and
    /// 12 multiplications along `p - 2 = ffffffff 00000001 0…0 (96 bits) ffffffff ffffffff
    /// fffffffd` (hex). Only the table builds invert, once per window and once per batch.
    pub fn invert(&self) -> Fe {
        let a = self;
        let x2 = a.square().mul(a); // a^(2^2 - 1)
        let x3 = x2.square().mul(a);
        let x6 = x3.square_n(3).mul(&x3);
        let x12 = x6.square_n(6).mul(&x6);
        let x15 = x12.square_n(3).mul(&x3);
        let x30 = x15.square_n(15).mul(&x15);
        let x32 = x30.square_n(2).mul(&x2);
        let t = x32.square_n(32).mul(a); // ffffffff 00000001
        let t = t.square_n(96 + 32).mul(&x32); // … 0 (96 bits) ffffffff
        let t = t.square_n(32).mul(&x32); // ffffffff
        let t = t.square_n(30).mul(&x30); // 3fffffff: fffffffd is 3fffffff·4 + 1
        t.square_n(2).mul(a)
    }

    /// Whether the value is 0 mod p.
    pub fn is_zero(&self) -> bool {
        self.canonical() == [0; 10]
    }

    /// Whether the two values are equal mod p.
    pub fn equals(&self, other: &Fe) -> bool {
        self.sub(other).is_zero()
    }

    /// Limb-wise: the weights add.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn add(&self, rhs: &Fe) -> Fe {
        let mut out = self.0;
        for (o, r) in out.iter_mut().zip(rhs.0) {
            *o += r;
        }
        Fe(out)
    }

    /// Limb-wise: the weights add.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn sub(&self, rhs: &Fe) -> Fe {
        let mut out = self.0;
        for (o, r) in out.iter_mut().zip(rhs.0) {
            *o -= r;
        }
        Fe(out)
    }

    /// Limb-wise: the weight stays.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn neg(&self) -> Fe {
        Fe(self.0.map(|x| -x))
    }

    /// `k·self`, limb-wise: the weight is multiplied by `k`.
    #[inline(always)]
    pub fn times(&self, k: i64) -> Fe {
        Fe(self.0.map(|x| x * k))
    }

    /// Reduces the top limb's bits from 256 up (see [`fold`]) after a multiplication: limbs
    /// 0–8 come in as `[0, 2^26)`, the top limb as whatever the last carry left.
    #[inline(always)]
    fn folded(mut l: [i64; 10]) -> Fe {
        let t = l[9] >> 22;
        fold(&mut l, t);
        Fe(l)
    }

    /// Montgomery product `self·rhs/R mod p` (product scanning, the Montgomery digits of the
    /// low ten columns added as they are known; see the module comment for the input bounds).
    #[inline(never)]
    #[allow(clippy::should_implement_trait)]
    pub fn mul(&self, rhs: &Fe) -> Fe {
        let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9] = self.0;
        let [b0, b1, b2, b3, b4, b5, b6, b7, b8, b9] = rhs.0;
        let c = a0 * b0;
        let m0 = c & MASK;
        let c = c >> 26;
        let c = c + a0 * b1 + a1 * b0;
        let m1 = c & MASK;
        let c = c >> 26;
        let c = c + a0 * b2 + a1 * b1 + a2 * b0;
        let m2 = c & MASK;
        let c = c >> 26;
        let c = c + a0 * b3 + a1 * b2 + a2 * b1 + a3 * b0 + (m0 << 18);
        let m3 = c & MASK;
        let c = c >> 26;
        let c = c + a0 * b4 + a1 * b3 + a2 * b2 + a3 * b1 + a4 * b0 + (m1 << 18);
        let m4 = c & MASK;
        let c = c >> 26;
        let c = c + a0 * b5 + a1 * b4 + a2 * b3 + a3 * b2 + a4 * b1 + a5 * b0 + (m2 << 18);
        let m5 = c & MASK;
        let c = c >> 26;
        let c = c + a0 * b6 + a1 * b5 + a2 * b4 + a3 * b3 + a4 * b2 + a5 * b1 + a6 * b0 + (m3 << 18);
        let m6 = c & MASK;
        let c = c >> 26;
        let c =
            c + a0 * b7 + a1 * b6 + a2 * b5 + a3 * b4 + a4 * b3 + a5 * b2 + a6 * b1 + a7 * b0 + (m4 << 18) + (m0 << 10);
        let m7 = c & MASK;
        let c = c >> 26;
        let c = c
            + a0 * b8
            + a1 * b7
            + a2 * b6
            + a3 * b5
            + a4 * b4
            + a5 * b3
            + a6 * b2
            + a7 * b1
            + a8 * b0
            + (m5 << 18)
            + (m1 << 10)
            - (m0 << 16);
        let m8 = c & MASK;
        let c = c >> 26;
        let c = c
            + a0 * b9
            + a1 * b8
            + a2 * b7
            + a3 * b6
            + a4 * b5
            + a5 * b4
            + a6 * b3
            + a7 * b2
            + a8 * b1
            + a9 * b0
            + (m6 << 18)
            + (m2 << 10)
            - (m1 << 16)
            + (m0 << 22);
        let m9 = c & MASK;
        let c = c >> 26;
        let c = c
            + a1 * b9
            + a2 * b8
            + a3 * b7
            + a4 * b6
            + a5 * b5
            + a6 * b4
            + a7 * b3
            + a8 * b2
            + a9 * b1
            + (m7 << 18)
            + (m3 << 10)
            - (m2 << 16)
            + (m1 << 22);
        let r0 = c & MASK;
        let c = c >> 26;
        let c =
            c + a2 * b9 + a3 * b8 + a4 * b7 + a5 * b6 + a6 * b5 + a7 * b4 + a8 * b3 + a9 * b2 + (m8 << 18) + (m4 << 10)
                - (m3 << 16)
                + (m2 << 22);
        let r1 = c & MASK;
        let c = c >> 26;
        let c = c + a3 * b9 + a4 * b8 + a5 * b7 + a6 * b6 + a7 * b5 + a8 * b4 + a9 * b3 + (m9 << 18) + (m5 << 10)
            - (m4 << 16)
            + (m3 << 22);
        let r2 = c & MASK;
        let c = c >> 26;
        let c = c + a4 * b9 + a5 * b8 + a6 * b7 + a7 * b6 + a8 * b5 + a9 * b4 + (m6 << 10) - (m5 << 16) + (m4 << 22);
        let r3 = c & MASK;
        let c = c >> 26;
        let c = c + a5 * b9 + a6 * b8 + a7 * b7 + a8 * b6 + a9 * b5 + (m7 << 10) - (m6 << 16) + (m5 << 22);
        let r4 = c & MASK;
        let c = c >> 26;
        let c = c + a6 * b9 + a7 * b8 + a8 * b7 + a9 * b6 + (m8 << 10) - (m7 << 16) + (m6 << 22);
        let r5 = c & MASK;
        let c = c >> 26;
        let c = c + a7 * b9 + a8 * b8 + a9 * b7 + (m9 << 10) - (m8 << 16) + (m7 << 22);
        let r6 = c & MASK;
        let c = c >> 26;
        let c = c + a8 * b9 + a9 * b8 - (m9 << 16) + (m8 << 22);
        let r7 = c & MASK;
        let c = c >> 26;
        let c = c + a9 * b9 + (m9 << 22);
        let r8 = c & MASK;
        let c = c >> 26;
        Fe::folded([r0, r1, r2, r3, r4, r5, r6, r7, r8, c])
    }

    /// `self²/R mod p`: [`Fe::mul`] with each cross product computed once and doubled (55
    /// products instead of 100); the same columns, so the same bounds.
    #[inline(never)]
    pub fn square(&self) -> Fe {
        let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9] = self.0;
        let (d0, d1, d2, d3, d4, d5, d6, d7, d8) =
            (2 * a0, 2 * a1, 2 * a2, 2 * a3, 2 * a4, 2 * a5, 2 * a6, 2 * a7, 2 * a8);
        let c = a0 * a0;
        let m0 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a1;
        let m1 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a2 + a1 * a1;
        let m2 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a3 + d1 * a2 + (m0 << 18);
        let m3 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a4 + d1 * a3 + a2 * a2 + (m1 << 18);
        let m4 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a5 + d1 * a4 + d2 * a3 + (m2 << 18);
        let m5 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a6 + d1 * a5 + d2 * a4 + a3 * a3 + (m3 << 18);
        let m6 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a7 + d1 * a6 + d2 * a5 + d3 * a4 + (m4 << 18) + (m0 << 10);
        let m7 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a8 + d1 * a7 + d2 * a6 + d3 * a5 + a4 * a4 + (m5 << 18) + (m1 << 10) - (m0 << 16);
        let m8 = c & MASK;
        let c = c >> 26;
        let c = c + d0 * a9 + d1 * a8 + d2 * a7 + d3 * a6 + d4 * a5 + (m6 << 18) + (m2 << 10) - (m1 << 16) + (m0 << 22);
        let m9 = c & MASK;
        let c = c >> 26;
        let c = c + d1 * a9 + d2 * a8 + d3 * a7 + d4 * a6 + a5 * a5 + (m7 << 18) + (m3 << 10) - (m2 << 16) + (m1 << 22);
        let r0 = c & MASK;
        let c = c >> 26;
        let c = c + d2 * a9 + d3 * a8 + d4 * a7 + d5 * a6 + (m8 << 18) + (m4 << 10) - (m3 << 16) + (m2 << 22);
        let r1 = c & MASK;
        let c = c >> 26;
        let c = c + d3 * a9 + d4 * a8 + d5 * a7 + a6 * a6 + (m9 << 18) + (m5 << 10) - (m4 << 16) + (m3 << 22);
        let r2 = c & MASK;
        let c = c >> 26;
        let c = c + d4 * a9 + d5 * a8 + d6 * a7 + (m6 << 10) - (m5 << 16) + (m4 << 22);
        let r3 = c & MASK;
        let c = c >> 26;
        let c = c + d5 * a9 + d6 * a8 + a7 * a7 + (m7 << 10) - (m6 << 16) + (m5 << 22);
        let r4 = c & MASK;
        let c = c >> 26;
        let c = c + d6 * a9 + d7 * a8 + (m8 << 10) - (m7 << 16) + (m6 << 22);
        let r5 = c & MASK;
        let c = c >> 26;
        let c = c + d7 * a9 + a8 * a8 + (m9 << 10) - (m8 << 16) + (m7 << 22);
        let r6 = c & MASK;
        let c = c >> 26;
        let c = c + d8 * a9 - (m9 << 16) + (m8 << 22);
        let r7 = c & MASK;
        let c = c >> 26;
        let c = c + a9 * a9 + (m9 << 22);
        let r8 = c & MASK;
        let c = c >> 26;
        Fe::folded([r0, r1, r2, r3, r4, r5, r6, r7, r8, c])
    }
}

/// `l + t·2^256 - t·2^256` with `t·2^256` rewritten as `t·(2^224 - 2^192 - 2^96 + 1)` (mod p):
/// clears limb 9's bits from 22 up (bit 256 of the value) and adds the four shifted terms.
#[inline(always)]
fn fold(l: &mut [i64; 10], t: i64) {
    l[9] -= t << 22;
    l[0] += t;
    l[3] -= t << 18; // 2^96 = 2^(78 + 18)
    l[7] -= t << 10; // 2^192 = 2^(182 + 10)
    l[8] += t << 16; // 2^224 = 2^(208 + 16)
}

/// Whether canonical limbs (each in `[0, 2^26)`) are below `p`.
fn below_p(l: &[i64; 10]) -> bool {
    for (x, p) in l.iter().zip(P).rev() {
        if *x != p {
            return *x < p;
        }
    }
    false
}

/// Big-endian bytes to ten 26-bit limbs (the value below 2^256).
fn limbs_of(bytes: &[u8; 32]) -> [i64; 10] {
    let mut limbs = [0i64; 10];
    for (i, b) in bytes.iter().rev().enumerate() {
        let bit = 8 * i;
        let (limb, shift) = (bit / 26, bit % 26);
        if let Some(l) = limbs.get_mut(limb) {
            *l |= (i64::from(*b) << shift) & MASK;
        }
        if shift > 18 {
            if let Some(l) = limbs.get_mut(limb + 1) {
                *l |= i64::from(*b) >> (26 - shift);
            }
        }
    }
    limbs
}

/// Canonical limbs to big-endian bytes (for [`Fe::to_bytes`]).
#[cfg(test)]
fn bytes_of(l: &[i64; 10]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let (mut acc, mut bits) = (0u64, 0u32);
    let mut bytes = out.iter_mut().rev();
    for x in l {
        acc |= (*x as u64) << bits;
        bits += 26;
        while bits >= 8 {
            if let Some(b) = bytes.next() {
                *b = acc as u8;
            }
            acc >>= 8;
            bits -= 8;
        }
    }
    if let Some(b) = bytes.next() {
        *b = acc as u8;
    }
    out
}

/// A reduced element stored compactly (canonical limbs in `u32`): the form of the fixed-base
/// table entries, half the size of an [`Fe`].
#[derive(Clone, Copy, Debug)]
pub struct Compact([u32; 10]);

impl Compact {
    #[inline(always)]
    pub fn get(&self) -> Fe {
        Fe(self.0.map(i64::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::p256::elliptic_curve::PrimeField;
    use ::p256::NistP256;

    type Ref = <NistP256 as ::p256::elliptic_curve::hazmat::FieldArithmetic>::FieldElement;

    fn fe(r: &Ref) -> Fe {
        Fe::from_bytes(&r.to_repr().into()).unwrap()
    }

    fn back(f: &Fe) -> Ref {
        Ref::from_repr(f.to_bytes().into()).unwrap()
    }

    /// Random elements from the test stream, and the edge cases: 0, 1, 2, p-1, p-2, 2^255,
    /// 2^224, 2^256 - 2^224 (= p - 2^192 - 2^96 + 1), and values with runs of ones.
    fn samples() -> Vec<Ref> {
        let mut v = vec![Ref::ZERO, Ref::ONE, Ref::ONE.double(), -Ref::ONE, -Ref::ONE.double()];
        let mut pow = Ref::ONE;
        for i in 0..256 {
            if [25, 26, 52, 95, 96, 191, 192, 223, 224, 233, 234, 255].contains(&i) {
                v.extend([pow, -pow, pow - Ref::ONE]);
            }
            pow = pow.double();
        }
        for seed in 0..64u64 {
            let bytes = crate::crypto::test_bytes::<::rsa::sha2::Sha256>(seed, 32);
            let mut repr = [0u8; 32];
            repr.copy_from_slice(&bytes);
            repr[0] &= 0x7f; // below p
            if seed % 4 == 0 {
                repr[0] = 0xff;
                repr[1..4].fill(0xff); // near p from below (still below: p's top 32 bits are ffffffff then 00000001)
                repr[4..8].fill(0);
            }
            v.push(Ref::from_repr(repr.into()).unwrap());
        }
        v
    }

    #[test]
    fn constants_match_the_crate() {
        assert!(back(&Fe::ONE) == Ref::ONE);
        assert!(back(&Fe::ZERO) == Ref::ZERO);
        // p: p - 1 is the crate's -1.
        let mut p_minus_1 = P;
        p_minus_1[0] -= 1;
        assert_eq!(bytes_of(&p_minus_1), (-Ref::ONE).to_repr().as_slice());
        // R² mod p, from the crate: R = 2^260.
        let mut r = Ref::ONE;
        for _ in 0..260 {
            r = r.double();
        }
        assert_eq!(bytes_of(&R2), (r * r).to_repr().as_slice());
    }

    #[test]
    fn encoding_round_trips_and_rejects_p_and_above() {
        for x in samples() {
            assert_eq!(fe(&x).to_bytes(), x.to_repr().as_slice());
            assert!(limbs_of(&x.to_repr().into()).iter().all(|l| (0..1 << 26).contains(l)));
            assert_eq!(bytes_of(&limbs_of(&x.to_repr().into())), x.to_repr().as_slice());
        }
        let p = bytes_of(&P);
        assert!(Fe::from_bytes(&p).is_none());
        assert!(Fe::from_bytes(&[0xff; 32]).is_none());
        let mut p_plus_1 = p;
        p_plus_1[31] = 0; // p ends in ff: p + 1 ends in 00 with a carry into the next byte
        p_plus_1[30] = 0;
        assert!(Fe::from_bytes(&p_plus_1).is_some()); // (that is p - 0xffff, below p)
        let mut p_minus_1 = p;
        p_minus_1[31] -= 1;
        assert!(Fe::from_bytes(&p_minus_1).is_some());
    }

    #[test]
    fn arithmetic_matches_the_crate() {
        let s = samples();
        for (i, a) in s.iter().enumerate() {
            let b = &s[(i * 7 + 3) % s.len()];
            let (fa, fb) = (fe(a), fe(b));
            assert!(back(&fa.mul(&fb)) == *a * b, "{i}");
            assert!(back(&fa.square()) == a.square(), "{i}");
            assert!(back(&fa.add(&fb)) == *a + b);
            assert!(back(&fa.sub(&fb)) == *a - b);
            assert!(back(&fa.neg()) == -*a);
            assert!(back(&fa.invert()) == a.invert().unwrap_or(Ref::ZERO));
            assert!(back(&fa.times(4).sub(&fb).invert()) == (a.double().double() - b).invert().unwrap_or(Ref::ZERO));
            assert!(back(&fa.times(3)) == a.double() + a);
            assert_eq!(fa.is_zero(), bool::from(a.is_zero()));
            assert!(fa.equals(&fa.add(&Fe::ZERO)));
            assert_eq!(fa.equals(&fb), a == b);
            // Unreduced sums and differences as inputs, at the weights the point formulas use.
            let wide = fa.times(4).sub(&fb.times(4)); // weight 8
            let ref_wide = (*a - b).double().double();
            assert!(back(&wide.mul(&wide)) == ref_wide.square());
            assert!(back(&wide.square()) == ref_wide.square());
            let five = fa.add(&fb).sub(&fa.times(3)); // weight 5
            assert!(back(&five.mul(&wide)) == (*b - a.double()) * ref_wide);
            assert_eq!(fa.sub(&fb).is_zero(), a == b);
            assert_eq!(wide.is_zero(), a == b);
        }
    }

    /// Every limb at the largest magnitude a weight-`w` input can have (the reduced bound
    /// 2^26 + 2^21.5 times `w`, and its negation), with `w1·w2` up to 128 (a square: `w² ≤ 128`):
    /// no column overflows (the debug build checks) and the result is still right.
    #[test]
    fn products_at_the_limb_bounds() {
        let top = (1i64 << 26) + (1 << 21) + (1 << 20) + (1 << 18); // above 2^26 + 2^21.5
        for (w1, w2) in [(8i64, 16i64), (16, 8), (11, 11), (1, 128)] {
            for signs in [[1i64; 2], [1, -1], [-1, -1]] {
                let a = Fe([top * w1 * signs[0]; 10]);
                let b = Fe([top * w2.min(12) * signs[1]; 10]);
                let (ra, rb) = (back(&a.mul(&Fe::ONE)), back(&b.mul(&Fe::ONE)));
                assert!(back(&a.mul(&b)) == ra * rb);
                if w1 * w1 <= 128 {
                    assert!(back(&a.square()) == ra.square());
                }
            }
        }
    }

    #[test]
    fn canonical_reduces_any_reachable_value() {
        // Values around 0, p, 2p, 2^256, 2^260 and their negations, as raw limbs.
        let mut cases = vec![P, [0; 10], [MASK; 10]];
        cases.push(P.map(|x| -x));
        cases.push([-MASK; 10]);
        let mut two_p = P.map(|x| 2 * x);
        cases.push(two_p);
        two_p[0] += 1;
        cases.push(two_p);
        let mut p_minus_1 = P;
        p_minus_1[0] -= 1;
        cases.push(p_minus_1);
        let mut p_plus_1 = P;
        p_plus_1[0] += 1;
        cases.push(p_plus_1);
        cases.push([0, 0, 0, 0, 0, 0, 0, 0, 0, 1 << 22]); // 2^256
        cases.push([0, 0, 0, 0, 0, 0, 0, 0, 0, 1 << 29]); // 2^263
        cases.push([0, 0, 0, 0, 0, 0, 0, 0, 0, -(1 << 29)]);
        for l in cases {
            // The expected value from the limbs, in the crate's field.
            let mut expect = Ref::ZERO;
            for x in l.iter().rev() {
                for _ in 0..26 {
                    expect = expect.double();
                }
                let m = Ref::from(x.unsigned_abs());
                expect += if *x < 0 { -m } else { m };
            }
            let c = Fe(l).canonical();
            assert!(c.iter().all(|x| (0..1 << 26).contains(x)), "{l:x?}");
            assert!(below_p(&c));
            assert_eq!(bytes_of(&c), expect.to_repr().as_slice(), "{l:x?}");
        }
    }
}
