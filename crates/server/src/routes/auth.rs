//! Sign-in, sessions and the signing keys' JWKS. These routes are not admin actions: the
//! caller has no token yet (sign-in, refresh, invitation acceptance) or acts on their own
//! session only (sign-out, who am I).

use crate::extract::{Authenticated, Body, PlatformScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::identity::{TenantHints, TokenPair, WhoAmI};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
pub struct TenantPath {
    pub tenant: String,
}

fn host(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

/// Tokens are credentials: never cached.
fn no_store(body: TokenPair) -> Response {
    let mut res = Json(body).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Sign in (`grant_type: password`, with `tenant`, `email`, `password`) or refresh
/// (`grant_type: refresh_token`). The tenant may also come from the subdomain.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth",
    request_body = agentplane_control::identity::PasswordGrant, responses((status = 200, body = TokenPair)))]
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(raw): Body<Value>,
) -> Result<Response, ApiError> {
    let hints = TenantHints {
        host: host(&headers),
        ..Default::default()
    };
    Ok(no_store(state.control().token(hints, raw).await?))
}

/// Sign in to the tenant named by the path (its slug or id).
#[utoipa::path(post, path = "/v1/auth/{tenant}/token", tag = "auth",
    params(("tenant" = String, Path, description = "the tenant's slug or id")),
    request_body = agentplane_control::identity::PasswordGrant, responses((status = 200, body = TokenPair)))]
pub async fn tenant_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<TenantPath>,
    Body(raw): Body<Value>,
) -> Result<Response, ApiError> {
    let hints = TenantHints {
        host: host(&headers),
        path: Some(p.tenant),
        body: None,
    };
    Ok(no_store(state.control().token(hints, raw).await?))
}

/// Accept an invitation: joins its tenant (creating or linking the account) and signs in.
#[utoipa::path(post, path = "/v1/auth/invitations/accept", tag = "auth",
    request_body = agentplane_control::identity::AcceptInvitation, responses((status = 200, body = TokenPair)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    Body(raw): Body<Value>,
) -> Result<Response, ApiError> {
    Ok(no_store(state.control().accept_invitation(raw).await?))
}

/// Sign out: the session's access and refresh tokens stop working at once.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "signed out")))]
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<StatusCode, ApiError> {
    state.control().sign_out(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller, the tenant their token reaches, and what they may do there.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI)))]
pub async fn me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<WhoAmI>, ApiError> {
    Ok(Json(state.control().who_am_i(&principal).await?))
}

/// The public keys that verify Agentplane's access tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWKS")))]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut res = Json(state.control().jwks()?).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(res)
}

/// Rotate the access-token signing key (`?confirm=true`).
#[utoipa::path(post, path = "/v1/admin/signing-keys/rotate", tag = "auth", security(("bearer" = [])),
    params(("confirm" = bool, Query)), responses((status = 200, description = "the new key id and the JWKS")))]
pub async fn rotate_signing_key(
    State(state): State<AppState>,
    scope: PlatformScope,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.control().rotate_signing_key(&scope.ctx).await?))
}

#[derive(Deserialize)]
pub struct SsoStartPath {
    pub tenant: String,
    pub connection_id: String,
}

/// Start signing in through the tenant's OIDC provider: 303 to the provider.
#[utoipa::path(get, path = "/v1/auth/{tenant}/sso/{connection_id}/start", tag = "auth",
    params(("tenant" = String, Path, description = "the tenant's slug or id"), ("connection_id" = uuid::Uuid, Path)),
    responses((status = 303, description = "to the tenant's identity provider")))]
pub async fn sso_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<SsoStartPath>,
) -> Result<Response, ApiError> {
    let hints = TenantHints {
        host: host(&headers),
        path: Some(p.tenant),
        body: None,
    };
    let url = state.control().start_sso(&hints, &p.connection_id).await?;
    let mut res = StatusCode::SEE_OTHER.into_response();
    let location = HeaderValue::from_str(&url).map_err(|_| ApiError::internal())?;
    res.headers_mut().insert(header::LOCATION, location);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct Callback {
    /// The authorization code.
    #[param(max_length = 2048)]
    pub code: Option<String>,
    #[param(max_length = 256)]
    pub state: Option<String>,
    /// The provider's refusal, if it refused.
    #[param(max_length = 128)]
    pub error: Option<String>,
    /// RFC 9207: the provider that answered; must be the connection's issuer when given.
    #[param(max_length = 512)]
    pub iss: Option<String>,
    /// Other parameters providers send (`error_description`, `session_state`) are ignored.
    #[param(max_length = 512)]
    #[serde(rename = "error_description")]
    pub _error_description: Option<String>,
    #[param(max_length = 256)]
    #[serde(rename = "session_state")]
    pub _session_state: Option<String>,
}

/// The OIDC provider's redirect back: the tenant and connection come from `state` only.
#[utoipa::path(get, path = "/v1/auth/sso/callback", tag = "auth", params(Callback),
    responses((status = 200, body = TokenPair)))]
pub async fn sso_callback(
    State(state): State<AppState>,
    crate::extract::Query(q): crate::extract::Query<Callback>,
) -> Result<Response, ApiError> {
    if let Some(e) = q.error {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sso_refused",
            "Sign-in refused",
            format!(
                "the identity provider refused the sign-in: {}",
                e.chars().take(64).collect::<String>()
            ),
        ));
    }
    let tokens = state
        .control()
        .finish_sso(
            q.state.as_deref().unwrap_or_default(),
            q.code.as_deref().unwrap_or_default(),
            q.iss.as_deref(),
        )
        .await?;
    Ok(no_store(tokens))
}

/// The IdP's HTTP-POST to our Assertion Consumer Service.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    #[schema(max_length = 262144)]
    pub saml_response: String,
    #[serde(rename = "RelayState")]
    #[schema(max_length = 256)]
    pub relay_state: String,
}

/// SAML 2.0 Assertion Consumer Service (HTTP-POST binding), SP-initiated only: the tenant
/// and connection come from `RelayState`; the signed assertion is validated and consumed once.
#[utoipa::path(post, path = "/v1/auth/sso/saml/acs", tag = "auth",
    request_body(content = AcsForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenPair)))]
pub async fn saml_acs(
    State(state): State<AppState>,
    form: Result<axum::Form<AcsForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let axum::Form(f) = form.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "Invalid body",
            format!("expected a SAMLResponse and a RelayState form: {e}"),
        )
    })?;
    Ok(no_store(
        state
            .control()
            .finish_saml(&f.relay_state, &f.saml_response)
            .await?,
    ))
}

/// The SP metadata of a tenant's SAML connection (for the IdP's administrator).
#[utoipa::path(get, path = "/v1/auth/{tenant}/sso/{connection_id}/saml-metadata", tag = "auth",
    params(("tenant" = String, Path, description = "the tenant's slug or id"), ("connection_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "SAML metadata", content_type = "application/samlmetadata+xml")))]
pub async fn saml_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<SsoStartPath>,
) -> Result<Response, ApiError> {
    let hints = TenantHints {
        host: host(&headers),
        path: Some(p.tenant),
        body: None,
    };
    let xml = state
        .control()
        .saml_metadata(&hints, &p.connection_id)
        .await?;
    let mut res = xml.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/samlmetadata+xml"),
    );
    Ok(res)
}
