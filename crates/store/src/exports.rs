//! Persistence of exports, imports and their records.
//!
//! A tenant's data leaves and enters through one table-driven description
//! ([`EXPORT_TABLES`]): for every exported table, its file name in an export, its columns
//! (never `tenant_id`: an export names its tenant once, in its manifest, so it can be loaded
//! under another tenant id) and how date ranges and a data subject select its rows. The
//! format built on it is the control plane's (docs/exports.md).
//!
//! What is never exported is listed in [`NOT_EXPORTED`]: credentials and secrets (sealed
//! under keys of this deployment, useless elsewhere and not the customer's to carry), and
//! transient state.

use crate::Result;
use agentplane_core::audit::NewAuditEvent;
use agentplane_core::authz::TenantCtx;
use agentplane_core::job::Job;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use async_trait::async_trait;
use serde::Serialize;

/// The type of an exported column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    Text,
    Int,
}

/// One value of an exported row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// How a data-subject export (`gdpr_request`) selects a table's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectRule {
    /// The table holds nothing about a person.
    None,
    /// Rows whose `user_id` is the subject.
    UserId,
    /// Audit events the subject did or that targeted them.
    ActorOrTarget,
    /// Personal data of the subject's audit events.
    PiiOfEvents,
}

/// How a date range selects a table's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRule {
    /// Not selected by time (configuration, heads).
    None,
    /// By the `ts` column.
    Ts,
    /// By the `ts` of the audit event the row belongs to.
    EventTs,
}

#[derive(Debug)]
pub struct ExportTable {
    /// The name in an export (its file is `<name>.jsonl` or `<name>.csv`).
    pub name: &'static str,
    /// The SQL table.
    pub table: &'static str,
    pub columns: &'static [(&'static str, ColType)],
    pub order_by: &'static str,
    pub range: RangeRule,
    pub subject: SubjectRule,
    /// Loaded by an import (a `full` export restores these).
    pub importable: bool,
}

impl ExportTable {
    pub fn by_name(name: &str) -> Option<&'static ExportTable> {
        EXPORT_TABLES.iter().find(|t| t.name == name)
    }

    pub fn column_names(&self) -> impl Iterator<Item = &'static str> {
        self.columns.iter().map(|(c, _)| *c)
    }
}

use ColType::{Int as I, Text as T};

const fn table(
    name: &'static str,
    table: &'static str,
    columns: &'static [(&'static str, ColType)],
    order_by: &'static str,
) -> ExportTable {
    ExportTable {
        name,
        table,
        columns,
        order_by,
        range: RangeRule::None,
        subject: SubjectRule::None,
        importable: true,
    }
}

