//! The only code that touches the proxy-wasm ABI. [`roots`] is pure (tested natively); the glue
//! and the ABI wrappers are built for wasm only.

pub mod roots;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
mod hostabi;
