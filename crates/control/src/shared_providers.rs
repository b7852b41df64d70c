//! Provider credentials the platform shares with the tenants of some plans.
//!
//! - A platform operator registers one (`/v1/admin/shared-providers`). Its secret is sealed
//!   under its own data key, which the KMS wraps for the platform, so a master-key rotation
//!   re-wraps it.
//! - A tenant whose plan grants it attaches it (`POST .../shared-providers/{id}/attach`). That
//!   makes a provider row of the tenant's own, which its agents can use, pointing at the
//!   shared one. The tenant never sees the secret or changes the endpoint.
//! - Every run checks that the tenant's current plan still grants it, so a downgrade applies
//!   to the next request.

use crate::identity::signer::platform_scope;
use crate::providers::{fingerprint_of, secret_for, AZURE_DEFAULT_API_VERSION, SECRET_KIND};
use crate::{parse_object, ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::provider::{
    validate_provider_name, Provider, ProviderAuth, ProviderKind, SharedProvider,
};
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, PlanId, ProviderId};
use agentplane_crypto::{open, seal, Aad, DataKey, WrappedKey, Zeroizing};
use agentplane_store::{Conflict, ProviderRecord, SharedProviderRecord, StoreError};
use serde::Deserialize;
use serde_json::json;

const SHARED_KIND: &str = "shared_provider_secret";

/// `POST /v1/admin/shared-providers`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSharedProvider {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub auth: ProviderAuth,
    /// Write-only: sealed at once, never returned.
    #[schema(write_only, min_length = 1, max_length = 4096)]
    pub api_key: Option<String>,
    pub api_version: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    /// The plans whose tenants may use it.
    #[serde(default)]
    pub plans: Vec<String>,
}

/// `PATCH /v1/admin/shared-providers/{shared_id}`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSharedProvider {
    pub plans: Vec<String>,
}

/// `POST /v1/tenants/{tenant_id}/shared-providers/{shared_id}/attach`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachSharedProvider {
    /// The name in the tenant (default: the shared provider's).
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: Option<String>,
}

impl ControlPlane {
    async fn check_plans(&self, plans: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for p in plans {
            let id = PlanId::parse(p)?;
            if self.store.get_plan(&id).await?.is_none() {
                return Err(DomainError::invalid("plans", format!("no plan {p}")).into());
            }
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    pub async fn create_shared_provider(
        &self,
        platform: &PlatformCtx,
        raw: serde_json::Value,
    ) -> Result<SharedProvider> {
        let req: CreateSharedProvider = parse_object(raw)?;
        let name = validate_provider_name(&req.name)?;
        req.auth.validate(req.kind)?;
        let secret = secret_for(&req.auth, req.api_key.as_deref())?;
        let base_url = self.check_outbound_url("base_url", &req.base_url).await?;
        self.check_identity_host(&req.auth, &base_url)?;
        let plans = self.check_plans(&req.plans).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let data_key = DataKey::generate();
        let wrapped = self.keys.kms().wrap(platform_scope(), &data_key).await?;
        let sealed = seal(
            &data_key,
            1,
            &Aad::new(platform_scope(), SHARED_KIND, &id),
            secret.as_bytes(),
        );
        let now = Timestamp::now();
        let provider = SharedProvider {
            id: id.clone(),
            name,
            kind: req.kind,
            base_url,
            auth: req.auth,
            api_version: match req.kind {
                ProviderKind::AzureOpenai => Some(
                    req.api_version
                        .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_owned()),
                ),
                ProviderKind::Openai => None,
            },
            models: req.models,
            plans,
            fingerprint: fingerprint_of(secret),
            created_at: now,
            updated_at: now,
        };
        let audit = NewAuditEvent::new(
            Chain::Platform,
            "shared_provider.create",
            platform.actor(),
            now,
        )
        .target("shared_provider", &id)
        .data(json!({"name": provider.name, "base_url": provider.base_url,
                "plans": provider.plans, "fingerprint": provider.fingerprint}));
        let rec = SharedProviderRecord {
            provider: provider.clone(),
            wrapped_key: serde_json::to_string(&wrapped)
                .map_err(|e| ControlError::Internal(e.to_string()))?,
            sealed_secret: sealed,
        };
        match self
            .store
            .insert_shared_provider(platform, &rec, audit)
            .await
        {
            Err(StoreError::Conflict(Conflict::Name)) => Err(ControlError::Conflict(
                crate::error::ConflictKind::NameTaken,
            )),
            r => r.map(|()| provider).map_err(Into::into),
        }
    }

    pub async fn list_shared_providers(&self) -> Result<Vec<SharedProvider>> {
        Ok(self
            .store
            .list_shared_providers()
            .await?
            .into_iter()
            .map(|r| r.provider)
            .collect())
    }

    pub async fn set_shared_provider_plans(
        &self,
        platform: &PlatformCtx,
        id: &str,
        raw: serde_json::Value,
    ) -> Result<SharedProvider> {
        let req: UpdateSharedProvider = parse_object(raw)?;
        let plans = self.check_plans(&req.plans).await?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Platform,
            "shared_provider.plans",
            platform.actor(),
            now,
        )
        .target("shared_provider", id)
        .data(json!({"plans": plans}));
        if !self
            .store
            .set_shared_provider_plans(platform, id, &plans, now, audit)
            .await?
        {
            return Err(ControlError::NotFound("shared provider"));
        }
        self.store
            .get_shared_provider(id)
            .await?
            .map(|r| r.provider)
            .ok_or(ControlError::NotFound("shared provider"))
    }

