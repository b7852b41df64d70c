//! The `Store` implementation, written once and compiled once per backend: `sqlite.rs` and
//! `postgres.rs` each include this file as a module, with their own `Db`, `BackendStore` and
//! scoped-transaction methods in `super`. SQL here is portable between SQLite and
//! PostgreSQL (`$N` placeholders, `ON CONFLICT`, `RETURNING`); what is not lives in the
//! backend modules.

use super::{BackendStore, Db};
use crate::error::{corrupt, is_fk_violation, is_unique_violation};
use crate::rows::*;
use crate::*;
use agentplane_core::audit::{AuditEvent, NewAuditEvent};
use agentplane_core::page::{Page, PageRequest};
use sqlx::Transaction;

type Tx<'a> = Transaction<'a, Db>;

/// The columns of an audit event joined with its personal data (a macro so that queries
/// stay `&'static str` literals, never formatted at run time).
macro_rules! audit_select {
    () => {
        "SELECT e.tenant_id, e.seq, e.id, e.ts, e.action, e.actor_kind, e.actor_id, e.target_kind, \
         e.target_id, e.outcome, e.data, e.pii_digest, e.trace_id, e.prev_hash, e.hash, \
         p.salt AS pii_salt, p.pii AS pii FROM audit_events e \
         LEFT JOIN audit_pii p ON p.tenant_id = e.tenant_id AND p.event_id = e.id "
    };
}

pub(super) fn to_json(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(corrupt)
}

/// Appends `ev` to its chain inside `tx`: the head row is locked by the upsert (PostgreSQL)
/// or by the single writer (SQLite), so appends to one chain are serialised.
pub(super) async fn append_audit(tx: &mut Tx<'_>, ev: NewAuditEvent) -> Result<AuditEvent> {
    let chain = ev.chain.key();
    let (seq, prev_hash): (i64, String) = sqlx::query_as(
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 1, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq + 1 \
         RETURNING seq, hash",
    )
    .bind(&chain)
    .bind(agentplane_core::audit::GENESIS_HASH)
    .fetch_one(&mut **tx)
    .await?;
    let salt = uuid::Uuid::new_v4().into_bytes();
    let (event, pii) = ev.seal(seq, &prev_hash, &salt);
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, seq, id, ts, action, actor_kind, actor_id, target_kind, \
         target_id, outcome, data, pii_digest, trace_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&event.chain)
    .bind(event.seq)
    .bind(event.id.to_string())
    .bind(event.ts.millis())
    .bind(&event.action)
    .bind(&event.actor_kind)
    .bind(&event.actor_id)
    .bind(&event.target_kind)
    .bind(&event.target_id)
    .bind(&event.outcome)
    .bind(agentplane_core::audit::canonical_json(&event.data))
    .bind(&event.pii_digest)
    .bind(&event.trace_id)
    .bind(&event.prev_hash)
    .bind(&event.hash)
    .execute(&mut **tx)
    .await?;
    if let Some(pii) = &pii {
        sqlx::query(
            "INSERT INTO audit_pii (tenant_id, event_id, salt, pii) VALUES ($1, $2, $3, $4)",
        )
        .bind(&event.chain)
        .bind(event.id.to_string())
        .bind(hex::encode(salt))
        .bind(agentplane_core::audit::canonical_json(pii))
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("UPDATE audit_heads SET hash = $2 WHERE tenant_id = $1")
        .bind(&event.chain)
        .bind(&event.hash)
        .execute(&mut **tx)
        .await?;
    Ok(AuditEvent { pii, ..event })
}

pub(super) async fn insert_job(tx: &mut Tx<'_>, job: &Job) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (tenant_id, id, kind, payload, status, attempts, max_attempts, run_at, \
         lease_token, lease_until, last_error, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, NULL, $9, $10)",
    )
    .bind(job.tenant_id.to_string())
    .bind(job.id.to_string())
    .bind(job.kind.as_str())
    .bind(to_json(&job.payload)?)
    .bind(job.status.as_str())
    .bind(i64::from(job.attempts))
    .bind(i64::from(job.max_attempts))
    .bind(job.run_at.millis())
    .bind(job.created_at.millis())
    .bind(job.updated_at.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a creating request's response under its `Idempotency-Key`, in the transaction of
/// the creation: a concurrent request with the same key conflicts here and writes nothing.
async fn insert_idempotency(tx: &mut Tx<'_>, idem: &IdempotencyRecord) -> Result<()> {
    let res = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&idem.scope)
    .bind(&idem.key)
    .bind(&idem.request_hash)
    .bind(i64::from(idem.status))
    .bind(&idem.response)
    .bind(idem.created_at.millis())
    .execute(&mut **tx)
    .await;
    match res {
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(Conflict::IdempotencyKey)),
        r => r.map(|_| ()).map_err(Into::into),
    }
}

async fn insert_agent_version(
    tx: &mut Tx<'_>,
    ctx: &TenantCtx,
    a: &agentplane_core::agent::Agent,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_versions (tenant_id, agent_id, version, snapshot, actor_kind, actor_id, ts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(a.tenant_id.to_string())
    .bind(a.id.to_string())
    .bind(a.version)
    .bind(to_json(a)?)
    .bind(ctx.actor().kind())
    .bind(ctx.actor().id())
    .bind(a.updated_at.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Completes a job if this worker still holds its lease.
pub(super) async fn complete_job_tx(tx: &mut Tx<'_>, job: &Job, now: Timestamp) -> Result<()> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'succeeded', lease_token = NULL, lease_until = NULL, updated_at = $4 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND lease_token = $3",
    )
    .bind(job.tenant_id.to_string())
    .bind(job.id.to_string())
    .bind(&job.lease_token)
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(Conflict::LeaseLost))
    }
}

