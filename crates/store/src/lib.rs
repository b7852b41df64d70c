//! Persistence of Agentplane: the [`Store`] trait and its two implementations,
//! [`SqliteStore`] (embedded default) and [`PgStore`] (production, with row-level security).
//!
//! Architecture invariants of this crate:
//! - It is the only crate that imports `sqlx`.
//! - Every method that reads or writes tenant-owned rows takes a [`TenantCtx`] (or, for the
//!   named cross-tenant paths, a [`PlatformCtx`]); on PostgreSQL the transaction is scoped to
//!   that tenant with `set_config('app.tenant_id', ..., true)`, so RLS is a second wall.
//! - A change and its audit event commit in the same transaction.
//! - It stores what it is given: ids, timestamps and decisions come from the planes.
//!
//! The SQL lives once, in `ops.rs`, which is compiled separately for each backend (each
//! backend module includes it with its own concrete `Db` type); what differs per backend
//! (connection setup, migrations, scoped transactions, job claiming) lives in
//! `sqlite.rs` and `postgres.rs`.

mod error;
pub mod exports;
pub mod identity;
mod key_cache;
pub mod moves;
pub mod objects;
mod postgres;
mod regional;
mod rows;
mod sqlite;

pub use error::{Conflict, StoreError};
pub use objects::Objects;
pub use postgres::PgStore;
pub use regional::RegionalStore;
pub use sqlite::SqliteStore;
pub use sqlx::Error as SqlxError;

use agentplane_core::audit::{AuditEvent, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::Job;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::plan::Plan;
use agentplane_core::quota::{Amount, CounterState, Exhausted};
use agentplane_core::tenant::{Slug, Tenant};
use agentplane_core::time::Timestamp;
use agentplane_core::usage::{UsageCounter, UsageRecord};
use agentplane_core::{JobId, PlanId, TenantId, UserId};
use async_trait::async_trait;
use serde_json::Value;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A stored response to a request made with an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub request_hash: String,
    pub status: u16,
    pub response: String,
    pub created_at: Timestamp,
}

/// Everything a tenant creation writes, atomically.
#[derive(Clone, Debug)]
pub struct NewTenant {
    pub tenant: Tenant,
    pub provisioning_job: Job,
    pub audit: NewAuditEvent,
    pub idempotency: Option<IdempotencyRecord>,
}

/// A tenant user (membership).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Member {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub email: String,
    /// Display name in this tenant.
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub custom_roles: Vec<String>,
    pub status: String,
    /// Whether the membership has a local password (never the hash itself).
    pub has_password: bool,
    /// The identity provider's id of this person (SCIM `externalId`).
    pub external_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_sign_in_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Default)]
pub struct MemberFilter {
    pub role: Option<String>,
    pub status: Option<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Setting {
    pub key: String,
    pub version: i64,
    pub value: Value,
    pub updated_at: Timestamp,
}

/// A change of one setting. With `expected_version` (0: the tenant has no value for the key
/// yet) the change is refused if the setting moved on since; without, it applies on top of
/// whatever is current (last writer wins, each write its own version).
#[derive(Clone, Debug)]
pub struct SettingChange {
    pub key: String,
    pub value: Value,
    pub expected_version: Option<i64>,
    pub actor: agentplane_core::authz::Actor,
    pub ts: Timestamp,
}

/// What `put_setting` did.
#[derive(Clone, Debug)]
pub struct SettingWrite {
    pub setting: Setting,
    pub previous: Option<Value>,
    /// False when the value was already current: no version, no history, no event.
    pub changed: bool,
}

/// One version of a setting.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SettingVersion {
    pub key: String,
    pub version: i64,
    pub value: Value,
    pub previous: Option<Value>,
    pub actor_kind: String,
    pub actor_id: String,
    pub ts: Timestamp,
}

