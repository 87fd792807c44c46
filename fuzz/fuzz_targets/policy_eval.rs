#![no_main]
//! Fuzz target `policy_eval`: see `checks::policy_eval`.
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::policy_eval(data));
