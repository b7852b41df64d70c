//! Moving a tenant's rows from one database to another (a database per region, see
//! `regional.rs`): every row of every tenant-owned table, as the database holds it.
//!
//! The source database holds the tenant's exclusive lock from before its first row is read
//! until its rows are deleted, so nothing written in between is lost: every transaction on
//! the tenant takes that lock in shared mode first and, once it has it, refuses to go on if
//! the tenant has moved away (`StoreError::Moved`; the caller looks the tenant up again). The
//! copy arrives marked `arriving`, which lookups ignore while the source still has the
//! tenant; the source deletes its rows and leaves a `moved_away` mark in one transaction,
//! the decision; clearing the arriving mark ends the move.
//!
//! The audit chain is the exception: the target receives a copy and continues it, and the
//! source keeps its own (without the personal data of its events, like a purged tenant's),
//! because no server may delete audit events.

use crate::Result;
use agentplane_core::audit::NewAuditEvent;
use agentplane_core::authz::TenantCtx;
use agentplane_core::TenantId;
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

/// Every tenant-owned table, in the order rows are copied (a table after those it refers
/// to); rows are deleted in the reverse order. `users` is copied for the tenant's members.
pub static TENANT_TABLES: &[&str] = &[
    "tenants",
    "tenant_settings",
    "tenant_setting_history",
    "tenant_branding",
    "tenant_keys",
    "provider_credentials",
    "agents",
    "agent_versions",
    "api_keys",
    "tenant_roles",
    "memberships",
    "invitations",
    "sessions",
    "refresh_tokens",
    "scim_tokens",
    "sso_connections",
    "sso_replay",
    "sso_states",
    "usage_counters",
    "quota_leases",
    "usage_records",
    "usage_notices",
    "tenant_webhooks",
    "jobs",
    "job_tenants",
    "erasure_receipts",
    "exports",
    "audit_heads",
    "audit_events",
    "audit_pii",
    "audit_origins",
];

/// The tables whose rows the source keeps after a move (see the module's documentation).
pub(crate) static KEPT_BY_THE_SOURCE: &[&str] = &["audit_heads", "audit_events", "audit_origins"];

/// What a database knows of a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// No row of the tenant (or only a purged tenant's audit chain).
    Absent,
    /// The tenant lives here.
    Here,
    /// A copy is arriving: the tenant lives here only once its source let it go.
    Arriving,
    /// The tenant moved to another database (its audit chain's copy stays here).
    MovedAway,
}

/// A column's type, for binding its NULLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Bytes,
    Bool,
}

/// A value as the database holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// Rows of one table.
#[derive(Clone, Debug)]
pub struct RawBatch {
    pub table: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Raw>>,
}

#[async_trait]
pub trait MoveStore: Send + Sync {
    /// What this database knows of the tenant.
    async fn tenant_presence(&self, tenant: TenantId) -> Result<Presence>;
    /// Sends every row of the tenant to `out`, then `None`, and waits for `arrived`: on
    /// `true`, deletes the rows (but its audit chain) and marks the tenant moved away to
    /// `to`. Holds the tenant's exclusive lock throughout. Answers the rows sent.
    async fn move_out(
        &self,
        ctx: &TenantCtx,
        to: &str,
        out: mpsc::Sender<Option<RawBatch>>,
        arrived: oneshot::Receiver<bool>,
    ) -> Result<u64>;
    /// Loads the rows `rows` brings, in one transaction, as an arriving copy (replacing an
    /// earlier arriving copy, and continuing the audit chain this database kept, if any).
    /// Commits only if `rows` ends with `None` after every batch (a dropped sender without
    /// it is a failed source). Answers the rows loaded.
    async fn move_in(&self, ctx: &TenantCtx, rows: mpsc::Receiver<Option<RawBatch>>)
        -> Result<u64>;
    /// The tenant is here now: re-pins it to `region`, clears its arriving mark and appends
    /// `audit` (on its chain), at once.
    async fn arrived(&self, ctx: &TenantCtx, region: &str, audit: NewAuditEvent) -> Result<()>;
}
