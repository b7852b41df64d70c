//! `ExportStore` for one backend (included by `sqlite.rs` and `postgres.rs`, like `ops.rs`).
//! The SQL is built from the static table descriptions of `exports.rs`: every identifier in
//! it comes from there, never from a request.

use super::ops::{append_audit, complete_job_tx, scoped, to_json};
use super::{BackendStore, Db};
use crate::error::{corrupt, is_unique_violation};
use crate::exports::*;
use crate::*;
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::page::{Page, PageRequest};
use futures::TryStreamExt;
use sqlx::{QueryBuilder, Row};

/// Rows per INSERT statement of an import (well under both backends' parameter limits).
const INSERT_ROWS: usize = 500;

fn select_sql(t: &ExportTable, filter: &ExportFilter) -> Result<String> {
    let cols: Vec<&str> = t.column_names().collect();
    let mut sql = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1",
        cols.join(", "),
        t.table
    );
    match t.range {
        RangeRule::None => {}
        RangeRule::Ts => sql.push_str(" AND ts >= $2 AND ts < $3"),
        RangeRule::EventTs => sql.push_str(
            " AND event_id IN (SELECT id FROM audit_events WHERE tenant_id = $1 AND ts >= $2 AND ts < $3)",
        ),
    }
    if filter.subject.is_some() {
        let n = if t.range == RangeRule::None { 2 } else { 4 };
        match t.subject {
            SubjectRule::None => {
                return Err(StoreError::Config(format!(
                    "{} holds nothing about a data subject",
                    t.name
                )))
            }
            SubjectRule::UserId => sql.push_str(&format!(" AND user_id = ${n}")),
            SubjectRule::ActorOrTarget => {
                sql.push_str(&format!(" AND (actor_id = ${n} OR target_id = ${n})"))
            }
            SubjectRule::PiiOfEvents => sql.push_str(&format!(
                " AND event_id IN (SELECT id FROM audit_events WHERE tenant_id = $1 \
                 AND (actor_id = ${n} OR target_id = ${n}))"
            )),
        }
    }
    sql.push_str(&format!(" ORDER BY {}", t.order_by));
    Ok(sql)
}

