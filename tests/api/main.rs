//! Integration tests: one binary (fast to link), each test run against both backends.
//! `cargo test --test api sqlite::` or `postgres::` runs one backend's half.
//!
//! PostgreSQL tests need a server: `AGENTPLANE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a role that may create databases and
//! roles). They fail, never skip, when it is unreachable. `scripts/test` starts one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod agents;
mod api_keys;
mod audit;
mod authz;
mod branding;
mod conformance;
mod console;
mod console_browser;
mod crash;
mod exports;
mod gateway;
mod identity;
mod input;
mod jobs;
mod ldap_peer;
mod meta;
mod mock_llm;
mod oidc_peer;
mod plans;
mod providers;
mod regions;
mod residency;
mod rls;
mod s3_peer;
mod scim;
mod settings;
mod shared_providers;
mod smtp_sink;
mod sso;
mod tenants;
mod transit;
mod usage;
mod webhooks;

/// A one-message chat request for the `helper` agent the gateway fixtures create.
pub(crate) fn gateway_hello() -> serde_json::Value {
    serde_json::json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]})
}
