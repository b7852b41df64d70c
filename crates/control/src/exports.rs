//! Exports of a tenant's data (`admin.export_tenant_data`) and imports of them into another
//! deployment or region. The format is documented in docs/exports.md.
//!
//! An export is an asynchronous `tenant.export` job. It streams the selected rows from one
//! consistent snapshot into files on local disk (hashing and counting as it writes),
//! packages them with a manifest, and uploads the package to the object store under the
//! tenant's prefix, sealed with the tenant's data key (streaming XChaCha20-Poly1305 bound to
//! tenant, `export` and the export id). Memory stays flat whatever the tenant's size.
//! A download goes through a short-lived signed link that opens the sealed object as it
//! streams it.
//!
//! An import verifies the whole manifest (every file's SHA-256, every record count, the
//! column layout) before it writes anything, then loads every table in one transaction.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::{Job, JobKind};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, TenantId, UserId};
use agentplane_crypto::{Aad, StreamOpener, StreamSealer};
use agentplane_store::exports::{
    Cell, ColType, ExportFilter, ExportRecord, ExportSink, ExportTable, FinishedExport,
    ImportSource, EXPORT_TABLES, NOT_EXPORTED,
};
use agentplane_store::StoreError;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The format name and version every manifest carries.
pub const EXPORT_FORMAT: &str = "agentplane.export";
pub const EXPORT_FORMAT_VERSION: u32 = 1;
/// How long an artifact is kept (and downloadable).
const EXPORT_TTL_MS: i64 = 7 * 86_400_000;
/// Backups go by count (`backup.retention_count`), not by age.
const BACKUP_TTL_MS: i64 = 100 * 365 * 86_400_000;
/// How long a download link works.
const LINK_TTL_SECS: i64 = 300;
const LINK_AUDIENCE: &str = "agentplane-download";
const SEALED_KIND: &str = "export";
/// Pieces read from disk while sealing and uploading.
const PIECE: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportType {
    /// Everything the platform holds about the tenant (what an import restores).
    Full,
    /// Members and custom roles.
    UsersOnly,
    /// The audit chain: events, their personal data, the chain head.
    AuditLogs,
    /// One data subject: their membership, sessions and audit events (GDPR art. 15 and 20).
    GdprRequest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// A ZIP archive: `manifest.json` and a JSON Lines file per table (importable).
    #[default]
    Zip,
    /// One JSON Lines file, a record per line: `{"table": ..., "row": {...}}`.
    Json,
    /// A ZIP archive: `manifest.json` and a CSV file per table.
    Csv,
}

impl ExportType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::UsersOnly => "users_only",
            Self::AuditLogs => "audit_logs",
            Self::GdprRequest => "gdpr_request",
        }
    }

    pub(crate) fn tables(self) -> Vec<&'static ExportTable> {
        let names: &[&str] = match self {
            Self::Full => {
                return EXPORT_TABLES.iter().filter(|t| t.importable).collect();
            }
            Self::UsersOnly => &["roles", "members"],
            Self::AuditLogs => &["audit_head", "audit_events", "audit_pii", "audit_origins"],
            Self::GdprRequest => &["members", "sessions", "audit_events", "audit_pii"],
        };
        names
            .iter()
            .filter_map(|n| ExportTable::by_name(n))
            .collect()
    }
}

impl ExportFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Zip => "zip",
            Self::Json => "json",
            Self::Csv => "csv",
        }
    }
    fn extension(self) -> &'static str {
        match self {
            Self::Zip | Self::Csv => "zip",
            Self::Json => "jsonl",
        }
    }
}

/// `admin.export_tenant_data`'s body.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestExport {
    pub export_type: ExportType,
    #[serde(default)]
    pub format: ExportFormat,
    /// Only usage records and audit events of these days.
    #[serde(default)]
    pub date_range: Option<DateRange>,
    /// The data subject of a `gdpr_request` (required there, refused elsewhere).
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Days, inclusive: `YYYY-MM-DD` (or RFC 3339 instants), either bound optional.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DateRange {
    #[schema(format = Date)]
    pub start: Option<String>,
    #[schema(format = Date)]
    pub end: Option<String>,
}

impl DateRange {
    /// `[from, to)` in instants: an end day includes the whole day.
    fn bounds(&self) -> Result<(Option<Timestamp>, Option<Timestamp>)> {
        let parse = |field: &'static str, s: &Option<String>| -> Result<Option<Timestamp>> {
            s.as_deref()
                .map(|v| {
                    Timestamp::parse_date_or_rfc3339(v).ok_or_else(|| {
                        DomainError::invalid(field, "is not a date (YYYY-MM-DD)").into()
                    })
                })
                .transpose()
        };
        let from = parse("date_range.start", &self.start)?;
        let mut to = parse("date_range.end", &self.end)?;
        if self.end.as_deref().is_some_and(|e| e.len() == 10) {
            to = to.map(|t| t.plus_millis(86_400_000));
        }
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                return Err(DomainError::invalid("date_range", "start is after end").into());
            }
        }
        Ok((from, to))
    }
}

