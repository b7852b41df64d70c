//! A cache of unwrapped data keys, so opening a secret costs no KMS round trip.

use crate::{CryptoError, DataKey, Kms, WrappedKey};
use agentplane_core::TenantId;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Caches unwrapped data keys per (tenant, data-key version).
///
/// Cache keys carry the tenant (invariant 1), so one tenant can never be handed another's
/// key. Bounded: when full, an arbitrary entry is evicted (the next use unwraps it again).
/// [`KeyCache::forget_tenant`] drops a tenant's keys (crypto-shredding); a key is zeroized
/// when the last `Arc` to it is dropped.
pub struct KeyCache {
    map: RwLock<HashMap<(TenantId, u32), Arc<DataKey>>>,
    capacity: usize,
}

impl KeyCache {
    /// The default bound on cached keys.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A cache holding at most `capacity` keys (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, tenant: TenantId, version: u32) -> Option<Arc<DataKey>> {
        self.read().get(&(tenant, version)).cloned()
    }

    /// Caches `key` as `tenant`'s data key `version` and returns the shared handle. If another
    /// caller cached the same key first, that one is kept and returned.
    pub fn insert(&self, tenant: TenantId, version: u32, key: DataKey) -> Arc<DataKey> {
        let mut map = self.write();
        if let Some(existing) = map.get(&(tenant, version)) {
            return Arc::clone(existing);
        }
        if map.len() >= self.capacity {
            if let Some(victim) = map.keys().next().copied() {
                map.remove(&victim);
            }
        }
        let key = Arc::new(key);
        map.insert((tenant, version), Arc::clone(&key));
        key
    }

    /// The cached key, or `wrapped` unwrapped through `kms` for `tenant` and cached.
    pub async fn get_or_unwrap(
        &self,
        kms: &dyn Kms,
        tenant: TenantId,
        version: u32,
        wrapped: &WrappedKey,
    ) -> Result<Arc<DataKey>, CryptoError> {
        if let Some(key) = self.get(tenant, version) {
            return Ok(key);
        }
        let key = kms.unwrap(tenant, wrapped).await?;
        Ok(self.insert(tenant, version, key))
    }

    /// Drops one key (e.g. after a data-key rotation retired it).
    pub fn forget(&self, tenant: TenantId, version: u32) {
        self.write().remove(&(tenant, version));
    }

    /// Drops every key of `tenant` (crypto-shredding, suspension); returns how many.
    pub fn forget_tenant(&self, tenant: TenantId) -> usize {
        let mut map = self.write();
        let before = map.len();
        map.retain(|(t, _), _| *t != tenant);
        before - map.len()
    }

    pub fn clear(&self) {
        self.write().clear();
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<(TenantId, u32), Arc<DataKey>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<(TenantId, u32), Arc<DataKey>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("entries", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::LocalKms;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts unwraps, to show the cache saves the round trip.
    struct Counting(LocalKms, AtomicUsize);

    #[async_trait]
    impl Kms for Counting {
        fn name(&self) -> String {
            self.0.name()
        }
        async fn current_version(&self) -> Result<u32, CryptoError> {
            self.0.current_version().await
        }
        async fn wrap(&self, t: TenantId, k: &DataKey) -> Result<WrappedKey, CryptoError> {
            self.0.wrap(t, k).await
        }
        async fn unwrap(&self, t: TenantId, w: &WrappedKey) -> Result<DataKey, CryptoError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.unwrap(t, w).await
        }
        async fn rewrap(&self, t: TenantId, w: &WrappedKey) -> Result<WrappedKey, CryptoError> {
            self.0.rewrap(t, w).await
        }
        async fn rotate(&self) -> Result<u32, CryptoError> {
            self.0.rotate().await
        }
    }

    #[tokio::test]
    async fn caches_per_tenant_and_forgets_a_tenant() {
        let kms = Counting(
            LocalKms::from_keyring(&LocalKms::new_keyring_spec()).unwrap(),
            AtomicUsize::new(0),
        );
        let cache = KeyCache::new();
        let (a, b) = (TenantId::new(), TenantId::new());
        let key_a = DataKey::generate();
        let wrapped_a = kms.wrap(a, &key_a).await.unwrap();
        let wrapped_b = kms.wrap(b, &DataKey::generate()).await.unwrap();

        for _ in 0..3 {
            let k = cache.get_or_unwrap(&kms, a, 1, &wrapped_a).await.unwrap();
            assert_eq!(k.expose_secret(), key_a.expose_secret());
        }
        assert_eq!(kms.1.load(Ordering::SeqCst), 1, "one KMS round trip");
        // The same version number of another tenant is another entry.
        assert!(cache.get(b, 1).is_none());
        // A's wrapped key cannot be smuggled in as B's.
        assert!(matches!(
            cache.get_or_unwrap(&kms, b, 2, &wrapped_a).await,
            Err(CryptoError::Decrypt)
        ));
        cache.get_or_unwrap(&kms, b, 1, &wrapped_b).await.unwrap();
        assert_eq!(cache.len(), 2);

        assert_eq!(cache.forget_tenant(a), 1);
        assert!(cache.get(a, 1).is_none());
        assert!(cache.get(b, 1).is_some());
        cache.forget(b, 1);
        assert!(cache.is_empty());
        assert!(format!("{cache:?}").contains("entries: 0"));
    }

    #[test]
    fn bounded() {
        let cache = KeyCache::with_capacity(3);
        let t = TenantId::new();
        for v in 0..10 {
            cache.insert(t, v, DataKey::generate());
            assert!(cache.len() <= 3);
        }
        assert!(cache.get(t, 9).is_some(), "the newest is kept");
        // Inserting an existing entry keeps the first key.
        let first = cache.get(t, 9).unwrap();
        let again = cache.insert(t, 9, DataKey::generate());
        assert_eq!(first.expose_secret(), again.expose_secret());
        cache.clear();
        assert!(cache.is_empty());
    }
}
