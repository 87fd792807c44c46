//! Raw signature verification: one public key, one algorithm, the signed bytes and the
//! signature bytes. This is the single place claimguard checks a signature, for tokens and
//! for the Wycheproof vectors alike. It uses the RustCrypto primitives (the same ones
//! jwt-simple uses in its pure-Rust mode) directly, so a token is parsed once, by
//! [`crate::token`], and nothing here interprets JOSE headers or claims.

use crate::alg::Alg;
use p256::ecdsa::signature::Verifier as _;
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};

/// A public key of one of the supported families.
#[derive(Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey, Option<FastRsa>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
    /// A shared secret (`hmacSecret`), never from a JWKS.
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKey::Rsa(..) => "Rsa",
            PublicKey::P256(_) => "P256",
            PublicKey::P384(_) => "P384",
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Hmac(_) => "Hmac",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Rsa,
    Point,
    Length,
}

impl PublicKey {
    /// `n` and `e` big-endian. Size and exponent policy is the caller's (see `jwks`).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<PublicKey, KeyError> {
        let key = RsaPublicKey::new_with_max_size(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e), 8192)
            .map_err(|_| KeyError::Rsa)?;
        Ok(PublicKey::Rsa(key, FastRsa::new(n, e)))
    }

    /// An uncompressed SEC1 point (`04 || x || y`), checked to lie on P-256.
    pub fn p256(sec1: &[u8]) -> Result<PublicKey, KeyError> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(PublicKey::P256)
            .map_err(|_| KeyError::Point)
    }

    pub fn p384(sec1: &[u8]) -> Result<PublicKey, KeyError> {
        p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(PublicKey::P384)
            .map_err(|_| KeyError::Point)
    }

    pub fn ed25519(x: &[u8]) -> Result<PublicKey, KeyError> {
        ed25519_compact::PublicKey::from_slice(x)
            .map(PublicKey::Ed25519)
            .map_err(|_| KeyError::Length)
    }

    /// RSA modulus size in bits (0 for other key types).
    pub fn rsa_bits(&self) -> usize {
        match self {
            PublicKey::Rsa(k, _) => k.n().bits(),
            _ => 0,
        }
    }

    /// Whether this key's family can serve `alg` at all.
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa(..) => alg.is_rsa(),
            PublicKey::P256(_) => alg == Alg::ES256,
            PublicKey::P384(_) => alg == Alg::ES384,
            PublicKey::Ed25519(_) => alg == Alg::EdDSA,
            PublicKey::Hmac(_) => alg.is_hmac(),
        }
    }

    /// Verifies `sig` over `msg` with `alg`. ECDSA signatures are the JWS form (raw
    /// `r || s`, RFC 7518 §3.4), never DER. False for any mismatch or malformed input.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (PublicKey::Rsa(_, Some(fast)), Alg::RS256) => fast.verify_pkcs1(&SHA256_PREFIX, &Sha256::digest(msg), sig),
            (PublicKey::Rsa(_, Some(fast)), Alg::RS384) => fast.verify_pkcs1(&SHA384_PREFIX, &Sha384::digest(msg), sig),
            (PublicKey::Rsa(_, Some(fast)), Alg::RS512) => fast.verify_pkcs1(&SHA512_PREFIX, &Sha512::digest(msg), sig),
            (PublicKey::Rsa(k, _), Alg::RS256) => {
                rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig)
            }
            (PublicKey::Rsa(k, _), Alg::RS384) => {
                rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig)
            }
            (PublicKey::Rsa(k, _), Alg::RS512) => {
                rsa_pkcs1(k, Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig)
            }
            (PublicKey::Rsa(k, _), Alg::PS256) => rsa_pss(k, Pss::new::<Sha256>(), &Sha256::digest(msg), sig),
            (PublicKey::Rsa(k, _), Alg::PS384) => rsa_pss(k, Pss::new::<Sha384>(), &Sha384::digest(msg), sig),
            (PublicKey::Rsa(k, _), Alg::PS512) => rsa_pss(k, Pss::new::<Sha512>(), &Sha512::digest(msg), sig),
            (PublicKey::P256(k), Alg::ES256) => p256::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::P384(k), Alg::ES384) => p384::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::Ed25519(k), Alg::EdDSA) => ed25519_compact::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::Hmac(secret), Alg::HS256) => ct_eq(&hmac_sha256::HMAC::mac(msg, secret), sig),
            (PublicKey::Hmac(secret), Alg::HS384) => ct_eq(&hmac_sha512::sha384::HMAC::mac(msg, secret), sig),
            (PublicKey::Hmac(secret), Alg::HS512) => ct_eq(&hmac_sha512::HMAC::mac(msg, secret), sig),
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
/// Montgomery arithmetic on 32-bit limbs (below), set up once per key: the public operation
/// `s^e mod n` and a comparison with the expected encoding. Other sizes use the `rsa` crate.
#[derive(Clone)]
pub enum FastRsa {
    R2048(Box<FastKey<64>>),
    R3072(Box<FastKey<96>>),
    R4096(Box<FastKey<128>>),
}