    pub(crate) async fn tenant_plan(&self, ctx: &TenantCtx) -> Result<String> {
        Ok(self
            .store
            .get_tenant(ctx.tenant_id())
            .await?
            .ok_or(ControlError::NotFound("tenant"))?
            .plan_id
            .to_string())
    }

    /// The shared providers the tenant's plan grants.
    pub async fn available_shared_providers(&self, ctx: &TenantCtx) -> Result<Vec<SharedProvider>> {
        let plan = self.tenant_plan(ctx).await?;
        Ok(self
            .list_shared_providers()
            .await?
            .into_iter()
            .filter(|p| p.plans.contains(&plan))
            .collect())
    }

    /// Makes the shared provider usable by the tenant's agents: a provider row of its own
    /// that points at it. Another plan's shared provider answers 404.
    pub async fn attach_shared_provider(
        &self,
        ctx: &TenantCtx,
        shared_id: &str,
        raw: serde_json::Value,
    ) -> Result<Provider> {
        let req: AttachSharedProvider = parse_object(raw)?;
        let plan = self.tenant_plan(ctx).await?;
        let shared = self
            .store
            .get_shared_provider(shared_id)
            .await?
            .filter(|r| r.provider.plans.contains(&plan))
            .ok_or(ControlError::NotFound("shared provider"))?
            .provider;
        let name = validate_provider_name(req.name.as_deref().unwrap_or(&shared.name))?;
        let id = ProviderId::new();
        // The tenant's row holds no secret: an empty one, sealed like any other.
        let (sealed, key_version) = self
            .seal_secret(ctx, SECRET_KIND, &id.to_string(), b"")
            .await?;
        let now = Timestamp::now();
        let provider = Provider {
            id,
            tenant_id: ctx.tenant_id(),
            name,
            kind: shared.kind,
            base_url: shared.base_url.clone(),
            auth: shared.auth.clone(),
            api_version: shared.api_version.clone(),
            models: shared.models.clone(),
            fingerprint: "shared".into(),
            key_version,
            created_at: now,
            updated_at: now,
            version: 1,
            shared_id: Some(shared.id.clone()),
        };
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "provider.attach_shared",
            ctx.actor(),
            now,
        )
        .target("provider", id)
        .data(json!({"shared_id": shared.id, "name": provider.name}));
        let rec = ProviderRecord {
            provider: provider.clone(),
            sealed_secret: sealed,
        };
        match self.store.insert_provider(ctx, &rec, audit).await {
            Err(StoreError::Conflict(Conflict::Name)) => Err(ControlError::Conflict(
                crate::error::ConflictKind::NameTaken,
            )),
            r => r.map(|()| provider).map_err(Into::into),
        }
    }

    /// A tenant's shared provider as a run uses it: the platform's settings and secret, and
    /// the plans that grant it (the caller decides with the plan it holds).
    pub(crate) async fn shared_target(
        &self,
        mut row: Provider,
        shared_id: &str,
    ) -> Result<(Provider, Zeroizing<Vec<u8>>, Option<Vec<String>>)> {
        let rec = self
            .store
            .get_shared_provider(shared_id)
            .await?
            .ok_or(ControlError::NotFound("shared provider"))?;
        let wrapped: WrappedKey = serde_json::from_str(&rec.wrapped_key)
            .map_err(|e| ControlError::Internal(format!("shared provider key: {e}")))?;
        let data_key = self.keys.kms().unwrap(platform_scope(), &wrapped).await?;
        let secret = open(
            &data_key,
            &Aad::new(platform_scope(), SHARED_KIND, shared_id),
            &rec.sealed_secret,
        )?;
        // What is called is the platform's endpoint, whatever the tenant's row says.
        let s = rec.provider;
        row.kind = s.kind;
        row.base_url = s.base_url;
        row.auth = s.auth;
        row.api_version = s.api_version;
        row.models = s.models;
        Ok((row, secret, Some(s.plans)))
    }

    /// Master-key rotation: re-wraps the shared providers' data keys.
    pub(crate) async fn rewrap_shared_providers(&self, kek_version: u32) -> Result<usize> {
        let mut n = 0;
        for r in self.store.list_shared_providers().await? {
            let wrapped: WrappedKey = serde_json::from_str(&r.wrapped_key)
                .map_err(|e| ControlError::Internal(format!("shared provider key: {e}")))?;
            if wrapped.kek_version < kek_version {
                let new = self.keys.kms().rewrap(platform_scope(), &wrapped).await?;
                let text = serde_json::to_string(&new)
                    .map_err(|e| ControlError::Internal(e.to_string()))?;
                self.store
                    .rewrap_shared_provider(&r.provider.id, &text)
                    .await?;
                n += 1;
            }
        }
        Ok(n)
    }
}
