//! HMAC (HS256/384/512) with a shared secret (`hmacSecret`, never from a JWKS), compared in
//! constant time: here, unlike the public-key families, the secret is the key.

use super::alg::Alg;
use super::Verifier;

#[derive(Clone)]
pub struct HmacKey(Vec<u8>);

impl HmacKey {
    pub fn new(secret: &[u8]) -> HmacKey {
        HmacKey(secret.to_vec())
    }
}

impl Verifier for HmacKey {
    fn fits(&self, alg: Alg) -> bool {
        alg.is_hmac()
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.verify_reference(alg, msg, sig)
    }

    /// The `hmac-sha256` / `hmac-sha512` crates' MAC, compared in constant time.
    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        let secret = &self.0;
        match alg {
            Alg::HS256 => ct_eq(&hmac_sha256::HMAC::mac(msg, secret), sig),
            Alg::HS384 => ct_eq(&hmac_sha512::sha384::HMAC::mac(msg, secret), sig),
            Alg::HS512 => ct_eq(&hmac_sha512::HMAC::mac(msg, secret), sig),
            _ => false,
        }
    }
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
}