/// A modulus of `L` 32-bit limbs (least significant first) ready for Montgomery
/// multiplication with `R = 2^(32L)`.
///
/// Why not a library: inside V8 (`make vm-profile`, alternating builds in one session) an
/// RSA-2048 verify costs 1.1–1.5 ms with the `rsa` crate, 210–260 µs with `crypto-bigint`'s
/// constant-time `FixedMontyForm`, and 125–150 µs here. Wasm has a native 32×32→64 multiply
/// but no 64×64→128 one, so 32-bit limbs with 64-bit accumulators suit the engine; squarings
/// (16 of e = 65537's 17 steps) compute each cross product once. Everything here is public
/// (signature, modulus, exponent), so variable time is fine. Tested against the general
/// bignum (unit tests) and every Wycheproof RSA PKCS#1 vector (`tests/wycheproof.rs`).
#[derive(Clone)]
pub struct FastKey<const L: usize> {
    n: [u32; L],
    /// `-n⁻¹ mod 2³²`.
    n0_inv: u32,
    /// `R² mod n`, to enter the Montgomery domain.
    r2: [u32; L],
    /// The exponent's bits, most significant (always 1) first.
    e_bits: Vec<bool>,
}

/// Big-endian bytes (at most `4L`) → little-endian limbs.
fn limbs_from_be<const L: usize>(bytes: &[u8]) -> Option<[u32; L]> {
    if bytes.len() > 4 * L {
        return None;
    }
    let mut out = [0u32; L];
    for (limb, chunk) in out.iter_mut().zip(bytes.rchunks(4)) {
        *limb = chunk.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b));
    }
    Some(out)
}

/// `a >= b`, most significant limb first.
fn ge<const L: usize>(a: &[u32; L], b: &[u32; L]) -> bool {
    a.iter().rev().cmp(b.iter().rev()) != std::cmp::Ordering::Less
}

/// `a -= b` modulo `2^(32L)`.
fn sub_assign<const L: usize>(a: &mut [u32; L], b: &[u32; L]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = u64::from(*x).wrapping_sub(u64::from(*y)).wrapping_sub(borrow);
        *x = d as u32;
        borrow = d >> 63;
    }
}

