//! One request, start to finish, as plain Rust: the decision ([`decision`]), the verified-token
//! cache ([`cache`]), the decision memo ([`memo`]) and what is reported ([`metrics`]).

pub mod cache;
pub mod decision;
pub mod memo;
pub mod metrics;
