//! The embedded SQLite backend: one file in WAL mode, one writer connection (SQLite allows
//! one writer at a time; a single pooled writer serialises writes without busy retries) and
//! a pool of read-only connections.

use crate::key_cache::{self, KeyCache};
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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

#[path = "ops.rs"]
#[allow(clippy::duplicate_mod)] // compiled once per backend, on purpose
mod ops;

#[path = "identity_ops.rs"]
#[allow(clippy::duplicate_mod)]
mod identity_ops;

#[path = "export_ops.rs"]
#[allow(clippy::duplicate_mod)]
mod export_ops;

#[path = "move_ops.rs"]
#[allow(clippy::duplicate_mod)]
mod move_ops;

type Db = sqlx::Sqlite;
type BackendStore = SqliteStore;

/// The single writer connection serialises writers: no row lock needed.
const SELECT_SETTING_FOR_UPDATE: &str =
    "SELECT key, value, version, updated_at FROM tenant_settings WHERE tenant_id = $1 AND key = $2";

/// No row-level security on SQLite: nothing to widen.
const ENTER_PLATFORM: &str = "SELECT 1";

/// People no membership of this database refers to any more, among those of `$1` (a JSON
/// array of user ids).
const DELETE_LONE_USERS: &str = "DELETE FROM users WHERE user_id IN \
     (SELECT value FROM json_each($1)) \
     AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.user_id)";

/// The single writer serialises membership changes already.
const LOCK_TENANT: &str = "SELECT tenant_id FROM tenants WHERE tenant_id = $1";

const SELECT_COUNTER_FOR_UPDATE: &str =
    "SELECT * FROM usage_counters WHERE tenant_id = $1 AND period = $2";

/// A settlement batch in one statement: the `settlement_batches` view's trigger (migration
/// 0025) takes from each lease what its runs consumed as far as the lease still holds it (what
/// it no longer holds, because the provider reported more than was reserved or the lease
/// expired and went back, is counted as used all the same), and writes the usage records and
/// the counters. It writes nothing, and fails with `AP100`, when a counter would cross one of
/// `$4` (a JSON array of percentages), and with `AP500` when a counter is missing.
const SETTLE: &str = "INSERT INTO settlement_batches (records, takes, counters, thresholds) \
     VALUES ($1, $2, $3, $4)";

/// The changed counters' `used` after a batch (`$1`: its counters, as for `SETTLE`).
const SETTLED_COUNTERS: &str = "SELECT c.tenant_id, c.period, c.messages_used, c.tokens_used \
     FROM usage_counters c JOIN json_each($1) AS v \
     ON c.tenant_id = v.value ->> '$.tenant_id' AND c.period = v.value ->> '$.period' \
     WHERE v.value ->> '$.used_messages' <> 0 OR v.value ->> '$.used_tokens' <> 0";

