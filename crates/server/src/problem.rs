//! RFC 9457 problem details: the one place where every error of every plane becomes an HTTP
//! response. Each problem has a stable `code`; internal errors are logged with their cause
//! and answered with an opaque 500.

use crate::auth::AuthError;
use agentplane_control::error::ConflictKind;
use agentplane_control::{AuthFailure, ControlError};
use agentplane_core::authz::AuthzError;
use agentplane_core::DomainError;
use agentplane_runtime::gateway::RunError;
use agentplane_store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
    pub fn header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "the resource does not exist",
        )
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }
    pub fn validation(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "Validation failed",
            format!("{field}: {reason}"),
        )
        .with("field", json!(field))
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed to handle the request; it has been logged",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this path does not accept this method",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(format!("urn:agentplane:problem:{}", self.code)),
        );
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.insert("code".into(), json!(self.code));
        body.extend(self.extra);
        let mut res = (self.status, Value::Object(body).to_string()).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (k, v) in self.headers {
            res.headers_mut().insert(k, v);
        }
        res
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid { field, reason } => Self::validation(field, reason),
            e @ DomainError::InvalidTransition { .. } => Self::new(
                StatusCode::CONFLICT,
                "invalid_transition",
                "Invalid state transition",
                e.to_string(),
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::InvalidCursor => {
                Self::validation("cursor", "is not a cursor this server issued")
            }
            StoreError::Db(sqlx_err) if is_unavailable(sqlx_err) => {
                tracing::error!(error = %e, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    "the database is unavailable; retry later",
                )
                .header(header::RETRY_AFTER, "5")
            }
            StoreError::Moved(_) | StoreError::Moving(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_moving",
                "Tenant moving",
                "the tenant is moving to its new region's database; retry",
            )
            .header(header::RETRY_AFTER, "1"),
            _ => {
                tracing::error!(error = %e, "store error");
                Self::internal()
            }
        }
    }
}

fn is_unavailable(e: &agentplane_store::SqlxError) -> bool {
    use agentplane_store::SqlxError as E;
    matches!(e, E::PoolTimedOut | E::PoolClosed | E::Io(_))
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(d) => d.into(),
            ControlError::NotFound(_) => Self::not_found(),
            ControlError::Conflict(kind) => {
                let code = match kind {
                    ConflictKind::PlanExists => "plan_exists",
                    ConflictKind::SlugTaken => "slug_taken",
                    ConflictKind::ConcurrentUpdate => "concurrent_update",
                    ConflictKind::DomainTaken => "domain_taken",
                    ConflictKind::NameTaken => "name_taken",
                    ConflictKind::InUse => "in_use",
                    ConflictKind::AlreadyFinished => "already_finished",
                    ConflictKind::LastAdmin => "last_admin",
                    ConflictKind::NotReady => "not_ready",
                    ConflictKind::TenantExists => "tenant_exists",
                };
                Self::new(StatusCode::CONFLICT, code, "Conflict", kind.to_string())
            }
            ControlError::IdempotencyKeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                "this Idempotency-Key was already used with a different request body",
            ),
            ControlError::Store(s) => s.into(),
            ControlError::Crypto(c) => c.into(),
            ControlError::Auth(f) => f.into(),
            ControlError::Idp(msg) => Self::new(
                StatusCode::BAD_GATEWAY,
                "idp_unavailable",
                "Identity provider unavailable",
                format!("the tenant's identity provider failed: {msg}"),
            ),
            ControlError::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                Self::internal()
            }
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> Self {
        let detail = f.to_string();
        let unauthorized = |code| {
            Self::new(
                StatusCode::UNAUTHORIZED,
                code,
                "Unauthenticated",
                detail.clone(),
            )
            .header(header::WWW_AUTHENTICATE, "Bearer")
        };
        match f {
            AuthFailure::Throttled(secs) => {
                let mut p = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "sign_in_throttled",
                    "Too many failed sign-ins",
                    detail,
                );
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    p.headers.push((header::RETRY_AFTER, v));
                }
                p
            }
            AuthFailure::InvalidCredentials => unauthorized("invalid_credentials"),
            AuthFailure::InvalidRefreshToken => unauthorized("invalid_refresh_token"),
            AuthFailure::RefreshTokenReused => unauthorized("refresh_token_reused"),
            AuthFailure::InvalidAccessToken(_) => unauthorized("unauthenticated"),
            AuthFailure::InvalidInvitation => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_invitation",
                "Invalid invitation",
                detail,
            ),
            AuthFailure::LocalSignInDisabled => Self::new(
                StatusCode::FORBIDDEN,
                "local_sign_in_disabled",
                "Password sign-in disabled",
                detail,
            ),
            AuthFailure::TenantUnresolved(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "tenant_unresolved",
                "Tenant not named",
                detail,
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Unauthenticated",
            format!("bearer token rejected: {e}"),
        )
        .header(header::WWW_AUTHENTICATE, "Bearer")
    }
}

impl From<AuthzError> for ApiError {
    fn from(e: AuthzError) -> Self {
        match e {
            AuthzError::NoTenantAccess => Self::not_found(),
            AuthzError::MissingPermission(p) => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("this action needs the permission {p}"),
            )
            .with("required_permission", json!(p)),
        }
    }
}

