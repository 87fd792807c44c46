//! Native-only tooling beside the filter: the `claimguard` command, the benchmark and the OCI
//! packer (`src/bin/`), and what they share with `make demo` and the integration tests: an
//! upstream that echoes what it received, a JWKS server, an Envoy launcher that renders the
//! same filter configuration istiod would generate, and the test keys ([`keys`], the
//! `claimguard-testkeys` crate). Nothing here is compiled into the `.wasm` filter, and the
//! filter's dependency tree does not carry these crates.
//!
//! Developer tooling fails loudly: a panic here is a bug report, never a dropped request.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

pub use claimguard_testkeys as keys;

pub mod bench;
pub mod chain;
pub mod demo_edge;
pub mod echo;
pub mod envoy;
pub mod http;
pub mod jwks_server;
pub mod mesh;
pub mod oci;
