//! Per-tenant request rate and concurrent-run limits, from the tenant's plan.
//!
//! Both are enforced per server process, in memory (no write on the hot path): the rate is a
//! GCRA (a minute's allowance may be spent at once, then one request per `60 s / rpm`), the
//! concurrency a counter released when the run's permit drops. With several processes behind
//! a load balancer a tenant can reach the limit once per process; quotas, which are exact
//! across processes, are what bounds spending.

use agentplane_core::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the plan allows {rpm} requests per minute")]
    Rate { rpm: i64, retry_after: Duration },
    #[error("the plan allows {limit} runs in flight at once")]
    Concurrency { limit: i64 },
}

#[derive(Clone, Default)]
pub struct Limits {
    tenants: Arc<Mutex<HashMap<TenantId, TenantState>>>,
}

struct TenantState {
    /// GCRA's theoretical arrival time of the next request.
    tat: Instant,
    /// The rate `tat` was counted in: a plan change rescales what is owed.
    rpm: i64,
    in_flight: i64,
}

/// A run in flight; dropping it frees the slot.
pub struct RunPermit {
    limits: Limits,
    tenant: TenantId,
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        if let Some(s) = self.limits.lock().get_mut(&self.tenant) {
            s.in_flight -= 1;
        }
    }
}

impl Limits {
    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, TenantState>> {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits one request of `tenant` under its plan's `rpm` and `max_concurrent` runs.
    pub fn admit(
        &self,
        tenant: TenantId,
        rpm: i64,
        max_concurrent: i64,
    ) -> Result<RunPermit, LimitError> {
        let now = Instant::now();
        let mut tenants = self.lock();
        if tenants.len() > 100_000 {
            tenants.retain(|_, s| s.in_flight > 0 || s.tat > now);
        }
        let s = tenants.entry(tenant).or_insert(TenantState {
            tat: now,
            rpm,
            in_flight: 0,
        });
        if rpm <= 0 {
            return Err(LimitError::Rate {
                rpm,
                retry_after: Duration::from_secs(60),
            });
        }
        let interval = Duration::from_secs(60) / u32::try_from(rpm.min(60_000_000)).unwrap_or(1);
        if s.rpm != rpm {
            // The requests already counted, at the new plan's rate: a plan change applies to
            // the very next request.
            let owed = s.tat.saturating_duration_since(now);
            s.tat = now + owed.mul_f64(s.rpm.max(1) as f64 / rpm as f64);
            s.rpm = rpm;
        }
        let tolerance = Duration::from_secs(60).saturating_sub(interval);
        let tat = s.tat.max(now);
        let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
        if allowed_at > now {
            return Err(LimitError::Rate {
                rpm,
                retry_after: allowed_at - now,
            });
        }
        if s.in_flight >= max_concurrent {
            return Err(LimitError::Concurrency {
                limit: max_concurrent,
            });
        }
        s.tat = tat + interval;
        s.in_flight += 1;
        Ok(RunPermit {
            limits: self.clone(),
            tenant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new()
    }

    #[test]
    fn a_minutes_allowance_then_refused_with_retry_after() {
        let limits = Limits::default();
        let t = tenant();
        let permits: Vec<_> = (0..5).map(|_| limits.admit(t, 5, 100)).collect();
        assert!(permits.iter().all(Result::is_ok));
        match limits.admit(t, 5, 100) {
            Err(LimitError::Rate { retry_after, .. }) => {
                assert!(retry_after > Duration::from_secs(1));
                assert!(retry_after <= Duration::from_secs(12));
            }
            _ => unreachable!("the sixth request in a minute must be refused"),
        }
        // Another tenant is not affected.
        assert!(limits.admit(tenant(), 5, 100).is_ok());
    }

    #[test]
    fn concurrency_slots_free_when_permits_drop() {
        let limits = Limits::default();
        let t = tenant();
        let a = limits.admit(t, 1000, 2);
        let b = limits.admit(t, 1000, 2);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            limits.admit(t, 1000, 2).err(),
            Some(LimitError::Concurrency { limit: 2 })
        );
        drop(a);
        assert!(limits.admit(t, 1000, 2).is_ok());
    }

    #[test]
    fn a_new_rate_applies_to_what_was_already_counted() {
        let limits = Limits::default();
        let t = tenant();
        let _held: Vec<_> = (0..3).map(|_| limits.admit(t, 3, 100)).collect();
        assert!(limits.admit(t, 3, 100).is_err());
        // Five a minute: three were counted, two more may go now.
        assert!(limits.admit(t, 5, 100).is_ok());
        assert!(limits.admit(t, 5, 100).is_ok());
        assert!(limits.admit(t, 5, 100).is_err());
    }

    #[test]
    fn zero_means_none() {
        let limits = Limits::default();
        assert!(limits.admit(tenant(), 0, 10).is_err());
        assert!(limits.admit(tenant(), 10, 0).is_err());
    }
}
