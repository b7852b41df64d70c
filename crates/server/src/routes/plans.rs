use super::PageParams;
use crate::extract::{Body, PlatformScope, Query};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::CreatePlan;
use agentplane_core::page::Page;
use agentplane_core::plan::Plan;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

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

/// Create a plan.
#[utoipa::path(post, path = "/v1/admin/plans", tag = "plans", security(("bearer" = [])), request_body = CreatePlan,
    responses((status = 201, body = Plan), (status = 409, description = "plan id taken"), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    scope: PlatformScope,
    Body(req): Body<CreatePlan>,
) -> Result<(StatusCode, Json<Plan>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.control().create_plan(&scope.ctx, req).await?),
    ))
}
