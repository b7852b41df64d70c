//! A tenant's people: users (memberships), custom roles and invitations.

use super::PageParams;
use crate::extract::{Body, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::identity::{DelegationCreated, InvitationCreated, RoleView};
use agentplane_core::page::Page;
use agentplane_store::identity::{CustomRole, Delegation, Invitation, SsoConnection};
use agentplane_store::Member;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
pub struct UserPath {
    pub user_id: String,
}

#[derive(Deserialize)]
pub struct RolePath {
    pub role_name: String,
}

#[derive(Deserialize)]
pub struct InvitationPath {
    pub invitation_id: String,
}

/// One user of the tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("user_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Member)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<UserPath>,
) -> Result<Json<Member>, ApiError> {
    Ok(Json(
        state.control().get_member(&scope.ctx, &p.user_id).await?,
    ))
}

/// Change a user's roles, custom roles, status or name. Takes effect on their next request.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("user_id" = uuid::Uuid, Path)),
    request_body = agentplane_control::identity::UpdateUser, responses((status = 200, body = Member)))]
pub async fn update(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<UserPath>,
    Body(raw): Body<Value>,
) -> Result<Json<Member>, ApiError> {
    let caller = scope.principal.permissions();
    Ok(Json(
        state
            .control()
            .update_member(&scope.ctx, &caller, &p.user_id, raw)
            .await?,
    ))
}

/// Remove a user from the tenant (`?confirm=true`); their sessions end at once.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("user_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    responses((status = 204, description = "removed")))]
pub async fn remove(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<UserPath>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .remove_member(&scope.ctx, &p.user_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The built-in and custom roles with their permissions.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/roles", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = [RoleView])))]
pub async fn list_roles(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<RoleView>>, ApiError> {
    Ok(Json(state.control().list_roles(&scope.ctx).await?))
}

/// Create a custom role (within the caller's own permissions).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/roles", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    request_body = agentplane_control::identity::CreateRole, responses((status = 201, body = CustomRole)))]
pub async fn create_role(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(raw): Body<Value>,
) -> Result<(StatusCode, Json<CustomRole>), ApiError> {
    let caller = scope.principal.permissions();
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .control()
                .create_role(&scope.ctx, &caller, raw)
                .await?,
        ),
    ))
}

/// Change a custom role; its holders' next requests use the new permissions.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/roles/{role_name}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("role_name" = String, Path)),
    request_body = agentplane_control::identity::UpdateRole, responses((status = 200, body = CustomRole)))]
pub async fn update_role(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<RolePath>,
    Body(raw): Body<Value>,
) -> Result<Json<CustomRole>, ApiError> {
    let caller = scope.principal.permissions();
    Ok(Json(
        state
            .control()
            .update_role(&scope.ctx, &caller, &p.role_name, raw)
            .await?,
    ))
}

/// Delete a custom role nobody holds (`?confirm=true`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/roles/{role_name}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("role_name" = String, Path), ("confirm" = bool, Query)),
    responses((status = 204, description = "deleted")))]
pub async fn delete_role(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<RolePath>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .delete_role(&scope.ctx, &p.role_name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant's invitations (never their tokens).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/invitations", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), PageParams), responses((status = 200, body = Page<Invitation>)))]
pub async fn list_invitations(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Invitation>>, ApiError> {
    Ok(Json(
        state
            .control()
            .list_invitations(&scope.ctx, &q.page()?)
            .await?,
    ))
}

/// Invite someone by e-mail. With SMTP configured the link is mailed (a durable job);
/// without, it is in this answer, once.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/invitations", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    request_body = agentplane_control::identity::InviteUser, responses((status = 201, body = InvitationCreated)))]
pub async fn invite(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(raw): Body<Value>,
) -> Result<(StatusCode, Json<InvitationCreated>), ApiError> {
    let caller = scope.principal.permissions();
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .control()
                .invite_user(&scope.ctx, &caller, raw)
                .await?,
        ),
    ))
}

/// Revoke a pending invitation.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/invitations/{invitation_id}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("invitation_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Invitation)))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<InvitationPath>,
) -> Result<Json<Invitation>, ApiError> {
    Ok(Json(
        state
            .control()
            .revoke_invitation(&scope.ctx, &p.invitation_id)
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct DelegationPath {
    pub delegation_id: String,
}

/// The delegated tokens issued in the tenant (never the tokens themselves).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/delegations", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = [Delegation])))]
pub async fn list_delegations(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<Delegation>>, ApiError> {
    Ok(Json(state.control().list_delegations(&scope.ctx).await?))
}

/// Issue a token with which an AI agent acts for a person: bound to this tenant, at most the
/// person's (and the issuer's) permissions, expiring. Shown once.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/delegations", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    request_body = agentplane_control::identity::CreateDelegation, responses((status = 201, body = DelegationCreated)))]
pub async fn create_delegation(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(raw): Body<Value>,
) -> Result<(StatusCode, Json<DelegationCreated>), ApiError> {
    let caller = scope.principal.permissions();
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .control()
                .create_delegation(&scope.ctx, &caller, raw)
                .await?,
        ),
    ))
}

/// Revoke a delegated token: refused from the next request on.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/delegations/{delegation_id}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("delegation_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Delegation)))]
pub async fn revoke_delegation(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<DelegationPath>,
) -> Result<Json<Delegation>, ApiError> {
    Ok(Json(
        state
            .control()
            .revoke_delegation(&scope.ctx, &p.delegation_id)
            .await?,
    ))
}

/// The tenant's SCIM token for its identity provider (`?confirm=true`): shown once, with the
/// SCIM base URL; replaces the previous token.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/scim-token", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)),
    responses((status = 201, description = "`{id, token, base_url, created_at}`")))]