/// A short-lived link to download an export.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DownloadLink {
    pub url: String,
    pub expires_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct LinkClaims {
    iss: String,
    aud: String,
    tid: String,
    eid: String,
    exp: i64,
    iat: i64,
}

/// What an import did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub tenant_id: TenantId,
    /// Rows loaded, all tables together.
    pub rows: u64,
    /// Records per table, as verified against the manifest.
    pub tables: BTreeMap<String, u64>,
}

/// Where an import goes: the exported tenant itself, or a new tenant (another id and slug).
#[derive(Clone, Debug, Default)]
pub struct ImportTarget {
    pub new_slug: Option<String>,
    pub new_name: Option<String>,
    /// The new tenant's id (a restore job fixes it, so a retry finds its own work).
    pub new_tenant_id: Option<TenantId>,
}

impl ControlPlane {
    /// `admin.export_tenant_data`: records the export and enqueues its job.
    pub async fn request_export(
        &self,
        ctx: &TenantCtx,
        req: RequestExport,
    ) -> Result<ExportRecord> {
        let (from, to) = match &req.date_range {
            Some(r) => r.bounds()?,
            None => (None, None),
        };
        let subject = match (req.export_type, &req.user_id) {
            (ExportType::GdprRequest, Some(u)) => {
                let id: UserId = u.parse().map_err(|_| ControlError::NotFound("user"))?;
                self.store
                    .get_member(ctx, id)
                    .await?
                    .ok_or(ControlError::NotFound("user"))?;
                Some(id.to_string())
            }
            (ExportType::GdprRequest, None) => {
                return Err(DomainError::invalid(
                    "user_id",
                    "a gdpr_request names its data subject",
                )
                .into())
            }
            (_, Some(_)) => {
                return Err(
                    DomainError::invalid("user_id", "only a gdpr_request names a user").into(),
                )
            }
            (_, None) => None,
        };
        let params = json!({
            "from": from, "to": to, "user_id": subject,
        });
        self.enqueue_export(ctx, false, req.export_type, req.format, params)
            .await
    }

