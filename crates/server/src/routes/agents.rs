use super::PageParams;
use crate::extract::{Body, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{CreateAgent, UpdateAgent};
use agentplane_core::agent::Agent;
use agentplane_core::page::Page;
use agentplane_store::AgentVersion;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// `/v1/tenants/{tenant_id}/agents/{agent_id}` (the tenant was checked by the extractor).
#[derive(Deserialize)]
pub struct AgentPath {
    pub agent_id: String,
}

/// The tenant's agents.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/agents", tag = "agents", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams), responses((status = 200, body = Page<Agent>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Agent>>, ApiError> {
    Ok(Json(
        state.control().list_agents(&scope.ctx, &q.page()?).await?,
    ))
}

/// Create an agent (version 1).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/agents", tag = "agents", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), request_body = CreateAgent,
    responses((status = 201, body = Agent), (status = 409, description = "name taken")))]
pub async fn create(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<CreateAgent>,
) -> Result<Response, ApiError> {
    let a = state.control().create_agent(&scope.ctx, req).await?;
    let mut res = (StatusCode::CREATED, Json(&a)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/tenants/{}/agents/{}", a.tenant_id, a.id))
    {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

/// One agent.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("agent_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Agent)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<AgentPath>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(state.control().agent(&scope.ctx, &p.agent_id).await?))
}

/// Change an agent: a new version.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("agent_id" = uuid::Uuid, Path)),
    request_body = UpdateAgent, responses((status = 200, body = Agent)))]
pub async fn update(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<AgentPath>,
    Body(req): Body<UpdateAgent>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(
        state
            .control()
            .update_agent(&scope.ctx, &p.agent_id, req)
            .await?,
    ))
}

/// Delete an agent (`?confirm=true`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("agent_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    responses((status = 204, description = "deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<AgentPath>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .delete_agent(&scope.ctx, &p.agent_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every version of an agent, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/agents/{agent_id}/versions", tag = "agents", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("agent_id" = uuid::Uuid, Path), PageParams),
    responses((status = 200, body = Page<AgentVersion>)))]
pub async fn versions(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<AgentPath>,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<AgentVersion>>, ApiError> {
    Ok(Json(
        state
            .control()
            .agent_versions(&scope.ctx, &p.agent_id, &q.page()?)
            .await?,
    ))
}