/// Writes a settlement batch (`SETTLE`). Answers false, having written nothing, when a counter
/// would cross one of `thresholds`.
async fn write_settlement(
    conn: &mut sqlx::SqliteConnection,
    records: &[serde_json::Value],
    consumed: &[ops::LeaseUse<'_>],
    counters: &[ops::CounterUse<'_>],
    thresholds: &[i64],
) -> Result<bool> {
    let res = sqlx::query(SETTLE)
        .bind(ops::json_rows(records)?)
        .bind(ops::json_rows(consumed)?)
        .bind(ops::json_rows(counters)?)
        .bind(ops::json_rows(thresholds)?)
        .execute(conn)
        .await;
    match res {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.message() == "AP100" => Ok(false),
        Err(sqlx::Error::Database(d)) if d.message() == "AP500" => Err(crate::error::corrupt(
            "a settled run's usage counter is missing",
        )),
        Err(e) => Err(e.into()),
    }
}

/// A settlement batch in the caller's transaction (as PostgreSQL's `agentplane_settle`), which
/// notifies the thresholds crossed itself: answers each changed counter's `used` after.
async fn settle_batch(
    tx: &mut Transaction<'_, Db>,
    records: &[serde_json::Value],
    consumed: &[ops::LeaseUse<'_>],
    counters: &[ops::CounterUse<'_>],
) -> Result<Vec<(String, String, i64, i64)>> {
    // No threshold to stop at: this transaction notifies.
    write_settlement(tx, records, consumed, counters, &[]).await?;
    Ok(sqlx::query_as(SETTLED_COUNTERS)
        .bind(ops::json_rows(counters)?)
        .fetch_all(&mut **tx)
        .await?)
}

const RENEW_LEASES: &str = "UPDATE quota_leases SET expires_at = $2 WHERE holder = $1";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone, Debug)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    /// The connection that checkpoints the write-ahead log.
    checkpoints: SqlitePool,
    keys: Arc<KeyCache>,
    /// Tenants may move to another database (a database per region): every write on a
    /// tenant checks that it is still here.
    fenced: Arc<std::sync::atomic::AtomicBool>,
    /// Dropped with the last clone of the store: stops the checkpoints.
    _stop_checkpoints: Arc<oneshot::Sender<()>>,
}

/// How often the write-ahead log is folded into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Frames (pages) in the write-ahead log past which the writer finishes a checkpoint itself
/// (SQLite's own default threshold for checkpoints).
const WRITER_CHECKPOINT_FRAMES: i64 = 1000;

/// Checkpoints every `CHECKPOINT_EVERY` until `stop` drops or the pools close: first on a
/// connection of its own (`PASSIVE`: it copies what no reader still needs, never waits for the
/// writer nor blocks it), then, once the log holds more than `WRITER_CHECKPOINT_FRAMES`, on
/// the writer. A log starts over only when a write begins with every frame copied, and under
/// steady writes some always land while the first checkpoint runs: without the second, the
/// log would grow for as long as the load lasts. The writer copies only those (the rest is
/// copied already), then its next write starts the log over.
async fn checkpoint_in_background(
    pool: SqlitePool,
    write: SqlitePool,
    mut stop: oneshot::Receiver<()>,
) {
    const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        let res = match sqlx::query_as::<_, (i64, i64, i64)>(CHECKPOINT)
            .fetch_one(&pool)
            .await
        {
            Ok((_, frames, _)) if frames > WRITER_CHECKPOINT_FRAMES => {
                sqlx::query(CHECKPOINT).execute(&write).await.map(drop)
            }
            res => res.map(drop),
        };
        if let Err(e) = res {
            if pool.is_closed() || write.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "checkpointing the write-ahead log failed");
        }
    }
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
            // The write-ahead log is folded into the file by a connection of its own (below),
            // not by whichever commit crosses the threshold: that commit would hold the single
            // writer, and every settlement behind it, for the whole checkpoint's I/O and fsync
            // (the writer copies only the last frames, see `checkpoint_in_background`).
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864")
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // A file does not go away like a socket: no ping before each use.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        // Readers keep a small page cache each (SQLite's default is 2 MiB a connection): the
        // gateway's hot path reads nothing, and the OS's page cache holds the file anyway.
        // Reads are CPU work on a file in memory: two readers a core, at most 8 (each
        // connection holds its own schema, statements and cache).
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let readers = u32::try_from(2 * cores).unwrap_or(8).clamp(2, 8);
        let read = SqlitePoolOptions::new()
            .max_connections(readers)
            .test_before_acquire(false)
            .connect_with(opts.clone().read_only(true).pragma("cache_size", "-128"))
            .await?;
        let checkpoints = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(opts.pragma("cache_size", "-64"));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(checkpoint_in_background(
            checkpoints.clone(),
            write.clone(),
            stopped,
        ));
        Ok(Self {
            write,
            read,
            checkpoints,
            keys: Arc::new(KeyCache::new(key_cache::DEFAULT_TTL)),
            fenced: Arc::default(),
            _stop_checkpoints: Arc::new(stop),
        })
    }

    /// How long an API-key lookup is kept when nothing announces a change (zero: not at all).
    /// Every change this process makes applies at once; this bounds changes another process
    /// makes to the same file.
    pub fn set_key_cache_ttl(&self, ttl: Duration) {
        self.keys.set_ttl(ttl);
    }

    pub async fn close(&self) {
        self.checkpoints.close().await;
        self.write.close().await;
        self.read.close().await;
    }

    /// After an erasure: the write-ahead log still holds the erased rows' old pages until a
    /// checkpoint; fold it into the file (whose erased pages `secure_delete` zeroed) and
    /// truncate it.
    /// A reader still using the log makes the checkpoint give up (`busy`): it is tried again
    /// until the log is folded and truncated (for up to a few seconds, readers being short).
    async fn after_erasure(&self) -> Result<()> {
        for _ in 0..200 {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.write)
                .await?;
            if busy == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("the write-ahead log stayed busy: erased rows' old pages may remain in it until the next checkpoint");
        Ok(())
    }

    async fn write_platform(&self) -> Result<Transaction<'static, Db>> {
        Ok(self.write.begin().await?)
    }
    async fn write_tenant(&self, tenant: TenantId) -> Result<Transaction<'static, Db>> {
        let mut tx = self.write.begin().await?;
        self.fence_tenants(&mut tx, &[&tenant.to_string()]).await?;
        Ok(tx)
    }

    /// From now on, writes on a tenant check that it has not moved to another database (see
    /// `moves.rs`).
    pub fn fence_moves(&self) {
        self.fenced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The single writer, with the database's write lock taken at once: no other write runs
    /// until it ends.
    async fn lock_for_move(&self, _tenant: TenantId) -> Result<Transaction<'static, Db>> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Settles a batch in one statement (`SETTLE`), its commit included: every statement is a
    /// trip to the connection's thread and back.
    /// Answers whether it settled the batch; not when the batch must go through a
    /// transaction: a usage threshold crossed (the notification is enqueued with the batch),
    /// or tenants may move (their fence comes first).
    async fn settle_alone(
        &self,
        records: &[serde_json::Value],
        consumed: &[ops::LeaseUse<'_>],
        counters: &[ops::CounterUse<'_>],
    ) -> Result<bool> {
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let mut conn = self.write.acquire().await?;
        let thresholds = agentplane_core::webhook::THRESHOLDS;
        write_settlement(&mut conn, records, consumed, counters, &thresholds).await
    }

    /// Refuses a transaction on tenants of which one moved away.
    async fn fence_tenants(
        &self,
        tx: &mut Transaction<'static, Db>,
        tenants: &[&str],
    ) -> Result<()> {
        if !self.fenced.load(std::sync::atomic::Ordering::Relaxed) || tenants.is_empty() {
            return Ok(());
        }
        let moved: Option<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM tenant_moves WHERE state = 'moved_away' \
             AND tenant_id IN (SELECT value FROM json_each($1)) LIMIT 1",
        )
        .bind(
            serde_json::to_string(tenants)
                .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?,
        )
        .fetch_optional(&mut **tx)
        .await?;
        match moved {
            Some(t) => Err(crate::StoreError::Moved(t)),
            None => Ok(()),
        }
    }
    async fn read_platform(&self) -> Result<Transaction<'static, Db>> {
        Ok(self.read.begin().await?)
    }
    async fn read_tenant(&self, tenant: TenantId) -> Result<Transaction<'static, Db>> {
        let mut tx = self.read.begin().await?;
        self.fence_tenants(&mut tx, &[&tenant.to_string()]).await?;
        Ok(tx)
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
                         WHERE ((j.status = 'queued' AND j.run_at <= $3) \
                            OR (j.status = 'running' AND j.lease_until < $3)) \
                           AND NOT EXISTS (SELECT 1 FROM tenant_moves m \
                                           WHERE m.tenant_id = j.tenant_id AND m.state = 'arriving') \
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Under writes that never pause, the write-ahead log still starts over: it holds fewer
    /// frames at the end than there were commits (each commit adds at least one frame, so a
    /// log that never started over would hold them all).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_under_steady_writes() {
        let dir = std::env::temp_dir().join(format!("ap-wal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("db.sqlite")).await.unwrap();
        sqlx::query("CREATE TABLE wal_test (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .execute(&store.write)
            .await
            .unwrap();
        // Several writers, as settlements and grants are: one always has a commit ready.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let write = store.write.clone();
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let mut commits = 0i64;
                    // Four checkpoint periods.
                    while started.elapsed() < CHECKPOINT_EVERY * 4 {
                        sqlx::query("INSERT INTO wal_test (v) VALUES ($1)")
                            .bind(format!("{w}-{commits}"))
                            .execute(&write)
                            .await
                            .unwrap();
                        commits += 1;
                    }
                    commits
                })
            })
            .collect();
        let mut commits = 0;
        for w in writers {
            commits += w.await.unwrap();
        }
        let (_, frames, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&store.checkpoints)
            .await
            .unwrap();
        assert!(
            commits > 2 * WRITER_CHECKPOINT_FRAMES,
            "the test wrote too little to tell: {commits} commits"
        );
        assert!(
            frames < commits,
            "the log holds {frames} frames after {commits} commits: it never started over"
        );
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
