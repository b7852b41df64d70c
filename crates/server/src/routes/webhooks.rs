use crate::extract::{Body, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{CreatedWebhook, PutWebhook};
use agentplane_core::webhook::Webhook;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// The tenant's usage-notification webhook.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/webhook", tag = "usage", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Webhook)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(state.control().webhook(&scope.ctx).await?))
}

/// Sets the webhook that hears when usage crosses 80% and 100% of a monthly quota. Every call
/// makes a new signing secret (shown once): deliveries carry `webhook-id`,
/// `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/webhook", tag = "usage", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), request_body = PutWebhook,
    responses((status = 200, body = CreatedWebhook)))]
pub async fn put(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(req): Body<PutWebhook>,
) -> Result<Json<CreatedWebhook>, ApiError> {
    Ok(Json(state.control().put_webhook(&scope.ctx, req).await?))
}

/// Removes the webhook: notifications are no longer sent.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/webhook", tag = "usage", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 204)))]
pub async fn delete(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<StatusCode, ApiError> {
    state.control().delete_webhook(&scope.ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}
