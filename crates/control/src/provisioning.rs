//! The job worker: claims due jobs with a lease and runs them. Each job's effects commit in
//! the same transaction as its completion, guarded by the lease, so a worker killed at any
//! point leaves either nothing (the job is retried when the lease expires) or everything.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, Role, TenantCtx};
use agentplane_core::job::{Job, JobKind};
use agentplane_core::tenant::{Email, TenantStatus, Transition};
use agentplane_core::time::Timestamp;
use agentplane_store::{Conflict, Member, Provisioning, StoreError};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub lease_ms: i64,
    pub poll_interval: Duration,
    pub purge_grace_ms: i64,
    /// Whether provider base URLs may point at private networks (self-hosted models).
    pub allow_private_provider_urls: bool,
    /// The deployment's regions (data residency); empty: not enforced.
    pub regions: agentplane_core::residency::Regions,
    /// The hosts tenants' providers may reach with the deployment's own managed identity
    /// (its Entra ID token); empty: no provider may use it.
    pub managed_identity_hosts: Vec<agentplane_core::residency::HostPattern>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease_ms: 60_000,
            poll_interval: Duration::from_millis(500),
            purge_grace_ms: 30 * 24 * 3_600_000,
            allow_private_provider_urls: false,
            regions: Default::default(),
            managed_identity_hosts: Vec::new(),
        }
    }
}

/// What running one job did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobOutcome {
    pub job: Job,
    /// `succeeded`, `retry_scheduled`, `dead` or `lease_lost`.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The settings every tenant starts with: the registry's defaults, stored as version 1 so a
/// later change of a default in code never silently changes an existing tenant's policy.
fn default_settings() -> Vec<(String, serde_json::Value)> {
    agentplane_core::settings::SETTINGS
        .iter()
        .map(|s| (s.key.to_owned(), s.default_value()))
        .collect()
}

/// Why a job's attempt failed (recorded on the job; the queue retries it with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
    /// Cancellation was asked for: the job stops as `cancelled`.
    #[error("cancelled")]
    Cancelled,
}

impl ControlPlane {
    /// Claims and runs the next due job, if any.
    pub async fn run_next_job(&self) -> Result<Option<JobOutcome>> {
        let Some(job) = self
            .store
            .claim_job(Timestamp::now(), self.cfg.lease_ms)
            .await?
        else {
            return Ok(None);
        };
        let span = tracing::info_span!("job", job_id = %job.id, tenant_id = %job.tenant_id, kind = job.kind.as_str());
        let _enter = span.enter();
        let res = if job.cancel_requested {
            Err(JobError::Cancelled)
        } else {
            match job.kind {
                JobKind::ProvisionTenant => self.provision(&job).await.map_err(JobError::from),
                JobKind::PurgeTenant => self.purge(&job).await.map_err(JobError::from),
                JobKind::ResealTenant => self.reseal(&job).await,
                JobKind::NotifyUsage => self.notify_usage(&job).await,
                JobKind::SendInvitation => self
                    .send_invitation(&job)
                    .await
                    .map_err(|e| JobError::Failed(e.to_string())),
                JobKind::Retention => self.run_retention(&job).await.map_err(|e| match e {
                    ControlError::Store(s) => JobError::Store(s),
                    e => JobError::Failed(e.to_string()),
                }),
                JobKind::Export | JobKind::Backup => self.run_export(&job).await,
                JobKind::VerifyBackup => self.run_verify_backup(&job).await,
                JobKind::Restore => self.run_restore(&job).await,
                JobKind::MoveRegion => self.run_region_move(&job).await.map_err(|e| match e {
                    ControlError::Store(s) => JobError::Store(s),
                    e => JobError::Failed(e.to_string()),
                }),
                JobKind::EraseUser => self.run_erasure(&job).await.map_err(|e| match e {
                    ControlError::Store(s) => JobError::Store(s),
                    e => JobError::Failed(e.to_string()),
                }),
            }
        };
        let now = Timestamp::now();
        let (result, error) = match res {
            Ok(()) => ("succeeded", None),
            Err(JobError::Store(StoreError::Conflict(Conflict::LeaseLost))) => ("lease_lost", None),
            Err(JobError::Cancelled) => match self.store.finish_cancelled(&job, now).await {
                Ok(()) => ("cancelled", None),
                Err(StoreError::Conflict(Conflict::LeaseLost)) => ("lease_lost", None),
                Err(e) => return Err(e.into()),
            },
            Err(e) => {
                tracing::warn!(error = %e, attempt = job.attempts, "job failed");
                self.store.fail_job(&job, &e.to_string(), now).await?;
                let dead = job.attempts >= job.max_attempts;
                (
                    if dead { "dead" } else { "retry_scheduled" },
                    Some(e.to_string()),
                )
            }
        };
        let job = self.store.get_job(job.id).await?.unwrap_or(job);
        Ok(Some(JobOutcome {
            job,
            result: result.into(),
            error,
        }))
    }