/// Jobs whose lease ran out on their last attempt are dead: nobody will retry them.
/// Records that a tenant's job was just claimed (claims favour the tenant served longest ago).
pub(super) async fn served(tx: &mut Tx<'_>, tenant: TenantId, now: Timestamp) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_tenants (tenant_id, last_claimed_at) VALUES ($1, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET last_claimed_at = excluded.last_claimed_at",
    )
    .bind(tenant.to_string())
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn bury_expired(tx: &mut Tx<'_>, now: Timestamp) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = 'dead', lease_token = NULL, lease_until = NULL, updated_at = $1, \
         last_error = 'lease expired on the last attempt' \
         WHERE status = 'running' AND lease_until < $1 AND attempts >= max_attempts",
    )
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Refuses an audit event that is not for the context's tenant.
async fn insert_usage_record(tx: &mut Tx<'_>, ctx: &TenantCtx, r: &UsageRecord) -> Result<()> {
    same_tenant(ctx, r.tenant_id, "usage record")?;
    sqlx::query(
        "INSERT INTO usage_records (tenant_id, id, ts, agent_id, model, provider, tokens_in, tokens_out, \
         latency_ms, status, trace_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(ctx.tenant_id().to_string())
    .bind(r.id.to_string())
    .bind(r.ts.millis())
    .bind(&r.agent_id)
    .bind(&r.model)
    .bind(&r.provider)
    .bind(r.tokens_in)
    .bind(r.tokens_out)
    .bind(r.latency_ms)
    .bind(&r.status)
    .bind(&r.trace_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Enqueues a usage notification for each 80% / 100% threshold this settlement crossed, once
/// per quota, threshold and month (`usage_notices` remembers which were sent).
async fn notify_thresholds(
    tx: &mut Tx<'_>,
    ctx: &TenantCtx,
    period: &str,
    after: Amount,
    consumed: Amount,
    limit: Amount,
) -> Result<()> {
    use agentplane_core::quota::QuotaKind;
    use agentplane_core::webhook::{crossed, UsageNotice};
    let now = Timestamp::now();
    for (quota, after, consumed, limit) in [
        (
            QuotaKind::MonthlyMessages,
            after.messages,
            consumed.messages,
            limit.messages,
        ),
        (
            QuotaKind::MonthlyTokens,
            after.tokens,
            consumed.tokens,
            limit.tokens,
        ),
    ] {
        for threshold in crossed(after - consumed, after, limit) {
            let first = sqlx::query(
                "INSERT INTO usage_notices (tenant_id, period, quota, threshold, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(ctx.tenant_id().to_string())
            .bind(period)
            .bind(quota.as_str())
            .bind(threshold)
            .bind(now.millis())
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
            if first {
                let notice = UsageNotice {
                    period: period.to_owned(),
                    quota,
                    threshold,
                    used: after,
                    limit,
                };
                let job = Job::new(
                    ctx.tenant_id(),
                    agentplane_core::job::JobKind::NotifyUsage,
                    serde_json::to_value(&notice).map_err(|e| corrupt(e.to_string()))?,
                    now,
                );
                insert_job(tx, &job).await?;
            }
        }
    }
    Ok(())
}

/// Adds to a counter's used and reserved amounts (the row exists: a grant created it);
/// answers the used amounts after.
async fn counter_add(
    tx: &mut Tx<'_>,
    ctx: &TenantCtx,
    period: &str,
    used: Amount,
    reserved: Amount,
) -> Result<Amount> {
    let (m, t): (i64, i64) = sqlx::query_as(
        "UPDATE usage_counters SET messages_used = messages_used + $3, tokens_used = tokens_used + $4, \
         messages_reserved = messages_reserved + $5, tokens_reserved = tokens_reserved + $6 \
         WHERE tenant_id = $1 AND period = $2 RETURNING messages_used, tokens_used",
    )
    .bind(ctx.tenant_id().to_string())
    .bind(period)
    .bind(used.messages)
    .bind(used.tokens)
    .bind(reserved.messages)
    .bind(reserved.tokens)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Amount::new(m, t))
}

pub(super) fn scoped(ctx: &TenantCtx, ev: NewAuditEvent) -> Result<NewAuditEvent> {
    if ev.chain == agentplane_core::audit::Chain::Tenant(ctx.tenant_id()) {
        Ok(ev)
    } else {
        Err(StoreError::CrossTenant("audit event of another chain"))
    }
}

pub(super) fn same_tenant(ctx: &TenantCtx, tenant: TenantId, what: &'static str) -> Result<()> {
    if ctx.tenant_id() == tenant {
        Ok(())
    } else {
        Err(StoreError::CrossTenant(what))
    }
}

pub(super) fn after_key(page: &PageRequest) -> String {
    page.after.clone().unwrap_or_default()
}

pub(super) fn overfetch(page: &PageRequest) -> i64 {
    i64::from(page.limit) + 1
}

fn split_key(key: &str, parts: usize) -> Result<Vec<&str>> {
    let v: Vec<&str> = key.splitn(parts, '|').collect();
    if v.len() == parts {
        Ok(v)
    } else {
        Err(StoreError::InvalidCursor)
    }
}

/// Decodes an `(i64, text, text)` keyset cursor; an empty cursor starts before everything.
fn usage_cursor(page: &PageRequest) -> Result<(i64, String, String)> {
    match &page.after {
        None => Ok((i64::MIN, String::new(), String::new())),
        Some(k) => {
            let v = split_key(k, 3)?;
            let ts = v[0].parse().map_err(|_| StoreError::InvalidCursor)?;
            Ok((ts, v[1].to_owned(), v[2].to_owned()))
        }
    }
}

fn range_bounds(range: TimeRange) -> (i64, i64) {
    (
        range.from.map_or(i64::MIN, Timestamp::millis),
        range.to.map_or(i64::MAX, Timestamp::millis),
    )
}

pub(super) fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

fn add(a: Amount, b: Amount) -> Amount {
    Amount::new(a.messages + b.messages, a.tokens + b.tokens)
}

/// A JSON array of rows: how a settlement batch reaches its set-based statements.
pub(super) fn json_rows<T: serde::Serialize>(rows: &[T]) -> Result<String> {
    serde_json::to_string(rows).map_err(corrupt)
}

/// What a settlement batch's runs consumed from one lease.
#[derive(serde::Serialize)]
pub(super) struct LeaseUse<'a> {
    pub tenant_id: &'a str,
    pub period: &'a str,
    pub id: &'a str,
    pub messages: i64,
    pub tokens: i64,
}

/// What a settlement batch's runs consumed of one counter (tenant and month); every counter
/// of the batch has one, zero for those it only releases a lease of.
#[derive(serde::Serialize)]
pub(super) struct CounterUse<'a> {
    pub tenant_id: &'a str,
    pub period: &'a str,
    pub used_messages: i64,
    pub used_tokens: i64,
    /// The plan's limits (for the 80% / 100% notifications).
    pub limit_messages: i64,
    pub limit_tokens: i64,
}

/// What one counter (tenant and month) gets from a settlement batch.
struct CounterSettlement<'a> {
    ctx: &'a TenantCtx,
    /// What the batch's runs consumed (added to `used`; what of it the leases still hold is
    /// taken off `reserved`).
    consumed: Amount,
    /// The plan's limits as of the batch's last run (for the 80% / 100% notifications).
    limit: Amount,
}

/// A settlement batch, grouped: usage records, consumption per lease, per counter, and the
/// releases in order. Keys are ordered (`BTreeMap`), so rows are always locked in one order.
struct SettleBatch<'a> {
    records: Vec<serde_json::Value>,
    leases: std::collections::BTreeMap<(String, String, String), Amount>,
    counters: std::collections::BTreeMap<(String, String), CounterSettlement<'a>>,
    releases: Vec<(&'a TenantCtx, &'a str, &'a str)>,
}

impl<'a> SettleBatch<'a> {
    fn of(ops: &'a [QuotaOp]) -> Result<Self> {
        let mut batch = Self {
            records: Vec::with_capacity(ops.len()),
            leases: Default::default(),
            counters: Default::default(),
            releases: Vec::new(),
        };
        for op in ops {
            let (ctx, period, limit) = match op {
                QuotaOp::Settle {
                    ctx, period, limit, ..
                } => (ctx, period, *limit),
                QuotaOp::Release { ctx, period, .. } => (ctx, period, Amount::ZERO),
            };
            let tenant = ctx.tenant_id().to_string();
            // Released counters are locked with the others, in the same order.
            let counter = batch
                .counters
                .entry((tenant.clone(), period.clone()))
                .or_insert(CounterSettlement {
                    ctx,
                    consumed: Amount::ZERO,
                    limit,
                });
            match op {
                QuotaOp::Settle {
                    record,
                    lease_id,
                    consumed,
                    ..
                } => {
                    same_tenant(ctx, record.tenant_id, "usage record")?;
                    counter.consumed = add(counter.consumed, *consumed);
                    counter.limit = limit;
                    if *consumed != Amount::ZERO {
                        let lease = batch
                            .leases
                            .entry((tenant.clone(), period.clone(), lease_id.clone()))
                            .or_insert(Amount::ZERO);
                        *lease = add(*lease, *consumed);
                    }
                    batch.records.push(serde_json::json!({
                        "tenant_id": tenant, "id": record.id.to_string(), "ts": record.ts.millis(),
                        "agent_id": record.agent_id, "model": record.model, "provider": record.provider,
                        "tokens_in": record.tokens_in, "tokens_out": record.tokens_out,
                        "latency_ms": record.latency_ms, "status": record.status,
                        "trace_id": record.trace_id,
                    }));
                }
                QuotaOp::Release { lease_id, .. } => {
                    batch.releases.push((ctx, period, lease_id));
                }
            }
        }
        Ok(batch)
    }
}

impl BackendStore {
    /// The key and its tenant's status, plan and region, from the database.
    async fn find_api_key_uncached(&self, public_id: &str) -> Result<Option<ApiKeyLookup>> {
        let mut tx = self.read_platform().await?;
        let row: Option<ApiKeyTenantRow> = sqlx::query_as(
            "SELECT k.*, t.status AS tenant_status, t.plan_id AS tenant_plan, t.region AS tenant_region FROM api_keys k \
             JOIN tenants t ON t.tenant_id = k.tenant_id WHERE k.public_id = $1",
        )
        .bind(public_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|r| {
            let tenant_status = agentplane_core::tenant::TenantStatus::parse(&r.tenant_status)
                .ok_or_else(|| corrupt("tenants.status"))?;
            let plan_id = PlanId::parse(&r.tenant_plan).map_err(corrupt)?;
            let (key, secret_hash) = r.key.into_key()?;
            Ok(ApiKeyLookup {
                key,
                secret_hash,
                tenant_status,
                plan_id,
                region: r.tenant_region,
            })
        })
        .transpose()
    }

