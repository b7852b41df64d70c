//! `MoveStore` for one backend (included by `sqlite.rs` and `postgres.rs`, like `ops.rs`).
//! Table names come from [`TENANT_TABLES`] and column names from the database's own rows,
//! never from a request.

use super::ops::{append_audit, scoped};
use super::{BackendStore, Db};
use crate::moves::*;
use crate::*;
use agentplane_core::audit::NewAuditEvent;
use futures::TryStreamExt;
use sqlx::{Column, QueryBuilder, Row, TypeInfo, ValueRef};
use tokio::sync::{mpsc, oneshot};

/// Rows per batch sent, and per INSERT statement (well under both backends' parameter limits
/// for the widest table).
const BATCH_ROWS: usize = 200;

fn kind_of(type_name: &str) -> Kind {
    match type_name.to_ascii_uppercase().as_str() {
        "INT8" | "INT4" | "INT2" | "BIGINT" | "INTEGER" | "INT" => Kind::Int,
        "BYTEA" | "BLOB" => Kind::Bytes,
        "BOOL" | "BOOLEAN" => Kind::Bool,
        "REAL" | "FLOAT4" | "FLOAT8" | "DOUBLE" | "DOUBLE PRECISION" => Kind::Real,
        _ => Kind::Text,
    }
}

fn decode(table: &str, row: &<Db as sqlx::Database>::Row) -> Result<Vec<Raw>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let declared = kind_of(col.type_info().name());
        let v = row.try_get_raw(i)?;
        if v.is_null() {
            out.push(Raw::Null(declared));
            continue;
        }
        // The value's own type (SQLite keeps a value's type with the value).
        let ty = v.type_info().name().to_ascii_uppercase();
        let raw = match kind_of(&ty) {
            Kind::Int if ty == "INT4" => Raw::Int(i64::from(row.try_get::<i32, _>(i)?)),
            Kind::Int if ty == "INT2" => Raw::Int(i64::from(row.try_get::<i16, _>(i)?)),
            Kind::Int => Raw::Int(row.try_get::<i64, _>(i)?),
            Kind::Real if ty == "FLOAT4" => Raw::Real(f64::from(row.try_get::<f32, _>(i)?)),
            Kind::Real => Raw::Real(row.try_get::<f64, _>(i)?),
            Kind::Bytes => Raw::Bytes(row.try_get::<Vec<u8>, _>(i)?),
            Kind::Bool => Raw::Bool(row.try_get::<bool, _>(i)?),
            Kind::Text if matches!(ty.as_str(), "TEXT" | "VARCHAR" | "NAME" | "") => {
                Raw::Text(row.try_get::<String, _>(i)?)
            }
            Kind::Text => {
                return Err(StoreError::Corrupt(format!(
                    "{table}.{}: a {ty} cannot be moved",
                    col.name()
                )))
            }
        };
        out.push(raw);
    }
    Ok(out)
}

/// Inserts `rows` of `table`; `suffix` ends the statement (a conflict clause).
async fn insert(
    tx: &mut sqlx::Transaction<'static, Db>,
    table: &str,
    columns: &[String],
    rows: &[Vec<Raw>],
    suffix: &str,
) -> Result<u64> {
    let mut n = 0;
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new(format!("INSERT INTO {table} ({}) ", columns.join(", ")));
        q.push_values(chunk, |mut b, r| {
            for v in r {
                match v {
                    Raw::Null(Kind::Int) => b.push_bind(None::<i64>),
                    Raw::Null(Kind::Real) => b.push_bind(None::<f64>),
                    Raw::Null(Kind::Text) => b.push_bind(None::<String>),
                    Raw::Null(Kind::Bytes) => b.push_bind(None::<Vec<u8>>),
                    Raw::Null(Kind::Bool) => b.push_bind(None::<bool>),
                    Raw::Int(i) => b.push_bind(*i),
                    Raw::Real(f) => b.push_bind(*f),
                    Raw::Text(s) => b.push_bind(s.clone()),
                    Raw::Bytes(bytes) => b.push_bind(bytes.clone()),
                    Raw::Bool(x) => b.push_bind(*x),
                };
            }
        });
        q.push(suffix);
        // Built at run time: not worth a slot in the connection's statement cache.
        n += q
            .build()
            .persistent(false)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    Ok(n)
}

