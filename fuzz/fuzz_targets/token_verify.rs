#![no_main]
//! Fuzz target `token_verify`: see `checks::token_verify`.
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::token_verify(data));
