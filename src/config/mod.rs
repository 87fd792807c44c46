//! The plugin configuration. Two ends of the layer stack live here:
//!
//! * at the bottom, [`model`] (the raw serde model, as written) and [`error`] ([`ConfigError`]),
//!   which every layer's compiler imports;
//! * at the top, [`compile`]: the only place that knows every part. It parses the model,
//!   has each layer compile its part (keys, providers, rules, identity headers) and assembles
//!   the [`Config`] the request path runs on, which can only be obtained this way.

pub mod compile;
pub mod error;
pub mod model;

pub use compile::Config;
pub use error::ConfigError;
