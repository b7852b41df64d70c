use super::PageParams;
use crate::extract::{Body, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{CreateApiKey, CreatedApiKey};
use agentplane_core::api_key::ApiKey;
use agentplane_core::page::Page;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct KeyPath {
    pub key_id: String,
}

/// The tenant's API keys (prefixes, never secrets).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/api-keys", tag = "api keys", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams), responses((status = 200, body = Page<ApiKey>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    Ok(Json(
        state
            .control()
            .list_api_keys(&scope.ctx, &q.page()?)
            .await?,
    ))
}

/// Create an API key. The `key` in the answer is shown this once.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/api-keys", tag = "api keys", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey)))]
pub async fn create(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.control().create_api_key(&scope.ctx, req).await?),
    ))
}

/// Revoke an API key (`?confirm=true`): refused from the next request on.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/api-keys/{key_id}", tag = "api keys", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("key_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    responses((status = 200, body = ApiKey)))]
pub async fn revoke(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<KeyPath>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(
        state
            .control()
            .revoke_api_key(&scope.ctx, &p.key_id)
            .await?,
    ))
}
