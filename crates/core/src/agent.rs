//! Agents: a tenant's named definitions of what to run (provider and model, system prompt,
//! parameters), versioned.

use crate::time::Timestamp;
use crate::{AgentId, DomainError, ProviderId, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: AgentId,
    pub tenant_id: TenantId,
    pub name: String,
    pub provider_id: ProviderId,
    pub model: String,
    pub system_prompt: String,
    pub params: AgentParams,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Sampling parameters; absent ones are the provider's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Upper bound of completion tokens per run (also what quotas reserve).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_tokens: Option<i64>,
}

impl AgentParams {
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(DomainError::invalid(
                "params.temperature",
                "must be from 0 to 2",
            ));
        }
        if self.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(DomainError::invalid("params.top_p", "must be from 0 to 1"));
        }
        if self
            .max_tokens
            .is_some_and(|m| !(1..=1_000_000).contains(&m))
        {
            return Err(DomainError::invalid(
                "params.max_tokens",
                "must be from 1 to 1000000",
            ));
        }
        Ok(())
    }
}

pub fn validate_agent_name(v: &str) -> Result<String, DomainError> {
    crate::validate_ident_name("name", v)
}

pub fn validate_model(v: &str) -> Result<String, DomainError> {
    let ok = (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(DomainError::invalid(
            "model",
            "must be 1-128 characters of A-Z, a-z, 0-9, _ - . : / @",
        ))
    }
}

pub fn validate_system_prompt(v: &str) -> Result<String, DomainError> {
    if v.chars().count() > 100_000 || v.contains('\0') {
        return Err(DomainError::invalid(
            "system_prompt",
            "must be at most 100000 characters, without NUL",
        ));
    }
    Ok(v.to_owned())
}
