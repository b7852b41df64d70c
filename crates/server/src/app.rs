//! Wiring: configuration -> store -> planes -> router, and the serving loop with its
//! embedded job worker and graceful shutdown.

use crate::auth::{AuthSetupError, JwtVerifier};
use crate::config::KmsProvider;
use crate::config::{Config, ConfigError};
use crate::state::AppState;
use agentplane_control::{ControlPlane, Keys, WorkerConfig};
use agentplane_crypto::{Kms, LocalKms, TransitKms};
use agentplane_runtime::gateway::{Runtime, RuntimeConfig};
use agentplane_runtime::quota::{LeaseConfig, Quotas};
use agentplane_runtime::upstream::{UpstreamConfig, Upstreams};
use agentplane_store::{Objects, PgStore, RegionalStore, SqliteStore, Store, StoreError};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    // The cause is the error's source: `{:#}` prints it once, after this context.
    #[error("database")]
    Store(#[from] StoreError),
    #[error("JWT verification")]
    Auth(#[from] AuthSetupError),
    #[error("key management")]
    Kms(#[from] agentplane_crypto::CryptoError),
    #[error("provider HTTP client: {0}")]
    Upstream(String),
    #[error("outbound mail: {0}")]
    Mail(String),

    #[error("cannot create the data directory {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// Opens the configured store: PostgreSQL when `TENANT_CATALOG_DSN` is set (the schema must
/// have been migrated with `agentplane migrate`), else the embedded SQLite file, created and
/// migrated on the spot. With `AGENTPLANE_REGION_DATABASES`, each of those regions' tenants
/// are kept in the region's own database.
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, StartError> {
    let regions = cfg.region_databases()?;
    // Tenants can move between databases: each transaction on a tenant checks it is still
    // in the one it is using.
    let fenced = !regions.is_empty();
    let main = match &cfg.tenant_catalog_dsn {
        Some(dsn) => open_database(cfg, dsn.expose_secret(), fenced).await?,
        None => {
            std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
                path: cfg.data_dir.display().to_string(),
                source,
            })?;
            open_database(cfg, &cfg.sqlite_path().to_string_lossy(), fenced).await?
        }
    };
    if regions.is_empty() {
        return Ok(main);
    }
    let mut dbs = Vec::with_capacity(regions.len());
    for (region, dsn) in regions {
        dbs.push((
            region,
            open_database(cfg, dsn.expose_secret(), fenced).await?,
        ));
    }
    Ok(Arc::new(RegionalStore::open(main, dbs).await?))
}

/// One database: a PostgreSQL DSN, or (with SQLite) the file's path, its directory created.
async fn open_database(
    cfg: &Config,
    dsn: &str,
    fenced: bool,
) -> Result<Arc<dyn Store>, StartError> {
    let key_cache = std::time::Duration::from_millis(cfg.gateway.key_cache_ms);
    if cfg.tenant_catalog_dsn.is_some() {
        let role = (!cfg.db_role.is_empty()).then_some(cfg.db_role.as_str());
        let store = PgStore::connect(dsn, role, 16).await?;
        store.set_key_cache_ttl(key_cache);
        if fenced {
            store.fence_moves();
        }
        return Ok(Arc::new(store));
    }
    let path = std::path::Path::new(dsn);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let store = SqliteStore::open(path).await?;
    store.set_key_cache_ttl(key_cache);
    if fenced {
        store.fence_moves();
    }
    Ok(Arc::new(store))
}

/// The KMS that wraps tenant data keys: the local keyring (a keyring given in the
/// configuration, or the keyring file, created in the dev profile only) or Vault/OpenBao
/// Transit, whose key is created if missing. Fails fast with a clear error.
pub async fn open_kms(cfg: &Config) -> Result<Arc<dyn Kms>, StartError> {
    let k = &cfg.kms;
    match k.provider {
        KmsProvider::Local => match &k.master_keys {
            Some(ring) => Ok(Arc::new(LocalKms::from_keyring(ring.expose_secret())?)),
            None => {
                let path = cfg.master_key_path();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                Ok(Arc::new(LocalKms::from_file(
                    &path,
                    cfg.may_create_master_keys(),
                )?))
            }
        },
        KmsProvider::Transit => {
            let (Some(addr), Some(token)) = (&k.transit_addr, &k.transit_token) else {
                return Err(StartError::Kms(agentplane_crypto::CryptoError::Config(
                    "set AGENTPLANE_TRANSIT_ADDR and AGENTPLANE_TRANSIT_TOKEN".into(),
                )));
            };
            let transit = TransitKms::new(addr, token.clone(), &k.transit_mount, &k.transit_key)?;
            transit.ensure_key().await?;
            Ok(Arc::new(transit))
        }
    }
}

/// The control plane, wired from the configuration: used by `serve` and `worker` alike.
pub async fn control_plane(
    cfg: &Config,
    store: Arc<dyn Store>,
) -> Result<ControlPlane, StartError> {
    let keys = Keys::new(open_kms(cfg).await?);
    Ok(ControlPlane::new(
        store,
        open_objects(cfg)?,
        keys,
        worker_config(cfg),
        identity_config(cfg)?,
    ))
}

/// Sign-in and sessions, from the configuration (validated already).
pub fn identity_config(
    cfg: &Config,
) -> Result<agentplane_control::identity::IdentityConfig, StartError> {
    let id = &cfg.identity;
    let mailer = match (&id.smtp_url, &id.mail_from) {
        (Some(url), Some(from)) => Some(
            agentplane_control::mail::Mailer::from_url(url.expose_secret(), from)
                .map_err(|e| StartError::Mail(e.to_string()))?,
        ),
        _ => None,
    };
    Ok(agentplane_control::identity::IdentityConfig {
        issuer: id
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{}", cfg.listen)),
        base_domain: id.base_domain.as_ref().map(|d| d.to_ascii_lowercase()),
        access_ttl_secs: id.access_token_ttl_secs,
        session_ttl_secs: id.session_ttl_secs,
        invitation_ttl_secs: id.invitation_ttl_secs,
        signing_key_rotate_secs: id.signing_key_rotate_days * 86_400,
        leeway_secs: cfg.jwt.leeway_secs,
        mailer,
    })
}

/// The object store: `data_dir/objects` on the local filesystem, or the S3-compatible
/// store of `object_store_url`.
pub fn open_objects(cfg: &Config) -> Result<Objects, StartError> {
    Ok(Objects::open(
        &cfg.object_store,
        &cfg.data_dir.join("objects"),
    )?)
}

/// Runs the schema migrations as the owner (`AGENTPLANE_MIGRATE_DSN`, else the catalog DSN).
pub async fn migrate(cfg: &Config) -> Result<&'static str, StartError> {
    match cfg.migrate_dsn.as_ref().or(cfg.tenant_catalog_dsn.as_ref()) {
        Some(dsn) => {
            PgStore::migrate(dsn.expose_secret()).await?;
            // Each region's database is migrated with its own DSN.
            for (_, dsn) in cfg.region_databases()? {
                PgStore::migrate(dsn.expose_secret()).await?;
            }
            Ok("postgres")
        }
        None => {
            open_store(cfg).await?;
            Ok("sqlite")
        }
    }
}