/// Streams one query's rows to `out` in batches; answers how many it sent.
async fn send_rows(
    tx: &mut sqlx::Transaction<'static, Db>,
    table: &'static str,
    sql: &str,
    tenant: &str,
    out: &mpsc::Sender<Option<RawBatch>>,
) -> Result<u64> {
    let gone = || StoreError::Config("the move's target stopped receiving".into());
    let (mut columns, mut batch, mut sent) = (None::<Vec<String>>, Vec::new(), 0u64);
    let mut rows = sqlx::query(sql)
        .persistent(false)
        .bind(tenant)
        .fetch(&mut **tx);
    while let Some(row) = rows.try_next().await? {
        if columns.is_none() {
            columns = Some(row.columns().iter().map(|c| c.name().to_owned()).collect());
        }
        batch.push(decode(table, &row)?);
        if batch.len() == BATCH_ROWS {
            sent += batch.len() as u64;
            let b = RawBatch {
                table,
                columns: columns.clone().unwrap_or_default(),
                rows: std::mem::take(&mut batch),
            };
            out.send(Some(b)).await.map_err(|_| gone())?;
        }
    }
    if !batch.is_empty() {
        sent += batch.len() as u64;
        let b = RawBatch {
            table,
            columns: columns.unwrap_or_default(),
            rows: batch,
        };
        out.send(Some(b)).await.map_err(|_| gone())?;
    }
    Ok(sent)
}

