use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(Conflict),
    // Display carries the cause (logs print Display only); no `source`, so a `{:#}` chain
    // does not print it twice.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("the database schema is at version {found}, this build needs {expected}: run `agentplane migrate`")]
    SchemaOutdated { found: i64, expected: i64 },
    /// A tenant-scoped write was handed a row or event of another tenant: a bug, refused
    /// on every backend (PostgreSQL's RLS would refuse it too).
    #[error("cross-tenant write refused: {0}")]
    CrossTenant(&'static str),
    /// A page cursor this store did not issue.
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("object store: {0}")]
    Objects(object_store::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The tenant moved to another database since this process looked it up (a database per
    /// region): look it up again.
    #[error("tenant {0} moved to another database")]
    Moved(String),
    /// The tenant is moving to another database right now: retry shortly.
    #[error("{0}")]
    Moving(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    PlanId,
    Slug,
    IdempotencyKey,
    /// The row changed since it was read.
    Version,
    /// The job's lease expired and another worker claimed it.
    LeaseLost,
    /// The custom domain belongs to another tenant.
    Domain,
    /// The tenant already has a resource of that name.
    Name,
    /// A reference to a missing resource, or a resource still referenced.
    Reference,
    /// The change would leave the tenant without an active `tenant_admin`.
    LastAdmin,
    /// The tenant has a backup pending already.
    BackupPending,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PlanId => "plan id taken",
            Self::Slug => "slug taken",
            Self::IdempotencyKey => "idempotency key in use",
            Self::Version => "changed concurrently",
            Self::LeaseLost => "job lease lost",
            Self::Domain => "custom domain in use",
            Self::Name => "name in use",
            Self::Reference => "missing or still-referenced resource",
            Self::LastAdmin => "the tenant's last active tenant_admin",
            Self::BackupPending => "a backup is pending already",
        })
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub(crate) fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The SQLSTATEs of `agentplane_enter_tenant` for a tenant that moved away, or is moving.
const MOVED_SQLSTATE: &str = "AP410";
const MOVING_SQLSTATE: &str = "AP409";

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some(MOVED_SQLSTATE) => {
                Self::Moved(d.message().to_owned())
            }
            sqlx::Error::Database(d) if d.code().as_deref() == Some(MOVING_SQLSTATE) => {
                Self::Moving(d.message().to_owned())
            }
            _ => Self::Db(e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        Self::Objects(e)
    }
}