    /// Records an export (or a backup: a full export kept by count) and enqueues its job.
    pub(crate) async fn enqueue_export(
        &self,
        ctx: &TenantCtx,
        backup: bool,
        export_type: ExportType,
        format: ExportFormat,
        params: Value,
    ) -> Result<ExportRecord> {
        let now = Timestamp::now();
        let id = uuid::Uuid::now_v7().to_string();
        let (kind, job_kind, action, ttl) = if backup {
            ("backup", JobKind::Backup, "backup.requested", BACKUP_TTL_MS)
        } else {
            ("export", JobKind::Export, "export.requested", EXPORT_TTL_MS)
        };
        let job = Job::new(ctx.tenant_id(), job_kind, json!({ "export_id": id }), now);
        let rec = ExportRecord {
            id: id.clone(),
            kind: kind.into(),
            verification: None,
            export_type: export_type.as_str().into(),
            format: format.as_str().into(),
            status: "pending".into(),
            params: params.clone(),
            manifest: None,
            object_key: None,
            size: None,
            sha256: None,
            job_id: job.id.to_string(),
            created_by: ctx.actor().id().to_owned(),
            created_at: now,
            completed_at: None,
            expires_at: now.plus_millis(ttl),
        };
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), action, ctx.actor(), now)
            .target(kind, &id)
            .data(json!({
                "export_type": rec.export_type, "format": rec.format, "params": params,
                "job_id": rec.job_id,
            }));
        self.store.insert_export(ctx, &rec, &job, audit).await?;
        Ok(rec)
    }

    pub async fn list_exports(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<ExportRecord>> {
        Ok(self.store.list_exports(ctx, "export", page).await?)
    }

    pub async fn export(&self, ctx: &TenantCtx, id: &str) -> Result<ExportRecord> {
        self.artifact(ctx, id, "export").await
    }

    /// An export or backup record of the tenant, of `kind` (another kind is not found).
    pub(crate) async fn artifact(
        &self,
        ctx: &TenantCtx,
        id: &str,
        kind: &'static str,
    ) -> Result<ExportRecord> {
        let id = parse_export_id(id)?;
        self.store
            .get_export(ctx, &id)
            .await?
            .filter(|r| r.kind == kind)
            .ok_or(ControlError::NotFound(kind))
    }

    /// A signed link to download a ready export, valid for five minutes (audited).
    pub async fn export_link(&self, ctx: &TenantCtx, id: &str) -> Result<DownloadLink> {
        let rec = self.export(ctx, id).await?;
        let now = Timestamp::now();
        if rec.status != "ready" || rec.expires_at <= now {
            return Err(ControlError::Conflict(crate::error::ConflictKind::NotReady));
        }
        let exp = now.millis() / 1000 + LINK_TTL_SECS;
        let issuer = self.identity.cfg.issuer.clone();
        let claims = LinkClaims {
            iss: issuer.clone(),
            aud: LINK_AUDIENCE.into(),
            tid: ctx.tenant_id().to_string(),
            eid: rec.id.clone(),
            exp,
            iat: now.millis() / 1000,
        };
        let token = self.sign_typed("agentplane-link+jwt", &claims).await?;
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "export.link_issued",
            ctx.actor(),
            now,
        )
        .target("export", &rec.id);
        self.store.append_audit(audit).await?;
        Ok(DownloadLink {
            url: format!("{}/v1/downloads/{token}", issuer.trim_end_matches('/')),
            expires_at: Timestamp::from_millis(exp * 1000),
        })
    }

    /// Opens a download link: the export's record and its decrypted bytes as a stream
    /// (an artifact altered in the store ends the stream with an error).
    pub async fn open_download(
        &self,
        token: &str,
    ) -> Result<(
        ExportRecord,
        impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    )> {
        let claims: LinkClaims = self
            .verify_typed(token, LINK_AUDIENCE, &["exp", "iss", "aud"])
            .await?;
        let tenant: TenantId = claims
            .tid
            .parse()
            .map_err(|_| ControlError::NotFound("export"))?;
        let ctx = TenantCtx::for_signed_link(tenant, &format!("export/{}", claims.eid));
        let rec = self.export(&ctx, &claims.eid).await?;
        let stream = self.open_artifact(&ctx, &rec).await?;
        Ok((rec, stream))
    }

    /// A ready artifact's decrypted bytes, as a stream that ends in an error if the sealed
    /// object was altered or cut short.
    pub(crate) async fn open_artifact(
        &self,
        ctx: &TenantCtx,
        rec: &ExportRecord,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let tenant = ctx.tenant_id();
        let key = match (&rec.object_key, rec.status.as_str()) {
            (Some(k), "ready") if rec.expires_at > Timestamp::now() => k.clone(),
            _ => return Err(ControlError::Conflict(crate::error::ConflictKind::NotReady)),
        };
        let mut sealed = self
            .objects_of(ctx)
            .await?
            .get_stream(ctx, &key)
            .await?
            .ok_or(ControlError::NotFound("export"))?;
        // The key version is in the stream's header: read until it is there.
        let mut head = Vec::new();
        while head.len() < agentplane_crypto::STREAM_HEADER_LEN {
            match sealed.next().await {
                Some(piece) => head.extend_from_slice(&piece?),
                None => break,
            }
        }
        let version = StreamOpener::key_version(&head)?;
        let data_key = self.data_key_version(ctx, i64::from(version)).await?;
        let aad = Aad::new(tenant, SEALED_KIND, &rec.id);
        let stream = futures::stream::unfold(
            (
                Some(sealed),
                Some(StreamOpener::new(&data_key, aad)),
                Some(head),
            ),
            |(mut src, mut opener, mut first)| async move {
                let o = opener.as_mut()?;
                if let Some(h) = first.take() {
                    let out = o.push(&h).map_err(std::io::Error::other);
                    return Some((out.map(Bytes::from), (src, opener, None)));
                }
                match src.as_mut()?.next().await {
                    Some(Ok(piece)) => {
                        let out = o.push(&piece).map_err(std::io::Error::other);
                        Some((out.map(Bytes::from), (src, opener, None)))
                    }
                    Some(Err(e)) => Some((Err(std::io::Error::other(e)), (None, None, None))),
                    None => {
                        let last = opener.take()?.finish().map_err(std::io::Error::other);
                        Some((last.map(Bytes::from), (None, None, None)))
                    }
                }
            },
        );
        Ok(stream)
    }

    /// Writes a ready artifact, decrypted, to `path`.
    pub(crate) async fn artifact_to_file(
        &self,
        ctx: &TenantCtx,
        rec: &ExportRecord,
        path: &Path,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let stream = self.open_artifact(ctx, rec).await?;
        let mut stream = std::pin::pin!(stream);
        let mut f = tokio::fs::File::create(path).await.map_err(io_err)?;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| {
                ControlError::Crypto(agentplane_crypto::CryptoError::Io("artifact".into(), e))
            })?;
            f.write_all(&piece).await.map_err(io_err)?;
        }
        f.flush().await.map_err(io_err)
    }

    /// The `tenant.export` job.
    pub(crate) async fn run_export(
        &self,
        job: &Job,
    ) -> std::result::Result<(), crate::provisioning::JobError> {
        use crate::provisioning::JobError;
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let id = job.payload["export_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(rec) = self.store.get_export(&ctx, &id).await? else {
            return Err(JobError::Failed(format!("export {id} not found")));
        };
        if rec.status != "pending" {
            self.store.complete_job(job, Timestamp::now()).await?;
            return Ok(());
        }
        match self.build_export(&ctx, job, &rec).await {
            Ok(()) => Ok(()),
            Err(ControlError::Store(s)) => Err(JobError::Store(s)),
            Err(ControlError::Internal(m)) if m == CANCELLED => Err(JobError::Cancelled),
            Err(e) => {
                if job.attempts >= job.max_attempts {
                    self.store.fail_export(&ctx, &id, &e.to_string()).await?;
                }
                Err(JobError::Failed(e.to_string()))
            }
        }
    }

    async fn build_export(&self, ctx: &TenantCtx, job: &Job, rec: &ExportRecord) -> Result<()> {
        let export_type: ExportType = serde_json::from_value(json!(rec.export_type))
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let format: ExportFormat = serde_json::from_value(json!(rec.format))
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let filter = ExportFilter {
            from: rec.params["from"]
                .as_str()
                .and_then(Timestamp::parse_rfc3339),
            to: rec.params["to"].as_str().and_then(Timestamp::parse_rfc3339),
            subject: rec.params["user_id"].as_str().map(str::to_owned),
        };
        let tables = export_type.tables();
        let dir = tempfile::Builder::new()
            .prefix("agentplane-export-")
            .tempdir()
            .map_err(io_err)?;
        self.beat_or_cancel(job, 1, "reading the tenant's data")
            .await?;

        // 1. Rows to files, from one snapshot; beat while it runs.
        let rows = Arc::new(AtomicU64::new(0));
        let mut sink = FileSink::new(dir.path(), format, rows.clone());
        {
            let dump = self.store.dump_tenant(ctx, &tables, &filter, &mut sink);
            tokio::pin!(dump);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(
                (self.cfg.lease_ms / 3).max(50) as u64,
            ));
            tick.tick().await;
            loop {
                tokio::select! {
                    r = &mut dump => { r?; break; }
                    _ = tick.tick() => {
                        let n = rows.load(Ordering::Relaxed);
                        self.beat_or_cancel(job, 10, &format!("{n} records read")).await?;
                    }
                }
            }
        }
        let files = sink.finish()?;
        let manifest = manifest(ctx.tenant_id(), rec, export_type, format, &tables, &files);
        self.beat_or_cancel(job, 60, "packaging").await?;

        // 2. The package.
        let package = dir.path().join(format!("export.{}", format.extension()));
        {
            let (dir_path, package, manifest) =
                (dir.path().to_owned(), package.clone(), manifest.clone());
            let files = files.clone();
            tokio::task::spawn_blocking(move || {
                write_package(&dir_path, &package, format, &manifest, &files)
            })
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))??;
        }
        self.beat_or_cancel(job, 80, "sealing and uploading")
            .await?;

        // 3. Sealed into the object store. A retry writes under its own attempt's key, so two
        //    workers never write one object.
        let (version, key) = self.active_data_key(ctx).await?;
        let sealer = StreamSealer::new(
            &key,
            u32::try_from(version).map_err(|_| ControlError::Internal("key version".into()))?,
            &Aad::new(ctx.tenant_id(), SEALED_KIND, &rec.id),
        );
        let object_key = format!(
            "exports/{}/{}.{}.sealed",
            rec.id,
            job.attempts,
            format.extension()
        );
        let mut file = File::open(&package).map_err(io_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0i64;
        let mut header = Some(sealer.header().to_vec());
        let mut sealer = Some(sealer);
        let mut buf = vec![0u8; PIECE];
        self.objects_of(ctx)
            .await?
            .put_stream(ctx, &object_key, || {
                if let Some(h) = header.take() {
                    return Ok(Some(h));
                }
                let Some(s) = sealer.as_mut() else {
                    return Ok(None);
                };
                let n = file
                    .read(&mut buf)
                    .map_err(|e| StoreError::Config(e.to_string()))?;
                if n == 0 {
                    let last = sealer.take().map(StreamSealer::finish).transpose();
                    return last.map_err(|e| StoreError::Config(e.to_string()));
                }
                hasher.update(&buf[..n]);
                size += n as i64;
                s.push(&buf[..n])
                    .map(Some)
                    .map_err(|e| StoreError::Config(e.to_string()))
            })
            .await?;
        let done = FinishedExport {
            manifest,
            object_key,
            size,
            sha256: hex::encode(hasher.finalize()),
        };
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            if rec.kind == "backup" {
                "backup.completed"
            } else {
                "export.completed"
            },
            ctx.actor(),
            Timestamp::now(),
        )
        .target(rec.kind.as_str(), &rec.id)
        .data(json!({"size": done.size, "sha256": done.sha256, "records": files.iter().map(|f| f.records).sum::<u64>()}));
        self.store
            .finish_export(ctx, job, &rec.id, &done, audit)
            .await?;
        if rec.kind == "backup" {
            self.prune_backups(ctx).await?;
        }
        // What earlier attempts (killed after their upload) left behind.
        for attempt in 1..job.attempts {
            let stale = format!("exports/{}/{attempt}.{}.sealed", rec.id, format.extension());
            if let Err(e) = self.objects_of(ctx).await?.delete(ctx, &stale).await {
                tracing::warn!(error = %e, "an earlier attempt's artifact stays");
            }
        }
        Ok(())
    }

    async fn beat_or_cancel(&self, job: &Job, percent: i64, message: &str) -> Result<()> {
        match self.beat(job, percent, message).await {
            Ok(()) => Ok(()),
            Err(crate::provisioning::JobError::Cancelled) => {
                Err(ControlError::Internal(CANCELLED.into()))
            }
            Err(crate::provisioning::JobError::Store(s)) => Err(ControlError::Store(s)),
            Err(e) => Err(ControlError::Internal(e.to_string())),
        }
    }

    /// Deletes the artifacts of the tenant's exports: those expired before `before`, or all
    /// of them (`None`, after an erasure: any may hold the erased person). Answers how many.
    pub(crate) async fn remove_export_artifacts(
        &self,
        ctx: &TenantCtx,
        before: Option<Timestamp>,
    ) -> Result<u64> {
        let recs = self.store.exports_to_remove(ctx, before).await?;
        self.delete_artifacts(ctx, &recs).await
    }

    /// Deletes the artifacts of `recs` (exports or backups) and records that they are gone.
    pub(crate) async fn delete_artifacts(
        &self,
        ctx: &TenantCtx,
        recs: &[ExportRecord],
    ) -> Result<u64> {
        let objects = self.objects_of(ctx).await?;
        for r in recs {
            if let Some(k) = &r.object_key {
                objects.delete(ctx, k).await?;
            }
            self.store.mark_export_deleted(ctx, &r.id).await?;
        }
        Ok(recs.len() as u64)
    }

    /// `agentplane tenant import` (and `admin.import_tenant`): verifies the export at `path`
    /// against its manifest, then loads it, in one transaction, as the exported tenant or, with
    /// `target.new_slug`, as a new tenant.
    pub async fn import_tenant(
        &self,
        platform: &PlatformCtx,
        path: &Path,
        target: ImportTarget,
    ) -> Result<ImportReport> {
        let dir = tempfile::Builder::new()
            .prefix("agentplane-import-")
            .tempdir()
            .map_err(io_err)?;
        let (src, out) = (path.to_owned(), dir.path().to_owned());
        let verified = tokio::task::spawn_blocking(move || verify_and_extract(&src, &out))
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))??;
        let exported: TenantId = verified.manifest["tenant_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid_export("the manifest names no tenant"))?;
        let tenant_id = match (&target.new_slug, target.new_tenant_id) {
            (Some(_), Some(id)) => id,
            (Some(_), None) => TenantId::new(),
            (None, _) => exported,
        };
        if self.store.get_tenant(tenant_id).await?.is_some() {
            return Err(ControlError::Conflict(
                crate::error::ConflictKind::TenantExists,
            ));
        }
        let mut source = FileSource::open(&verified)?;
        if let Some(slug) = &target.new_slug {
            let slug = agentplane_core::tenant::Slug::parse(slug)?;
            source
                .overrides
                .push(("slug", Cell::Text(slug.as_str().to_owned())));
        }
        if let Some(name) = &target.new_name {
            source.overrides.push(("name", Cell::Text(name.clone())));
        }
        let slug = match source.overrides.iter().find(|(c, _)| *c == "slug") {
            Some((_, Cell::Text(s))) => s.clone(),
            _ => verified.tenant_slug.clone(),
        };
        let slug_parsed = agentplane_core::tenant::Slug::parse(&slug)?;
        if self.store.slug_taken(&slug_parsed).await? {
            return Err(ControlError::Conflict(
                crate::error::ConflictKind::SlugTaken,
            ));
        }
        self.get_plan(&verified.tenant_plan).await.map_err(|_| {
            invalid_export(&format!(
                "the tenant's plan {:?} does not exist here; create it first",
                verified.tenant_plan
            ))
        })?;
        let ctx = TenantCtx::for_import(tenant_id);
        let audit = NewAuditEvent::new(
            Chain::Platform,
            "tenant.imported",
            platform.actor(),
            Timestamp::now(),
        )
        .target("tenant", tenant_id)
        .data(json!({
            "exported_tenant_id": exported,
            "exported_at": verified.manifest["created_at"],
            "records": verified.counts,
        }));
        let rows = self.store.load_tenant(&ctx, &mut source, audit).await?;
        Ok(ImportReport {
            tenant_id,
            rows,
            tables: verified.counts.clone(),
        })
    }
}

