use super::PageParams;
use crate::extract::{Body, PlatformScope, Query};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::CreatePlan;
use agentplane_core::page::Page;
use agentplane_core::plan::Plan;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde_json::Value;

/// List plans.
#[utoipa::path(get, path = "/v1/admin/plans", tag = "plans", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Plan>)))]
pub async fn list(
    State(state): State<AppState>,
    _scope: PlatformScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Plan>>, ApiError> {
    Ok(Json(state.control().list_plans(&q.page()?).await?))
}

/// Show a plan.
#[utoipa::path(get, path = "/v1/admin/plans/{plan_id}", tag = "plans", security(("bearer" = [])),
    params(("plan_id" = String, Path)), responses((status = 200, body = Plan), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    _scope: PlatformScope,
    Path(id): Path<String>,
) -> Result<Json<Plan>, ApiError> {
    Ok(Json(state.control().get_plan(&id).await?))
}

/// Create a plan. Send an `Idempotency-Key` to retry safely.
#[utoipa::path(post, path = "/v1/admin/plans", tag = "plans", security(("bearer" = [])), request_body = CreatePlan,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, unique per caller")),
    responses((status = 201, body = Plan), (status = 409, description = "plan id taken"), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    scope: PlatformScope,
    headers: HeaderMap,
    Body(raw): Body<Value>,
) -> Result<Response, ApiError> {
    let idem = super::idempotency_key(&headers, "plans.create", &scope.principal)?;
    let out = state.control().create_plan(&scope.ctx, raw, idem).await?;
    let location = out.body["id"]
        .as_str()
        .map(|id| format!("/v1/admin/plans/{id}"));
    Ok(super::created(out, location))
}
