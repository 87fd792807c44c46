//! ES256 (ECDSA over P-256 with SHA-256): the key, its fast path with fixed-base tables, and
//! the `p256` crate's `ecdsa` verification as the reference.
//!
//! A verify computes `u1·G + u2·Q` with two fixed-base tables (the layout and signed digits
//! of [`super::fixed_base`]), eight bits a window: one for the generator, one per key. Measured
//! in V8 (`make vm-profile`): 720–840 µs a verify with `ecdsa`'s ladder, 220–250 µs with
//! five-bit windows, 183–217 µs with six; with eight-bit windows and no final normalisation,
//! 135 µs against the ladder's 708 in a quiet run (the figures behind the window width are in
//! [`super::fixed_base`]). `jwt_authn` with BoringSSL: 86 µs of filter CPU a cold ES256
//! request in the latest `make bench` run.
//!
//! The field is then this crate's own ([`super::p256_field`]: 26-bit limbs in `i64`, which
//! WebAssembly's 64-bit multiply suits) and the sum is kept in Jacobian coordinates with a
//! 7M + 4S mixed addition instead of the complete 11M formula (see [`Jacobian`] for its
//! exceptional cases). In V8 (`examples/p256_micro.rs`, a busy machine): a field
//! multiplication 126 → 51 ns, a squaring 164 → 30 ns; a verify 147 → 35 µs. In `make
//! vm-profile`, three rounds of alternating builds on a busy machine: 132.5, 154 and 169.5 µs
//! a verify before (0.19–0.20 of the ladder timed in the same run), 37.8, 50.2 and 42.8 µs
//! after (0.05); a cold ES256 request 138–169 µs before, 43–60 µs after.
//!
//! Everything here is public (signature, message, key), so lookups and the arithmetic are
//! variable time. Parsing of `r` and `s` (non-zero, below `n`), `s⁻¹`, the reduction of the
//! digest and of `x(R)` modulo `n` are the same as `ecdsa`'s `verify_prehashed`; the unit tests
//! compare the two on random, edge-case and exceptional signatures, the field and the points
//! with the crates', and `tests/wycheproof.rs` runs every Wycheproof P-256 vector through this
//! path.
//!
//! Memory: a table is 4224 affine points in canonical 26-bit limbs held in `u32` (80 bytes a
//! point, about 330 KiB). The generator's is built once per process (per VM) on first use; a
//! key's on its first verification: about 4200 point additions and one inversion per window
//! (4.0–5.2 ms inside V8 in the rounds above, against 13.6–16.3 ms with `primeorder`'s
//! arithmetic), once per key and VM (a key set replaced by a JWKS refresh gets new tables as
//! its keys are used).

use super::alg::Alg;
use super::fixed_base::{self, half};
use super::p256_field::{Compact, Fe};
use super::{KeyError, Verifier};
use ::p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use ::p256::elliptic_curve::ops::Reduce;
use ::p256::elliptic_curve::point::AffineCoordinates as _;
use ::p256::elliptic_curve::PrimeField as _;
use ::p256::{AffinePoint, NistP256, Scalar, U256};
use ::rsa::sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Window width of the P-256 tables.
const W: usize = 8;
/// Entries per window: digit magnitudes `1..=2^(W-1)`.
const HALF: usize = half(W);

/// A table entry: an affine point `j·2^(W·i)·P` (never the identity) in [`Fe`]'s Montgomery
/// form, stored canonical.
#[derive(Clone, Copy)]
struct Entry {
    x: Compact,
    y: Compact,
}

/// A P-256 fixed-base table ([`fixed_base`]'s layout: `j·2^(W·i)·P` at `i·2^(W-1) + j - 1`), its
/// coordinates in [`Fe`]'s form.
pub struct Table {
    points: Box<[Entry]>,
}