    /// One page of a tenant's rows of a table keyed by `id`, in id order (`sql` takes the
    /// tenant, the cursor and the limit; one extra row only tells that there is more).
    async fn tenant_rows_by_id<R>(
        &self,
        ctx: &TenantCtx,
        sql: &'static str,
        page: &PageRequest,
    ) -> Result<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, <Db as sqlx::Database>::Row> + Send + Unpin,
    {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows = sqlx::query_as(sql)
            .bind(ctx.tenant_id().to_string())
            .bind(after_key(page))
            .bind(overfetch(page))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

#[async_trait]
impl Store for BackendStore {
    fn backend(&self) -> Backend {
        Self::BACKEND
    }

    async fn ping(&self) -> Result<()> {
        let mut tx = self.read_platform().await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_plans(&self, page: &PageRequest) -> Result<Page<Plan>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<PlanRow> =
            sqlx::query_as("SELECT * FROM plans WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after_key(page))
                .bind(overfetch(page))
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |p: &Plan| p.id.to_string(),
        ))
    }

    async fn get_plan(&self, id: &PlanId) -> Result<Option<Plan>> {
        let mut tx = self.read_platform().await?;
        let row: Option<PlanRow> = sqlx::query_as("SELECT * FROM plans WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Plan::try_from).transpose()
    }

    async fn insert_plan(
        &self,
        plan: &Plan,
        audit: NewAuditEvent,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<()> {
        let mut tx = self.write_platform().await?;
        if let Some(idem) = &idempotency {
            insert_idempotency(&mut tx, idem).await?;
        }
        let res = sqlx::query(
            "INSERT INTO plans (id, name, monthly_messages, monthly_tokens, requests_per_minute, \
             max_concurrent_runs, features, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(plan.id.as_str())
        .bind(&plan.name)
        .bind(plan.limits.monthly_messages)
        .bind(plan.limits.monthly_tokens)
        .bind(plan.limits.requests_per_minute)
        .bind(plan.limits.max_concurrent_runs)
        .bind(to_json(&plan.features)?)
        .bind(plan.created_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(Conflict::PlanId))
            }
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn copy_plan(&self, plan: &Plan) -> Result<()> {
        let mut tx = self.write_platform().await?;
        sqlx::query(
            "INSERT INTO plans (id, name, monthly_messages, monthly_tokens, requests_per_minute, \
             max_concurrent_runs, features, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(plan.id.as_str())
        .bind(&plan.name)
        .bind(plan.limits.monthly_messages)
        .bind(plan.limits.monthly_tokens)
        .bind(plan.limits.requests_per_minute)
        .bind(plan.limits.max_concurrent_runs)
        .bind(to_json(&plan.features)?)
        .bind(plan.created_at.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_tenant(&self, new: NewTenant) -> Result<()> {
        let t = &new.tenant;
        let mut tx = self.write_platform().await?;
        if let Some(idem) = &new.idempotency {
            insert_idempotency(&mut tx, idem).await?;
        }
        let res = sqlx::query(
            "INSERT INTO tenants (tenant_id, slug, name, plan_id, status, region, created_at, updated_at, \
             deleted_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(t.id.to_string())
        .bind(t.slug.as_str())
        .bind(&t.name)
        .bind(t.plan_id.as_str())
        .bind(t.status.as_str())
        .bind(&t.region)
        .bind(t.created_at.millis())
        .bind(t.updated_at.millis())
        .bind(t.deleted_at.map(Timestamp::millis))
        .bind(t.version)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Slug)),
            r => r?,
        };
        insert_job(&mut tx, &new.provisioning_job).await?;
        append_audit(&mut tx, new.audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        let mut tx = self.read_tenant(id).await?;
        let row: Option<TenantRow> = sqlx::query_as("SELECT * FROM tenants WHERE tenant_id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Tenant::try_from).transpose()
    }

    async fn list_tenants(
        &self,
        _platform: &PlatformCtx,
        page: &PageRequest,
    ) -> Result<Page<Tenant>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<TenantRow> = sqlx::query_as(
            "SELECT * FROM tenants WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2",
        )
        .bind(after_key(page))
        .bind(overfetch(page))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |t: &Tenant| t.id.to_string(),
        ))
    }

    async fn tenant_by_slug(&self, slug: &Slug) -> Result<Option<Tenant>> {
        let mut tx = self.read_platform().await?;
        let row: Option<TenantRow> = sqlx::query_as("SELECT * FROM tenants WHERE slug = $1")
            .bind(slug.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Tenant::try_from).transpose()
    }

    async fn slug_taken(&self, slug: &Slug) -> Result<bool> {
        let mut tx = self.read_platform().await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE slug = $1")
            .bind(slug.as_str())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn update_tenant(
        &self,
        ctx: &TenantCtx,
        t: &Tenant,
        expected_version: i64,
        job: Option<&Job>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        same_tenant(ctx, t.id, "tenant")?;
        let audit = scoped(ctx, audit)?;
        if let Some(j) = job {
            same_tenant(ctx, j.tenant_id, "job")?;
        }
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE tenants SET name = $3, plan_id = $4, status = $5, region = $6, updated_at = $7, \
             deleted_at = $8, version = $9 WHERE tenant_id = $1 AND version = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(expected_version)
        .bind(&t.name)
        .bind(t.plan_id.as_str())
        .bind(t.status.as_str())
        .bind(&t.region)
        .bind(t.updated_at.millis())
        .bind(t.deleted_at.map(Timestamp::millis))
        .bind(t.version)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Err(StoreError::Conflict(Conflict::Version));
        }
        if let Some(job) = job {
            insert_job(&mut tx, job).await?;
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(())
    }

    async fn claim_job(&self, now: Timestamp, lease_ms: i64) -> Result<Option<Job>> {
        self.claim(now, lease_ms).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let mut tx = self.read_platform().await?;
        let row: Option<JobRow> = sqlx::query_as("SELECT * FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Job::try_from).transpose()
    }

    async fn complete_job(&self, job: &Job, now: Timestamp) -> Result<()> {
        let mut tx = self.write_tenant(job.tenant_id).await?;
        complete_job_tx(&mut tx, job, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail_job(&self, job: &Job, error: &str, now: Timestamp) -> Result<()> {
        let dead = job.attempts >= job.max_attempts;
        let run_at = now.plus_millis(Job::retry_delay_ms(job.attempts));
        let error: String = error.chars().take(2000).collect();
        let mut tx = self.write_tenant(job.tenant_id).await?;
        sqlx::query(
            "UPDATE jobs SET status = $4, run_at = $5, last_error = $6, lease_token = NULL, \
             lease_until = NULL, updated_at = $7 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND lease_token = $3",
        )
        .bind(job.tenant_id.to_string())
        .bind(job.id.to_string())
        .bind(&job.lease_token)
        .bind(if dead { "dead" } else { "queued" })
        .bind(run_at.millis())
        .bind(error)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_provisioning(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        t: &Tenant,
        p: &Provisioning,
        audit: NewAuditEvent,
        now: Timestamp,
    ) -> Result<()> {
        same_tenant(ctx, t.id, "tenant")?;
        same_tenant(ctx, job.tenant_id, "job")?;
        same_tenant(ctx, p.first_admin.tenant_id, "membership")?;
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        for (key, value) in &p.settings {
            let value = to_json(value)?;
            sqlx::query(
                "INSERT INTO tenant_settings (tenant_id, key, value, updated_at, version) VALUES ($1, $2, $3, $4, 1) \
                 ON CONFLICT (tenant_id, key) DO NOTHING",
            )
            .bind(&tenant)
            .bind(key)
            .bind(&value)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO tenant_setting_history (tenant_id, key, version, value, previous, actor_kind, actor_id, ts) \
                 VALUES ($1, $2, 1, $3, NULL, $4, $5, $6) ON CONFLICT (tenant_id, key, version) DO NOTHING",
            )
            .bind(&tenant)
            .bind(key)
            .bind(&value)
            .bind(ctx.actor().kind())
            .bind(ctx.actor().id())
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO usage_counters (tenant_id, period) VALUES ($1, $2) ON CONFLICT (tenant_id, period) DO NOTHING",
        )
        .bind(&tenant)
        .bind(&p.period)
        .execute(&mut *tx)
        .await?;
        let admin = &p.first_admin;
        let email = admin.email.to_lowercase();
        let user_id =
            super::identity_ops::upsert_user(&mut tx, admin.user_id, &email, admin.created_at)
                .await?;
        sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, email, roles, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (tenant_id, email) DO NOTHING",
        )
        .bind(&tenant)
        .bind(&user_id)
        .bind(&email)
        .bind(to_json(&admin.roles)?)
        .bind(&admin.status)
        .bind(admin.created_at.millis())
        .execute(&mut *tx)
        .await?;
        crate::crash_point("provision.before_commit");
        let res = sqlx::query(
            "UPDATE tenants SET status = $3, updated_at = $4, version = $5 WHERE tenant_id = $1 AND version = $2",
        )
        .bind(&tenant)
        .bind(t.version - 1)
        .bind(t.status.as_str())
        .bind(t.updated_at.millis())
        .bind(t.version)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Err(StoreError::Conflict(Conflict::Version));
        }
        complete_job_tx(&mut tx, job, now).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.keys.invalidate(t.id);
        Ok(())
    }

    async fn purge_tenant(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        audit: NewAuditEvent,
        now: Timestamp,
    ) -> Result<PurgeReport> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let mut report = PurgeReport::default();
        macro_rules! delete {
            ($field:ident, $sql:literal) => {
                report.$field = sqlx::query($sql)
                    .bind(&tenant)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            };
        }
        delete!(settings, "DELETE FROM tenant_settings WHERE tenant_id = $1");
        delete!(
            setting_history,
            "DELETE FROM tenant_setting_history WHERE tenant_id = $1"
        );
        delete!(branding, "DELETE FROM tenant_branding WHERE tenant_id = $1");
        delete!(agents, "DELETE FROM agents WHERE tenant_id = $1");
        delete!(api_keys, "DELETE FROM api_keys WHERE tenant_id = $1");
        sqlx::query("DELETE FROM agent_versions WHERE tenant_id = $1")
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
        delete!(
            providers,
            "DELETE FROM provider_credentials WHERE tenant_id = $1"
        );
        // Crypto-shredding: without its data keys, nothing ever sealed for the tenant opens.
        delete!(tenant_keys, "DELETE FROM tenant_keys WHERE tenant_id = $1");
        // A person who belonged to this tenant only is forgotten too (the e-mail is personal
        // data). Seeing whether they belong elsewhere needs every tenant's memberships.
        sqlx::query(super::ENTER_PLATFORM)
            .fetch_optional(&mut *tx)
            .await?;
        delete!(
            people,
            "DELETE FROM users WHERE user_id IN (SELECT user_id FROM memberships WHERE tenant_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.user_id AND m.tenant_id <> $1)"
        );
        delete!(memberships, "DELETE FROM memberships WHERE tenant_id = $1");
        for table in [
            "quota_leases",
            "usage_notices",
            "tenant_webhooks",
            "job_tenants",
            "refresh_tokens",
            "sessions",
            "invitations",
            "tenant_roles",
            "scim_tokens",
            "sso_states",
            "sso_replay",
            "sso_connections",
            "erasure_receipts",
            "exports",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(&tenant)
                .execute(&mut *tx)
                .await?;
        }
        delete!(
            usage_counters,
            "DELETE FROM usage_counters WHERE tenant_id = $1"
        );
        delete!(
            usage_records,
            "DELETE FROM usage_records WHERE tenant_id = $1"
        );
        delete!(audit_pii, "DELETE FROM audit_pii WHERE tenant_id = $1");
        report.jobs = sqlx::query("DELETE FROM jobs WHERE tenant_id = $1 AND id <> $2")
            .bind(&tenant)
            .bind(job.id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM tenants WHERE tenant_id = $1")
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
        complete_job_tx(&mut tx, job, now).await?;
        // The event records what was removed, beside what the caller put in its data.
        let mut audit = audit;
        if let (Some(data), serde_json::Value::Object(counts)) = (
            audit.data.as_object_mut(),
            serde_json::to_value(&report).map_err(corrupt)?,
        ) {
            data.extend(counts);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        self.after_erasure().await?;
        Ok(report)
    }

    async fn list_members(
        &self,
        ctx: &TenantCtx,
        filter: &MemberFilter,
        page: &PageRequest,
    ) -> Result<Page<Member>> {
        // Roles are stored as a JSON list of strings: match the quoted role as a whole, with
        // LIKE's wildcards escaped, so the filter runs before the page is cut.
        let role_pattern = filter.role.as_ref().map(|r| {
            let escaped = r
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%\"{escaped}\"%")
        });
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT * FROM memberships WHERE tenant_id = $1 AND user_id > $2 \
             AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR roles LIKE $4 ESCAPE '\\') \
             ORDER BY user_id LIMIT $5",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(after_key(page))
        .bind(&filter.status)
        .bind(role_pattern)
        .bind(overfetch(page))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |m: &Member| m.user_id.to_string(),
        ))
    }

    async fn list_settings(&self, ctx: &TenantCtx) -> Result<Vec<Setting>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<SettingRow> = sqlx::query_as(
            "SELECT key, value, version, updated_at FROM tenant_settings WHERE tenant_id = $1 ORDER BY key",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        convert(rows)
    }

    async fn get_setting(&self, ctx: &TenantCtx, key: &str) -> Result<Option<Setting>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<SettingRow> = sqlx::query_as(
            "SELECT key, value, version, updated_at FROM tenant_settings WHERE tenant_id = $1 AND key = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(Setting::try_from).transpose()
    }

    async fn put_setting(
        &self,
        ctx: &TenantCtx,
        c: &SettingChange,
        audit: NewAuditEvent,
    ) -> Result<SettingWrite> {
        let mut audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let current: Option<SettingRow> = sqlx::query_as(super::SELECT_SETTING_FOR_UPDATE)
            .bind(&tenant)
            .bind(&c.key)
            .fetch_optional(&mut *tx)
            .await?;
        let current = current.map(Setting::try_from).transpose()?;
        let current_version = current.as_ref().map_or(0, |s| s.version);
        if c.expected_version.is_some_and(|v| v != current_version) {
            return Err(StoreError::Conflict(Conflict::Version));
        }
        if let Some(cur) = current.as_ref().filter(|s| s.value == c.value) {
            tx.commit().await?;
            return Ok(SettingWrite {
                setting: cur.clone(),
                previous: None,
                changed: false,
            });
        }
        let previous = current.map(|s| s.value);
        let value = to_json(&c.value)?;
        let version = current_version + 1;
        let res = if current_version == 0 {
            sqlx::query(
                "INSERT INTO tenant_settings (tenant_id, key, value, updated_at, version) VALUES ($1, $2, $3, $4, 1)",
            )
            .bind(&tenant)
            .bind(&c.key)
            .bind(&value)
            .bind(c.ts.millis())
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE tenant_settings SET value = $3, updated_at = $4, version = $5 \
                 WHERE tenant_id = $1 AND key = $2 AND version = $6",
            )
            .bind(&tenant)
            .bind(&c.key)
            .bind(&value)
            .bind(c.ts.millis())
            .bind(version)
            .bind(current_version)
            .execute(&mut *tx)
            .await
        };
        match res {
            // A concurrent first write of the same key won the insert.
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(Conflict::Version))
            }
            Ok(r) if r.rows_affected() != 1 => return Err(StoreError::Conflict(Conflict::Version)),
            r => r?,
        };
        sqlx::query(
            "INSERT INTO tenant_setting_history (tenant_id, key, version, value, previous, actor_kind, actor_id, ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&tenant)
        .bind(&c.key)
        .bind(version)
        .bind(&value)
        .bind(previous.as_ref().map(to_json).transpose()?)
        .bind(c.actor.kind())
        .bind(c.actor.id())
        .bind(c.ts.millis())
        .execute(&mut *tx)
        .await?;
        if let Some(data) = audit.data.as_object_mut() {
            data.insert("version".into(), serde_json::json!(version));
            data.insert(
                "previous".into(),
                previous.clone().unwrap_or(serde_json::Value::Null),
            );
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        let setting = Setting {
            key: c.key.clone(),
            version,
            value: c.value.clone(),
            updated_at: c.ts,
        };
        Ok(SettingWrite {
            setting,
            previous,
            changed: true,
        })
    }

    async fn setting_history(
        &self,
        ctx: &TenantCtx,
        key: &str,
        page: &PageRequest,
    ) -> Result<Page<SettingVersion>> {
        let before: i64 = match &page.after {
            None => i64::MAX,
            Some(k) => k.parse().map_err(|_| StoreError::InvalidCursor)?,
        };
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<SettingVersionRow> = sqlx::query_as(
            "SELECT key, version, value, previous, actor_kind, actor_id, ts FROM tenant_setting_history \
             WHERE tenant_id = $1 AND key = $2 AND version < $3 ORDER BY version DESC LIMIT $4",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(key)
        .bind(before)
        .bind(overfetch(page))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |v: &SettingVersion| v.version.to_string(),
        ))
    }

    async fn setting_version(
        &self,
        ctx: &TenantCtx,
        key: &str,
        version: i64,
    ) -> Result<Option<SettingVersion>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<SettingVersionRow> = sqlx::query_as(
            "SELECT key, version, value, previous, actor_kind, actor_id, ts FROM tenant_setting_history \
             WHERE tenant_id = $1 AND key = $2 AND version = $3",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(key)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(SettingVersion::try_from).transpose()
    }

    async fn get_branding(&self, ctx: &TenantCtx) -> Result<agentplane_core::branding::Branding> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<BrandingRow> =
            sqlx::query_as("SELECT * FROM tenant_branding WHERE tenant_id = $1")
                .bind(ctx.tenant_id().to_string())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(row.map(Into::into).unwrap_or_default())
    }

