//! Retention: each tenant's `data.retention_days` and `audit.retention_days` applied by a
//! `tenant.retention` job. The worker schedules one per active tenant a day (and operators
//! can run them now).
//!
//! - **Data retention:** run records (usage records) older than the setting are deleted, and
//!   so are ended sessions and invitations.
//! - **Audit retention:** an audit event older than the setting keeps its place in the
//!   hash chain (so the chain still verifies), but its personal data is deleted. What
//!   remains is pseudonymous.

use crate::{ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::Job;
use agentplane_core::time::Timestamp;
use std::time::Duration;

/// How often the worker schedules retention for every tenant.
pub const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);

const DAY_MS: i64 = 86_400_000;

impl ControlPlane {
    /// Enqueues retention for every active tenant without a run in the last `every`.
    pub async fn schedule_retention(&self, platform: &PlatformCtx, every: Duration) -> Result<u64> {
        let ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let since = Timestamp::now().plus_millis(-ms);
        Ok(self.store.schedule_retention(platform, since).await?)
    }

    /// `admin.run_retention`: every active tenant's retention now, audited on the platform
    /// chain; answers how many tenants were scheduled.
    pub async fn run_retention_now(&self, platform: &PlatformCtx) -> Result<u64> {
        // "Now": every active tenant without a retention job in the last second.
        let n = self
            .schedule_retention(platform, Duration::from_secs(1))
            .await?;
        let audit = NewAuditEvent::new(
            Chain::Platform,
            "retention.run",
            platform.actor(),
            Timestamp::now(),
        )
        .data(serde_json::json!({"scheduled": n}));
        self.store.append_audit(audit).await?;
        Ok(n)
    }

    /// The `tenant.retention` job.
    pub(crate) async fn run_retention(&self, job: &Job) -> Result<()> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let now = Timestamp::now();
        self.remove_export_artifacts(&ctx, Some(now)).await?;
        let data_days = self.setting_i64(&ctx, "data.retention_days").await?;
        let audit_days = self.setting_i64(&ctx, "audit.retention_days").await?;
        let audit = NewAuditEvent::new(
            Chain::Tenant(job.tenant_id),
            "retention.applied",
            ctx.actor(),
            now,
        );
        let report = self
            .store
            .apply_retention(
                &ctx,
                job,
                now.plus_millis(-data_days.saturating_mul(DAY_MS)),
                now.plus_millis(-audit_days.saturating_mul(DAY_MS)),
                audit,
            )
            .await?;
        tracing::info!(tenant_id = %job.tenant_id, ?report, "retention applied");
        Ok(())
    }
}
