//! RSA (RS256/384/512, PS256/384/512): the key, its fast path and the `rsa` crate as the
//! reference.
//!
//! PKCS#1 v1.5 and PSS signatures with a 2048-, 3072- or 4096-bit modulus are verified by the
//! Montgomery arithmetic below ([`FastRsa`]: `s^e mod n`, then the EMSA-PKCS1-v1_5 encoding
//! compared whole, or EMSA-PSS-VERIFY), in its fused-multiply-add form (`rsa_fma.rs`) where the
//! runtime has one; every other modulus size by the `rsa` crate, which is
//! also the reference the fast path is held to: unit tests against the general bignum,
//! `tests/wycheproof.rs` (every RSA PKCS#1 and PSS vector through both, their answers
//! compared), and the differential fuzz target `crypto_diff`. Verification handles public values only, so nothing here needs
//! to be constant time.

use super::alg::Alg;
use super::limbs::{be_to_limbs, limbs_to_be, neg_inverse};
use super::{KeyError, Verifier};
use ::rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use ::rsa::traits::PublicKeyParts;
use ::rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};

/// The largest modulus accepted, in bits (the size policy is the JWKS layer's).
const MAX_BITS: usize = 8192;

/// An RSA public key, with the fast path when its size has one.
#[derive(Clone)]
pub struct RsaKey {
    key: RsaPublicKey,
    fast: Option<FastRsa>,
}

impl RsaKey {
    /// `n` and `e` big-endian. Size and exponent policy is the caller's (see `keys::jwk`).
    pub fn new(n: &[u8], e: &[u8]) -> Result<RsaKey, KeyError> {
        let key = RsaPublicKey::new_with_max_size(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e), MAX_BITS)
            .map_err(|_| KeyError::Rsa)?;
        Ok(RsaKey {
            key,
            fast: FastRsa::new(n, e),
        })
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }

    /// Whether PKCS#1 v1.5 signatures take the fast path (2048, 3072 and 4096 bits).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether the fast path computes with fused multiply-add (`rsa_fma.rs`) here.
    pub fn has_fma_path(&self) -> bool {
        self.fast.as_ref().is_some_and(FastRsa::has_fma)
    }

    /// The same key with the fast path on the integer code only: the tests hold both forms of
    /// the fast path to the crate.
    #[doc(hidden)]
    pub fn integer_only(&self) -> RsaKey {
        RsaKey {
            key: self.key.clone(),
            fast: self.fast.as_ref().map(FastRsa::integer_only),
        }
    }

    /// The same key without the fast path: every signature through the `rsa` crate (profiling).
    pub fn without_fast_path(&self) -> RsaKey {
        RsaKey {
            key: self.key.clone(),
            fast: None,
        }
    }
}

impl Verifier for RsaKey {
    fn fits(&self, alg: Alg) -> bool {
        alg.is_rsa()
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (&self.fast, alg) {
            (Some(fast), Alg::RS256) => fast.verify_pkcs1(&SHA256_PREFIX, &Sha256::digest(msg), sig),
            (Some(fast), Alg::RS384) => fast.verify_pkcs1(&SHA384_PREFIX, &Sha384::digest(msg), sig),
            (Some(fast), Alg::RS512) => fast.verify_pkcs1(&SHA512_PREFIX, &Sha512::digest(msg), sig),
            (Some(fast), Alg::PS256) => fast.verify_pss(PssHash::Sha256, &Sha256::digest(msg), sig, self.bits()),
            (Some(fast), Alg::PS384) => fast.verify_pss(PssHash::Sha384, &Sha384::digest(msg), sig, self.bits()),
            (Some(fast), Alg::PS512) => fast.verify_pss(PssHash::Sha512, &Sha512::digest(msg), sig, self.bits()),
            _ => self.verify_reference(alg, msg, sig),
        }
    }

    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        let k = &self.key;
        match alg {
            Alg::RS256 => rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig),
            Alg::RS384 => rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig),
            Alg::RS512 => rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig),
            Alg::PS256 => rsa_pss(k, Pss::new::<Sha256>(), &Sha256::digest(msg), sig),
            Alg::PS384 => rsa_pss(k, Pss::new::<Sha384>(), &Sha384::digest(msg), sig),
            Alg::PS512 => rsa_pss(k, Pss::new::<Sha512>(), &Sha512::digest(msg), sig),
            _ => false,
        }
    }
}

/// DER `DigestInfo` prefixes (RFC 8017 §9.2 note 1).
const SHA256_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];
const SHA384_PREFIX: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30,
];
const SHA512_PREFIX: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40,
];

/// RSASSA-PKCS1-v1_5 verification for 2048-, 3072- and 4096-bit moduli with fixed-size
/// Montgomery arithmetic on 28-bit limbs (below), set up once per key: the public operation
/// `s^e mod n` and a comparison with the expected encoding. Other sizes use the `rsa` crate.
#[derive(Clone)]
pub enum FastRsa {
    R2048(Box<FastKey<64>>),
    R3072(Box<FastKey<96>>),
    R4096(Box<FastKey<128>>),
}

