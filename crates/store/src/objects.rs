//! Blobs (logos, exports, backups) through one object-store interface: a local directory by
//! default, an S3-compatible bucket by configuration, and, for data residency, a store per
//! region. Every path starts with `tenants/<tenant id>/`, and only a `TenantCtx` opens one.

use crate::{Result, StoreError};
use agentplane_core::authz::TenantCtx;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use std::sync::Arc;

/// Where objects live: the local directory when `url` is unset, else an S3-compatible
/// bucket. `Debug` redacts the secret.
#[derive(Clone, Debug, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: Option<String>,
    /// The S3 API's address (MinIO, Ceph, R2, ...); unset: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<secrecy::SecretString>,
    /// Allow `http://` endpoints (a store on the local network).
    pub allow_http: bool,
    /// A store per region (`s3://...` with the settings above, or `file:///dir`); a tenant's
    /// objects live in its region's store. Regions not listed use the default store.
    pub regions: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Objects {
    inner: Arc<dyn ObjectStore>,
    regions: Arc<std::collections::BTreeMap<String, Arc<dyn ObjectStore>>>,
}

impl Objects {
    /// The configured stores: the default one (`cfg.url`, else `local_root`) and one per
    /// region.
    pub fn open(cfg: &ObjectStoreConfig, local_root: &std::path::Path) -> Result<Self> {
        let mut objects = match &cfg.url {
            None => Self::local(local_root)?,
            Some(url) => Self::s3(cfg, url)?,
        };
        let mut regions = std::collections::BTreeMap::new();
        for (region, url) in &cfg.regions {
            let store = match url.strip_prefix("file://") {
                Some(dir) => Self::local(std::path::Path::new(dir))?,
                None => Self::s3(cfg, url)?,
            };
            regions.insert(region.clone(), store.inner);
        }
        objects.regions = Arc::new(regions);
        Ok(objects)
    }

    /// Whether two regions keep their objects in the same store.
    pub fn same_store(&self, a: &str, b: &str) -> bool {
        match (self.regions.get(a), self.regions.get(b)) {
            (None, None) => true,
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            _ => false,
        }
    }

    /// The keys of every object of the tenant (as `put` takes them).
    pub async fn keys(&self, ctx: &TenantCtx) -> Result<Vec<String>> {
        let prefix = ObjectPath::from(format!("tenants/{}", ctx.tenant_id()));
        let strip = format!("tenants/{}/", ctx.tenant_id());
        let paths: Vec<ObjectPath> = self
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        Ok(paths
            .iter()
            .filter_map(|p| p.as_ref().strip_prefix(&strip).map(str::to_owned))
            .collect())
    }

