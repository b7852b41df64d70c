use super::PageParams;
use crate::extract::{Body, PlatformScope, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{CreateProvider, MasterRotation, ProbeResult, UpdateProvider};
use agentplane_core::job::Job;
use agentplane_core::page::Page;
use agentplane_core::provider::Provider;
use agentplane_store::TenantKey;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// `/v1/tenants/{tenant_id}/providers/{provider_id}` (the tenant was checked by the extractor).
#[derive(Deserialize)]
pub struct ProviderPath {
    pub provider_id: String,
}

/// The tenant's provider credentials (fingerprints, never secrets).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/providers", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams), responses((status = 200, body = Page<Provider>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Provider>>, ApiError> {
    Ok(Json(
        state
            .control()
            .list_providers(&scope.ctx, &q.page()?)
            .await?,
    ))
}

/// Add a provider credential. The `api_key` is sealed with the tenant's data key at once and
/// never returned.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/providers", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), request_body = CreateProvider,
    responses((status = 201, body = Provider), (status = 409, description = "name taken")))]
pub async fn create(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<CreateProvider>,
) -> Result<Response, ApiError> {
    let p = state.control().create_provider(&scope.ctx, req).await?;
    let mut res = (StatusCode::CREATED, Json(&p)).into_response();
    if let Ok(loc) =
        HeaderValue::from_str(&format!("/v1/tenants/{}/providers/{}", p.tenant_id, p.id))
    {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

/// One provider credential.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/providers/{provider_id}", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("provider_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Provider)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ProviderPath>,
) -> Result<Json<Provider>, ApiError> {
    Ok(Json(
        state.control().provider(&scope.ctx, &p.provider_id).await?,
    ))
}

/// Change a provider credential, or rotate its secret with a new `api_key`.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/providers/{provider_id}", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("provider_id" = uuid::Uuid, Path)),
    request_body = UpdateProvider, responses((status = 200, body = Provider)))]
pub async fn update(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ProviderPath>,
    Body(req): Body<UpdateProvider>,
) -> Result<Json<Provider>, ApiError> {
    Ok(Json(
        state
            .control()
            .update_provider(&scope.ctx, &p.provider_id, req)
            .await?,
    ))
}

/// Delete a provider credential (`?confirm=true`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/providers/{provider_id}", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("provider_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    responses((status = 204, description = "deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ProviderPath>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .delete_provider(&scope.ctx, &p.provider_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Test the credential: list the endpoint's models with it.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/providers/{provider_id}/test", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("provider_id" = uuid::Uuid, Path)),
    responses((status = 200, body = ProbeResult)))]
pub async fn test(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ProviderPath>,
) -> Result<Json<ProbeResult>, ApiError> {
    Ok(Json(
        state
            .control()
            .test_provider(&scope.ctx, &p.provider_id)
            .await?,
    ))
}

/// The tenant's data-key versions (metadata only).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/keys", tag = "keys", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Vec<TenantKey>)))]
pub async fn keys(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<TenantKey>>, ApiError> {
    Ok(Json(state.control().tenant_keys(&scope.ctx).await?))
}

/// Rotate the tenant's data key (`?confirm=true`): answers the re-seal job.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/keys/rotate", tag = "keys", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)),
    responses((status = 202, body = Job)))]
pub async fn rotate_tenant_key(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.control().rotate_tenant_key(&scope.ctx).await?),
    ))
}

/// Rotate the master key (`?confirm=true`) and re-wrap every tenant's data keys.
#[utoipa::path(post, path = "/v1/admin/keys/rotate", tag = "keys", security(("bearer" = [])),
    params(("confirm" = bool, Query)), responses((status = 200, body = MasterRotation)))]
pub async fn rotate_master_key(
    State(state): State<AppState>,
    scope: PlatformScope,
) -> Result<Json<MasterRotation>, ApiError> {
    Ok(Json(state.control().rotate_master_key(&scope.ctx).await?))
}

#[derive(Deserialize)]
pub struct SharedPath {
    pub shared_id: String,
}

/// The provider credentials the platform shares (never their secrets).
#[utoipa::path(get, path = "/v1/admin/shared-providers", tag = "providers", security(("bearer" = [])),
    responses((status = 200, body = [agentplane_core::provider::SharedProvider])))]
pub async fn list_shared(
    State(state): State<AppState>,
    _scope: PlatformScope,
) -> Result<Json<Vec<agentplane_core::provider::SharedProvider>>, ApiError> {
    Ok(Json(state.control().list_shared_providers().await?))
}

/// Share provider credentials with the tenants of some plans.
#[utoipa::path(post, path = "/v1/admin/shared-providers", tag = "providers", security(("bearer" = [])),
    request_body = agentplane_control::CreateSharedProvider,
    responses((status = 201, body = agentplane_core::provider::SharedProvider)))]
pub async fn create_shared(
    State(state): State<AppState>,
    scope: PlatformScope,
    Body(raw): Body<serde_json::Value>,
) -> Result<(StatusCode, Json<agentplane_core::provider::SharedProvider>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .control()
                .create_shared_provider(&scope.ctx, raw)
                .await?,
        ),
    ))
}

/// Change which plans grant a shared provider (applies to the next run).
#[utoipa::path(patch, path = "/v1/admin/shared-providers/{shared_id}", tag = "providers", security(("bearer" = [])),
    params(("shared_id" = uuid::Uuid, Path)), request_body = agentplane_control::UpdateSharedProvider,
    responses((status = 200, body = agentplane_core::provider::SharedProvider)))]
pub async fn update_shared(
    State(state): State<AppState>,
    scope: PlatformScope,
    Path(p): Path<SharedPath>,
    Body(raw): Body<serde_json::Value>,
) -> Result<Json<agentplane_core::provider::SharedProvider>, ApiError> {
    Ok(Json(
        state
            .control()
            .set_shared_provider_plans(&scope.ctx, &p.shared_id, raw)
            .await?,
    ))
}

/// The shared providers the tenant's plan grants.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/shared-providers", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    responses((status = 200, body = [agentplane_core::provider::SharedProvider])))]
pub async fn available_shared(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<agentplane_core::provider::SharedProvider>>, ApiError> {
    Ok(Json(
        state
            .control()
            .available_shared_providers(&scope.ctx)
            .await?,
    ))
}

/// Use a shared provider the plan grants: a provider of the tenant pointing at it.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/shared-providers/{shared_id}/attach", tag = "providers", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("shared_id" = uuid::Uuid, Path)),
    request_body = agentplane_control::AttachSharedProvider, responses((status = 201, body = Provider)))]
pub async fn attach_shared(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<SharedPath>,
    Body(raw): Body<serde_json::Value>,
) -> Result<(StatusCode, Json<Provider>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .control()
                .attach_shared_provider(&scope.ctx, &p.shared_id, raw)
                .await?,
        ),
    ))
}
