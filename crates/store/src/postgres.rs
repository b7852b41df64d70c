//! The PostgreSQL backend. Every transaction is scoped: `set_config('app.tenant_id', ...)`
//! for tenant work, `set_config('app.platform', 'on', ...)` for the named cross-tenant
//! paths, both local to the transaction (safe behind PgBouncer in transaction mode). The
//! server runs as a role without `BYPASSRLS` that owns nothing, so the row-level-security
//! policies of the migrations hold even if a query forgets its `WHERE tenant_id`.

use crate::key_cache::{self, KeyCache};
use crate::{Backend, Result, StoreError};
use agentplane_core::job::Job;
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Executor, Transaction};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
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

type Db = sqlx::Postgres;
type BackendStore = PgStore;

const SELECT_SETTING_FOR_UPDATE: &str =
    "SELECT key, value, version, updated_at FROM tenant_settings WHERE tenant_id = $1 AND key = $2 FOR UPDATE";

/// Widens a transaction to every tenant's rows (the purge's check that a person belongs to
/// no other tenant).
const ENTER_PLATFORM: &str = "SELECT set_config('app.platform', 'on', true)";

/// A scope name or value that can stand in SQL text as it is.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// People no membership of this database refers to any more, among those of `$1` (a JSON
/// array of user ids).
const DELETE_LONE_USERS: &str = "DELETE FROM users WHERE user_id IN \
     (SELECT json_array_elements_text($1::json)) \
     AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.user_id)";

/// Serialises changes to one tenant's memberships (the last-admin rule reads several rows).
const LOCK_TENANT: &str = "SELECT tenant_id FROM tenants WHERE tenant_id = $1 FOR UPDATE";

const SELECT_COUNTER_FOR_UPDATE: &str =
    "SELECT * FROM usage_counters WHERE tenant_id = $1 AND period = $2 FOR UPDATE";

