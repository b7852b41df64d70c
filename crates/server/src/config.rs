//! The server's configuration: one typed [`Config`], read from (lowest to highest
//! precedence) built-in defaults, an optional TOML file, then environment variables.
//!
//! - TOML keys are the field names (`listen`, `data_dir`, ...), with the nested tables
//!   `[jwt]`, `[worker]`, `[kms]` and `[providers]`; an unknown key is an error.
//! - Every field has an `AGENTPLANE_*` variable (see [`ENV_VARS`]); the seed's names
//!   `TENANT_CATALOG_DSN`, `JWT_SHARED_SECRET`, `JWT_ALGORITHM` and `ALLOW_API_KEY_FALLBACK`
//!   are the primary names of their fields. Setting two names of one field to different
//!   values is an error.
//! - Secrets (`tenant_catalog_dsn`, `migrate_dsn`, `jwt.shared_secret`, `kms.master_keys`,
//!   `kms.transit_token`) also accept
//!   `<NAME>_FILE` (and `<key>_file` in TOML): the file is read and its trailing newlines
//!   dropped. Secrets are `secrecy` types, so `Debug` never prints them.
//! - [`Config::validate`] refuses insecure settings before anything starts.

use jsonwebtoken::Algorithm;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Shortest accepted HMAC shared secret, in bytes.
pub const MIN_SHARED_SECRET_BYTES: usize = 32;
/// Smallest accepted `max_body_bytes` (1 KiB).
pub const MIN_BODY_BYTES: usize = 1024;
/// Largest accepted `max_body_bytes` (64 MiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Largest accepted clock leeway for JWT time claims.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// File name of the embedded SQLite database inside `data_dir`.
pub const SQLITE_FILE: &str = "agentplane.db";
/// File name of the generated development JWT secret inside `data_dir`.
pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";
/// File name of the local master keyring inside `data_dir` (when `kms.master_key_file` is unset).
pub const MASTER_KEYRING_FILE: &str = "master.keys";
/// Default mount path of the Vault/OpenBao transit engine.
pub const DEFAULT_TRANSIT_MOUNT: &str = "transit";
/// Default name of the transit key that wraps tenant data keys.
pub const DEFAULT_TRANSIT_KEY: &str = "agentplane";
/// Longest accepted transit mount or key name.
pub const MAX_TRANSIT_NAME_LEN: usize = 64;
/// The variable naming the TOML file when `--config` is not given.
pub const CONFIG_FILE_VAR: &str = "AGENTPLANE_CONFIG";

/// The JWT algorithms the server accepts in `JWT_ALGORITHM`.
pub const ALLOWED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
];
const ALLOWED_ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, PS256";

// Environment variable names, per field. The first name of each list is the primary one.
const PROFILE: &[&str] = &["AGENTPLANE_PROFILE"];
const LISTEN: &[&str] = &["AGENTPLANE_LISTEN"];
const DATA_DIR: &[&str] = &["AGENTPLANE_DATA_DIR"];
const TENANT_CATALOG_DSN: &[&str] = &["TENANT_CATALOG_DSN", "AGENTPLANE_TENANT_CATALOG_DSN"];
const MIGRATE_DSN: &[&str] = &["AGENTPLANE_MIGRATE_DSN"];
const DB_ROLE: &[&str] = &["AGENTPLANE_DB_ROLE"];
const JWT_ALGORITHM: &[&str] = &["JWT_ALGORITHM", "AGENTPLANE_JWT_ALGORITHM"];
const JWT_SHARED_SECRET: &[&str] = &["JWT_SHARED_SECRET", "AGENTPLANE_JWT_SHARED_SECRET"];
const JWKS_FILE: &[&str] = &["AGENTPLANE_JWKS_FILE"];
const JWKS_URL: &[&str] = &["AGENTPLANE_JWKS_URL"];
const JWT_ISSUER: &[&str] = &["AGENTPLANE_JWT_ISSUER"];
const JWT_AUDIENCE: &[&str] = &["AGENTPLANE_JWT_AUDIENCE"];
const JWT_LEEWAY_SECS: &[&str] = &["AGENTPLANE_JWT_LEEWAY_SECS"];
const ALLOW_API_KEY_FALLBACK: &[&str] = &[
    "ALLOW_API_KEY_FALLBACK",
    "AGENTPLANE_ALLOW_API_KEY_FALLBACK",
];
const EMBEDDED_WORKER: &[&str] = &["AGENTPLANE_EMBEDDED_WORKER"];
const POLL_INTERVAL_MS: &[&str] = &["AGENTPLANE_WORKER_POLL_INTERVAL_MS"];
const JOB_LEASE_SECS: &[&str] = &["AGENTPLANE_JOB_LEASE_SECS"];
const PURGE_GRACE_HOURS: &[&str] = &["AGENTPLANE_PURGE_GRACE_HOURS"];
const MAX_BODY: &[&str] = &["AGENTPLANE_MAX_BODY_BYTES"];
const KMS_PROVIDER: &[&str] = &["AGENTPLANE_KMS"];
const MASTER_KEYS: &[&str] = &["AGENTPLANE_MASTER_KEYS"];
const MASTER_KEY_FILE: &[&str] = &["AGENTPLANE_MASTER_KEY_FILE"];
const TRANSIT_ADDR: &[&str] = &["AGENTPLANE_TRANSIT_ADDR"];
const TRANSIT_TOKEN: &[&str] = &["AGENTPLANE_TRANSIT_TOKEN"];
const TRANSIT_MOUNT: &[&str] = &["AGENTPLANE_TRANSIT_MOUNT"];
const TRANSIT_KEY: &[&str] = &["AGENTPLANE_TRANSIT_KEY"];
const ALLOW_PRIVATE_PROVIDER_URLS: &[&str] = &["AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS"];
const QUOTA_LEASE_MS: &[&str] = &["AGENTPLANE_QUOTA_LEASE_MS"];
const REGIONS: &[&str] = &["AGENTPLANE_REGIONS"];
const OBJECT_STORE_URL: &[&str] = &["AGENTPLANE_OBJECT_STORE_URL"];
const OBJECT_STORE_ENDPOINT: &[&str] = &["AGENTPLANE_OBJECT_STORE_ENDPOINT"];
const OBJECT_STORE_REGION: &[&str] = &["AGENTPLANE_OBJECT_STORE_REGION"];
const OBJECT_STORE_ACCESS_KEY_ID: &[&str] = &["AGENTPLANE_OBJECT_STORE_ACCESS_KEY_ID"];
const OBJECT_STORE_SECRET_ACCESS_KEY: &[&str] = &["AGENTPLANE_OBJECT_STORE_SECRET_ACCESS_KEY"];
const OBJECT_STORE_ALLOW_HTTP: &[&str] = &["AGENTPLANE_OBJECT_STORE_ALLOW_HTTP"];
const REGION_OBJECT_STORES: &[&str] = &["AGENTPLANE_REGION_OBJECT_STORES"];
const REGION_DATABASES: &[&str] = &["AGENTPLANE_REGION_DATABASES"];
const MANAGED_IDENTITY_HOSTS: &[&str] = &["AGENTPLANE_MANAGED_IDENTITY_HOSTS"];
const QUOTA_IDLE_MS: &[&str] = &["AGENTPLANE_QUOTA_IDLE_MS"];
const DEFAULT_MAX_TOKENS: &[&str] = &["AGENTPLANE_DEFAULT_MAX_TOKENS"];
const GATEWAY_CACHE_MS: &[&str] = &["AGENTPLANE_GATEWAY_CACHE_MS"];
const KEY_CACHE_MS: &[&str] = &["AGENTPLANE_KEY_CACHE_MS"];
const UPSTREAM_TIMEOUT_SECS: &[&str] = &["AGENTPLANE_UPSTREAM_TIMEOUT_SECS"];
const UPSTREAM_MAX_RETRIES: &[&str] = &["AGENTPLANE_UPSTREAM_MAX_RETRIES"];
const IDENTITY_ENDPOINT: &[&str] = &["IDENTITY_ENDPOINT", "AGENTPLANE_IDENTITY_ENDPOINT"];
const IDENTITY_HEADER: &[&str] = &["IDENTITY_HEADER", "AGENTPLANE_IDENTITY_HEADER"];
const PUBLIC_URL: &[&str] = &["AGENTPLANE_PUBLIC_URL"];
const BASE_DOMAIN: &[&str] = &["AGENTPLANE_BASE_DOMAIN"];
const ACCESS_TOKEN_TTL_SECS: &[&str] = &["AGENTPLANE_ACCESS_TOKEN_TTL_SECS"];
const SESSION_TTL_SECS: &[&str] = &["AGENTPLANE_SESSION_TTL_SECS"];
const INVITATION_TTL_SECS: &[&str] = &["AGENTPLANE_INVITATION_TTL_SECS"];
const SIGNING_KEY_ROTATE_DAYS: &[&str] = &["AGENTPLANE_SIGNING_KEY_ROTATE_DAYS"];
const SMTP_URL: &[&str] = &["AGENTPLANE_SMTP_URL"];
const MAIL_FROM: &[&str] = &["AGENTPLANE_MAIL_FROM"];

/// Every configuration field and the environment variables that set it (primary first).
/// Secrets additionally accept each name with a `_FILE` suffix.
pub const ENV_VARS: &[(&str, &[&str])] = &[
    ("profile", PROFILE),
    ("listen", LISTEN),
    ("data_dir", DATA_DIR),
    ("tenant_catalog_dsn", TENANT_CATALOG_DSN),
    ("migrate_dsn", MIGRATE_DSN),
    ("region_databases", REGION_DATABASES),
    ("db_role", DB_ROLE),
    ("jwt.algorithm", JWT_ALGORITHM),
    ("jwt.shared_secret", JWT_SHARED_SECRET),
    ("jwt.jwks_file", JWKS_FILE),
    ("jwt.jwks_url", JWKS_URL),
    ("jwt.issuer", JWT_ISSUER),
    ("jwt.audience", JWT_AUDIENCE),
    ("jwt.leeway_secs", JWT_LEEWAY_SECS),
    ("allow_api_key_fallback", ALLOW_API_KEY_FALLBACK),
    ("worker.embedded", EMBEDDED_WORKER),
    ("worker.poll_interval_ms", POLL_INTERVAL_MS),
    ("worker.lease_secs", JOB_LEASE_SECS),
    ("worker.purge_grace_hours", PURGE_GRACE_HOURS),
    ("max_body_bytes", MAX_BODY),
    ("kms.provider", KMS_PROVIDER),
    ("kms.master_keys", MASTER_KEYS),
    ("kms.master_key_file", MASTER_KEY_FILE),
    ("kms.transit_addr", TRANSIT_ADDR),
    ("kms.transit_token", TRANSIT_TOKEN),
    ("kms.transit_mount", TRANSIT_MOUNT),
    ("kms.transit_key", TRANSIT_KEY),
    ("providers.allow_private_urls", ALLOW_PRIVATE_PROVIDER_URLS),
    ("regions", REGIONS),
    ("object_store.url", OBJECT_STORE_URL),
    ("object_store.endpoint", OBJECT_STORE_ENDPOINT),
    ("object_store.region", OBJECT_STORE_REGION),
    ("object_store.access_key_id", OBJECT_STORE_ACCESS_KEY_ID),
    (
        "object_store.secret_access_key",
        OBJECT_STORE_SECRET_ACCESS_KEY,
    ),
    ("object_store.allow_http", OBJECT_STORE_ALLOW_HTTP),
    ("object_store.regions", REGION_OBJECT_STORES),
    ("gateway.managed_identity_hosts", MANAGED_IDENTITY_HOSTS),
    ("gateway.quota_lease_ms", QUOTA_LEASE_MS),
    ("gateway.quota_idle_ms", QUOTA_IDLE_MS),
    ("gateway.default_max_tokens", DEFAULT_MAX_TOKENS),
    ("gateway.config_cache_ms", GATEWAY_CACHE_MS),
    ("gateway.key_cache_ms", KEY_CACHE_MS),
    ("gateway.upstream_timeout_secs", UPSTREAM_TIMEOUT_SECS),
    ("gateway.upstream_max_retries", UPSTREAM_MAX_RETRIES),
    ("gateway.identity_endpoint", IDENTITY_ENDPOINT),
    ("gateway.identity_header", IDENTITY_HEADER),
    ("identity.public_url", PUBLIC_URL),
    ("identity.base_domain", BASE_DOMAIN),
    ("identity.access_token_ttl_secs", ACCESS_TOKEN_TTL_SECS),
    ("identity.session_ttl_secs", SESSION_TTL_SECS),
    ("identity.invitation_ttl_secs", INVITATION_TTL_SECS),
    ("identity.signing_key_rotate_days", SIGNING_KEY_ROTATE_DAYS),
    ("identity.smtp_url", SMTP_URL),
    ("identity.mail_from", MAIL_FROM),
];

/// Deployment profile. `dev` allows conveniences (a generated JWT secret on loopback);
/// `production` refuses them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Dev,
    Production,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Production => "production",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where tenant data keys are wrapped (`AGENTPLANE_KMS`: `local` or `transit`,
/// case-insensitive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KmsProvider {
    /// A local keyring of master keys (`AGENTPLANE_MASTER_KEYS` or a keyring file).
    #[default]
    Local,
    /// A Vault/OpenBao transit engine (`AGENTPLANE_TRANSIT_*`).
    Transit,
}

impl KmsProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Transit => "transit",
        }
    }
}

impl fmt::Display for KmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole server configuration. `Debug` redacts every secret.
#[derive(Clone, Debug)]
pub struct Config {
    pub profile: Profile,
    /// Address the HTTP server binds. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory for the embedded database, the dev JWT secret and local objects. Default `./data`.
    pub data_dir: PathBuf,
    /// PostgreSQL DSN of the tenant catalog; `None` (or empty) = embedded SQLite at
    /// [`Config::sqlite_path`].
    pub tenant_catalog_dsn: Option<SecretString>,
    /// Owner DSN used to run migrations on PostgreSQL; `None` = use `tenant_catalog_dsn`.
    pub migrate_dsn: Option<SecretString>,
    /// A database per region, `eu=postgres://...;us=postgres://...` (with SQLite,
    /// `eu=sqlite:///srv/eu.db`): a tenant's rows are kept in its region's database; regions
    /// not listed keep theirs in the main one. Parsed by [`Config::region_databases`].
    pub region_databases: Option<SecretString>,
    /// The non-owner role the server uses on PostgreSQL. Default `agentplane_app`.
    pub db_role: String,
    pub jwt: JwtConfig,
    /// Azure OpenAI / AI Foundry providers may authenticate with an API key instead of a
    /// managed identity; temporary, for non-production only (refused in production). Default
    /// false.
    pub allow_api_key_fallback: bool,
    pub worker: WorkerConfig,
    /// Largest accepted request body. Default 1 MiB.
    pub max_body_bytes: usize,
    pub kms: KmsConfig,
    pub providers: ProvidersConfig,
    pub gateway: GatewayConfig,
    /// Data residency: the regions and the provider hosts each allows,
    /// `eu=*.openai.azure.com,api.mistral.ai;us=api.openai.com`. Empty: one region, not
    /// enforced. Tenants are created only in listed regions.
    pub regions: agentplane_core::residency::Regions,
    /// Where logos, exports and backups live.
    pub object_store: agentplane_store::objects::ObjectStoreConfig,
    pub identity: IdentitySettings,
}