impl Table {
    /// The multiples window by window in [`Jacobian`] coordinates: `B = 2^(W·i)·P` in affine
    /// form, `2B` by doubling, `3B … 2^(W-1)·B` by mixed additions of `B` (never exceptional:
    /// `jB = ±B` would need `n | j ∓ 1`; checked all the same, for 4 % of the build), and the
    /// next window's base as `2·2^(W-1)·B`. Each
    /// window's 129 points then become affine with one shared inversion. `None` for the
    /// identity (which no parsed key is) or if an inversion meets a zero (never).
    pub fn new(p: &AffinePoint) -> Option<Table> {
        if bool::from(p.is_identity()) {
            return None;
        }
        let mut base = (Fe::from_bytes(&p.x().into())?, Fe::from_bytes(&p.y().into())?);
        let windows = fixed_base::windows::<NistP256, W>();
        let mut points = Vec::with_capacity(windows * HALF);
        let mut window: Vec<Jacobian> = Vec::with_capacity(HALF + 1);
        for _ in 0..windows {
            window.clear();
            let mut acc = Jacobian::new();
            acc.add_affine(&base.0, &base.1, true);
            window.push(acc.clone());
            acc = acc.double();
            window.push(acc.clone());
            for _ in 2..HALF {
                acc.add_affine(&base.0, &base.1, true);
                window.push(acc.clone());
            }
            window.push(acc.double());
            let affine = normalize(&window)?;
            let (entries, next) = affine.split_at(HALF);
            points.extend(entries.iter().map(|(x, y)| Entry {
                x: x.to_compact(),
                y: y.to_compact(),
            }));
            base = *next.first()?;
        }
        Some(Table {
            points: points.into_boxed_slice(),
        })
    }

    /// Adds `k·P` to `acc`; false only if the table is shorter than a scalar needs (never, by
    /// construction).
    fn add_multiple(&self, acc: &mut Jacobian, k: &Scalar, checked: bool) -> bool {
        let (digits, n) = fixed_base::signed_digits::<NistP256, W>(k);
        for (i, d) in digits.iter().take(n).enumerate() {
            let magnitude = usize::from(d.unsigned_abs());
            if magnitude == 0 {
                continue;
            }
            let Some(point) = self.points.get(i * HALF + magnitude - 1) else {
                return false;
            };
            let y = point.y.get();
            acc.add_affine(&point.x.get(), &if *d < 0 { y.neg() } else { y }, checked);
        }
        true
    }
}

/// A sum of table entries in Jacobian coordinates `(X : Y : Z)`, `x = X/Z²`, `y = Y/Z³`, with
/// the mixed addition `madd-2007-bl` (7 multiplications, 4 squarings; the complete formula it
/// replaces takes 11 multiplications, 2 by the constant `b`, and more additions).
///
/// That formula is wrong for the exceptional cases, an addend equal to the sum or to its
/// negation (`H = 0` below), and the sum must not be the identity. The identity is only ever
/// the empty sum here (`empty`): the first entry is copied in. An exceptional case makes `Z`
/// zero (`Z3 = 2·Z1·H`), and every later addition keeps it zero, so one check at the end tells
/// whether any addition was exceptional; the verify then sums again with every addition
/// checked ([`Jacobian::add_affine`]). Signatures never take that path by chance (it takes a
/// collision between partial sums), but one built for it may, and costs then two sums.
/// (Handing such signatures to the `ecdsa` crate instead would link its ladder into the filter:
/// 10 KB more of a module close to its 1 MiB budget.)
///
/// Limb weights ([`super::p256_field`]): the sum's `X`, `Y`, `Z` weigh at most 4, 3, 3 after
/// every addition (1 when copied in), entries 1; the largest product below weighs 8·8 = 64,
/// within the field's 128.
#[derive(Clone)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
    empty: bool,
}

impl Jacobian {
    fn new() -> Jacobian {
        Jacobian {
            x: Fe::ZERO,
            y: Fe::ONE,
            z: Fe::ZERO,
            empty: true,
        }
    }

