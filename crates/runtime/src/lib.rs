//! The runtime plane: runs tenants' agents against their providers.
//!
//! - [`upstream`]: provider adapters behind one trait (OpenAI-compatible, Azure OpenAI / AI
//!   Foundry with an API key or an Entra ID token), with timeouts, retries and `traceparent`.
//! - [`trace`]: W3C trace context.

pub mod gateway;
pub mod limits;
pub mod quota;
mod relabel;
pub mod trace;
pub mod upstream;
