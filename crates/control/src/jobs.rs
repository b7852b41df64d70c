//! The tenant's view of the durable job queue: its jobs with their progress, and cancellation.
//! Running handlers beat (renewing their lease and reporting progress) and stop when a beat
//! answers that cancellation was asked for.

use crate::provisioning::JobError;
use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::TenantCtx;
use agentplane_core::job::{Job, JobStatus};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::JobId;

impl ControlPlane {
    pub async fn list_jobs(&self, ctx: &TenantCtx, page: &PageRequest) -> Result<Page<Job>> {
        Ok(self.store.list_jobs(ctx, page).await?)
    }

    pub async fn job(&self, ctx: &TenantCtx, id: &str) -> Result<Job> {
        let id: JobId = id.parse().map_err(|_| ControlError::NotFound("job"))?;
        self.store
            .tenant_job(ctx, id)
            .await?
            .ok_or(ControlError::NotFound("job"))
    }

    /// Cancels a queued job at once, a running one at its next heartbeat (409 if it already
    /// finished).
    pub async fn cancel_job(&self, ctx: &TenantCtx, id: &str) -> Result<Job> {
        let id: JobId = id.parse().map_err(|_| ControlError::NotFound("job"))?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "job.cancel",
            ctx.actor(),
            now,
        )
        .target("job", id);
        let job = self
            .store
            .cancel_job(ctx, id, now, audit)
            .await?
            .ok_or(ControlError::NotFound("job"))?;
        match job.status {
            JobStatus::Succeeded | JobStatus::Dead => Err(ControlError::Conflict(
                crate::error::ConflictKind::AlreadyFinished,
            )),
            _ => Ok(job),
        }
    }

    /// A running job's heartbeat: renews its lease, records its progress, and answers
    /// `JobError::Cancelled` when cancellation was asked for.
    pub(crate) async fn beat(
        &self,
        job: &Job,
        percent: i64,
        message: &str,
    ) -> std::result::Result<(), JobError> {
        let cancel = self
            .store
            .heartbeat_job(
                job,
                Timestamp::now(),
                self.cfg.lease_ms,
                Some((percent, message)),
            )
            .await?;
        if cancel {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }
}
