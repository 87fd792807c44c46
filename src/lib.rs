//! claimguard: re-verify forwarded JWTs and enforce claim rules inside Envoy / Istio sidecars.
//!
//! The crate is split so that everything a request, a config or a JWKS can reach is plain
//! Rust with no `proxy_wasm` import, compiled and unit-tested natively:
//!
//! * [`config`]: plugin config (Istio `jwtRules`-shaped JSON) → validated, compiled [`config::Config`];
//! * [`jwks`]: JWK sets → verification keys, refusing weak or inconsistent keys;
//! * [`token`]: token extraction from headers / params / cookies and strict compact-JWS parsing;
//! * [`verify`]: signature and registered-claim checks, with `now` passed in;
//! * [`decision`]: the outcome of one request (allow, or the exact 401 response).
//!
//! [`host`] (wasm only) is the thin proxy-wasm layer, making its host calls through
//! [`hostabi`] (errors, never panics); [`devtools`] (native only) holds the key/token minting,
//! echo upstream and Envoy launcher shared by the CLI, `make demo` and tests.

// A panic inside the VM takes the workload's traffic down: outside tests, nothing that a
// request, a config or a JWKS can reach may unwrap, expect, panic or index unchecked.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod abi;
pub mod alb;
pub mod alg;
pub mod cache;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod decision;
pub mod identity;
pub mod json;
pub mod jwks;
pub mod jwks_cache;
pub mod memo;
pub mod metrics;
pub mod p256_fast;
pub mod path;
pub mod policy;
pub mod roots;
pub mod token;
pub mod verify;

// Developer tooling, never in the filter: failing loudly is right there.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
pub mod devtools;

#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod hostabi;