impl<const L: usize> FastKey<L> {
    fn new(n: &[u8], e: &[u8]) -> Option<FastKey<L>> {
        if n.len() != 4 * L {
            return None;
        }
        let n = limbs_from_be::<L>(n)?;
        let n0 = *n.first()?;
        // An even modulus is not an RSA key (and has no Montgomery form); nor is one shorter
        // than L limbs (the caller picks L from its exact byte length).
        if n0 & 1 == 0 || n.last().is_none_or(|top| *top == 0) {
            return None;
        }
        // Newton's iteration doubles the correct low bits each step: 1 → 2 → … → 32 bits.
        let mut inv: u32 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        // R² mod n by doubling 1 modulo n, 2·32·L times (once per key).
        let mut r2 = [0u32; L];
        if let Some(low) = r2.first_mut() {
            *low = 1;
        }
        for _ in 0..64 * L {
            let mut carry = 0u32;
            for limb in r2.iter_mut() {
                let next = *limb >> 31;
                *limb = *limb << 1 | carry;
                carry = next;
            }
            if carry == 1 || ge(&r2, &n) {
                sub_assign(&mut r2, &n);
            }
        }
        let mut e_bits = Vec::new();
        for byte in e {
            for i in (0..8).rev() {
                e_bits.push(byte >> i & 1 == 1);
            }
        }
        let first_one = e_bits.iter().position(|b| *b)?;
        e_bits.drain(..first_one);
        Some(FastKey {
            n,
            n0_inv: inv.wrapping_neg(),
            r2,
            e_bits,
        })
    }

    /// `a·b·R⁻¹ mod n` for `a, b < n` (CIOS: multiply and reduce one limb of `b` at a time).
    fn mont_mul(&self, a: &[u32; L], b: &[u32; L]) -> [u32; L] {
        let mut t = [0u32; L];
        // t's limbs L and L+1.
        let mut t_hi: u32 = 0;
        for &bi in b {
            let bi = u64::from(bi);
            let mut c = 0u64;
            for (tj, &aj) in t.iter_mut().zip(a) {
                let s = u64::from(*tj) + u64::from(aj) * bi + c;
                *tj = s as u32;
                c = s >> 32;
            }
            let s = u64::from(t_hi) + c;
            t_hi = s as u32;
            let t_top = (s >> 32) as u32;
            // Add m·n so that the lowest limb becomes 0, then drop it (divide by 2³²).
            let m = u64::from(t.first().copied().unwrap_or(0).wrapping_mul(self.n0_inv));
            let mut c = 0u64;
            for (tj, &nj) in t.iter_mut().zip(&self.n) {
                let s = u64::from(*tj) + m * u64::from(nj) + c;
                *tj = s as u32;
                c = s >> 32;
            }
            t.rotate_left(1);
            let s = u64::from(t_hi) + c;
            if let Some(last) = t.last_mut() {
                *last = s as u32;
            }
            t_hi = t_top + (s >> 32) as u32;
        }
        // t < 2n: at most one subtraction.
        if t_hi != 0 || ge(&t, &self.n) {
            sub_assign(&mut t, &self.n);
        }
        t
    }