pub fn worker_config(cfg: &Config) -> WorkerConfig {
    WorkerConfig {
        lease_ms: i64::try_from(cfg.worker.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        poll_interval: Duration::from_millis(cfg.worker.poll_interval_ms),
        purge_grace_ms: i64::try_from(cfg.worker.purge_grace_hours.saturating_mul(3_600_000))
            .unwrap_or(i64::MAX),
        allow_private_provider_urls: cfg.allow_private_provider_urls(),
        regions: cfg.regions.clone(),
        managed_identity_hosts: cfg.gateway.managed_identity_hosts.clone(),
    }
}

/// The runtime plane: provider adapters, quota leases, limits.
pub fn runtime(
    cfg: &Config,
    control: ControlPlane,
    store: Arc<dyn Store>,
) -> Result<Runtime, StartError> {
    let g = &cfg.gateway;
    let timeout = Duration::from_secs(g.upstream_timeout_secs);
    let upstreams =
        Upstreams::new(UpstreamConfig {
            request_timeout: timeout,
            first_byte_timeout: timeout,
            idle_timeout: timeout,
            max_retries: g.upstream_max_retries,
            // Unset: the instance metadata service (Azure VMs, AKS).
            identity_endpoint: Some(g.identity_endpoint.clone().unwrap_or_else(|| {
                "http://169.254.169.254/metadata/identity/oauth2/token".to_owned()
            })),
            identity_header: g
                .identity_header
                .as_ref()
                .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned())),
            ..UpstreamConfig::default()
        })
        .map_err(|e| StartError::Upstream(e.to_string()))?;
    let quotas = Quotas::start(
        store,
        LeaseConfig {
            ttl: Duration::from_millis(g.quota_lease_ms),
            idle: Duration::from_millis(g.quota_idle_ms),
        },
    );
    Ok(Runtime::new(
        control,
        upstreams,
        quotas,
        RuntimeConfig {
            default_max_tokens: g.default_max_tokens,
            allow_api_key_fallback: cfg.allow_api_key_fallback,
            config_cache: Duration::from_millis(g.config_cache_ms),
        },
    ))
}