/// An RSA public key whose modulus is exactly `4L` bytes (`32L` bits), ready for Montgomery
/// multiplication.
///
/// Why not a library: inside V8 (`make vm-profile`, alternating builds in one session) an
/// RSA-2048 verify costs 1.1–1.5 ms with the `rsa` crate, 210–260 µs with `crypto-bigint`'s
/// constant-time `FixedMontyForm`, 121–129 µs with this code's previous form (32-bit limbs,
/// CIOS multiplication, a separate squaring) and 66–73 µs as it is now (BoringSSL natively:
/// about 17 µs). Everything here is public (signature, modulus, exponent), so variable time is
/// fine. Tested against the general bignum (unit tests, all three sizes, operands across the
/// whole lazily reduced range) and every Wycheproof RSA PKCS#1 vector (`tests/wycheproof.rs`).
///
/// The design follows from what wasm offers: a 64×64→64-bit multiply and nothing wider.
/// * Limbs of 28 bits, held in `u64`: a product of two is below 2⁵⁶, so a `u64` sum takes 256
///   of them with no carry handling. A column is summed in two parts, its `a·b` and its `m·n`
///   terms (at most k + 3 products each, k ≤ 147 limbs), folded together only once the column
///   is complete. Each multiply-add is then a load, a multiply and an add.
/// * Product scanning ("FIPS" Montgomery): the result is built column by column, and the
///   Montgomery digit `m_j` of column `j` is found as soon as that column's low limb is known;
///   its multiples of `n` join the later columns' sums.
/// * Four neighbouring columns at a time, one operand stored reversed so that both walk
///   forwards: each limb loaded serves four products, and there is one short loop per four
///   columns instead of two per column (loop exits are what the short loops cost).
/// * Squarings (16 of e = 65537's 17 steps) sum each cross product `a_i·a_j`, `i < j`, once
///   and double it.
/// * Lazy reduction: `R = 2^(28k)` is more than `4n` (k has two spare bits), so Montgomery
///   products of operands below `2n` stay below `2n` without a final subtraction; one
///   subtraction at the very end.
/// * No conversion into Montgomery form: the signature `s` is taken as it is, which makes the
///   ladder compute `s^e·R^(1-e)`; one multiplication by `R^e mod n` (precomputed per key)
///   then gives `s^e` (one Montgomery multiplication instead of two).
///
/// Measured in V8 on the way (benchmark of the public operation alone, RSA-2048; the previous
/// code took 117 µs there): one column at a time 87 µs, two at a time 73 µs, four 64 µs;
/// unrolling by 8, or 6 or 8 columns, spills registers and is slower (74–87 µs), and so is
/// summing `a·b` and `m·n` in one loop (tried one column at a time).
///
/// Where the runtime fuses multiply-add, the key also carries the same operation on 52-bit
/// limbs (`rsa_fma.rs`, checked against this code at set-up) and verifies with that; this
/// code stays the reference it is checked against and the path everywhere else.
#[derive(Clone)]
pub struct FastKey<const L: usize> {
    /// The same operation on 52-bit limbs with fused multiply-add (`rsa_fma.rs`), where the
    /// runtime fuses it and the key's self-check passed; `None` otherwise.
    fma: Option<super::rsa_fma::Key>,
    modulus: Modulus,
    /// `R^e mod n`.
    r_e: Limbs,
    /// The exponent's bits, most significant (always 1) first.
    e_bits: Vec<bool>,
}

/// Limb width in bits.
const LIMB_BITS: u32 = 28;
const LIMB_MASK: u64 = (1 << LIMB_BITS) - 1;
/// Limbs of the largest modulus: 4096 bits and the two spare bits lazy reduction needs.
const MAX_LIMBS: usize = 147;
/// Zero limbs on either side of a number: the column sums read up to 6 limbs past either end
/// (rounding a sum's length up to a multiple of 4, and the three neighbouring columns).
const PAD: usize = 8;
/// A number of `k` limbs, least significant first, at `PAD..PAD + k`; every other entry is 0.
type Limbs = [u64; PAD + MAX_LIMBS + PAD];
/// Columns per block.
const COLS: usize = 4;

/// A zero number.
const ZERO: Limbs = [0; PAD + MAX_LIMBS + PAD];

/// The number's `k` limbs.
fn value(x: &Limbs, k: usize) -> &[u64] {
    x.get(PAD..PAD + k).unwrap_or_default()
}

fn value_mut(x: &mut Limbs, k: usize) -> &mut [u64] {
    x.get_mut(PAD..PAD + k).unwrap_or_default()
}

/// Limb `i` (0 past the end).
fn limb(x: &Limbs, i: usize) -> u64 {
    x.get(PAD + i).copied().unwrap_or(0)
}

/// Big-endian bytes → `k` limbs; `None` if the value does not fit.
fn limbs_from_be(bytes: &[u8], k: usize) -> Option<Limbs> {
    let mut out = ZERO;
    let limbs = value_mut(&mut out, k);
    be_to_limbs(bytes, LIMB_BITS, k, |i, l| {
        if let Some(slot) = limbs.get_mut(i) {
            *slot = l;
        }
    })
    .then_some(out)
}

/// The limbs in reverse order: limb `i` at `k - 1 - i`.
fn reversed(x: &Limbs, k: usize) -> Limbs {
    let mut r = ZERO;
    for (d, s) in value_mut(&mut r, k).iter_mut().zip(value(x, k).iter().rev()) {
        *d = *s;
    }
    r
}

/// `a >= b`, most significant limb first.
fn ge(a: &[u64], b: &[u64]) -> bool {
    a.iter().rev().cmp(b.iter().rev()) != std::cmp::Ordering::Less
}

/// `a -= b` modulo `2^(28·len)`.
fn sub_assign(a: &mut [u64], b: &[u64]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = x.wrapping_sub(*y).wrapping_sub(borrow);
        *x = d & LIMB_MASK;
        borrow = d >> 63;
    }
}