/// Sign-in, sessions and invitations.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// The deployment's public URL: the `iss` of access tokens and the base of invitation
    /// links. Default `http://<listen>`; must be https in production.
    pub public_url: Option<String>,
    /// `acme.<base_domain>` names tenant `acme` at sign-in. Default: none.
    pub base_domain: Option<String>,
    /// Access-token lifetime, 60-3600 s. Default 600.
    pub access_token_ttl_secs: u64,
    /// Session lifetime from sign-in, 1 hour to 90 days. Default 30 days.
    pub session_ttl_secs: u64,
    /// Invitation lifetime, 1 hour to 30 days. Default 7 days.
    pub invitation_ttl_secs: u64,
    /// Signing-key rotation interval, 1-365 days. Default 30.
    pub signing_key_rotate_days: u64,
    /// Outbound SMTP (`smtp://host:25`, `smtp://user:pass@host:587?tls=required`,
    /// `smtps://host:465`); secret, also `AGENTPLANE_SMTP_URL_FILE`. Unset: invitations are
    /// handed to the inviting admin.
    pub smtp_url: Option<SecretString>,
    /// The sender of mail, `Name <addr@example.com>`. Required with `smtp_url`.
    pub mail_from: Option<String>,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            public_url: None,
            base_domain: None,
            access_token_ttl_secs: 600,
            session_ttl_secs: 30 * 86_400,
            invitation_ttl_secs: 7 * 86_400,
            signing_key_rotate_days: 30,
            smtp_url: None,
            mail_from: None,
        }
    }
}

/// The execution gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How long a process's quota lease lives unless renewed (a dead process's share comes back
    /// after this). Default 30 000 ms.
    pub quota_lease_ms: u64,
    /// A lease with no run in flight for this long is returned. Default 2 000 ms.
    pub quota_idle_ms: u64,
    /// Completion bound when neither the request nor the agent sets `max_tokens`. Default 1024.
    pub default_max_tokens: i64,
    /// How long each process caches an agent, its provider and the opened secret at most.
    /// Changes apply at once like API-key changes (their process drops them; on PostgreSQL
    /// every process hears of them by `NOTIFY`); this bounds only what nothing announces. 0:
    /// read on every run. Default 10 000 ms.
    pub config_cache_ms: u64,
    /// Per-process cache of API-key lookups. A change made through the server applies at once
    /// (its process drops the tenant's keys; on PostgreSQL every process hears of it by
    /// `NOTIFY`); this bounds what nothing announces (another process writing the SQLite
    /// file). 0: look the key up on every request. Default 10 000 ms.
    pub key_cache_ms: u64,
    /// Whole-call limit of a non-streaming provider call (streams: first byte and each gap).
    /// Default 120 s.
    pub upstream_timeout_secs: u64,
    /// Retries on 408/429/5xx and connection errors, with backoff. Default 2.
    pub upstream_max_retries: u32,
    /// Azure managed identity: the token endpoint (`IDENTITY_ENDPOINT`, as App Service and
    /// Container Apps set it; unset = IMDS) and its header secret (`IDENTITY_HEADER`).
    pub identity_endpoint: Option<String>,
    pub identity_header: Option<SecretString>,
    /// The hosts providers may reach with the deployment's managed identity (its token is the
    /// platform's credential), e.g. `*.openai.azure.com`. Empty (default): none.
    pub managed_identity_hosts: Vec<agentplane_core::residency::HostPattern>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            quota_lease_ms: 30_000,
            quota_idle_ms: 2_000,
            default_max_tokens: 1024,
            config_cache_ms: 10_000,
            key_cache_ms: 10_000,
            upstream_timeout_secs: 120,
            upstream_max_retries: 2,
            identity_endpoint: None,
            identity_header: None,
            managed_identity_hosts: Vec::new(),
        }
    }
}

/// How admin JWTs are verified.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// The one accepted algorithm; tokens with another `alg` are rejected. Default HS256.
    pub algorithm: Algorithm,
    /// HMAC secret for HS* algorithms.
    pub shared_secret: Option<SecretString>,
    /// Local JWKS (public keys) for RS*/ES*/PS* algorithms.
    pub jwks_file: Option<PathBuf>,
    /// Remote JWKS for RS*/ES*/PS* algorithms, fetched at start and on unknown `kid`s.
    pub jwks_url: Option<String>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`. Default 30 s.
    pub leeway_secs: u64,
}

/// The durable-job worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Run the worker inside `serve`. Default true.
    pub embedded: bool,
    /// Idle poll interval. Default 500 ms.
    pub poll_interval_ms: u64,
    /// Job lease length. Default 60 s.
    pub lease_secs: u64,
    /// How long a deleted tenant is kept before it is purged. Default 720 h (30 days).
    pub purge_grace_hours: u64,
}

/// Where tenant data keys are wrapped (envelope encryption).
#[derive(Clone, Debug)]
pub struct KmsConfig {
    /// Default [`KmsProvider::Local`].
    pub provider: KmsProvider,
    /// The local master keyring, `"1:<base64 32 bytes>,2:<base64 32 bytes>"` (secret; also
    /// `AGENTPLANE_MASTER_KEYS_FILE`). Exclusive with `master_key_file`.
    pub master_keys: Option<SecretString>,
    /// A local keyring file in the same format. Unset = `data_dir/master.keys`, which the dev
    /// profile creates with one fresh key when missing (see [`Config::may_create_master_keys`]);
    /// a file named here is never created. Exclusive with `master_keys`.
    pub master_key_file: Option<PathBuf>,
    /// The transit server, e.g. `https://vault:8200`.
    pub transit_addr: Option<String>,
    /// The token sent to the transit server (secret; also `AGENTPLANE_TRANSIT_TOKEN_FILE`).
    pub transit_token: Option<SecretString>,
    /// Mount path of the transit engine. Default `transit`.
    pub transit_mount: String,
    /// Name of the transit key. Default `agentplane`.
    pub transit_key: String,
}

/// Provider (LLM endpoint) policy.
#[derive(Clone, Debug, Default)]
pub struct ProvidersConfig {
    /// Whether tenants may point provider base URLs at loopback/private/link-local addresses
    /// (self-hosted vLLM/Ollama). `None` = the profile's default: allowed in dev, refused in
    /// production (see [`Config::allow_private_provider_urls`]).
    pub allow_private_urls: Option<bool>,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            provider: KmsProvider::Local,
            master_keys: None,
            master_key_file: None,
            transit_addr: None,
            transit_token: None,
            transit_mount: DEFAULT_TRANSIT_MOUNT.to_owned(),
            transit_key: DEFAULT_TRANSIT_KEY.to_owned(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            profile: Profile::Dev,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            tenant_catalog_dsn: None,
            migrate_dsn: None,
            region_databases: None,
            db_role: "agentplane_app".to_owned(),
            jwt: JwtConfig::default(),
            allow_api_key_fallback: false,
            worker: WorkerConfig::default(),
            max_body_bytes: 1_048_576,
            kms: KmsConfig::default(),
            providers: ProvidersConfig::default(),
            gateway: GatewayConfig::default(),
            regions: Default::default(),
            object_store: Default::default(),
            identity: IdentitySettings::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::HS256,
            shared_secret: None,
            jwks_file: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            poll_interval_ms: 500,
            lease_secs: 60,
            purge_grace_hours: 720,
        }
    }
}

impl JwtConfig {
    /// True for the HMAC algorithms (HS*), which verify with the shared secret; false for
    /// the public-key ones, which verify with a JWKS.
    pub fn uses_shared_secret(&self) -> bool {
        is_hmac(self.algorithm)
    }
}

pub(crate) fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The name of an algorithm as it appears in a JWT header.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Parses a `JWT_ALGORITHM` value (case-insensitive). `none` and algorithms outside
/// [`ALLOWED_ALGORITHMS`] are refused.
pub fn parse_algorithm(name: &str, value: &str) -> Result<Algorithm, ConfigError> {
    let wanted = value.trim();
    if wanted.eq_ignore_ascii_case("none") {
        return Err(invalid(
            name,
            value,
            format!("unsigned tokens are never accepted; use one of {ALLOWED_ALGORITHM_NAMES}"),
        ));
    }
    ALLOWED_ALGORITHMS
        .into_iter()
        .find(|alg| algorithm_name(*alg).eq_ignore_ascii_case(wanted))
        .ok_or_else(|| {
            invalid(
                name,
                value,
                format!("unsupported JWT algorithm; use one of {ALLOWED_ALGORITHM_NAMES}"),
            )
        })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Toml {
        path: Option<PathBuf>,
        source: Box<toml::de::Error>,
    },
    #[error("{name}={value:?} is invalid: {reason}")]
    InvalidValue {
        name: String,
        value: String,
        reason: String,
    },
    #[error("{name} names the file {}, which cannot be read: {source}", path.display())]
    ReadSecretFile {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("both {first} and {second} are set (to different values); set only one")]
    Conflict { first: String, second: String },
    #[error(
        "JWT_ALGORITHM={algorithm} needs a shared secret: set JWT_SHARED_SECRET (or JWT_SHARED_SECRET_FILE) \
         to at least {MIN_SHARED_SECRET_BYTES} random bytes, e.g. the output of `openssl rand -hex 32`"
    )]
    MissingSharedSecret { algorithm: &'static str },
    #[error(
        "JWT_SHARED_SECRET is {len} bytes long; at least {MIN_SHARED_SECRET_BYTES} are required \
         (e.g. the output of `openssl rand -hex 32`)"
    )]
    WeakSharedSecret { len: usize },
    #[error(
        "JWT_ALGORITHM={algorithm} verifies tokens with public keys: set exactly one of AGENTPLANE_JWKS_FILE \
         or AGENTPLANE_JWKS_URL"
    )]
    MissingJwks { algorithm: &'static str },
    #[error("both AGENTPLANE_JWKS_FILE and AGENTPLANE_JWKS_URL are set; set exactly one")]
    AmbiguousJwks,
    #[error(
        "JWT_ALGORITHM={algorithm} verifies tokens with the shared secret, but a JWKS is configured \
         (AGENTPLANE_JWKS_FILE / AGENTPLANE_JWKS_URL): unset it, or set JWT_ALGORITHM to the JWKS keys' algorithm"
    )]
    JwksWithHmacAlgorithm { algorithm: &'static str },
    #[error(
        "JWT_SHARED_SECRET is set, but JWT_ALGORITHM={algorithm} verifies tokens with the JWKS and would \
         ignore it: unset JWT_SHARED_SECRET, or set JWT_ALGORITHM to HS256/HS384/HS512"
    )]
    SharedSecretWithPublicKeyAlgorithm { algorithm: &'static str },
    #[error("AGENTPLANE_JWKS_URL must use https:// in the production profile (got {url})")]
    InsecureJwksUrl { url: String },
    #[error(
        "ALLOW_API_KEY_FALLBACK=true is refused in the production profile: API key auth may only be \
         enabled temporarily in non-production environments; unset ALLOW_API_KEY_FALLBACK"
    )]
    ApiKeyFallbackInProduction,
    #[error(
        "the dev profile listens on {listen}, which is not a loopback address, without a configured \
         JWT key: set JWT_SHARED_SECRET (at least {MIN_SHARED_SECRET_BYTES} bytes) or a JWKS \
         (AGENTPLANE_JWKS_FILE / AGENTPLANE_JWKS_URL), or set AGENTPLANE_LISTEN to a loopback address \
         such as 127.0.0.1:8080"
    )]
    DevProfileExposed { listen: SocketAddr },
    #[error(
        "AGENTPLANE_MAX_BODY_BYTES={value} is out of range: it must be between {MIN_BODY_BYTES} (1 KiB) \
         and {MAX_BODY_BYTES} (64 MiB)"
    )]
    BodyLimitOutOfRange { value: usize },
    #[error("AGENTPLANE_JWT_LEEWAY_SECS={value} is too large: at most {MAX_LEEWAY_SECS} seconds are allowed")]
    LeewayTooLarge { value: u64 },
    #[error("{name} must be greater than zero")]
    Zero { name: &'static str },
    #[error("{name} must be from {min} to {max}")]
    OutOfRange {
        name: &'static str,
        min: i64,
        max: i64,
    },
    #[error(
        "AGENTPLANE_DB_ROLE={value:?} is not a plain PostgreSQL role name: use 1 to 63 lowercase letters, \
         digits and underscores, starting with a letter or an underscore"
    )]
    InvalidDbRole { value: String },
    #[error(
        "AGENTPLANE_KMS=transit needs the transit server's address: set AGENTPLANE_TRANSIT_ADDR, \
         e.g. https://vault:8200"
    )]
    MissingTransitAddr,
    #[error(
        "AGENTPLANE_KMS=transit needs a token for the transit server: set AGENTPLANE_TRANSIT_TOKEN \
         (or AGENTPLANE_TRANSIT_TOKEN_FILE)"
    )]
    MissingTransitToken,
    #[error(
        "AGENTPLANE_TRANSIT_ADDR must use https:// in the production profile unless its host is a \
         loopback address (got {url})"
    )]
    InsecureTransitAddr { url: String },
    #[error(
        "the production profile never generates a master keyring: set AGENTPLANE_MASTER_KEYS \
         (or AGENTPLANE_MASTER_KEYS_FILE), e.g. to \"1:$(openssl rand -base64 32)\", or \
         AGENTPLANE_MASTER_KEY_FILE to an existing keyring file; or use AGENTPLANE_KMS=transit"
    )]
    MissingMasterKeys,
    #[error(
        "both AGENTPLANE_MASTER_KEYS (or AGENTPLANE_MASTER_KEYS_FILE) and AGENTPLANE_MASTER_KEY_FILE \
         are set; set only one"
    )]
    AmbiguousMasterKeys,
    #[error(
        "AGENTPLANE_KMS={provider} does not use {name}, which is set and would be silently ignored: \
         unset {name}, or set AGENTPLANE_KMS to the provider that uses it"
    )]
    IgnoredKmsSetting {
        provider: KmsProvider,
        name: &'static str,
    },
    #[error("cannot prepare the dev JWT secret {}: {source}", path.display())]
    DevSecret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the dev JWT secret {} is shorter than {MIN_SHARED_SECRET_BYTES} bytes; delete it to have a new \
         one generated",
        path.display()
    )]
    BadDevSecret { path: PathBuf },
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The TOML file.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    profile: Option<Profile>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    tenant_catalog_dsn: Option<String>,
    tenant_catalog_dsn_file: Option<PathBuf>,
    migrate_dsn: Option<String>,
    migrate_dsn_file: Option<PathBuf>,
    region_databases: Option<String>,
    region_databases_file: Option<PathBuf>,
    db_role: Option<String>,
    jwt: Option<FileJwt>,
    allow_api_key_fallback: Option<bool>,
    worker: Option<FileWorker>,
    max_body_bytes: Option<usize>,
    kms: Option<FileKms>,
    providers: Option<FileProviders>,
    gateway: Option<FileGateway>,
    regions: Option<String>,
    object_store: Option<FileObjectStore>,
    identity: Option<FileIdentity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileObjectStore {
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    allow_http: Option<bool>,
    regions: Option<String>,
}

