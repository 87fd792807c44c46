//! RSA's public operation `s^e mod n` on 52-bit limbs held in `f64`, with products split
//! exactly by fused multiply-add: the fast path [`super::rsa::FastRsa`] takes when the
//! WebAssembly runtime fuses `f64x2.relaxed_madd` (V8 does on CPUs with FMA), and the 28-bit
//! integer code in `rsa.rs` otherwise.
//!
//! Why: WebAssembly's widest integer multiply is 64×64→64 bits, so the integer code's limbs
//! are 28 bits wide (a 2048-bit number is 74 limbs, a Montgomery squaring about 8,250 partial
//! products). A fused `a·b + c` on doubles computes a product of two 52-bit integers exactly
//! in two operations: `hi = a·b + 2^104` rounds to a multiple of 2^52 (its mantissa holds the
//! product's top 52 bits, rounded), and `lo = a·b + (2^104 - hi)` is the exact remainder
//! (between −2^51 and 2^51). 2048 bits are then 40 limbs, a squaring about 2,420 products,
//! two to a SIMD instruction. The halves are summed as integers: `hi`'s bit pattern is
//! `bits(2^104) + top`, and `lo + 1.5·2^52`'s is `bits(1.5·2^52) + lo`, so `i64x2.add` on the
//! bit patterns sums them exactly and the constant is taken off once per column.
//!
//! The algorithm is `rsa.rs`'s: product-scanning Montgomery multiplication (each column's
//! Montgomery digit found as soon as the column is complete), squarings that sum each cross
//! product once and double it, lazy reduction (`4n < R = 2^(52k)`, so operands below `2n`
//! give products below `2n`), and no conversion into Montgomery form (`s^e·R^(1-e)` times
//! `R^e mod n`).
//!
//! Correctness rests on the fusion: unfused, `lo` would be 0 and the result wrong. So the
//! runtime is probed ([`available`]) and every key checks itself against the integer code at
//! set-up ([`super::rsa`]); the unit tests run the same code natively (`f64::mul_add`, always
//! fused) against the general bignum, and `tests/wycheproof.rs` runs every RSA vector.
//! Everything here is public (signature, modulus, exponent): variable time is fine.

use super::limbs::{be_to_limbs, limbs_to_be, neg_inverse};
use lanes::{F2, I2};

/// Limb width in bits.
const W: u32 = 52;
const MASK: i64 = (1 << W) - 1;
/// Limbs of the largest modulus: 4096 bits and the two spare bits lazy reduction needs.
const MAX_LIMBS: usize = 79;
/// Zero limbs on either side of a number (a column's sum reads one limb before its range).
const PAD: usize = 2;
/// A number of `k` limbs (integers below 2^52), least significant first, at `PAD..PAD + k`;
/// every other entry is 0.
type Num = [f64; PAD + MAX_LIMBS + PAD];
const ZERO: Num = [0.0; PAD + MAX_LIMBS + PAD];

/// 2^104, and its bit pattern.
const C104_BITS: i64 = (1023 + 104) << 52;
const C104: f64 = f64::from_bits(C104_BITS as u64);
/// 1.5·2^52, and its bit pattern: added to an integer between −2^51 and 2^51, it leaves the
/// integer in the low mantissa bits.
const MAGIC_BITS: i64 = (1023 + 52) << 52 | 1 << 51;
const MAGIC: f64 = f64::from_bits(MAGIC_BITS as u64);

/// Two lanes of `f64` and of `i64`: WebAssembly SIMD with relaxed fused multiply-add, or
/// plain arrays with `f64::mul_add` (native builds and the unit tests).
#[cfg(target_arch = "wasm32")]
mod lanes {
    use core::arch::wasm32::{
        f64x2, f64x2_add, f64x2_extract_lane, f64x2_relaxed_madd, f64x2_splat, f64x2_sub, i64x2_add,
        i64x2_extract_lane, i64x2_splat, v128,
    };

    #[derive(Clone, Copy)]
    pub struct F2(v128);
    #[derive(Clone, Copy)]
    pub struct I2(v128);