    /// `2·self` (`dbl-2001-b`, for `a = -3`: 3 multiplications, 5 squarings), for the table
    /// builds; `self` not empty, with `X`, `Y`, `Z` weighing at most 4, 3, 3 (so do the results).
    fn double(&self) -> Jacobian {
        let (x, y, z) = (&self.x, &self.y, &self.z);
        let delta = z.square(); // 3·3
        let gamma = y.square(); // 3·3
        let beta4 = x.mul(&gamma.times(4)); // 4·4: 4·X·Y²
        let alpha = x.sub(&delta).mul(&x.add(&delta)).times(3); // 5·5; alpha weighs 3
        let x3 = alpha.square().sub(&beta4.times(2)); // 3·3; X3 weighs 3
        let gamma2 = gamma.times(2).square(); // 2·2: 4·Y⁴
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2.times(2)); // 3·4; Y3 weighs 3
        let z3 = y.add(z).square().sub(&gamma).sub(&delta); // 6·6; Z3 weighs 3
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
            empty: false,
        }
    }

    /// Adds the affine point `(x2, y2)` (weights 1). Weights in the comments, `X1, Y1, Z1` at
    /// 4, 3, 3. With `checked`, the exceptional cases are recognised (`H = 0`, one
    /// [`Fe::is_zero`]) and handled: the sum doubled if `r = 0` too (the point equals the sum),
    /// else the identity (it is the sum's negation). Not inlined: one copy serves the verify and
    /// the table build (the module is near its size budget).
    #[inline(never)]
    fn add_affine(&mut self, x2: &Fe, y2: &Fe, checked: bool) {
        if self.empty {
            (self.x, self.y, self.z, self.empty) = (*x2, *y2, Fe::ONE, false);
            return;
        }
        let (x1, y1, z1) = (&self.x, &self.y, &self.z);
        let z1z1 = z1.square(); // 3·3
        let u2 = x2.mul(&z1z1);
        let s2 = y2.mul(z1).mul(&z1z1); // 1·3, 1·1
        let h = u2.sub(x1); // weight 5
        let r = s2.sub(y1).times(2); // 8
        if checked && h.is_zero() {
            *self = if r.is_zero() { self.double() } else { Jacobian::new() };
            return;
        }
        let hh = h.square(); // 5·5
        let i = hh.times(4); // 4
        let j = h.mul(&i); // 5·4
        let v = x1.mul(&i); // 4·4
        let x3 = r.square().sub(&j).sub(&v.times(2)); // 8·8; X3 weighs 1 + 1 + 2 = 4
        let y3 = r.mul(&v.sub(&x3)).sub(&y1.mul(&j).times(2)); // 8·5, 3·1; Y3 weighs 3
        let z3 = z1.add(&h).square().sub(&z1z1).sub(&hh); // 8·8; Z3 weighs 3
        (self.x, self.y, self.z) = (x3, y3, z3);
    }
}

/// The affine coordinates of non-empty sums, with one inversion for all (Montgomery's trick);
/// `None` if any `Z` is zero.
fn normalize(points: &[Jacobian]) -> Option<Vec<(Fe, Fe)>> {
    // prefix[i] = Z_0·…·Z_i
    let mut prefix = Vec::with_capacity(points.len());
    let mut acc = Fe::ONE;
    for p in points {
        acc = acc.mul(&p.z); // 1·3
        prefix.push(acc);
    }
    if acc.is_zero() {
        return None;
    }
    let mut inv = acc.invert(); // (Z_0·…·Z_i)⁻¹, from the last i down
    let mut out = vec![(Fe::ZERO, Fe::ZERO); points.len()];
    for ((o, p), before) in out
        .iter_mut()
        .zip(points)
        .rev()
        .zip(prefix.iter().rev().skip(1).map(Some).chain([None]))
    {
        let zi = match before {
            Some(b) => inv.mul(b),
            None => inv,
        };
        inv = inv.mul(&p.z);
        let zi2 = zi.square();
        *o = (p.x.mul(&zi2), p.y.mul(&zi2.mul(&zi))); // 4·1, 3·1
    }
    Some(out)
}

/// `x(u1·G + u2·Q) mod n = r` with `u1 = z·s⁻¹`, `u2 = r·s⁻¹` (`z` the reduced digest; the
/// caller has checked `0 < r, s < n`), as `ecdsa`'s `verify_prehashed` computes it. The sum is
/// first taken without looking for exceptional additions; if one happened (`Z = 0`, see
/// [`Jacobian`]), it is taken again with each addition checked.
fn ecdsa_holds(g: &Table, q: &Table, z: &Scalar, r: &Scalar, s_inv: &Scalar) -> bool {
    let (u1, u2) = (*z * s_inv, *r * s_inv);
    for checked in [false, true] {
        let mut sum = Jacobian::new();
        if !(g.add_multiple(&mut sum, &u1, checked) && q.add_multiple(&mut sum, &u2, checked)) {
            return false;
        }
        if sum.empty {
            return false; // the identity never matches (as in `ecdsa`)
        }
        if !sum.z.is_zero() {
            return x_is(&sum, r);
        }
    }
    false // Z = 0 with every addition checked: never
}