/// `eu=s3://bucket-eu/prefix;us=file:///srv/objects-us`: a store per region.
fn parse_region_stores(name: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (region, url) = part
            .split_once('=')
            .ok_or_else(|| invalid(name, value, format!("{part:?} is not region=url")))?;
        let (region, url) = (region.trim(), url.trim());
        let region_ok = !region.is_empty()
            && region.len() <= 32
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(invalid(
                name,
                value,
                format!("{region:?} is not a region name"),
            ));
        }
        let url_ok = url.starts_with("s3://")
            || url
                .strip_prefix("file://")
                .is_some_and(|p| p.starts_with('/'));
        if !url_ok {
            return Err(invalid(
                name,
                value,
                format!("{url:?}: expected s3://bucket[/prefix] or file:///absolute/dir"),
            ));
        }
        if out.iter().any(|(r, _)| r == region) {
            return Err(invalid(name, value, format!("{region} is listed twice")));
        }
        out.push((region.to_owned(), url.to_owned()));
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    public_url: Option<String>,
    base_domain: Option<String>,
    access_token_ttl_secs: Option<u64>,
    session_ttl_secs: Option<u64>,
    invitation_ttl_secs: Option<u64>,
    signing_key_rotate_days: Option<u64>,
    smtp_url: Option<String>,
    smtp_url_file: Option<PathBuf>,
    mail_from: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    quota_lease_ms: Option<u64>,
    quota_idle_ms: Option<u64>,
    default_max_tokens: Option<i64>,
    config_cache_ms: Option<u64>,
    key_cache_ms: Option<u64>,
    upstream_timeout_secs: Option<u64>,
    upstream_max_retries: Option<u32>,
    identity_endpoint: Option<String>,
    identity_header: Option<String>,
    managed_identity_hosts: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    algorithm: Option<String>,
    shared_secret: Option<String>,
    shared_secret_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    embedded: Option<bool>,
    poll_interval_ms: Option<u64>,
    lease_secs: Option<u64>,
    purge_grace_hours: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKms {
    provider: Option<String>,
    master_keys: Option<String>,
    master_keys_file: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    transit_addr: Option<String>,
    transit_token: Option<String>,
    transit_token_file: Option<PathBuf>,
    transit_mount: Option<String>,
    transit_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProviders {
    allow_private_urls: Option<bool>,
}

/// A secret given in TOML either inline or as `<key>_file`.
fn file_secret(
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Option<SecretString>>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            first: key.to_owned(),
            second: format!("{key}_file"),
        }),
        (Some(v), None) => Ok(Some(non_empty_secret(v))),
        (None, Some(path)) => read_secret_file(&format!("{key}_file"), &path).map(Some),
        (None, None) => Ok(None),
    }
}