/// Four neighbouring column sums `Σ x_i·y_(c+r-i)`, `r` in 0..4, over `i` in `i0..i0 + cnt`,
/// with `y_rev` holding `y` reversed (`y_j` at `k - 1 - j`, so both walk forwards). `i0 + cnt`
/// must be at most `c + 1` and at most `k`, and `c - i0` at most `k - 1`.
///
/// The loop takes four `i` at a time, the count rounded up by starting up to 3 earlier; those
/// extra terms, and the terms of columns `c + r` whose `y_(c+r-i)` lies above limb `k - 1`,
/// are products with a zero pad limb as long as `i0 = 0` (then `x_i`, `i < 0`, is padding) or
/// `c - i0 = k - 1` (then `y_j`, `j > k - 1`, is), which is how the callers use it.
#[inline(always)]
fn columns(x: &Limbs, y_rev: &Limbs, i0: usize, cnt: usize, c: usize, k: usize) -> [u64; COLS] {
    let ext = cnt.wrapping_neg() & 3;
    let len = cnt + ext;
    let xs = PAD + i0 - ext;
    // y_(c-i0+ext) is at k-1-c+i0-ext; y_(c+r-i0+ext) r limbs before.
    let ys = PAD + (k - 1 + i0 - c) - ext;
    let (xc, _) = x.get(xs..xs + len).unwrap_or_default().as_chunks::<4>();
    let (yc, _) = y_rev.get(ys..ys + len).unwrap_or_default().as_chunks::<4>();
    let before = |r: usize| y_rev.get(ys - r).copied().unwrap_or(0);
    // p_r: y_(c+r-i) for the first i of the chunk.
    let (mut p1, mut p2, mut p3) = (before(1), before(2), before(3));
    let (mut s0, mut s1, mut s2, mut s3) = (0u64, 0u64, 0u64, 0u64);
    for (&[x0, x1, x2, x3], &[q0, q1, q2, q3]) in xc.iter().zip(yc) {
        // q_u = y_(c-i-u) for x_(i+u).
        s0 = s0 + x0 * q0 + x1 * q1 + x2 * q2 + x3 * q3;
        s1 = s1 + x0 * p1 + x1 * q0 + x2 * q1 + x3 * q2;
        s2 = s2 + x0 * p2 + x1 * p1 + x2 * q0 + x3 * q1;
        s3 = s3 + x0 * p3 + x1 * p2 + x2 * p1 + x3 * q0;
        p3 = q1;
        p2 = q2;
        p1 = q3;
    }
    [s0, s1, s2, s3]
}

/// An odd modulus of `k` limbs with `4n < R = 2^(28k)`, and Montgomery arithmetic modulo it.
/// Not generic (one copy in the module for all sizes).
#[derive(Clone)]
struct Modulus {
    k: usize,
    n: Limbs,
    n_rev: Limbs,
    /// `-n⁻¹ mod 2²⁸`.
    n0_inv: u64,
}

impl Modulus {
    /// `None` unless `n` is odd and `4n < 2^(28k)`.
    fn new(n: &[u8], k: usize) -> Option<Modulus> {
        if k > MAX_LIMBS || 8 * n.len() + 2 > LIMB_BITS as usize * k {
            return None;
        }
        let n = limbs_from_be(n, k)?;
        let n0 = limb(&n, 0);
        if n0 & 1 == 0 {
            return None;
        }
        Some(Modulus {
            k,
            n_rev: reversed(&n, k),
            n,
            n0_inv: neg_inverse(n0) & LIMB_MASK,
        })
    }

    /// `R² mod n`, the Montgomery form of `R` (once per key): `2R mod n`, the Montgomery form
    /// of 2, by doubling the largest power of 2 below `n` modulo `n`, then raised to the power
    /// `28k` by `pow`: `(2R)^(28k)·R^(1-28k) = 2^(28k)·R = R²`.
    fn r_squared(&self) -> Limbs {
        let k = self.k;
        // n is odd and above 1, so 2^top < n.
        let top = (0..k)
            .rev()
            .find_map(|i| {
                let l = limb(&self.n, i);
                (l != 0).then(|| LIMB_BITS as usize * i + 63 - l.leading_zeros() as usize)
            })
            .unwrap_or(0);
        let mut x = ZERO;
        if let Some(l) = x.get_mut(PAD + top / LIMB_BITS as usize) {
            *l = 1 << (top % LIMB_BITS as usize);
        }
        let n = value(&self.n, k);
        let r = value_mut(&mut x, k);
        for _ in top..LIMB_BITS as usize * k + 1 {
            let mut carry = 0u64;
            for limb in r.iter_mut() {
                let d = *limb << 1 | carry;
                *limb = d & LIMB_MASK;
                carry = d >> LIMB_BITS;
            }
            // r < n < 2^(28k - 2) before doubling, so nothing carries out.
            if ge(r, n) {
                sub_assign(r, n);
            }
        }
        let exponent = LIMB_BITS as usize * k;
        let bits: Vec<bool> = (0..usize::BITS - exponent.leading_zeros())
            .rev()
            .map(|i| exponent >> i & 1 == 1)
            .collect();
        let mut r2 = self.pow(&x, &bits);
        self.reduce(&mut r2);
        r2
    }

    /// `x mod n` for `x < 2n`.
    fn reduce(&self, x: &mut Limbs) {
        if ge(value(x, self.k), value(&self.n, self.k)) {
            sub_assign(value_mut(x, self.k), value(&self.n, self.k));
        }
    }

