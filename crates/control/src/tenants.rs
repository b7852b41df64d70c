//! Tenant creation (validated, idempotent, with a generated unique slug) and lifecycle.

use crate::idempotency::{record, request_hash, IdempotencyKey, Replayable};
use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::{Job, JobKind};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::tenant::{
    validate_region, validate_tenant_name, Email, Slug, Tenant, TenantStatus, Transition,
};
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, JobId, PlanId, TenantId};
use agentplane_store::{Conflict, NewTenant, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Organisation name, 1-100 printable characters.
    #[schema(min_length = 1, max_length = 100, pattern = r"^\s*[^\s\x00-\x1f\x7f]")]
    pub name: String,
    /// E-mail of the tenant's first admin, created by provisioning.
    #[schema(format = Email, max_length = 254, pattern = r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")]
    pub admin_email: String,
    /// Defaults to `free`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub plan_id: Option<String>,
    /// Subdomain label; derived from the name (made unique) when absent.
    #[schema(pattern = "^[a-z0-9](?:-?[a-z0-9])+$", min_length = 3, max_length = 40)]
    pub slug: Option<String>,
    /// Data-residency region; `default` when absent.
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub region: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantCreated {
    pub tenant: Tenant,
    pub provisioning_job_id: JobId,
}

const MAX_SLUG_ATTEMPTS: u32 = 20;

impl ControlPlane {
    pub async fn create_tenant(
        &self,
        ctx: &PlatformCtx,
        raw: Value,
        idem: Option<IdempotencyKey>,
    ) -> Result<Replayable> {
        let hash = request_hash(&raw);
        if let Some(prior) = self.prior_answer(idem.as_ref(), &hash).await? {
            return Ok(prior);
        }
        let req: CreateTenant = crate::parse_object(raw)?;
        let name = validate_tenant_name(&req.name)?;
        let admin_email = Email::parse(&req.admin_email)?;
        let region = validate_region(req.region.as_deref().unwrap_or("default"))?;
        if !self.cfg.regions.knows(&region) {
            return Err(agentplane_core::DomainError::invalid(
                "region",
                format!("{region} is not one of this deployment's regions"),
            )
            .into());
        }
        let plan_id = PlanId::parse(req.plan_id.as_deref().unwrap_or("free"))?;
        if self.store.get_plan(&plan_id).await?.is_none() {
            return Err(DomainError::invalid("plan_id", format!("no plan '{plan_id}'")).into());
        }
        let requested_slug = req.slug.as_deref().map(Slug::parse).transpose()?;
        let base_slug = match &requested_slug {
            Some(s) => s.clone(),
            None => Slug::from_name(&name)?,
        };

        for attempt in 0..MAX_SLUG_ATTEMPTS {
            let slug = match (&requested_slug, attempt) {
                (Some(s), _) => s.clone(),
                (None, 0) => base_slug.clone(),
                (None, n) => base_slug.with_suffix(n + 1)?,
            };
            if requested_slug.is_none() && self.store.slug_taken(&slug).await? {
                continue;
            }
            let now = Timestamp::now();
            let tenant = Tenant {
                id: TenantId::new(),
                slug,
                name: name.clone(),
                plan_id: plan_id.clone(),
                status: TenantStatus::Provisioning,
                region: region.clone(),
                created_at: now,
                updated_at: now,
                deleted_at: None,
                version: 1,
            };
            let job = Job::new(
                tenant.id,
                JobKind::ProvisionTenant,
                json!({"admin_email": admin_email}),
                now,
            );
            let created = TenantCreated {
                tenant: tenant.clone(),
                provisioning_job_id: job.id,
            };
            let body = serde_json::to_value(&created)
                .map_err(|e| DomainError::invalid("body", e.to_string()))?;
            let audit = NewAuditEvent::new(Chain::Tenant(tenant.id), "tenant.create", ctx.actor(), now)
                .target("tenant", tenant.id)
                .data(json!({"slug": tenant.slug, "plan_id": tenant.plan_id, "region": tenant.region, "job_id": job.id}))
                .pii(json!({"name": tenant.name, "admin_email": admin_email}));
            let idempotency = record(idem.as_ref(), &hash, 202, &body, now);
            let res = self
                .store
                .insert_tenant(NewTenant {
                    tenant,
                    provisioning_job: job,
                    audit,
                    idempotency,
                })
                .await;
            match res {
                Ok(()) => {
                    return Ok(Replayable {
                        status: 202,
                        body,
                        replayed: false,
                    })
                }
                Err(StoreError::Conflict(Conflict::IdempotencyKey)) => {
                    // A concurrent request with the same key won; answer what it answered.
                    return self.winner_answer(idem.as_ref(), &hash).await;
                }
                Err(StoreError::Conflict(Conflict::Slug)) if requested_slug.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::SlugTaken,
        ))
    }

    /// The tenant the context is for (it may be in any state).
    pub async fn tenant(&self, ctx: &TenantCtx) -> Result<Tenant> {
        self.store
            .get_tenant(ctx.tenant_id())
            .await?
            .ok_or(ControlError::NotFound("tenant"))
    }

    /// Looks a tenant up for the auth layer, before a context exists.
    pub async fn tenant_status(&self, id: TenantId) -> Result<Option<TenantStatus>> {
        Ok(self.store.get_tenant(id).await?.map(|t| t.status))
    }

    pub async fn list_tenants(
        &self,
        ctx: &PlatformCtx,
        page: &PageRequest,
    ) -> Result<Page<Tenant>> {
        Ok(self.store.list_tenants(ctx, page).await?)
    }

    pub async fn suspend_tenant(&self, ctx: &TenantCtx, reason: Option<String>) -> Result<Tenant> {
        let reason = reason.map(|r| r.chars().take(500).collect::<String>());
        self.transition(
            ctx,
            Transition::Suspend,
            "tenant.suspend",
            json!({"reason": reason}),
        )
        .await
    }

    pub async fn reactivate_tenant(&self, ctx: &TenantCtx) -> Result<Tenant> {
        self.transition(ctx, Transition::Reactivate, "tenant.reactivate", json!({}))
            .await
    }

    /// Soft delete: the tenant is refused at once; its purge job runs after the grace period.
    pub async fn delete_tenant(&self, ctx: &TenantCtx) -> Result<Tenant> {
        self.transition(ctx, Transition::Delete, "tenant.delete", json!({}))
            .await
    }

    /// Enqueues the purge of a soft-deleted tenant now.
    pub async fn purge_tenant(&self, ctx: &TenantCtx) -> Result<Job> {
        for _ in 0..3 {
            let t = self.tenant(ctx).await?;
            if t.status != TenantStatus::Deleted {
                return Err(DomainError::InvalidTransition {
                    from: t.status.as_str(),
                    verb: "purged",
                }
                .into());
            }
            let now = Timestamp::now();
            let job = Job::new(t.id, JobKind::PurgeTenant, json!({}), now);
            let next = Tenant {
                updated_at: now,
                version: t.version + 1,
                ..t.clone()
            };
            let audit = NewAuditEvent::new(
                Chain::Tenant(t.id),
                "tenant.purge_requested",
                ctx.actor(),
                now,
            )
            .target("tenant", t.id)
            .data(json!({"job_id": job.id}));
            match self
                .store
                .update_tenant(ctx, &next, t.version, Some(&job), audit)
                .await
            {
                Err(StoreError::Conflict(Conflict::Version)) => continue,
                r => r?,
            }
            return Ok(job);
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::ConcurrentUpdate,
        ))
    }

    /// Moves the tenant to another plan; quotas read the plan on every request, so the new
    /// limits apply to the next one.
    pub async fn change_plan(&self, ctx: &TenantCtx, plan_id: &str) -> Result<Tenant> {
        let plan_id = PlanId::parse(plan_id)?;
        if self.store.get_plan(&plan_id).await?.is_none() {
            return Err(DomainError::invalid("plan_id", format!("no plan '{plan_id}'")).into());
        }
        self.update(ctx, "tenant.change_plan", |t| {
            let data = json!({"from": t.plan_id, "to": plan_id});
            t.plan_id = plan_id.clone();
            Ok(data)
        })
        .await
    }

    async fn transition(
        &self,
        ctx: &TenantCtx,
        tr: Transition,
        action: &str,
        extra: Value,
    ) -> Result<Tenant> {
        let grace_ms = self.cfg.purge_grace_ms;
        self.update_with_job(ctx, action, |t, now| {
            let from = t.status;
            t.status = t.status.apply(tr)?;
            t.deleted_at = match t.status {
                TenantStatus::Deleted => Some(now),
                _ => None,
            };
            let job = (tr == Transition::Delete).then(|| {
                Job::new(
                    t.id,
                    JobKind::PurgeTenant,
                    json!({}),
                    now.plus_millis(grace_ms),
                )
            });
            let mut data = json!({"from": from, "to": t.status});
            if let (Some(obj), Value::Object(extra)) = (data.as_object_mut(), &extra) {
                obj.extend(extra.clone());
            }
            if let Some(j) = &job {
                data["purge_job_id"] = json!(j.id);
                data["purge_at"] = json!(j.run_at);
            }
            Ok((data, job))
        })
        .await
    }

    pub(crate) async fn update(
        &self,
        ctx: &TenantCtx,
        action: &str,
        mut change: impl FnMut(&mut Tenant) -> Result<Value, DomainError>,
    ) -> Result<Tenant> {
        self.update_with_job(ctx, action, |t, _| Ok((change(t)?, None)))
            .await
    }

    /// Read, change, write with optimistic concurrency; retried a few times on a race.
    async fn update_with_job(
        &self,
        ctx: &TenantCtx,
        action: &str,
        mut change: impl FnMut(&mut Tenant, Timestamp) -> Result<(Value, Option<Job>), DomainError>,
    ) -> Result<Tenant> {
        for _ in 0..3 {
            let current = self.tenant(ctx).await?;
            let now = Timestamp::now();
            let mut next = current.clone();
            let (data, job) = change(&mut next, now)?;
            next.updated_at = now;
            next.version = current.version + 1;
            let audit = NewAuditEvent::new(Chain::Tenant(current.id), action, ctx.actor(), now)
                .target("tenant", current.id)
                .data(data);
            match self
                .store
                .update_tenant(ctx, &next, current.version, job.as_ref(), audit)
                .await
            {
                Err(StoreError::Conflict(Conflict::Version)) => continue,
                r => r?,
            }
            return Ok(next);
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::ConcurrentUpdate,
        ))
    }
}
