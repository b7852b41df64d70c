//! Data residency: where a tenant's data is stored and processed. The gateway refuses to send a
//! tenant's data to a provider outside its region (and records the refusal); the report lists
//! the tenant's storage, its providers with their verdicts, and the audit log's evidence.

use crate::{ControlPlane, Result};
use agentplane_core::audit::{AuditEvent, Chain, NewAuditEvent, Outcome};
use agentplane_core::authz::TenantCtx;
use agentplane_core::page::PageRequest;
use agentplane_core::provider::Provider;
use agentplane_core::residency::Verdict;
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use agentplane_store::{AuditFilter, Backend};
use serde::Serialize;
use serde_json::json;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ResidencyReport {
    pub tenant_id: TenantId,
    pub region: String,
    /// False when the deployment configures no regions (everything runs in one).
    pub enforced: bool,
    /// Provider hosts the region allows.
    pub allowed_hosts: Vec<String>,
    pub storage: ResidencyStorage,
    pub providers: Vec<ProviderResidency>,
    /// The audit log's record of residency decisions (refused runs, region moves), newest first.
    #[schema(value_type = Vec<Object>)]
    pub evidence: Vec<AuditEvent>,
    pub generated_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ResidencyStorage {
    /// `sqlite` or `postgresql`.
    pub database: &'static str,
    /// Which database holds the tenant's rows: its region's own (the region's name, with
    /// `AGENTPLANE_REGION_DATABASES`) or `main`.
    pub database_name: String,
    pub objects: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderResidency {
    pub provider_id: String,
    pub name: String,
    pub host: String,
    /// `allowed`, `out_of_region`, `unknown_region` or `not_enforced`.
    pub verdict: &'static str,
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::NotEnforced => "not_enforced",
        Verdict::Allowed => "allowed",
        Verdict::OutOfRegion => "out_of_region",
        Verdict::UnknownRegion => "unknown_region",
    }
}

/// The host a provider's base URL names.
pub fn provider_host(p: &Provider) -> String {
    reqwest::Url::parse(&p.base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

impl ControlPlane {
    /// May a tenant of `region` send data to `provider`, whose host is `host`
    /// ([`provider_host`])? A refusal is recorded in the tenant's audit trail before it is
    /// answered.
    pub async fn check_residency(
        &self,
        ctx: &TenantCtx,
        region: &str,
        provider: &Provider,
        host: &str,
    ) -> Result<Result<(), Verdict>> {
        let verdict = self.cfg.regions.verdict(region, host);
        if matches!(verdict, Verdict::Allowed | Verdict::NotEnforced) {
            return Ok(Ok(()));
        }
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "residency.refused",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("provider", provider.id)
        .outcome(Outcome::Denied)
        .data(json!({"region": region, "host": host, "verdict": verdict_str(verdict)}));
        self.store.append_audit(audit).await?;
        Ok(Err(verdict))
    }

    /// Where the tenant's data is stored and processed, with the audit log's evidence (reading
    /// it is audited like any read of the trail).
    pub async fn residency_report(&self, ctx: &TenantCtx) -> Result<ResidencyReport> {
        let tenant = self.tenant(ctx).await?;
        let regions = &self.cfg.regions;
        let mut providers = vec![];
        let mut page = PageRequest::first(agentplane_core::page::MAX_LIMIT);
        loop {
            let batch = self.store.list_providers(ctx, &page).await?;
            for rec in batch.items {
                let host = provider_host(&rec.provider);
                providers.push(ProviderResidency {
                    provider_id: rec.provider.id.to_string(),
                    name: rec.provider.name,
                    verdict: verdict_str(regions.verdict(&tenant.region, &host)),
                    host,
                });
            }
            match batch.next_cursor {
                Some(c) => {
                    page = PageRequest::new(Some(&c), Some(agentplane_core::page::MAX_LIMIT))?
                }
                None => break,
            }
        }
        let mut evidence = vec![];
        for action in ["residency.refused", "tenant.create"] {
            let filter = AuditFilter {
                action: Some(action.to_owned()),
                ..AuditFilter::default()
            };
            let read = agentplane_audit::read_trail(
                self.store.as_ref(),
                ctx,
                &filter,
                &PageRequest::first(100),
                Some("residency report"),
            )
            .await?;
            evidence.extend(read.items);
        }
        evidence.sort_by_key(|e| std::cmp::Reverse(e.ts));
        let database_name = self.store.database_of_region(&tenant.region);
        Ok(ResidencyReport {
            tenant_id: ctx.tenant_id(),
            enforced: regions.is_enforced(),
            allowed_hosts: regions.hosts(&tenant.region),
            region: tenant.region,
            storage: ResidencyStorage {
                database: match self.store.backend() {
                    Backend::Sqlite => "sqlite",
                    Backend::Postgres => "postgresql",
                },
                database_name,
                objects: self.objects_of(ctx).await?.location(ctx),
            },
            providers,
            evidence,
            generated_at: Timestamp::now(),
        })
    }
}

/// `admin.move_tenant_region`'s body.
#[derive(Clone, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRegion {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub region: String,
}

impl ControlPlane {
    /// `admin.move_tenant_region` (platform operators): queues the move of the tenant to
    /// another region of this deployment.
    pub async fn request_region_move(
        &self,
        ctx: &TenantCtx,
        req: MoveRegion,
    ) -> Result<agentplane_core::job::Job> {
        let to = agentplane_core::tenant::validate_region(&req.region)?;
        if !self.cfg.regions.knows(&to) {
            return Err(agentplane_core::DomainError::invalid(
                "region",
                format!("{to} is not one of this deployment's regions"),
            )
            .into());
        }
        let t = self.tenant(ctx).await?;
        if t.region == to {
            return Err(agentplane_core::DomainError::invalid(
                "region",
                format!("the tenant is in {to} already"),
            )
            .into());
        }
        let now = Timestamp::now();
        let job = agentplane_core::job::Job::new(
            t.id,
            agentplane_core::job::JobKind::MoveRegion,
            serde_json::json!({"from": t.region, "to": to}),
            now,
        );
        let audit = NewAuditEvent::new(
            Chain::Tenant(t.id),
            "tenant.region_move_requested",
            ctx.actor(),
            now,
        )
        .target("tenant", t.id)
        .data(serde_json::json!({"from": t.region, "to": to, "job_id": job.id}));
        self.store.enqueue(ctx, &job, audit).await?;
        Ok(job)
    }

    /// The `tenant.move_region` job: copies the tenant's objects into the new region's
    /// store, re-pins the tenant (audited; from then on its runs, objects and residency
    /// report follow the new region), then copies what was written meanwhile and deletes
    /// the old region's copies. Where the two regions keep their tenants in separate
    /// databases, the re-pinning moves the tenant's rows too (see the store's `moves.rs`).
    /// A retry picks up wherever the last attempt stopped.
    pub(crate) async fn run_region_move(&self, job: &agentplane_core::job::Job) -> Result<()> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let from = job.payload["from"].as_str().unwrap_or_default().to_owned();
        let to = job.payload["to"].as_str().unwrap_or_default().to_owned();
        let (old, new) = (self.objects.in_region(&from), self.objects.in_region(&to));
        let separate = !self.objects.same_store(&from, &to);
        let t = self.tenant(&ctx).await?;
        if t.region == from {
            let mut copied = 0u64;
            if separate {
                for key in old.keys(&ctx).await? {
                    copied += u64::from(old.copy_to(&ctx, &key, &new).await?);
                }
            }
            if self.store.shares_database(&from, &to) {
                self.update(&ctx, "tenant.region_moved", |t| {
                    t.region = to.clone();
                    Ok(serde_json::json!({"from": from, "to": to, "objects_copied": copied}))
                })
                .await?;
            } else {
                // Its rows move too, to the new region's database, where it is re-pinned.
                let audit = NewAuditEvent::new(
                    Chain::Tenant(t.id),
                    "tenant.region_moved",
                    ctx.actor(),
                    Timestamp::now(),
                )
                .target("tenant", t.id)
                .data(serde_json::json!({
                    "from": from,
                    "to": to,
                    "objects_copied": copied,
                    "database": self.store.database_of_region(&to),
                }));
                self.store.relocate_tenant(&ctx, &to, audit).await?;
            }
        } else if t.region != to {
            // Moved elsewhere since: nothing of this job is left to do.
            return Ok(self.store.complete_job(job, Timestamp::now()).await?);
        }
        if separate {
            // Objects written to the old store between the copy and the re-pin come along
            // too; then the old store forgets the tenant.
            for key in old.keys(&ctx).await? {
                if new.get_stream(&ctx, &key).await?.is_none() {
                    old.copy_to(&ctx, &key, &new).await?;
                }
                old.delete(&ctx, &key).await?;
            }
        }
        Ok(self.store.complete_job(job, Timestamp::now()).await?)
    }
}