    /// Columns `c..c + 4` (c a multiple of 4) of a Montgomery product, given the sums `t` of
    /// their `a·b` terms: adds the terms `m_i·n_(col-i)`, then finds the new digits `m_col`
    /// (columns below k, where the column must become 0 mod 2²⁸) or writes the output limbs
    /// `col - k` (columns k..2k-1).
    #[inline(always)]
    fn finish(&self, m: &mut Limbs, out: &mut Limbs, c: usize, t: [u64; COLS], carry: &mut u64) {
        let k = self.k;
        let lo = c.saturating_sub(k - 1);
        let hi = c.min(k - 1);
        // m_i for i >= c is still 0 here (not known yet); its terms are added below.
        let u = columns(m, &self.n_rev, lo, hi + 1 - lo, c, k);
        let n0 = limb(&self.n, 0);
        for (r, (tr, ur)) in t.into_iter().zip(u).enumerate() {
            let col = c + r;
            // The digits found in this block: m_i·n_(col-i) for i in c..col.
            let mut fix = 0u64;
            for i in c..col {
                fix += limb(m, i) * limb(&self.n, col - i);
            }
            // Two sums of up to k + 3 products each: fold them before adding.
            let s = tr + fix + *carry;
            let low = (s & LIMB_MASK) + (ur & LIMB_MASK);
            let high = (s >> LIMB_BITS) + (ur >> LIMB_BITS);
            if col < k {
                let mc = low.wrapping_mul(self.n0_inv) & LIMB_MASK;
                if let Some(slot) = m.get_mut(PAD + col) {
                    *slot = mc;
                }
                // low + mc·n_0 ≡ 0 mod 2²⁸.
                *carry = high + ((low + mc * n0) >> LIMB_BITS);
            } else {
                if let Some(o) = value_mut(out, k).get_mut(col - k) {
                    *o = low & LIMB_MASK;
                }
                *carry = high + (low >> LIMB_BITS);
            }
        }
    }

    /// `a·b·R⁻¹ mod n`, up to one `n`: for `a, b < 2n` the result is below `2n`. (Not inlined:
    /// inside `pow`, V8 compiles the loops markedly worse: 74 µs instead of 65 per RSA-2048
    /// public operation.)
    #[inline(never)]
    fn mul(&self, out: &mut Limbs, a: &Limbs, b: &Limbs) {
        let k = self.k;
        let b_rev = reversed(b, k);
        let mut m = ZERO;
        let mut carry = 0u64;
        for c in (0..2 * k).step_by(COLS) {
            // Column c's terms a_i·b_(c-i): i in lo..=hi.
            let lo = c.saturating_sub(k - 1);
            let hi = c.min(k - 1);
            let mut t = columns(a, &b_rev, lo, hi + 1 - lo, c, k);
            // Column c + r's further terms: i in c+1..=c+r (0 past limb k-1).
            for (r, tr) in t.iter_mut().enumerate().skip(1) {
                for i in c + 1..=c + r {
                    *tr += limb(a, i) * limb(b, c + r - i);
                }
            }
            self.finish(&mut m, out, c, t, &mut carry);
        }
    }

    /// `a²·R⁻¹ mod n`, up to one `n`: for `a < 2n` the result is below `2n`. Each cross
    /// product `a_i·a_j`, `i < j`, is summed once and doubled.
    #[inline(never)]
    fn sqr(&self, out: &mut Limbs, a: &Limbs) {
        let k = self.k;
        let a_rev = reversed(a, k);
        let mut m = ZERO;
        let mut carry = 0u64;
        for c in (0..2 * k).step_by(COLS) {
            // Column c's cross products: i in lo..c/2 (then j = c - i > i).
            let lo = c.saturating_sub(k - 1);
            let half = c / 2;
            let x = columns(a, &a_rev, lo, half - lo, c, k);
            // Column c + r's further cross products (i >= c/2, j = c + r - i > i), doubled, and
            // its square a_((c+r)/2)² if c + r is even (limbs past k - 1 are 0).
            let [a0, a1, a2, a3] = [0, 1, 2, 3].map(|i| limb(a, half + i));
            let t = [
                2 * x[0] + a0 * a0,
                2 * (x[1] + a0 * a1),
                2 * (x[2] + a0 * a2) + a1 * a1,
                2 * (x[3] + a0 * a3 + a1 * a2),
            ];
            self.finish(&mut m, out, c, t, &mut carry);
        }
    }

    /// `s^e·R^(1-e) mod n`, up to one `n`, for `s < 2n` (square and multiply, with `s` taken
    /// as the Montgomery form of `s·R⁻¹`).
    fn pow(&self, s: &Limbs, e_bits: &[bool]) -> Limbs {
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
}

impl<const L: usize> FastKey<L> {
    fn new(n: &[u8], e: &[u8]) -> Option<FastKey<L>> {
        // An even modulus is not an RSA key (and has no Montgomery form); nor is one shorter
        // than 4L bytes (the caller picks L from its exact byte length).
        if n.len() != 4 * L || n.iter().take(4).all(|b| *b == 0) {
            return None;
        }
        // 28k ≥ 32L + 2 bits, so that 4n < R.
        let modulus = Modulus::new(n, (32 * L + 2).div_ceil(LIMB_BITS as usize))?;
        let mut e_bits = Vec::new();
        for byte in e {
            for i in (0..8).rev() {
                e_bits.push(byte >> i & 1 == 1);
            }
        }
        let first_one = e_bits.iter().position(|b| *b)?;
        e_bits.drain(..first_one);
        // pow(R² mod n) = R^(2e)·R^(1-e) = R^(e+1); one more Montgomery step gives R^e.
        let mut one = ZERO;
        *one.get_mut(PAD)? = 1;
        let mut r_e = ZERO;
        modulus.mul(&mut r_e, &modulus.pow(&modulus.r_squared(), &e_bits), &one);
        modulus.reduce(&mut r_e);
        let mut key = FastKey {
            fma: None,
            modulus,
            r_e,
            e_bits,
        };
        key.fma = key.fma_path(n);
        Some(key)
    }

