//! Native-only tooling shared by the `claimguard` CLI, `make demo` and the tests: key
//! generation and token minting, an upstream that echoes what it received, and an Envoy
//! launcher that renders the same filter configuration istiod would generate.
//! Nothing here is compiled into the `.wasm` filter.

pub mod demo_edge;
pub mod echo;
pub mod envoy;
pub mod http;
pub mod jwks_server;
pub mod keys;
pub mod oci;
