//! The OpenAI-compatible surface, authenticated with tenant API keys. The tenant comes from the
//! key, never from the request. Errors, extractor rejections included, use OpenAI's shape so
//! existing SDKs report them properly.

use crate::state::AppState;
use agentplane_control::KeyRejected;
use agentplane_core::api_key::VerifiedApiKey;
use agentplane_core::authz::TenantCtx;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl OpenAiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}});
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<agentplane_control::ControlError> for OpenAiError {
    fn from(e: agentplane_control::ControlError) -> Self {
        let problem = crate::problem::ApiError::from(e);
        let kind = match problem.status.as_u16() {
            400 | 422 => "invalid_request_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            _ => "api_error",
        };
        Self::new(problem.status, kind, problem.code, problem.detail)
    }
}

/// A caller authenticated by a tenant API key.
pub struct Gateway {
    pub ctx: TenantCtx,
    pub key: VerifiedApiKey,
}

impl FromRequestParts<AppState> for Gateway {
    type Rejection = OpenAiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, OpenAiError> {
        let invalid = || {
            OpenAiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "Incorrect or revoked API key provided.",
            )
        };
        let token = crate::auth::bearer_token(&parts.headers).map_err(|_| invalid())?;
        match state.control().verify_api_key(token).await? {
            Ok(key) => Ok(Self {
                ctx: TenantCtx::for_api_key(&key),
                key,
            }),
            Err(KeyRejected::Invalid) => Err(invalid()),
            Err(KeyRejected::TenantUnavailable) => Err(OpenAiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "tenant_unavailable",
                "This API key's organisation is suspended or not active.",
            )),
        }
    }
}

/// OpenAI's error shape, as the gateway answers errors.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    #[schema(value_type = Object, example = json!({"message": "Incorrect or revoked API key provided.", "type": "authentication_error", "param": null, "code": "invalid_api_key"}))]
    pub error: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Model {
    /// The agent's name: what to send as `model`.
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// OpenAI-compatible: the agents this API key may run.
#[utoipa::path(get, path = "/v1/models", tag = "gateway", security(("api_key" = [])),
    responses((status = 200, body = ModelList),
        (status = 401, description = "missing, unknown, revoked or expired key", body = OpenAiErrorBody),
        (status = 403, description = "the key's organisation is not active", body = OpenAiErrorBody),
        (status = 503, description = "the database is unavailable", body = OpenAiErrorBody)))]
pub async fn models(
    State(state): State<AppState>,
    gw: Gateway,
) -> Result<Json<ModelList>, OpenAiError> {
    let agents = state.control().agents_for_key(&gw.ctx, &gw.key).await?;
    let owned_by = gw.ctx.tenant_id().to_string();
    Ok(Json(ModelList {
        object: "list",
        data: agents
            .into_iter()
            .map(|a| Model {
                id: a.name,
                object: "model",
                created: a.created_at.millis() / 1000,
                owned_by: owned_by.clone(),
            })
            .collect(),
    }))
}