    /// `a²·R⁻¹ mod n` for `a < n`: the full square first, each cross product computed once
    /// and doubled (about half the multiplications of `mont_mul(a, a)`), then a Montgomery
    /// reduction. 16 of the 17 operations of an e = 65537 verify are squarings.
    fn mont_sqr(&self, a: &[u32; L]) -> [u32; L] {
        let mut t = vec![0u32; 2 * L];
        // Cross products a[i]·a[j], i < j, at t[i + j].
        for (i, &ai) in a.iter().enumerate() {
            let ai = u64::from(ai);
            let mut c = 0u64;
            for (tk, &aj) in t.iter_mut().skip(2 * i + 1).zip(a.iter().skip(i + 1)) {
                let s = u64::from(*tk) + ai * u64::from(aj) + c;
                *tk = s as u32;
                c = s >> 32;
            }
            // t[i + L] is still untouched by earlier rows (they end at i' + L - 1).
            if let Some(tk) = t.get_mut(i + L) {
                *tk = c as u32;
            }
        }
        // Double them and add the squares a[i]² at t[2i].
        let mut shifted_out = 0u64;
        let mut c = 0u64;
        for (pair, &ai) in t.chunks_exact_mut(2).zip(a) {
            if let [lo, hi] = pair {
                let sq = u64::from(ai) * u64::from(ai);
                let d = (u64::from(*lo) << 1 | shifted_out) & 0xffff_ffff;
                shifted_out = u64::from(*lo >> 31);
                let s = d + (sq & 0xffff_ffff) + c;
                *lo = s as u32;
                c = s >> 32;
                let d = (u64::from(*hi) << 1 | shifted_out) & 0xffff_ffff;
                shifted_out = u64::from(*hi >> 31);
                let s = d + (sq >> 32) + c;
                *hi = s as u32;
                c = s >> 32;
            }
        }
        // Montgomery reduction of the 2L-limb square, one limb at a time.
        let mut top = 0u64;
        for i in 0..L {
            let m = u64::from(t.get(i).copied().unwrap_or(0).wrapping_mul(self.n0_inv));
            let mut c = 0u64;
            for (tk, &nj) in t.iter_mut().skip(i).zip(&self.n) {
                let s = u64::from(*tk) + m * u64::from(nj) + c;
                *tk = s as u32;
                c = s >> 32;
            }
            for tk in t.iter_mut().skip(i + L) {
                if c == 0 {
                    break;
                }
                let s = u64::from(*tk) + c;
                *tk = s as u32;
                c = s >> 32;
            }
            top += c;
        }
        let mut r = [0u32; L];
        for (x, y) in r.iter_mut().zip(t.iter().skip(L)) {
            *x = *y;
        }
        // r + top·R < 2n: at most one subtraction.
        if top != 0 || ge(&r, &self.n) {
            sub_assign(&mut r, &self.n);
        }
        r
    }

    /// `s^e mod n` for a big-endian `s`; `None` if `s >= n` or too long.
    fn public_op(&self, sig: &[u8]) -> Option<[u32; L]> {
        let s = limbs_from_be::<L>(sig)?;
        if ge(&s, &self.n) {
            return None;
        }
        let base = self.mont_mul(&s, &self.r2);
        let mut acc = base;
        for bit in self.e_bits.iter().skip(1) {
            acc = self.mont_sqr(&acc);
            if *bit {
                acc = self.mont_mul(&acc, &base);
            }
        }
        let mut one = [0u32; L];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        Some(self.mont_mul(&acc, &one))
    }

