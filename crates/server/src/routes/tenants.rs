use super::PageParams;
use crate::extract::{Body, OptionalBody, PlatformScope, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{JobOutcome, TenantCreated};
use agentplane_core::job::Job;
use agentplane_core::page::Page;
use agentplane_core::tenant::Tenant;
use agentplane_store::{Member, MemberFilter};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

/// Create a tenant. Answers 202: the tenant is `provisioning` until its job has created its
/// default settings, quotas and first admin. Send an `Idempotency-Key` to retry safely.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    request_body = agentplane_control::CreateTenant,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, unique per caller")),
    responses((status = 202, body = TenantCreated), (status = 409, description = "slug taken"), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    scope: PlatformScope,
    headers: HeaderMap,
    Body(raw): Body<Value>,
) -> Result<Response, ApiError> {
    let idem = super::idempotency_key(&headers, "tenants.create", &scope.principal)?;
    let out = state.control().create_tenant(&scope.ctx, raw, idem).await?;
    let location = out.body["tenant"]["id"]
        .as_str()
        .map(|id| format!("/v1/tenants/{id}"));
    Ok(super::created(out, location))
}

/// Show a tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Tenant), (status = 404), (status = 403)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(state.control().tenant(&scope.ctx).await?))
}

/// List every tenant (platform operators).
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "tenants", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Tenant>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: PlatformScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Tenant>>, ApiError> {
    Ok(Json(
        state.control().list_tenants(&scope.ctx, &q.page()?).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    pub plan_id: String,
}

/// Move a tenant to another plan, with immediate effect.
#[utoipa::path(patch, path = "/v1/admin/tenants/{tenant_id}/plan", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), request_body = ChangePlan, responses((status = 200, body = Tenant), (status = 422)))]
pub async fn change_plan(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<ChangePlan>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(
        state
            .control()
            .change_plan(&scope.ctx, &req.plan_id)
            .await?,
    ))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    pub reason: Option<String>,
}

/// Suspend a tenant (`?confirm=true` required).
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant_id}/suspend", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)), request_body = Option<SuspendRequest>,
    responses((status = 200, body = Tenant), (status = 409, description = "not active"), (status = 428)))]
pub async fn suspend(
    State(state): State<AppState>,
    scope: TenantScope,
    OptionalBody(body): OptionalBody<SuspendRequest>,
) -> Result<Json<Tenant>, ApiError> {
    let reason = body.and_then(|b| b.reason);
    Ok(Json(
        state.control().suspend_tenant(&scope.ctx, reason).await?,
    ))
}

/// Reactivate a suspended or soft-deleted tenant.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant_id}/reactivate", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Tenant), (status = 409)))]
pub async fn reactivate(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(state.control().reactivate_tenant(&scope.ctx).await?))
}

/// Soft-delete a tenant (`?confirm=true` required); its data is purged after the grace period.
#[utoipa::path(delete, path = "/v1/admin/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)), responses((status = 200, body = Tenant), (status = 428)))]
pub async fn delete(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(state.control().delete_tenant(&scope.ctx).await?))
}

/// Purge a soft-deleted tenant now (`?confirm=true` required). Answers the queued job.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant_id}/purge", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)), responses((status = 202, body = Job), (status = 409)))]
pub async fn purge(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.control().purge_tenant(&scope.ctx).await?),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UserParams {
    /// Only users holding this role.
    pub role_filter: Option<String>,
    /// `active`, `inactive` or `suspended`.
    #[param(pattern = "^(active|inactive|suspended)$")]
    pub status_filter: Option<String>,
    /// Opaque cursor from the previous page's `next_cursor`.
    #[param(pattern = "^([0-9a-f]{2})*$", max_length = 512)]
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// List the users of the tenant (`admin.list_users`).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/users", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), UserParams), responses((status = 200, body = Page<Member>)))]
pub async fn list_users(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<UserParams>,
) -> Result<Json<Page<Member>>, ApiError> {
    if let Some(s) = &q.status_filter {
        if !["active", "inactive", "suspended"].contains(&s.as_str()) {
            return Err(ApiError::validation(
                "status_filter",
                "must be active, inactive or suspended",
            ));
        }
    }
    if let Some(r) = &q.role_filter {
        if agentplane_core::authz::Role::parse(r).is_none() {
            return Err(ApiError::validation(
                "role_filter",
                "must be platform_admin, tenant_admin, auditor or member",
            ));
        }
    }
    let page = PageParams {
        cursor: q.cursor,
        limit: q.limit,
    }
    .page()?;
    let filter = MemberFilter {
        role: q.role_filter,
        status: q.status_filter,
    };
    Ok(Json(
        state
            .control()
            .list_users(&scope.ctx, &filter, &page)
            .await?,
    ))
}

/// Run the next due job of the queue now. 204 when none is due.
#[utoipa::path(post, path = "/v1/provisioning/jobs/run-next", tag = "jobs", security(("bearer" = [])),
    responses((status = 200, body = JobOutcome), (status = 204, description = "no job due")))]
pub async fn run_next_job(
    State(state): State<AppState>,
    _scope: PlatformScope,
) -> Result<Response, ApiError> {
    Ok(match state.control().run_next_job().await? {
        Some(outcome) => Json(outcome).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Where the tenant's data is stored and processed, with the audit log's evidence (reading it
/// is recorded in the audit log).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/residency", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = agentplane_control::ResidencyReport)))]
pub async fn residency(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<agentplane_control::ResidencyReport>, ApiError> {
    Ok(Json(state.control().residency_report(&scope.ctx).await?))
}

/// Move the tenant to another region (`?confirm=true`): a job moves its objects to the
/// region's store, then pins it there. Answers the job.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant_id}/region", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)),
    request_body = agentplane_control::MoveRegion,
    responses((status = 202, body = agentplane_core::job::Job), (status = 422)))]
pub async fn move_region(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<agentplane_control::MoveRegion>,
) -> Result<(axum::http::StatusCode, Json<agentplane_core::job::Job>), ApiError> {
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(state.control().request_region_move(&scope.ctx, req).await?),
    ))
}