    async fn tenant_by_domain(&self, domain: &str) -> Result<Option<TenantId>> {
        let mut tx = self.read_platform().await?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM tenant_branding WHERE custom_domain = $1")
                .bind(domain)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        id.map(|s| s.parse().map_err(corrupt)).transpose()
    }

    async fn put_branding(
        &self,
        ctx: &TenantCtx,
        b: &agentplane_core::branding::Branding,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let audit = scoped(ctx, audit)?;
        let updated_at = b.updated_at.unwrap_or_else(Timestamp::now).millis();
        let logo = b.logo.as_ref();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let sql = if expected_version == 0 {
            "INSERT INTO tenant_branding (tenant_id, product_name, primary_color, accent_color, custom_domain, \
             logo_content_type, logo_sha256, logo_size, version, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        } else {
            "UPDATE tenant_branding SET product_name = $2, primary_color = $3, accent_color = $4, \
             custom_domain = $5, logo_content_type = $6, logo_sha256 = $7, logo_size = $8, version = $9, \
             updated_at = $10 WHERE tenant_id = $1 AND version = $11"
        };
        let q = sqlx::query(sql)
            .bind(ctx.tenant_id().to_string())
            .bind(&b.product_name)
            .bind(&b.primary_color)
            .bind(&b.accent_color)
            .bind(&b.custom_domain)
            .bind(logo.map(|l| l.content_type.as_str()))
            .bind(logo.map(|l| l.sha256.as_str()))
            .bind(logo.map(|l| l.size))
            .bind(expected_version + 1)
            .bind(updated_at);
        // The INSERT has ten parameters: an eleventh would be prepared into its statement
        // (and break any other query of the same text on the connection).
        let q = if expected_version == 0 {
            q
        } else {
            q.bind(expected_version)
        };
        let res = q.execute(&mut *tx).await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                // The primary key (a concurrent first write) or the custom domain.
                let domain_taken = match &e {
                    sqlx::Error::Database(d) => {
                        d.message().contains("custom_domain")
                            || d.constraint().is_some_and(|c| c.contains("custom_domain"))
                    }
                    _ => false,
                };
                return Err(StoreError::Conflict(if domain_taken {
                    Conflict::Domain
                } else {
                    Conflict::Version
                }));
            }
            Ok(r) if r.rows_affected() != 1 => return Err(StoreError::Conflict(Conflict::Version)),
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_keys(&self, ctx: &TenantCtx) -> Result<Vec<TenantKey>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<TenantKeyRow> =
            sqlx::query_as("SELECT * FROM tenant_keys WHERE tenant_id = $1 ORDER BY version")
                .bind(ctx.tenant_id().to_string())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| r.into_key().map(|(_, k)| k))
            .collect()
    }

    async fn insert_tenant_key(
        &self,
        ctx: &TenantCtx,
        k: &TenantKey,
        retire_others: bool,
        job: Option<&Job>,
        audit: Option<NewAuditEvent>,
    ) -> Result<()> {
        if let Some(j) = job {
            same_tenant(ctx, j.tenant_id, "job")?;
        }
        let audit = audit.map(|a| scoped(ctx, a)).transpose()?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        if retire_others {
            sqlx::query("UPDATE tenant_keys SET state = 'retired' WHERE tenant_id = $1 AND state = 'active'")
                .bind(&tenant)
                .execute(&mut *tx)
                .await?;
        }
        let res = sqlx::query(
            "INSERT INTO tenant_keys (tenant_id, version, kms, kek_version, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&tenant)
        .bind(k.version)
        .bind(&k.kms)
        .bind(k.kek_version)
        .bind(&k.wrapped)
        .bind(&k.state)
        .bind(k.created_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(Conflict::Version))
            }
            r => r?,
        };
        if let Some(job) = job {
            insert_job(&mut tx, job).await?;
        }
        if let Some(audit) = audit {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn rewrap_tenant_key(
        &self,
        ctx: &TenantCtx,
        version: i64,
        old_wrapped: &str,
        kms: &str,
        kek_version: i64,
        wrapped: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let n = sqlx::query(
            "UPDATE tenant_keys SET kms = $4, kek_version = $5, wrapped = $6 \
             WHERE tenant_id = $1 AND version = $2 AND wrapped = $3",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(version)
        .bind(old_wrapped)
        .bind(kms)
        .bind(kek_version)
        .bind(wrapped)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn all_tenant_keys(&self, _platform: &PlatformCtx) -> Result<Vec<(TenantId, TenantKey)>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<TenantKeyRow> =
            sqlx::query_as("SELECT * FROM tenant_keys ORDER BY tenant_id, version")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        rows.into_iter().map(TenantKeyRow::into_key).collect()
    }

    async fn insert_shared_provider(
        &self,
        _platform: &PlatformCtx,
        rec: &SharedProviderRecord,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let p = &rec.provider;
        let mut tx = self.write_platform().await?;
        let res = sqlx::query(
            "INSERT INTO shared_providers (id, name, kind, base_url, auth, api_version, models, plans, \
             wrapped_key, secret, fingerprint, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(p.kind.as_str())
        .bind(&p.base_url)
        .bind(to_json(&p.auth)?)
        .bind(&p.api_version)
        .bind(to_json(&p.models)?)
        .bind(to_json(&p.plans)?)
        .bind(&rec.wrapped_key)
        .bind(&rec.sealed_secret)
        .bind(&p.fingerprint)
        .bind(p.created_at.millis())
        .bind(p.updated_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_shared_providers(&self) -> Result<Vec<SharedProviderRecord>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<SharedProviderRow> =
            sqlx::query_as("SELECT * FROM shared_providers ORDER BY name")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        convert(rows)
    }

    async fn rewrap_shared_provider(&self, id: &str, wrapped_key: &str) -> Result<()> {
        let mut tx = self.write_platform().await?;
        sqlx::query("UPDATE shared_providers SET wrapped_key = $2 WHERE id = $1")
            .bind(id)
            .bind(wrapped_key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_shared_provider(&self, id: &str) -> Result<Option<SharedProviderRecord>> {
        let mut tx = self.read_platform().await?;
        let row: Option<SharedProviderRow> =
            sqlx::query_as("SELECT * FROM shared_providers WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(SharedProviderRecord::try_from).transpose()
    }

    async fn set_shared_provider_plans(
        &self,
        _platform: &PlatformCtx,
        id: &str,
        plans: &[String],
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write_platform().await?;
        let res =
            sqlx::query("UPDATE shared_providers SET plans = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(to_json(&plans)?)
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        // Every tenant's cached providers may point at it.
        self.keys.clear();
        Ok(true)
    }

    async fn insert_provider(
        &self,
        ctx: &TenantCtx,
        rec: &ProviderRecord,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let p = &rec.provider;
        same_tenant(ctx, p.tenant_id, "provider")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "INSERT INTO provider_credentials (tenant_id, id, name, kind, base_url, api_version, models, secret, \
             key_version, fingerprint, created_at, updated_at, version, auth, shared_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(p.tenant_id.to_string())
        .bind(p.id.to_string())
        .bind(&p.name)
        .bind(p.kind.as_str())
        .bind(&p.base_url)
        .bind(&p.api_version)
        .bind(to_json(&p.models)?)
        .bind(&rec.sealed_secret)
        .bind(p.key_version)
        .bind(&p.fingerprint)
        .bind(p.created_at.millis())
        .bind(p.updated_at.millis())
        .bind(p.version)
        .bind(to_json(&p.auth)?)
        .bind(&p.shared_id)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
    ) -> Result<Option<ProviderRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<ProviderRow> =
            sqlx::query_as("SELECT * FROM provider_credentials WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(ProviderRecord::try_from).transpose()
    }

    async fn list_providers(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<ProviderRecord>> {
        let rows: Vec<ProviderRow> = self
            .tenant_rows_by_id(ctx, "SELECT * FROM provider_credentials WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3", page)
            .await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |r: &ProviderRecord| r.provider.id.to_string(),
        ))
    }

    async fn update_provider(
        &self,
        ctx: &TenantCtx,
        rec: &ProviderRecord,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let p = &rec.provider;
        same_tenant(ctx, p.tenant_id, "provider")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE provider_credentials SET name = $3, base_url = $4, api_version = $5, models = $6, secret = $7, \
             key_version = $8, fingerprint = $9, updated_at = $10, version = $11, auth = $13 \
             WHERE tenant_id = $1 AND id = $2 AND version = $12",
        )
        .bind(p.tenant_id.to_string())
        .bind(p.id.to_string())
        .bind(&p.name)
        .bind(&p.base_url)
        .bind(&p.api_version)
        .bind(to_json(&p.models)?)
        .bind(&rec.sealed_secret)
        .bind(p.key_version)
        .bind(&p.fingerprint)
        .bind(p.updated_at.millis())
        .bind(p.version)
        .bind(expected_version)
        .bind(to_json(&p.auth)?)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            Ok(r) if r.rows_affected() != 1 => return Err(StoreError::Conflict(Conflict::Version)),
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(())
    }

    async fn reseal_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
        old_key_version: i64,
        sealed: &[u8],
        key_version: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let n = sqlx::query(
            "UPDATE provider_credentials SET secret = $4, key_version = $5 \
             WHERE tenant_id = $1 AND id = $2 AND key_version = $3",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .bind(old_key_version)
        .bind(sealed)
        .bind(key_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn delete_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query("DELETE FROM provider_credentials WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await;
        let n = match res {
            Err(e) if is_fk_violation(&e) => return Err(StoreError::Conflict(Conflict::Reference)),
            r => r?.rows_affected(),
        };
        if n == 1 {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(n == 1)
    }

    async fn insert_agent(
        &self,
        ctx: &TenantCtx,
        a: &agentplane_core::agent::Agent,
        audit: NewAuditEvent,
    ) -> Result<()> {
        same_tenant(ctx, a.tenant_id, "agent")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "INSERT INTO agents (tenant_id, id, name, provider_id, model, system_prompt, params, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(a.tenant_id.to_string())
        .bind(a.id.to_string())
        .bind(&a.name)
        .bind(a.provider_id.to_string())
        .bind(&a.model)
        .bind(&a.system_prompt)
        .bind(to_json(&a.params)?)
        .bind(a.version)
        .bind(a.created_at.millis())
        .bind(a.updated_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            Err(e) if is_fk_violation(&e) => return Err(StoreError::Conflict(Conflict::Reference)),
            r => r?,
        };
        insert_agent_version(&mut tx, ctx, a).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_agent(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
    ) -> Result<Option<agentplane_core::agent::Agent>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<AgentRow> =
            sqlx::query_as("SELECT * FROM agents WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(agentplane_core::agent::Agent::try_from).transpose()
    }

    async fn get_agent_by_name(
        &self,
        ctx: &TenantCtx,
        name: &str,
    ) -> Result<Option<agentplane_core::agent::Agent>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<AgentRow> =
            sqlx::query_as("SELECT * FROM agents WHERE tenant_id = $1 AND name = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(agentplane_core::agent::Agent::try_from).transpose()
    }

    async fn list_jobs(&self, ctx: &TenantCtx, page: &PageRequest) -> Result<Page<Job>> {
        let rows: Vec<JobRow> = self
            .tenant_rows_by_id(
                ctx,
                "SELECT * FROM jobs WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                page,
            )
            .await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |j: &Job| j.id.to_string(),
        ))
    }

    async fn tenant_job(&self, ctx: &TenantCtx, id: JobId) -> Result<Option<Job>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<JobRow> =
            sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(Job::try_from).transpose()
    }

    async fn heartbeat_job(
        &self,
        job: &Job,
        now: Timestamp,
        lease_ms: i64,
        progress: Option<(i64, &str)>,
    ) -> Result<bool> {
        let mut tx = self.write_tenant(job.tenant_id).await?;
        let (pct, msg) = progress.map_or((None, None), |(p, m)| (Some(p.clamp(0, 100)), Some(m)));
        let cancel: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET lease_until = $4, updated_at = $5, \
             progress_pct = COALESCE($6, progress_pct), progress_message = COALESCE($7, progress_message) \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND lease_token = $3 \
             RETURNING cancel_requested",
        )
        .bind(job.tenant_id.to_string())
        .bind(job.id.to_string())
        .bind(&job.lease_token)
        .bind(now.plus_millis(lease_ms).millis())
        .bind(now.millis())
        .bind(pct)
        .bind(msg)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        cancel
            .map(|c| c != 0)
            .ok_or(StoreError::Conflict(Conflict::LeaseLost))
    }

    async fn cancel_job(
        &self,
        ctx: &TenantCtx,
        id: JobId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Job>> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let row: Option<JobRow> = sqlx::query_as(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $3, \
             status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END \
             WHERE tenant_id = $1 AND id = $2 AND status IN ('queued', 'running') AND cancel_requested = 0 \
             RETURNING *",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await?;
        let job = match row {
            Some(r) => {
                append_audit(&mut tx, audit).await?;
                Some(Job::try_from(r)?)
            }
            None => {
                let r: Option<JobRow> =
                    sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND id = $2")
                        .bind(ctx.tenant_id().to_string())
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                r.map(Job::try_from).transpose()?
            }
        };
        tx.commit().await?;
        Ok(job)
    }

    async fn finish_cancelled(&self, job: &Job, now: Timestamp) -> Result<()> {
        let mut tx = self.write_tenant(job.tenant_id).await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', lease_token = NULL, lease_until = NULL, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND lease_token = $3",
        )
        .bind(job.tenant_id.to_string())
        .bind(job.id.to_string())
        .bind(&job.lease_token)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(Conflict::LeaseLost))
        }
    }

    async fn list_agents(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<agentplane_core::agent::Agent>> {
        let rows: Vec<AgentRow> = self
            .tenant_rows_by_id(
                ctx,
                "SELECT * FROM agents WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                page,
            )
            .await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |a: &agentplane_core::agent::Agent| a.id.to_string(),
        ))
    }

    async fn update_agent(
        &self,
        ctx: &TenantCtx,
        a: &agentplane_core::agent::Agent,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()> {
        same_tenant(ctx, a.tenant_id, "agent")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE agents SET name = $3, provider_id = $4, model = $5, system_prompt = $6, params = $7, version = $8, \
             updated_at = $9 WHERE tenant_id = $1 AND id = $2 AND version = $10",
        )
        .bind(a.tenant_id.to_string())
        .bind(a.id.to_string())
        .bind(&a.name)
        .bind(a.provider_id.to_string())
        .bind(&a.model)
        .bind(&a.system_prompt)
        .bind(to_json(&a.params)?)
        .bind(a.version)
        .bind(a.updated_at.millis())
        .bind(expected_version)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            Err(e) if is_fk_violation(&e) => return Err(StoreError::Conflict(Conflict::Reference)),
            Ok(r) if r.rows_affected() != 1 => return Err(StoreError::Conflict(Conflict::Version)),
            r => r?,
        };
        insert_agent_version(&mut tx, ctx, a).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(())
    }

    async fn delete_agent(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let n = sqlx::query("DELETE FROM agents WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(n == 1)
    }

    async fn agent_versions(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
        page: &PageRequest,
    ) -> Result<Page<AgentVersion>> {
        let before: i64 = match &page.after {
            None => i64::MAX,
            Some(k) => k.parse().map_err(|_| StoreError::InvalidCursor)?,
        };
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<AgentVersionRow> = sqlx::query_as(
            "SELECT version, snapshot, actor_kind, actor_id, ts FROM agent_versions \
             WHERE tenant_id = $1 AND agent_id = $2 AND version < $3 ORDER BY version DESC LIMIT $4",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .bind(before)
        .bind(overfetch(page))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |v: &AgentVersion| v.version.to_string(),
        ))
    }

    async fn insert_api_key(
        &self,
        ctx: &TenantCtx,
        k: &agentplane_core::api_key::ApiKey,
        public_id: &str,
        secret_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<()> {
        same_tenant(ctx, k.tenant_id, "api key")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "INSERT INTO api_keys (tenant_id, id, public_id, name, secret_hash, scopes, created_by, created_at, expires_at, \
             revoked_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)",
        )
        .bind(k.tenant_id.to_string())
        .bind(k.id.to_string())
        .bind(public_id)
        .bind(&k.name)
        .bind(secret_hash)
        .bind(to_json(&k.scopes)?)
        .bind(&k.created_by)
        .bind(k.created_at.millis())
        .bind(k.expires_at.map(Timestamp::millis))
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_api_keys(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<agentplane_core::api_key::ApiKey>> {
        let rows: Vec<ApiKeyRow> = self
            .tenant_rows_by_id(
                ctx,
                "SELECT * FROM api_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                page,
            )
            .await?;
        let keys = rows
            .into_iter()
            .map(|r| r.into_key().map(|(k, _)| k))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(
            keys,
            page.limit,
            |k: &agentplane_core::api_key::ApiKey| k.id.to_string(),
        ))
    }

    async fn revoke_api_key(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ApiKeyId,
        at: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<agentplane_core::api_key::ApiKey>> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let n = sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .bind(at.millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row: Option<ApiKeyRow> =
            sqlx::query_as("SELECT * FROM api_keys WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if n == 1 {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        row.map(|r| r.into_key().map(|(k, _)| k)).transpose()
    }

    fn config_generation(&self) -> u64 {
        self.keys.generation()
    }

    fn config_changed_since(&self, tenant: TenantId, read_at: u64) -> bool {
        self.keys.changed_since(tenant, read_at)
    }

    async fn find_api_key(&self, public_id: &str) -> Result<Option<ApiKeyLookup>> {
        if let Some(found) = self.keys.get(public_id) {
            return Ok(Some(found));
        }
        let read_at = self.keys.generation();
        let found = self.find_api_key_uncached(public_id).await?;
        if let Some(f) = &found {
            self.keys.insert(public_id, read_at, f.clone());
        }
        Ok(found)
    }

    async fn touch_api_keys(
        &self,
        _platform: &PlatformCtx,
        uses: &[(TenantId, agentplane_core::ApiKeyId, Timestamp)],
    ) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_platform().await?;
        for (tenant, id, at) in uses {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $3 WHERE tenant_id = $1 AND id = $2 \
                 AND (last_used_at IS NULL OR last_used_at < $3)",
            )
            .bind(tenant.to_string())
            .bind(id.to_string())
            .bind(at.millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage_counter(&self, ctx: &TenantCtx, period: &str) -> Result<Option<UsageCounter>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<UsageCounterRow> =
            sqlx::query_as("SELECT * FROM usage_counters WHERE tenant_id = $1 AND period = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(period)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(UsageCounter::try_from).transpose()
    }

    async fn insert_usage_record(&self, ctx: &TenantCtx, r: &UsageRecord) -> Result<()> {
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        insert_usage_record(&mut tx, ctx, r).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn grant_quota(
        &self,
        ctx: &TenantCtx,
        req: &LeaseRequest,
    ) -> Result<std::result::Result<Amount, Exhausted>> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "INSERT INTO usage_counters (tenant_id, period) VALUES ($1, $2) \
             ON CONFLICT (tenant_id, period) DO NOTHING",
        )
        .bind(&tenant)
        .bind(&req.period)
        .execute(&mut *tx)
        .await?;
        let c: UsageCounterRow = sqlx::query_as(super::SELECT_COUNTER_FOR_UPDATE)
            .bind(&tenant)
            .bind(&req.period)
            .fetch_one(&mut *tx)
            .await?;
        let c = UsageCounter::try_from(c)?;
        // Leases of processes that stopped renewing them go back to the tenant first.
        let expired: Vec<(i64, i64)> = sqlx::query_as(
            "DELETE FROM quota_leases WHERE tenant_id = $1 AND period = $2 AND expires_at <= $3 \
             RETURNING messages, tokens",
        )
        .bind(&tenant)
        .bind(&req.period)
        .bind(req.now.millis())
        .fetch_all(&mut *tx)
        .await?;
        let returned = expired.iter().fold(Amount::ZERO, |a, (m, t)| {
            Amount::new(a.messages + m, a.tokens + t)
        });
        let state = CounterState {
            used: Amount::new(c.messages_used, c.tokens_used),
            reserved: Amount::new(
                c.messages_reserved - returned.messages,
                c.tokens_reserved - returned.tokens,
            ),
            limit: req.limit,
        };
        let granted = agentplane_core::quota::grant(state, req.need);
        let add = *granted.as_ref().unwrap_or(&Amount::ZERO);
        // The condition repeats the rule in SQL: a grant never takes used + reserved past the limit.
        let updated = sqlx::query(
            "UPDATE usage_counters SET messages_reserved = messages_reserved + $3, \
             tokens_reserved = tokens_reserved + $4 \
             WHERE tenant_id = $1 AND period = $2 \
             AND ($3 <= 0 OR messages_used + messages_reserved + $3 <= $5) \
             AND ($4 <= 0 OR tokens_used + tokens_reserved + $4 <= $6)",
        )
        .bind(&tenant)
        .bind(&req.period)
        .bind(add.messages - returned.messages)
        .bind(add.tokens - returned.tokens)
        .bind(req.limit.messages)
        .bind(req.limit.tokens)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(corrupt("usage_counters: a quota grant exceeded the limit"));
        }
        if granted.is_ok() {
            sqlx::query(
                "INSERT INTO quota_leases (tenant_id, period, id, holder, messages, tokens, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant_id, period, id) DO UPDATE SET \
                 messages = quota_leases.messages + excluded.messages, \
                 tokens = quota_leases.tokens + excluded.tokens, expires_at = excluded.expires_at",
            )
            .bind(&tenant)
            .bind(&req.period)
            .bind(&req.lease_id)
            .bind(&req.holder)
            .bind(add.messages)
            .bind(add.tokens)
            .bind(req.expires_at.millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(granted)
    }

    async fn settle_quota(&self, ops: &[QuotaOp]) -> Result<()> {
        let batch = SettleBatch::of(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        // What each lease's runs consumed; a run consumes from the lease it was admitted from.
        let consumed: Vec<_> = batch
            .leases
            .iter()
            .map(|((t, p, l), c)| LeaseUse {
                tenant_id: t,
                period: p,
                id: l,
                messages: c.messages,
                tokens: c.tokens,
            })
            .collect();
        let counters = &batch.counters;
        // Every counter of the batch (released ones too: they are locked with the others).
        let keys: Vec<_> = counters
            .iter()
            .map(|((t, p), g)| CounterUse {
                tenant_id: t,
                period: p,
                used_messages: g.consumed.messages,
                used_tokens: g.consumed.tokens,
                limit_messages: g.limit.messages,
                limit_tokens: g.limit.tokens,
            })
            .collect();
        // A grant created every counter a lease was taken from.
        let n = counters
            .values()
            .filter(|g| g.consumed != Amount::ZERO)
            .count();
        // Most batches release no lease and notify no one: one statement, commit included
        // (it checks the counters itself, before it commits).
        if batch.releases.is_empty() && self.settle_alone(&batch.records, &consumed, &keys).await? {
            return Ok(());
        }
        // A cross-tenant path by nature (one transaction settles every tenant's runs that
        // finished together); each row comes from its own run's tenant context.
        let mut tx = self.write_platform().await?;
        let mut tenants: Vec<&str> = counters.keys().map(|(t, _)| t.as_str()).collect();
        tenants.dedup();
        self.fence_tenants(&mut tx, &tenants).await?;
        let after = super::settle_batch(&mut tx, &batch.records, &consumed, &keys).await?;
        if after.len() != n {
            return Err(corrupt("a settled run's usage counter is missing"));
        }
        for (t, p, m, k) in after {
            if let Some(g) = counters.get(&(t, p.clone())) {
                notify_thresholds(&mut tx, g.ctx, &p, Amount::new(m, k), g.consumed, g.limit)
                    .await?;
            }
        }
        // Releases come after the settlements: what a lease's runs consumed leaves it first.
        for (ctx, period, lease_id) in batch.releases {
            let left: Option<(i64, i64)> = sqlx::query_as(
                "DELETE FROM quota_leases WHERE tenant_id = $1 AND period = $2 AND id = $3 \
                 RETURNING messages, tokens",
            )
            .bind(ctx.tenant_id().to_string())
            .bind(period)
            .bind(lease_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((m, t)) = left {
                counter_add(&mut tx, ctx, period, Amount::ZERO, Amount::new(-m, -t)).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_webhook(
        &self,
        ctx: &TenantCtx,
    ) -> Result<Option<(agentplane_core::webhook::Webhook, Vec<u8>)>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<(String, Vec<u8>, i64, String, i64, i64)> = sqlx::query_as(
            "SELECT url, secret, key_version, fingerprint, created_at, updated_at \
             FROM tenant_webhooks WHERE tenant_id = $1",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.map(
            |(url, secret, key_version, fingerprint, created, updated)| {
                let webhook = agentplane_core::webhook::Webhook {
                    tenant_id: ctx.tenant_id(),
                    url,
                    fingerprint,
                    key_version,
                    created_at: Timestamp::from_millis(created),
                    updated_at: Timestamp::from_millis(updated),
                };
                (webhook, secret)
            },
        ))
    }

    async fn put_webhook(
        &self,
        ctx: &TenantCtx,
        w: &agentplane_core::webhook::Webhook,
        sealed_secret: &[u8],
        audit: NewAuditEvent,
    ) -> Result<()> {
        same_tenant(ctx, w.tenant_id, "webhook")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "INSERT INTO tenant_webhooks (tenant_id, url, secret, key_version, fingerprint, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id) DO UPDATE SET \
             url = excluded.url, secret = excluded.secret, key_version = excluded.key_version, \
             fingerprint = excluded.fingerprint, updated_at = excluded.updated_at",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(&w.url)
        .bind(sealed_secret)
        .bind(w.key_version)
        .bind(&w.fingerprint)
        .bind(w.created_at.millis())
        .bind(w.updated_at.millis())
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reseal_webhook(
        &self,
        ctx: &TenantCtx,
        old_key_version: i64,
        sealed: &[u8],
        key_version: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let n = sqlx::query(
            "UPDATE tenant_webhooks SET secret = $3, key_version = $4 \
             WHERE tenant_id = $1 AND key_version = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(old_key_version)
        .bind(sealed)
        .bind(key_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn delete_webhook(&self, ctx: &TenantCtx, audit: NewAuditEvent) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let gone = sqlx::query("DELETE FROM tenant_webhooks WHERE tenant_id = $1")
            .bind(ctx.tenant_id().to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if gone {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn renew_quota_leases(
        &self,
        _platform: &PlatformCtx,
        holder: &str,
        expires_at: Timestamp,
    ) -> Result<()> {
        let mut tx = self.write_platform().await?;
        sqlx::query(super::RENEW_LEASES)
            .bind(holder)
            .bind(expires_at.millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_usage_records(
        &self,
        ctx: &TenantCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>> {
        let (ts, tenant, id) = usage_cursor(page)?;
        let (from, to) = range_bounds(range);
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<UsageRecordRow> = sqlx::query_as(
            "SELECT * FROM usage_records WHERE tenant_id = $1 AND ts >= $2 AND ts < $3 \
             AND (ts > $4 OR (ts = $4 AND id > $5)) ORDER BY ts, id LIMIT $6",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(from)
        .bind(to)
        .bind(ts)
        .bind(if tenant.is_empty() { String::new() } else { id })
        .bind(overfetch(page))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            crate::usage_key,
        ))
    }

    async fn all_usage_records(
        &self,
        _platform: &PlatformCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>> {
        let (ts, tenant, id) = usage_cursor(page)?;
        let (from, to) = range_bounds(range);
        let mut tx = self.read_platform().await?;
        let rows: Vec<UsageRecordRow> = sqlx::query_as(
            "SELECT * FROM usage_records WHERE ts >= $1 AND ts < $2 \
             AND (ts > $3 OR (ts = $3 AND (tenant_id > $4 OR (tenant_id = $4 AND id > $5)))) \
             ORDER BY ts, tenant_id, id LIMIT $6",
        )
        .bind(from)
        .bind(to)
        .bind(ts)
        .bind(tenant)
        .bind(id)
        .bind(overfetch(page))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            crate::usage_key,
        ))
    }

    async fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent> {
        let mut tx = match ev.chain {
            agentplane_core::audit::Chain::Tenant(t) => self.write_tenant(t).await?,
            agentplane_core::audit::Chain::Platform => self.write_platform().await?,
        };
        let ev = append_audit(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(ev)
    }

    async fn list_audit(
        &self,
        ctx: &TenantCtx,
        filter: &AuditFilter,
        page: &PageRequest,
        read_event: NewAuditEvent,
    ) -> Result<Page<AuditEvent>> {
        let read_event = scoped(ctx, read_event)?;
        let before: i64 = match &page.after {
            None => i64::MAX,
            Some(k) => k.parse().map_err(|_| StoreError::InvalidCursor)?,
        };
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let rows: Vec<AuditRow> = sqlx::query_as(AUDIT_LIST_SQL)
            .bind(ctx.tenant_id().to_string())
            .bind(before)
            .bind(&filter.action)
            .bind(&filter.actor_id)
            .bind(filter.from.map_or(i64::MIN, Timestamp::millis))
            .bind(filter.to.map_or(i64::MAX, Timestamp::millis))
            .bind(overfetch(page))
            .fetch_all(&mut *tx)
            .await?;
        let events: Vec<AuditEvent> = rows
            .into_iter()
            .map(|r| r.into_parts().map(|(e, _)| e))
            .collect::<Result<_>>()?;
        append_audit(&mut tx, read_event).await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            events,
            page.limit,
            |e: &AuditEvent| e.seq.to_string(),
        ))
    }

    async fn audit_chain_heads(
        &self,
        _platform: &PlatformCtx,
    ) -> Result<Vec<(String, Option<(i64, String)>)>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT c.tenant_id, h.seq, h.hash FROM \
             (SELECT tenant_id FROM audit_heads UNION SELECT DISTINCT tenant_id FROM audit_events) c \
             LEFT JOIN audit_heads h ON h.tenant_id = c.tenant_id ORDER BY c.tenant_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(chain, seq, hash)| (chain, seq.zip(hash)))
            .collect())
    }

    async fn audit_chain_page(
        &self,
        _platform: &PlatformCtx,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(AuditEvent, Option<AuditPii>)>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<AuditRow> = sqlx::query_as(AUDIT_CHAIN_SQL)
            .bind(chain)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        // A chain imported from another tenant: its events up to the import were hashed
        // under that tenant's id, and are answered under it.
        let origins: Vec<(String, i64)> = sqlx::query_as(
            "SELECT origin, up_to_seq FROM audit_origins WHERE tenant_id = $1 ORDER BY up_to_seq",
        )
        .bind(chain)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                let (mut ev, pii) = r.into_parts()?;
                if let Some((o, _)) = origins.iter().find(|(_, up_to)| ev.seq <= *up_to) {
                    ev.chain.clone_from(o);
                }
                Ok((ev, pii))
            })
            .collect()
    }

    async fn get_idempotency(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        let mut tx = self.read_platform().await?;
        let row: Option<IdempotencyRow> =
            sqlx::query_as("SELECT * FROM idempotency_keys WHERE scope = $1 AND key = $2")
                .bind(scope)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(IdempotencyRecord::try_from).transpose()
    }
}

/// Newest first; `$2` is the exclusive upper bound on seq (the cursor).
const AUDIT_LIST_SQL: &str = concat!(
    audit_select!(),
    "WHERE e.tenant_id = $1 AND e.seq < $2 AND ($3 IS NULL OR e.action = $3) \
     AND ($4 IS NULL OR e.actor_id = $4 OR e.actor_id LIKE $4 || '/agent:%') AND e.ts >= $5 AND e.ts < $6 \
     ORDER BY e.seq DESC LIMIT $7"
);

const AUDIT_CHAIN_SQL: &str = concat!(
    audit_select!(),
    "WHERE e.tenant_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3"
);
