//! SCIM 2.0 (RFC 7644) for a tenant's identity provider: `/scim/v2/Users`, `/Groups` and
//! `/ServiceProviderConfig`, authenticated with the tenant's SCIM token (the tenant comes
//! from the token). Bodies and errors use SCIM's own media type and error shape; the
//! protocol is specified by the RFCs, so these routes are not in the OpenAPI document.

use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_core::authz::TenantCtx;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

const MEDIA_TYPE: &str = "application/scim+json";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A refusal in SCIM's error shape (RFC 7644 3.12).
pub struct ScimError(ApiError);

impl<E: Into<ApiError>> From<E> for ScimError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, scim_type) = match e.code {
            "validation_failed" | "invalid_body" | "invalid_json" => {
                (StatusCode::BAD_REQUEST, Some("invalidValue"))
            }
            "name_taken" => (StatusCode::CONFLICT, Some("uniqueness")),
            "last_admin" => (StatusCode::CONFLICT, Some("mutability")),
            _ => (e.status, None),
        };
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": status.as_u16().to_string(),
            "detail": e.detail,
        });
        if let Some(t) = scim_type {
            body["scimType"] = json!(t);
        }
        let mut res = (status, body.to_string()).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        for (k, v) in e.headers {
            res.headers_mut().insert(k, v);
        }
        res
    }
}

fn scim(status: StatusCode, body: Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    res
}

/// The tenant whose SCIM token the request carries.
pub struct ScimCaller(pub TenantCtx);

impl FromRequestParts<AppState> for ScimCaller {
    type Rejection = ScimError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ScimError> {
        let unauthorized = || {
            ScimError(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Unauthenticated",
                    "a valid tenant SCIM token is required",
                )
                .header(header::WWW_AUTHENTICATE, "Bearer"),
            )
        };
        let token = crate::auth::bearer_token(&parts.headers).map_err(|_| unauthorized())?;
        match state.control().verify_scim_token(token).await? {
            Some(ctx) => Ok(Self(ctx)),
            None => Err(unauthorized()),
        }
    }
}

/// A JSON body sent as `application/scim+json` or `application/json`.
fn body(bytes: &Bytes) -> Result<Value, ScimError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "Invalid JSON",
            format!("the body is not JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object").into());
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    filter: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
}

#[derive(Deserialize)]
pub struct IdPath {
    id: String,
}

type Answer = Result<Response, ScimError>;

pub async fn service_provider_config(State(state): State<AppState>, _c: ScimCaller) -> Answer {
    Ok(scim(
        StatusCode::OK,
        state.control().scim_service_provider_config(),
    ))
}

pub async fn list_users(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Query(q): Query<ListParams>,
) -> Answer {
    let v = state
        .control()
        .scim_list_users(&ctx, q.filter.as_deref(), q.start_index, q.count)
        .await?;
    Ok(scim(StatusCode::OK, v))
}

pub async fn create_user(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    bytes: Bytes,
) -> Answer {
    let v = state
        .control()
        .scim_create_user(&ctx, body(&bytes)?)
        .await?;
    Ok(scim(StatusCode::CREATED, v))
}

pub async fn get_user(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
) -> Answer {
    Ok(scim(
        StatusCode::OK,
        state.control().scim_get_user(&ctx, &p.id).await?,
    ))
}

pub async fn replace_user(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
    bytes: Bytes,
) -> Answer {
    let v = state
        .control()
        .scim_replace_user(&ctx, &p.id, body(&bytes)?)
        .await?;
    Ok(scim(StatusCode::OK, v))
}

pub async fn patch_user(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
    bytes: Bytes,
) -> Answer {
    let v = state
        .control()
        .scim_patch_user(&ctx, &p.id, body(&bytes)?)
        .await?;
    Ok(scim(StatusCode::OK, v))
}

pub async fn delete_user(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
) -> Answer {
    state.control().scim_delete_user(&ctx, &p.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_groups(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Query(q): Query<ListParams>,
) -> Answer {
    let v = state
        .control()
        .scim_list_groups(&ctx, q.filter.as_deref())
        .await?;
    Ok(scim(StatusCode::OK, v))
}

pub async fn create_group(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    bytes: Bytes,
) -> Answer {
    let v = state
        .control()
        .scim_create_group(&ctx, body(&bytes)?)
        .await?;
    Ok(scim(StatusCode::CREATED, v))
}

pub async fn get_group(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
) -> Answer {
    Ok(scim(
        StatusCode::OK,
        state.control().scim_get_group(&ctx, &p.id).await?,
    ))
}

pub async fn replace_group(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
    bytes: Bytes,
) -> Answer {
    let v = state
        .control()
        .scim_replace_group(&ctx, &p.id, body(&bytes)?)
        .await?;
    Ok(scim(StatusCode::OK, v))
}

pub async fn patch_group(
    State(state): State<AppState>,
    ScimCaller(ctx): ScimCaller,
    Path(p): Path<IdPath>,
    bytes: Bytes,
) -> Answer {
    let v = state
        .control()
        .scim_patch_group(&ctx, &p.id, body(&bytes)?)
        .await?;
    Ok(scim(StatusCode::OK, v))
}

/// Groups are the tenant's roles: deleting one through SCIM is refused (delete the custom
/// role in Agentplane).
pub async fn delete_group(_c: ScimCaller) -> Answer {
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden",
        "groups are the tenant's roles: delete a custom role through the admin API",
    )
    .into())
}