impl FileConfig {
    fn apply(self, cfg: &mut Config) -> Result<(), ConfigError> {
        if let Some(v) = self.profile {
            cfg.profile = v;
        }
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = file_secret(
            "tenant_catalog_dsn",
            self.tenant_catalog_dsn,
            self.tenant_catalog_dsn_file,
        )? {
            cfg.tenant_catalog_dsn = v;
        }
        if let Some(v) = file_secret("migrate_dsn", self.migrate_dsn, self.migrate_dsn_file)? {
            cfg.migrate_dsn = v;
        }
        if let Some(v) = file_secret(
            "region_databases",
            self.region_databases,
            self.region_databases_file,
        )? {
            cfg.region_databases = v;
        }
        if let Some(v) = self.db_role {
            cfg.db_role = v;
        }
        if let Some(o) = self.object_store {
            let os = &mut cfg.object_store;
            for (field, v) in [
                (&mut os.url, o.url),
                (&mut os.endpoint, o.endpoint),
                (&mut os.region, o.region),
                (&mut os.access_key_id, o.access_key_id),
            ] {
                if let Some(v) = v {
                    *field = non_empty(v);
                }
            }
            if let Some(v) = file_secret(
                "object_store.secret_access_key",
                o.secret_access_key,
                o.secret_access_key_file,
            )? {
                os.secret_access_key = v;
            }
            if let Some(v) = o.allow_http {
                os.allow_http = v;
            }
            if let Some(v) = o.regions {
                os.regions = parse_region_stores("object_store.regions", &v)?;
            }
        }
        if let Some(v) = self.allow_api_key_fallback {
            cfg.allow_api_key_fallback = v;
        }
        if let Some(v) = self.max_body_bytes {
            cfg.max_body_bytes = v;
        }
        if let Some(jwt) = self.jwt {
            if let Some(v) = jwt.algorithm {
                cfg.jwt.algorithm = parse_algorithm("jwt.algorithm", &v)?;
            }
            if let Some(v) = file_secret(
                "jwt.shared_secret",
                jwt.shared_secret,
                jwt.shared_secret_file,
            )? {
                cfg.jwt.shared_secret = v;
            }
            if let Some(v) = jwt.jwks_file {
                cfg.jwt.jwks_file = (!v.as_os_str().is_empty()).then_some(v);
            }
            if let Some(v) = jwt.jwks_url {
                cfg.jwt.jwks_url = non_empty(v);
            }
            if let Some(v) = jwt.issuer {
                cfg.jwt.issuer = non_empty(v);
            }
            if let Some(v) = jwt.audience {
                cfg.jwt.audience = non_empty(v);
            }
            if let Some(v) = jwt.leeway_secs {
                cfg.jwt.leeway_secs = v;
            }
        }
        if let Some(worker) = self.worker {
            if let Some(v) = worker.embedded {
                cfg.worker.embedded = v;
            }
            if let Some(v) = worker.poll_interval_ms {
                cfg.worker.poll_interval_ms = v;
            }
            if let Some(v) = worker.lease_secs {
                cfg.worker.lease_secs = v;
            }
            if let Some(v) = worker.purge_grace_hours {
                cfg.worker.purge_grace_hours = v;
            }
        }
        if let Some(kms) = self.kms {
            if let Some(v) = kms.provider {
                cfg.kms.provider = parse_kms_provider("kms.provider", &v)?;
            }
            if let Some(v) = file_secret("kms.master_keys", kms.master_keys, kms.master_keys_file)?
            {
                cfg.kms.master_keys = v;
            }
            if let Some(v) = kms.master_key_file {
                cfg.kms.master_key_file = (!v.as_os_str().is_empty()).then_some(v);
            }
            if let Some(v) = kms.transit_addr {
                cfg.kms.transit_addr = non_empty(v);
            }
            if let Some(v) = file_secret(
                "kms.transit_token",
                kms.transit_token,
                kms.transit_token_file,
            )? {
                cfg.kms.transit_token = v;
            }
            if let Some(v) = kms.transit_mount {
                cfg.kms.transit_mount = v;
            }
            if let Some(v) = kms.transit_key {
                cfg.kms.transit_key = v;
            }
        }
        if let Some(providers) = self.providers {
            if let Some(v) = providers.allow_private_urls {
                cfg.providers.allow_private_urls = Some(v);
            }
        }
        if let Some(r) = self.regions {
            cfg.regions = agentplane_core::residency::Regions::parse(&r)
                .map_err(|e| invalid("regions", &r, e.to_string()))?;
        }
        if let Some(i) = self.identity {
            let d = &mut cfg.identity;
            if let Some(v) = i.public_url {
                d.public_url = non_empty(v);
            }
            if let Some(v) = i.base_domain {
                d.base_domain = non_empty(v);
            }
            d.access_token_ttl_secs = i.access_token_ttl_secs.unwrap_or(d.access_token_ttl_secs);
            d.session_ttl_secs = i.session_ttl_secs.unwrap_or(d.session_ttl_secs);
            d.invitation_ttl_secs = i.invitation_ttl_secs.unwrap_or(d.invitation_ttl_secs);
            d.signing_key_rotate_days = i
                .signing_key_rotate_days
                .unwrap_or(d.signing_key_rotate_days);
            if let Some(v) = file_secret("identity.smtp_url", i.smtp_url, i.smtp_url_file)? {
                d.smtp_url = v;
            }
            if let Some(v) = i.mail_from {
                d.mail_from = non_empty(v);
            }
        }
        if let Some(g) = self.gateway {
            let d = &mut cfg.gateway;
            d.quota_lease_ms = g.quota_lease_ms.unwrap_or(d.quota_lease_ms);
            d.quota_idle_ms = g.quota_idle_ms.unwrap_or(d.quota_idle_ms);
            d.default_max_tokens = g.default_max_tokens.unwrap_or(d.default_max_tokens);
            d.config_cache_ms = g.config_cache_ms.unwrap_or(d.config_cache_ms);
            d.key_cache_ms = g.key_cache_ms.unwrap_or(d.key_cache_ms);
            d.upstream_timeout_secs = g.upstream_timeout_secs.unwrap_or(d.upstream_timeout_secs);
            d.upstream_max_retries = g.upstream_max_retries.unwrap_or(d.upstream_max_retries);
            if let Some(v) = g.identity_endpoint {
                d.identity_endpoint = non_empty(v);
            }
            if let Some(v) = g.identity_header {
                d.identity_header = non_empty_secret(v);
            }
            if let Some(v) = g.managed_identity_hosts {
                d.managed_identity_hosts = agentplane_core::residency::parse_hosts(&v)
                    .map_err(|e| invalid("gateway.managed_identity_hosts", &v, e.to_string()))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Environment variables.

struct Env<'a>(&'a HashMap<String, String>);

impl<'a> Env<'a> {
    /// The first of `names` that is set, with its value (possibly empty). Two names set to
    /// different values is an error.
    fn get<S: AsRef<str>>(&self, names: &[S]) -> Result<Option<(String, &'a str)>, ConfigError> {
        let mut found: Option<(String, &'a str)> = None;
        for name in names {
            let name = name.as_ref();
            let Some(value) = self.0.get(name) else {
                continue;
            };
            match &found {
                None => found = Some((name.to_owned(), value.as_str())),
                Some((first, first_value)) if *first_value != value.as_str() => {
                    return Err(ConfigError::Conflict {
                        first: first.clone(),
                        second: name.to_owned(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(found)
    }

    /// Like [`Env::get`], but an empty value counts as unset (for fields that have no
    /// "none" value).
    fn get_set(&self, names: &[&str]) -> Result<Option<(String, &'a str)>, ConfigError> {
        Ok(self.get(names)?.filter(|(_, v)| !v.trim().is_empty()))
    }

    /// An optional text field: `Some(None)` when set to the empty string.
    fn optional(&self, names: &[&str]) -> Result<Option<Option<String>>, ConfigError> {
        Ok(self.get(names)?.map(|(_, v)| non_empty(v.to_owned())))
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        names: &[&str],
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        match self.get_set(names)? {
            None => Ok(None),
            Some((name, value)) => value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(&name, value, format!("expected {expected}"))),
        }
    }

    fn bool(&self, names: &[&str]) -> Result<Option<bool>, ConfigError> {
        match self.get_set(names)? {
            None => Ok(None),
            Some((name, value)) => parse_bool(&name, value).map(Some),
        }
    }

    /// A secret given directly or through `<NAME>_FILE`. `Some(None)` when set empty.
    fn secret(&self, names: &[&str]) -> Result<Option<Option<SecretString>>, ConfigError> {
        let file_names: Vec<String> = names.iter().map(|n| format!("{n}_FILE")).collect();
        let direct = self.get(names)?;
        let file = self.get(&file_names)?;
        match (direct, file) {
            (Some((first, _)), Some((second, _))) => Err(ConfigError::Conflict { first, second }),
            (Some((_, value)), None) => Ok(Some(non_empty_secret(value.to_owned()))),
            (None, Some((name, path))) if path.trim().is_empty() => Err(invalid(
                &name,
                path,
                "expected the path of a file holding the secret",
            )),
            (None, Some((name, path))) => read_secret_file(&name, Path::new(path)).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn apply(&self, cfg: &mut Config) -> Result<(), ConfigError> {
        if let Some((name, value)) = self.get_set(PROFILE)? {
            cfg.profile = parse_profile(&name, value)?;
        }
        if let Some(v) = self.parsed(LISTEN, "an IP address and port such as 127.0.0.1:8080")? {
            cfg.listen = v;
        }
        if let Some((_, v)) = self.get_set(DATA_DIR)? {
            cfg.data_dir = PathBuf::from(v);
        }
        if let Some(v) = self.secret(TENANT_CATALOG_DSN)? {
            cfg.tenant_catalog_dsn = v;
        }
        if let Some(v) = self.secret(MIGRATE_DSN)? {
            cfg.migrate_dsn = v;
        }
        if let Some(v) = self.secret(REGION_DATABASES)? {
            cfg.region_databases = v;
        }
        if let Some((_, v)) = self.get_set(DB_ROLE)? {
            cfg.db_role = v.trim().to_owned();
        }
        for (names, field) in [
            (OBJECT_STORE_URL, &mut cfg.object_store.url),
            (OBJECT_STORE_ENDPOINT, &mut cfg.object_store.endpoint),
            (OBJECT_STORE_REGION, &mut cfg.object_store.region),
            (
                OBJECT_STORE_ACCESS_KEY_ID,
                &mut cfg.object_store.access_key_id,
            ),
        ] {
            if let Some((_, v)) = self.get_set(names)? {
                *field = non_empty(v.trim().to_owned());
            }
        }
        if let Some(v) = self.secret(OBJECT_STORE_SECRET_ACCESS_KEY)? {
            cfg.object_store.secret_access_key = v;
        }
        if let Some(v) = self.bool(OBJECT_STORE_ALLOW_HTTP)? {
            cfg.object_store.allow_http = v;
        }
        if let Some((name, v)) = self.get_set(REGION_OBJECT_STORES)? {
            cfg.object_store.regions = parse_region_stores(&name, v)?;
        }
        if let Some((name, value)) = self.get_set(JWT_ALGORITHM)? {
            cfg.jwt.algorithm = parse_algorithm(&name, value)?;
        }
        if let Some(v) = self.secret(JWT_SHARED_SECRET)? {
            cfg.jwt.shared_secret = v;
        }
        if let Some(v) = self.optional(JWKS_FILE)? {
            cfg.jwt.jwks_file = v.map(PathBuf::from);
        }
        if let Some(v) = self.optional(JWKS_URL)? {
            cfg.jwt.jwks_url = v;
        }
        if let Some(v) = self.optional(JWT_ISSUER)? {
            cfg.jwt.issuer = v;
        }
        if let Some(v) = self.optional(JWT_AUDIENCE)? {
            cfg.jwt.audience = v;
        }
        if let Some(v) = self.parsed(JWT_LEEWAY_SECS, "a whole number of seconds")? {
            cfg.jwt.leeway_secs = v;
        }
        if let Some(v) = self.bool(ALLOW_API_KEY_FALLBACK)? {
            cfg.allow_api_key_fallback = v;
        }
        if let Some(v) = self.bool(EMBEDDED_WORKER)? {
            cfg.worker.embedded = v;
        }
        if let Some(v) = self.parsed(POLL_INTERVAL_MS, "a whole number of milliseconds")? {
            cfg.worker.poll_interval_ms = v;
        }
        if let Some(v) = self.parsed(JOB_LEASE_SECS, "a whole number of seconds")? {
            cfg.worker.lease_secs = v;
        }
        if let Some(v) = self.parsed(PURGE_GRACE_HOURS, "a whole number of hours")? {
            cfg.worker.purge_grace_hours = v;
        }
        if let Some(v) = self.parsed(MAX_BODY, "a whole number of bytes")? {
            cfg.max_body_bytes = v;
        }
        if let Some((name, value)) = self.get_set(KMS_PROVIDER)? {
            cfg.kms.provider = parse_kms_provider(&name, value)?;
        }
        if let Some(v) = self.secret(MASTER_KEYS)? {
            cfg.kms.master_keys = v;
        }
        if let Some(v) = self.optional(MASTER_KEY_FILE)? {
            cfg.kms.master_key_file = v.map(PathBuf::from);
        }
        if let Some(v) = self.optional(TRANSIT_ADDR)? {
            cfg.kms.transit_addr = v;
        }
        if let Some(v) = self.secret(TRANSIT_TOKEN)? {
            cfg.kms.transit_token = v;
        }
        if let Some((_, v)) = self.get_set(TRANSIT_MOUNT)? {
            cfg.kms.transit_mount = v.trim().to_owned();
        }
        if let Some((_, v)) = self.get_set(TRANSIT_KEY)? {
            cfg.kms.transit_key = v.trim().to_owned();
        }
        if let Some(v) = self.bool(ALLOW_PRIVATE_PROVIDER_URLS)? {
            cfg.providers.allow_private_urls = Some(v);
        }
        if let Some((name, v)) = self.get_set(REGIONS)? {
            cfg.regions = agentplane_core::residency::Regions::parse(v)
                .map_err(|e| invalid(&name, v, e.to_string()))?;
        }
        let ms = "a whole number of milliseconds";
        if let Some(v) = self.parsed(QUOTA_LEASE_MS, ms)? {
            cfg.gateway.quota_lease_ms = v;
        }
        if let Some(v) = self.parsed(QUOTA_IDLE_MS, ms)? {
            cfg.gateway.quota_idle_ms = v;
        }
        if let Some(v) = self.parsed(DEFAULT_MAX_TOKENS, "a whole number of tokens")? {
            cfg.gateway.default_max_tokens = v;
        }
        if let Some(v) = self.parsed(GATEWAY_CACHE_MS, ms)? {
            cfg.gateway.config_cache_ms = v;
        }
        if let Some(v) = self.parsed(KEY_CACHE_MS, ms)? {
            cfg.gateway.key_cache_ms = v;
        }
        if let Some(v) = self.parsed(UPSTREAM_TIMEOUT_SECS, "a whole number of seconds")? {
            cfg.gateway.upstream_timeout_secs = v;
        }
        if let Some(v) = self.parsed(UPSTREAM_MAX_RETRIES, "a whole number")? {
            cfg.gateway.upstream_max_retries = v;
        }
        if let Some(v) = self.optional(IDENTITY_ENDPOINT)? {
            cfg.gateway.identity_endpoint = v;
        }
        if let Some(v) = self.secret(IDENTITY_HEADER)? {
            cfg.gateway.identity_header = v;
        }
        if let Some((name, v)) = self.get_set(MANAGED_IDENTITY_HOSTS)? {
            cfg.gateway.managed_identity_hosts = agentplane_core::residency::parse_hosts(v)
                .map_err(|e| invalid(&name, v, e.to_string()))?;
        }
        let id = &mut cfg.identity;
        if let Some(v) = self.optional(PUBLIC_URL)? {
            id.public_url = v;
        }
        if let Some(v) = self.optional(BASE_DOMAIN)? {
            id.base_domain = v;
        }
        let secs = "a whole number of seconds";
        if let Some(v) = self.parsed(ACCESS_TOKEN_TTL_SECS, secs)? {
            id.access_token_ttl_secs = v;
        }
        if let Some(v) = self.parsed(SESSION_TTL_SECS, secs)? {
            id.session_ttl_secs = v;
        }
        if let Some(v) = self.parsed(INVITATION_TTL_SECS, secs)? {
            id.invitation_ttl_secs = v;
        }
        if let Some(v) = self.parsed(SIGNING_KEY_ROTATE_DAYS, "a whole number of days")? {
            id.signing_key_rotate_days = v;
        }
        if let Some(v) = self.secret(SMTP_URL)? {
            id.smtp_url = v;
        }
        if let Some(v) = self.optional(MAIL_FROM)? {
            id.mail_from = v;
        }
        Ok(())
    }
}

fn non_empty(v: String) -> Option<String> {
    if v.trim().is_empty() {
        None
    } else {
        Some(v)
    }
}

fn non_empty_secret(v: String) -> Option<SecretString> {
    if v.is_empty() {
        None
    } else {
        Some(SecretString::from(v))
    }
}

/// Reads a secret file, dropping trailing newlines. An empty file means "no secret".
fn read_secret_file(name: &str, path: &Path) -> Result<Option<SecretString>, ConfigError> {
    let mut text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecretFile {
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    let len = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(len);
    Ok(non_empty_secret(text))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(name, value, "expected true, false, 1 or 0")),
    }
}

fn parse_profile(name: &str, value: &str) -> Result<Profile, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "dev" => Ok(Profile::Dev),
        "production" => Ok(Profile::Production),
        _ => Err(invalid(name, value, "expected dev or production")),
    }
}

fn parse_kms_provider(name: &str, value: &str) -> Result<KmsProvider, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "local" => Ok(KmsProvider::Local),
        "transit" => Ok(KmsProvider::Transit),
        _ => Err(invalid(name, value, "expected local or transit")),
    }
}

/// A transit mount or key name: 1 to [`MAX_TRANSIT_NAME_LEN`] letters, digits, `_` and `-`.
fn is_transit_name(name: &str) -> bool {
    (1..=MAX_TRANSIT_NAME_LEN).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether a URL's host is a loopback address (`127.0.0.0/8`, `::1` or `localhost`).
fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_plain_role_name(role: &str) -> bool {
    let mut chars = role.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    role.len() <= 63
        && (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

// ---------------------------------------------------------------------------------------

impl Config {
    /// Reads the optional TOML file (`file`, else the path in `AGENTPLANE_CONFIG`) and the
    /// process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let path = match file {
            Some(p) => Some(p.to_owned()),
            None => env
                .get(CONFIG_FILE_VAR)
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
        };
        let text = match &path {
            Some(p) => {
                Some(
                    std::fs::read_to_string(p).map_err(|source| ConfigError::ReadFile {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::from_sources(text.as_deref(), &env).map_err(|e| match e {
            ConfigError::Toml { path: None, source } => ConfigError::Toml {
                path: path.clone(),
                source,
            },
            other => other,
        })
    }

    /// Pure: `file_toml` is the TOML file's text, `env` the environment variables.
    /// (Only `*_FILE` secrets touch the file system.)
    pub fn from_sources(
        file_toml: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(text) = file_toml {
            let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
                path: None,
                source: Box::new(e),
            })?;
            file.apply(&mut cfg)?;
        }
        Env(env).apply(&mut cfg)?;
        Ok(cfg)
    }

    /// Refuses insecure or inconsistent settings. `serve` calls it before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.region_databases()?;
        if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(ConfigError::BodyLimitOutOfRange {
                value: self.max_body_bytes,
            });
        }
        if self.jwt.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::LeewayTooLarge {
                value: self.jwt.leeway_secs,
            });
        }
        if self.worker.poll_interval_ms == 0 {
            return Err(ConfigError::Zero {
                name: "AGENTPLANE_WORKER_POLL_INTERVAL_MS",
            });
        }
        for (name, v) in [
            ("AGENTPLANE_QUOTA_LEASE_MS", self.gateway.quota_lease_ms),
            ("AGENTPLANE_QUOTA_IDLE_MS", self.gateway.quota_idle_ms),
            (
                "AGENTPLANE_UPSTREAM_TIMEOUT_SECS",
                self.gateway.upstream_timeout_secs,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        let id = &self.identity;
        for (name, v, min, max) in [
            (
                "AGENTPLANE_ACCESS_TOKEN_TTL_SECS",
                id.access_token_ttl_secs,
                60,
                3_600,
            ),
            (
                "AGENTPLANE_SESSION_TTL_SECS",
                id.session_ttl_secs,
                3_600,
                90 * 86_400,
            ),
            (
                "AGENTPLANE_INVITATION_TTL_SECS",
                id.invitation_ttl_secs,
                3_600,
                30 * 86_400,
            ),
            (
                "AGENTPLANE_SIGNING_KEY_ROTATE_DAYS",
                id.signing_key_rotate_days,
                1,
                365,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return Err(ConfigError::OutOfRange {
                    name,
                    min: min as i64,
                    max: max as i64,
                });
            }
        }
        if let Some(url) = &id.public_url {
            let ok = url.starts_with("https://")
                || (url.starts_with("http://") && self.profile != Profile::Production);
            if !ok || url.trim_end_matches('/').contains(['?', '#', ' ']) {
                return Err(invalid(
                    "AGENTPLANE_PUBLIC_URL",
                    url,
                    "must be an https:// URL (http:// only outside production), without query or fragment",
                ));
            }
        }
        if let Some(d) = &id.base_domain {
            let ok = !d.is_empty()
                && d.split('.').count() >= 2
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !ok {
                return Err(invalid(
                    "AGENTPLANE_BASE_DOMAIN",
                    d,
                    "must be a domain name such as agentplane.example.com",
                ));
            }
        }
        match (&id.smtp_url, &id.mail_from) {
            (Some(url), Some(from)) => {
                agentplane_control::mail::Mailer::from_url(url.expose_secret(), from)
                    .map_err(|e| invalid("AGENTPLANE_SMTP_URL", "(secret)", e.to_string()))?;
            }
            (Some(_), None) => {
                return Err(invalid(
                    "AGENTPLANE_MAIL_FROM",
                    "",
                    "is required when AGENTPLANE_SMTP_URL is set",
                ));
            }
            _ => {}
        }
        if !(1..=1_000_000).contains(&self.gateway.default_max_tokens) {
            return Err(ConfigError::OutOfRange {
                name: "AGENTPLANE_DEFAULT_MAX_TOKENS",
                min: 1,
                max: 1_000_000,
            });
        }
        if self.worker.lease_secs == 0 {
            return Err(ConfigError::Zero {
                name: "AGENTPLANE_JOB_LEASE_SECS",
            });
        }
        if !is_plain_role_name(&self.db_role) {
            return Err(ConfigError::InvalidDbRole {
                value: self.db_role.clone(),
            });
        }

        let algorithm = algorithm_name(self.jwt.algorithm);
        if !ALLOWED_ALGORITHMS.contains(&self.jwt.algorithm) {
            return Err(invalid(
                "JWT_ALGORITHM",
                algorithm,
                format!("use one of {ALLOWED_ALGORITHM_NAMES}"),
            ));
        }
        let dev = self.profile == Profile::Dev;
        let loopback = self.listen.ip().is_loopback();
        if self.jwt.uses_shared_secret() {
            if self.jwt.jwks_file.is_some() || self.jwt.jwks_url.is_some() {
                return Err(ConfigError::JwksWithHmacAlgorithm { algorithm });
            }
            match &self.jwt.shared_secret {
                Some(secret) if secret.expose_secret().len() < MIN_SHARED_SECRET_BYTES => {
                    return Err(ConfigError::WeakSharedSecret {
                        len: secret.expose_secret().len(),
                    });
                }
                Some(_) => {}
                // The dev profile on loopback generates its own secret (see `dev_secret`).
                None if dev && loopback => {}
                None if dev => {
                    return Err(ConfigError::DevProfileExposed {
                        listen: self.listen,
                    })
                }
                None => return Err(ConfigError::MissingSharedSecret { algorithm }),
            }
        } else {
            if self.jwt.shared_secret.is_some() {
                return Err(ConfigError::SharedSecretWithPublicKeyAlgorithm { algorithm });
            }
            match (&self.jwt.jwks_file, &self.jwt.jwks_url) {
                (None, None) => return Err(ConfigError::MissingJwks { algorithm }),
                (Some(_), Some(_)) => return Err(ConfigError::AmbiguousJwks),
                (Some(_), None) => {}
                (None, Some(url)) => {
                    let parsed = reqwest::Url::parse(url).map_err(|e| {
                        invalid("AGENTPLANE_JWKS_URL", url, format!("not a URL: {e}"))
                    })?;
                    match parsed.scheme() {
                        "https" => {}
                        "http" if dev => {}
                        "http" => return Err(ConfigError::InsecureJwksUrl { url: url.clone() }),
                        _ => {
                            return Err(invalid(
                                "AGENTPLANE_JWKS_URL",
                                url,
                                "expected an https:// URL",
                            ))
                        }
                    }
                }
            }
        }
        if self.allow_api_key_fallback && !dev {
            return Err(ConfigError::ApiKeyFallbackInProduction);
        }
        self.validate_kms()
    }

    /// The `[kms]` part of [`Config::validate`]: the chosen provider is fully configured and
    /// nothing is set that only the other provider would read.
    fn validate_kms(&self) -> Result<(), ConfigError> {
        let kms = &self.kms;
        let ignored = |name| {
            Err(ConfigError::IgnoredKmsSetting {
                provider: kms.provider,
                name,
            })
        };
        match kms.provider {
            KmsProvider::Local => {
                if kms.transit_addr.is_some() {
                    return ignored("AGENTPLANE_TRANSIT_ADDR");
                }
                if kms.transit_token.is_some() {
                    return ignored("AGENTPLANE_TRANSIT_TOKEN");
                }
                if kms.transit_mount != DEFAULT_TRANSIT_MOUNT {
                    return ignored("AGENTPLANE_TRANSIT_MOUNT");
                }
                if kms.transit_key != DEFAULT_TRANSIT_KEY {
                    return ignored("AGENTPLANE_TRANSIT_KEY");
                }
                match (&kms.master_keys, &kms.master_key_file) {
                    (Some(_), Some(_)) => return Err(ConfigError::AmbiguousMasterKeys),
                    (None, None) if self.profile == Profile::Production => {
                        return Err(ConfigError::MissingMasterKeys)
                    }
                    _ => {}
                }
            }
            KmsProvider::Transit => {
                if kms.master_keys.is_some() {
                    return ignored("AGENTPLANE_MASTER_KEYS");
                }
                if kms.master_key_file.is_some() {
                    return ignored("AGENTPLANE_MASTER_KEY_FILE");
                }
                let Some(addr) = &kms.transit_addr else {
                    return Err(ConfigError::MissingTransitAddr);
                };
                if kms.transit_token.is_none() {
                    return Err(ConfigError::MissingTransitToken);
                }
                let url = reqwest::Url::parse(addr).map_err(|e| {
                    invalid("AGENTPLANE_TRANSIT_ADDR", addr, format!("not a URL: {e}"))
                })?;
                match url.scheme() {
                    "https" => {}
                    "http" if self.profile == Profile::Dev || is_loopback_host(&url) => {}
                    "http" => return Err(ConfigError::InsecureTransitAddr { url: addr.clone() }),
                    _ => {
                        return Err(invalid(
                            "AGENTPLANE_TRANSIT_ADDR",
                            addr,
                            "expected an https:// URL such as https://vault:8200",
                        ))
                    }
                }
                for (name, value) in [
                    ("AGENTPLANE_TRANSIT_MOUNT", &kms.transit_mount),
                    ("AGENTPLANE_TRANSIT_KEY", &kms.transit_key),
                ] {
                    if !is_transit_name(value) {
                        return Err(invalid(
                            name,
                            value,
                            format!(
                                "use 1 to {MAX_TRANSIT_NAME_LEN} ASCII letters, digits, '_' and '-'"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The local keyring file: `kms.master_key_file`, else `data_dir/master.keys`.
    pub fn master_key_path(&self) -> PathBuf {
        self.kms
            .master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(MASTER_KEYRING_FILE))
    }

    /// Whether the local keyring file may be created when missing: only in the dev profile,
    /// with the local provider, and only when no keyring is configured explicitly (neither
    /// `kms.master_keys` nor `kms.master_key_file`), i.e. for `data_dir/master.keys`.
    pub fn may_create_master_keys(&self) -> bool {
        self.profile == Profile::Dev
            && self.kms.provider == KmsProvider::Local
            && self.kms.master_keys.is_none()
            && self.kms.master_key_file.is_none()
    }

    /// Whether tenants may point provider base URLs at loopback/private/link-local addresses:
    /// `providers.allow_private_urls`, else true in the dev profile and false in production.
    pub fn allow_private_provider_urls(&self) -> bool {
        self.providers
            .allow_private_urls
            .unwrap_or(self.profile == Profile::Dev)
    }

    /// The embedded SQLite database file: `data_dir/agentplane.db`.
    /// The regions with a database of their own and its DSN (`postgres://...`, or with
    /// SQLite the file's path), checked: each region is one of [`Config::regions`], once,
    /// and its database of the main database's kind. Errors never repeat a DSN.
    pub fn region_databases(&self) -> Result<Vec<(String, SecretString)>, ConfigError> {
        const NAME: &str = "AGENTPLANE_REGION_DATABASES";
        let Some(spec) = &self.region_databases else {
            return Ok(Vec::new());
        };
        let bad = |reason: String| invalid(NAME, "(not shown: it holds credentials)", reason);
        let mut out: Vec<(String, SecretString)> = Vec::new();
        for part in spec.expose_secret().split(';').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let (region, dsn) = part
                .split_once('=')
                .ok_or_else(|| bad("expected region=database;region=database".into()))?;
            let (region, dsn) = (region.trim(), dsn.trim());
            let region = agentplane_core::tenant::validate_region(region)
                .map_err(|_| bad(format!("{region:?} is not a region name")))?;
            if !self.regions.is_enforced() || !self.regions.knows(&region) {
                return Err(bad(format!(
                    "{region} is not one of AGENTPLANE_REGIONS (a region needs its providers \
                     before it gets a database)"
                )));
            }
            if out.iter().any(|(r, _)| *r == region) {
                return Err(bad(format!("{region} is listed twice")));
            }
            let dsn = match (&self.tenant_catalog_dsn, dsn) {
                (Some(_), d) if d.starts_with("postgres://") || d.starts_with("postgresql://") => {
                    d.to_owned()
                }
                (Some(_), _) => {
                    return Err(bad(format!(
                        "{region}: expected a postgres:// DSN (the main database is PostgreSQL)"
                    )))
                }
                (None, d) => match d.strip_prefix("sqlite://") {
                    Some(path) if path.starts_with('/') => path.to_owned(),
                    _ => {
                        return Err(bad(format!(
                            "{region}: expected sqlite:///absolute/path.db (the main database is SQLite)"
                        )))
                    }
                },
            };
            out.push((region, SecretString::from(dsn)));
        }
        Ok(out)
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join(SQLITE_FILE)
    }

    /// The generated development JWT secret file: `data_dir/dev-jwt-secret`.
    pub fn dev_secret_path(&self) -> PathBuf {
        self.data_dir.join(DEV_SECRET_FILE)
    }

    /// The development JWT secret: only in the dev profile, with an HS* algorithm and no
    /// configured shared secret. Reads `data_dir/dev-jwt-secret`, or creates it (mode 0600,
    /// 64 random hex characters, `data_dir` created if needed). Otherwise `Ok(None)`.
    pub fn dev_secret(&self) -> Result<Option<SecretString>, ConfigError> {
        if self.profile != Profile::Dev
            || !self.jwt.uses_shared_secret()
            || self.jwt.shared_secret.is_some()
        {
            return Ok(None);
        }
        let path = self.dev_secret_path();
        let io_err = |source| ConfigError::DevSecret {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.data_dir).map_err(io_err)?;
        if !path.exists() {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Write a private temporary file, then link it into place: the secret file appears
            // whole or not at all, and a concurrent start that wins the race is kept.
            let tmp = self.data_dir.join(format!(
                ".{DEV_SECRET_FILE}.{}.{:016x}.tmp",
                std::process::id(),
                rand::rngs::OsRng.next_u64()
            ));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| {
                    // Exactly 0600, whatever the umask.
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    f.write_all(secret.as_bytes())?;
                    f.sync_all()
                });
            let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "generated a development JWT secret");
                    return Ok(Some(SecretString::from(secret)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let mut text = std::fs::read_to_string(&path).map_err(io_err)?;
        let len = text.trim_end().len();
        text.truncate(len);
        if text.len() < MIN_SHARED_SECRET_BYTES {
            return Err(ConfigError::BadDevSecret { path });
        }
        Ok(Some(SecretString::from(text)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn from_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(None, &env(pairs))
    }

    fn secret_of(s: &Option<SecretString>) -> Option<&str> {
        s.as_ref().map(|s| s.expose_secret())
    }

    const STRONG: &str = "0123456789abcdef0123456789abcdef";
    /// A keyring in the `AGENTPLANE_MASTER_KEYS` format (the config does not parse it).
    const KEYRING: &str = "1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const VAULT_TOKEN: &str = "hvs.test-token";

    #[test]
    fn defaults() {
        let cfg = from_env(&[]).unwrap();
        assert_eq!(cfg.profile, Profile::Dev);
        assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("./data"));
        assert!(cfg.tenant_catalog_dsn.is_none());
        assert!(cfg.migrate_dsn.is_none());
        assert_eq!(cfg.db_role, "agentplane_app");
        assert_eq!(cfg.jwt.algorithm, Algorithm::HS256);
        assert!(cfg.jwt.shared_secret.is_none());
        assert!(cfg.jwt.jwks_file.is_none() && cfg.jwt.jwks_url.is_none());
        assert!(cfg.jwt.issuer.is_none() && cfg.jwt.audience.is_none());
        assert_eq!(cfg.jwt.leeway_secs, 30);
        assert!(!cfg.allow_api_key_fallback);
        assert_eq!(
            cfg.worker,
            WorkerConfig {
                embedded: true,
                poll_interval_ms: 500,
                lease_secs: 60,
                purge_grace_hours: 720
            }
        );
        assert_eq!(cfg.max_body_bytes, 1_048_576);
        assert_eq!(cfg.sqlite_path(), PathBuf::from("./data/agentplane.db"));
        assert_eq!(cfg.kms.provider, KmsProvider::Local);
        assert!(cfg.kms.master_keys.is_none() && cfg.kms.master_key_file.is_none());
        assert!(cfg.kms.transit_addr.is_none() && cfg.kms.transit_token.is_none());
        assert_eq!(cfg.kms.transit_mount, "transit");
        assert_eq!(cfg.kms.transit_key, "agentplane");
        assert_eq!(cfg.master_key_path(), PathBuf::from("./data/master.keys"));
        assert!(cfg.may_create_master_keys());
        assert_eq!(cfg.providers.allow_private_urls, None);
        assert!(cfg.allow_private_provider_urls());
        // The defaults run as-is: dev on loopback with a generated secret and keyring.
        cfg.validate().unwrap();
    }

    #[test]
    fn toml_then_env_precedence() {
        let toml = r#"
            profile = "production"
            listen = "0.0.0.0:9000"
            data_dir = "/var/lib/agentplane"
            tenant_catalog_dsn = "postgres://file@db/agentplane"
            db_role = "from_file"
            allow_api_key_fallback = false
            max_body_bytes = 2048

            [jwt]
            algorithm = "RS256"
            jwks_url = "https://idp.example/jwks.json"
            issuer = "https://idp.example"
            audience = "agentplane"
            leeway_secs = 10

            [worker]
            embedded = false
            poll_interval_ms = 250
            lease_secs = 120
            purge_grace_hours = 48

            [kms]
            provider = "local"
            master_key_file = "/etc/agentplane/master.keys"

            [providers]
            allow_private_urls = true
        "#;
        let vars = env(&[
            ("AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS", "false"),
            ("AGENTPLANE_LISTEN", "0.0.0.0:9100"),
            ("TENANT_CATALOG_DSN", "postgres://env@db/agentplane"),
            ("AGENTPLANE_JOB_LEASE_SECS", "90"),
            ("AGENTPLANE_EMBEDDED_WORKER", "1"),
            ("AGENTPLANE_JWT_AUDIENCE", "other-aud"),
            ("AGENTPLANE_MAX_BODY_BYTES", "4096"),
        ]);
        let cfg = Config::from_sources(Some(toml), &vars).unwrap();
        // From the file.
        assert_eq!(cfg.profile, Profile::Production);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/agentplane"));
        assert_eq!(cfg.db_role, "from_file");
        assert_eq!(cfg.jwt.algorithm, Algorithm::RS256);
        assert_eq!(
            cfg.jwt.jwks_url.as_deref(),
            Some("https://idp.example/jwks.json")
        );
        assert_eq!(cfg.jwt.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(cfg.jwt.leeway_secs, 10);
        assert_eq!(cfg.worker.poll_interval_ms, 250);
        assert_eq!(cfg.worker.purge_grace_hours, 48);
        // Overridden by the environment.
        assert_eq!(cfg.listen, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(
            secret_of(&cfg.tenant_catalog_dsn),
            Some("postgres://env@db/agentplane")
        );
        assert_eq!(cfg.worker.lease_secs, 90);
        assert!(cfg.worker.embedded);
        assert_eq!(cfg.jwt.audience.as_deref(), Some("other-aud"));
        assert_eq!(cfg.max_body_bytes, 4096);
        assert_eq!(cfg.providers.allow_private_urls, Some(false));
        assert!(!cfg.allow_private_provider_urls());
        assert_eq!(cfg.kms.provider, KmsProvider::Local);
        assert_eq!(
            cfg.master_key_path(),
            PathBuf::from("/etc/agentplane/master.keys")
        );
        assert!(!cfg.may_create_master_keys());
        cfg.validate().unwrap();

        // The file alone.
        let cfg = Config::from_sources(Some(toml), &HashMap::new()).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            secret_of(&cfg.tenant_catalog_dsn),
            Some("postgres://file@db/agentplane")
        );
        assert_eq!(cfg.worker.lease_secs, 120);
        assert!(!cfg.worker.embedded);
        // An explicit opt-in beats the production default.
        assert_eq!(cfg.providers.allow_private_urls, Some(true));
        assert!(cfg.allow_private_provider_urls());
    }

    #[test]
    fn region_databases_name_known_regions_once_with_the_main_databases_kind() {
        let regions = ("AGENTPLANE_REGIONS", "eu=a.example;us=b.example");
        let pg = ("TENANT_CATALOG_DSN", "postgres://main/x");
        let ok = |pairs: &[(&str, &str)]| from_env(pairs).unwrap().validate();
        assert!(ok(&[
            regions,
            pg,
            ("AGENTPLANE_REGION_DATABASES", "eu=postgres://p:pw@eu/x")
        ])
        .is_ok());
        assert!(ok(&[
            regions,
            ("AGENTPLANE_REGION_DATABASES", "eu=sqlite:///srv/eu.db")
        ])
        .is_ok());
        for (pairs, why) in [
            (
                vec![
                    pg,
                    ("AGENTPLANE_REGION_DATABASES", "eu=postgres://p:pw@eu/x"),
                ],
                "no regions",
            ),
            (
                vec![
                    regions,
                    pg,
                    ("AGENTPLANE_REGION_DATABASES", "apac=postgres://p:pw@a/x"),
                ],
                "unknown region",
            ),
            (
                vec![
                    regions,
                    pg,
                    ("AGENTPLANE_REGION_DATABASES", "eu=sqlite:///srv/eu.db"),
                ],
                "kind",
            ),
            (
                vec![
                    regions,
                    ("AGENTPLANE_REGION_DATABASES", "eu=postgres://p:pw@eu/x"),
                ],
                "kind",
            ),
            (
                vec![
                    regions,
                    ("AGENTPLANE_REGION_DATABASES", "eu=sqlite://relative.db"),
                ],
                "relative",
            ),
            (
                vec![
                    regions,
                    pg,
                    (
                        "AGENTPLANE_REGION_DATABASES",
                        "eu=postgres://p:pw@a/x;eu=postgres://p:pw@b/x",
                    ),
                ],
                "twice",
            ),
            (
                vec![
                    regions,
                    pg,
                    ("AGENTPLANE_REGION_DATABASES", "postgres://p:pw@a/x"),
                ],
                "no region",
            ),
        ] {
            let err = ok(&pairs).expect_err(why).to_string();
            assert!(err.contains("AGENTPLANE_REGION_DATABASES"), "{why}: {err}");
            assert!(
                !err.contains("pw@"),
                "{why}: the DSN's password is never shown: {err}"
            );
        }
    }

    #[test]
    fn every_field_has_an_env_name() {
        let vars = [
            ("AGENTPLANE_PROFILE", "Production"),
            ("AGENTPLANE_LISTEN", "[::1]:7000"),
            ("AGENTPLANE_DATA_DIR", "/tmp/x"),
            ("AGENTPLANE_TENANT_CATALOG_DSN", "postgres://a"),
            ("AGENTPLANE_MIGRATE_DSN", "postgres://owner"),
            ("AGENTPLANE_DB_ROLE", "app_role"),
            ("AGENTPLANE_JWT_ALGORITHM", "es256"),
            ("AGENTPLANE_JWT_SHARED_SECRET", STRONG),
            ("AGENTPLANE_JWKS_FILE", "/etc/jwks.json"),
            ("AGENTPLANE_JWKS_URL", "https://idp/jwks"),
            ("AGENTPLANE_JWT_ISSUER", "iss"),
            ("AGENTPLANE_JWT_AUDIENCE", "aud"),
            ("AGENTPLANE_JWT_LEEWAY_SECS", "5"),
            ("AGENTPLANE_ALLOW_API_KEY_FALLBACK", "TRUE"),
            ("AGENTPLANE_EMBEDDED_WORKER", "false"),
            ("AGENTPLANE_WORKER_POLL_INTERVAL_MS", "100"),
            ("AGENTPLANE_JOB_LEASE_SECS", "30"),
            ("AGENTPLANE_PURGE_GRACE_HOURS", "1"),
            ("AGENTPLANE_MAX_BODY_BYTES", "2048"),
            ("AGENTPLANE_KMS", "Transit"),
            ("AGENTPLANE_MASTER_KEYS", KEYRING),
            ("AGENTPLANE_MASTER_KEY_FILE", "/etc/master.keys"),
            ("AGENTPLANE_TRANSIT_ADDR", "https://vault:8200"),
            ("AGENTPLANE_TRANSIT_TOKEN", VAULT_TOKEN),
            ("AGENTPLANE_TRANSIT_MOUNT", " kms "),
            ("AGENTPLANE_TRANSIT_KEY", "tenant-keys"),
            ("AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS", "1"),
            ("AGENTPLANE_QUOTA_LEASE_MS", "5000"),
            ("AGENTPLANE_QUOTA_IDLE_MS", "300"),
            ("AGENTPLANE_DEFAULT_MAX_TOKENS", "256"),
            ("AGENTPLANE_GATEWAY_CACHE_MS", "0"),
            ("AGENTPLANE_KEY_CACHE_MS", "0"),
            (
                "AGENTPLANE_REGIONS",
                "eu=*.eu.example.com;us=api.openai.com",
            ),
            ("AGENTPLANE_MANAGED_IDENTITY_HOSTS", "*.openai.azure.com"),
            ("AGENTPLANE_UPSTREAM_TIMEOUT_SECS", "30"),
            ("AGENTPLANE_UPSTREAM_MAX_RETRIES", "0"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token"),
            ("IDENTITY_HEADER", "id-header-secret"),
            ("AGENTPLANE_PUBLIC_URL", "https://agentplane.example.com/"),
            ("AGENTPLANE_BASE_DOMAIN", "agentplane.example.com"),
            ("AGENTPLANE_ACCESS_TOKEN_TTL_SECS", "300"),
            ("AGENTPLANE_SESSION_TTL_SECS", "7200"),
            ("AGENTPLANE_INVITATION_TTL_SECS", "3600"),
            ("AGENTPLANE_SIGNING_KEY_ROTATE_DAYS", "7"),
            (
                "AGENTPLANE_SMTP_URL",
                "smtp://mail:pw@smtp.example.com:587?tls=required",
            ),
            ("AGENTPLANE_MAIL_FROM", "Agentplane <noreply@example.com>"),
            (
                "AGENTPLANE_OBJECT_STORE_URL",
                "s3://agentplane-objects/prod",
            ),
            (
                "AGENTPLANE_OBJECT_STORE_ENDPOINT",
                "http://minio.internal:9000",
            ),
            ("AGENTPLANE_OBJECT_STORE_REGION", "eu-west-1"),
            ("AGENTPLANE_OBJECT_STORE_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AGENTPLANE_OBJECT_STORE_SECRET_ACCESS_KEY",
                "s3-secret-example",
            ),
            ("AGENTPLANE_OBJECT_STORE_ALLOW_HTTP", "true"),
            (
                "AGENTPLANE_REGION_OBJECT_STORES",
                "eu=s3://objects-eu/prod;us=file:///srv/objects-us",
            ),
            (
                "AGENTPLANE_REGION_DATABASES",
                "eu=postgres://app:pw@eu-db/agentplane",
            ),
        ];
        // This list covers every field of ENV_VARS.
        for (field, names) in ENV_VARS {
            assert!(
                vars.iter().any(|(var, _)| names.contains(var)),
                "{field} is not covered"
            );
        }
        let cfg = from_env(&vars).unwrap();
        let dbs = cfg.region_databases().unwrap();
        assert_eq!(
            dbs.iter()
                .map(|(r, d)| (r.as_str(), d.expose_secret()))
                .collect::<Vec<_>>(),
            [("eu", "postgres://app:pw@eu-db/agentplane")]
        );
        let os = &cfg.object_store;
        assert_eq!(
            (
                os.url.as_deref(),
                os.endpoint.as_deref(),
                os.region.as_deref()
            ),
            (
                Some("s3://agentplane-objects/prod"),
                Some("http://minio.internal:9000"),
                Some("eu-west-1")
            )
        );
        assert_eq!(os.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(secret_of(&os.secret_access_key), Some("s3-secret-example"));
        assert!(os.allow_http);
        assert_eq!(
            os.regions,
            [
                ("eu".to_owned(), "s3://objects-eu/prod".to_owned()),
                ("us".to_owned(), "file:///srv/objects-us".to_owned())
            ]
        );
        for bad in [
            "eu",
            "eu=http://x",
            "EU=s3://b",
            "eu=file://relative",
            "eu=s3://a;eu=s3://b",
        ] {
            assert!(
                parse_region_stores("AGENTPLANE_REGION_OBJECT_STORES", bad).is_err(),
                "{bad}"
            );
        }
        assert!(
            !format!("{cfg:?}").contains("s3-secret-example"),
            "Debug redacts it"
        );
        let g = &cfg.gateway;
        assert_eq!(
            (g.quota_lease_ms, g.quota_idle_ms, g.default_max_tokens),
            (5000, 300, 256)
        );
        assert_eq!((g.upstream_timeout_secs, g.upstream_max_retries), (30, 0));
        assert_eq!((g.config_cache_ms, g.key_cache_ms), (0, 0));
        assert!(g.managed_identity_hosts[0].matches("x.openai.azure.com"));
        assert_eq!(
            cfg.regions.verdict("eu", "llm.eu.example.com"),
            agentplane_core::residency::Verdict::Allowed
        );
        assert_eq!(
            g.identity_endpoint.as_deref(),
            Some("http://127.0.0.1:41000/msi/token")
        );
        assert_eq!(secret_of(&g.identity_header), Some("id-header-secret"));
        let id = &cfg.identity;
        assert_eq!(
            (id.public_url.as_deref(), id.base_domain.as_deref()),
            (
                Some("https://agentplane.example.com/"),
                Some("agentplane.example.com")
            )
        );
        assert_eq!(
            (
                id.access_token_ttl_secs,
                id.session_ttl_secs,
                id.invitation_ttl_secs,
                id.signing_key_rotate_days
            ),
            (300, 7200, 3600, 7)
        );
        assert_eq!(
            secret_of(&id.smtp_url),
            Some("smtp://mail:pw@smtp.example.com:587?tls=required")
        );
        assert_eq!(
            id.mail_from.as_deref(),
            Some("Agentplane <noreply@example.com>")
        );
        assert_eq!(cfg.profile, Profile::Production);
        assert_eq!(cfg.listen, "[::1]:7000".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(secret_of(&cfg.tenant_catalog_dsn), Some("postgres://a"));
        assert_eq!(secret_of(&cfg.migrate_dsn), Some("postgres://owner"));
        assert_eq!(cfg.db_role, "app_role");
        assert_eq!(cfg.jwt.algorithm, Algorithm::ES256);
        assert_eq!(secret_of(&cfg.jwt.shared_secret), Some(STRONG));
        assert_eq!(cfg.jwt.jwks_file, Some(PathBuf::from("/etc/jwks.json")));
        assert_eq!(cfg.jwt.jwks_url.as_deref(), Some("https://idp/jwks"));
        assert_eq!(cfg.jwt.issuer.as_deref(), Some("iss"));
        assert_eq!(cfg.jwt.audience.as_deref(), Some("aud"));
        assert_eq!(cfg.jwt.leeway_secs, 5);
        assert!(cfg.allow_api_key_fallback);
        assert_eq!(
            cfg.worker,
            WorkerConfig {
                embedded: false,
                poll_interval_ms: 100,
                lease_secs: 30,
                purge_grace_hours: 1
            }
        );
        assert_eq!(cfg.max_body_bytes, 2048);
        assert_eq!(cfg.kms.provider, KmsProvider::Transit);
        assert_eq!(secret_of(&cfg.kms.master_keys), Some(KEYRING));
        assert_eq!(
            cfg.kms.master_key_file,
            Some(PathBuf::from("/etc/master.keys"))
        );
        assert_eq!(cfg.kms.transit_addr.as_deref(), Some("https://vault:8200"));
        assert_eq!(secret_of(&cfg.kms.transit_token), Some(VAULT_TOKEN));
        assert_eq!(cfg.kms.transit_mount, "kms");
        assert_eq!(cfg.kms.transit_key, "tenant-keys");
        assert_eq!(cfg.providers.allow_private_urls, Some(true));
    }

    #[test]
    fn seed_names_and_their_aliases() {
        let cfg = from_env(&[
            ("JWT_ALGORITHM", "HS512"),
            ("AGENTPLANE_JWT_ALGORITHM", "HS512"),
            ("JWT_SHARED_SECRET", STRONG),
            ("ALLOW_API_KEY_FALLBACK", "1"),
        ])
        .unwrap();
        assert_eq!(cfg.jwt.algorithm, Algorithm::HS512);
        assert_eq!(secret_of(&cfg.jwt.shared_secret), Some(STRONG));
        assert!(cfg.allow_api_key_fallback);

        let err = from_env(&[
            ("JWT_ALGORITHM", "HS256"),
            ("AGENTPLANE_JWT_ALGORITHM", "RS256"),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
        assert!(
            err.to_string().contains("JWT_ALGORITHM")
                && err.to_string().contains("AGENTPLANE_JWT_ALGORITHM")
        );
        let err = from_env(&[
            ("ALLOW_API_KEY_FALLBACK", "0"),
            ("AGENTPLANE_ALLOW_API_KEY_FALLBACK", "1"),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (var, value) in [
            ("ALLOW_API_KEY_FALLBACK", "yes"),
            ("AGENTPLANE_EMBEDDED_WORKER", "2"),
            ("AGENTPLANE_PROFILE", "staging"),
            ("AGENTPLANE_LISTEN", "localhost:8080"),
            ("AGENTPLANE_MAX_BODY_BYTES", "1MB"),
            ("AGENTPLANE_JOB_LEASE_SECS", "-1"),
            ("JWT_ALGORITHM", "none"),
            ("JWT_ALGORITHM", "None"),
            ("JWT_ALGORITHM", "PS512"),
            ("JWT_ALGORITHM", "EdDSA"),
            ("JWT_ALGORITHM", "HS1"),
            ("AGENTPLANE_KMS", "vault"),
            ("AGENTPLANE_KMS", "aws-kms"),
            ("AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS", "maybe"),
        ] {
            let err = from_env(&[(var, value)]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{var}={value}: {err}"
            );
            assert!(err.to_string().contains(var), "{err}");
        }
        assert!(from_env(&[("JWT_ALGORITHM", "none")])
            .unwrap_err()
            .to_string()
            .contains("never accepted"));
        for (value, expected) in [("true", true), ("1", true), ("False", false), ("0", false)] {
            assert_eq!(
                from_env(&[("ALLOW_API_KEY_FALLBACK", value)])
                    .unwrap()
                    .allow_api_key_fallback,
                expected
            );
        }
        // An empty value of a field without a "none" value counts as unset.
        assert!(
            !from_env(&[("ALLOW_API_KEY_FALLBACK", "")])
                .unwrap()
                .allow_api_key_fallback
        );
        // In the file too.
        let err = Config::from_sources(Some("[jwt]\nalgorithm = \"none\"\n"), &HashMap::new())
            .unwrap_err();
        assert!(err.to_string().contains("jwt.algorithm"), "{err}");
        let err =
            Config::from_sources(Some("[kms]\nprovider = \"aws\"\n"), &HashMap::new()).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err}");
        assert!(err.to_string().contains("kms.provider"), "{err}");
        // The provider is case-insensitive everywhere.
        for value in ["transit", "TRANSIT", " Transit "] {
            assert_eq!(
                from_env(&[("AGENTPLANE_KMS", value)]).unwrap().kms.provider,
                KmsProvider::Transit
            );
        }
        let cfg =
            Config::from_sources(Some("[kms]\nprovider = \"Local\"\n"), &HashMap::new()).unwrap();
        assert_eq!(cfg.kms.provider, KmsProvider::Local);
    }

    #[test]
    fn empty_dsn_means_embedded_sqlite_even_over_the_file() {
        let cfg = Config::from_sources(
            Some("tenant_catalog_dsn = \"postgres://file\"\n"),
            &env(&[("TENANT_CATALOG_DSN", "")]),
        )
        .unwrap();
        assert!(cfg.tenant_catalog_dsn.is_none());
        let cfg =
            Config::from_sources(Some("tenant_catalog_dsn = \"\"\n"), &HashMap::new()).unwrap();
        assert!(cfg.tenant_catalog_dsn.is_none());
    }

    #[test]
    fn unknown_toml_keys_are_errors() {
        for text in [
            "lisen = \"127.0.0.1:1\"\n",
            "[jwt]\nsecret = \"x\"\n",
            "[worker]\nlease = 3\n",
            "[kms]\nmaster_key = \"x\"\n",
            "[kms]\ntransit_url = \"https://vault:8200\"\n",
            "[providers]\nallow_private = true\n",
            "[db]\n",
        ] {
            let err = Config::from_sources(Some(text), &HashMap::new()).unwrap_err();
            assert!(matches!(err, ConfigError::Toml { .. }), "{text}: {err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
        let err = Config::from_sources(Some("listen = 8080\n"), &HashMap::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }), "{err}");
        let err = Config::from_sources(
            Some("[providers]\nallow_private_urls = \"yes\"\n"),
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }), "{err}");
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let dsn = write("dsn", "postgres://app@db/x\n");
        let owner = write("owner", "postgres://owner@db/x\r\n");
        let jwt = write("jwt", &format!("{STRONG}\n\n"));
        let cfg = from_env(&[
            ("TENANT_CATALOG_DSN_FILE", &dsn),
            ("AGENTPLANE_MIGRATE_DSN_FILE", &owner),
            ("JWT_SHARED_SECRET_FILE", &jwt),
        ])
        .unwrap();
        assert_eq!(
            secret_of(&cfg.tenant_catalog_dsn),
            Some("postgres://app@db/x")
        );
        assert_eq!(secret_of(&cfg.migrate_dsn), Some("postgres://owner@db/x"));
        assert_eq!(secret_of(&cfg.jwt.shared_secret), Some(STRONG));
        cfg.validate().unwrap();

        // The alias's _FILE works too, and TOML has `<key>_file`.
        let cfg = from_env(&[("AGENTPLANE_JWT_SHARED_SECRET_FILE", &jwt)]).unwrap();
        assert_eq!(secret_of(&cfg.jwt.shared_secret), Some(STRONG));
        let toml =
            format!("tenant_catalog_dsn_file = {dsn:?}\n[jwt]\nshared_secret_file = {jwt:?}\n");
        let cfg = Config::from_sources(Some(&toml), &HashMap::new()).unwrap();
        assert_eq!(
            secret_of(&cfg.tenant_catalog_dsn),
            Some("postgres://app@db/x")
        );
        assert_eq!(secret_of(&cfg.jwt.shared_secret), Some(STRONG));

        // Both forms at once is ambiguous.
        let err = from_env(&[
            ("JWT_SHARED_SECRET", STRONG),
            ("JWT_SHARED_SECRET_FILE", &jwt),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
        let toml = format!("[jwt]\nshared_secret = \"x\"\nshared_secret_file = {jwt:?}\n");
        let err = Config::from_sources(Some(&toml), &HashMap::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");

        // The KMS secrets: the master keyring and the transit token.
        let keys = write("keys", &format!("{KEYRING}\n"));
        let token = write("token", &format!("{VAULT_TOKEN}\n"));
        let cfg = from_env(&[
            ("AGENTPLANE_MASTER_KEYS_FILE", &keys),
            ("AGENTPLANE_TRANSIT_TOKEN_FILE", &token),
        ])
        .unwrap();
        assert_eq!(secret_of(&cfg.kms.master_keys), Some(KEYRING));
        assert_eq!(secret_of(&cfg.kms.transit_token), Some(VAULT_TOKEN));
        // `_FILE` of a secret is not the keyring file `AGENTPLANE_MASTER_KEY_FILE`.
        assert!(cfg.kms.master_key_file.is_none());
        let toml = format!("[kms]\nmaster_keys_file = {keys:?}\ntransit_token_file = {token:?}\n");
        let cfg = Config::from_sources(Some(&toml), &HashMap::new()).unwrap();
        assert_eq!(secret_of(&cfg.kms.master_keys), Some(KEYRING));
        assert_eq!(secret_of(&cfg.kms.transit_token), Some(VAULT_TOKEN));
        let err = from_env(&[
            ("AGENTPLANE_MASTER_KEYS", KEYRING),
            ("AGENTPLANE_MASTER_KEYS_FILE", &keys),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
        let toml = format!("[kms]\ntransit_token = \"x\"\ntransit_token_file = {token:?}\n");
        let err = Config::from_sources(Some(&toml), &HashMap::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("kms.transit_token_file"), "{err}");

        // A missing file names the variable and the path.
        let missing = dir.path().join("nope");
        let err = from_env(&[("JWT_SHARED_SECRET_FILE", missing.to_str().unwrap())]).unwrap_err();
        assert!(matches!(err, ConfigError::ReadSecretFile { .. }), "{err}");
        assert!(
            err.to_string().contains("JWT_SHARED_SECRET_FILE") && err.to_string().contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_prints_secrets() {
        let cfg = from_env(&[
            ("TENANT_CATALOG_DSN", "postgres://app:hunter2-dsn@db/x"),
            (
                "AGENTPLANE_MIGRATE_DSN",
                "postgres://owner:hunter2-owner@db/x",
            ),
            ("JWT_SHARED_SECRET", "hunter2-jwt-secret-hunter2-jwt-secret"),
            ("AGENTPLANE_MASTER_KEYS", "1:hunter2-master-key"),
            ("AGENTPLANE_TRANSIT_TOKEN", "hvs.hunter2-transit-token"),
        ])
        .unwrap();
        let debug = format!("{cfg:?} {cfg:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
        assert!(debug.contains("tenant_catalog_dsn") && debug.contains("shared_secret"));
        assert!(debug.contains("master_keys") && debug.contains("transit_token"));
        // The same through the TOML file.
        let cfg = Config::from_sources(
            Some(
                "[kms]\nprovider = \"transit\"\nmaster_keys = \"1:hunter2-file-key\"\n\
                 transit_token = \"hunter2-file-token\"\n",
            ),
            &HashMap::new(),
        )
        .unwrap();
        let debug = format!("{cfg:?} {cfg:#?} {:?}", cfg.kms);
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    fn valid_production() -> Config {
        from_env(&[
            ("AGENTPLANE_PROFILE", "production"),
            ("AGENTPLANE_LISTEN", "0.0.0.0:8080"),
            ("JWT_SHARED_SECRET", STRONG),
            ("AGENTPLANE_MASTER_KEYS", KEYRING),
        ])
        .unwrap()
    }

    fn refused(cfg: &Config) -> ConfigError {
        match cfg.validate() {
            Ok(()) => panic!("accepted: {cfg:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn identity_settings_are_checked_at_start() {
        let mut cfg = valid_production();
        cfg.identity.public_url = Some("http://agentplane.example.com".into());
        assert!(refused(&cfg).to_string().contains("AGENTPLANE_PUBLIC_URL"));
        cfg.identity.public_url = Some("https://agentplane.example.com".into());
        cfg.validate().unwrap();
        cfg.identity.access_token_ttl_secs = 86_400;
        assert!(refused(&cfg)
            .to_string()
            .contains("AGENTPLANE_ACCESS_TOKEN_TTL_SECS"));
        cfg.identity.access_token_ttl_secs = 600;
        cfg.identity.smtp_url = Some(SecretString::from("smtp://127.0.0.1:25"));
        assert!(refused(&cfg).to_string().contains("AGENTPLANE_MAIL_FROM"));
        cfg.identity.mail_from = Some("not an address".into());
        let e = refused(&cfg).to_string();
        assert!(
            e.contains("AGENTPLANE_SMTP_URL") && !e.contains("127.0.0.1"),
            "{e}"
        );
        cfg.identity.mail_from = Some("Agentplane <noreply@example.com>".into());
        cfg.validate().unwrap();
        cfg.identity.base_domain = Some("bad domain".into());
        assert!(refused(&cfg).to_string().contains("AGENTPLANE_BASE_DOMAIN"));
    }

    #[test]
    fn validate_accepts_sound_settings() {
        valid_production().validate().unwrap();
        let mut cfg = valid_production();
        cfg.jwt.shared_secret = None;
        cfg.jwt.algorithm = Algorithm::RS256;
        cfg.jwt.jwks_url = Some("https://idp.example/keys".into());
        cfg.validate().unwrap();
        cfg.jwt.jwks_url = None;
        cfg.jwt.jwks_file = Some("/etc/jwks.json".into());
        cfg.validate().unwrap();
        // Dev allows the API key fallback and a plain-http JWKS URL.
        let mut cfg = Config {
            allow_api_key_fallback: true,
            ..Config::default()
        };
        cfg.validate().unwrap();
        cfg.jwt.algorithm = Algorithm::ES256;
        cfg.jwt.jwks_url = Some("http://127.0.0.1:9/jwks".into());
        cfg.validate().unwrap();
        // Body limit boundaries.
        for value in [MIN_BODY_BYTES, MAX_BODY_BYTES] {
            Config {
                max_body_bytes: value,
                ..valid_production()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn validate_refuses_missing_or_weak_shared_secret() {
        let mut cfg = valid_production();
        cfg.jwt.shared_secret = None;
        assert!(matches!(
            refused(&cfg),
            ConfigError::MissingSharedSecret { algorithm: "HS256" }
        ));
        assert!(refused(&cfg).to_string().contains("JWT_SHARED_SECRET"));

        cfg.jwt.shared_secret = Some(STRONG[..31].into());
        assert!(matches!(
            refused(&cfg),
            ConfigError::WeakSharedSecret { len: 31 }
        ));
        // A short secret is refused even where a missing one is allowed (dev, loopback).
        let cfg = from_env(&[("JWT_SHARED_SECRET", "short")]).unwrap();
        assert!(matches!(
            refused(&cfg),
            ConfigError::WeakSharedSecret { len: 5 }
        ));
    }

    #[test]
    fn validate_refuses_bad_jwks_settings() {
        let mut cfg = valid_production();
        cfg.jwt.shared_secret = None;
        cfg.jwt.algorithm = Algorithm::PS256;
        let err = refused(&cfg);
        assert!(
            matches!(err, ConfigError::MissingJwks { algorithm: "PS256" }),
            "{err}"
        );
        assert!(err.to_string().contains("AGENTPLANE_JWKS_FILE"));

        cfg.jwt.jwks_file = Some("/etc/jwks.json".into());
        cfg.jwt.jwks_url = Some("https://idp/jwks".into());
        assert!(matches!(refused(&cfg), ConfigError::AmbiguousJwks));

        cfg.jwt.jwks_file = None;
        cfg.jwt.jwks_url = Some("http://idp/jwks".into());
        assert!(matches!(refused(&cfg), ConfigError::InsecureJwksUrl { .. }));
        cfg.jwt.jwks_url = Some("not a url".into());
        assert!(matches!(refused(&cfg), ConfigError::InvalidValue { .. }));
        cfg.jwt.jwks_url = Some("ftp://idp/jwks".into());
        assert!(matches!(refused(&cfg), ConfigError::InvalidValue { .. }));

        // A secret next to a public-key algorithm would be silently ignored.
        cfg.jwt.jwks_url = Some("https://idp/jwks".into());
        cfg.jwt.shared_secret = Some(STRONG.into());
        assert!(matches!(
            refused(&cfg),
            ConfigError::SharedSecretWithPublicKeyAlgorithm { .. }
        ));

        // A JWKS next to an HMAC algorithm would be silently ignored.
        let mut cfg = valid_production();
        cfg.jwt.jwks_file = Some("/etc/jwks.json".into());
        assert!(matches!(
            refused(&cfg),
            ConfigError::JwksWithHmacAlgorithm { .. }
        ));
    }

    #[test]
    fn validate_refuses_api_key_fallback_in_production() {
        let cfg = Config {
            allow_api_key_fallback: true,
            ..valid_production()
        };
        let err = refused(&cfg);
        assert!(matches!(err, ConfigError::ApiKeyFallbackInProduction));
        assert!(err.to_string().contains("ALLOW_API_KEY_FALLBACK"));
    }

    #[test]
    fn validate_refuses_dev_profile_on_a_public_address_without_keys() {
        let cfg = from_env(&[("AGENTPLANE_LISTEN", "0.0.0.0:8080")]).unwrap();
        let err = refused(&cfg);
        assert!(
            matches!(err, ConfigError::DevProfileExposed { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("AGENTPLANE_LISTEN"));
        // Loopback in both families is fine.
        from_env(&[("AGENTPLANE_LISTEN", "[::1]:8080")])
            .unwrap()
            .validate()
            .unwrap();
        // A strong secret or a JWKS makes it fine.
        from_env(&[
            ("AGENTPLANE_LISTEN", "0.0.0.0:8080"),
            ("JWT_SHARED_SECRET", STRONG),
        ])
        .unwrap()
        .validate()
        .unwrap();
        from_env(&[
            ("AGENTPLANE_LISTEN", "0.0.0.0:8080"),
            ("JWT_ALGORITHM", "RS256"),
            ("AGENTPLANE_JWKS_FILE", "/etc/jwks.json"),
        ])
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn validate_refuses_out_of_range_numbers_and_bad_role() {
        for value in [MIN_BODY_BYTES - 1, MAX_BODY_BYTES + 1, 0] {
            let err = refused(&Config {
                max_body_bytes: value,
                ..valid_production()
            });
            assert!(
                matches!(err, ConfigError::BodyLimitOutOfRange { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("AGENTPLANE_MAX_BODY_BYTES"));
        }
        let mut cfg = valid_production();
        cfg.jwt.leeway_secs = MAX_LEEWAY_SECS + 1;
        assert!(matches!(refused(&cfg), ConfigError::LeewayTooLarge { .. }));

        let mut cfg = valid_production();
        cfg.worker.lease_secs = 0;
        assert!(matches!(
            refused(&cfg),
            ConfigError::Zero {
                name: "AGENTPLANE_JOB_LEASE_SECS"
            }
        ));
        let mut cfg = valid_production();
        cfg.worker.poll_interval_ms = 0;
        assert!(matches!(refused(&cfg), ConfigError::Zero { .. }));

        for role in [
            "",
            "App",
            "app-role",
            "1app",
            "app; DROP ROLE x",
            &"a".repeat(64),
        ] {
            let cfg = Config {
                db_role: role.to_owned(),
                ..valid_production()
            };
            assert!(
                matches!(refused(&cfg), ConfigError::InvalidDbRole { .. }),
                "{role}"
            );
        }
        Config {
            db_role: "_app_2".into(),
            ..valid_production()
        }
        .validate()
        .unwrap();
    }

    fn valid_transit() -> Config {
        let mut cfg = valid_production();
        cfg.kms = KmsConfig {
            provider: KmsProvider::Transit,
            transit_addr: Some("https://vault:8200".into()),
            transit_token: Some(VAULT_TOKEN.into()),
            ..KmsConfig::default()
        };
        cfg
    }

    #[test]
    fn kms_toml_then_env_precedence() {
        let toml = r#"
            [kms]
            provider = "transit"
            transit_addr = "https://file-vault:8200"
            transit_token = "file-token"
            transit_mount = "file_mount"
            transit_key = "file-key"
        "#;
        let cfg = Config::from_sources(Some(toml), &HashMap::new()).unwrap();
        assert_eq!(cfg.kms.provider, KmsProvider::Transit);
        assert_eq!(
            cfg.kms.transit_addr.as_deref(),
            Some("https://file-vault:8200")
        );
        assert_eq!(secret_of(&cfg.kms.transit_token), Some("file-token"));
        assert_eq!(cfg.kms.transit_mount, "file_mount");
        assert_eq!(cfg.kms.transit_key, "file-key");
        assert!(!cfg.may_create_master_keys());
        cfg.validate().unwrap();

        let vars = env(&[
            ("AGENTPLANE_TRANSIT_ADDR", "https://env-vault:8200"),
            ("AGENTPLANE_TRANSIT_TOKEN", VAULT_TOKEN),
            ("AGENTPLANE_TRANSIT_KEY", "env-key"),
        ]);
        let cfg = Config::from_sources(Some(toml), &vars).unwrap();
        assert_eq!(cfg.kms.provider, KmsProvider::Transit);
        assert_eq!(
            cfg.kms.transit_addr.as_deref(),
            Some("https://env-vault:8200")
        );
        assert_eq!(secret_of(&cfg.kms.transit_token), Some(VAULT_TOKEN));
        assert_eq!(cfg.kms.transit_mount, "file_mount");
        assert_eq!(cfg.kms.transit_key, "env-key");

        // The environment switches back to the local provider; empty values unset the file's
        // transit address and token (an empty mount or key counts as unset).
        let vars = env(&[
            ("AGENTPLANE_KMS", "local"),
            ("AGENTPLANE_TRANSIT_ADDR", ""),
            ("AGENTPLANE_TRANSIT_TOKEN", ""),
            ("AGENTPLANE_TRANSIT_MOUNT", ""),
            ("AGENTPLANE_MASTER_KEY_FILE", "/run/keys/master.keys"),
        ]);
        let cfg = Config::from_sources(Some(toml), &vars).unwrap();
        assert_eq!(cfg.kms.provider, KmsProvider::Local);
        assert!(cfg.kms.transit_addr.is_none() && cfg.kms.transit_token.is_none());
        assert_eq!(cfg.kms.transit_mount, "file_mount");
        assert_eq!(
            cfg.master_key_path(),
            PathBuf::from("/run/keys/master.keys")
        );

        // Master keys: the file sets them, the environment replaces or clears them.
        let toml = format!("[kms]\nmaster_keys = {KEYRING:?}\n");
        let cfg = Config::from_sources(Some(&toml), &HashMap::new()).unwrap();
        assert_eq!(secret_of(&cfg.kms.master_keys), Some(KEYRING));
        let cfg = Config::from_sources(Some(&toml), &env(&[("AGENTPLANE_MASTER_KEYS", "2:other")]))
            .unwrap();
        assert_eq!(secret_of(&cfg.kms.master_keys), Some("2:other"));
        let cfg =
            Config::from_sources(Some(&toml), &env(&[("AGENTPLANE_MASTER_KEYS", "")])).unwrap();
        assert!(cfg.kms.master_keys.is_none());
        let cfg = Config::from_sources(
            Some("[kms]\nmaster_key_file = \"/file/master.keys\"\n"),
            &env(&[("AGENTPLANE_MASTER_KEY_FILE", "")]),
        )
        .unwrap();
        assert!(cfg.kms.master_key_file.is_none());
        assert!(cfg.may_create_master_keys());
    }

    #[test]
    fn master_keyring_location_and_creation() {
        let dev = Config {
            data_dir: PathBuf::from("/srv/ap"),
            ..Config::default()
        };
        assert_eq!(dev.master_key_path(), PathBuf::from("/srv/ap/master.keys"));
        assert!(dev.may_create_master_keys());

        // An explicitly named file is used as-is, never created.
        let mut named = dev.clone();
        named.kms.master_key_file = Some("/etc/ap/keys".into());
        assert_eq!(named.master_key_path(), PathBuf::from("/etc/ap/keys"));
        assert!(!named.may_create_master_keys());
        // Inline keys need no file.
        let mut inline = dev.clone();
        inline.kms.master_keys = Some(KEYRING.into());
        assert!(!inline.may_create_master_keys());
        // Never in production, never with transit.
        let production = Config {
            profile: Profile::Production,
            ..dev.clone()
        };
        assert!(!production.may_create_master_keys());
        assert_eq!(
            production.master_key_path(),
            PathBuf::from("/srv/ap/master.keys")
        );
        let mut transit = dev.clone();
        transit.kms.provider = KmsProvider::Transit;
        assert!(!transit.may_create_master_keys());
    }

    #[test]
    fn private_provider_urls_follow_the_profile_unless_set() {
        assert!(from_env(&[]).unwrap().allow_private_provider_urls());
        assert!(!valid_production().allow_private_provider_urls());
        let cfg = from_env(&[
            ("AGENTPLANE_PROFILE", "production"),
            ("AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS", "true"),
        ])
        .unwrap();
        assert!(cfg.allow_private_provider_urls());
        let cfg = from_env(&[("AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS", "0")]).unwrap();
        assert_eq!(cfg.providers.allow_private_urls, Some(false));
        assert!(!cfg.allow_private_provider_urls());
        // Empty = unset: the profile's default.
        let cfg = from_env(&[("AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS", "")]).unwrap();
        assert_eq!(cfg.providers.allow_private_urls, None);
        // An opt-in is valid in production.
        let mut cfg = valid_production();
        cfg.providers.allow_private_urls = Some(true);
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_accepts_sound_kms_settings() {
        // Production, local: inline keys or a named keyring file.
        valid_production().validate().unwrap();
        let mut cfg = valid_production();
        cfg.kms.master_keys = None;
        cfg.kms.master_key_file = Some("/etc/agentplane/master.keys".into());
        cfg.validate().unwrap();
        // Dev, local: nothing needed (the keyring is generated).
        Config::default().validate().unwrap();

        // Transit over https, or plain http to a loopback host even in production.
        valid_transit().validate().unwrap();
        for addr in [
            "http://127.0.0.1:8200",
            "http://127.1.2.3:8200/",
            "http://localhost:8200",
            "http://LOCALHOST:8200",
            "http://[::1]:8200",
            "https://10.0.0.5:8200",
        ] {
            let mut cfg = valid_transit();
            cfg.kms.transit_addr = Some(addr.into());
            cfg.validate().unwrap_or_else(|e| panic!("{addr}: {e}"));
        }
        // Dev allows plain http anywhere.
        let mut cfg = valid_transit();
        cfg.profile = Profile::Dev;
        cfg.kms.transit_addr = Some("http://vault:8200".into());
        cfg.validate().unwrap();
        // Mount and key names at their limits.
        let mut cfg = valid_transit();
        cfg.kms.transit_mount = "a".repeat(MAX_TRANSIT_NAME_LEN);
        cfg.kms.transit_key = "Tenant_Keys-2".into();
        cfg.validate().unwrap();
        cfg.kms.transit_mount = "m".into();
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_refuses_incomplete_transit_settings() {
        let mut cfg = valid_transit();
        cfg.kms.transit_addr = None;
        let err = refused(&cfg);
        assert!(matches!(err, ConfigError::MissingTransitAddr), "{err}");
        assert!(err.to_string().contains("AGENTPLANE_TRANSIT_ADDR"), "{err}");
        // Dev needs them too.
        cfg.profile = Profile::Dev;
        assert!(matches!(refused(&cfg), ConfigError::MissingTransitAddr));

        let mut cfg = valid_transit();
        cfg.kms.transit_token = None;
        let err = refused(&cfg);
        assert!(matches!(err, ConfigError::MissingTransitToken), "{err}");
        assert!(
            err.to_string().contains("AGENTPLANE_TRANSIT_TOKEN")
                && err.to_string().contains("AGENTPLANE_TRANSIT_TOKEN_FILE"),
            "{err}"
        );
    }

    #[test]
    fn validate_refuses_bad_transit_addresses() {
        for addr in [
            "vault:8200/x y",
            "not a url",
            "/v1/transit",
            "ftp://vault:8200",
            "unix:/run/vault.sock",
        ] {
            let mut cfg = valid_transit();
            cfg.kms.transit_addr = Some(addr.into());
            let err = refused(&cfg);
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{addr}: {err}"
            );
            assert!(err.to_string().contains("AGENTPLANE_TRANSIT_ADDR"), "{err}");
        }
        for addr in [
            "http://vault:8200",
            "http://10.0.0.5:8200",
            "http://127.0.0.1.nip.io:8200",
            "http://localhost.example:8200",
        ] {
            let mut cfg = valid_transit();
            cfg.kms.transit_addr = Some(addr.into());
            let err = refused(&cfg);
            assert!(
                matches!(err, ConfigError::InsecureTransitAddr { .. }),
                "{addr}: {err}"
            );
            assert!(
                err.to_string().contains("AGENTPLANE_TRANSIT_ADDR")
                    && err.to_string().contains("https://"),
                "{err}"
            );
        }
    }

    #[test]
    fn validate_refuses_bad_transit_names() {
        let too_long = "k".repeat(MAX_TRANSIT_NAME_LEN + 1);
        for bad in [
            "",
            "a/b",
            "a.b",
            "key name",
            "clé",
            "../sys",
            too_long.as_str(),
        ] {
            let mut cfg = valid_transit();
            cfg.kms.transit_mount = bad.to_owned();
            let err = refused(&cfg);
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{bad}: {err}"
            );
            assert!(
                err.to_string().contains("AGENTPLANE_TRANSIT_MOUNT"),
                "{err}"
            );

            let mut cfg = valid_transit();
            cfg.kms.transit_key = bad.to_owned();
            let err = refused(&cfg);
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("AGENTPLANE_TRANSIT_KEY"), "{err}");
        }
    }

    #[test]
    fn validate_refuses_a_generated_or_ambiguous_keyring() {
        // Production never generates a keyring.
        let mut cfg = valid_production();
        cfg.kms.master_keys = None;
        let err = refused(&cfg);
        assert!(matches!(err, ConfigError::MissingMasterKeys), "{err}");
        assert!(
            err.to_string().contains("AGENTPLANE_MASTER_KEYS")
                && err.to_string().contains("AGENTPLANE_MASTER_KEY_FILE"),
            "{err}"
        );
        // Both kinds of keyring at once, in either profile.
        let mut cfg = valid_production();
        cfg.kms.master_key_file = Some("/etc/agentplane/master.keys".into());
        let err = refused(&cfg);
        assert!(matches!(err, ConfigError::AmbiguousMasterKeys), "{err}");
        assert!(
            err.to_string().contains("AGENTPLANE_MASTER_KEYS")
                && err.to_string().contains("AGENTPLANE_MASTER_KEY_FILE"),
            "{err}"
        );
        cfg.profile = Profile::Dev;
        assert!(matches!(refused(&cfg), ConfigError::AmbiguousMasterKeys));
    }

    #[test]
    fn validate_refuses_settings_the_provider_would_ignore() {
        type Setter = fn(&mut KmsConfig);
        let local_with: [(&str, Setter); 4] = [
            ("AGENTPLANE_TRANSIT_ADDR", |k| {
                k.transit_addr = Some("https://vault:8200".into())
            }),
            ("AGENTPLANE_TRANSIT_TOKEN", |k| {
                k.transit_token = Some(VAULT_TOKEN.into())
            }),
            ("AGENTPLANE_TRANSIT_MOUNT", |k| {
                k.transit_mount = "kms".into()
            }),
            ("AGENTPLANE_TRANSIT_KEY", |k| k.transit_key = "other".into()),
        ];
        for (var, set) in local_with {
            for mut cfg in [valid_production(), Config::default()] {
                set(&mut cfg.kms);
                let err = refused(&cfg);
                assert!(
                    matches!(
                        err,
                        ConfigError::IgnoredKmsSetting {
                            provider: KmsProvider::Local,
                            name,
                        } if name == var
                    ),
                    "{var}: {err}"
                );
                assert!(
                    err.to_string().contains(var)
                        && err.to_string().contains("AGENTPLANE_KMS=local"),
                    "{err}"
                );
            }
        }

        let mut cfg = valid_transit();
        cfg.kms.master_keys = Some(KEYRING.into());
        let err = refused(&cfg);
        assert!(
            matches!(
                err,
                ConfigError::IgnoredKmsSetting {
                    provider: KmsProvider::Transit,
                    name: "AGENTPLANE_MASTER_KEYS",
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("AGENTPLANE_KMS=transit"), "{err}");
        let mut cfg = valid_transit();
        cfg.kms.master_key_file = Some("/etc/agentplane/master.keys".into());
        assert!(matches!(
            refused(&cfg),
            ConfigError::IgnoredKmsSetting {
                name: "AGENTPLANE_MASTER_KEY_FILE",
                ..
            }
        ));

        // Through the environment, end to end.
        let err = from_env(&[("AGENTPLANE_TRANSIT_ADDR", "https://vault:8200")])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::IgnoredKmsSetting { .. }),
            "{err}"
        );
    }

    #[test]
    fn dev_secret_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested").join("data");
        let cfg = Config {
            data_dir: data_dir.clone(),
            ..Config::default()
        };
        let first = cfg.dev_secret().unwrap().unwrap();
        let path = data_dir.join("dev-jwt-secret");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(on_disk, first.expose_secret());
        assert_eq!(on_disk.len(), 64);
        assert!(on_disk.chars().all(|c| c.is_ascii_hexdigit()));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&data_dir).unwrap().count(), 1);

        let second = cfg.dev_secret().unwrap().unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        // Another data dir gets another secret.
        let other = Config {
            data_dir: dir.path().join("other"),
            ..Config::default()
        };
        assert_ne!(
            other.dev_secret().unwrap().unwrap().expose_secret(),
            first.expose_secret()
        );

        // A damaged file is refused, not silently used.
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            cfg.dev_secret(),
            Err(ConfigError::BadDevSecret { .. })
        ));
    }

    #[test]
    fn dev_secret_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let base = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let configured = Config {
            jwt: JwtConfig {
                shared_secret: Some(STRONG.into()),
                ..JwtConfig::default()
            },
            ..base.clone()
        };
        assert!(configured.dev_secret().unwrap().is_none());
        let production = Config {
            profile: Profile::Production,
            ..base.clone()
        };
        assert!(production.dev_secret().unwrap().is_none());
        let rs = Config {
            jwt: JwtConfig {
                algorithm: Algorithm::RS256,
                ..JwtConfig::default()
            },
            ..base.clone()
        };
        assert!(rs.dev_secret().unwrap().is_none());
        assert!(!dir.path().join(DEV_SECRET_FILE).exists());
        assert!(base.dev_secret().unwrap().is_some());
        assert!(dir.path().join(DEV_SECRET_FILE).exists());
    }

    #[test]
    fn load_reads_the_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = Config::load(Some(&missing)).unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "nonsense = 1\n").unwrap();
        let err = Config::load(Some(&bad)).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
