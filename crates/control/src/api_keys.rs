//! Tenant API keys for apps: created by a tenant admin and shown once, stored as a hash,
//! scoped to agents and models, expiring, revocable with immediate effect. Lookups are held
//! in memory by the store, which drops a tenant's keys whenever a key, the tenant's status, plan
//! or region changes (in every process, on PostgreSQL): the request path reads no database.
//! When a key was last used is buffered in memory and written in batches, never on the request
//! path.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::agent::Agent;
use agentplane_core::api_key::{
    assemble, hash_secret, split, validate_key_name, ApiKey, ApiKeyScopes, VerifiedApiKey,
};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::tenant::TenantStatus;
use agentplane_core::time::Timestamp;
use agentplane_core::{ApiKeyId, DomainError, TenantId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// When the key stops working; never when absent.
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub scopes: ApiKeyScopes,
}

/// A new key: `key` is shown this once and never again.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    pub key: String,
}

/// Why a presented key was refused. All but `TenantUnavailable` answer the same to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRejected {
    Invalid,
    TenantUnavailable,
}

/// Last-use times waiting to be written.
#[derive(Clone, Default)]
pub(crate) struct KeyUses(Arc<Mutex<HashMap<(TenantId, ApiKeyId), Timestamp>>>);

impl ControlPlane {
    pub async fn create_api_key(
        &self,
        ctx: &TenantCtx,
        req: CreateApiKey,
    ) -> Result<CreatedApiKey> {
        let name = validate_key_name(&req.name)?;
        let now = Timestamp::now();
        if req.expires_at.is_some_and(|e| e <= now) {
            return Err(DomainError::invalid("expires_at", "must be in the future").into());
        }
        for agent in &req.scopes.agents {
            if self.store.get_agent(ctx, *agent).await?.is_none() {
                return Err(DomainError::invalid(
                    "scopes.agents",
                    format!("{agent} is not an agent of this tenant"),
                )
                .into());
            }
        }
        let (mut public, mut secret) = ([0u8; 8], [0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut public);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let (key, public_id, hash) = assemble(&public, &secret);
        let api_key = ApiKey {
            id: ApiKeyId::new(),
            tenant_id: ctx.tenant_id(),
            name,
            prefix: format!("{}{public_id}", agentplane_core::api_key::PREFIX),
            scopes: req.scopes,
            created_by: ctx.actor().id().to_owned(),
            created_at: now,
            expires_at: req.expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "api_key.create", ctx.actor(), now)
            .target("api_key", api_key.id)
            .data(json!({"name": api_key.name, "prefix": api_key.prefix, "scopes": api_key.scopes, "expires_at": api_key.expires_at}));
        self.store
            .insert_api_key(ctx, &api_key, &public_id, &hash, audit)
            .await?;
        Ok(CreatedApiKey { api_key, key })
    }

    pub async fn list_api_keys(&self, ctx: &TenantCtx, page: &PageRequest) -> Result<Page<ApiKey>> {
        Ok(self.store.list_api_keys(ctx, page).await?)
    }

    /// Revokes a key; from the next request on it is refused.
    pub async fn revoke_api_key(&self, ctx: &TenantCtx, id: &str) -> Result<ApiKey> {
        let id: ApiKeyId = id.parse().map_err(|_| ControlError::NotFound("api key"))?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "api_key.revoke",
            ctx.actor(),
            now,
        )
        .target("api_key", id);
        self.store
            .revoke_api_key(ctx, id, now, audit)
            .await?
            .ok_or(ControlError::NotFound("api key"))
    }

    /// Checks a presented key: shape, a known public id, the secret (constant time), not
    /// revoked or expired, and its tenant active. Records the use for the next flush.
    pub async fn verify_api_key(
        &self,
        presented: &str,
    ) -> Result<std::result::Result<VerifiedApiKey, KeyRejected>> {
        let Some((public, secret)) = split(presented) else {
            return Ok(Err(KeyRejected::Invalid));
        };
        let Some(found) = self.store.find_api_key(public).await? else {
            return Ok(Err(KeyRejected::Invalid));
        };
        let (key, stored_hash) = (found.key, found.secret_hash);
        let presented_hash = hash_secret(secret);
        let matches: bool = presented_hash
            .as_bytes()
            .ct_eq(stored_hash.as_bytes())
            .into();
        let now = Timestamp::now();
        if !matches || !key.usable_at(now) {
            return Ok(Err(KeyRejected::Invalid));
        }
        if found.tenant_status != TenantStatus::Active {
            return Ok(Err(KeyRejected::TenantUnavailable));
        }
        if let Ok(mut uses) = self.key_uses.0.lock() {
            uses.insert((key.tenant_id, key.id), now);
        }
        Ok(Ok(VerifiedApiKey {
            tenant_id: key.tenant_id,
            plan_id: found.plan_id,
            region: found.region,
            key_id: key.id,
            scopes: key.scopes,
        }))
    }

    /// Writes the buffered last-use times (the server calls this every few seconds and at
    /// shutdown).
    pub async fn flush_key_uses(&self) -> Result<usize> {
        let batch: Vec<(TenantId, ApiKeyId, Timestamp)> = match self.key_uses.0.lock() {
            Ok(mut uses) => uses.drain().map(|((t, k), at)| (t, k, at)).collect(),
            Err(_) => return Ok(0),
        };
        self.store
            .touch_api_keys(&PlatformCtx::for_system("api-key-usage"), &batch)
            .await?;
        Ok(batch.len())
    }

    /// The agents a key may run: what `GET /v1/models` lists.
    pub async fn agents_for_key(
        &self,
        ctx: &TenantCtx,
        key: &VerifiedApiKey,
    ) -> Result<Vec<Agent>> {
        let mut out = Vec::new();
        let mut page = PageRequest::first(agentplane_core::page::MAX_LIMIT);
        loop {
            let batch = self.store.list_agents(ctx, &page).await?;
            out.extend(
                batch
                    .items
                    .into_iter()
                    .filter(|a| key.scopes.allows_agent(a.id) && key.scopes.allows_model(&a.model)),
            );
            match batch.next_cursor {
                Some(c) => {
                    page = PageRequest::new(Some(&c), Some(agentplane_core::page::MAX_LIMIT))?
                }
                None => return Ok(out),
            }
        }
    }
}
