//! The OpenAI-compatible surface, authenticated with tenant API keys. The tenant comes from the
//! key, never from the request. Errors, extractor rejections included, use OpenAI's shape so
//! existing SDKs report them properly.

use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_control::KeyRejected;
use agentplane_core::api_key::VerifiedApiKey;
use agentplane_core::authz::TenantCtx;
use agentplane_runtime::gateway::{ChatInput, ChatOutput};
use agentplane_runtime::trace::TraceContext;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    param: Option<String>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
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
            param: None,
            headers: Vec::new(),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut res = (self.status, Json(body)).into_response();
        for (k, v) in self.headers {
            res.headers_mut().insert(k, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<ApiError> for OpenAiError {
    fn from(problem: ApiError) -> Self {
        let kind = match (problem.status.as_u16(), problem.code) {
            (_, "quota_exceeded") => "insufficient_quota",
            (400 | 404 | 422, _) => "invalid_request_error",
            (401, _) => "authentication_error",
            (403, _) => "permission_error",
            (429, _) => "rate_limit_error",
            _ => "api_error",
        };
        // OpenAI's clients answer 400 to a request they could not validate, not 422.
        let status = match problem.status {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        let mut e = Self::new(status, kind, problem.code, problem.detail);
        e.param = problem
            .extra
            .get("field")
            .and_then(|f| f.as_str())
            .map(str::to_owned);
        if problem.code == "quota_exceeded" {
            // Tell OpenAI's SDKs not to retry a month-long refusal by themselves.
            e.headers.push((
                header::HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            ));
        }
        e.headers.extend(problem.headers);
        e
    }
}

impl From<agentplane_control::ControlError> for OpenAiError {
    fn from(e: agentplane_control::ControlError) -> Self {
        ApiError::from(e).into()
    }
}

/// A caller authenticated by a tenant API key.
pub struct Gateway {
    pub ctx: TenantCtx,
    pub key: VerifiedApiKey,
}

impl Gateway {
    /// Checks the request's API key; refusals are problems (`From` gives OpenAI's shape).
    async fn authenticate(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Unauthenticated",
                "Incorrect or revoked API key provided.",
            )
            .header(header::WWW_AUTHENTICATE, "Bearer")
        };
        let token = crate::auth::bearer_token(&parts.headers).map_err(|_| invalid())?;
        match state.control().verify_api_key(token).await? {
            Ok(key) => Ok(Self {
                ctx: TenantCtx::for_api_key(&key),
                key,
            }),
            Err(KeyRejected::Invalid) => Err(invalid()),
            Err(KeyRejected::TenantUnavailable) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_unavailable",
                "Tenant unavailable",
                "This API key's organisation is suspended or not active.",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Gateway {
    type Rejection = OpenAiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, OpenAiError> {
        Ok(Self::authenticate(parts, state).await?)
    }
}

/// The same key check for the platform's own routes, refusing with problem+json.
pub struct RunCaller(pub Gateway);

impl FromRequestParts<AppState> for RunCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(Gateway::authenticate(parts, state).await?))
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

/// Our span of the caller's trace (`traceparent`), or a new trace: read from the request's
/// headers in place (a `HeaderMap` argument would copy them all).
pub struct Trace(TraceContext);

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        Ok(Self(TraceContext::from_header(header).child()))
    }
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes =
        body.map_err(|e| ApiError::new(e.status(), "invalid_body", "Invalid body", e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))
}

/// A server-sent events response of the run's frames (each a whole event already).
fn sse(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let frames =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::convert::Infallible>);
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, Body::from_stream(frames)).into_response()
}