/// A built server: its planes and router, ready to serve.
pub struct Server {
    state: AppState,
    max_body_bytes: usize,
    embedded_worker: bool,
}

impl Server {
    pub async fn build(cfg: &Config) -> Result<Self, StartError> {
        let store = open_store(cfg).await?;
        Self::with_store(cfg, store).await
    }

    pub async fn with_store(cfg: &Config, store: Arc<dyn Store>) -> Result<Self, StartError> {
        let dev_secret = cfg.dev_secret()?;
        let verifier = JwtVerifier::from_config(&cfg.jwt, dev_secret).await?;
        let control = control_plane(cfg, store.clone()).await?;
        // Without its KMS the server still serves what needs no new key (the gateway,
        // reads); sign-in retries the key on its next request.
        if let Err(e) = control.ensure_signing_key().await {
            tracing::warn!(error = %e, "no access-token signing key yet: sign-in will retry");
        }
        let runtime = runtime(cfg, control.clone(), store)?;
        Ok(Self {
            state: AppState::new(control, runtime, verifier),
            max_body_bytes: cfg.max_body_bytes,
            embedded_worker: cfg.worker.embedded,
        })
    }

    pub fn control(&self) -> &ControlPlane {
        self.state.control()
    }

    pub fn router(&self) -> axum::Router {
        crate::routes::router(self.state.clone(), self.max_body_bytes)
    }

    /// Serves until `shutdown` is cancelled, then drains requests and stops the worker.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let tasks = TaskTracker::new();
        if self.embedded_worker {
            let control = self.state.control().clone();
            let stop = shutdown.clone();
            tasks.spawn(async move { control.run_worker(stop).await });
        }
        {
            // API-key last-use times are written in batches, off the request path.
            let control = self.state.control().clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    let stopping = tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = tick.tick() => false,
                    };
                    if let Err(e) = control.flush_key_uses().await {
                        tracing::warn!(error = %e, "could not record API key use");
                    }
                    if stopping {
                        return;
                    }
                }
            });
        }
        let router = self.router();
        let stop = shutdown.clone();
        // Streams write small frames: without TCP_NODELAY each one after the first waits for
        // the client's delayed ACK (up to 40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        // `into_make_service` builds the routes once; serving the `Router` itself rebuilds
        // them (every route's boxed service and the route table) for each connection: about
        // 70 KB a connection, which dominated the server's memory with 1,000 clients.
        let res = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        self.state.runtime().quotas().shutdown().await;
        res
    }
}