/// Whether `x(R) mod n = r` for `R` the (non-identity) sum and `0 < r < n`. As `n < p < 2n`,
/// that is `x(R) = r` or `x(R) = r + n` (if below `p`), compared as `X = r·Z²` without the
/// inversion of `Z` (one verify went from 146 to 135 µs in V8 when the projective sum stopped
/// normalising: `make vm-profile`, alternating builds).
fn x_is(sum: &Jacobian, r: &Scalar) -> bool {
    let zz = sum.z.square(); // weight 9
    let r_bytes: [u8; 32] = r.to_repr().into();
    let Some(r_fe) = Fe::from_bytes(&r_bytes) else {
        return false; // r < n < p: never
    };
    if sum.x.equals(&r_fe.mul(&zz)) {
        return true;
    }
    // x(R) = r + n, if that is below p.
    fixed_base::r_plus_n::<NistP256>(r)
        .and_then(|bytes| Fe::from_bytes(&bytes.into()))
        .is_some_and(|x| sum.x.equals(&x.mul(&zz)))
}

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
        ecdsa_holds(g, q, &z, &r, &s_inv)
    }

    /// `ecdsa`'s `verify_prehash`.
    fn reference_prehashed(&self, digest: &[u8], signature: &::p256::ecdsa::Signature) -> bool {
        ::p256::ecdsa::VerifyingKey::from_affine(self.point)
            .is_ok_and(|key| key.verify_prehash(digest, signature).is_ok())
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
        alg == Alg::ES256 && self.reference_prehashed(&Sha256::digest(msg), &signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::p256::ecdsa::signature::hazmat::PrehashVerifier;
    use ::p256::ecdsa::{SigningKey, VerifyingKey};
    use ::p256::ProjectivePoint;

    type Ref = <NistP256 as ::p256::elliptic_curve::hazmat::FieldArithmetic>::FieldElement;

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        crate::crypto::test_bytes::<Sha256>(seed, n)
    }

    fn to_ref(f: &Fe) -> Ref {
        Ref::from_repr(f.to_bytes().into()).unwrap()
    }

    fn to_fe(r: &Ref) -> Fe {
        Fe::from_bytes(&r.to_repr().into()).unwrap()
    }

    /// The sum as `primeorder`'s point (through the crate's field and its inversion).
    fn point_of(j: &Jacobian) -> ProjectivePoint {
        if j.empty {
            return ProjectivePoint::IDENTITY;
        }
        let zi = to_ref(&j.z).invert().unwrap();
        let (x, y) = (to_ref(&j.x) * zi.square(), to_ref(&j.y) * zi.square() * zi);
        ProjectivePoint::from(AffinePoint::from_coordinates(&x.to_repr(), &y.to_repr()).unwrap())
    }

    /// The affine point `(x, y)` as a sum with the projective scale `z`.
    fn scaled(x: Ref, y: Ref, z: Ref) -> Jacobian {
        Jacobian {
            x: to_fe(&(x * z.square())),
            y: to_fe(&(y * z.square() * z)),
            z: to_fe(&z),
            empty: false,
        }
    }

    /// A scalar from the test stream (below 2^255, so below n).
    fn scalar(seed: u64) -> Scalar {
        let mut b = bytes(seed, 32);
        b[0] &= 0x7f;
        Scalar::from_repr(<[u8; 32]>::try_from(&b[..]).unwrap().into()).unwrap()
    }

    /// 0, ±1, ±2, single bits and their neighbours (window edges), n - 1, all ones.
    fn edge_scalars() -> Vec<Scalar> {
        let mut v = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::ONE.double(),
            -Scalar::ONE.double(),
        ];
        let mut pow = Scalar::ONE;
        for bit in 0..256 {
            if [4, 7, 8, 15, 16, 31, 127, 128, 248, 254, 255].contains(&bit) {
                v.extend([pow, pow - Scalar::ONE, -pow]);
            }
            pow = pow.double();
        }
        let mut ones = Scalar::ZERO;
        for _ in 0..255 {
            ones = ones.double() + Scalar::ONE;
        }
        v.push(ones);
        v
    }

    #[test]
    fn mixed_addition_matches_primeorder() {
        let g = ProjectivePoint::GENERATOR;
        let mut ours = Jacobian::new();
        let mut theirs = ProjectivePoint::IDENTITY;
        for seed in 0..60u64 {
            let p = (g * scalar(seed)).to_affine();
            let (x, y) = (
                to_fe(&Ref::from_repr(p.x()).unwrap()),
                to_fe(&Ref::from_repr(p.y()).unwrap()),
            );
            ours.add_affine(&x, &y, seed % 2 == 0);
            theirs += p;
            assert!(point_of(&ours) == theirs, "{seed}");
            assert!(!ours.z.is_zero());
        }
        // Adding the sum itself (doubling) or its negation (the identity) is exceptional:
        // unchecked, Z becomes zero and stays so; checked, the result is right.
        for (negate, checked) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut j = Jacobian::new();
            let p = (g * scalar(99)).to_affine();
            let (x, y) = (
                to_fe(&Ref::from_repr(p.x()).unwrap()),
                to_fe(&Ref::from_repr(p.y()).unwrap()),
            );
            j.add_affine(&x, &y, checked);
            let q = (g * scalar(98)).to_affine();
            let (qx, qy) = (
                to_fe(&Ref::from_repr(q.x()).unwrap()),
                to_fe(&Ref::from_repr(q.y()).unwrap()),
            );
            j.add_affine(&qx, &qy, checked); // p + q, then add p + q or -(p + q) in affine form
            let pq = ProjectivePoint::from(p) + q;
            let pq_affine = pq.to_affine();
            let (sx, sy) = (
                to_fe(&Ref::from_repr(pq_affine.x()).unwrap()),
                to_fe(&Ref::from_repr(pq_affine.y()).unwrap()),
            );
            j.add_affine(&sx, &if negate { sy.neg() } else { sy }, checked);
            if !checked {
                assert!(j.z.is_zero());
                j.add_affine(&x, &y, false);
                assert!(j.z.is_zero());
                continue;
            }
            let expect = if negate { ProjectivePoint::IDENTITY } else { pq + pq };
            assert!(point_of(&j) == expect, "{negate}");
            assert!(negate == j.empty);
            // And the sum goes on from there.
            j.add_affine(&x, &y, true);
            assert!(point_of(&j) == expect + p);
        }
    }

    #[test]
    fn doubling_matches_primeorder() {
        let g = ProjectivePoint::GENERATOR;
        let mut j = Jacobian::new();
        let p = (g * scalar(5)).to_affine();
        j.add_affine(
            &to_fe(&Ref::from_repr(p.x()).unwrap()),
            &to_fe(&Ref::from_repr(p.y()).unwrap()),
            false,
        );
        let mut theirs = ProjectivePoint::from(p);
        for seed in 0..20 {
            // A sum at its largest weights (after a mixed addition), then doubled.
            let q = (g * scalar(40 + seed)).to_affine();
            j.add_affine(
                &to_fe(&Ref::from_repr(q.x()).unwrap()),
                &to_fe(&Ref::from_repr(q.y()).unwrap()),
                false,
            );
            theirs += q;
            j = j.double();
            theirs = theirs + theirs;
            assert!(point_of(&j) == theirs, "{seed}");
        }
    }

    #[test]
    fn table_multiples_match_primeorder() {
        let g = ProjectivePoint::GENERATOR;
        let q = (g * scalar(7)).to_affine();
        let (tq, tg) = (Table::new(&q).unwrap(), generator_table().unwrap());
        for (i, k) in edge_scalars().into_iter().chain((100..130).map(scalar)).enumerate() {
            let mut j = Jacobian::new();
            assert!(tq.add_multiple(&mut j, &k, false));
            assert!(point_of(&j) == ProjectivePoint::from(q) * k, "{i}");
            let mut j = Jacobian::new();
            assert!(tg.add_multiple(&mut j, &k, i % 2 == 0));
            assert!(point_of(&j) == g * k, "{i}");
            // u1·G + u2·Q, as a verify sums them.
            let k2 = scalar(200 + i as u64);
            assert!(tq.add_multiple(&mut j, &k2, false));
            assert!(point_of(&j) == g * k + ProjectivePoint::from(q) * k2, "{i}");
        }
    }

    /// Every entry of a table, built with [`Fe`] and [`Jacobian`], against `primeorder`'s
    /// multiples ([`fixed_base::multiples`]), for the generator and a key.
    #[test]
    fn table_entries_match_primeorder() {
        for p in [
            AffinePoint::GENERATOR,
            (ProjectivePoint::GENERATOR * scalar(11)).to_affine(),
        ] {
            let ours = Table::new(&p).unwrap();
            let theirs = fixed_base::multiples::<NistP256, W>(&p);
            assert_eq!(ours.points.len(), theirs.len());
            assert_eq!(ours.points.len(), 33 * 128);
            for (e, a) in ours.points.iter().zip(&theirs) {
                assert_eq!(e.x.get().to_bytes(), a.x().as_slice());
                assert_eq!(e.y.get().to_bytes(), a.y().as_slice());
            }
        }
        assert!(Table::new(&AffinePoint::IDENTITY).is_none());
    }

    /// A point whose x lies in `[n, p)`, so `x(R) mod n = x - n`: the second comparison of
    /// [`x_is`], which random signatures reach with probability about 2^-128.
    #[test]
    fn x_of_r_at_or_above_n_is_compared_modulo_n() {
        let n_minus_1 = Ref::from_repr((-Scalar::ONE).to_repr()).unwrap();
        let mut x = n_minus_1 + Ref::ONE;
        let mut i = 0u64;
        let y = loop {
            let rhs = x.square() * x - x.double() - x + <NistP256 as primeorder::PrimeCurveParams>::EQUATION_B;
            if let Some(y) = Option::<Ref>::from(rhs.sqrt()) {
                break y;
            }
            x += Ref::ONE;
            i += 1;
            assert!(i < 1000);
        };
        let r = Scalar::from(i); // x - n
        for z in [Ref::ONE, Ref::from(7u64) + x, -Ref::ONE] {
            assert!(x_is(&scaled(x, y, z), &r), "x(R) = r + n");
            assert!(!x_is(&scaled(x, y, z), &(r + Scalar::ONE)));
        }
        // An x below n matches itself only.
        let gen = AffinePoint::GENERATOR;
        let (gx, gy) = (Ref::from_repr(gen.x()).unwrap(), Ref::from_repr(gen.y()).unwrap());
        let r_g = Scalar::from_repr(gen.x()).unwrap();
        let z = Ref::from(12345u64) + gx;
        assert!(x_is(&scaled(gx, gy, z), &r_g));
        assert!(!x_is(&scaled(gx, gy, z), &(r_g + Scalar::ONE)));
    }

    /// Signatures built so that the last addition adds `Q` to `Q` (`u1 = d`, `u2 = 1`: a valid
    /// signature whose `R = 2Q`) or to `-Q` (`u1 = -d`: `R` is the identity), which the
    /// unchecked sum gets wrong (`Z = 0`) and the checked one right; and `u1 = 0` (a zero
    /// digest), where the sum starts from a `Q` entry. The verdicts are `ecdsa`'s.
    #[test]
    fn exceptional_sums_are_summed_again_with_checks() {
        use ::p256::elliptic_curve::point::AffineCoordinates as _;
        for seed in 0..4u64 {
            let sk = SigningKey::from_bytes(&bytes(3000 + seed, 32)[..].try_into().unwrap()).unwrap();
            let d: Scalar = *sk.as_nonzero_scalar().as_ref();
            let vk = VerifyingKey::from(&sk);
            let key = P256Key::new(*vk.as_affine());
            let q = ProjectivePoint::from(*vk.as_affine());
            let r = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&(q + q).to_affine().x()));
            let (g, t) = (generator_table().unwrap(), Table::new(vk.as_affine()).unwrap());
            for (u1, expect) in [(d, true), (-d, false)] {
                // u1 = z/s, u2 = r/s = 1: s = r, z = u1·r.
                let digest: [u8; 32] = (u1 * r).to_repr().into();
                let sig = [r.to_repr(), r.to_repr()].concat();
                let signature = ::p256::ecdsa::Signature::from_slice(&sig).unwrap();
                let mut sum = Jacobian::new();
                assert!(g.add_multiple(&mut sum, &u1, false) && t.add_multiple(&mut sum, &Scalar::ONE, false));
                assert!(sum.z.is_zero() && !sum.empty);
                let mut sum = Jacobian::new();
                assert!(g.add_multiple(&mut sum, &u1, true) && t.add_multiple(&mut sum, &Scalar::ONE, true));
                assert_eq!(sum.empty, !expect);
                assert_eq!(vk.verify_prehash(&digest, &signature).is_ok(), expect);
                assert_eq!(key.verify_prehashed(&digest, &sig), expect, "{seed} {expect}");
                assert_eq!(
                    key.verify(Alg::ES256, b"x", &sig),
                    key.verify_reference(Alg::ES256, b"x", &sig)
                );
            }
            let zero = [0u8; 32];
            let sig: ::p256::ecdsa::Signature =
                ::p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&sk, &zero).unwrap();
            assert!(key.verify_prehashed(&zero, &sig.to_bytes()));
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