    /// Copies one of the tenant's objects into `to` (another region's store), streaming.
    pub async fn copy_to(&self, ctx: &TenantCtx, key: &str, to: &Objects) -> Result<bool> {
        let Some(mut src) = self.get_stream(ctx, key).await? else {
            return Ok(false);
        };
        let upload = to.inner.put_multipart(&Self::path(ctx, key)?).await?;
        let mut w = object_store::WriteMultipart::new(upload);
        let copied: Result<()> = async {
            while let Some(piece) = src.try_next().await? {
                w.wait_for_capacity(4).await?;
                w.write(&piece);
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => {
                w.finish().await?;
                Ok(true)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Whether some region has a store of its own.
    pub fn has_regions(&self) -> bool {
        !self.regions.is_empty()
    }

    /// The store of `region` (the default one when the region has none).
    pub fn in_region(&self, region: &str) -> Objects {
        Self {
            inner: self
                .regions
                .get(region)
                .cloned()
                .unwrap_or_else(|| self.inner.clone()),
            regions: Arc::default(),
        }
    }
    /// Objects under a local directory (created if missing).
    pub fn local(root: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| StoreError::Config(format!("object directory {}: {e}", root.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(root)?;
        Ok(Self {
            inner: Arc::new(fs),
            regions: Arc::default(),
        })
    }

    /// An S3-compatible bucket (`s3://bucket` or `s3://bucket/prefix`). What the
    /// configuration leaves unset comes from the standard `AWS_*` environment variables (an
    /// instance role, say).
    pub fn s3(cfg: &ObjectStoreConfig, url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| StoreError::Config(format!("object store URL {url:?}: {e}")))?;
        if parsed.scheme() != "s3" || parsed.host_str().is_none_or(str::is_empty) {
            return Err(StoreError::Config(format!(
                "object store URL {url:?}: expected s3://bucket[/prefix]"
            )));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_url(url)
            .with_allow_http(cfg.allow_http);
        if let Some(v) = &cfg.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &cfg.region {
            b = b.with_region(v);
        }
        if let Some(v) = &cfg.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &cfg.secret_access_key {
            use secrecy::ExposeSecret;
            b = b.with_secret_access_key(v.expose_secret());
        }
        let s3 = b.build()?;
        let prefix = parsed.path().trim_matches('/');
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(Self {
            inner,
            regions: Arc::default(),
        })
    }

    /// Any `object_store` implementation (S3-compatible, in memory for tests, ...).
    pub fn from_store(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            regions: Arc::default(),
        }
    }

    /// Where the tenant's objects live (for the residency report).
    pub fn location(&self, ctx: &TenantCtx) -> String {
        format!("{} under tenants/{}/", self.inner, ctx.tenant_id())
    }

    fn path(ctx: &TenantCtx, key: &str) -> Result<ObjectPath> {
        let ok = !key.is_empty()
            && key.len() <= 200
            && key
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/._-".contains(&b));
        if !ok {
            return Err(StoreError::Config(format!("invalid object key {key:?}")));
        }
        Ok(ObjectPath::from(format!(
            "tenants/{}/{key}",
            ctx.tenant_id()
        )))
    }

    pub async fn put(&self, ctx: &TenantCtx, key: &str, bytes: Bytes) -> Result<()> {
        self.inner
            .put(&Self::path(ctx, key)?, PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    pub async fn get(&self, ctx: &TenantCtx, key: &str) -> Result<Option<Bytes>> {
        match self.inner.get(&Self::path(ctx, key)?).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a large object in parts from `next` (each call answers the next piece, `None`
    /// at the end). The object appears only once complete: a writer killed midway leaves
    /// none (the store aborts or garbage-collects the unfinished upload).
    pub async fn put_stream<F>(&self, ctx: &TenantCtx, key: &str, mut next: F) -> Result<u64>
    where
        F: FnMut() -> Result<Option<Vec<u8>>> + Send,
    {
        let upload = self.inner.put_multipart(&Self::path(ctx, key)?).await?;
        let mut w = object_store::WriteMultipart::new(upload);
        let mut written = 0u64;
        let res: Result<()> = async {
            while let Some(piece) = next()? {
                w.wait_for_capacity(4).await?;
                written += piece.len() as u64;
                w.write(&piece);
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                w.finish().await?;
                Ok(written)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// The object as a stream of pieces.
    pub async fn get_stream(
        &self,
        ctx: &TenantCtx,
        key: &str,
    ) -> Result<Option<futures::stream::BoxStream<'static, Result<Bytes>>>> {
        match self.inner.get(&Self::path(ctx, key)?).await {
            Ok(r) => Ok(Some(Box::pin(r.into_stream().map_err(StoreError::from)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, ctx: &TenantCtx, key: &str) -> Result<()> {
        match self.inner.delete(&Self::path(ctx, key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object of the tenant; answers how many.
    pub async fn purge_tenant(&self, ctx: &TenantCtx) -> Result<u64> {
        let prefix = ObjectPath::from(format!("tenants/{}", ctx.tenant_id()));
        let paths: Vec<ObjectPath> = self
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for p in &paths {
            match self.inner.delete(p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(paths.len() as u64)
    }
}
