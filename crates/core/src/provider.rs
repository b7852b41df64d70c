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

/// How calls to the provider are authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderAuth {
    /// The secret is an API key (`Authorization: Bearer`, or Azure's `api-key` header). For
    /// Azure, allowed only with `ALLOW_API_KEY_FALLBACK=true` (never in production).
    #[default]
    ApiKey,
    /// Azure: an Entra ID token of the host's managed identity (no secret is stored);
    /// `client_id` picks a user-assigned identity.
    ManagedIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Azure: an Entra ID token from the client-credentials grant; the secret is the app's
    /// client secret.
    ClientCredentials {
        /// The Entra ID (directory) tenant.
        tenant: String,
        client_id: String,
        /// Default `https://login.microsoftonline.com`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authority: Option<String>,
    },
}

impl ProviderAuth {
    /// Whether a secret goes with it.
    pub fn needs_secret(&self) -> bool {
        !matches!(self, Self::ManagedIdentity { .. })
    }

    pub fn validate(&self, kind: ProviderKind) -> Result<(), DomainError> {
        let ident = |field: &'static str, v: &str| {
            let ok = (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(DomainError::invalid(
                    field,
                    "must be 1-128 characters of A-Z, a-z, 0-9, - . _",
                ))
            }
        };
        match self {
            Self::ApiKey => Ok(()),
            _ if kind != ProviderKind::AzureOpenai => Err(DomainError::invalid(
                "auth",
                "Entra ID authentication is for azure_openai providers",
            )),
            Self::ManagedIdentity { client_id } => client_id
                .as_deref()
                .map_or(Ok(()), |c| ident("auth.client_id", c)),
            Self::ClientCredentials {
                tenant,
                client_id,
                authority,
            } => {
                ident("auth.tenant", tenant)?;
                ident("auth.client_id", client_id)?;
                match authority.as_deref() {
                    Some(a) if !a.starts_with("https://") || a.len() > 256 => Err(
                        DomainError::invalid("auth.authority", "must be an https:// URL"),
                    ),
                    _ => Ok(()),
                }
            }
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
    pub auth: ProviderAuth,
    /// Azure: the `api-version` query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Models the tenant offers through this provider (empty: any).
    pub models: Vec<String>,
    /// `sha256:` and the first 16 hex digits of the secret's SHA-256 (`none` without one).
    pub fingerprint: String,
    /// The tenant data-key version the secret is sealed with.
    pub key_version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
    /// Set when this is the tenant's use of a provider the platform shares (its plan must
    /// grant it); the secret then stays with the platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_id: Option<String>,
}

/// The Azure OpenAI `api-version` used when a provider names none.
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// Provider credentials the platform shares with the tenants of some plans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct SharedProvider {
    pub id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub auth: ProviderAuth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub models: Vec<String>,
    /// The plans whose tenants may use it.
    pub plans: Vec<String>,
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
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
