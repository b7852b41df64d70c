//! Provider credentials: which LLM endpoint a tenant's agents call, and how.

use crate::time::Timestamp;
use crate::{DomainError, ProviderId, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, llama.cpp (`Authorization: Bearer`).
    Openai,
    /// Azure OpenAI / AI Foundry (`api-key` header, `api-version` query).
    AzureOpenai,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::AzureOpenai => "azure_openai",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "openai" => Some(Self::Openai),
            "azure_openai" => Some(Self::AzureOpenai),
            _ => None,
        }
    }
}

/// A provider credential as the API shows it: the secret is never returned, only its
/// fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Provider {
    pub id: ProviderId,
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// Azure: the `api-version` query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Models the tenant offers through this provider (empty: any).
    pub models: Vec<String>,
    /// `sha256:` and the first 16 hex digits of the secret's SHA-256.
    pub fingerprint: String,
    /// The tenant data-key version the secret is sealed with.
    pub key_version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
}

pub fn validate_provider_name(v: &str) -> Result<String, DomainError> {
    crate::validate_ident_name("name", v)
}

pub fn validate_api_key(v: &str) -> Result<(), DomainError> {
    if v.is_empty() || v.len() > 4096 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(DomainError::invalid(
            "api_key",
            "must be 1-4096 visible characters",
        ));
    }
    Ok(())
}

pub fn validate_models(models: &[String]) -> Result<(), DomainError> {
    if models.len() > 200 {
        return Err(DomainError::invalid("models", "at most 200 models"));
    }
    for m in models {
        if m.is_empty()
            || m.len() > 128
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@".contains(&b))
        {
            return Err(DomainError::invalid(
                "models",
                format!("'{m}' is not a valid model name"),
            ));
        }
    }
    Ok(())
}

/// `sha256:` + 16 hex digits: enough to tell secrets apart, useless to recover one.
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", &hex::encode(Sha256::digest(secret))[..16])
}