    /// The fused-multiply-add form of this key, if this runtime fuses and the key's public
    /// operation there gives the integer code's answer ([`FastKey::checked`]).
    fn fma_path(&self, n: &[u8]) -> Option<super::rsa_fma::Key> {
        if !super::rsa_fma::available() {
            return None;
        }
        let fma = super::rsa_fma::Key::new(n, &self.e_bits, |x| self.public_op_be_integer(x))?;
        self.checked(fma, n)
    }

    /// `fma` if its public operation agrees with the integer code's on a value below `n` that
    /// fills every limb (`n` with its first non-zero byte halved).
    fn checked(&self, fma: super::rsa_fma::Key, n: &[u8]) -> Option<super::rsa_fma::Key> {
        let mut probe = n.to_vec();
        let top = probe.iter_mut().find(|b| **b != 0)?;
        *top >>= 1;
        let want = self.public_op_be_integer(&probe)?;
        (fma.public_op_be(&probe)? == want).then_some(fma)
    }

    /// `s^e mod n` for a big-endian `s`; `None` if `s >= n` or too long.
    fn public_op(&self, sig: &[u8]) -> Option<Limbs> {
        let m = &self.modulus;
        if sig.len() > 4 * L {
            return None;
        }
        let s = limbs_from_be(sig, m.k)?;
        if ge(value(&s, m.k), value(&m.n, m.k)) {
            return None;
        }
        // s^e·R^(1-e) · R^e · R⁻¹ = s^e.
        let mut r = ZERO;
        m.mul(&mut r, &m.pow(&s, &self.e_bits), &self.r_e);
        m.reduce(&mut r);
        Some(r)
    }

    fn verify(&self, em: &[u8], sig: &[u8]) -> bool {
        if let Some(fma) = &self.fma {
            return fma.public_op_be(sig).is_some_and(|m| m == em);
        }
        match (self.public_op(sig), limbs_from_be(em, self.modulus.k)) {
            (Some(m), Some(em)) => m == em,
            _ => false,
        }
    }
}

impl FastRsa {
    fn new(n: &[u8], e: &[u8]) -> Option<FastRsa> {
        let first = n.iter().position(|b| *b != 0)?;
        let n = n.get(first..)?;
        match n.len() {
            256 => FastKey::new(n, e).map(|k| FastRsa::R2048(Box::new(k))),
            384 => FastKey::new(n, e).map(|k| FastRsa::R3072(Box::new(k))),
            512 => FastKey::new(n, e).map(|k| FastRsa::R4096(Box::new(k))),
            _ => None,
        }
    }

    fn has_fma(&self) -> bool {
        match self {
            FastRsa::R2048(key) => key.fma.is_some(),
            FastRsa::R3072(key) => key.fma.is_some(),
            FastRsa::R4096(key) => key.fma.is_some(),
        }
    }

    fn integer_only(&self) -> FastRsa {
        let mut fast = self.clone();
        match &mut fast {
            FastRsa::R2048(key) => key.fma = None,
            FastRsa::R3072(key) => key.fma = None,
            FastRsa::R4096(key) => key.fma = None,
        }
        fast
    }

    fn len(&self) -> usize {
        match self {
            FastRsa::R2048(_) => 256,
            FastRsa::R3072(_) => 384,
            FastRsa::R4096(_) => 512,
        }
    }

    /// EMSA-PKCS1-v1_5 (RFC 8017 §9.2): `00 01 FF..FF 00 || DigestInfo prefix || hash`,
    /// compared in full with `sig^e mod n`; the signature must be exactly `k` bytes.
    fn verify_pkcs1(&self, prefix: &[u8], hash: &[u8], sig: &[u8]) -> bool {
        let k = self.len();
        let t_len = prefix.len() + hash.len();
        if sig.len() != k || k < t_len + 11 {
            return false;
        }
        let mut em = Vec::with_capacity(k);
        em.extend_from_slice(&[0x00, 0x01]);
        em.resize(k - t_len - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(hash);
        match self {
            FastRsa::R2048(key) => key.verify(&em, sig),
            FastRsa::R3072(key) => key.verify(&em, sig),
            FastRsa::R4096(key) => key.verify(&em, sig),
        }
    }
}

/// `s^e mod n` (big-endian, `n.len()` bytes) by the fast path, for the differential fuzz
/// target `crypto_diff`, which compares it with the general bignum on arbitrary operands.
/// `None` when the modulus has no fast path or `s >= n`.
#[doc(hidden)]
pub fn fast_public_op(n: &[u8], e: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    FastRsa::new(n, e)?.public_op_be(s)
}

/// [`fast_public_op`] by the integer code, where the fused-multiply-add form would be taken.
#[doc(hidden)]
pub fn fast_public_op_integer(n: &[u8], e: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    FastRsa::new(n, e)?.integer_only().public_op_be(s)
}

impl<const L: usize> FastKey<L> {
    /// `s^e mod n` as `4L` big-endian bytes.
    fn public_op_be(&self, s: &[u8]) -> Option<Vec<u8>> {
        match &self.fma {
            Some(fma) => fma.public_op_be(s),
            None => self.public_op_be_integer(s),
        }
    }