/// Deletes every row of the tenant in `tables` (in reverse order, so rows go before those
/// they refer to).
async fn delete_rows(
    tx: &mut sqlx::Transaction<'static, Db>,
    tenant: &str,
    tables: impl DoubleEndedIterator<Item = &'static str>,
) -> Result<()> {
    for t in tables.rev() {
        sqlx::query(&format!("DELETE FROM {t} WHERE tenant_id = $1"))
            .persistent(false)
            .bind(tenant)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl MoveStore for BackendStore {
    async fn tenant_presence(&self, tenant: TenantId) -> Result<Presence> {
        let mut tx = self.read_platform().await?;
        let presence = self.presence_in(&mut tx, &tenant.to_string()).await?;
        tx.commit().await?;
        Ok(presence)
    }

    async fn move_out(
        &self,
        ctx: &TenantCtx,
        to: &str,
        out: mpsc::Sender<Option<RawBatch>>,
        arrived: oneshot::Receiver<bool>,
    ) -> Result<u64> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.lock_for_move(ctx.tenant_id()).await?;
        let mut sent = send_rows(
            &mut tx,
            "users",
            "SELECT * FROM users WHERE user_id IN \
             (SELECT user_id FROM memberships WHERE tenant_id = $1)",
            &tenant,
            &out,
        )
        .await?;
        let members: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM memberships WHERE tenant_id = $1")
                .bind(&tenant)
                .fetch_all(&mut *tx)
                .await?;
        for &t in TENANT_TABLES {
            let sql = format!("SELECT * FROM {t} WHERE tenant_id = $1");
            sent += send_rows(&mut tx, t, &sql, &tenant, &out).await?;
        }
        out.send(None)
            .await
            .map_err(|_| StoreError::Config("the move's target stopped receiving".into()))?;
        drop(out);
        if !arrived.await.unwrap_or(false) {
            tx.rollback().await?;
            return Err(StoreError::Config(
                "the move's target did not take the tenant".into(),
            ));
        }
        crate::crash_point("move.before_release");
        let kept = |t: &&'static str| !KEPT_BY_THE_SOURCE.contains(t);
        delete_rows(
            &mut tx,
            &tenant,
            TENANT_TABLES
                .iter()
                .copied()
                .filter(kept)
                .collect::<Vec<_>>()
                .into_iter(),
        )
        .await?;
        sqlx::query(super::DELETE_LONE_USERS)
            .bind(serde_json::to_string(&members).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tenant_moves (tenant_id, state, region, at) VALUES ($1, 'moved_away', $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET state = 'moved_away', region = $2, at = $3",
        )
        .bind(&tenant)
        .bind(to)
        .bind(agentplane_core::time::Timestamp::now().millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // Its keys are not here any more (other processes learn it from the trigger's
        // notification on PostgreSQL).
        self.keys.invalidate(ctx.tenant_id());
        // Nothing of it stays in this database's files either (as after an erasure).
        self.after_erasure().await?;
        Ok(sent)
    }

    async fn move_in(
        &self,
        ctx: &TenantCtx,
        mut rows: mpsc::Receiver<Option<RawBatch>>,
    ) -> Result<u64> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.lock_for_move(ctx.tenant_id()).await?;
        match self.presence_in(&mut tx, &tenant).await? {
            Presence::Here => {
                return Err(StoreError::Config(
                    "the target database has the tenant already".into(),
                ))
            }
            // An earlier attempt's copy: this one replaces it.
            Presence::Arriving => {
                let replaced = TENANT_TABLES
                    .iter()
                    .copied()
                    .filter(|t| !KEPT_BY_THE_SOURCE.contains(t));
                delete_rows(&mut tx, &tenant, replaced.collect::<Vec<_>>().into_iter()).await?;
            }
            Presence::Absent | Presence::MovedAway => {}
        }
        // A chain this database kept from an earlier stay continues: only later events come.
        let kept_seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE tenant_id = $1",
        )
        .bind(&tenant)
        .fetch_one(&mut *tx)
        .await?;
        let mut loaded = 0;
        let mut complete = false;
        while let Some(msg) = rows.recv().await {
            let Some(mut b) = msg else {
                complete = true;
                break;
            };
            let tenant_col = b.columns.iter().position(|c| c == "tenant_id");
            if b.table != "users"
                && !b
                    .rows
                    .iter()
                    .all(|r| tenant_col.and_then(|i| r.get(i)) == Some(&Raw::Text(tenant.clone())))
            {
                return Err(StoreError::CrossTenant("a moved row of another tenant"));
            }
            let suffix = match b.table {
                // People of other tenants here; the chain's origins this database kept.
                "users" | "audit_origins" => " ON CONFLICT DO NOTHING".to_owned(),
                "audit_heads" => {
                    let set: Vec<String> = b
                        .columns
                        .iter()
                        .filter(|c| *c != "tenant_id")
                        .map(|c| format!("{c} = excluded.{c}"))
                        .collect();
                    format!(" ON CONFLICT (tenant_id) DO UPDATE SET {}", set.join(", "))
                }
                "audit_events" => {
                    let seq = b.columns.iter().position(|c| c == "seq");
                    b.rows.retain(|r| {
                        matches!(seq.and_then(|i| r.get(i)), Some(Raw::Int(s)) if *s > kept_seq)
                    });
                    String::new()
                }
                _ => String::new(),
            };
            loaded += insert(&mut tx, b.table, &b.columns, &b.rows, &suffix).await?;
        }
        if !complete {
            return Err(StoreError::Config(
                "the move's source stopped sending".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO tenant_moves (tenant_id, state, region, at) VALUES ($1, 'arriving', '', $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET state = 'arriving', region = '', at = $2",
        )
        .bind(&tenant)
        .bind(agentplane_core::time::Timestamp::now().millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(loaded)
    }

    async fn arrived(&self, ctx: &TenantCtx, region: &str, audit: NewAuditEvent) -> Result<()> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let cleared =
            sqlx::query("DELETE FROM tenant_moves WHERE tenant_id = $1 AND state = 'arriving'")
                .bind(&tenant)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if cleared == 0 {
            // Arrived already (a retried job): nothing is left to do.
            tx.rollback().await?;
            return Ok(());
        }
        sqlx::query(
            "UPDATE tenants SET region = $2, updated_at = $3, version = version + 1 WHERE tenant_id = $1",
        )
        .bind(&tenant)
        .bind(region)
        .bind(audit.ts.millis())
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl BackendStore {
    async fn presence_in(
        &self,
        tx: &mut sqlx::Transaction<'static, Db>,
        tenant: &str,
    ) -> Result<Presence> {
        let here: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM tenants WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut **tx)
                .await?;
        let mark: Option<String> =
            sqlx::query_scalar("SELECT state FROM tenant_moves WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(match (here.is_some(), mark.as_deref()) {
            (true, Some("arriving")) => Presence::Arriving,
            (true, _) => Presence::Here,
            (false, Some("moved_away")) => Presence::MovedAway,
            (false, _) => Presence::Absent,
        })
    }
}
