//! claimguard: re-verify forwarded JWTs and enforce claim rules inside Envoy / Istio sidecars.
//!
//! The filter in layers, each importing only the layers below it (`tests/layers.rs` keeps it
//! so; `docs/ARCHITECTURE.md` draws them). Everything but [`host`] is plain Rust with no
//! `proxy_wasm` import, compiled and unit-tested natively:
//!
//! * [`base`]: strict JSON, the ABI's header-map encoding, time;
//! * [`config`]: at the bottom the raw serde model and [`config::ConfigError`]; at the top the
//!   compiler, the only place that knows every part, which yields the validated [`config::Config`];
//! * [`crypto`]: one file per key family behind [`crypto::Verifier`], fast paths with their crate
//!   references;
//! * [`token`]: finding the token in a request, strict compact-JWS parsing, claim paths;
//! * [`policy`]: canonical paths, rules and their evaluation, identity headers;
//! * [`keys`]: JWK sets, remote JWKS shared across worker VMs, ALB keys;
//! * [`verify`]: providers, signature and registered-claim checks, with `now` passed in;
//! * [`request`]: one request's decision, the verified-token cache, the decision memo, reporting;
//! * [`host`]: the only code that touches the proxy-wasm ABI (its glue and ABI wrappers are
//!   built for wasm only).
//!
//! The CLI, the benchmark and the dev tooling are the workspace member `tools/`, so this
//! crate's dependency tree is the filter's alone.

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

pub mod base;
pub mod config;
pub mod crypto;
pub mod keys;
pub mod policy;
pub mod request;
pub mod token;
pub mod verify;

pub mod host;