pub async fn create_scim_token(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.control().create_scim_token(&scope.ctx).await?),
    ))
}

/// Revoke the tenant's SCIM token (`?confirm=true`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/scim-token", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("confirm" = bool, Query)),
    responses((status = 204, description = "revoked")))]
pub async fn delete_scim_token(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<StatusCode, ApiError> {
    state.control().delete_scim_token(&scope.ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct SsoPath {
    pub connection_id: String,
}

/// The tenant's SSO connections (never their secrets).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/sso", tag = "sso", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = [SsoConnection])))]
pub async fn list_sso(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Vec<SsoConnection>>, ApiError> {
    Ok(Json(state.control().list_sso(&scope.ctx).await?))
}

/// Connect the tenant's identity provider (OIDC) or directory (LDAP).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/sso", tag = "sso", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    request_body = agentplane_control::identity::CreateSso, responses((status = 201, body = SsoConnection)))]
pub async fn create_sso(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(raw): Body<Value>,
) -> Result<(StatusCode, Json<SsoConnection>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.control().create_sso(&scope.ctx, raw).await?),
    ))
}

/// One SSO connection.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/sso/{connection_id}", tag = "sso", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("connection_id" = uuid::Uuid, Path)),
    responses((status = 200, body = SsoConnection)))]
pub async fn get_sso(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<SsoPath>,
) -> Result<Json<SsoConnection>, ApiError> {
    Ok(Json(
        state
            .control()
            .get_sso(&scope.ctx, &p.connection_id)
            .await?,
    ))
}

/// Change an SSO connection; applies to this tenant's next sign-in only.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/sso/{connection_id}", tag = "sso", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("connection_id" = uuid::Uuid, Path)),
    request_body = agentplane_control::identity::UpdateSso, responses((status = 200, body = SsoConnection)))]
pub async fn update_sso(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<SsoPath>,
    Body(raw): Body<Value>,
) -> Result<Json<SsoConnection>, ApiError> {
    Ok(Json(
        state
            .control()
            .update_sso(&scope.ctx, &p.connection_id, raw)
            .await?,
    ))
}

/// Delete an SSO connection (`?confirm=true`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/sso/{connection_id}", tag = "sso", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("connection_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    responses((status = 204, description = "deleted")))]
pub async fn delete_sso(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<SsoPath>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .delete_sso(&scope.ctx, &p.connection_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Test an SSO connection: `{ok, latency_ms, error?}`.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/sso/{connection_id}/test", tag = "sso", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("connection_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "`{ok, latency_ms, error?}`")))]
pub async fn test_sso(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<SsoPath>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        state
            .control()
            .test_sso(&scope.ctx, &p.connection_id)
            .await?,
    ))
}

/// Erase a data subject (`?confirm=true`): a durable job removes everything the tenant holds
/// about them and signs a receipt (its id is the job's id).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/users/{user_id}/erase", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("user_id" = uuid::Uuid, Path), ("confirm" = bool, Query)),
    responses((status = 202, body = agentplane_core::job::Job)))]
pub async fn erase(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<UserPath>,
) -> Result<(StatusCode, Json<agentplane_core::job::Job>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(
            state
                .control()
                .request_erasure(&scope.ctx, &p.user_id)
                .await?,
        ),
    ))
}

#[derive(Deserialize)]
pub struct ReceiptPath {
    pub receipt_id: String,
}

/// A signed erasure receipt.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/erasures/{receipt_id}", tag = "users", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), ("receipt_id" = uuid::Uuid, Path)),
    responses((status = 200, body = agentplane_store::identity::ErasureReceipt)))]
pub async fn erasure_receipt(
    State(state): State<AppState>,
    scope: TenantScope,
    Path(p): Path<ReceiptPath>,
) -> Result<Json<agentplane_store::identity::ErasureReceipt>, ApiError> {
    Ok(Json(
        state
            .control()
            .erasure_receipt(&scope.ctx, &p.receipt_id)
            .await?,
    ))
}