/// A settlement batch in one round trip: `agentplane_settle` (migration 0024) locks the
/// batch's counters, then its leases, in key order (as grants and renewals lock them), takes
/// from each lease what its runs consumed as far as the lease still holds it, writes the usage
/// records and the counters, and answers each changed counter's `used` after. `$1` records,
/// `$2` what each lease's runs consumed, `$3` every counter of the batch with its runs' use.
async fn settle_batch(
    tx: &mut Transaction<'_, Db>,
    records: &[serde_json::Value],
    consumed: &[ops::LeaseUse<'_>],
    counters: &[ops::CounterUse<'_>],
) -> Result<Vec<(String, String, i64, i64)>> {
    Ok(
        sqlx::query_as("SELECT * FROM agentplane_settle($1::jsonb, $2::jsonb, $3::jsonb)")
            .bind(ops::json_rows(records)?)
            .bind(ops::json_rows(consumed)?)
            .bind(ops::json_rows(counters)?)
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// Locks the leases in key order, as settlements do, so the two never wait on each other in a
/// cycle.
const RENEW_LEASES: &str = "UPDATE quota_leases SET expires_at = $2 \
     WHERE (tenant_id, period, id) IN (SELECT tenant_id, period, id FROM quota_leases \
     WHERE holder = $1 ORDER BY tenant_id, period, id FOR UPDATE)";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The connection that listens to `agentplane_auth`.
    listening: PgPool,
    keys: Arc<KeyCache>,
    /// Tenants may move to another database (a database per region): every transaction on
    /// a tenant takes its lock in shared mode first and checks that it is still here.
    fenced: Arc<std::sync::atomic::AtomicBool>,
    /// Dropped with the last clone of the store: stops the listener.
    _stop_listening: Arc<oneshot::Sender<()>>,
}

/// The channel the migrations' triggers announce API-key and tenant changes on.
const AUTH_CHANNEL: &str = "agentplane_auth";

/// Keeps `keys` in step with `NOTIFY agentplane_auth` (from any process) until `stop` drops
/// or the pool closes. Whenever it (re)starts listening it empties the cache: what changed
/// while nobody listened cannot be known.
async fn listen_for_auth_changes(
    pool: PgPool,
    keys: Weak<KeyCache>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(AUTH_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let listener = tokio::select! {
            _ = &mut stop => return,
            l = listener => l,
        };
        let Some(cache) = keys.upgrade() else { return };
        cache.clear();
        drop(cache);
        let mut listener = match listener {
            Ok(l) => l,
            Err(_) if pool.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %e, "not listening for API-key changes; retrying");
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = &mut stop => return,
                n = listener.try_recv() => n,
            };
            let Some(cache) = keys.upgrade() else { return };
            match next {
                Ok(Some(n)) => match n.payload().parse::<TenantId>() {
                    Ok(tenant) => cache.invalidate(tenant),
                    Err(_) => cache.clear(),
                },
                // The connection was lost and is back: anything may have changed meanwhile.
                Ok(None) => cache.clear(),
                Err(_) if pool.is_closed() => return,
                Err(e) => {
                    cache.clear();
                    tracing::warn!(error = %e, "listening for API-key changes failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// A role name safe to put in `SET ROLE` (identifiers cannot be bound as parameters).
fn checked_role(role: &str) -> Result<&str> {
    let ok = !role.is_empty()
        && role.len() <= 63
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !role.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(role)
    } else {
        Err(StoreError::Config(format!(
            "database role {role:?} must match [a-z_][a-z0-9_]*"
        )))
    }
}

/// Before pooling connections that `SET ROLE`, checks once that the role exists and may be
/// assumed, so a fresh cluster says what to do instead of timing out on every connection.
async fn preflight_role(opts: &PgConnectOptions, role: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(opts).await?;
    let (exists, allowed): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), \
         COALESCE((SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1), false)",
    )
    .bind(role)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    if !exists {
        return Err(StoreError::Config(format!(
            "the database role {role} does not exist: run `agentplane migrate` (it creates agentplane_app), or create the role"
        )));
    }
    if !allowed {
        return Err(StoreError::Config(format!(
            "the login role may not SET ROLE {role}: GRANT {role} TO <login role>, or set AGENTPLANE_DB_ROLE empty and connect as a member"
        )));
    }
    Ok(())
}

impl PgStore {
    const BACKEND: Backend = Backend::Postgres;

    /// Runs the migrations as the schema owner (`dsn` should be the owner's DSN).
    pub async fn migrate(owner_dsn: &str) -> Result<()> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(PgConnectOptions::from_str(owner_dsn)?)
            .await?;
        let res = MIGRATOR.run(&pool).await;
        pool.close().await;
        Ok(res?)
    }

    /// Connects as the server. With `role`, every connection runs `SET ROLE role` first (a
    /// login role that may assume agentplane_app); without, the login role itself must be
    /// the unprivileged one (the right choice behind PgBouncer). Refuses an outdated schema.
    pub async fn connect(dsn: &str, role: Option<&str>, max_connections: u32) -> Result<Self> {
        let opts = PgConnectOptions::from_str(dsn)?;
        if let Some(r) = role {
            preflight_role(&opts, checked_role(r)?).await?;
        }
        let set_role = match role {
            Some(r) => Some(format!("SET ROLE \"{}\"", checked_role(r)?)),
            None => None,
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // No ping before each use: a connection that died fails its query, is dropped, and
            // the next acquire opens a new one. The ping was a round trip on every request.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                let set_role = set_role.clone();
                Box::pin(async move {
                    if let Some(sql) = set_role {
                        conn.execute(sql.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await?;
        // The listener's connection is its own, beside the pool's `max_connections`.
        let listening = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(opts);
        let keys = Arc::new(KeyCache::new(key_cache::DEFAULT_TTL));
        let (tx, rx) = oneshot::channel();
        tokio::spawn(listen_for_auth_changes(
            listening.clone(),
            Arc::downgrade(&keys),
            rx,
        ));
        let store = Self {
            pool,
            listening,
            keys,
            fenced: Arc::default(),
            _stop_listening: Arc::new(tx),
        };
        store.check_schema().await?;
        Ok(store)
    }

    async fn check_schema(&self) -> Result<()> {
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        // A database that was never migrated has no _sqlx_migrations table: version 0.
        let found: i64 = match sqlx::query_scalar::<_, Option<i64>>(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await
        {
            Ok(v) => v.unwrap_or(0),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => 0,
            Err(e) => return Err(e.into()),
        };
        if found == expected {
            Ok(())
        } else {
            Err(StoreError::SchemaOutdated { found, expected })
        }
    }

    /// How long an API-key lookup is kept when nothing announces a change (zero: not at all).
    pub fn set_key_cache_ttl(&self, ttl: Duration) {
        self.keys.set_ttl(ttl);
    }

    pub async fn close(&self) {
        self.listening.close().await;
        self.pool.close().await;
    }

    /// `BEGIN` and the transaction's scope in one round trip (one simple query). The value is
    /// a tenant id or `on`, never input; it is checked to be plain characters all the same,
    /// since it is written into the statement.
    async fn scoped(&self, name: &'static str, value: &str) -> Result<Transaction<'static, Db>> {
        if !plain(name) || !plain(value) {
            return Err(StoreError::CrossTenant("a scope that is not an id"));
        }
        let mut tx = self
            .pool
            .begin_with(format!(
                "BEGIN; SELECT set_config('{name}', '{value}', true)"
            ))
            .await?;
        if name == "app.tenant_id" && self.fenced.load(Ordering::Relaxed) {
            // Its own statement: a refusal inside BEGIN's would leave the pooled connection
            // in an aborted transaction that nothing rolls back.
            sqlx::query("SELECT agentplane_enter_tenant($1)")
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// From now on, transactions on a tenant check that it has not moved to another
    /// database (see `moves.rs`).
    pub fn fence_moves(&self) {
        self.fenced.store(true, Ordering::Relaxed);
    }

    /// A transaction that holds the tenant's lock exclusively: no other transaction on the
    /// tenant runs until it ends.
    async fn lock_for_move(&self, tenant: TenantId) -> Result<Transaction<'static, Db>> {
        let t = tenant.to_string();
        if !plain(&t) {
            return Err(StoreError::CrossTenant("a scope that is not an id"));
        }
        Ok(self
            .pool
            .begin_with(format!(
                "BEGIN; SELECT set_config('app.tenant_id', '{t}', true), \
                 pg_advisory_xact_lock(hashtextextended('agentplane_tenant:{t}', 0))"
            ))
            .await?)
    }

    /// In a cross-tenant transaction, what [`PgStore::scoped`] does for one tenant: takes
    /// each tenant's lock in shared mode and checks that none moved away.
    async fn fence_tenants(
        &self,
        tx: &mut Transaction<'static, Db>,
        tenants: &[&str],
    ) -> Result<()> {
        if self.fenced.load(Ordering::Relaxed) && !tenants.is_empty() {
            sqlx::query("SELECT agentplane_enter_tenants($1)")
                .bind(tenants)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
    /// A settlement batch that releases no lease, as one statement outside a transaction
    /// block (`agentplane_settle_alone`): one round trip, its commit included. Answers
    /// whether it settled the batch; not when the batch must go through a transaction: a
    /// usage threshold crossed (the notification is enqueued with the batch), or tenants may
    /// move (their fence comes first).
    async fn settle_alone(
        &self,
        records: &[serde_json::Value],
        consumed: &[ops::LeaseUse<'_>],
        counters: &[ops::CounterUse<'_>],
    ) -> Result<bool> {
        if self.fenced.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let res = sqlx::query(
            "SELECT * FROM agentplane_settle_alone($1::jsonb, $2::jsonb, $3::jsonb, $4)",
        )
        .bind(ops::json_rows(records)?)
        .bind(ops::json_rows(consumed)?)
        .bind(ops::json_rows(counters)?)
        .bind(agentplane_core::webhook::THRESHOLDS.to_vec())
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("AP100") => Ok(false),
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("AP500") => Err(
                crate::error::corrupt("a settled run's usage counter is missing"),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Deleted tuples are unreachable through SQL at once; VACUUM reclaims them (autovacuum).
    async fn after_erasure(&self) -> Result<()> {
        Ok(())
    }

    async fn write_platform(&self) -> Result<Transaction<'static, Db>> {
        self.scoped("app.platform", "on").await
    }
    async fn write_tenant(&self, tenant: TenantId) -> Result<Transaction<'static, Db>> {
        self.scoped("app.tenant_id", &tenant.to_string()).await
    }
    async fn read_platform(&self) -> Result<Transaction<'static, Db>> {
        self.write_platform().await
    }
    async fn read_tenant(&self, tenant: TenantId) -> Result<Transaction<'static, Db>> {
        self.write_tenant(tenant).await
    }
    /// One snapshot for every statement of the transaction (an export's tables agree).
    async fn snapshot_tenant(&self, tenant: TenantId) -> Result<Transaction<'static, Db>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn claim(&self, now: Timestamp, lease_ms: i64) -> Result<Option<Job>> {
        let mut tx = self.write_platform().await?;
        ops::bury_expired(&mut tx, now).await?;
        let row: Option<crate::rows::JobRow> = sqlx::query_as(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_token = $1, \
             lease_until = $2, updated_at = $3 \
             WHERE id = (SELECT j.id FROM jobs j LEFT JOIN job_tenants t ON t.tenant_id = j.tenant_id \
                         WHERE ((j.status = 'queued' AND j.run_at <= $3) \
                            OR (j.status = 'running' AND j.lease_until < $3)) \
                           AND NOT EXISTS (SELECT 1 FROM tenant_moves m \
                                           WHERE m.tenant_id = j.tenant_id AND m.state = 'arriving') \
                         ORDER BY COALESCE(t.last_claimed_at, 0), j.run_at, j.id \
                         LIMIT 1 FOR UPDATE OF j SKIP LOCKED) \
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
