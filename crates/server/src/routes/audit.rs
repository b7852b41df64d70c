use super::usage::parse_time;
use super::PageParams;
use crate::extract::{Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_core::audit::AuditEvent;
use agentplane_core::page::Page;
use agentplane_store::AuditFilter;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditParams {
    /// Only events of this action (e.g. `tenant.suspend`).
    pub action: Option<String>,
    /// Only events of this actor.
    pub actor_id: Option<String>,
    /// Start, inclusive: `YYYY-MM-DD` or RFC 3339.
    pub from: Option<String>,
    /// End, exclusive.
    pub to: Option<String>,
    /// Why the trail is read; recorded in the trail.
    pub purpose: Option<String>,
    /// Opaque cursor from the previous page's `next_cursor`.
    #[param(pattern = "^([0-9a-f]{2})*$", max_length = 512)]
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Search the tenant's audit trail, newest first. The read is itself recorded.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/audit", tag = "audit", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), AuditParams), responses((status = 200, body = Page<AuditEvent>)))]
pub async fn list(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<AuditParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let page = PageParams {
        cursor: q.cursor,
        limit: q.limit,
    }
    .page()?;
    let filter = AuditFilter {
        action: q.action,
        actor_id: q.actor_id,
        from: parse_time("from", q.from.as_deref())?,
        to: parse_time("to", q.to.as_deref())?,
    };
    let store = state.control().store().as_ref();
    Ok(Json(
        agentplane_audit::read_trail(store, &scope.ctx, &filter, &page, q.purpose.as_deref())
            .await?,
    ))
}
