//! Tenant backups (requirement 15): full exports (the format of docs/exports.md), sealed with
//! the tenant's key in the object store, taken on the tenant's schedule
//! (`backup.interval_hours`) and kept by count (`backup.retention_count`).
//!
//! - **Verification** (`tenant.backup_verify`): the backup is decrypted, checked against its
//!   manifest, loaded into a scratch tenant inside a transaction, read back and compared
//!   table by table (records and SHA-256) with the manifest; then the transaction is rolled
//!   back. Nothing stays behind, no other tenant is touched, and the tenant admin reads the
//!   report on the backup.
//! - **Restore** (`tenant.restore`, a platform action): the backup becomes a new tenant
//!   (disaster recovery, or a drill that never touches production). The restored tenant gets
//!   every erasure done since the backup again.

use crate::error::ConflictKind;
use crate::exports::{io_err, verify_and_extract, ExportFormat, ExportType, FileSink, FileSource};
use crate::identity::erasure::subject_hash;
use crate::provisioning::JobError;
use crate::{ControlError, ControlPlane, ImportTarget, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::{Job, JobKind};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::tenant::{Slug, TenantStatus};
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use agentplane_store::exports::{Cell, ExportRecord};
use agentplane_store::{Conflict, StoreError};
use serde_json::{json, Map, Value};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

const HOUR_MS: i64 = 3_600_000;

/// `admin.restore_backup`'s body: the new tenant.
#[derive(Clone, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBackup {
    #[schema(pattern = "^[a-z0-9](?:-?[a-z0-9])+$", min_length = 3, max_length = 40)]
    pub slug: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
}

impl ControlPlane {
    pub async fn list_backups(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<ExportRecord>> {
        Ok(self.store.list_exports(ctx, "backup", page).await?)
    }

    pub async fn backup(&self, ctx: &TenantCtx, id: &str) -> Result<ExportRecord> {
        self.artifact(ctx, id, "backup").await
    }

    /// `admin.create_backup`: a backup now (the schedule takes the others).
    /// A backup pending already (asked by someone else, or scheduled by another worker at the
    /// same time) is the answer: one is taken at a time.
    pub async fn request_backup(&self, ctx: &TenantCtx) -> Result<ExportRecord> {
        let params = json!({"from": null, "to": null, "user_id": null});
        match self
            .enqueue_export(ctx, true, ExportType::Full, ExportFormat::Zip, params)
            .await
        {
            Err(ControlError::Store(StoreError::Conflict(Conflict::BackupPending))) => self
                .store
                .latest_backup(ctx)
                .await?
                .filter(|b| b.status == "pending")
                .ok_or(ControlError::Conflict(ConflictKind::ConcurrentUpdate)),
            other => other,
        }
    }

    /// Enqueues a backup for every active tenant whose last one is older than its
    /// `backup.interval_hours`; answers how many.
    pub async fn schedule_backups(&self, platform: &PlatformCtx) -> Result<u64> {
        let now = Timestamp::now();
        let mut page = PageRequest::first(200);
        let mut n = 0;
        loop {
            let tenants = self.store.list_tenants(platform, &page).await?;
            for t in tenants
                .items
                .iter()
                .filter(|t| t.status == TenantStatus::Active)
            {
                let ctx = platform.tenant(t.id);
                let hours = self.setting_i64(&ctx, "backup.interval_hours").await?;
                if hours <= 0 {
                    continue;
                }
                let due = match self.store.latest_backup(&ctx).await? {
                    None => true,
                    Some(b) => {
                        b.status != "pending"
                            && b.created_at.plus_millis(hours.saturating_mul(HOUR_MS)) <= now
                    }
                };
                if due {
                    self.request_backup(&ctx).await?;
                    n += 1;
                }
            }
            match tenants.next_cursor {
                Some(c) => page.after = Some(c),
                None => return Ok(n),
            }
        }
    }

    /// Deletes the ready backups beyond the tenant's `backup.retention_count`.
    pub(crate) async fn prune_backups(&self, ctx: &TenantCtx) -> Result<u64> {
        let keep = self.setting_i64(ctx, "backup.retention_count").await?;
        let old = self.store.backups_beyond(ctx, keep).await?;
        self.delete_artifacts(ctx, &old).await
    }

    fn ready(rec: &ExportRecord) -> Result<()> {
        if rec.status == "ready" {
            Ok(())
        } else {
            Err(ControlError::Conflict(crate::error::ConflictKind::NotReady))
        }
    }

    /// `admin.verify_backup`: queues a trial restore of the backup; its report lands on the
    /// backup.
    pub async fn request_backup_verification(&self, ctx: &TenantCtx, id: &str) -> Result<Job> {
        let rec = self.backup(ctx, id).await?;
        Self::ready(&rec)?;
        let now = Timestamp::now();
        let job = Job::new(
            ctx.tenant_id(),
            JobKind::VerifyBackup,
            json!({"backup_id": rec.id}),
            now,
        );
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "backup.verify_requested",
            ctx.actor(),
            now,
        )
        .target("backup", &rec.id)
        .data(json!({"job_id": job.id}));
        self.store.enqueue(ctx, &job, audit).await?;
        Ok(job)
    }

