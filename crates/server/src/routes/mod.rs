//! The router. Admin routes are built from the action registry: each declared action is
//! mounted at its declared method and path, and its extractor checks the permission the
//! registry declares for it. A test checks that every declared action is routed.

mod agents;
mod api_keys;
mod audit;
mod auth;
mod branding;
mod console;
mod exports;
mod gateway;
mod jobs;
mod meta;
mod plans;
mod providers;
mod scim;
mod settings;
mod tenants;
mod usage;
mod users;
mod webhooks;

use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::{IdempotencyKey, Replayable};
use agentplane_core::action::{ActionSpec, Method, REGISTRY};
use agentplane_core::authz::Principal;
use agentplane_core::page::PageRequest;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, post, MethodFilter, MethodRouter};
use axum::Router;
use serde::Deserialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use meta::ApiDoc;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Patch => MethodFilter::PATCH,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// The handler of a declared action.
pub fn action_route(spec: &ActionSpec) -> Option<MethodRouter<AppState>> {
    let f = filter(spec.method);
    Some(match spec.intent {
        "admin.debug_identity" => on(f, meta::debug_identity),
        "admin.list_plans" => on(f, plans::list),
        "admin.get_plan" => on(f, plans::get),
        "admin.create_plan" => on(f, plans::create),
        "admin.list_tenants" => on(f, tenants::list),
        "admin.create_tenant" => on(f, tenants::create),
        "admin.get_tenant" => on(f, tenants::get),
        "admin.change_tenant_plan" => on(f, tenants::change_plan),
        "admin.move_tenant_region" => on(f, tenants::move_region),
        "admin.suspend_tenant" => on(f, tenants::suspend),
        "admin.reactivate_tenant" => on(f, tenants::reactivate),
        "admin.delete_tenant" => on(f, tenants::delete),
        "admin.purge_tenant" => on(f, tenants::purge),
        "admin.list_users" => on(f, tenants::list_users),
        "admin.get_user" => on(f, users::get),
        "admin.update_user" => on(f, users::update),
        "admin.remove_user" => on(f, users::remove),
        "admin.list_roles" => on(f, users::list_roles),
        "admin.create_role" => on(f, users::create_role),
        "admin.update_role" => on(f, users::update_role),
        "admin.delete_role" => on(f, users::delete_role),
        "admin.list_invitations" => on(f, users::list_invitations),
        "admin.invite_user" => on(f, users::invite),
        "admin.revoke_invitation" => on(f, users::revoke_invitation),
        "admin.list_delegations" => on(f, users::list_delegations),
        "admin.create_delegation" => on(f, users::create_delegation),
        "admin.revoke_delegation" => on(f, users::revoke_delegation),
        "admin.create_scim_token" => on(f, users::create_scim_token),
        "admin.erase_user" => on(f, users::erase),
        "admin.export_tenant_data" => on(f, exports::create),
        "admin.list_exports" => on(f, exports::list),
        "admin.get_export" => on(f, exports::get),
        "admin.create_export_link" => on(f, exports::link),
        "admin.import_tenant" => on(f, exports::import),
        "admin.list_backups" => on(f, exports::list_backups),
        "admin.get_backup" => on(f, exports::get_backup),
        "admin.create_backup" => on(f, exports::create_backup),
        "admin.verify_backup" => on(f, exports::verify_backup),
        "admin.restore_backup" => on(f, exports::restore_backup),
        "admin.list_shared_providers" => on(f, providers::list_shared),
        "admin.create_shared_provider" => on(f, providers::create_shared),
        "admin.update_shared_provider" => on(f, providers::update_shared),
        "admin.list_available_shared_providers" => on(f, providers::available_shared),
        "admin.attach_shared_provider" => on(f, providers::attach_shared),
        "admin.get_erasure_receipt" => on(f, users::erasure_receipt),
        "admin.delete_scim_token" => on(f, users::delete_scim_token),
        "admin.list_sso_connections" => on(f, users::list_sso),
        "admin.create_sso_connection" => on(f, users::create_sso),
        "admin.get_sso_connection" => on(f, users::get_sso),
        "admin.update_sso_connection" => on(f, users::update_sso),
        "admin.delete_sso_connection" => on(f, users::delete_sso),
        "admin.test_sso_connection" => on(f, users::test_sso),
        "admin.rotate_signing_key" => on(f, auth::rotate_signing_key),
        "admin.get_tenant_usage" => on(f, usage::tenant_usage),
        "admin.export_usage" => on(f, usage::export),
        "admin.run_next_job" => on(f, tenants::run_next_job),
        "admin.run_retention" => on(f, jobs::run_retention),
        "admin.list_audit_events" => on(f, audit::list),
        "admin.list_tenant_settings" => on(f, settings::list),
        "admin.update_tenant_settings" => on(f, settings::update),
        "admin.get_setting_history" => on(f, settings::history),
        "admin.rollback_tenant_setting" => on(f, settings::rollback),
        "admin.get_tenant_features" => on(f, settings::features),
        "admin.get_branding" => on(f, branding::get),
        "admin.update_branding" => on(f, branding::update),
        "admin.upload_logo" => on(f, branding::upload_logo),
        "admin.get_logo" => on(f, branding::logo),
        "admin.delete_logo" => on(f, branding::delete_logo),
        "admin.get_webhook" => on(f, webhooks::get),
        "admin.get_residency_report" => on(f, tenants::residency),
        "admin.list_jobs" => on(f, jobs::list),
        "admin.get_job" => on(f, jobs::get),
        "admin.cancel_job" => on(f, jobs::cancel),
        "admin.set_webhook" => on(f, webhooks::put),
        "admin.delete_webhook" => on(f, webhooks::delete),
        "admin.list_providers" => on(f, providers::list),
        "admin.create_provider" => on(f, providers::create),
        "admin.get_provider" => on(f, providers::get),
        "admin.update_provider" => on(f, providers::update),
        "admin.delete_provider" => on(f, providers::delete),
        "admin.test_provider" => on(f, providers::test),
        "admin.list_tenant_keys" => on(f, providers::keys),
        "admin.rotate_tenant_key" => on(f, providers::rotate_tenant_key),
        "admin.rotate_master_key" => on(f, providers::rotate_master_key),
        "admin.list_agents" => on(f, agents::list),
        "admin.create_agent" => on(f, agents::create),
        "admin.get_agent" => on(f, agents::get),
        "admin.update_agent" => on(f, agents::update),
        "admin.delete_agent" => on(f, agents::delete),
        "admin.list_agent_versions" => on(f, agents::versions),
        "admin.list_api_keys" => on(f, api_keys::list),
        "admin.create_api_key" => on(f, api_keys::create),
        "admin.revoke_api_key" => on(f, api_keys::revoke),
        _ => return None,
    })
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut r = Router::new()
        .route("/health", get(meta::health))
        .route("/openapi.json", get(meta::openapi))
        .route("/v1/axag/manifest", get(meta::manifest))
        .route("/v1/models", get(gateway::models))
        .route("/v1/chat/completions", post(gateway::chat_completions))
        .route("/v1/tenants/{tenant_id}/runs", post(gateway::run))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/v1/downloads/{token}", get(exports::download))
        .route("/console", get(console::root))
        .route("/console/app.js", get(console::app_js))
        .route("/console/icon.svg", get(console::icon))
        .route("/console/{tenant}", get(console::tenant))
        .route("/console/{tenant}/logo", get(console::logo))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/auth/{tenant}/token", post(auth::tenant_token))
        .route("/v1/auth/invitations/accept", post(auth::accept_invitation))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/me", get(auth::me))
        .route(
            "/v1/auth/{tenant}/sso/{connection_id}/start",
            get(auth::sso_start),
        )
        .route("/v1/auth/sso/callback", get(auth::sso_callback))
        .route("/v1/auth/sso/saml/acs", post(auth::saml_acs))
        .route(
            "/v1/auth/{tenant}/sso/{connection_id}/saml-metadata",
            get(auth::saml_metadata),
        )
        .route(
            "/scim/v2/ServiceProviderConfig",
            get(scim::service_provider_config),
        )
        .route(
            "/scim/v2/Users",
            get(scim::list_users).post(scim::create_user),
        )
        .route(
            "/scim/v2/Users/{id}",
            get(scim::get_user)
                .put(scim::replace_user)
                .patch(scim::patch_user)
                .delete(scim::delete_user),
        )
        .route(
            "/scim/v2/Groups",
            get(scim::list_groups).post(scim::create_group),
        )
        .route(
            "/scim/v2/Groups/{id}",
            get(scim::get_group)
                .put(scim::replace_group)
                .patch(scim::patch_group)
                .delete(scim::delete_group),
        );
    for spec in REGISTRY {
        match action_route(spec) {
            Some(mr) => r = r.route(spec.path, mr),
            None => tracing::error!(intent = spec.intent, "declared action has no handler"),
        }
    }
    r.fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            axum::response::IntoResponse::into_response(ApiError::internal())
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The request's `Idempotency-Key`, scoped to the operation and the caller.
pub(crate) fn idempotency_key(
    headers: &HeaderMap,
    operation: &str,
    caller: &Principal,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key", "must be visible ASCII"))?;
    Ok(Some(IdempotencyKey::parse(
        format!("{operation}:{}", caller.subject),
        key,
    )?))
}

/// The response of a creating request (fresh or replayed), with its `Location`.
pub(crate) fn created(out: Replayable, location: Option<String>) -> Response {
    let status = StatusCode::from_u16(out.status).unwrap_or(StatusCode::CREATED);
    let mut res = (status, axum::Json(out.body)).into_response();
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    if out.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// `?cursor=&limit=` of every list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct PageParams {
    /// Opaque cursor from the previous page's `next_cursor`.
    #[param(pattern = "^([0-9a-f]{2})*$", max_length = 512)]
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

impl PageParams {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest::new(self.cursor.as_deref(), self.limit)?)
    }
}
