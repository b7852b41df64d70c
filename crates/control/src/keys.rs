//! Envelope encryption for the control plane: each tenant has versioned data keys, wrapped by
//! the KMS's key-encryption key and stored only wrapped. Secrets are sealed with the active
//! data key; the associated data binds tenant, kind and object id, so a ciphertext moved to
//! another row or tenant never opens. Unwrapped keys are cached per (tenant, version).

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::{Job, JobKind};
use agentplane_core::page::PageRequest;
use agentplane_core::time::Timestamp;
use agentplane_crypto::{
    open, seal, sealed_key_version, Aad, DataKey, KeyCache, Kms, WrappedKey, Zeroizing,
};
use agentplane_store::{Conflict, StoreError, TenantKey};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

/// The KMS and the cache of unwrapped data keys.
#[derive(Clone)]
pub struct Keys {
    kms: Arc<dyn Kms>,
    cache: Arc<KeyCache>,
}

impl Keys {
    pub fn new(kms: Arc<dyn Kms>) -> Self {
        Self {
            kms,
            cache: Arc::new(KeyCache::new()),
        }
    }

    pub(crate) fn kms(&self) -> &Arc<dyn Kms> {
        &self.kms
    }
}

/// What a master-key rotation did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MasterRotation {
    pub kms: String,
    pub kek_version: u32,
    pub keys_rewrapped: usize,
    /// The platform's own data keys re-wrapped too: access-token signing keys and shared
    /// providers' secrets.
    pub signing_keys_rewrapped: usize,
    pub tenants: usize,
    pub elapsed_ms: u64,
}

fn wrapped_of(k: &TenantKey) -> WrappedKey {
    WrappedKey {
        kms: k.kms.clone(),
        kek_version: u32::try_from(k.kek_version).unwrap_or(0),
        blob: k.wrapped.clone(),
    }
}

fn version_u32(v: i64) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| ControlError::Store(StoreError::Corrupt(format!("key version {v}"))))
}

