//! The fuzz targets' checks on stable Rust, in `make test`: every committed seed under
//! `fuzz/corpus/<target>/` (and any inputs a local `make fuzz` has added under
//! `target/fuzz-corpus/<target>/`) goes through the same function the cargo-fuzz target
//! calls (`fuzz/fuzz_targets/checks.rs`). A crash `make fuzz` finds becomes a seed here, and
//! stays a regression test on every machine, with or without a nightly toolchain.

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("target/fuzz-corpus").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{target}: {} fails its check", p.display());
            n += 1;
        }
    }
    assert!(n > 0, "{target}: no seeds under fuzz/corpus/{target}");
}

#[test]
fn token_verify_seeds() {
    replay("token_verify", checks::token_verify);
}

#[test]
fn jwks_parse_seeds() {
    replay("jwks_parse", checks::jwks_parse);
}

#[test]
fn config_parse_seeds() {
    replay("config_parse", checks::config_parse);
}

#[test]
fn policy_eval_seeds() {
    replay("policy_eval", checks::policy_eval);
}

#[test]
fn crypto_diff_seeds() {
    replay("crypto_diff", checks::crypto_diff);
}
