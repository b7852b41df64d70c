//! API-key lookups held in memory, so that the gateway's hot path reads no database.
//!
//! What a lookup returns (the key, its hash, its tenant's status, plan and region) changes only
//! through a few writes, and every one of them drops the tenant's entries:
//! - in this process, the store's own write paths invalidate right after they commit (so a
//!   revoked key, a suspended tenant or a new plan apply from the very next request);
//! - on PostgreSQL, triggers on `api_keys` and `tenants` `NOTIFY agentplane_auth` with the
//!   tenant id, delivered at commit to every server process (and to this one), whoever wrote:
//!   another server, the worker, an operator in `psql`; a lost listener connection empties
//!   the cache;
//! - and every entry expires after the time-to-live, the bound for what nothing announces
//!   (another process writing an SQLite file).
//!
//! A lookup that raced with an invalidation is not cached: the cache's generation moves on
//! every invalidation, and an entry read before it is discarded.
//!
//! The same announcements cover the tenant's agents and providers (and the platform's shared
//! providers, which drop everything), for the runtime's cache of what a run calls: it takes a
//! [`KeyCache::generation`] before reading and asks [`KeyCache::changed_since`] on each use.

use crate::ApiKeyLookup;
use agentplane_core::TenantId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most this many keys are held (about 300 bytes each); a full cache drops its expired
/// entries, then everything.
const MAX_ENTRIES: usize = 50_000;

/// How long an entry lives when nothing invalidates it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct KeyCache {
    ttl_ms: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    entries: HashMap<String, (Instant, ApiKeyLookup)>,
    /// The generation of each tenant's last invalidation since the last clear.
    changed: HashMap<TenantId, u64>,
    cleared: u64,
}

/// A tenant's changes remembered one by one; beyond, the cache clears.
const MAX_CHANGED: usize = 100_000;

impl KeyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            inner: Mutex::default(),
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Sets the time-to-live (zero: nothing is cached) and empties the cache.
    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map is consistent after any panic (inserts and removes are single calls).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached lookup of `public_id`, if fresh.
    pub(crate) fn get(&self, public_id: &str) -> Option<ApiKeyLookup> {
        let inner = self.lock();
        let (at, found) = inner.entries.get(public_id)?;
        (at.elapsed() < self.ttl()).then(|| found.clone())
    }

    /// Taken before reading the database: [`KeyCache::insert`] keeps what was read only if no
    /// invalidation happened since.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub(crate) fn insert(&self, public_id: &str, read_at: u64, found: ApiKeyLookup) {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != read_at {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if inner.entries.len() >= MAX_ENTRIES {
                inner.entries.clear();
            }
        }
        inner
            .entries
            .insert(public_id.to_owned(), (Instant::now(), found));
    }

    /// Whether anything of `tenant` was invalidated after [`KeyCache::generation`] answered
    /// `read_at`.
    pub(crate) fn changed_since(&self, tenant: TenantId, read_at: u64) -> bool {
        let inner = self.lock();
        inner.cleared > read_at || inner.changed.get(&tenant).is_some_and(|g| *g > read_at)
    }

    /// Drops every key of `tenant` (and marks its configuration changed).
    pub(crate) fn invalidate(&self, tenant: TenantId) {
        let mut inner = self.lock();
        if inner.changed.len() >= MAX_CHANGED {
            drop(inner);
            return self.clear();
        }
        inner.generation += 1;
        let g = inner.generation;
        inner.changed.insert(tenant, g);
        inner.entries.retain(|_, (_, e)| e.key.tenant_id != tenant);
    }

    /// Drops everything (a missed notification cannot be told from none).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.cleared = inner.generation;
        inner.changed.clear();
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agentplane_core::api_key::{ApiKey, ApiKeyScopes};
    use agentplane_core::tenant::TenantStatus;
    use agentplane_core::time::Timestamp;
    use agentplane_core::{ApiKeyId, PlanId};

    fn lookup(tenant: TenantId) -> ApiKeyLookup {
        ApiKeyLookup {
            key: ApiKey {
                id: ApiKeyId::new(),
                tenant_id: tenant,
                name: "k".into(),
                prefix: "ap_live_x".into(),
                scopes: ApiKeyScopes::default(),
                created_by: "u".into(),
                created_at: Timestamp::now(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            },
            secret_hash: "h".into(),
            tenant_status: TenantStatus::Active,
            plan_id: PlanId::parse("free").unwrap(),
            region: "eu".into(),
        }
    }

    #[test]
    fn invalidation_drops_only_that_tenants_keys() {
        let cache = KeyCache::new(DEFAULT_TTL);
        let (a, b) = (TenantId::new(), TenantId::new());
        let g = cache.generation();
        cache.insert("a1", g, lookup(a));
        cache.insert("a2", g, lookup(a));
        cache.insert("b1", g, lookup(b));
        cache.invalidate(a);
        assert!(cache.get("a1").is_none() && cache.get("a2").is_none());
        assert_eq!(cache.get("b1").unwrap().key.tenant_id, b);
        cache.clear();
        assert!(cache.get("b1").is_none());
    }

    #[test]
    fn a_lookup_read_before_an_invalidation_is_not_cached() {
        let cache = KeyCache::new(DEFAULT_TTL);
        let t = TenantId::new();
        let read_at = cache.generation();
        // The revocation commits and invalidates while the old row is in flight.
        cache.invalidate(t);
        cache.insert("k", read_at, lookup(t));
        assert!(cache.get("k").is_none());
        let now = cache.generation();
        cache.insert("k", now, lookup(t));
        assert!(cache.get("k").is_some());
    }

    #[test]
    fn changes_are_told_per_tenant_and_a_clear_tells_everyone() {
        let cache = KeyCache::new(DEFAULT_TTL);
        let (a, b) = (TenantId::new(), TenantId::new());
        let read_at = cache.generation();
        assert!(!cache.changed_since(a, read_at));
        cache.invalidate(a);
        assert!(cache.changed_since(a, read_at));
        assert!(!cache.changed_since(b, read_at));
        let later = cache.generation();
        assert!(!cache.changed_since(a, later));
        cache.clear();
        assert!(cache.changed_since(a, later) && cache.changed_since(b, later));
        assert!(!cache.changed_since(b, cache.generation()));
    }

    #[test]
    fn entries_expire_and_a_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::from_millis(1));
        let t = TenantId::new();
        cache.insert("k", cache.generation(), lookup(t));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get("k").is_none());
        let off = KeyCache::new(Duration::ZERO);
        off.insert("k", off.generation(), lookup(t));
        assert!(off.get("k").is_none());
    }
}