impl ControlPlane {
    /// The tenant's active data key and its version; the first one is made on first use.
    async fn active_key(&self, ctx: &TenantCtx) -> Result<(i64, Arc<DataKey>)> {
        for _ in 0..3 {
            let keys = self.store.tenant_keys(ctx).await?;
            if let Some(k) = keys.iter().rev().find(|k| k.state == "active") {
                let key = self.unwrap_key(ctx, k).await?;
                return Ok((k.version, key));
            }
            let version = keys.last().map_or(1, |k| k.version + 1);
            let audit = NewAuditEvent::new(
                Chain::Tenant(ctx.tenant_id()),
                "keys.create",
                ctx.actor(),
                Timestamp::now(),
            )
            .target("tenant_key", version)
            .data(json!({"version": version, "kms": self.keys.kms.name()}));
            match self
                .create_key(ctx, version, false, None, Some(audit))
                .await
            {
                Ok(key) => return Ok((version, key)),
                Err(ControlError::Store(StoreError::Conflict(Conflict::Version))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::ConcurrentUpdate,
        ))
    }

    async fn create_key(
        &self,
        ctx: &TenantCtx,
        version: i64,
        retire_others: bool,
        job: Option<&Job>,
        audit: Option<NewAuditEvent>,
    ) -> Result<Arc<DataKey>> {
        let dek = DataKey::generate();
        let wrapped = self.keys.kms.wrap(ctx.tenant_id(), &dek).await?;
        let row = TenantKey {
            version,
            kms: wrapped.kms,
            kek_version: i64::from(wrapped.kek_version),
            wrapped: wrapped.blob,
            state: "active".into(),
            created_at: Timestamp::now(),
        };
        self.store
            .insert_tenant_key(ctx, &row, retire_others, job, audit)
            .await?;
        Ok(self
            .keys
            .cache
            .insert(ctx.tenant_id(), version_u32(version)?, dek))
    }

    async fn unwrap_key(&self, ctx: &TenantCtx, k: &TenantKey) -> Result<Arc<DataKey>> {
        let v = version_u32(k.version)?;
        Ok(self
            .keys
            .cache
            .get_or_unwrap(self.keys.kms.as_ref(), ctx.tenant_id(), v, &wrapped_of(k))
            .await?)
    }

    /// The tenant's active data key (for sealing large objects as streams).
    pub(crate) async fn active_data_key(&self, ctx: &TenantCtx) -> Result<(i64, Arc<DataKey>)> {
        self.active_key(ctx).await
    }

    /// The tenant's data key of `version` (to open what it sealed).
    pub(crate) async fn data_key_version(
        &self,
        ctx: &TenantCtx,
        version: i64,
    ) -> Result<Arc<DataKey>> {
        let keys = self.store.tenant_keys(ctx).await?;
        let k = keys.iter().find(|k| k.version == version).ok_or(
            agentplane_crypto::CryptoError::UnknownKeyVersion(version as u32),
        )?;
        self.unwrap_key(ctx, k).await
    }

    /// Seals `plaintext` for the object `(kind, id)` of the tenant; answers the sealed bytes
    /// and the data-key version used.
    pub(crate) async fn seal_secret(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        id: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, i64)> {
        let (version, key) = self.active_key(ctx).await?;
        let sealed = seal(
            &key,
            version_u32(version)?,
            &Aad::new(ctx.tenant_id(), kind, id),
            plaintext,
        );
        Ok((sealed, version))
    }

    /// Opens what `seal_secret` sealed for the same tenant, kind and id, with whichever key
    /// version sealed it.
    pub(crate) async fn open_secret(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        id: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.is_empty() {
            // Imported from an export, which never holds secrets.
            return Err(agentplane_core::DomainError::invalid(
                "secret",
                format!("provider {id} was imported without its secret (no export holds one): set it again"),
            )
            .into());
        }
        let version = i64::from(sealed_key_version(sealed)?);
        let keys = self.store.tenant_keys(ctx).await?;
        let k = keys.iter().find(|k| k.version == version).ok_or(
            agentplane_crypto::CryptoError::UnknownKeyVersion(version as u32),
        )?;
        let key = self.unwrap_key(ctx, k).await?;
        Ok(open(&key, &Aad::new(ctx.tenant_id(), kind, id), sealed)?)
    }

    /// The tenant's key versions (metadata only, never key material).
    pub async fn tenant_keys(&self, ctx: &TenantCtx) -> Result<Vec<TenantKey>> {
        Ok(self.store.tenant_keys(ctx).await?)
    }

    /// Tenant-key rotation: a new data key becomes active at once (new secrets are sealed with
    /// it), the old ones are retired (they still open what they sealed), and a durable job
    /// re-seals the tenant's secrets with the new key.
    pub async fn rotate_tenant_key(&self, ctx: &TenantCtx) -> Result<Job> {
        for _ in 0..3 {
            let keys = self.store.tenant_keys(ctx).await?;
            let version = keys.last().map_or(1, |k| k.version + 1);
            let now = Timestamp::now();
            let job = Job::new(
                ctx.tenant_id(),
                JobKind::ResealTenant,
                json!({"key_version": version}),
                now,
            );
            let audit = NewAuditEvent::new(
                Chain::Tenant(ctx.tenant_id()),
                "keys.rotate_tenant",
                ctx.actor(),
                now,
            )
            .target("tenant_key", version)
            .data(json!({"version": version, "reseal_job_id": job.id}));
            match self
                .create_key(ctx, version, true, Some(&job), Some(audit))
                .await
            {
                Ok(_) => return Ok(job),
                Err(ControlError::Store(StoreError::Conflict(Conflict::Version))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::ConcurrentUpdate,
        ))
    }

    /// The reseal job: every provider secret still sealed with an older key is opened and
    /// sealed again with the active one. Idempotent: a rerun skips what is done.
    pub(crate) async fn reseal_tenant(&self, ctx: &TenantCtx) -> Result<usize> {
        let (active, _) = self.active_key(ctx).await?;
        let mut resealed = 0;
        let mut page = PageRequest::first(agentplane_core::page::MAX_LIMIT);
        loop {
            let batch = self.store.list_providers(ctx, &page).await?;
            for rec in batch
                .items
                .iter()
                // A provider imported without its secret has nothing to re-seal.
                .filter(|r| r.provider.key_version < active && !r.sealed_secret.is_empty())
            {
                let id = rec.provider.id.to_string();
                let secret = self
                    .open_secret(ctx, crate::providers::SECRET_KIND, &id, &rec.sealed_secret)
                    .await?;
                let (sealed, version) = self
                    .seal_secret(ctx, crate::providers::SECRET_KIND, &id, &secret)
                    .await?;
                if self
                    .store
                    .reseal_provider(
                        ctx,
                        rec.provider.id,
                        rec.provider.key_version,
                        &sealed,
                        version,
                    )
                    .await?
                {
                    resealed += 1;
                }
            }
            match batch.next_cursor {
                Some(c) => {
                    page = PageRequest::new(Some(&c), Some(agentplane_core::page::MAX_LIMIT))?
                }
                None => break,
            }
        }
        if self.reseal_webhook_secret(ctx, active).await? {
            resealed += 1;
        }
        resealed += self.reseal_sso(ctx).await?;
        Ok(resealed)
    }

    /// Master-key rotation: the KMS makes a new key-encryption key version and every tenant's
    /// data keys are re-wrapped with it. Sealed data is not touched.
    pub async fn rotate_master_key(&self, platform: &PlatformCtx) -> Result<MasterRotation> {
        let res = self.rotate_master_key_inner(platform).await;
        if let Err(e) = &res {
            // A failure part-way (the KMS may already have a new version, some keys re-wrapped)
            // is recorded too; a rerun re-wraps what is left.
            let audit = NewAuditEvent::new(
                Chain::Platform,
                "keys.rotate_master",
                platform.actor(),
                Timestamp::now(),
            )
            .target("kms", self.keys.kms.name())
            .outcome(agentplane_core::audit::Outcome::Failure)
            .data(json!({"error": e.to_string()}));
            if let Err(a) = self.store.append_audit(audit).await {
                tracing::error!(error = %a, "could not record a failed master-key rotation");
            }
        }
        res
    }

    async fn rotate_master_key_inner(&self, platform: &PlatformCtx) -> Result<MasterRotation> {
        let started = std::time::Instant::now();
        let kek_version = self.keys.kms.rotate().await?;
        let all = self.store.all_tenant_keys(platform).await?;
        let tenants = {
            let mut t: Vec<_> = all.iter().map(|(t, _)| *t).collect();
            t.dedup();
            t.len()
        };
        let kms = self.keys.kms.clone();
        let store = self.store.clone();
        let results: Vec<Result<bool>> = futures::stream::iter(
            all.into_iter()
                .filter(|(_, k)| k.kek_version < i64::from(kek_version)),
        )
        .map(|(tenant, k)| {
            let kms = kms.clone();
            let store = store.clone();
            let ctx = platform.tenant(tenant);
            async move {
                let new = kms.rewrap(tenant, &wrapped_of(&k)).await?;
                Ok(store
                    .rewrap_tenant_key(
                        &ctx,
                        k.version,
                        &k.wrapped,
                        &new.kms,
                        i64::from(new.kek_version),
                        &new.blob,
                    )
                    .await?)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
        let mut keys_rewrapped = 0;
        for r in results {
            keys_rewrapped += usize::from(r?);
        }
        let signing_keys_rewrapped = self.rewrap_signing_keys(platform, kek_version).await?
            + self.rewrap_shared_providers(kek_version).await?;
        let report = MasterRotation {
            kms: self.keys.kms.name(),
            kek_version,
            keys_rewrapped,
            signing_keys_rewrapped,
            tenants,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let audit = NewAuditEvent::new(
            Chain::Platform,
            "keys.rotate_master",
            platform.actor(),
            Timestamp::now(),
        )
        .target("kms", &report.kms)
        .data(
            json!({"kek_version": kek_version, "keys_rewrapped": keys_rewrapped,
                "signing_keys_rewrapped": signing_keys_rewrapped, "tenants": tenants}),
        );
        self.store.append_audit(audit).await?;
        Ok(report)
    }

    /// Drops a purged tenant's unwrapped keys from memory.
    pub(crate) fn forget_tenant_keys(&self, ctx: &TenantCtx) {
        self.keys.cache.forget_tenant(ctx.tenant_id());
    }
}