/// Every exported table, in load order (the tenant first).
pub static EXPORT_TABLES: &[ExportTable] = &[
    table(
        "tenant",
        "tenants",
        &[
            ("slug", T),
            ("name", T),
            ("plan_id", T),
            ("status", T),
            ("region", T),
            ("created_at", I),
            ("updated_at", I),
            ("deleted_at", I),
            ("version", I),
        ],
        "tenant_id",
    ),
    table(
        "settings",
        "tenant_settings",
        &[("key", T), ("value", T), ("updated_at", I), ("version", I)],
        "key",
    ),
    table(
        "setting_history",
        "tenant_setting_history",
        &[
            ("key", T),
            ("version", I),
            ("value", T),
            ("previous", T),
            ("actor_kind", T),
            ("actor_id", T),
            ("ts", I),
        ],
        "key, version",
    ),
    table(
        "branding",
        "tenant_branding",
        &[
            ("product_name", T),
            ("primary_color", T),
            ("accent_color", T),
            ("custom_domain", T),
            ("logo_content_type", T),
            ("logo_sha256", T),
            ("logo_size", I),
            ("version", I),
            ("updated_at", I),
        ],
        "tenant_id",
    ),
    table(
        "roles",
        "tenant_roles",
        &[
            ("name", T),
            ("description", T),
            ("permissions", T),
            ("created_at", I),
            ("updated_at", I),
        ],
        "name",
    ),
    ExportTable {
        subject: SubjectRule::UserId,
        ..table(
            "members",
            "memberships",
            &[
                ("user_id", T),
                ("email", T),
                ("name", T),
                ("roles", T),
                ("custom_roles", T),
                ("status", T),
                ("external_id", T),
                ("created_at", I),
                ("updated_at", I),
                ("last_sign_in_at", I),
            ],
            "user_id",
        )
    },
    ExportTable {
        subject: SubjectRule::UserId,
        importable: false,
        ..table(
            "sessions",
            "sessions",
            &[
                ("id", T),
                ("user_id", T),
                ("method", T),
                ("agent", T),
                ("permissions", T),
                ("created_by", T),
                ("created_at", I),
                ("expires_at", I),
                ("revoked_at", I),
                ("revoked_reason", T),
            ],
            "id",
        )
    },
    // Provider credentials without their secret (sealed under this deployment's keys): an
    // import creates them without one, to be set again, so that the agents keep theirs.
    table(
        "providers",
        "provider_credentials",
        &[
            ("id", T),
            ("name", T),
            ("kind", T),
            ("base_url", T),
            ("api_version", T),
            ("models", T),
            ("auth", T),
            ("shared_id", T),
            ("created_at", I),
            ("updated_at", I),
            ("version", I),
        ],
        "id",
    ),
    table(
        "agents",
        "agents",
        &[
            ("id", T),
            ("name", T),
            ("provider_id", T),
            ("model", T),
            ("system_prompt", T),
            ("params", T),
            ("version", I),
            ("created_at", I),
            ("updated_at", I),
        ],
        "id",
    ),
    table(
        "agent_versions",
        "agent_versions",
        &[
            ("agent_id", T),
            ("version", I),
            ("snapshot", T),
            ("actor_kind", T),
            ("actor_id", T),
            ("ts", I),
        ],
        "agent_id, version",
    ),
    table(
        "usage_counters",
        "usage_counters",
        &[
            ("period", T),
            ("messages_used", I),
            ("tokens_used", I),
            ("messages_reserved", I),
            ("tokens_reserved", I),
        ],
        "period",
    ),
    table(
        "usage_notices",
        "usage_notices",
        &[
            ("period", T),
            ("quota", T),
            ("threshold", I),
            ("created_at", I),
        ],
        "period, quota, threshold",
    ),
    ExportTable {
        range: RangeRule::Ts,
        ..table(
            "usage_records",
            "usage_records",
            &[
                ("id", T),
                ("ts", I),
                ("agent_id", T),
                ("model", T),
                ("provider", T),
                ("tokens_in", I),
                ("tokens_out", I),
                ("latency_ms", I),
                ("status", T),
                ("trace_id", T),
            ],
            "ts, id",
        )
    },
    table(
        "audit_head",
        "audit_heads",
        &[("seq", I), ("hash", T)],
        "tenant_id",
    ),
    ExportTable {
        range: RangeRule::Ts,
        subject: SubjectRule::ActorOrTarget,
        ..table(
            "audit_events",
            "audit_events",
            &[
                ("seq", I),
                ("id", T),
                ("ts", I),
                ("action", T),
                ("actor_kind", T),
                ("actor_id", T),
                ("target_kind", T),
                ("target_id", T),
                ("outcome", T),
                ("data", T),
                ("pii_digest", T),
                ("trace_id", T),
                ("prev_hash", T),
                ("hash", T),
            ],
            "seq",
        )
    },
    ExportTable {
        range: RangeRule::EventTs,
        subject: SubjectRule::PiiOfEvents,
        ..table(
            "audit_pii",
            "audit_pii",
            &[("event_id", T), ("salt", T), ("pii", T)],
            "event_id",
        )
    },
    // A chain that began under other tenant ids (imports): up to which seq each hashed.
    table(
        "audit_origins",
        "audit_origins",
        &[("origin", T), ("up_to_seq", I)],
        "up_to_seq",
    ),
    table(
        "erasure_receipts",
        "erasure_receipts",
        &[
            ("id", T),
            ("subject", T),
            ("receipt", T),
            ("signature", T),
            ("created_at", I),
        ],
        "id",
    ),
];

/// What no export holds, and why (listed in every manifest).
pub static NOT_EXPORTED: &[(&str, &str)] = &[
    (
        "provider secrets",
        "sealed under this deployment's keys: the providers come without them; set each again",
    ),
    ("api_keys", "credentials: issue new keys"),
    (
        "tenant_webhooks",
        "holds a signing secret: set the webhook again",
    ),
    ("sso_connections", "hold IdP secrets: configure SSO again"),
    ("scim_tokens, invitations, refresh tokens", "credentials"),
    ("tenant_keys", "data keys wrapped by this deployment's KMS"),
    (
        "password hashes",
        "credentials: members sign in through SSO or reset their password",
    ),
    (
        "jobs, quota leases, idempotency keys, SSO states",
        "transient state",
    ),
];

/// Which rows an export selects.
#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    /// Inclusive lower bound (ms), for tables selected by time.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound (ms).
    pub to: Option<Timestamp>,
    /// The data subject's user id (`gdpr_request`).
    pub subject: Option<String>,
}