    impl F2 {
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn new(p: &[f64; 2]) -> F2 {
            let [a, b] = *p;
            F2(f64x2(a, b))
        }
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn splat(x: f64) -> F2 {
            F2(f64x2_splat(x))
        }
        /// `a·b + c`, rounded once where the runtime fuses it (see [`fused`]).
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn madd(a: F2, b: F2, c: F2) -> F2 {
            F2(f64x2_relaxed_madd(a.0, b.0, c.0))
        }
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn add(self, o: F2) -> F2 {
            F2(f64x2_add(self.0, o.0))
        }
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn sub(self, o: F2) -> F2 {
            F2(f64x2_sub(self.0, o.0))
        }
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn first(self) -> f64 {
            f64x2_extract_lane::<0>(self.0)
        }
    }

    impl I2 {
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn zero() -> I2 {
            I2(i64x2_splat(0))
        }
        /// Adds `x`'s bit patterns as integers (wrapping).
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn add_bits(self, x: F2) -> I2 {
            I2(i64x2_add(self.0, x.0))
        }
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn add(self, x: I2) -> I2 {
            I2(i64x2_add(self.0, x.0))
        }
        #[inline]
        #[target_feature(enable = "simd128,relaxed-simd")]
        pub fn sum(self) -> i64 {
            i64x2_extract_lane::<0>(self.0).wrapping_add(i64x2_extract_lane::<1>(self.0))
        }
    }