    /// `s^e mod n` as `4L` big-endian bytes by the integer code.
    fn public_op_be_integer(&self, s: &[u8]) -> Option<Vec<u8>> {
        let r = self.public_op(s)?;
        Some(limbs_to_be(value(&r, self.modulus.k).iter().copied(), LIMB_BITS, 4 * L))
    }
}

impl FastRsa {
    /// `s^e mod n` as `k` big-endian bytes; `None` if `s` is too long or not below `n`.
    fn public_op_be(&self, s: &[u8]) -> Option<Vec<u8>> {
        match self {
            FastRsa::R2048(key) => key.public_op_be(s),
            FastRsa::R3072(key) => key.public_op_be(s),
            FastRsa::R4096(key) => key.public_op_be(s),
        }
    }

    /// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with MGF1 over the same hash and a salt as long as
    /// the hash (RFC 7518 §3.5), on `sig^e mod n` from the fast path. `mod_bits` is the
    /// modulus size in bits. The `rsa` crate's `Pss` verification is the reference
    /// (`verify_reference`; both run every Wycheproof PSS vector).
    fn verify_pss(&self, hash: PssHash, m_hash: &[u8], sig: &[u8], mod_bits: usize) -> bool {
        let k = self.len();
        let h_len = hash.len();
        let s_len = h_len;
        if sig.len() != k || mod_bits == 0 {
            return false;
        }
        let em_bits = mod_bits - 1;
        let em_len = em_bits.div_ceil(8);
        if em_len < h_len + s_len + 2 || em_len > k {
            return false;
        }
        let Some(m) = self.public_op_be(sig) else {
            return false;
        };
        // EM = I2OSP(m, emLen): the bytes above emLen must be zero.
        let Some((high, em)) = m.split_at_checked(k - em_len) else {
            return false;
        };
        if high.iter().any(|b| *b != 0) || em.last() != Some(&0xbc) {
            return false;
        }
        let Some((masked_db, rest)) = em.split_at_checked(em_len - h_len - 1) else {
            return false;
        };
        let Some(h) = rest.get(..h_len) else {
            return false;
        };
        let unused_bits = 8 * em_len - em_bits;
        let top_mask = 0xffu8.checked_shr(unused_bits as u32).unwrap_or(0);
        if masked_db.first().is_none_or(|b| b & !top_mask != 0) {
            return false;
        }
        // DB = maskedDB xor MGF1(H, emLen - hLen - 1).
        let mut db = masked_db.to_vec();
        let mut counter = 0u32;
        let mut at = 0;
        while at < db.len() {
            for (x, m) in db.iter_mut().skip(at).zip(hash.digest(&[h, &counter.to_be_bytes()])) {
                *x ^= m;
                at += 1;
            }
            counter += 1;
        }
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        // DB = PS (zeros) || 0x01 || salt.
        let Some((ps, tail)) = db.split_at_checked(em_len - h_len - s_len - 2) else {
            return false;
        };
        if ps.iter().any(|b| *b != 0) || tail.first() != Some(&0x01) {
            return false;
        }
        let Some(salt) = tail.get(1..) else {
            return false;
        };
        hash.digest(&[&[0u8; 8], m_hash, salt]).as_slice() == h
    }
}

/// The hash of a PS* algorithm (one non-generic PSS routine: a generic one copies the hash
/// code into the module once per algorithm).
#[derive(Clone, Copy)]
enum PssHash {
    Sha256,
    Sha384,
    Sha512,
}

impl PssHash {
    fn len(self) -> usize {
        match self {
            PssHash::Sha256 => 32,
            PssHash::Sha384 => 48,
            PssHash::Sha512 => 64,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            PssHash::Sha256 => Sha256::digest(parts.concat()).to_vec(),
            PssHash::Sha384 => Sha384::digest(parts.concat()).to_vec(),
            PssHash::Sha512 => Sha512::digest(parts.concat()).to_vec(),
        }
    }
}

fn rsa_pkcs1(k: &RsaPublicKey, scheme: Pkcs1v15Sign, hashed: &[u8], sig: &[u8]) -> bool {
    // A signature must be exactly the modulus length (RFC 8017 §8.2.2 step 1).
    sig.len() == k.size() && k.verify(scheme, hashed, sig).is_ok()
}

fn rsa_pss(k: &RsaPublicKey, scheme: Pss, hashed: &[u8], sig: &[u8]) -> bool {
    sig.len() == k.size() && k.verify(scheme, hashed, sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::BigUint;

    /// `s^e mod n` by the general-purpose bignum (num-bigint-dig, via the `rsa` crate).
    fn reference(n: &[u8], e: &[u8], s: &[u8]) -> Vec<u8> {
        let r = BigUint::from_bytes_be(s).modpow(&BigUint::from_bytes_be(e), &BigUint::from_bytes_be(n));
        let mut out = r.to_bytes_be();
        while out.len() < n.len() {
            out.insert(0, 0);
        }
        out
    }

    /// A number's limbs → big-endian bytes, `len` of them, by the general bignum (not the
    /// conversion under test).
    fn reference_be(x: &Limbs, k: usize, len: usize) -> Vec<u8> {
        let mut v = BigUint::default();
        for l in value(x, k).iter().rev() {
            v = (v << LIMB_BITS as usize) + BigUint::from(*l);
        }
        let mut out = v.to_bytes_be();
        while out.len() < len {
            out.insert(0, 0);
        }
        out
    }

    fn to_limbs(v: &BigUint, k: usize) -> Limbs {
        limbs_from_be(&v.to_bytes_be(), k).unwrap()
    }

    /// A deterministic byte stream (xorshift), so failures reproduce.
    fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    /// The kinds of modulus tested.
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        /// Random, odd, top bit set (the arithmetic does not need a prime).
        Random,
        /// Every bit set: the largest limbs, so the largest column sums.
        AllOnes,
        /// Random and odd, but with its top 12 bits clear (FastKey takes any modulus whose top
        /// 4 bytes are not all zero).
        Short,
    }
    const SHAPES: [Shape; 3] = [Shape::Random, Shape::AllOnes, Shape::Short];

    fn modulus(seed: &mut u64, len: usize, shape: Shape) -> Vec<u8> {
        let mut n = bytes(seed, len);
        match shape {
            Shape::Random => n[0] |= 0x80,
            Shape::AllOnes => n.fill(0xff),
            Shape::Short => {
                n[0] = 0;
                n[1] = n[1] & 0x0f | 0x01;
            }
        }
        n[len - 1] |= 1;
        n
    }

    fn check_modexp<const L: usize>(seed: &mut u64, e: &[u8], shape: Shape) {
        let n = modulus(seed, 4 * L, shape);
        let key = FastKey::<L>::new(&n, e).unwrap();
        let k = key.modulus.k;
        let big_n = BigUint::from_bytes_be(&n);
        // Big-endian, 4L bytes (as signatures are).
        let be = |v: BigUint| {
            let mut b = v.to_bytes_be();
            while b.len() < 4 * L {
                b.insert(0, 0);
            }
            b
        };
        let minus = |d: u32| be(&big_n - BigUint::from(d));
        let mut cases = vec![
            vec![0u8; 4 * L],
            vec![],
            vec![1u8],
            vec![2u8],
            vec![3u8],
            minus(1),
            minus(2),
        ];
        for _ in 0..8 {
            cases.push(be(BigUint::from_bytes_be(&bytes(seed, 4 * L)) % &big_n));
        }
        // Small values and values just below n, of a few limbs' spread.
        for len in [1, 4, 9, 29] {
            let v = BigUint::from_bytes_be(&bytes(seed, len)) % &big_n;
            cases.push(be(v.clone()));
            cases.push(be(&big_n - 1u32 - v));
        }
        assert!(key.fma.is_some(), "natively the fused-multiply-add form is taken");
        for s in cases {
            let got = key.public_op(&s).unwrap();
            assert_eq!(
                reference_be(&got, k, 4 * L),
                reference(&n, e, &s),
                "L={L} e={e:?} s={s:?}"
            );
            assert_eq!(
                key.public_op_be(&s).unwrap(),
                reference(&n, e, &s),
                "fused multiply-add: L={L} e={e:?} s={s:?}"
            );
            // The comparison the verifier makes: the expected encoding, as limbs.
            assert!(key.verify(&reference(&n, e, &s), &s), "L={L} e={e:?}");
        }
        assert!(key.public_op(&n).is_none(), "s = n is refused");
        assert!(key.public_op(&vec![0xff; 4 * L]).is_none(), "s > n");
        assert!(key.public_op(&[0xff; 4 * 129]).is_none(), "too long");
    }

    /// `mul` and `sqr` against the general bignum, for operands anywhere below `2n` (the
    /// lazily reduced range they work in): the result is below `2n` and `≡ a·b·R⁻¹ (mod n)`.
    fn check_montgomery<const L: usize>(seed: &mut u64, shape: Shape) {
        let n = modulus(seed, 4 * L, shape);
        let key = FastKey::<L>::new(&n, &[1, 0, 1]).unwrap();
        let m = &key.modulus;
        let k = m.k;
        let big_n = BigUint::from_bytes_be(&n);
        let r = BigUint::from(1u32) << (LIMB_BITS as usize * k);
        assert!(BigUint::from(4u32) * &big_n < r, "4n < R");
        let r2 = BigUint::from_bytes_be(&reference_be(&m.r_squared(), k, 0));
        assert_eq!(r2, (&r * &r) % &big_n, "R² mod n");
        let two_n = BigUint::from(2u32) * &big_n;
        let mut cases: Vec<BigUint> = [0u32, 1, 2, 3]
            .into_iter()
            .map(BigUint::from)
            .chain([
                &big_n - 1u32,
                big_n.clone(),
                &big_n + 1u32,
                &two_n - 2u32,
                &two_n - 1u32,
            ])
            .collect();
        for _ in 0..12 {
            cases.push(BigUint::from_bytes_be(&bytes(seed, 4 * L + 1)) % &two_n);
            cases.push(&two_n - 1u32 - BigUint::from_bytes_be(&bytes(seed, 8)) % &two_n);
        }
        for (idx, a) in cases.iter().enumerate() {
            let al = to_limbs(a, k);
            let mut sq = ZERO;
            m.sqr(&mut sq, &al);
            let mut prod = ZERO;
            m.mul(&mut prod, &al, &al);
            assert_eq!(value(&sq, k), value(&prod, k), "L={L} a={a}");
            assert!(sq == prod, "padding stays zero");
            let b = &cases[(idx * 7 + 3) % cases.len()];
            m.mul(&mut prod, &al, &to_limbs(b, k));
            for (x, y, res) in [(a, a, &sq), (a, b, &prod)] {
                let got = BigUint::from_bytes_be(&reference_be(res, k, 0));
                assert!(got < two_n, "L={L}: below 2n");
                // got = x·y·R⁻¹ (mod n) ⟺ got·R ≡ x·y.
                assert_eq!((&got * &r) % &big_n, (x * y) % &big_n, "L={L} a={x} b={y}");
            }
        }
    }

    #[test]
    fn montgomery_square_is_multiplication_by_itself() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        for shape in SHAPES {
            check_montgomery::<64>(&mut seed, shape);
            check_montgomery::<96>(&mut seed, shape);
            check_montgomery::<128>(&mut seed, shape);
            check_montgomery::<2>(&mut seed, shape);
            check_montgomery::<3>(&mut seed, shape);
        }
    }