    /// The `tenant.backup_verify` job.
    pub(crate) async fn run_verify_backup(&self, job: &Job) -> std::result::Result<(), JobError> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let id = job.payload["backup_id"].as_str().unwrap_or_default();
        let rec = self
            .backup(&ctx, id)
            .await
            .map_err(|e| JobError::Failed(e.to_string()))?;
        let report = match self.trial_restore(&ctx, job, &rec).await {
            Ok(r) => r,
            Err(ControlError::Store(s)) => return Err(JobError::Store(s)),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
        let mut report = report;
        report["verified_at"] = json!(Timestamp::now());
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "backup.verified",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("backup", &rec.id)
        .data(json!({"ok": report["ok"]}));
        self.store
            .set_verification(&ctx, job, &rec.id, &report, audit)
            .await?;
        Ok(())
    }

    /// Decrypts, verifies and restores the backup into a scratch tenant inside a rolled-back
    /// transaction; compares what was restored with the manifest.
    async fn trial_restore(&self, ctx: &TenantCtx, job: &Job, rec: &ExportRecord) -> Result<Value> {
        let dir = tempfile::Builder::new()
            .prefix("agentplane-verify-")
            .tempdir()
            .map_err(io_err)?;
        let file = dir.path().join("backup.zip");
        self.artifact_to_file(ctx, rec, &file).await?;
        let (src, out) = (file.clone(), dir.path().join("extracted"));
        std::fs::create_dir_all(&out).map_err(io_err)?;
        let verified = tokio::task::spawn_blocking(move || verify_and_extract(&src, &out))
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))??;
        let scratch = TenantId::new();
        let mut source = FileSource::open(&verified)?;
        let scratch_slug = format!("verify-{}", &scratch.to_string()[..8]);
        source.overrides.push(("slug", Cell::Text(scratch_slug)));
        let restored_dir = dir.path().join("restored");
        std::fs::create_dir_all(&restored_dir).map_err(io_err)?;
        let mut sink = FileSink::new(
            &restored_dir,
            ExportFormat::Zip,
            Arc::new(AtomicU64::new(0)),
        );
        sink.tenant_overrides
            .push(("slug", Cell::Text(verified.tenant_slug.clone())));
        let tables = ExportType::Full.tables();
        let scratch_ctx = TenantCtx::for_system_job(scratch, job.id);
        let rows = self
            .store
            .trial_restore(&scratch_ctx, &mut source, &tables, &mut sink)
            .await?;
        let restored = sink.finish()?;
        let listed = verified.manifest["files"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut report = Map::new();
        let mut ok = true;
        for t in &tables {
            let name = format!("{}.jsonl", t.name);
            let expected = listed.iter().find(|f| f["name"] == name.as_str());
            let got = restored.iter().find(|f| f.table == t.name);
            let (want_records, want_sha) = expected.map_or((0, None), |f| {
                (f["records"].as_u64().unwrap_or(0), f["sha256"].as_str())
            });
            let (got_records, got_sha) =
                got.map_or((0, None), |f| (f.records, Some(f.sha256.as_str())));
            let matches = want_records == got_records && want_sha == got_sha;
            ok &= matches;
            report.insert(
                t.name.into(),
                json!({"records": want_records, "restored": got_records, "sha256_matches": matches}),
            );
        }
        Ok(json!({
            "ok": ok,
            "scratch_tenant_id": scratch,
            "rows_restored": rows,
            "tables": report,
            "note": "restored into the scratch tenant inside a transaction that was rolled back",
        }))
    }

    /// `admin.restore_backup` (platform operators): queues the restore of the backup into a
    /// new tenant with `slug` (and `name`); answers the job (its payload names the new
    /// tenant's id).
    pub async fn request_restore(
        &self,
        ctx: &TenantCtx,
        id: &str,
        slug: &str,
        name: Option<String>,
    ) -> Result<Job> {
        let rec = self.backup(ctx, id).await?;
        Self::ready(&rec)?;
        let slug = Slug::parse(slug)?;
        if self.store.slug_taken(&slug).await? {
            return Err(ControlError::Conflict(
                crate::error::ConflictKind::SlugTaken,
            ));
        }
        let now = Timestamp::now();
        let new_id = TenantId::new();
        let job = Job::new(
            ctx.tenant_id(),
            JobKind::Restore,
            json!({"backup_id": rec.id, "tenant_id": new_id, "slug": slug.as_str(), "name": name}),
            now,
        );
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "backup.restore_requested",
            ctx.actor(),
            now,
        )
        .target("backup", &rec.id)
        .data(json!({"job_id": job.id, "new_tenant_id": new_id, "slug": slug.as_str()}));
        self.store.enqueue(ctx, &job, audit).await?;
        Ok(job)
    }

    /// The `tenant.restore` job: loads the backup as the new tenant (once: a retry after the
    /// load finds the tenant and only finishes), then erases again whoever was erased from
    /// the source tenant since.
    pub(crate) async fn run_restore(&self, job: &Job) -> std::result::Result<(), JobError> {
        let failed = |e: ControlError| match e {
            ControlError::Store(s) => JobError::Store(s),
            e => JobError::Failed(e.to_string()),
        };
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let new_id: TenantId = job.payload["tenant_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| JobError::Failed("no tenant id in the payload".into()))?;
        if self.store.get_tenant(new_id).await?.is_none() {
            let id = job.payload["backup_id"].as_str().unwrap_or_default();
            let rec = self.backup(&ctx, id).await.map_err(failed)?;
            let dir = tempfile::Builder::new()
                .prefix("agentplane-restore-")
                .tempdir()
                .map_err(|e| failed(io_err(e)))?;
            let file = dir.path().join("backup.zip");
            self.artifact_to_file(&ctx, &rec, &file)
                .await
                .map_err(failed)?;
            let platform = PlatformCtx::for_system(&format!("worker/job/{}", job.id));
            let target = ImportTarget {
                new_slug: job.payload["slug"].as_str().map(str::to_owned),
                new_name: job.payload["name"].as_str().map(str::to_owned),
                new_tenant_id: Some(new_id),
            };
            self.import_tenant(&platform, &file, target)
                .await
                .map_err(failed)?;
        }
        self.replay_erasures(&ctx, new_id).await.map_err(failed)?;
        self.store.complete_job(job, Timestamp::now()).await?;
        Ok(())
    }

    /// Erases, in the restored tenant, every member whose address the source tenant's
    /// erasure receipts name.
    async fn replay_erasures(&self, source: &TenantCtx, restored: TenantId) -> Result<()> {
        let erased = self.store.erased_subjects(source).await?;
        if erased.is_empty() {
            return Ok(());
        }
        let source_id = source.tenant_id().to_string();
        let ctx = TenantCtx::for_system_job(restored, agentplane_core::JobId::new());
        let mut page = PageRequest::first(200);
        loop {
            let members = self
                .store
                .list_members(&ctx, &Default::default(), &page)
                .await?;
            for m in &members.items {
                if erased.contains(&subject_hash(&source_id, &m.email)) {
                    match self.request_erasure(&ctx, &m.user_id.to_string()).await {
                        Ok(_) | Err(ControlError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            match members.next_cursor {
                Some(c) => page.after = Some(c),
                None => return Ok(()),
            }
        }
    }
}