    /// Whether `relaxed_madd` rounds once here: V8 emits `vfmadd` where the CPU has FMA and a
    /// multiply and an add where it does not, which would lose `(1 + ε)²`'s last bit.
    #[target_feature(enable = "simd128,relaxed-simd")]
    pub fn fused() -> bool {
        let x = F2::splat(core::hint::black_box(1.0 + f64::EPSILON));
        let p = F2::madd(x, x, F2::splat(0.0));
        F2::madd(x, x, F2::splat(0.0).sub(p)).first() != 0.0
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod lanes {
    #[derive(Clone, Copy)]
    pub struct F2([f64; 2]);
    #[derive(Clone, Copy)]
    pub struct I2([i64; 2]);

    impl F2 {
        #[inline(always)]
        pub fn new(p: &[f64; 2]) -> F2 {
            F2(*p)
        }
        #[inline(always)]
        pub fn splat(x: f64) -> F2 {
            F2([x, x])
        }
        #[inline(always)]
        pub fn madd(a: F2, b: F2, c: F2) -> F2 {
            let ([a0, a1], [b0, b1], [c0, c1]) = (a.0, b.0, c.0);
            F2([a0.mul_add(b0, c0), a1.mul_add(b1, c1)])
        }
        #[inline(always)]
        pub fn add(self, o: F2) -> F2 {
            let ([a0, a1], [b0, b1]) = (self.0, o.0);
            F2([a0 + b0, a1 + b1])
        }
        #[inline(always)]
        pub fn sub(self, o: F2) -> F2 {
            let ([a0, a1], [b0, b1]) = (self.0, o.0);
            F2([a0 - b0, a1 - b1])
        }
        #[inline(always)]
        pub fn first(self) -> f64 {
            self.0[0]
        }
    }

    impl I2 {
        #[inline(always)]
        pub fn zero() -> I2 {
            I2([0, 0])
        }
        #[inline(always)]
        pub fn add_bits(self, x: F2) -> I2 {
            let ([a0, a1], [x0, x1]) = (self.0, x.0);
            I2([
                a0.wrapping_add(x0.to_bits() as i64),
                a1.wrapping_add(x1.to_bits() as i64),
            ])
        }
        #[inline(always)]
        pub fn add(self, x: I2) -> I2 {
            let ([a0, a1], [x0, x1]) = (self.0, x.0);
            I2([a0.wrapping_add(x0), a1.wrapping_add(x1)])
        }
        #[inline(always)]
        pub fn sum(self) -> i64 {
            self.0[0].wrapping_add(self.0[1])
        }
    }

    /// Natively `f64::mul_add` is always fused; a WebAssembly build without relaxed SIMD keeps
    /// to the integer code (a software `fma` would be slower than it).
    pub fn fused() -> bool {
        !cfg!(target_arch = "wasm32")
    }
}

/// Whether this runtime computes the exact products the arithmetic here needs.
#[allow(unused_unsafe)]
pub fn available() -> bool {
    // SAFETY: a WebAssembly runtime without SIMD and relaxed SIMD refuses the whole module at
    // load, so any code running here has both features.
    unsafe { lanes::fused() }
}

/// `(low, high)` with `x·y = high·2^52 + low` exactly, `low` between −2^51 and 2^51.
#[inline]
#[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
fn split(x: f64, y: f64) -> (i64, i64) {
    let (a, b, c) = (F2::splat(x), F2::splat(y), F2::splat(C104));
    let hi = F2::madd(a, b, c);
    let lo = F2::madd(a, b, c.sub(hi));
    (lo.first() as i64, (hi.first().to_bits() as i64).wrapping_sub(C104_BITS))
}

/// 2^104 and 1.5·2^52 in both lanes, made once per Montgomery product and passed down: V8
/// would otherwise build each constant vector anew at every use inside the loops.
#[derive(Clone, Copy)]
struct Consts {
    c104: F2,
    magic: F2,
}

impl Consts {
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn new() -> Consts {
        core::hint::black_box(Consts {
            c104: F2::splat(C104),
            magic: F2::splat(MAGIC),
        })
    }
}

/// A column's sum of products in progress: the bit patterns of their high and low parts, two
/// lanes each, and how many products (each adds a constant bit pattern, taken off at the end).
struct Sums {
    l: I2,
    h: I2,
    n: i64,
}

impl Sums {
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn new() -> Sums {
        Sums {
            l: I2::zero(),
            h: I2::zero(),
            n: 0,
        }
    }

    /// Adds column `c`'s terms `x_i·y_(c-i)`, `i` in `lo..lo + cnt`, with `y_rev` holding `y`
    /// reversed (`y_j` at `k - 1 - j`). An odd count starts one term early, which is a product
    /// with a zero pad limb as long as `lo = 0` or `c - lo = k - 1`, as the callers use it.
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    #[allow(clippy::too_many_arguments)]
    fn add(&mut self, x: &Num, y_rev: &Num, lo: usize, cnt: usize, c: usize, k: usize, kc: Consts) {
        let ext = cnt & 1;
        let len = cnt + ext;
        let xs = PAD + lo - ext;
        // y_(c-lo+ext) is at k-1-c+lo-ext.
        let ys = PAD + (k - 1 + lo - c) - ext;
        let (xc, _) = x.get(xs..xs + len).unwrap_or_default().as_chunks::<2>();
        let (yc, _) = y_rev.get(ys..ys + len).unwrap_or_default().as_chunks::<2>();
        let (mut l, mut h) = (self.l, self.h);
        for (xp, yp) in xc.iter().zip(yc) {
            let (a, b) = (F2::new(xp), F2::new(yp));
            let hi = F2::madd(a, b, kc.c104);
            // 2^104 - hi is exact (Sterbenz), and a·b + (2^104 - hi) is an integer of at most
            // 51 bits: exact.
            let lo = F2::madd(a, b, kc.c104.sub(hi));
            h = h.add_bits(hi);
            l = l.add_bits(lo.add(kc.magic));
        }
        self.l = l;
        self.h = h;
        self.n += len as i64;
    }

    /// Twice the sum so far.
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn double(&mut self) {
        self.l = self.l.add(self.l);
        self.h = self.h.add(self.h);
        self.n *= 2;
    }

    /// `(Σ low parts, Σ high parts)`: the low parts weigh 2^(52c), the high parts 2^(52(c+1)).
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn total(&self) -> (i64, i64) {
        (
            self.l.sum().wrapping_sub(self.n.wrapping_mul(MAGIC_BITS)),
            self.h.sum().wrapping_sub(self.n.wrapping_mul(C104_BITS)),
        )
    }
}

fn limb(x: &Num, i: usize) -> f64 {
    x.get(PAD + i).copied().unwrap_or(0.0)
}

fn set(x: &mut Num, i: usize, v: f64) {
    if let Some(s) = x.get_mut(PAD + i) {
        *s = v;
    }
}

/// The limbs in reverse order: limb `i` at `k - 1 - i`.
fn reversed(x: &Num, k: usize) -> Num {
    let mut r = ZERO;
    for i in 0..k {
        set(&mut r, k - 1 - i, limb(x, i));
    }
    r
}

/// Big-endian bytes → `k` limbs; `None` if the value does not fit.
fn from_be(bytes: &[u8], k: usize) -> Option<Num> {
    let mut out = ZERO;
    be_to_limbs(bytes, W, k, |i, l| set(&mut out, i, l as f64)).then_some(out)
}

/// `k` limbs → `len` big-endian bytes.
fn to_be(x: &Num, k: usize, len: usize) -> Vec<u8> {
    limbs_to_be((0..k).map(|i| limb(x, i) as u64), W, len)
}

/// `a >= b` over `k` limbs.
fn ge(a: &Num, b: &Num, k: usize) -> bool {
    for i in (0..k).rev() {
        let (x, y) = (limb(a, i), limb(b, i));
        if x != y {
            return x > y;
        }
    }
    true
}

/// `a -= b` for `a >= b`.
fn sub_assign(a: &mut Num, b: &Num, k: usize) {
    let mut borrow = 0i64;
    for i in 0..k {
        let d = limb(a, i) as i64 - limb(b, i) as i64 - borrow;
        set(a, i, (d & MASK) as f64);
        borrow = i64::from(d < 0);
    }
}

/// A product to reduce: `a·b` (with `b` reversed) or `a²` (with `a` reversed).
#[derive(Clone, Copy)]
enum Op<'a> {
    Mul(&'a Num, &'a Num),
    Sqr(&'a Num, &'a Num),
}

impl Op<'_> {
    /// Adds column `c`'s terms to `sums`; a square's cross products `a_i·a_j`, `i < j`, once
    /// each, doubled. Returns the square's diagonal term `a_(c/2)²` split as [`split`] does
    /// (zero for a product).
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn add_terms(self, sums: &mut Sums, c: usize, k: usize, kc: Consts) -> (i64, i64) {
        let lo = c.saturating_sub(k - 1);
        match self {
            Op::Mul(a, b_rev) => {
                sums.add(a, b_rev, lo, c.min(k - 1) + 1 - lo, c, k, kc);
                (0, 0)
            }
            Op::Sqr(a, a_rev) => {
                // i < c - i.
                sums.add(a, a_rev, lo, c.div_ceil(2).saturating_sub(lo), c, k, kc);
                sums.double();
                if c.is_multiple_of(2) {
                    let d = limb(a, c / 2);
                    split(d, d)
                } else {
                    (0, 0)
                }
            }
        }
    }
}