fn decode(t: &ExportTable, row: &<Db as sqlx::Database>::Row) -> Result<Vec<Cell>> {
    t.columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| {
            Ok(match ty {
                ColType::Text => row
                    .try_get::<Option<String>, _>(i)?
                    .map_or(Cell::Null, Cell::Text),
                ColType::Int => row
                    .try_get::<Option<i64>, _>(i)?
                    .map_or(Cell::Null, Cell::Int),
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    id: String,
    kind: String,
    verification: Option<String>,
    export_type: String,
    format: String,
    status: String,
    params: String,
    manifest: Option<String>,
    object_key: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
    job_id: String,
    created_by: String,
    created_at: i64,
    completed_at: Option<i64>,
    expires_at: i64,
}

impl TryFrom<ExportRow> for ExportRecord {
    type Error = StoreError;
    fn try_from(r: ExportRow) -> Result<Self> {
        Ok(Self {
            id: r.id,
            kind: r.kind,
            verification: r
                .verification
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(corrupt)?,
            export_type: r.export_type,
            format: r.format,
            status: r.status,
            params: serde_json::from_str(&r.params).map_err(corrupt)?,
            manifest: r
                .manifest
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(corrupt)?,
            object_key: r.object_key,
            size: r.size,
            sha256: r.sha256,
            job_id: r.job_id,
            created_by: r.created_by,
            created_at: Timestamp::from_millis(r.created_at),
            completed_at: r.completed_at.map(Timestamp::from_millis),
            expires_at: Timestamp::from_millis(r.expires_at),
        })
    }
}

const EXPORT_COLUMNS: &str =
    "id, kind, verification, export_type, format, status, params, manifest, object_key, \
     size, sha256, job_id, created_by, created_at, completed_at, expires_at";

#[async_trait]
impl ExportStore for BackendStore {
    async fn dump_tenant(
        &self,
        ctx: &TenantCtx,
        tables: &[&'static ExportTable],
        filter: &ExportFilter,
        sink: &mut dyn ExportSink,
    ) -> Result<()> {
        let mut tx = self.snapshot_tenant(ctx.tenant_id()).await?;
        stream_rows(&mut tx, &ctx.tenant_id().to_string(), tables, filter, sink).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_tenant(
        &self,
        ctx: &TenantCtx,
        source: &mut dyn ImportSource,
        audit: NewAuditEvent,
    ) -> Result<u64> {
        let platform = match audit.chain {
            Chain::Platform => true,
            Chain::Tenant(t) if t == ctx.tenant_id() => false,
            Chain::Tenant(_) => {
                return Err(StoreError::CrossTenant(
                    "import audited on another tenant's chain",
                ))
            }
        };
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let loaded = load_rows(&mut tx, &tenant, source).await?;
        if let Some(origin) = source.exported_tenant().filter(|o| *o != ctx.tenant_id()) {
            // Loaded as another tenant: the chain's events so far were hashed under the
            // exported tenant's id, which verification needs.
            // (A segment the export brought that ends there already names who hashed it.)
            sqlx::query(
                "INSERT INTO audit_origins (tenant_id, origin, up_to_seq) \
                 SELECT $1, $2, MAX(seq) FROM audit_events WHERE tenant_id = $1 \
                 HAVING MAX(seq) IS NOT NULL ON CONFLICT DO NOTHING",
            )
            .bind(&tenant)
            .bind(origin.to_string())
            .execute(&mut *tx)
            .await?;
        }
        if platform {
            sqlx::query(super::ENTER_PLATFORM)
                .fetch_optional(&mut *tx)
                .await?;
        }
        append_audit(&mut tx, audit).await?;
        crate::crash_point("import.before_commit");
        tx.commit().await?;
        Ok(loaded)
    }

    async fn insert_export(
        &self,
        ctx: &TenantCtx,
        rec: &ExportRecord,
        job: &Job,
        audit: NewAuditEvent,
    ) -> Result<()> {
        super::ops::same_tenant(ctx, job.tenant_id, "job")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "INSERT INTO exports (tenant_id, id, kind, export_type, format, status, params, job_id, \
             created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(&rec.id)
        .bind(&rec.kind)
        .bind(&rec.export_type)
        .bind(&rec.format)
        .bind(&rec.status)
        .bind(to_json(&rec.params)?)
        .bind(&rec.job_id)
        .bind(&rec.created_by)
        .bind(rec.created_at.millis())
        .bind(rec.expires_at.millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) && rec.kind == "backup" {
                StoreError::Conflict(Conflict::BackupPending)
            } else {
                e.into()
            }
        })?;
        super::ops::insert_job(&mut tx, job).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_export(&self, ctx: &TenantCtx, id: &str) -> Result<Option<ExportRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<ExportRow> = sqlx::query_as(&format!(
            "SELECT {EXPORT_COLUMNS} FROM exports WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(ctx.tenant_id().to_string())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(ExportRecord::try_from).transpose()
    }

    async fn list_exports(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<ExportRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<ExportRow> = sqlx::query_as(&format!(
            "SELECT {EXPORT_COLUMNS} FROM exports WHERE tenant_id = $1 AND kind = $4 AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(ctx.tenant_id().to_string())
        .bind(super::ops::after_key(page))
        .bind(super::ops::overfetch(page))
        .bind(kind)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let recs = rows
            .into_iter()
            .map(ExportRecord::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(recs, page.limit, |r| r.id.clone()))
    }

    async fn finish_export(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        id: &str,
        done: &FinishedExport,
        audit: NewAuditEvent,
    ) -> Result<()> {
        super::ops::same_tenant(ctx, job.tenant_id, "job")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "UPDATE exports SET status = 'ready', manifest = $3, object_key = $4, size = $5, \
             sha256 = $6, completed_at = $7 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id)
        .bind(to_json(&done.manifest)?)
        .bind(&done.object_key)
        .bind(done.size)
        .bind(&done.sha256)
        .bind(Timestamp::now().millis())
        .execute(&mut *tx)
        .await?;
        complete_job_tx(&mut tx, job, Timestamp::now()).await?;
        append_audit(&mut tx, audit).await?;
        crate::crash_point("export.before_commit");
        tx.commit().await?;
        Ok(())
    }

    async fn fail_export(&self, ctx: &TenantCtx, id: &str, error: &str) -> Result<()> {
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "UPDATE exports SET status = 'failed', manifest = $3 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'pending'",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id)
        .bind(to_json(&serde_json::json!({ "error": error }))?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn exports_to_remove(
        &self,
        ctx: &TenantCtx,
        expired_before: Option<Timestamp>,
    ) -> Result<Vec<ExportRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<ExportRow> = sqlx::query_as(&format!(
            "SELECT {EXPORT_COLUMNS} FROM exports WHERE tenant_id = $1 AND kind = 'export' \
             AND object_key IS NOT NULL AND expires_at < $2 ORDER BY id"
        ))
        .bind(ctx.tenant_id().to_string())
        .bind(expired_before.map_or(i64::MAX, |t| t.millis()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter().map(ExportRecord::try_from).collect()
    }

    async fn latest_backup(&self, ctx: &TenantCtx) -> Result<Option<ExportRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<ExportRow> = sqlx::query_as(&format!(
            "SELECT {EXPORT_COLUMNS} FROM exports WHERE tenant_id = $1 AND kind = 'backup' \
             AND status IN ('pending', 'ready') ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(ctx.tenant_id().to_string())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(ExportRecord::try_from).transpose()
    }

    async fn backups_beyond(&self, ctx: &TenantCtx, keep: i64) -> Result<Vec<ExportRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<ExportRow> = sqlx::query_as(&format!(
            "SELECT {EXPORT_COLUMNS} FROM exports WHERE tenant_id = $1 AND kind = 'backup' \
             AND status = 'ready' ORDER BY created_at DESC, id DESC"
        ))
        .bind(ctx.tenant_id().to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let keep = usize::try_from(keep).unwrap_or(0);
        rows.into_iter()
            .skip(keep)
            .rev()
            .map(ExportRecord::try_from)
            .collect()
    }

    async fn trial_restore(
        &self,
        ctx: &TenantCtx,
        source: &mut dyn ImportSource,
        tables: &[&'static ExportTable],
        sink: &mut dyn ExportSink,
    ) -> Result<u64> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let loaded = load_rows(&mut tx, &tenant, source).await?;
        stream_rows(&mut tx, &tenant, tables, &ExportFilter::default(), sink).await?;
        tx.rollback().await?;
        Ok(loaded)
    }

    async fn set_verification(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        id: &str,
        report: &serde_json::Value,
        audit: NewAuditEvent,
    ) -> Result<()> {
        super::ops::same_tenant(ctx, job.tenant_id, "job")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query("UPDATE exports SET verification = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().to_string())
            .bind(id)
            .bind(to_json(report)?)
            .execute(&mut *tx)
            .await?;
        complete_job_tx(&mut tx, job, Timestamp::now()).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn erased_subjects(&self, ctx: &TenantCtx) -> Result<Vec<String>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT subject FROM erasure_receipts WHERE tenant_id = $1")
                .bind(ctx.tenant_id().to_string())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn mark_export_deleted(&self, ctx: &TenantCtx, id: &str) -> Result<()> {
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(
            "UPDATE exports SET status = 'deleted', object_key = NULL \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Streams the rows `filter` selects of every table in `tables` to `sink`, inside `tx`.
async fn stream_rows(
    tx: &mut sqlx::Transaction<'static, Db>,
    tenant: &str,
    tables: &[&'static ExportTable],
    filter: &ExportFilter,
    sink: &mut dyn ExportSink,
) -> Result<()> {
    let from = filter.from.map_or(i64::MIN, |t| t.millis());
    let to = filter.to.map_or(i64::MAX, |t| t.millis());
    for &t in tables {
        let sql = select_sql(t, filter)?;
        // Built at run time: not worth a slot in the connection's statement cache.
        let mut q = sqlx::query(&sql).persistent(false).bind(tenant);
        if t.range != RangeRule::None {
            q = q.bind(from).bind(to);
        }
        if let Some(s) = &filter.subject {
            q = q.bind(s);
        }
        let mut rows = q.fetch(&mut **tx);
        while let Some(row) = rows.try_next().await? {
            sink.row(t, decode(t, &row)?)?;
        }
    }
    Ok(())
}

/// Inserts every batch of `source` as `tenant` (the first batch must be the tenant's row).
async fn load_rows(
    tx: &mut sqlx::Transaction<'static, Db>,
    tenant: &str,
    source: &mut dyn ImportSource,
) -> Result<u64> {
    let mut loaded = 0u64;
    let mut first = true;
    while let Some((t, rows)) = source.next_batch()? {
        if first && t.name != "tenant" {
            return Err(StoreError::Config(
                "an import starts with its tenant".into(),
            ));
        }
        first = false;
        if !t.importable {
            return Err(StoreError::Config(format!("{} is not importable", t.name)));
        }
        for chunk in rows.chunks(INSERT_ROWS) {
            if t.name == "members" {
                // The person behind each membership (global: one row per e-mail).
                let mut people: QueryBuilder<Db> =
                    QueryBuilder::new("INSERT INTO users (user_id, email, created_at) ");
                people.push_values(chunk, |mut b, r| {
                    b.push_bind(cell_text(&r[0]))
                        .push_bind(cell_text(&r[1]))
                        .push_bind(cell_int(&r[7]));
                });
                people.push(" ON CONFLICT (user_id) DO NOTHING");
                people.build().persistent(false).execute(&mut **tx).await?;
            }
            // A provider arrives without its secret (empty: to be set again).
            let providers = t.name == "providers";
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "INSERT INTO {} (tenant_id, {}{}) ",
                t.table,
                t.column_names().collect::<Vec<_>>().join(", "),
                if providers {
                    ", secret, key_version, fingerprint"
                } else {
                    ""
                }
            ));
            q.push_values(chunk, |mut b, r| {
                b.push_bind(tenant.to_owned());
                for (c, (_, ty)) in r.iter().zip(t.columns) {
                    match c {
                        Cell::Null if *ty == ColType::Int => b.push_bind(None::<i64>),
                        Cell::Null => b.push_bind(None::<String>),
                        Cell::Int(i) => b.push_bind(*i),
                        Cell::Text(s) => b.push_bind(s.clone()),
                    };
                }
                if providers {
                    b.push_bind(Vec::<u8>::new()).push_bind(0i64).push_bind("");
                }
            });
            // Built at run time (its text varies with the batch): not worth a slot in the
            // connection's statement cache.
            loaded += q
                .build()
                .persistent(false)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
    }
    if first {
        return Err(StoreError::Config("the import holds no tenant".into()));
    }
    Ok(loaded)
}

fn cell_text(c: &Cell) -> Option<String> {
    match c {
        Cell::Text(s) => Some(s.clone()),
        _ => None,
    }
}

fn cell_int(c: &Cell) -> Option<i64> {
    match c {
        Cell::Int(i) => Some(*i),
        _ => None,
    }
}
