//! Plans: what a tenant may use each month.

use crate::time::Timestamp;
use crate::{DomainError, PlanId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub id: PlanId,
    pub name: String,
    pub limits: PlanLimits,
    /// Feature flags the plan grants (shown or hidden in the console and API).
    pub features: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Runs per calendar month (UTC).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub monthly_messages: i64,
    /// Prompt plus completion tokens per calendar month (UTC).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub monthly_tokens: i64,
    /// Request rate per tenant.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub requests_per_minute: i64,
    /// Runs in flight at once per tenant.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub max_concurrent_runs: i64,
}

impl PlanLimits {
    pub fn validate(&self) -> Result<(), DomainError> {
        let fields = [
            ("monthly_messages", self.monthly_messages),
            ("monthly_tokens", self.monthly_tokens),
            ("requests_per_minute", self.requests_per_minute),
            ("max_concurrent_runs", self.max_concurrent_runs),
        ];
        for (name, v) in fields {
            if !(0..=1_000_000_000_000).contains(&v) {
                return Err(DomainError::Invalid {
                    field: "limits",
                    reason: format!("{name} must be between 0 and 10^12"),
                });
            }
        }
        Ok(())
    }
}

pub fn validate_plan_name(name: &str) -> Result<String, DomainError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "name",
            "must be 1-100 printable characters",
        ));
    }
    Ok(name.to_owned())
}

pub fn validate_features(features: &[String]) -> Result<(), DomainError> {
    if features.len() > 64 {
        return Err(DomainError::invalid("features", "at most 64 features"));
    }
    for f in features {
        if f.is_empty()
            || f.len() > 64
            || !f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(DomainError::invalid(
                "features",
                format!("'{f}' is not a valid feature name"),
            ));
        }
    }
    Ok(())
}
