//! Exports of a tenant's data, their signed download links, and imports.

use super::PageParams;
use crate::extract::{Body, PlatformScope, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{DownloadLink, ImportReport, ImportTarget, RequestExport};
use agentplane_core::page::Page;
use agentplane_store::exports::ExportRecord;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

#[derive(Deserialize)]
pub struct ExportPath {
    pub export_id: String,
}

/// Export the tenant's data (`?confirm=true`): a durable job builds the artifact (sealed in
/// the object store, with a manifest of every file's SHA-256 and record counts).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/exports", tag = "exports", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)),
    request_body = RequestExport, responses((status = 202, body = ExportRecord)))]
pub async fn create(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<RequestExport>,
) -> Result<(StatusCode, Json<ExportRecord>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.control().request_export(&scope.ctx, req).await?),
    ))
}

/// The tenant's exports, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/exports", tag = "exports", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams),
    responses((status = 200, body = Page<ExportRecord>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<ExportRecord>>, ApiError> {
    Ok(Json(
        state.control().list_exports(&scope.ctx, &q.page()?).await?,
    ))
}

/// One export, with its manifest once ready.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/exports/{export_id}", tag = "exports", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("export_id" = uuid::Uuid, Path)),
    responses((status = 200, body = ExportRecord)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ExportPath>,
) -> Result<Json<ExportRecord>, ApiError> {
    Ok(Json(
        state.control().export(&scope.ctx, &p.export_id).await?,
    ))
}

/// A signed link to download a ready export; it works for five minutes, without a token.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/exports/{export_id}/link", tag = "exports", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("export_id" = uuid::Uuid, Path)),
    responses((status = 200, body = DownloadLink), (status = 409, description = "the export is not ready")))]
pub async fn link(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ExportPath>,
) -> Result<Json<DownloadLink>, ApiError> {
    Ok(Json(
        state
            .control()
            .export_link(&scope.ctx, &p.export_id)
            .await?,
    ))
}

fn internal(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "import working file");
    ApiError::internal()
}

#[derive(Deserialize)]
pub struct DownloadPath {
    pub token: String,
}

/// Download an export through a signed link (decrypted as it streams).
#[utoipa::path(get, path = "/v1/downloads/{token}", tag = "exports",
    params(("token" = String, Path, description = "the signed link's token")),
    responses((status = 200, description = "the export (application/zip or application/x-ndjson)"),
        (status = 401, description = "the link is invalid or expired")))]
pub async fn download(
    State(state): State<AppState>,
    Path(p): Path<DownloadPath>,
) -> Result<Response, ApiError> {
    let (rec, stream) = state.control().open_download(&p.token).await?;
    let (mime, ext) = if rec.format == "json" {
        ("application/x-ndjson", "jsonl")
    } else {
        ("application/zip", "zip")
    };
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"agentplane-export-{}.{ext}\"",
                    rec.id
                ),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Import as a new tenant with this slug (and a new id) instead of the exported one.
    pub slug: Option<String>,
    /// The new tenant's name (with `slug`).
    pub name: Option<String>,
    /// Checked by the scope extractor (a confirmed action).
    #[allow(dead_code)]
    pub confirm: Option<bool>,
}

/// The largest export an import over HTTP accepts (the CLI reads files of any size).
const MAX_IMPORT_BYTES: u64 = 4 << 30;

/// Import a `full` export (the ZIP as the body, `?confirm=true`): verified against its
/// manifest first, then loaded in one transaction.
#[utoipa::path(post, path = "/v1/admin/tenants/import", tag = "exports", security(("bearer" = [])),
    params(ImportParams), request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the export: the ZIP bytes (sent as application/zip or application/octet-stream)"),
    responses((status = 201, body = ImportReport)))]
pub async fn import(
    State(state): State<AppState>,
    scope: PlatformScope,
    Query(q): Query<ImportParams>,
    req: Request,
) -> Result<(StatusCode, Json<ImportReport>), ApiError> {
    if q.name.is_some() && q.slug.is_none() {
        return Err(ApiError::validation(
            "name",
            "is given with slug (a new tenant)",
        ));
    }
    let dir = tempfile::tempdir().map_err(internal)?;
    let path = dir.path().join("import.zip");
    let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
    let mut body = req.into_body().into_data_stream();
    let mut size = 0u64;
    while let Some(piece) = body
        .try_next()
        .await
        .map_err(|e| ApiError::validation("body", e.to_string()))?
    {
        size += piece.len() as u64;
        if size > MAX_IMPORT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                "imports over HTTP are at most 4 GiB; use `agentplane tenant import`",
            ));
        }
        file.write_all(&piece).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    let target = ImportTarget {
        new_slug: q.slug,
        new_name: q.name,
        new_tenant_id: None,
    };
    let report = state
        .control()
        .import_tenant(&scope.ctx, &path, target)
        .await?;
    Ok((StatusCode::CREATED, Json(report)))
}

#[derive(Deserialize)]
pub struct BackupPath {
    pub backup_id: String,
}

/// The tenant's backups, oldest first, with their last verification report.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/backups", tag = "backups", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams),
    responses((status = 200, body = Page<ExportRecord>)))]
pub async fn list_backups(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<ExportRecord>>, ApiError> {
    Ok(Json(
        state.control().list_backups(&scope.ctx, &q.page()?).await?,
    ))
}

/// One backup.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/backups/{backup_id}", tag = "backups", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("backup_id" = uuid::Uuid, Path)),
    responses((status = 200, body = ExportRecord)))]
pub async fn get_backup(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<BackupPath>,
) -> Result<Json<ExportRecord>, ApiError> {
    Ok(Json(
        state.control().backup(&scope.ctx, &p.backup_id).await?,
    ))
}

/// Back the tenant up now (`?confirm=true`).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/backups", tag = "backups", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)),
    responses((status = 202, body = ExportRecord)))]
pub async fn create_backup(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<(StatusCode, Json<ExportRecord>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.control().request_backup(&scope.ctx).await?),
    ))
}

/// Verify a backup: a job restores it into a scratch tenant (rolled back) and compares.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/backups/{backup_id}/verify", tag = "backups", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("backup_id" = uuid::Uuid, Path)),
    responses((status = 202, body = agentplane_core::job::Job), (status = 409, description = "the backup is not ready")))]
pub async fn verify_backup(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<BackupPath>,
) -> Result<(StatusCode, Json<agentplane_core::job::Job>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(
            state
                .control()
                .request_backup_verification(&scope.ctx, &p.backup_id)
                .await?,
        ),
    ))
}

/// Restore a backup into a new tenant (`?confirm=true`; platform operators): a job.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant_id}/backups/{backup_id}/restore", tag = "backups", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("backup_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    request_body = agentplane_control::RestoreBackup,
    responses((status = 202, body = agentplane_core::job::Job)))]
pub async fn restore_backup(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<BackupPath>,
    Body(req): Body<agentplane_control::RestoreBackup>,
) -> Result<(StatusCode, Json<agentplane_core::job::Job>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(
            state
                .control()
                .request_restore(&scope.ctx, &p.backup_id, &req.slug, req.name)
                .await?,
        ),
    ))
}
