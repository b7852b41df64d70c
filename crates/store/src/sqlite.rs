//! The embedded SQLite backend: one file in WAL mode, one writer connection (SQLite allows
//! one writer at a time; a single pooled writer serialises writes without busy retries) and
//! a pool of read-only connections.

use crate::{Backend, Result};
use agentplane_core::job::Job;
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Transaction;
use std::path::Path;
use std::time::Duration;

#[path = "ops.rs"]
#[allow(clippy::duplicate_mod)] // compiled once per backend, on purpose
mod ops;

#[path = "identity_ops.rs"]
#[allow(clippy::duplicate_mod)]
mod identity_ops;

#[path = "export_ops.rs"]
#[allow(clippy::duplicate_mod)]
mod export_ops;

type Db = sqlx::Sqlite;
type BackendStore = SqliteStore;

/// The single writer connection serialises writers: no row lock needed.
const SELECT_SETTING_FOR_UPDATE: &str =
    "SELECT key, value, version, updated_at FROM tenant_settings WHERE tenant_id = $1 AND key = $2";

/// No row-level security on SQLite: nothing to widen.
const ENTER_PLATFORM: &str = "SELECT 1";

/// The single writer serialises membership changes already.
const LOCK_TENANT: &str = "SELECT tenant_id FROM tenants WHERE tenant_id = $1";

const SELECT_COUNTER_FOR_UPDATE: &str =
    "SELECT * FROM usage_counters WHERE tenant_id = $1 AND period = $2";

const RENEW_LEASES: &str = "UPDATE quota_leases SET expires_at = $2 WHERE holder = $1";

/// One writer connection: a transaction needs no tenant scope to switch.
async fn rescope(_tx: &mut Transaction<'static, Db>, _tenant: TenantId) -> Result<()> {
    Ok(())
}

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone, Debug)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
}

impl SqliteStore {
    const BACKEND: Backend = Backend::Sqlite;

    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Erased rows are overwritten, not left readable in free pages of the file.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self { write, read })
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// After an erasure: the write-ahead log still holds the erased rows' old pages until a
    /// checkpoint; fold it into the file (whose erased pages `secure_delete` zeroed) and
    /// truncate it.
    async fn after_erasure(&self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn write_platform(&self) -> Result<Transaction<'static, Db>> {
        Ok(self.write.begin().await?)
    }
    async fn write_tenant(&self, _tenant: TenantId) -> Result<Transaction<'static, Db>> {
        Ok(self.write.begin().await?)
    }
    async fn read_platform(&self) -> Result<Transaction<'static, Db>> {
        Ok(self.read.begin().await?)
    }
    async fn read_tenant(&self, _tenant: TenantId) -> Result<Transaction<'static, Db>> {
        Ok(self.read.begin().await?)
    }
    /// A read transaction in WAL mode sees one snapshot from its first read to its end.
    async fn snapshot_tenant(&self, _tenant: TenantId) -> Result<Transaction<'static, Db>> {
        Ok(self.read.begin().await?)
    }

    async fn claim(&self, now: Timestamp, lease_ms: i64) -> Result<Option<Job>> {
        let mut tx = self.write.begin().await?;
        ops::bury_expired(&mut tx, now).await?;
        let row: Option<crate::rows::JobRow> = sqlx::query_as(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_token = $1, \
             lease_until = $2, updated_at = $3 \
             WHERE id = (SELECT j.id FROM jobs j LEFT JOIN job_tenants t ON t.tenant_id = j.tenant_id \
                         WHERE (j.status = 'queued' AND j.run_at <= $3) \
                            OR (j.status = 'running' AND j.lease_until < $3) \
                         ORDER BY COALESCE(t.last_claimed_at, 0), j.run_at, j.id LIMIT 1) \
             RETURNING *",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(now.plus_millis(lease_ms).millis())
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await?;
        let job = row.map(Job::try_from).transpose()?;
        if let Some(j) = &job {
            ops::served(&mut tx, j.tenant_id, now).await?;
        }
        tx.commit().await?;
        Ok(job)
    }
}
