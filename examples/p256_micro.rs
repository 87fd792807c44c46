//! The ES256 fast path's parts timed one by one, inside V8 or natively: a verify, a key's
//! table, a field multiplication and squaring in this crate's field (`p256_field`) and in the
//! `p256` crate's, and the scalar steps of a verify (inversion of `s`, products, digits).
//! `make vm-profile` times whole verifies among everything else; this answers "which part,
//! and did this change make it faster" in seconds. Run it in Node's V8 (as `make vm-profile`
//! does for its example):
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 --example p256_micro
//! node --no-warnings examples/vm_profile.mjs target/wasm32-wasip1/release/examples/p256_micro.wasm
//! ```
//!
//! or natively with `cargo run --release --example p256_micro`. Prints µs per operation.

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::PrimeField;
use p256::{NistP256, Scalar, U256};
use std::hint::black_box;
use std::time::Instant;

type Fe = <NistP256 as p256::elliptic_curve::hazmat::FieldArithmetic>::FieldElement;

fn time(name: &str, per: f64, mut f: impl FnMut()) {
    // A few calls first (the generator table, and V8 tiers hot code up as it runs).
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while n == 0 || start.elapsed().as_millis() < 400 {
        f();
        n += 1;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64 / per;
    println!("{name:<44} {:>10.3} µs", us);
}

fn main() {
    let sk = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
    let vk = VerifyingKey::from(&sk);
    let key = claimguard::crypto::p256::P256Key::new(*vk.as_affine());
    let digests: Vec<[u8; 32]> = (0..16u8).map(|i| [i.wrapping_mul(37).wrapping_add(1); 32]).collect();
    let sigs: Vec<[u8; 64]> = digests
        .iter()
        .map(|d| {
            let s: p256::ecdsa::Signature = sk.sign_prehash(d).unwrap();
            s.to_bytes().into()
        })
        .collect();
    assert!(key.verify_prehashed(&digests[0], &sigs[0]));
    time("verify_prehashed (fixed-base)", 16.0, || {
        for (d, s) in digests.iter().zip(&sigs) {
            assert!(key.verify_prehashed(d, s));
        }
    });
    let point = *vk.as_affine();
    time("P-256 key table", 1.0, || {
        black_box(claimguard::crypto::p256::Table::new(black_box(&point)));
    });
    let mut a = Fe::from(12345u64) + Fe::ONE.double().invert().unwrap();
    let b = a.square() + Fe::from(99u64);
    time("Fe mul (x1000)", 1000.0, || {
        for _ in 0..1000 {
            a = black_box(a) * b;
        }
    });
    {
        use claimguard::crypto::p256_field::Fe as Fast;
        let mut x = Fast::from_bytes(&a.to_repr().into()).unwrap();
        let y = Fast::from_bytes(&b.to_repr().into()).unwrap();
        time("fast Fe mul (x1000)", 1000.0, || {
            for _ in 0..1000 {
                x = black_box(x).mul(&y);
            }
        });
        time("fast Fe square (x1000)", 1000.0, || {
            for _ in 0..1000 {
                x = black_box(x).square();
            }
        });
        time("fast Fe add (x1000)", 1000.0, || {
            for _ in 0..1000 {
                x = black_box(x).add(&y).sub(&y);
            }
        });
    }
    time("Fe square (x1000)", 1000.0, || {
        for _ in 0..1000 {
            a = black_box(a).square();
        }
    });
    time("Fe add (x1000)", 1000.0, || {
        for _ in 0..1000 {
            a = black_box(a) + b;
        }
    });
    time("Fe sub (x1000)", 1000.0, || {
        for _ in 0..1000 {
            a = black_box(a) - b;
        }
    });
    let s = Scalar::from_repr(sigs[0][32..].try_into().unwrap()).unwrap();
    time("Scalar invert_vartime", 1.0, || {
        black_box(black_box(s).invert_vartime().unwrap());
    });
    time("Scalar invert (ct)", 1.0, || {
        black_box(black_box(s).invert().unwrap());
    });
    time("Scalar mul", 1.0, || {
        black_box(black_box(s) * s);
    });
    time("Scalar to_repr", 1.0, || {
        black_box(black_box(s).to_repr());
    });
    time("Signature::from_slice + split", 1.0, || {
        let sig = p256::ecdsa::Signature::from_slice(black_box(&sigs[0][..])).unwrap();
        black_box(sig.split_scalars());
    });
    time("reduce digest", 1.0, || {
        black_box(<Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(black_box(
            &digests[0],
        ))));
    });
    time("signed_digits", 1.0, || {
        black_box(claimguard::crypto::fixed_base::signed_digits::<NistP256, 8>(black_box(
            &s,
        )));
    });
    time("Fe from_repr", 1.0, || {
        black_box(Fe::from_repr(black_box(s.to_repr())));
    });
}
