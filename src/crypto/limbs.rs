//! Conversions between big-endian bytes and fixed-width limbs, and the Montgomery
//! constant: what both RSA forms ([`super::rsa`] on 28-bit integer limbs,
//! [`super::rsa_fma`] on 52-bit limbs in f64) share. Everything here is public data.

/// Big-endian bytes as limbs of `bits` bits, least significant first: `put(i, limb)` for each
/// `i < k`; `false` if the value does not fit in `k` limbs.
pub fn be_to_limbs(bytes: &[u8], bits: u32, k: usize, mut put: impl FnMut(usize, u64)) -> bool {
    let mask = (1u64 << bits) - 1;
    let (mut i, mut acc, mut held) = (0, 0u64, 0);
    for &b in bytes.iter().rev() {
        acc |= u64::from(b) << held;
        held += 8;
        if held >= bits {
            match acc & mask {
                l if i < k => put(i, l),
                0 => {}
                _ => return false,
            }
            i += 1;
            acc >>= bits;
            held -= bits;
        }
    }
    match acc {
        0 => true,
        l if i < k => {
            put(i, l);
            true
        }
        _ => false,
    }
}

/// Limbs of `bits` bits, least significant first, as `len` big-endian bytes (bits beyond them
/// dropped).
pub fn limbs_to_be(limbs: impl Iterator<Item = u64>, bits: u32, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, l) in limbs.enumerate() {
        // Limb i holds bits [bits·i, bits·(i + 1)): spread it into the bytes it covers.
        let mut v = l;
        let mut bit = i * bits as usize;
        while v != 0 && bit / 8 < len {
            if let Some(byte) = out.get_mut(len - 1 - bit / 8) {
                *byte |= ((v << (bit % 8)) & 0xff) as u8;
            }
            let taken = 8 - bit % 8;
            v >>= taken;
            bit += taken;
        }
    }
    out
}

/// `-x⁻¹ mod 2⁶⁴` for an odd `x`, by Newton's iteration (each step doubles the correct low
/// bits: 1 → 2 → … → 64).
pub fn neg_inverse(x: u64) -> u64 {
    let mut inv: u64 = 1;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(x.wrapping_mul(inv)));
    }
    inv.wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::BigUint;

    #[test]
    fn bytes_and_limbs_round_trip_at_both_widths() {
        let bytes: Vec<u8> = (1..=64u8).map(|b| b.wrapping_mul(37)).collect();
        for bits in [28u32, 52] {
            let k = (8 * bytes.len()).div_ceil(bits as usize);
            let mut limbs = vec![0u64; k];
            assert!(be_to_limbs(&bytes, bits, k, |i, l| limbs[i] = l));
            assert!(limbs.iter().all(|&l| l < 1 << bits));
            // Read back as base-2^bits digits, the limbs are the number (by the general bignum).
            let got = limbs
                .iter()
                .rev()
                .fold(BigUint::default(), |v, &l| (v << bits as usize) + l);
            assert_eq!(got, BigUint::from_bytes_be(&bytes));
            assert_eq!(limbs_to_be(limbs.iter().copied(), bits, bytes.len()), bytes);
            // Leading zero bytes are no limbs; one limb too few does not fit.
            let mut padded = vec![0u8; 9];
            padded.extend_from_slice(&bytes);
            assert!(be_to_limbs(&padded, bits, k, |_, _| {}));
            assert!(!be_to_limbs(&bytes, bits, k - 1, |_, _| {}));
        }
    }

    #[test]
    fn neg_inverse_is_minus_the_inverse_mod_2_64() {
        for x in [
            1u64,
            3,
            0xffff_ffff_ffff_ffff,
            0x8000_0000_0000_0001,
            0x1234_5678_9abc_def1,
        ] {
            assert_eq!(x.wrapping_mul(neg_inverse(x)), u64::MAX, "{x:#x}");
        }
    }
}
