//! The control plane: plans, the tenant lifecycle, provisioning and usage reporting.
//!
//! Business rules live here (validation, the lifecycle state machine from `core`, slug
//! generation, idempotency, what provisioning creates); persistence is the store's, HTTP is
//! the server's. Every change is handed to the store together with its audit event.

mod agents;
mod api_keys;
mod backups;
mod branding;
mod exports;
mod idempotency;
pub mod identity;
mod jobs;
mod keys;
mod providers;
mod provisioning;
mod residency;
mod retention;
mod settings;
mod shared_providers;
mod tenants;
mod webhooks;

pub mod error;
pub mod mail;
pub use agents::{CreateAgent, UpdateAgent};
pub use api_keys::{CreateApiKey, CreatedApiKey, KeyRejected};
pub use backups::RestoreBackup;
pub use branding::BrandingPatch;
pub use error::{AuthFailure, ControlError};
pub use exports::{
    DateRange, DownloadLink, ExportFormat, ExportType, ImportReport, ImportTarget, RequestExport,
};
pub use idempotency::{IdempotencyKey, Replayable};
pub use keys::{Keys, MasterRotation};
pub use providers::{CreateProvider, ProbeResult, UpdateProvider};
pub use provisioning::{JobOutcome, WorkerConfig};
pub use residency::{
    provider_host, MoveRegion, ProviderResidency, ResidencyReport, ResidencyStorage,
};
pub use settings::{EffectiveSetting, Feature};
pub use shared_providers::{AttachSharedProvider, CreateSharedProvider, UpdateSharedProvider};
pub use tenants::{CreateTenant, TenantCreated};
pub use webhooks::{signature as webhook_signature, CreatedWebhook, PutWebhook};

use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::plan::{validate_features, validate_plan_name, Plan, PlanLimits};
use agentplane_core::time::Timestamp;
use agentplane_core::usage::{QuotaState, UsageRecord, UsageSummary};
use agentplane_core::{DomainError, PlanId};
use agentplane_store::{Member, MemberFilter, Objects, Store, TimeRange};
use serde::Deserialize;
use std::sync::Arc;

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct ControlPlane {
    store: Arc<dyn Store>,
    objects: Objects,
    keys: Keys,
    key_uses: api_keys::KeyUses,
    cfg: WorkerConfig,
    identity: Arc<identity::IdentityState>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub id: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"^\s*[^\s\x00-\x1f\x7f]")]
    pub name: String,
    #[serde(deserialize_with = "agentplane_core::object_only")]
    pub limits: PlanLimits,
    /// Feature flags (letters, digits, `.`, `_`, `-`), at most 64.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub features: Vec<String>,
}