/// An odd modulus of `k` limbs with `4n < R = 2^(52k)`, and Montgomery arithmetic modulo it.
#[derive(Clone)]
struct Modulus {
    k: usize,
    n: Num,
    n_rev: Num,
    /// `-n⁻¹ mod 2⁵²`.
    n0_inv: i64,
}

impl Modulus {
    fn new(n: &[u8], k: usize) -> Option<Modulus> {
        if k > MAX_LIMBS || 8 * n.len() + 2 > W as usize * k {
            return None;
        }
        let n = from_be(n, k)?;
        let n0 = limb(&n, 0) as u64;
        if n0 & 1 == 0 {
            return None;
        }
        Some(Modulus {
            k,
            n_rev: reversed(&n, k),
            n,
            n0_inv: (neg_inverse(n0) & MASK as u64) as i64,
        })
    }

    /// Montgomery reduction of the product `op` (its columns' terms from [`Op::terms`]):
    /// `op·R⁻¹ mod n`, up to one `n`.
    #[inline]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn montgomery(&self, out: &mut Num, op: Op) {
        let k = self.k;
        let n0 = limb(&self.n, 0);
        let mut m = ZERO;
        // What column c carries in from the columns below it (in units of 2^(52c)).
        let mut carry = 0i64;
        let kc = Consts::new();
        for c in 0..2 * k - 1 {
            let mut sums = Sums::new();
            let (l1, h1) = op.add_terms(&mut sums, c, k, kc);
            // m_i·n_(c-i) for the digits known so far (m_c is found below).
            let lo = c.saturating_sub(k - 1);
            let cnt = if c < k { c } else { k - lo };
            sums.add(&m, &self.n_rev, lo, cnt, c, k, kc);
            let (l2, h2) = sums.total();
            let v = l1 + l2 + carry;
            let mut next = h1 + h2;
            if c < k {
                // v + m_c·n_0 ≡ 0 mod 2^52.
                let mc = v.wrapping_mul(self.n0_inv) & MASK;
                set(&mut m, c, mc as f64);
                let (l, h) = split(mc as f64, n0);
                next += h + ((v + l) >> W);
            } else {
                set(out, c - k, (v & MASK) as f64);
                next += v >> W;
            }
            carry = next;
        }
        set(out, k - 1, carry as f64);
    }

    /// `a·b·R⁻¹ mod n`, up to one `n`: for `a, b < 2n` the result is below `2n`.
    #[inline(never)]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn mul(&self, out: &mut Num, a: &Num, b: &Num) {
        let b_rev = reversed(b, self.k);
        self.montgomery(out, Op::Mul(a, &b_rev));
    }

    /// `a²·R⁻¹ mod n`, up to one `n`: for `a < 2n` the result is below `2n`.
    #[inline(never)]
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn sqr(&self, out: &mut Num, a: &Num) {
        let a_rev = reversed(a, self.k);
        self.montgomery(out, Op::Sqr(a, &a_rev));
    }

    /// `s^e·R^(1-e) mod n`, up to one `n`, for `s < 2n` (the bits most significant first).
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn pow(&self, s: &Num, e_bits: &[bool]) -> Num {
        let mut acc = *s;
        let mut sq = ZERO;
        for bit in e_bits.iter().skip(1) {
            self.sqr(&mut sq, &acc);
            if *bit {
                self.mul(&mut acc, &sq, s);
            } else {
                acc = sq;
            }
        }
        acc
    }

    /// `x mod n` for `x < 2n`.
    fn reduce(&self, x: &mut Num) {
        if ge(x, &self.n, self.k) {
            sub_assign(x, &self.n, self.k);
        }
    }

    /// `R mod n`, big-endian in `len` bytes: the largest power of 2 below `n`, doubled modulo
    /// `n` up to 2^(52k).
    fn r_mod_n(&self, len: usize) -> Vec<u8> {
        let k = self.k;
        let top = (0..k)
            .rev()
            .find_map(|i| {
                let l = limb(&self.n, i) as u64;
                (l != 0).then(|| W as usize * i + 63 - l.leading_zeros() as usize)
            })
            .unwrap_or(0);
        let mut x = ZERO;
        set(&mut x, top / W as usize, (1u64 << (top % W as usize)) as f64);
        for _ in top..W as usize * k {
            let mut carry = 0u64;
            for i in 0..k {
                let d = (limb(&x, i) as u64) << 1 | carry;
                set(&mut x, i, (d & MASK as u64) as f64);
                carry = d >> W;
            }
            // x < n < 2^(52k - 2) before doubling: nothing carries out.
            self.reduce(&mut x);
        }
        to_be(&x, k, len)
    }
}

