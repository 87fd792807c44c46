//! Leaf helpers with no claimguard imports: strict JSON, the ABI's header-map encoding, time.

pub mod abi;
pub mod clock;
pub mod json;