/// One version of a tenant's data key, as stored: wrapped, never in the clear.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TenantKey {
    pub version: i64,
    /// The KMS that wrapped it (`local`, `transit:<key>`).
    pub kms: String,
    pub kek_version: i64,
    #[serde(skip)]
    pub wrapped: String,
    /// `active` (seals new data) or `retired` (opens old data only).
    pub state: String,
    pub created_at: Timestamp,
}

/// One version of an agent, as it was.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AgentVersion {
    pub version: i64,
    pub agent: agentplane_core::agent::Agent,
    pub actor_kind: String,
    pub actor_id: String,
    pub ts: Timestamp,
}

/// A provider credential as stored: its secret sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    pub provider: agentplane_core::provider::Provider,
    pub sealed_secret: Vec<u8>,
}

/// A shared provider with its secret, sealed under its own data key (`wrapped_key`, JSON,
/// wrapped by the KMS for the platform).
#[derive(Clone, Debug)]
pub struct SharedProviderRecord {
    pub provider: agentplane_core::provider::SharedProvider,
    pub wrapped_key: String,
    pub sealed_secret: Vec<u8>,
}

/// What provisioning creates for a new tenant.
#[derive(Clone, Debug)]
pub struct Provisioning {
    pub settings: Vec<(String, Value)>,
    pub first_admin: Member,
    pub period: String,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TimeRange {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// Personal data held beside an audit event: its salt and value.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditPii {
    pub salt: Vec<u8>,
    pub value: Value,
}

/// Counts of what a purge removed, for its audit event.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub settings: u64,
    pub setting_history: u64,
    pub branding: u64,
    pub providers: u64,
    pub tenant_keys: u64,
    pub agents: u64,
    pub api_keys: u64,
    pub memberships: u64,
    /// People who belonged to no other tenant, forgotten with it.
    pub people: u64,
    pub usage_counters: u64,
    pub usage_records: u64,
    pub jobs: u64,
    pub audit_pii: u64,
}

/// A presented API key as the auth layer checks it.
#[derive(Clone, Debug)]
pub struct ApiKeyLookup {
    pub key: agentplane_core::api_key::ApiKey,
    pub secret_hash: String,
    pub tenant_status: agentplane_core::tenant::TenantStatus,
    pub plan_id: PlanId,
    pub region: String,
}