/// Receives exported rows, a table at a time, in the table's order.
pub trait ExportSink: Send {
    fn row(&mut self, table: &'static ExportTable, row: Vec<Cell>) -> Result<()>;
}

/// Rows of one table.
pub type Batch = (&'static ExportTable, Vec<Vec<Cell>>);

/// Hands an import its rows, a batch at a time; `tenant` comes first.
pub trait ImportSource: Send {
    fn next_batch(&mut self) -> Result<Option<Batch>>;
    /// The tenant the rows were exported from (its audit chain was hashed under its id).
    fn exported_tenant(&self) -> Option<TenantId> {
        None
    }
}

/// An export (or backup) of a tenant and where its artifact is.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExportRecord {
    pub id: String,
    /// `export` (kept 7 days) or `backup` (kept by the tenant's `backup.retention_count`).
    pub kind: String,
    /// `full`, `users_only`, `audit_logs` or `gdpr_request`.
    pub export_type: String,
    /// `zip`, `json` or `csv`.
    pub format: String,
    /// `pending`, `ready`, `failed` or `deleted` (artifact removed).
    pub status: String,
    /// What was asked: date range and data subject.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// The artifact's manifest, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<serde_json::Value>,
    #[serde(skip)]
    pub object_key: Option<String>,
    /// Bytes of the (decrypted) artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// SHA-256 of the (decrypted) artifact, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub job_id: String,
    pub created_by: String,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// After this the artifact is deleted and no download link is issued.
    pub expires_at: Timestamp,
    /// A backup's last verification: restored into a scratch tenant and compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub verification: Option<serde_json::Value>,
}

/// A finished artifact.
#[derive(Clone, Debug)]
pub struct FinishedExport {
    pub manifest: serde_json::Value,
    pub object_key: String,
    pub size: i64,
    pub sha256: String,
}

#[async_trait]
pub trait ExportStore: Send + Sync {
    /// Streams the selected rows of `tables` to `sink`, all from one consistent snapshot.
    async fn dump_tenant(
        &self,
        ctx: &TenantCtx,
        tables: &[&'static ExportTable],
        filter: &ExportFilter,
        sink: &mut dyn ExportSink,
    ) -> Result<()>;

    /// Loads an export as the tenant `ctx` names (which must not exist yet), all in one
    /// transaction with `audit` (a platform event, or an event of the loaded tenant's own
    /// chain, which continues it); answers the rows loaded.
    async fn load_tenant(
        &self,
        ctx: &TenantCtx,
        source: &mut dyn ImportSource,
        audit: NewAuditEvent,
    ) -> Result<u64>;

    async fn insert_export(
        &self,
        ctx: &TenantCtx,
        rec: &ExportRecord,
        job: &Job,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn get_export(&self, ctx: &TenantCtx, id: &str) -> Result<Option<ExportRecord>>;
    /// The tenant's exports of `kind` (`export` or `backup`).
    async fn list_exports(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<ExportRecord>>;
    /// The tenant's newest backup (any status but `deleted`, `failed`).
    async fn latest_backup(&self, ctx: &TenantCtx) -> Result<Option<ExportRecord>>;
    /// Ready backups beyond the newest `keep`, oldest first.
    async fn backups_beyond(&self, ctx: &TenantCtx, keep: i64) -> Result<Vec<ExportRecord>>;
    /// Loads an export as the scratch tenant `ctx` names inside a transaction, streams the
    /// loaded rows of `tables` back to `sink`, and rolls everything back: a restore test
    /// that leaves nothing behind and touches no other tenant.
    async fn trial_restore(
        &self,
        ctx: &TenantCtx,
        source: &mut dyn ImportSource,
        tables: &[&'static ExportTable],
        sink: &mut dyn ExportSink,
    ) -> Result<u64>;
    /// Records a backup's verification report and completes the verifying job, in one
    /// transaction.
    async fn set_verification(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        id: &str,
        report: &serde_json::Value,
        audit: NewAuditEvent,
    ) -> Result<()>;
    /// Marks the export ready and completes its job, in one transaction.
    async fn finish_export(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        id: &str,
        done: &FinishedExport,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn fail_export(&self, ctx: &TenantCtx, id: &str, error: &str) -> Result<()>;
    /// Exports (never backups) whose artifact still exists and that expired before `now`, or
    /// all of them (`None`: an erasure removes every artifact that may hold the subject).
    async fn exports_to_remove(
        &self,
        ctx: &TenantCtx,
        expired_before: Option<Timestamp>,
    ) -> Result<Vec<ExportRecord>>;
    /// The subjects (hashes) of every erasure receipt of the tenant: a restore of an older
    /// backup erases them again.
    async fn erased_subjects(&self, ctx: &TenantCtx) -> Result<Vec<String>>;
    /// Records that the export's artifact was deleted.
    async fn mark_export_deleted(&self, ctx: &TenantCtx, id: &str) -> Result<()>;
}