/// An RSA public key of `len` bytes (256, 384 or 512) for the public operation here.
#[derive(Clone)]
pub struct Key {
    modulus: Modulus,
    len: usize,
    /// `R^e mod n`.
    r_e: Num,
    e_bits: Vec<bool>,
}

impl Key {
    /// `n` big-endian without leading zeros, `e_bits` the exponent's bits from its leading 1;
    /// `r_e(x)` raises `x` (big-endian, below `n`) to the power `e` modulo `n` by other means
    /// (the integer code), to set up `R^e mod n`.
    pub fn new(n: &[u8], e_bits: &[bool], r_e: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Option<Key> {
        let len = n.len();
        let modulus = Modulus::new(n, (8 * len + 2).div_ceil(W as usize))?;
        let r_e = from_be(&r_e(&modulus.r_mod_n(len))?, modulus.k)?;
        Some(Key {
            modulus,
            len,
            r_e,
            e_bits: e_bits.to_vec(),
        })
    }

    /// `s^e mod n` as `len` big-endian bytes; `None` if `s` is too long or not below `n`.
    pub fn public_op_be(&self, sig: &[u8]) -> Option<Vec<u8>> {
        let m = &self.modulus;
        if sig.len() > self.len {
            return None;
        }
        let s = from_be(sig, m.k)?;
        if ge(&s, &m.n, m.k) {
            return None;
        }
        // SAFETY: as in `available`: this code runs only where the runtime has SIMD and
        // relaxed SIMD.
        #[allow(unused_unsafe)]
        let mut r = unsafe { self.power(&s) };
        m.reduce(&mut r);
        Some(to_be(&r, m.k, self.len))
    }

    /// `s^e mod n`, up to one `n`: s^e·R^(1-e) · R^e · R⁻¹ = s^e.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128,relaxed-simd"))]
    fn power(&self, s: &Num) -> Num {
        let m = &self.modulus;
        let mut r = ZERO;
        m.mul(&mut r, &m.pow(s, &self.e_bits), &self.r_e);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::BigUint;

    fn big(x: &Num, k: usize) -> BigUint {
        BigUint::from_bytes_be(&to_be(x, k, 8 * k))
    }

    fn num(v: &BigUint, k: usize) -> Num {
        from_be(&v.to_bytes_be(), k).expect("fits")
    }

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len).map(|_| rng(seed) as u8).collect()
    }

