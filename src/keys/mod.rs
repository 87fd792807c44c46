//! Verification keys: JWK sets parsed into keys ([`jwk`]), remote JWKS fetched once per
//! proxy and shared across worker VMs ([`remote`]), and AWS ALB per-`kid` keys ([`alb`]).

pub mod alb;
pub mod jwk;
pub mod remote;