impl From<agentplane_crypto::CryptoError> for ApiError {
    fn from(e: agentplane_crypto::CryptoError) -> Self {
        use agentplane_crypto::CryptoError as C;
        match &e {
            // The KMS is a dependency: its errors are clear and carry no secret.
            C::Kms(msg) => {
                tracing::error!(error = %msg, "KMS call failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kms_unavailable",
                    "Key service unavailable",
                    msg.clone(),
                )
                .header(header::RETRY_AFTER, "5")
            }
            // A sealed value that does not open was tampered with or moved: never returned.
            C::Decrypt | C::Malformed | C::UnknownKeyVersion(_) => {
                tracing::error!(error = %e, "a sealed secret could not be opened");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "secret_unreadable",
                    "Secret unreadable",
                    "a stored secret could not be opened; it has been logged for the operator",
                )
            }
            _ => {
                tracing::error!(error = %e, "crypto error");
                Self::internal()
            }
        }
    }
}

fn retry_after(d: std::time::Duration) -> HeaderValue {
    // Whole seconds, rounded up: a client that waits this long is not refused again for it.
    HeaderValue::from(d.as_millis().div_ceil(1000).max(1) as u64)
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        use agentplane_runtime::limits::LimitError;
        use agentplane_runtime::upstream::UpstreamError as U;
        let upstream = |status, code, title, detail: String| Self::new(status, code, title, detail);
        match e {
            RunError::Invalid(d) => d.into(),
            RunError::Control(c) => c.into(),
            RunError::UnknownAgent(name) => Self::new(
                StatusCode::NOT_FOUND,
                "agent_not_found",
                "Agent not found",
                format!("no agent {name:?} that this key may run"),
            ),
            RunError::Limit(LimitError::Rate {
                rpm,
                retry_after: d,
            }) => {
                let mut p = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Rate limit reached",
                    format!("the plan allows {rpm} requests per minute"),
                )
                .with("limit", json!("requests_per_minute"));
                p.headers.push((header::RETRY_AFTER, retry_after(d)));
                p
            }
            RunError::Limit(LimitError::Concurrency { limit }) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency_limited",
                "Too many runs in flight",
                format!("the plan allows {limit} runs in flight at once"),
            )
            .with("limit", json!("max_concurrent_runs"))
            .header(header::RETRY_AFTER, "1"),
            RunError::Quota(x) => {
                let mut p = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota_exceeded",
                    "Quota exhausted",
                    format!(
                        "the {} quota is exhausted for this month ({} used, {} reserved by runs in flight, limit {})",
                        x.quota.as_str(),
                        x.used,
                        x.reserved,
                        x.limit
                    ),
                )
                .with("quota", json!(x.quota.as_str()))
                .with("used", json!(x.used))
                .with("reserved", json!(x.reserved))
                .with("limit", json!(x.limit));
                let wait = if x.reserved > 0 {
                    // Runs in flight may give some back when they settle.
                    std::time::Duration::from_secs(1)
                } else {
                    agentplane_runtime::gateway::until_next_period(
                        agentplane_core::time::Timestamp::now(),
                    )
                };
                p.headers.push((header::RETRY_AFTER, retry_after(wait)));
                p
            }
            RunError::Residency { region, host } => Self::new(
                StatusCode::FORBIDDEN,
                "residency_violation",
                "Provider outside the tenant's region",
                format!(
                    "the tenant's data stays in region {region}; the provider {host} is not allowed there"
                ),
            )
            .with("region", json!(region)),
            RunError::Policy(msg) => Self::new(
                StatusCode::FORBIDDEN,
                "provider_not_allowed",
                "Provider refused by policy",
                msg,
            ),
            RunError::QuotaBusy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "quota_contended",
                "Quota contended",
                "concurrent runs took the quota as fast as it was granted; retry",
            )
            .header(header::RETRY_AFTER, "1"),
            RunError::Metering(msg) => {
                tracing::error!(error = %msg, "run not metered");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metering_unavailable",
                    "Usage could not be recorded",
                    "the run's usage could not be recorded; retry later",
                )
                .header(header::RETRY_AFTER, "5")
            }
            RunError::Upstream(u) => match u {
                U::Timeout => upstream(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "Provider timed out",
                    "the provider did not answer in time".into(),
                ),
                U::Status {
                    status: 429,
                    retry_after: d,
                    message,
                } => {
                    let mut p = upstream(
                        StatusCode::TOO_MANY_REQUESTS,
                        "upstream_rate_limited",
                        "Provider rate limit",
                        format!("the provider is rate limiting: {message}"),
                    );
                    p.headers.push((
                        header::RETRY_AFTER,
                        retry_after(d.unwrap_or(std::time::Duration::from_secs(1))),
                    ));
                    p
                }
                U::Status {
                    status: 401 | 403, ..
                }
                | U::Auth(_) => upstream(
                    StatusCode::BAD_GATEWAY,
                    "upstream_auth_failed",
                    "Provider refused the credentials",
                    format!("{u}"),
                ),
                U::Status {
                    status: s @ 400..=499,
                    message,
                    ..
                } => upstream(
                    StatusCode::BAD_REQUEST,
                    "upstream_rejected",
                    "Provider rejected the request",
                    format!("the provider answered HTTP {s}: {message}"),
                ),
                U::Status { .. } | U::Connect(_) | U::Protocol(_) => upstream(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "Provider error",
                    format!("{u}"),
                ),
            },
        }
    }
}
