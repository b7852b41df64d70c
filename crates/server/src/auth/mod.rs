//! Authentication: turning a request's credentials into a verified
//! [`Principal`](agentplane_core::authz::Principal).
//!
//! - [`jwt`]: admin bearer tokens (`JWT_SHARED_SECRET` / `JWT_ALGORITHM`, or a JWKS).

pub mod jwt;

pub use jwt::{bearer_token, mint_hs256, AuthError, AuthSetupError, JwtVerifier, MAX_TOKEN_BYTES};
