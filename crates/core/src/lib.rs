//! Domain types of Agentplane. This crate does no I/O: no database, no network, no clock
//! reads except through the values callers pass in.
//!
//! The most important type here is [`authz::TenantCtx`]: every read or write of tenant-owned
//! data takes one, and the only ways to get one are [`authz::Principal::authorize_tenant`]
//! (after the caller's tenant access and permission were checked) and the named system
//! bypass [`authz::TenantCtx::for_system_job`].

pub mod action;
pub mod agent;
pub mod api_key;
pub mod audit;
pub mod authz;
pub mod branding;
pub mod error;
pub mod identity;
pub mod ids;
pub mod job;
pub mod page;
pub mod plan;
pub mod provider;
pub mod quota;
pub mod residency;
pub mod settings;
pub mod tenant;
pub mod time;
pub mod usage;
pub mod webhook;

/// A name that is also an identifier (agents, providers): 1-64 of A-Z, a-z, 0-9, `_ - .`.
pub fn validate_ident_name(field: &'static str, v: &str) -> Result<String, DomainError> {
    let v = v.trim();
    let ok = (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(DomainError::invalid(
            field,
            "must be 1-64 characters of A-Z, a-z, 0-9, _ - .",
        ))
    }
}

/// Deserializes a struct only from a JSON object. serde's derived structs also accept a
/// positional array (`[1, 2, 3]`), which an API must not: use with
/// `#[serde(deserialize_with = "agentplane_core::object_only")]`.
pub fn object_only<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    let v = serde_json::Value::deserialize(d)?;
    if !v.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

pub use error::DomainError;
pub use ids::{
    AgentId, ApiKeyId, AuditEventId, InvitationId, JobId, PlanId, ProviderId, SessionId, TenantId,
    UsageRecordId, UserId,
};