impl ControlPlane {
    pub fn new(
        store: Arc<dyn Store>,
        objects: Objects,
        keys: Keys,
        cfg: WorkerConfig,
        identity: identity::IdentityConfig,
    ) -> Self {
        Self {
            store,
            objects,
            keys,
            key_uses: Default::default(),
            cfg,
            identity: Arc::new(identity::IdentityState::new(identity)),
        }
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The object store of the tenant's region (data residency: its logos, exports and
    /// backups stay there).
    pub(crate) async fn objects_of(&self, ctx: &TenantCtx) -> Result<Objects> {
        if !self.objects.has_regions() {
            return Ok(self.objects.clone());
        }
        let tenant = self
            .store
            .get_tenant(ctx.tenant_id())
            .await?
            .ok_or(ControlError::NotFound("tenant"))?;
        Ok(self.objects.in_region(&tenant.region))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn list_plans(&self, page: &PageRequest) -> Result<Page<Plan>> {
        Ok(self.store.list_plans(page).await?)
    }

    pub async fn get_plan(&self, id: &str) -> Result<Plan> {
        let id = PlanId::parse(id).map_err(|_| ControlError::NotFound("plan"))?;
        self.store
            .get_plan(&id)
            .await?
            .ok_or(ControlError::NotFound("plan"))
    }

    /// Creates a plan; answers 201 with it (replayed for a repeated `Idempotency-Key`).
    pub async fn create_plan(
        &self,
        ctx: &PlatformCtx,
        raw: serde_json::Value,
        idem: Option<IdempotencyKey>,
    ) -> Result<Replayable> {
        let hash = idempotency::request_hash(&raw);
        if let Some(prior) = self.prior_answer(idem.as_ref(), &hash).await? {
            return Ok(prior);
        }
        let req: CreatePlan = parse_object(raw)?;
        let plan = Plan {
            id: PlanId::parse(&req.id)?,
            name: validate_plan_name(&req.name)?,
            limits: req.limits,
            features: req.features,
            created_at: Timestamp::now(),
        };
        plan.limits.validate()?;
        validate_features(&plan.features)?;
        let audit =
            NewAuditEvent::new(Chain::Platform, "plan.create", ctx.actor(), plan.created_at)
                .target("plan", &plan.id)
                .data(serde_json::json!({"limits": plan.limits, "features": plan.features}));
        let body =
            serde_json::to_value(&plan).map_err(|e| DomainError::invalid("body", e.to_string()))?;
        let record = idempotency::record(idem.as_ref(), &hash, 201, &body, plan.created_at);
        match self.store.insert_plan(&plan, audit, record).await {
            Ok(()) => Ok(Replayable {
                status: 201,
                body,
                replayed: false,
            }),
            Err(agentplane_store::StoreError::Conflict(
                agentplane_store::Conflict::IdempotencyKey,
            )) => self.winner_answer(idem.as_ref(), &hash).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Usage of a period (default: the current month) against the tenant's plan.
    pub async fn usage_summary(
        &self,
        ctx: &TenantCtx,
        period: Option<&str>,
    ) -> Result<UsageSummary> {
        let period = match period {
            Some(p) => validate_period(p)?,
            None => Timestamp::now().period(),
        };
        let tenant = self.tenant(ctx).await?;
        let plan = self
            .store
            .get_plan(&tenant.plan_id)
            .await?
            .ok_or(ControlError::NotFound("plan"))?;
        let c = self.store.usage_counter(ctx, &period).await?;
        let (mu, tu, mr, tr) = c.map_or((0, 0, 0, 0), |c| {
            (
                c.messages_used,
                c.tokens_used,
                c.messages_reserved,
                c.tokens_reserved,
            )
        });
        Ok(UsageSummary {
            tenant_id: ctx.tenant_id(),
            plan_id: plan.id,
            period,
            messages: QuotaState::new(mu, mr, plan.limits.monthly_messages),
            tokens: QuotaState::new(tu, tr, plan.limits.monthly_tokens),
        })
    }

    pub async fn export_usage(
        &self,
        ctx: &PlatformCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>> {
        if let (Some(f), Some(t)) = (range.from, range.to) {
            if f > t {
                return Err(DomainError::invalid("from", "must not be after `to`").into());
            }
        }
        Ok(self.store.all_usage_records(ctx, range, page).await?)
    }

    pub async fn list_users(
        &self,
        ctx: &TenantCtx,
        filter: &MemberFilter,
        page: &PageRequest,
    ) -> Result<Page<Member>> {
        Ok(self.store.list_members(ctx, filter, page).await?)
    }
}

/// A request body: a JSON object of the expected shape (never the positional array form).
pub fn parse_object<T: serde::de::DeserializeOwned>(
    raw: serde_json::Value,
) -> Result<T, DomainError> {
    if !raw.is_object() {
        return Err(DomainError::invalid("body", "must be a JSON object"));
    }
    serde_json::from_value(raw).map_err(|e| DomainError::invalid("body", e.to_string()))
}

fn validate_period(p: &str) -> Result<String, DomainError> {
    let b = p.as_bytes();
    let ok = b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
        && matches!(
            &p[5..],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if ok {
        Ok(p.to_owned())
    } else {
        Err(DomainError::invalid("period", "must be YYYY-MM"))
    }
}