    /// A modulus of `len` bytes: random, all ones, or the smallest full-length odd one.
    fn modulus(seed: &mut u64, len: usize, shape: u64) -> Vec<u8> {
        let mut n = match shape {
            0 => vec![0xff; len],
            1 => {
                let mut n = vec![0u8; len];
                n[0] = 0x80;
                n
            }
            _ => bytes(seed, len),
        };
        n[0] |= 0x80;
        n[len - 1] |= 1;
        n
    }

    #[test]
    fn splitting_is_exact_at_the_edges() {
        let top = (1u64 << 52) - 1;
        for (x, y) in [
            (0, 0),
            (1, 1),
            (top, top),
            (top, 1),
            (1 << 51, 1 << 51),
            (top, 1 << 51),
            (12345, top - 7),
        ] {
            let (l, h) = split(x as f64, y as f64);
            assert!(l.abs() <= 1 << 51);
            assert_eq!(i128::from(h) * (1 << 52) + i128::from(l), i128::from(x) * i128::from(y));
        }
    }

    /// Montgomery products and squares of operands across the lazily reduced range (below
    /// 2n, including 2n - 1 and 0) against the general bignum, for every size.
    #[test]
    fn montgomery_products_agree_with_the_general_bignum() {
        let mut seed = 0x5eed_f00d_u64;
        for len in [256, 384, 512] {
            for shape in 0..6 {
                let n = modulus(&mut seed, len, shape);
                let k = (8 * len + 2).div_ceil(W as usize);
                let m = Modulus::new(&n, k).expect("modulus");
                let nb = BigUint::from_bytes_be(&n);
                let r = BigUint::from(1u8) << (W as usize * k);
                let two_n = &nb * 2u8;
                let mut pick = |i: u64| match i % 4 {
                    0 => &two_n - 1u8,
                    1 => BigUint::from(0u8),
                    _ => BigUint::from_bytes_be(&bytes(&mut seed, len + 1)) % &two_n,
                };
                for i in 0..6 {
                    let (a, b) = (pick(i), pick(i + 2));
                    let mut out = ZERO;
                    m.mul(&mut out, &num(&a, k), &num(&b, k));
                    let got = big(&out, k);
                    assert!(got < two_n, "mul result not below 2n");
                    assert_eq!(&got * &r % &nb, (&a * &b) % &nb, "mul len {len} shape {shape}");
                    m.sqr(&mut out, &num(&a, k));
                    let got = big(&out, k);
                    assert!(got < two_n, "sqr result not below 2n");
                    assert_eq!(&got * &r % &nb, (&a * &a) % &nb, "sqr len {len} shape {shape}");
                }
            }
        }
    }

    /// The whole public operation against `modpow`, with the exponents JWKS keys carry and a
    /// long one, `R^e mod n` set up by `modpow` as the integer code would give it.
    #[test]
    fn public_operation_agrees_with_modpow() {
        let mut seed = 0xfeed_u64;
        for len in [256, 384, 512] {
            for e in [
                vec![1, 0, 1],
                vec![3],
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb],
            ] {
                let n = modulus(&mut seed, len, 2);
                let nb = BigUint::from_bytes_be(&n);
                let eb = BigUint::from_bytes_be(&e);
                let e_bits: Vec<bool> = (0..eb.bits())
                    .rev()
                    .map(|i| (&eb >> i) % 2u8 == BigUint::from(1u8))
                    .collect();
                let key = Key::new(&n, &e_bits, |x| {
                    Some(BigUint::from_bytes_be(x).modpow(&eb, &nb).to_bytes_be())
                })
                .expect("key");
                for s in [
                    vec![0u8],
                    vec![1u8],
                    (&nb - 1u8).to_bytes_be(),
                    bytes(&mut seed, len - 1),
                ] {
                    let want = BigUint::from_bytes_be(&s).modpow(&eb, &nb);
                    let got = key.public_op_be(&s).expect("below n");
                    assert_eq!(got.len(), len);
                    assert_eq!(BigUint::from_bytes_be(&got), want, "len {len} e {e:?}");
                }
                assert!(key.public_op_be(&n).is_none(), "s = n is refused");
                assert!(key.public_op_be(&vec![1u8; len + 1]).is_none(), "too long");
            }
        }
    }
}
