//! The HTTP surface of Agentplane.

pub mod auth;
pub mod config;
