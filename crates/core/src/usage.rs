//! Metering: per-period counters (what quotas check) and per-run records (what reports show).

use crate::time::Timestamp;
use crate::{PlanId, TenantId, UsageRecordId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageCounter {
    pub tenant_id: TenantId,
    /// `YYYY-MM` (UTC).
    pub period: String,
    pub messages_used: i64,
    pub tokens_used: i64,
    /// Reserved by runs in flight, not yet settled.
    pub messages_reserved: i64,
    pub tokens_reserved: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    pub id: UsageRecordId,
    pub tenant_id: TenantId,
    pub ts: Timestamp,
    pub agent_id: Option<String>,
    pub model: String,
    pub provider: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub latency_ms: i64,
    pub status: String,
    pub trace_id: Option<String>,
}

/// What `GET /v1/admin/tenants/{tenant_id}/usage` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageSummary {
    pub tenant_id: TenantId,
    pub plan_id: PlanId,
    pub period: String,
    pub messages: QuotaState,
    pub tokens: QuotaState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct QuotaState {
    pub used: i64,
    pub reserved: i64,
    pub limit: i64,
    pub remaining: i64,
}

impl QuotaState {
    pub fn new(used: i64, reserved: i64, limit: i64) -> Self {
        Self {
            used,
            reserved,
            limit,
            remaining: (limit - used - reserved).max(0),
        }
    }
}