    fn verify(&self, em: &[u8], sig: &[u8]) -> bool {
        match (self.public_op(sig), limbs_from_be::<L>(em)) {
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

fn rsa_pkcs1(k: &RsaPublicKey, scheme: Pkcs1v15Sign, hashed: &[u8], sig: &[u8]) -> bool {
    // A signature must be exactly the modulus length (RFC 8017 §8.2.2 step 1).
    sig.len() == k.size() && k.verify(scheme, hashed, sig).is_ok()
}

fn rsa_pss(k: &RsaPublicKey, scheme: Pss, hashed: &[u8], sig: &[u8]) -> bool {
    sig.len() == k.size() && k.verify(scheme, hashed, sig).is_ok()
}

/// Constant-time equality for MACs.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn wrong_family_never_verifies() {
        let k = PublicKey::Hmac(vec![1; 32]);
        let mac = hmac_sha256::HMAC::mac(b"m", [1u8; 32]);
        assert!(k.verify(Alg::HS256, b"m", &mac));
        assert!(!k.verify(Alg::RS256, b"m", &mac));
        assert!(!k.verify(Alg::HS384, b"m", &mac));
    }

    /// `s^e mod n` by the general-purpose bignum (num-bigint-dig, via the `rsa` crate).
    fn reference(n: &[u8], e: &[u8], s: &[u8]) -> Vec<u8> {
        let r = BigUint::from_bytes_be(s).modpow(&BigUint::from_bytes_be(e), &BigUint::from_bytes_be(n));
        let mut out = r.to_bytes_be();
        while out.len() < n.len() {
            out.insert(0, 0);
        }
        out
    }

    fn limbs_to_be<const L: usize>(x: &[u32; L]) -> Vec<u8> {
        x.iter().rev().flat_map(|l| l.to_be_bytes()).collect()
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

    fn check_modexp<const L: usize>(seed: &mut u64, e: &[u8]) {
        // A random odd modulus with its top bit set: the arithmetic does not need a prime.
        let mut n = bytes(seed, 4 * L);
        n[0] |= 0x80;
        n[4 * L - 1] |= 1;
        let key = FastKey::<L>::new(&n, e).unwrap();
        let mut n_minus_1 = n.clone();
        n_minus_1[4 * L - 1] &= 0xfe;
        let mut cases = vec![vec![0u8; 4 * L], vec![1u8], vec![2u8], n_minus_1];
        for _ in 0..8 {
            let mut s = bytes(seed, 4 * L);
            s[0] &= 0x7f; // below n
            cases.push(s);
        }
        for s in cases {
            let got = key.public_op(&s).unwrap();
            assert_eq!(limbs_to_be(&got), reference(&n, e, &s), "L={L} e={e:?}");
        }
        assert!(key.public_op(&n).is_none(), "s = n is refused");
        assert!(key.public_op(&[0xff; 4 * 129]).is_none(), "too long");
    }

    #[test]
    fn montgomery_square_is_multiplication_by_itself() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut n = bytes(&mut seed, 256);
        n[0] |= 0x80;
        n[255] |= 1;
        let key = FastKey::<64>::new(&n, &[1, 0, 1]).unwrap();
        let mut n_minus_1 = key.n;
        n_minus_1[0] -= 1;
        let mut cases = vec![[0u32; 64], n_minus_1, [0xffff_ffffu32; 64]];
        cases[2][63] = key.n[63] - 1;
        for _ in 0..50 {
            let mut s = bytes(&mut seed, 256);
            s[0] &= 0x7f;
            cases.push(limbs_from_be(&s).unwrap());
        }
        for a in cases {
            assert_eq!(key.mont_sqr(&a), key.mont_mul(&a, &a));
        }
    }

    #[test]
    fn montgomery_modexp_agrees_with_the_general_bignum() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for e in [
            &[0x01, 0x00, 0x01][..],
            &[3],
            &[0x01, 0x00, 0x00, 0x00, 0x01],
            &[0xff, 0xff],
        ] {
            check_modexp::<64>(&mut seed, e);
            check_modexp::<96>(&mut seed, e);
            check_modexp::<128>(&mut seed, e);
            check_modexp::<2>(&mut seed, e);
        }
    }

    #[test]
    fn montgomery_refuses_what_is_not_an_odd_full_length_modulus() {
        let mut n = vec![0xffu8; 256];
        n[255] = 0xfe;
        assert!(FastKey::<64>::new(&n, &[1, 0, 1]).is_none(), "even");
        assert!(FastKey::<64>::new(&[0xff; 255], &[1, 0, 1]).is_none(), "short");
        assert!(FastKey::<64>::new(&[0xff; 256], &[0]).is_none(), "zero exponent");
        assert!(
            FastRsa::new(&[0xff; 200], &[1, 0, 1]).is_none(),
            "other sizes use the rsa crate"
        );
    }

    #[test]
    fn fast_rsa_agrees_with_the_rsa_crate() {
        use crate::devtools::keys::TestKey;
        use base64::Engine;
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
            let key = PublicKey::rsa(&n, &e).unwrap();
            let PublicKey::Rsa(slow, Some(fast)) = &key else {
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
            // The slow path agrees on every one of these.
            let slow_ok = |s: &[u8], m: &[u8]| rsa_pkcs1(slow, Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(m), s);
            if alg == Alg::RS256 {
                assert!(slow_ok(&sig, msg));
                assert!(!slow_ok(&bad, msg));
            }
        }
    }
}
