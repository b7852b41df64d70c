//! Tenant API keys: `ap_live_<public id>_<secret>`. The public id finds the key; only the
//! SHA-256 of the secret is stored (the secret is 256 random bits, so a fast hash is right:
//! there is nothing to brute-force), and it is compared in constant time.

use crate::time::Timestamp;
use crate::{AgentId, ApiKeyId, DomainError, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

pub const PREFIX: &str = "ap_live_";
const PUBLIC_LEN: usize = 16;
const SECRET_LEN: usize = 64;

/// What a key may reach. Empty lists mean "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyScopes {
    #[serde(default)]
    pub agents: Vec<AgentId>,
    #[serde(default)]
    pub models: Vec<String>,
}

impl ApiKeyScopes {
    pub fn allows_agent(&self, agent: AgentId) -> bool {
        self.agents.is_empty() || self.agents.contains(&agent)
    }
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// A key as the API shows it: never its secret or hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: String,
    /// `ap_live_<public id>`: shown in lists so people can tell keys apart.
    pub prefix: String,
    pub scopes: ApiKeyScopes,
    pub created_by: String,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
}

impl ApiKey {
    pub fn usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A key whose secret matched and that is usable: what the auth layer turns into a context.
#[derive(Clone, Debug)]
pub struct VerifiedApiKey {
    pub tenant_id: TenantId,
    /// The tenant's plan when the key was checked (read with it, so plan changes apply at once).
    pub plan_id: crate::PlanId,
    /// The tenant's data-residency region.
    pub region: String,
    pub key_id: ApiKeyId,
    pub scopes: ApiKeyScopes,
}

/// The parts of a presented key, when it has the right shape.
pub fn split(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (public, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (hex(public, PUBLIC_LEN) && hex(secret, SECRET_LEN)).then_some((public, secret))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Builds a key from 8 + 32 random bytes: (full key, public id, secret hash).
pub fn assemble(public_bytes: &[u8; 8], secret_bytes: &[u8; 32]) -> (String, String, String) {
    let public = hex::encode(public_bytes);
    let secret = hex::encode(secret_bytes);
    let hash = hash_secret(&secret);
    (format!("{PREFIX}{public}_{secret}"), public, hash)
}

pub fn validate_key_name(v: &str) -> Result<String, DomainError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > 64 || v.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "name",
            "must be 1-64 printable characters",
        ));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_malformed_ones_are_refused() {
        let (key, public, hash) = assemble(&[7; 8], &[9; 32]);
        assert!(key.starts_with("ap_live_0707"));
        let (p, s) = split(&key).unwrap_or(("", ""));
        assert_eq!((p, hash_secret(s)), (public.as_str(), hash));
        for bad in [
            "",
            "ap_live_",
            "sk-abc",
            &key[..key.len() - 1],
            &key.replace("ap_live_", "ap_test_"),
            &key.to_uppercase(),
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
    }
}
