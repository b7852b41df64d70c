//! Jobs of the durable queue.

use crate::time::Timestamp;
use crate::{JobId, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    /// Gave up after `max_attempts`; kept for inspection.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum JobKind {
    /// Creates a new tenant's default settings, usage counters and first admin.
    #[serde(rename = "tenant.provision")]
    ProvisionTenant,
    /// Removes a soft-deleted tenant's data for good.
    #[serde(rename = "tenant.purge")]
    PurgeTenant,
    /// Re-seals a tenant's secrets with its newest data key after a tenant-key rotation.
    #[serde(rename = "tenant.reseal")]
    ResealTenant,
    /// Calls the tenant's webhook: usage crossed 80% or 100% of a quota.
    #[serde(rename = "usage.notify")]
    NotifyUsage,
    /// Mails an invitation's link to the invited address.
    #[serde(rename = "invitation.send")]
    SendInvitation,
    /// Erases a data subject from every store of the tenant (GDPR art. 17).
    #[serde(rename = "user.erase")]
    EraseUser,
    /// Applies the tenant's retention settings (data and audit retention days).
    #[serde(rename = "tenant.retention")]
    Retention,
    /// Builds an export of the tenant's data (sealed, in the object store).
    #[serde(rename = "tenant.export")]
    Export,
    /// Builds a backup of the tenant (a full export, kept by count).
    #[serde(rename = "tenant.backup")]
    Backup,
    /// Restores a backup into a scratch tenant inside a transaction that is rolled back, and
    /// compares every table's records and hashes with the backup's manifest.
    #[serde(rename = "tenant.backup_verify")]
    VerifyBackup,
    /// Restores a backup into a new tenant (disaster recovery, or a drill).
    #[serde(rename = "tenant.restore")]
    Restore,
    /// Moves a tenant to another region: its objects to that region's store, then its pin.
    #[serde(rename = "tenant.move_region")]
    MoveRegion,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProvisionTenant => "tenant.provision",
            Self::PurgeTenant => "tenant.purge",
            Self::ResealTenant => "tenant.reseal",
            Self::NotifyUsage => "usage.notify",
            Self::SendInvitation => "invitation.send",
            Self::EraseUser => "user.erase",
            Self::Retention => "tenant.retention",
            Self::Export => "tenant.export",
            Self::Backup => "tenant.backup",
            Self::VerifyBackup => "tenant.backup_verify",
            Self::Restore => "tenant.restore",
            Self::MoveRegion => "tenant.move_region",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tenant.provision" => Self::ProvisionTenant,
            "tenant.purge" => Self::PurgeTenant,
            "tenant.reseal" => Self::ResealTenant,
            "usage.notify" => Self::NotifyUsage,
            "invitation.send" => Self::SendInvitation,
            "user.erase" => Self::EraseUser,
            "tenant.retention" => Self::Retention,
            "tenant.export" => Self::Export,
            "tenant.backup" => Self::Backup,
            "tenant.backup_verify" => Self::VerifyBackup,
            "tenant.restore" => Self::Restore,
            "tenant.move_region" => Self::MoveRegion,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub kind: JobKind,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: Timestamp,
    #[serde(skip)]
    pub lease_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What the running job last reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// Cancellation was asked for; a running job stops at its next heartbeat.
    pub cancel_requested: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobProgress {
    /// 0-100.
    pub percent: i64,
    pub message: String,
}

impl Job {
    pub fn new(
        tenant_id: TenantId,
        kind: JobKind,
        payload: serde_json::Value,
        run_at: Timestamp,
    ) -> Self {
        Self {
            id: JobId::new(),
            tenant_id,
            kind,
            payload,
            status: JobStatus::Queued,
            attempts: 0,
            max_attempts: 10,
            run_at,
            lease_token: None,
            lease_until: None,
            last_error: None,
            created_at: run_at,
            updated_at: run_at,
            progress: None,
            cancel_requested: false,
        }
    }

    /// Exponential backoff after a failed attempt: 1 s, 2 s, 4 s ... capped at 10 minutes.
    pub fn retry_delay_ms(attempts: i32) -> i64 {
        let exp = attempts.clamp(1, 20) as u32 - 1;
        1000_i64.saturating_mul(1_i64 << exp.min(10)).min(600_000)
    }
}
