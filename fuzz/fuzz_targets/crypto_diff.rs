#![no_main]
//! Fuzz target `crypto_diff`: see `checks::crypto_diff`.
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::crypto_diff(data));
