//! Extractors: the tenant wall. A handler that takes [`TenantScope`] receives a `TenantCtx`
//! only after the bearer token was verified, the caller's access to the path's tenant was
//! checked (another tenant's id answers 404, like a missing one), the permission that the
//! action registry declares for the matched route was checked, the tenant's state allows
//! the action, and a required confirmation was given. [`PlatformScope`] does the same for
//! cross-tenant actions. Body and query extractors answer bad input with problem+json.

use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_core::action::ActionSpec;
use agentplane_core::audit::{Chain, NewAuditEvent, Outcome};
use agentplane_core::authz::{AuthzError, PlatformCtx, Principal, TenantCtx};
use agentplane_core::tenant::TenantStatus;
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The verified caller.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Self(p.clone()));
        }
        let token = crate::auth::bearer_token(&parts.headers)?;
        // Agentplane's own session tokens are verified by the control plane (and re-read
        // the membership); everything else by the operators' identity provider.
        let principal = if state.control().issued_here(token) {
            state.control().verify_access_token(token).await?
        } else {
            state.verifier().verify(token).await?
        };
        parts.extensions.insert(principal.clone());
        Ok(Self(principal))
    }
}

fn action_of(parts: &Parts, state: &AppState) -> Result<&'static ActionSpec, ApiError> {
    let path = parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or_default();
    state.action(&parts.method, path).ok_or_else(|| {
        tracing::error!(path, "route is not declared in the action registry");
        ApiError::internal()
    })
}

fn check_confirmation(parts: &Parts, spec: &ActionSpec) -> Result<(), ApiError> {
    if !spec.confirmation_required {
        return Ok(());
    }
    let confirmed = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "confirm=true"));
    if confirmed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "confirmation_required",
            "Confirmation required",
            format!(
                "{} is a {}-risk action: repeat the request with ?confirm=true",
                spec.intent,
                spec.risk_level.as_str()
            ),
        )
        .with("intent", json!(spec.intent)))
    }
}

/// The `{tenant_id}` of the path. A malformed id is answered like a missing tenant.
fn path_tenant(parts: &Parts) -> Result<TenantId, ApiError> {
    let path = parts.uri.path();
    let seg = path
        .strip_prefix("/v1/tenants/")
        .or_else(|| path.strip_prefix("/v1/admin/tenants/"))
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(ApiError::not_found)?;
    seg.parse().map_err(|_| ApiError::not_found())
}

/// A tenant-scoped action, authorized.
pub struct TenantScope {
    pub ctx: TenantCtx,
    pub principal: Principal,
    pub action: &'static ActionSpec,
}

impl FromRequestParts<AppState> for TenantScope {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let action = action_of(parts, state)?;
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        let tenant = path_tenant(parts)?;
        let ctx = match principal.authorize_tenant(tenant, action.permission) {
            Ok(ctx) => ctx,
            Err(e) => return Err(deny(state, &principal, tenant, action, e).await),
        };
        let status = state
            .control()
            .tenant_status(tenant)
            .await?
            .ok_or_else(ApiError::not_found)?;
        if !principal.is_platform_admin() && !action.tenant_states.contains(&status) {
            return Err(state_refusal(status));
        }
        check_confirmation(parts, action)?;
        Ok(Self {
            ctx,
            principal,
            action,
        })
    }
}

/// Refusals of callers who do reach the tenant are recorded in its trail; callers who do
/// not reach it get the same 404 as for a missing tenant and are only logged, so they
/// cannot write into another tenant's trail.
async fn deny(
    state: &AppState,
    principal: &Principal,
    tenant: TenantId,
    action: &ActionSpec,
    e: AuthzError,
) -> ApiError {
    match &e {
        AuthzError::NoTenantAccess => {
            tracing::warn!(subject = %principal.subject, %tenant, intent = action.intent, "cross-tenant access refused");
        }
        AuthzError::MissingPermission(p) => {
            if let Ok(Some(_)) = state.control().tenant_status(tenant).await {
                let ev = NewAuditEvent::new(
                    Chain::Tenant(tenant),
                    "access.denied",
                    &principal.actor(),
                    Timestamp::now(),
                )
                .outcome(Outcome::Denied)
                .target("action", action.intent)
                .data(json!({"required_permission": p}));
                if let Err(err) = state.control().store().append_audit(ev).await {
                    tracing::error!(error = %err, "could not record a denied access");
                }
            }
        }
    }
    e.into()
}

fn state_refusal(status: TenantStatus) -> ApiError {
    match status {
        TenantStatus::Deleted => ApiError::not_found(),
        TenantStatus::Suspended => ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_suspended",
            "Tenant suspended",
            "this tenant is suspended; contact the platform operator",
        ),
        TenantStatus::Provisioning => ApiError::new(
            StatusCode::CONFLICT,
            "tenant_provisioning",
            "Tenant not ready",
            "this tenant is still being provisioned; retry shortly",
        )
        .header(axum::http::header::RETRY_AFTER, "1"),
        TenantStatus::Active => ApiError::internal(),
    }
}

/// A cross-tenant (platform) action, authorized.
pub struct PlatformScope {
    pub ctx: PlatformCtx,
    pub principal: Principal,
    pub action: &'static ActionSpec,
}

impl FromRequestParts<AppState> for PlatformScope {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let action = action_of(parts, state)?;
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        let ctx = principal.authorize_platform(action.permission)?;
        check_confirmation(parts, action)?;
        Ok(Self {
            ctx,
            principal,
            action,
        })
    }
}

/// A JSON body; bad JSON, a wrong content type or an oversized body is a problem+json.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(rej) => return Err(json_rejection(rej)),
        };
        from_object(value).map(Self)
    }
}

/// Every request body is a JSON object: serde would otherwise also read a struct from a
/// positional array.
fn from_object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "Validation failed",
            e.to_string(),
        )
    })
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    let status = rej.status();
    let detail = rej.body_text();
    match rej {
        JsonRejection::JsonDataError(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "Validation failed",
            detail,
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed_json", detail),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send the body as application/json",
        ),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            detail,
        ),
        _ => ApiError::bad_request("bad_body", detail),
    }
}

/// Query parameters; bad ones are a problem+json.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // No identifier, filter or cursor may carry a NUL (PostgreSQL text cannot hold one).
        if let Some(field) = parts.uri.query().and_then(nul_field) {
            return Err(ApiError::validation(&field, "must not contain NUL"));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rej @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("bad_query", rej.body_text()))
            }
            Err(rej) => Err(ApiError::bad_request("bad_query", rej.body_text())),
        }
    }
}

/// The name of the first query parameter whose value holds an encoded NUL.
fn nul_field(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        value
            .to_ascii_lowercase()
            .contains("%00")
            .then(|| key.chars().take(64).collect())
    })
}

/// A JSON body that may be absent (empty). Present bodies are parsed like [`Body`].
pub struct OptionalBody<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rej| {
                if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "Payload too large",
                        rej.body_text(),
                    )
                } else {
                    ApiError::bad_request("bad_body", rej.body_text())
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("malformed_json", e.to_string()))?;
        from_object(value).map(|v| Self(Some(v)))
    }
}