    #[test]
    fn montgomery_modexp_agrees_with_the_general_bignum() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        // A random odd 64-bit exponent, as well as the usual ones.
        let mut rand_e = bytes(&mut seed, 8);
        rand_e[0] |= 0x80;
        rand_e[7] |= 1;
        for e in [
            &[0x01, 0x00, 0x01][..],
            &[3],
            &[1],
            &[0x01, 0x00, 0x00, 0x00, 0x01],
            &[0xff, 0xff],
            &[0x00, 0x00, 0x25],
            &rand_e,
        ] {
            for shape in SHAPES {
                check_modexp::<64>(&mut seed, e, shape);
                check_modexp::<96>(&mut seed, e, shape);
                check_modexp::<128>(&mut seed, e, shape);
                check_modexp::<2>(&mut seed, e, shape);
                check_modexp::<3>(&mut seed, e, shape);
            }
        }
    }

    #[test]
    fn montgomery_refuses_what_is_not_an_odd_full_length_modulus() {
        let mut n = vec![0xffu8; 256];
        n[255] = 0xfe;
        assert!(FastKey::<64>::new(&n, &[1, 0, 1]).is_none(), "even");
        assert!(FastKey::<64>::new(&[0xff; 255], &[1, 0, 1]).is_none(), "short");
        let mut leading_zeros = vec![0xffu8; 256];
        leading_zeros[..4].fill(0);
        assert!(
            FastKey::<64>::new(&leading_zeros, &[1, 0, 1]).is_none(),
            "shorter than 4L bytes"
        );
        assert!(FastKey::<64>::new(&[0xff; 257], &[1, 0, 1]).is_none(), "long");
        assert!(FastKey::<64>::new(&[0xff; 256], &[0]).is_none(), "zero exponent");
        assert!(
            FastRsa::new(&[0xff; 200], &[1, 0, 1]).is_none(),
            "other sizes use the rsa crate"
        );
    }

