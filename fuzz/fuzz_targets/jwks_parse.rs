#![no_main]
//! Any bytes as a JWKS document (as fetched from an identity provider).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = claimguard::keys::jwk::parse_jwks(&v);
    }
});
