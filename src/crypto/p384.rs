//! ES384 (ECDSA over P-384 with SHA-384): the `p384` crate's verification (no fast path yet).

use super::alg::Alg;
use super::{KeyError, Verifier};
use ::p384::ecdsa::signature::Verifier as _;

#[derive(Clone)]
pub struct P384Key(::p384::ecdsa::VerifyingKey);

impl P384Key {
    /// An uncompressed SEC1 point (`04 || x || y`), checked to lie on P-384.
    pub fn new(sec1: &[u8]) -> Result<P384Key, KeyError> {
        ::p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map(P384Key)
            .map_err(|_| KeyError::Point)
    }
}

impl Verifier for P384Key {
    fn fits(&self, alg: Alg) -> bool {
        alg == Alg::ES384
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.verify_reference(alg, msg, sig)
    }

    /// JWS form (`r || s`, RFC 7518 §3.4), never DER.
    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        alg == Alg::ES384
            && ::p384::ecdsa::Signature::from_slice(sig)
                .map(|s| self.0.verify(msg, &s).is_ok())
                .unwrap_or(false)
    }
}
