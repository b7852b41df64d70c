use crate::extract::PlatformScope;
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_core::authz::Principal;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub database: &'static str,
    pub version: &'static str,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Health), (status = 503, description = "database unreachable")))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.control().store().ping().await?;
    let database = match state.control().store().backend() {
        agentplane_store::Backend::Sqlite => "sqlite",
        agentplane_store::Backend::Postgres => "postgres",
    };
    Ok(Json(Health {
        status: "ok",
        database,
        version: env!("CARGO_PKG_VERSION"),
    }))
}

/// How the server reads the caller's token: roles, scopes and tenant access.
#[utoipa::path(get, path = "/v1/admin/debug/identity", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Principal), (status = 401, description = "no or bad token")))]
pub async fn debug_identity(scope: PlatformScope) -> Json<Principal> {
    Json(scope.principal)
}

/// The tenant-scoped AXAG semantic manifest, generated from the action registry.
#[utoipa::path(get, path = "/v1/axag/manifest", tag = "meta", responses((status = 200, description = "AXAG manifest")))]
pub async fn manifest() -> Json<Value> {
    Json(agentplane_core::action::tenant_manifest())
}

/// This document.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], ApiDoc::json())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Agentplane", description = "Multi-tenant platform for hosting AI agents"),
    paths(
        health, debug_identity, manifest,
        super::plans::list, super::plans::get, super::plans::create,
        super::tenants::create, super::tenants::get, super::tenants::list, super::tenants::change_plan, super::tenants::move_region,
        super::tenants::suspend, super::tenants::reactivate, super::tenants::delete, super::tenants::purge,
        super::tenants::list_users, super::tenants::run_next_job, super::jobs::run_retention,
        super::usage::tenant_usage, super::usage::export,
        super::audit::list,
        super::settings::list, super::settings::update, super::settings::history, super::settings::rollback,
        super::settings::features,
        super::branding::get, super::branding::update, super::branding::upload_logo, super::branding::logo,
        super::branding::delete_logo, super::webhooks::get, super::webhooks::put,
        super::webhooks::delete, super::tenants::residency, super::jobs::list, super::jobs::get,
        super::jobs::cancel,
        super::providers::list, super::providers::create, super::providers::get, super::providers::update,
        super::providers::delete, super::providers::test, super::providers::keys, super::providers::rotate_tenant_key,
        super::providers::rotate_master_key,
        super::agents::list, super::agents::create, super::agents::get, super::agents::update, super::agents::delete,
        super::agents::versions,
        super::api_keys::list, super::api_keys::create, super::api_keys::revoke, super::gateway::models,
        super::gateway::chat_completions, super::gateway::run,
        super::users::get, super::users::update, super::users::remove, super::users::list_roles,
        super::users::create_role, super::users::update_role, super::users::delete_role,
        super::users::list_invitations, super::users::invite, super::users::revoke_invitation,
        super::users::list_delegations, super::users::create_delegation, super::users::revoke_delegation,
        super::users::create_scim_token, super::users::delete_scim_token,
        super::users::erase, super::users::erasure_receipt,
        super::exports::create, super::exports::list, super::exports::get, super::exports::link,
        super::exports::download, super::exports::import, super::exports::list_backups,
        super::exports::get_backup, super::exports::create_backup, super::exports::verify_backup,
        super::exports::restore_backup,
        super::providers::list_shared, super::providers::create_shared, super::providers::update_shared,
        super::providers::available_shared, super::providers::attach_shared,
        super::users::list_sso, super::users::create_sso, super::users::get_sso, super::users::update_sso,
        super::users::delete_sso, super::users::test_sso, super::auth::sso_start, super::auth::sso_callback,
        super::auth::saml_acs, super::auth::saml_metadata,
        super::auth::token, super::auth::tenant_token, super::auth::accept_invitation,
        super::auth::logout, super::auth::me, super::auth::jwks, super::auth::rotate_signing_key,
    ),
    components(schemas(Problem, super::usage::ExportFormat)),
    modifiers(&BearerAuth, &ProblemResponses)
)]
pub struct ApiDoc;

impl ApiDoc {
    pub fn json() -> String {
        let doc = Self::openapi();
        doc.to_pretty_json()
            .unwrap_or_else(|e| json!({"error": e.to_string()}).to_string())
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ap_live_...")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// An RFC 9457 problem, as every error of the API is answered.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:agentplane:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable error code.
    pub code: String,
}

/// Documents the problem responses every operation can give, where not documented already.
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // The OpenAI-compatible gateway documents its own (OpenAI-shaped) errors.
            if path.starts_with("/v1/models") || path.starts_with("/v1/chat") {
                continue;
            }
            let public = matches!(path.as_str(), "/health" | "/v1/axag/manifest");
            let ops = [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PATCH", &mut item.patch),
                ("PUT", &mut item.put),
                ("DELETE", &mut item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let confirm = agentplane_core::action::REGISTRY.iter().any(|a| {
                    a.path == path && a.method.as_str() == method && a.confirmation_required
                });
                let mut add = |code: &str, desc: &str| {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| problem(desc).into());
                };
                if !public {
                    add("400", "Malformed request (JSON syntax, query string)");
                    add("401", "Missing or invalid bearer token");
                    add(
                        "403",
                        "The caller lacks the permission, or the tenant is suspended",
                    );
                    add("404", "Not found, or not visible to the caller");
                    add("413", "Request body too large");
                    add("415", "Body is not application/json");
                    add("422", "Validation failed; `field` names the culprit");
                }
                if method != "GET" {
                    add(
                        "409",
                        "Conflict: the state machine refuses it, or a concurrent change won",
                    );
                }
                if confirm {
                    add("428", "Confirmation required: repeat with `?confirm=true`");
                }
                add("405", "Method not allowed");
                add("503", "The database is unavailable; retry later");
            }
        }
    }
}