    /// Runs jobs until `shutdown` is cancelled.
    pub async fn run_worker(&self, shutdown: CancellationToken) {
        let platform = PlatformCtx::for_system("worker/scheduler");
        let mut retention_due = std::time::Instant::now();
        loop {
            if std::time::Instant::now() >= retention_due {
                match self
                    .schedule_retention(&platform, crate::retention::RETENTION_EVERY)
                    .await
                {
                    Ok(n) if n > 0 => tracing::info!(tenants = n, "retention scheduled"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "scheduling retention"),
                }
                match self.schedule_backups(&platform).await {
                    Ok(n) if n > 0 => tracing::info!(tenants = n, "backups scheduled"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "scheduling backups"),
                }
                retention_due = std::time::Instant::now() + std::time::Duration::from_secs(3600);
            }
            match self.run_next_job().await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "job worker"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
            }
        }
    }

    async fn provision(&self, job: &Job) -> Result<(), StoreError> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let now = Timestamp::now();
        let tenant = match self.store.get_tenant(job.tenant_id).await? {
            Some(t) if t.status == TenantStatus::Provisioning => t,
            // Already provisioned, or deleted meanwhile: nothing to do.
            _ => return self.store.complete_job(job, now).await,
        };
        let email = job
            .payload
            .get("admin_email")
            .and_then(|v| v.as_str())
            .and_then(|s| Email::parse(s).ok())
            .ok_or_else(|| {
                StoreError::Corrupt("provisioning job without a valid admin_email".into())
            })?;
        let email = email.as_str().to_lowercase();
        // The person may be known already (a member of another tenant): same user id.
        let user_id = self
            .store
            .find_user_by_email(&email)
            .await?
            .unwrap_or_default();
        let admin = Member {
            tenant_id: tenant.id,
            user_id,
            email,
            name: None,
            roles: vec![Role::TenantAdmin.as_str().to_owned()],
            custom_roles: Vec::new(),
            status: "active".into(),
            has_password: false,
            external_id: None,
            created_at: now,
            updated_at: now,
            last_sign_in_at: None,
        };
        let p = Provisioning {
            settings: default_settings(),
            first_admin: admin.clone(),
            period: now.period(),
        };
        let mut next = tenant.clone();
        next.status = tenant
            .status
            .apply(Transition::FinishProvisioning)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        next.updated_at = now;
        next.version = tenant.version + 1;
        let audit = NewAuditEvent::new(
            Chain::Tenant(tenant.id),
            "tenant.provisioned",
            ctx.actor(),
            now,
        )
        .target("tenant", tenant.id)
        .data(json!({
            "job_id": job.id,
            "attempt": job.attempts,
            "settings": p.settings.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "first_admin_user_id": admin.user_id,
            "period": p.period,
        }))
        .pii(json!({"first_admin_email": admin.email}));
        self.store
            .finish_provisioning(&ctx, job, &next, &p, audit, now)
            .await
    }

    async fn reseal(&self, job: &Job) -> Result<(), JobError> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        self.beat(job, 0, "re-sealing secrets with the newest data key")
            .await?;
        let resealed = match self.reseal_tenant(&ctx).await {
            Ok(n) => n,
            Err(crate::ControlError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(JobError::Failed(format!("reseal: {e}"))),
        };
        self.beat(job, 100, &format!("re-sealed {resealed} secrets"))
            .await?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(job.tenant_id),
            "keys.resealed",
            ctx.actor(),
            now,
        )
        .target("tenant", job.tenant_id)
        .data(json!({"job_id": job.id, "resealed": resealed}));
        self.store.append_audit(audit).await?;
        Ok(self.store.complete_job(job, now).await?)
    }

    async fn purge(&self, job: &Job) -> Result<(), StoreError> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let now = Timestamp::now();
        let region = match self.store.get_tenant(job.tenant_id).await? {
            Some(t) if t.status == TenantStatus::Deleted => t.region,
            // Reactivated (or already purged) since the job was scheduled.
            _ => return self.store.complete_job(job, now).await,
        };
        // Objects first: if the worker dies after this, the retry finds them gone and goes on.
        let objects = self.objects.in_region(&region).purge_tenant(&ctx).await?;
        let audit = NewAuditEvent::new(
            Chain::Tenant(job.tenant_id),
            "tenant.purge",
            ctx.actor(),
            now,
        )
        .target("tenant", job.tenant_id)
        .data(json!({"objects": objects}));
        self.store.purge_tenant(&ctx, job, audit, now).await?;
        self.forget_tenant_keys(&ctx);
        Ok(())
    }
}