/// A request for quota, on behalf of one process's lease.
#[derive(Clone, Debug)]
pub struct LeaseRequest {
    pub period: String,
    pub lease_id: String,
    /// The process holding the lease.
    pub holder: String,
    /// What the lease must cover on top of what it has left.
    pub need: Amount,
    /// The plan's monthly limits.
    pub limit: Amount,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// One step of quota settlement.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // almost every op is a Settle; boxing it would only add an allocation
pub enum QuotaOp {
    /// A finished run: its usage record, and what it consumed of its lease (counted in the
    /// counter's `used`; a run that failed upstream consumes nothing).
    Settle {
        ctx: TenantCtx,
        record: UsageRecord,
        period: String,
        lease_id: String,
        consumed: Amount,
        /// The plan's limits: crossing 80% or 100% of one enqueues a notification, once.
        limit: Amount,
    },
    /// Returns what is left of a lease to the tenant.
    Release {
        ctx: TenantCtx,
        period: String,
        lease_id: String,
    },
}

#[async_trait]
pub trait Store:
    identity::IdentityStore + exports::ExportStore + moves::MoveStore + Send + Sync + 'static
{
    fn backend(&self) -> Backend;
    /// Whether tenants of regions `a` and `b` are kept in the same database (so a tenant
    /// can move between them without its rows moving).
    fn shares_database(&self, _a: &str, _b: &str) -> bool {
        true
    }
    /// The name of the database that keeps a region's tenants: `main`, or the region's own.
    fn database_of_region(&self, _region: &str) -> String {
        "main".to_owned()
    }
    /// Moves the tenant's rows to the database of region `to` and re-pins it there, with
    /// `audit` (on its chain) in the same transaction as the re-pinning (see `moves.rs`).
    /// Picks up where an interrupted move stopped. Answers the rows copied.
    async fn relocate_tenant(
        &self,
        _ctx: &TenantCtx,
        _to: &str,
        _audit: NewAuditEvent,
    ) -> Result<u64> {
        Err(StoreError::Config(
            "this deployment keeps every tenant in one database".into(),
        ))
    }
    /// A round trip to the database.
    async fn ping(&self) -> Result<()>;

    // --- Plans (platform data, not tenant-owned) ---
    async fn list_plans(&self, page: &PageRequest) -> Result<Page<Plan>>;
    async fn get_plan(&self, id: &PlanId) -> Result<Option<Plan>>;
    /// `Conflict::PlanId` if the id is taken, `Conflict::IdempotencyKey` if the key was used
    /// concurrently; nothing is written in either case.
    async fn insert_plan(
        &self,
        plan: &Plan,
        audit: NewAuditEvent,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<()>;
    /// Copies a plan into this database unless it is there already (plans are immutable),
    /// without an audit event: a region's database holds the plans its tenants refer to.
    async fn copy_plan(&self, plan: &Plan) -> Result<()>;

    // --- Tenant catalog ---
    /// `Conflict::IdempotencyKey` if the key was used concurrently, `Conflict::Slug` if the
    /// slug is taken. Nothing is written in either case.
    async fn insert_tenant(&self, new: NewTenant) -> Result<()>;
    /// Looks a tenant up by id for the auth layer (status checks) and the operator paths.
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>>;
    async fn list_tenants(
        &self,
        platform: &PlatformCtx,
        page: &PageRequest,
    ) -> Result<Page<Tenant>>;
    async fn slug_taken(&self, slug: &Slug) -> Result<bool>;
    /// The tenant with this slug (sign-in's tenant discovery).
    async fn tenant_by_slug(&self, slug: &Slug) -> Result<Option<Tenant>>;
    /// Writes `tenant` if its stored version is still `expected_version` (else
    /// `Conflict::Version`), with an optional job to enqueue and the audit event.
    async fn update_tenant(
        &self,
        ctx: &TenantCtx,
        tenant: &Tenant,
        expected_version: i64,
        job: Option<&Job>,
        audit: NewAuditEvent,
    ) -> Result<()>;

    // --- Jobs ---
    /// Claims the next due job (or one whose lease expired) with a fresh lease.
    async fn claim_job(&self, now: Timestamp, lease_ms: i64) -> Result<Option<Job>>;
    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;
    /// The tenant's jobs, newest id last (ids are time-ordered).
    async fn list_jobs(&self, ctx: &TenantCtx, page: &PageRequest) -> Result<Page<Job>>;
    /// One of the tenant's jobs.
    async fn tenant_job(&self, ctx: &TenantCtx, id: JobId) -> Result<Option<Job>>;
    /// A running job's heartbeat: renews its lease and records its progress. Answers whether
    /// cancellation was asked for; `Conflict::LeaseLost` if another worker has it now.
    async fn heartbeat_job(
        &self,
        job: &Job,
        now: Timestamp,
        lease_ms: i64,
        progress: Option<(i64, &str)>,
    ) -> Result<bool>;
    /// Asks for a job's cancellation (with its audit event): a queued job is cancelled at once,
    /// a running one when it next beats. `None` if the tenant has no such job; a finished job
    /// is answered as it is, unchanged.
    async fn cancel_job(
        &self,
        ctx: &TenantCtx,
        id: JobId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Job>>;
    /// A claimed job that saw its cancellation stops: `cancelled`.
    async fn finish_cancelled(&self, job: &Job, now: Timestamp) -> Result<()>;
    /// Marks a claimed job done (`Conflict::LeaseLost` if another worker has it now).
    async fn complete_job(&self, job: &Job, now: Timestamp) -> Result<()>;
    /// Records a failed attempt: requeued with backoff, or dead after `max_attempts`.
    async fn fail_job(&self, job: &Job, error: &str, now: Timestamp) -> Result<()>;
    /// Provisioning's effects, the tenant's activation and the job's completion, at once.
    async fn finish_provisioning(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        tenant: &Tenant,
        p: &Provisioning,
        audit: NewAuditEvent,
        now: Timestamp,
    ) -> Result<()>;
    /// Deletes the tenant's data (not its audit chain, which stays verifiable; its personal
    /// data is deleted) and the tenant, and completes the job.
    async fn purge_tenant(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        audit: NewAuditEvent,
        now: Timestamp,
    ) -> Result<PurgeReport>;

    // --- Tenant data ---
    async fn list_members(
        &self,
        ctx: &TenantCtx,
        filter: &MemberFilter,
        page: &PageRequest,
    ) -> Result<Page<Member>>;
    async fn list_settings(&self, ctx: &TenantCtx) -> Result<Vec<Setting>>;
    async fn get_setting(&self, ctx: &TenantCtx, key: &str) -> Result<Option<Setting>>;
    /// Writes a new version of a setting with its history row and audit event (the store adds
    /// `version` and `previous` to the event's data, as it reads them under a row lock);
    /// `Conflict::Version` if `expected_version` is set and the setting moved on.
    async fn put_setting(
        &self,
        ctx: &TenantCtx,
        change: &SettingChange,
        audit: NewAuditEvent,
    ) -> Result<SettingWrite>;
    /// The versions of a setting, newest first.
    async fn setting_history(
        &self,
        ctx: &TenantCtx,
        key: &str,
        page: &PageRequest,
    ) -> Result<Page<SettingVersion>>;
    async fn setting_version(
        &self,
        ctx: &TenantCtx,
        key: &str,
        version: i64,
    ) -> Result<Option<SettingVersion>>;
    async fn get_branding(&self, ctx: &TenantCtx) -> Result<agentplane_core::branding::Branding>;
    /// The tenant whose console is served on `domain` (its branding's custom domain): the
    /// console's tenant discovery, before anyone signed in.
    async fn tenant_by_domain(&self, domain: &str) -> Result<Option<TenantId>>;
    /// Writes the branding if its stored version is still `expected_version` (0: never set),
    /// with its audit event. `Conflict::Version` if it moved on, `Conflict::Domain` if the
    /// custom domain belongs to another tenant.
    async fn put_branding(
        &self,
        ctx: &TenantCtx,
        branding: &agentplane_core::branding::Branding,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()>;
    // --- Keys and provider credentials ---
    async fn tenant_keys(&self, ctx: &TenantCtx) -> Result<Vec<TenantKey>>;
    /// Adds a data-key version; with `retire_others`, the others become `retired` in the same
    /// transaction. `Conflict::Version` if that version exists (a concurrent creation).
    async fn insert_tenant_key(
        &self,
        ctx: &TenantCtx,
        key: &TenantKey,
        retire_others: bool,
        job: Option<&Job>,
        audit: Option<NewAuditEvent>,
    ) -> Result<()>;
    /// Replaces a key's wrapping if it is still `old_wrapped` (master-key rotation).
    async fn rewrap_tenant_key(
        &self,
        ctx: &TenantCtx,
        version: i64,
        old_wrapped: &str,
        kms: &str,
        kek_version: i64,
        wrapped: &str,
    ) -> Result<bool>;
    /// Every tenant's wrapped keys (for master-key rotation), ordered by tenant and version.
    async fn all_tenant_keys(&self, platform: &PlatformCtx) -> Result<Vec<(TenantId, TenantKey)>>;
    /// `Conflict::Name` if a shared provider of that name exists.
    async fn insert_shared_provider(
        &self,
        platform: &PlatformCtx,
        rec: &SharedProviderRecord,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn list_shared_providers(&self) -> Result<Vec<SharedProviderRecord>>;
    async fn rewrap_shared_provider(&self, id: &str, wrapped_key: &str) -> Result<()>;
    async fn get_shared_provider(&self, id: &str) -> Result<Option<SharedProviderRecord>>;
    /// Replaces the plans that grant the shared provider.
    async fn set_shared_provider_plans(
        &self,
        platform: &PlatformCtx,
        id: &str,
        plans: &[String],
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool>;
    /// `Conflict::Name` if the tenant has a provider of that name.
    async fn insert_provider(
        &self,
        ctx: &TenantCtx,
        rec: &ProviderRecord,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn get_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
    ) -> Result<Option<ProviderRecord>>;
    async fn list_providers(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<ProviderRecord>>;
    /// Writes the record if its stored version is `expected_version`, with its audit event
    /// (`Conflict::Version`, `Conflict::Name`).
    async fn update_provider(
        &self,
        ctx: &TenantCtx,
        rec: &ProviderRecord,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()>;
    /// Replaces a sealed secret if it is still sealed with `old_key_version` (tenant-key
    /// rotation); answers whether it did.
    async fn reseal_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
        old_key_version: i64,
        sealed: &[u8],
        key_version: i64,
    ) -> Result<bool>;
    async fn delete_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
        audit: NewAuditEvent,
    ) -> Result<bool>;

    // --- Agents ---
    /// Stores a new agent (version 1) with its version row and audit event.
    /// `Conflict::Name`; `Conflict::Reference` if its provider is not one of the tenant's.
    async fn insert_agent(
        &self,
        ctx: &TenantCtx,
        agent: &agentplane_core::agent::Agent,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn get_agent(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
    ) -> Result<Option<agentplane_core::agent::Agent>>;
    /// The tenant's agent of that name (names are unique per tenant).
    async fn get_agent_by_name(
        &self,
        ctx: &TenantCtx,
        name: &str,
    ) -> Result<Option<agentplane_core::agent::Agent>>;
    async fn list_agents(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<agentplane_core::agent::Agent>>;
    /// Writes `agent` (its `version` the new one) if the stored version is `expected_version`.
    async fn update_agent(
        &self,
        ctx: &TenantCtx,
        agent: &agentplane_core::agent::Agent,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn delete_agent(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
        audit: NewAuditEvent,
    ) -> Result<bool>;
    /// The agent's versions, newest first: `(version, snapshot, actor_kind, actor_id, ts)`.
    async fn agent_versions(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
        page: &PageRequest,
    ) -> Result<Page<AgentVersion>>;

    // --- API keys ---
    async fn insert_api_key(
        &self,
        ctx: &TenantCtx,
        key: &agentplane_core::api_key::ApiKey,
        public_id: &str,
        secret_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn list_api_keys(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<agentplane_core::api_key::ApiKey>>;
    /// Revokes a key (once: the audit event is written only by the first revocation).
    async fn revoke_api_key(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ApiKeyId,
        at: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<agentplane_core::api_key::ApiKey>>;
    /// CROSS-TENANT LOOKUP for the auth layer: a presented key's record and secret hash, by its
    /// public id, before the tenant is known, with its tenant's status and plan (one query: the
    /// gateway's hot path).
    async fn find_api_key(&self, public_id: &str) -> Result<Option<ApiKeyLookup>>;
    /// A mark to take before reading a tenant's agents and providers into a cache; see
    /// [`Store::config_changed_since`].
    fn config_generation(&self) -> u64;
    /// Whether the tenant's agents or providers (or the platform's shared providers) may have
    /// changed since [`Store::config_generation`] answered `read_at`: in this process at once,
    /// in others as announced (PostgreSQL), never for what nothing announces (another process
    /// writing an SQLite file: the caller's time-to-live bounds that).
    fn config_changed_since(&self, tenant: TenantId, read_at: u64) -> bool;
    /// Records when keys were last used (batched by the server, never per request).
    async fn touch_api_keys(
        &self,
        platform: &PlatformCtx,
        uses: &[(TenantId, agentplane_core::ApiKeyId, Timestamp)],
    ) -> Result<()>;

    async fn usage_counter(&self, ctx: &TenantCtx, period: &str) -> Result<Option<UsageCounter>>;
    /// Grants quota to a process's lease: returns the tenant's expired leases first, then
    /// adds what [`agentplane_core::quota::grant`] allows to the lease, by a conditional update
    /// of the counter row, or answers which quota is exhausted.
    async fn grant_quota(
        &self,
        ctx: &TenantCtx,
        req: &LeaseRequest,
    ) -> Result<std::result::Result<Amount, Exhausted>>;
    /// Applies settlements (usage record, lease decremented, counter's used incremented) and
    /// lease releases in one transaction, in order.
    async fn settle_quota(&self, ops: &[QuotaOp]) -> Result<()>;
    /// The tenant's webhook and its sealed signing secret.
    async fn get_webhook(
        &self,
        ctx: &TenantCtx,
    ) -> Result<Option<(agentplane_core::webhook::Webhook, Vec<u8>)>>;
    /// Creates or replaces the tenant's webhook, with its audit event.
    async fn put_webhook(
        &self,
        ctx: &TenantCtx,
        webhook: &agentplane_core::webhook::Webhook,
        sealed_secret: &[u8],
        audit: NewAuditEvent,
    ) -> Result<()>;
    /// Replaces the webhook's sealed secret if it is still sealed with `old_key_version`
    /// (tenant-key rotation); answers whether it did.
    async fn reseal_webhook(
        &self,
        ctx: &TenantCtx,
        old_key_version: i64,
        sealed: &[u8],
        key_version: i64,
    ) -> Result<bool>;
    /// Removes the tenant's webhook (with its audit event); false if there was none.
    async fn delete_webhook(&self, ctx: &TenantCtx, audit: NewAuditEvent) -> Result<bool>;
    /// Extends every lease `holder` holds (the process is alive).
    async fn renew_quota_leases(
        &self,
        platform: &PlatformCtx,
        holder: &str,
        expires_at: Timestamp,
    ) -> Result<()>;
    async fn insert_usage_record(&self, ctx: &TenantCtx, rec: &UsageRecord) -> Result<()>;
    async fn tenant_usage_records(
        &self,
        ctx: &TenantCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>>;
    async fn all_usage_records(
        &self,
        platform: &PlatformCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>>;

    // --- Audit ---
    /// Appends an event on its own (for events that record no other change).
    async fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent>;
    /// Reads a page of the tenant's trail (newest first) and records the read in the same
    /// transaction.
    async fn list_audit(
        &self,
        ctx: &TenantCtx,
        filter: &AuditFilter,
        page: &PageRequest,
        read_event: NewAuditEvent,
    ) -> Result<Page<AuditEvent>>;
    /// Every chain (tenant ids and `platform`) with its head: the last seq and hash. A chain
    /// that has events but no head row (it was deleted) is listed with `None`.
    async fn audit_chain_heads(
        &self,
        platform: &PlatformCtx,
    ) -> Result<Vec<(String, Option<(i64, String)>)>>;
    /// Events of one chain in `seq` order after `after_seq`, with their personal data.
    async fn audit_chain_page(
        &self,
        platform: &PlatformCtx,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(AuditEvent, Option<AuditPii>)>>;

    // --- Idempotency ---
    async fn get_idempotency(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>>;
}

/// Test-only crash point: debug builds abort the process here when `AGENTPLANE_CRASH_AT`
/// names it, so tests can kill a worker at an exact place (mid-transaction). Release builds
/// compile it to nothing.
/// A usage record's page cursor (the order of the usage pages: time, tenant, id).
pub(crate) fn usage_key(r: &UsageRecord) -> String {
    format!("{}|{}|{}", r.ts.millis(), r.tenant_id, r.id)
}

pub(crate) fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("AGENTPLANE_CRASH_AT").is_ok_and(|v| v == name) {
        tracing::error!(crash_point = name, "AGENTPLANE_CRASH_AT: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
