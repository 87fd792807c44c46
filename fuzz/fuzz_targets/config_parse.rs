#![no_main]
//! Any bytes as a plugin configuration.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = claimguard::config::Config::from_json(data);
});
