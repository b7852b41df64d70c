use super::PageParams;
use crate::extract::{Body, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{EffectiveSetting, Feature};
use agentplane_core::page::Page;
use agentplane_store::SettingVersion;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

/// The tenant's settings, each with its value, version, default and schema.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/settings", tag = "settings", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Vec<EffectiveSetting>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<EffectiveSetting>>, ApiError> {
    Ok(Json(state.control().list_settings(&scope.ctx).await?))
}

/// `/v1/tenants/{tenant_id}/settings/{setting_key}` (the tenant was checked by the extractor).
#[derive(Deserialize)]
pub struct SettingPath {
    pub setting_key: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSetting {
    /// The new value, of the key's type.
    pub setting_value: Value,
    /// Refuse (409) if the setting changed since this version was read.
    pub expected_version: Option<i64>,
}

/// Update a setting (`admin.update_tenant_settings`, `?confirm=true`). Idempotent: the same
/// value again creates no new version. Applies to every user of the tenant at once.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/settings/{setting_key}", tag = "settings", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("setting_key" = String, Path), ("confirm" = bool, Query)),
    request_body = UpdateSetting, responses((status = 200, body = EffectiveSetting)))]
pub async fn update(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(path): Path<SettingPath>,
    Body(req): Body<UpdateSetting>,
) -> Result<Json<EffectiveSetting>, ApiError> {
    Ok(Json(
        state
            .control()
            .update_setting(
                &scope.ctx,
                &path.setting_key,
                &req.setting_value,
                req.expected_version,
            )
            .await?,
    ))
}

/// Every version of a setting, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/settings/{setting_key}/history", tag = "settings", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("setting_key" = String, Path), PageParams),
    responses((status = 200, body = Page<SettingVersion>)))]
pub async fn history(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(path): Path<SettingPath>,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<SettingVersion>>, ApiError> {
    Ok(Json(
        state
            .control()
            .setting_history(&scope.ctx, &path.setting_key, &q.page()?)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version whose value to restore.
    #[schema(minimum = 1)]
    pub version: i64,
}

/// Restore an earlier version of a setting (`?confirm=true`), as a new version.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/settings/{setting_key}/rollback", tag = "settings", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("setting_key" = String, Path), ("confirm" = bool, Query)),
    request_body = Rollback, responses((status = 200, body = EffectiveSetting)))]
pub async fn rollback(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(path): Path<SettingPath>,
    Body(req): Body<Rollback>,
) -> Result<Json<EffectiveSetting>, ApiError> {
    Ok(Json(
        state
            .control()
            .rollback_setting(&scope.ctx, &path.setting_key, req.version)
            .await?,
    ))
}

/// The features the tenant's users see.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/features", tag = "settings", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Vec<Feature>)))]
pub async fn features(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<Feature>>, ApiError> {
    Ok(Json(state.control().features(&scope.ctx).await?))
}
