#![no_main]
//! Fuzz target `jwks_parse`: see `checks::jwks_parse`.
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::jwks_parse(data));
