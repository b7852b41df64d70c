//! The HTTP surface of Agentplane: thin handlers over the planes.
//!
//! Architecture invariants of this crate:
//! - Handlers parse, authorize (through the extractors of [`extract`]) and call a plane;
//!   they hold no business rules and never touch a database pool.
//! - Admin routes are mounted from the action registry (`agentplane_core::action`), and
//!   the extractors take each route's permission from the same declaration.
//! - Every error becomes RFC 9457 problem+json in one place, [`problem`].

pub mod app;
pub mod auth;
pub mod config;
pub mod extract;
pub mod problem;
pub mod routes;
pub mod state;

pub use app::{Server, StartError};