const CANCELLED: &str = "export cancelled";

fn parse_export_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ControlError::NotFound("export"))
}

pub(crate) fn io_err(e: std::io::Error) -> ControlError {
    ControlError::Internal(format!("export working files: {e}"))
}

fn invalid_export(reason: &str) -> ControlError {
    DomainError::invalid("export", reason.to_owned()).into()
}

/// One written data file: its name in the package, hash and record count.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FileEntry {
    pub(crate) name: String,
    pub(crate) table: &'static str,
    pub(crate) sha256: String,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
}

/// Writes rows to a file per table (or one file, for `json`), hashing as it goes.
pub(crate) struct FileSink {
    dir: PathBuf,
    format: ExportFormat,
    rows: Arc<AtomicU64>,
    current: Option<OpenFile>,
    done: Vec<FileEntry>,
    /// Cells of the tenant row written as given here (a trial restore's scratch tenant is
    /// compared under the original's slug and name).
    pub(crate) tenant_overrides: Vec<(&'static str, Cell)>,
}

struct OpenFile {
    table: &'static ExportTable,
    name: String,
    out: Out,
    records: u64,
}

enum Out {
    Json(HashingWriter<BufWriter<File>>),
    Csv(Box<csv::Writer<HashingWriter<BufWriter<File>>>>),
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl FileSink {
    pub(crate) fn new(dir: &Path, format: ExportFormat, rows: Arc<AtomicU64>) -> Self {
        Self {
            dir: dir.to_owned(),
            format,
            rows,
            current: None,
            done: Vec::new(),
            tenant_overrides: Vec::new(),
        }
    }

    fn file_name(&self, table: &ExportTable) -> String {
        match self.format {
            ExportFormat::Zip => format!("{}.jsonl", table.name),
            ExportFormat::Csv => format!("{}.csv", table.name),
            ExportFormat::Json => "export.jsonl".into(),
        }
    }

    fn open(&mut self, table: &'static ExportTable) -> std::io::Result<()> {
        let name = self.file_name(table);
        let path = self.dir.join(format!("data-{}", self.done.len()));
        let file = HashingWriter {
            inner: BufWriter::with_capacity(256 * 1024, File::create(path)?),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let out = if self.format == ExportFormat::Csv {
            let mut w = csv::Writer::from_writer(file);
            w.write_record(table.column_names())
                .map_err(std::io::Error::other)?;
            Out::Csv(Box::new(w))
        } else {
            Out::Json(file)
        };
        self.current = Some(OpenFile {
            table,
            name,
            out,
            records: 0,
        });
        Ok(())
    }

    fn close(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.current.take() {
            let mut out = match f.out {
                Out::Json(w) => w,
                Out::Csv(w) => w
                    .into_inner()
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            };
            out.flush()?;
            self.done.push(FileEntry {
                name: f.name,
                table: f.table.name,
                sha256: hex::encode(out.hasher.finalize_reset()),
                bytes: out.bytes,
                records: f.records,
            });
        }
        Ok(())
    }

    fn write_row(
        &mut self,
        table: &'static ExportTable,
        mut row: Vec<Cell>,
    ) -> std::io::Result<()> {
        if table.name == "tenant" {
            for (col, v) in &self.tenant_overrides {
                if let Some(i) = table.column_names().position(|c| c == *col) {
                    row[i] = v.clone();
                }
            }
        }
        let switch = self
            .current
            .as_ref()
            .is_none_or(|c| c.table.name != table.name);
        if switch && !(self.format == ExportFormat::Json && self.current.is_some()) {
            self.close()?;
            self.open(table)?;
        }
        let Some(f) = self.current.as_mut() else {
            return Ok(());
        };
        if let Out::Csv(w) = &mut f.out {
            w.write_record(row.iter().map(|c| match c {
                Cell::Null => String::new(),
                Cell::Int(i) => i.to_string(),
                Cell::Text(s) => s.clone(),
            }))
            .map_err(std::io::Error::other)?;
        } else if let Out::Json(out) = &mut f.out {
            let obj: Map<String, Value> = table
                .column_names()
                .zip(row)
                .map(|(c, v)| (c.to_owned(), serde_json::to_value(v).unwrap_or(Value::Null)))
                .collect();
            let line = if self.format == ExportFormat::Json {
                json!({"table": table.name, "row": obj})
            } else {
                Value::Object(obj)
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        f.records += 1;
        self.rows.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The files written, with a file (empty) for every table that had no rows.
    pub(crate) fn finish(mut self) -> Result<Vec<FileEntry>> {
        self.close().map_err(io_err)?;
        Ok(self.done)
    }
}

impl ExportSink for FileSink {
    fn row(&mut self, table: &'static ExportTable, row: Vec<Cell>) -> agentplane_store::Result<()> {
        self.write_row(table, row)
            .map_err(|e| StoreError::Config(format!("export file: {e}")))
    }
}

fn manifest(
    tenant: TenantId,
    rec: &ExportRecord,
    export_type: ExportType,
    format: ExportFormat,
    tables: &[&'static ExportTable],
    files: &[FileEntry],
) -> Value {
    let mut counts = Map::new();
    let mut layout = Map::new();
    for t in tables {
        let n: u64 = files
            .iter()
            .filter(|f| f.table == t.name)
            .map(|f| f.records)
            .sum();
        let _ = counts.insert(t.name.into(), json!(n));
        let _ = layout.insert(t.name.into(), json!(t.column_names().collect::<Vec<_>>()));
    }
    // A file per table (JSON: one file with every table's records).
    let mut listed: Vec<Value> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        if seen.insert(f.name.clone()) {
            let (bytes, records) = files
                .iter()
                .filter(|g| g.name == f.name)
                .fold((0, 0), |(b, r), g| (b + g.bytes, r + g.records));
            listed.push(
                json!({"name": f.name, "sha256": f.sha256, "bytes": bytes, "records": records}),
            );
        }
    }
    json!({
        "format": EXPORT_FORMAT,
        "version": EXPORT_FORMAT_VERSION,
        "export_id": rec.id,
        "tenant_id": tenant,
        "export_type": export_type.as_str(),
        "encoding": format.as_str(),
        "created_at": Timestamp::now(),
        "params": rec.params,
        "files": listed,
        "counts": counts,
        "columns": layout,
        "not_exported": NOT_EXPORTED.iter().map(|(w, why)| json!({"what": w, "why": why})).collect::<Vec<_>>(),
    })
}

/// Packages the data files (`data-N` in `dir`) with the manifest.
fn write_package(
    dir: &Path,
    package: &Path,
    format: ExportFormat,
    manifest: &Value,
    files: &[FileEntry],
) -> Result<()> {
    if format == ExportFormat::Json {
        // The one data file is the package (the manifest stays with the export's record).
        match files.len() {
            0 => File::create(package).map(drop).map_err(io_err),
            _ => std::fs::rename(dir.join("data-0"), package).map_err(io_err),
        }
    } else {
        let out = File::create(package).map_err(io_err)?;
        let mut zip = zip::ZipWriter::new(BufWriter::new(out));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        let zerr = |e: zip::result::ZipError| ControlError::Internal(format!("zip: {e}"));
        zip.start_file("manifest.json", opts).map_err(zerr)?;
        let text = serde_json::to_vec_pretty(manifest)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        zip.write_all(&text).map_err(io_err)?;
        for (i, f) in files.iter().enumerate() {
            zip.start_file(f.name.as_str(), opts).map_err(zerr)?;
            let mut data = File::open(dir.join(format!("data-{i}"))).map_err(io_err)?;
            std::io::copy(&mut data, &mut zip).map_err(io_err)?;
        }
        zip.finish().map_err(zerr)?.flush().map_err(io_err)
    }
}

/// An export that passed verification, its files extracted.
pub(crate) struct Verified {
    pub(crate) manifest: Value,
    pub(crate) counts: BTreeMap<String, u64>,
    /// table name -> extracted file
    pub(crate) files: BTreeMap<String, PathBuf>,
    pub(crate) tenant_slug: String,
    pub(crate) tenant_plan: String,
}

/// Checks an export's manifest before anything is written: format and version, a `full`
/// export in the ZIP encoding, the column layout of every table, and every file's SHA-256
/// and record count. Extracts the files into `out` as it reads them.
pub(crate) fn verify_and_extract(path: &Path, out: &Path) -> Result<Verified> {
    let bad = |m: String| invalid_export(&m);
    let file = File::open(path).map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(format!("not a ZIP export: {e}")))?;
    let manifest: Value = {
        let m = zip
            .by_name("manifest.json")
            .map_err(|_| bad("no manifest.json".into()))?;
        serde_json::from_reader(m.take(16 << 20)).map_err(|e| bad(format!("manifest.json: {e}")))?
    };
    if manifest["format"] != EXPORT_FORMAT || manifest["version"] != EXPORT_FORMAT_VERSION {
        return Err(bad(format!(
            "not an {EXPORT_FORMAT} version {EXPORT_FORMAT_VERSION} export"
        )));
    }
    if manifest["export_type"] != "full" || manifest["encoding"] != "zip" {
        return Err(bad(
            "only full exports in the zip format can be imported".into()
        ));
    }
    let listed = manifest["files"]
        .as_array()
        .ok_or_else(|| bad("the manifest lists no files".into()))?;
    // Every file in the archive is listed, and every listed file is in the archive.
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    for n in &names {
        if n != "manifest.json" && !listed.iter().any(|f| f["name"] == n.as_str()) {
            return Err(bad(format!(
                "{n} is in the archive but not in the manifest"
            )));
        }
    }
    let mut counts = BTreeMap::new();
    let mut files = BTreeMap::new();
    for t in EXPORT_TABLES.iter().filter(|t| t.importable) {
        let expected: Vec<&str> = t.column_names().collect();
        if manifest["columns"][t.name] != json!(expected) {
            return Err(bad(format!(
                "{}: the columns differ from this version's",
                t.name
            )));
        }
        let name = format!("{}.jsonl", t.name);
        let entry = listed.iter().find(|f| f["name"] == name.as_str());
        let records = manifest["counts"][t.name].as_u64().unwrap_or(0);
        let Some(entry) = entry else {
            if records != 0 {
                return Err(bad(format!("{name} is missing")));
            }
            counts.insert(t.name.to_owned(), 0);
            continue;
        };
        let mut member = zip
            .by_name(&name)
            .map_err(|_| bad(format!("{name} is missing")))?;
        let dest = out.join(&name);
        let mut w = HashingWriter {
            inner: BufWriter::new(File::create(&dest).map_err(io_err)?),
            hasher: Sha256::new(),
            bytes: 0,
        };
        std::io::copy(&mut member, &mut w).map_err(|e| bad(format!("{name}: {e}")))?;
        w.flush().map_err(io_err)?;
        let sha = hex::encode(w.hasher.finalize_reset());
        if entry["sha256"] != sha.as_str() {
            return Err(bad(format!("{name}: SHA-256 does not match the manifest")));
        }
        let lines = BufReader::new(File::open(&dest).map_err(io_err)?)
            .lines()
            .count() as u64;
        if entry["records"].as_u64() != Some(lines) || records != lines {
            return Err(bad(format!(
                "{name}: record count does not match the manifest"
            )));
        }
        counts.insert(t.name.to_owned(), lines);
        files.insert(t.name.to_owned(), dest);
    }
    let tenant_file = files
        .get("tenant")
        .ok_or_else(|| bad("the export holds no tenant".into()))?;
    let mut first = String::new();
    BufReader::new(File::open(tenant_file).map_err(io_err)?)
        .read_line(&mut first)
        .map_err(io_err)?;
    let row: Value = serde_json::from_str(&first).map_err(|e| bad(format!("tenant.jsonl: {e}")))?;
    Ok(Verified {
        tenant_slug: row["slug"].as_str().unwrap_or_default().to_owned(),
        tenant_plan: row["plan_id"].as_str().unwrap_or_default().to_owned(),
        manifest,
        counts,
        files,
    })
}

/// Reads verified files back as rows, in load order.
pub(crate) struct FileSource {
    tables: std::vec::IntoIter<(&'static ExportTable, PathBuf)>,
    current: Option<(&'static ExportTable, std::io::Lines<BufReader<File>>)>,
    pub(crate) overrides: Vec<(&'static str, Cell)>,
    exported: Option<TenantId>,
}

const BATCH: usize = 2000;

impl FileSource {
    pub(crate) fn open(v: &Verified) -> Result<Self> {
        let tables: Vec<_> = EXPORT_TABLES
            .iter()
            .filter(|t| t.importable)
            .filter_map(|t| v.files.get(t.name).map(|p| (t, p.clone())))
            .collect();
        Ok(Self {
            tables: tables.into_iter(),
            current: None,
            overrides: Vec::new(),
            exported: v.manifest["tenant_id"]
                .as_str()
                .and_then(|s| s.parse().ok()),
        })
    }
}

fn parse_row(t: &ExportTable, line: &str) -> agentplane_store::Result<Vec<Cell>> {
    let bad = |m: String| StoreError::Config(format!("{}: {m}", t.name));
    let Value::Object(mut obj) = serde_json::from_str(line).map_err(|e| bad(e.to_string()))? else {
        return Err(bad("a record is not an object".into()));
    };
    let row = t
        .columns
        .iter()
        .map(|(c, ty)| match (obj.remove(*c), ty) {
            (None, _) => Err(bad(format!("a record has no {c}"))),
            (Some(Value::Null), _) => Ok(Cell::Null),
            (Some(Value::String(s)), ColType::Text) => Ok(Cell::Text(s)),
            (Some(Value::Number(n)), ColType::Int) => n
                .as_i64()
                .map(Cell::Int)
                .ok_or_else(|| bad(format!("{c} is not an integer"))),
            _ => Err(bad(format!("{c} has the wrong type"))),
        })
        .collect::<agentplane_store::Result<Vec<_>>>()?;
    if let Some(extra) = obj.keys().next() {
        return Err(bad(format!("unknown column {extra}")));
    }
    Ok(row)
}

impl ImportSource for FileSource {
    fn exported_tenant(&self) -> Option<TenantId> {
        self.exported
    }

    fn next_batch(&mut self) -> agentplane_store::Result<Option<agentplane_store::exports::Batch>> {
        loop {
            if self.current.is_none() {
                let Some((t, path)) = self.tables.next() else {
                    return Ok(None);
                };
                let f = File::open(&path).map_err(|e| StoreError::Config(e.to_string()))?;
                self.current = Some((t, BufReader::new(f).lines()));
            }
            let Some((t, lines)) = self.current.as_mut() else {
                continue;
            };
            let t: &'static ExportTable = t;
            let mut batch = Vec::new();
            for line in lines.by_ref().take(BATCH) {
                let line = line.map_err(|e| StoreError::Config(e.to_string()))?;
                let mut row = parse_row(t, &line)?;
                if t.name == "tenant" {
                    for (col, v) in &self.overrides {
                        if let Some(i) = t.column_names().position(|c| c == *col) {
                            row[i] = v.clone();
                        }
                    }
                }
                batch.push(row);
            }
            if batch.is_empty() {
                self.current = None;
                continue;
            }
            return Ok(Some((t, batch)));
        }
    }
}
