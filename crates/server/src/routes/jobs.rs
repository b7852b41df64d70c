use super::PageParams;
use crate::extract::{Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_core::job::Job;
use agentplane_core::page::Page;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct JobPath {
    pub job_id: String,
}

/// The tenant's background jobs, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/jobs", tag = "jobs", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams), responses((status = 200, body = Page<Job>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Job>>, ApiError> {
    Ok(Json(
        state.control().list_jobs(&scope.ctx, &q.page()?).await?,
    ))
}

/// One job: status, attempts, progress, last error.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/jobs/{job_id}", tag = "jobs", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("job_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Job)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<JobPath>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.control().job(&scope.ctx, &p.job_id).await?))
}

/// Cancel a job: a queued one at once, a running one at its next heartbeat.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/jobs/{job_id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("job_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Job), (status = 409, description = "the job already finished")))]
pub async fn cancel(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<JobPath>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(
        state.control().cancel_job(&scope.ctx, &p.job_id).await?,
    ))
}

/// Apply every tenant's retention now (`?confirm=true`): a `tenant.retention` job per active
/// tenant without one in the last day. Answers `{"scheduled": n}`.
#[utoipa::path(post, path = "/v1/admin/retention/run", tag = "jobs", security(("bearer" = [])),
    params(("confirm" = bool, Query)), responses((status = 202, description = "`{\"scheduled\": n}`")))]
pub async fn run_retention(
    State(state): State<AppState>,
    scope: crate::extract::PlatformScope,
) -> Result<(axum::http::StatusCode, Json<serde_json::Value>), ApiError> {
    let n = state.control().run_retention_now(&scope.ctx).await?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(serde_json::json!({"scheduled": n})),
    ))
}
