#![no_main]
//! Fuzz target `config_parse`: see `checks::config_parse`.
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::config_parse(data));
