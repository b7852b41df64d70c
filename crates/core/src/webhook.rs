//! Usage notifications: when a tenant's usage crosses 80% and 100% of a monthly quota, its
//! webhook is called once per quota, threshold and month, signed with HMAC-SHA256 as the
//! Standard Webhooks specification describes (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64>` over `id.timestamp.body`).

use crate::quota::QuotaKind;
use crate::time::Timestamp;
use crate::TenantId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The thresholds, in percent of the limit, that notify.
pub const THRESHOLDS: [i64; 2] = [80, 100];

/// A tenant's webhook as the API shows it: its signing secret is never shown again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Webhook {
    pub tenant_id: TenantId,
    pub url: String,
    /// `sha256:` and 16 hex digits of the signing secret.
    pub fingerprint: String,
    pub key_version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a usage notification says (the job's payload and the delivered body's `data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageNotice {
    pub period: String,
    #[schema(value_type = String)]
    pub quota: QuotaKind,
    /// 80 or 100.
    pub threshold: i64,
    pub used: i64,
    pub limit: i64,
}

/// The thresholds that usage going from `before` to `after` crosses.
///
/// The one-statement settlements (PostgreSQL's `agentplane_settle_alone`, migration 0024,
/// and SQLite's `settlement_batches`, migration 0025) test the same condition to hand a
/// crossing batch back to the path that notifies: change all three.
pub fn crossed(before: i64, after: i64, limit: i64) -> impl Iterator<Item = i64> {
    THRESHOLDS.into_iter().filter(move |t| {
        limit > 0
            && i128::from(before) * 100 < i128::from(*t) * i128::from(limit)
            && i128::from(after) * 100 >= i128::from(*t) * i128::from(limit)
    })
}

#[cfg(test)]
mod tests {
    use super::crossed;

    #[test]
    fn each_threshold_is_crossed_once() {
        assert_eq!(crossed(0, 3, 5).collect::<Vec<_>>(), Vec::<i64>::new());
        assert_eq!(crossed(3, 4, 5).collect::<Vec<_>>(), vec![80]);
        assert_eq!(crossed(4, 5, 5).collect::<Vec<_>>(), vec![100]);
        assert_eq!(crossed(0, 10, 5).collect::<Vec<_>>(), vec![80, 100]);
        assert_eq!(crossed(5, 6, 5).collect::<Vec<_>>(), Vec::<i64>::new());
        assert_eq!(crossed(0, 9, 0).collect::<Vec<_>>(), Vec::<i64>::new());
    }
}
