//! The only code that touches the proxy-wasm ABI. [`roots`] (which plugin a stream is for) and
//! [`flow`] (what each callback does, against a [`flow::Host`] trait) are pure and tested
//! natively with fakes; the glue that implements the trait with host calls, and the ABI
//! wrappers, are built for wasm only.

pub mod flow;
pub mod roots;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
mod hostabi;
