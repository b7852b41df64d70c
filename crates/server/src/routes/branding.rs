use crate::extract::{Body, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::BrandingPatch;
use agentplane_core::branding::{Branding, MAX_LOGO_BYTES};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The tenant's branding (members may read it: the console applies it for them).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/branding", tag = "branding", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Branding)))]
pub async fn get(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Branding>, ApiError> {
    Ok(Json(state.control().branding(&scope.ctx).await?))
}

/// Change product name, colours or custom domain. Absent fields stay; `null` clears.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/branding", tag = "branding", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), request_body = BrandingPatch,
    responses((status = 200, body = Branding), (status = 409, description = "custom domain used by another tenant")))]
pub async fn update(
    State(state): State<AppState>,
    scope: TenantScope,
    Body(patch): Body<BrandingPatch>,
) -> Result<Json<Branding>, ApiError> {
    Ok(Json(
        state.control().update_branding(&scope.ctx, patch).await?,
    ))
}

/// Upload the logo: the raw image, PNG, JPEG or WebP, at most 256 KiB, with its Content-Type.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/branding/logo", tag = "branding", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    request_body(content = Vec<u8>, content_type = "image/png"),
    responses((status = 200, body = Branding)))]
pub async fn upload_logo(
    State(state): State<AppState>,
    scope: TenantScope,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Branding>, ApiError> {
    if body.len() > MAX_LOGO_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            "a logo is at most 256 KiB",
        ));
    }
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Ok(Json(
        state.control().put_logo(&scope.ctx, declared, body).await?,
    ))
}

/// A stored image: its type as validated at upload, never sniffed as anything else.
pub(crate) fn image(content_type: &str, bytes: impl IntoResponse, cache: &'static str) -> Response {
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res
}

/// The logo image.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/branding/logo", tag = "branding", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")),
    responses((status = 200, description = "the image", content_type = "image/png")))]
pub async fn logo(State(state): State<AppState>, scope: TenantScope) -> Result<Response, ApiError> {
    let (logo, bytes) = state.control().logo(&scope.ctx).await?;
    // Served from the API origin: never cached across users.
    let mut res = image(&logo.content_type, bytes, "private, max-age=300");
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", logo.sha256)) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(res)
}

/// Remove the logo.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/branding/logo", tag = "branding", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant")), responses((status = 200, body = Branding)))]
pub async fn delete_logo(
    State(state): State<AppState>,
    scope: TenantScope,
) -> Result<Json<Branding>, ApiError> {
    Ok(Json(state.control().delete_logo(&scope.ctx).await?))
}