/// OpenAI-compatible chat completions: `model` names one of the key's agents.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway", security(("api_key" = [])),
    request_body(content = Object, description = "An OpenAI chat.completions request; `model` is the agent's name"),
    responses((status = 200, description = "a chat.completion, or with `stream: true` server-sent chat.completion.chunk events, the last with usage, then [DONE]"),
        (status = 400, description = "invalid request", body = OpenAiErrorBody),
        (status = 401, description = "missing, unknown, revoked or expired key", body = OpenAiErrorBody),
        (status = 403, description = "the key's organisation is not active, or the provider is refused by policy", body = OpenAiErrorBody),
        (status = 404, description = "no such agent for this key", body = OpenAiErrorBody),
        (status = 429, description = "rate, concurrency or monthly quota reached (Retry-After)", body = OpenAiErrorBody),
        (status = 502, description = "the provider failed", body = OpenAiErrorBody),
        (status = 503, description = "the database is unavailable", body = OpenAiErrorBody),
        (status = 504, description = "the provider timed out", body = OpenAiErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    gw: Gateway,
    Trace(trace): Trace,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let input = ChatInput::from_openai(json_body(body)?).map_err(ApiError::from)?;
    let out = state
        .runtime()
        .chat(&gw.ctx, &gw.key, input, trace)
        .await
        .map_err(ApiError::from)?;
    Ok(match out {
        ChatOutput::Complete(json) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response(),
        ChatOutput::Stream(rx) => sse(rx),
    })
}

/// `POST /v1/tenants/{tenant_id}/runs`: what to run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The agent's name or id.
    pub agent: String,
    /// A user message (shorthand for `messages: [{"role": "user", "content": input}]`).
    pub input: Option<String>,
    /// OpenAI-style messages, after the agent's system prompt.
    #[schema(value_type = Option<Vec<Object>>)]
    pub messages: Option<Vec<Value>>,
    /// Completion bound (at most the agent's).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_tokens: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunResult {
    pub agent: String,
    /// The assistant's answer (the first choice).
    pub output: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: RunUsage,
    /// The W3C trace id the run's usage record carries.
    pub trace_id: String,
}

/// Runs one of the tenant's agents, with a tenant API key of that tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/runs", tag = "gateway", security(("api_key" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "The key's tenant")),
    request_body = RunRequest,
    responses((status = 200, body = RunResult),
        (status = 400, description = "malformed body", body = super::meta::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing, unknown, revoked or expired key", body = super::meta::Problem, content_type = "application/problem+json"),
        (status = 404, description = "another tenant, or no such agent for this key", body = super::meta::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate, concurrency or monthly quota reached (Retry-After)", body = super::meta::Problem, content_type = "application/problem+json"),
        (status = 502, description = "the provider failed", body = super::meta::Problem, content_type = "application/problem+json")))]
pub async fn run(
    State(state): State<AppState>,
    RunCaller(gw): RunCaller,
    Path(tenant_id): Path<String>,
    Trace(trace): Trace,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunResult>, ApiError> {
    // The tenant is the key's: another tenant's id answers like a tenant that doesn't exist.
    if tenant_id != gw.ctx.tenant_id().to_string() {
        return Err(ApiError::not_found());
    }
    let req: RunRequest = agentplane_control::parse_object(json_body(body)?)?;
    let messages = match (req.input, req.messages) {
        (Some(text), None) => vec![json!({"role": "user", "content": text})],
        (None, Some(m)) => m,
        _ => {
            return Err(ApiError::validation(
                "input",
                "give either input or messages",
            ))
        }
    };
    let mut body = json!({"model": req.agent, "messages": messages});
    if let Some(m) = req.max_tokens {
        body["max_tokens"] = json!(m);
    }
    let input = ChatInput::from_openai(body)?;
    let trace_id = trace.trace_id_hex();
    let ChatOutput::Complete(json) = state.runtime().chat(&gw.ctx, &gw.key, input, trace).await?
    else {
        return Err(ApiError::internal());
    };
    let v: Value = serde_json::from_slice(&json).map_err(|_| ApiError::internal())?;
    let usage = |k: &str| v["usage"][k].as_i64().unwrap_or(0);
    Ok(Json(RunResult {
        agent: req.agent,
        output: v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned),
        finish_reason: v["choices"][0]["finish_reason"].as_str().map(str::to_owned),
        usage: RunUsage {
            prompt_tokens: usage("prompt_tokens"),
            completion_tokens: usage("completion_tokens"),
            total_tokens: usage("prompt_tokens") + usage("completion_tokens"),
        },
        trace_id,
    }))
}