    #[test]
    fn a_fused_multiply_add_form_that_disagrees_is_not_taken() {
        let mut seed = 0xbad_f00d_u64;
        let n = modulus(&mut seed, 256, Shape::Random);
        let key = FastKey::<64>::new(&n, &[1, 0, 1]).unwrap();
        let good = || super::super::rsa_fma::Key::new(&n, &key.e_bits, |x| key.public_op_be_integer(x)).unwrap();
        assert!(key.checked(good(), &n).is_some());
        // R^e mod n wrong (as unfused products would make every result wrong).
        let broken = super::super::rsa_fma::Key::new(&n, &key.e_bits, |_| Some(vec![1])).unwrap();
        assert!(key.checked(broken, &n).is_none());
        // The integer code stays: a key without the form still verifies.
        let s = bytes(&mut seed, 200);
        let mut integer = key.clone();
        integer.fma = None;
        assert_eq!(integer.public_op_be(&s).unwrap(), reference(&n, &[1, 0, 1], &s));
    }

    #[test]
    fn fast_rsa_agrees_with_the_rsa_crate() {
        use base64::Engine;
        use claimguard_testkeys::TestKey;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for (alg, sig_alg) in [
            (Alg::RS256, Alg::RS256),
            (Alg::RS384, Alg::RS384),
            (Alg::RS512, Alg::RS512),
        ] {
            let k = TestKey::rsa(alg, "k");
            let jwk = k.public_jwk();
            let n = b64.decode(jwk["n"].as_str().unwrap()).unwrap();
            let e = b64.decode(jwk["e"].as_str().unwrap()).unwrap();
            let key = RsaKey::new(&n, &e).unwrap();
            let Some(fast) = &key.fast else {
                panic!("2048-bit keys take the fast path")
            };
            let msg = b"header.payload";
            let sig = k.sign_bytes(msg);
            assert!(key.verify(sig_alg, msg, &sig), "{alg}");
            let prefix: &[u8] = match alg {
                Alg::RS384 => &SHA384_PREFIX,
                Alg::RS512 => &SHA512_PREFIX,
                _ => &SHA256_PREFIX,
            };
            let hash: Vec<u8> = match alg {
                Alg::RS384 => Sha384::digest(msg).to_vec(),
                Alg::RS512 => Sha512::digest(msg).to_vec(),
                _ => Sha256::digest(msg).to_vec(),
            };
            assert!(fast.verify_pkcs1(prefix, &hash, &sig));
            let mut bad = sig.clone();
            bad[100] ^= 1;
            assert!(!key.verify(sig_alg, msg, &bad));
            assert!(!key.verify(sig_alg, b"header.payloaD", &sig));
            assert!(!key.verify(sig_alg, msg, &sig[1..]));
            // The crate reference agrees on every one of these.
            for (s, m) in [
                (&sig[..], &msg[..]),
                (&bad[..], &msg[..]),
                (&sig[..], b"header.payloaD"),
                (&sig[1..], &msg[..]),
            ] {
                assert_eq!(key.verify(sig_alg, m, s), key.verify_reference(sig_alg, m, s), "{alg}");
            }
            assert!(key.verify_reference(sig_alg, msg, &sig));
        }
    }
}
