//! EdDSA (Ed25519): the `ed25519-compact` crate's verification (no fast path yet).

use super::alg::Alg;
use super::{KeyError, Verifier};

#[derive(Clone)]
pub struct Ed25519Key(ed25519_compact::PublicKey);

impl Ed25519Key {
    /// The 32-byte public key `x`.
    pub fn new(x: &[u8]) -> Result<Ed25519Key, KeyError> {
        ed25519_compact::PublicKey::from_slice(x)
            .map(Ed25519Key)
            .map_err(|_| KeyError::Length)
    }
}

impl Verifier for Ed25519Key {
    fn fits(&self, alg: Alg) -> bool {
        alg == Alg::EdDSA
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.verify_reference(alg, msg, sig)
    }

    fn verify_reference(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        alg == Alg::EdDSA
            && ed25519_compact::Signature::from_slice(sig)
                .map(|s| self.0.verify(msg, &s).is_ok())
                .unwrap_or(false)
    }
}
