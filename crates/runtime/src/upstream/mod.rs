//! Provider adapters: the client side of the execution gateway.
//!
//! [`Upstreams`] owns one HTTP client (rustls, no redirects, pooled) and one Entra ID token
//! cache, shared by an adapter per [`ProviderKind`]. An adapter POSTs an OpenAI
//! chat-completions request to a tenant's provider and answers the JSON response
//! ([`ProviderAdapter::chat`]) or the parsed server-sent events
//! ([`ProviderAdapter::chat_stream`]). Every call forwards the caller's `traceparent`, has
//! time limits ([`UpstreamConfig`]) and is retried on transient failures, with exponential
//! backoff and full jitter, honouring `Retry-After`.
//!
//! Secrets (API keys, client secrets, tokens, the identity header) never appear in errors,
//! logs or `Debug` output: they travel in headers marked sensitive, and an upstream error
//! message that echoes one has it replaced by `[redacted]`.

mod azure;
mod client;
mod entra;
mod openai;
mod retry;
mod sse;

pub use agentplane_core::provider::ProviderKind;
pub use azure::{AzureAdapter, AZURE_DEFAULT_API_VERSION};
pub use openai::OpenAiAdapter;

use crate::trace::TraceContext;
use async_trait::async_trait;
use bytes::Bytes;
use client::Inner;
use futures::Stream;
use reqwest::Url;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Time limits, retries and the managed-identity endpoint of every upstream call.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// Establishing a connection (TCP and TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// One whole non-streaming attempt, body included (and one token request). Default 120 s.
    pub request_timeout: Duration,
    /// Streaming: from sending the request until the response headers. Default 60 s.
    pub first_byte_timeout: Duration,
    /// Streaming: the longest gap between two chunks of the body. Default 60 s.
    pub idle_timeout: Duration,
    /// Retries after the first attempt. Default 2 (so up to 3 attempts).
    pub max_retries: u32,
    /// Backoff before retry `n` (from 0): a random delay up to `backoff_base * 2^n`. Default 200 ms.
    pub backoff_base: Duration,
    /// The longest backoff; a `Retry-After` beyond it is not waited for. Default 5 s.
    pub backoff_cap: Duration,
    /// Managed-identity token endpoint (Azure App Service / Container Apps `IDENTITY_ENDPOINT`
    /// style, or IMDS `http://169.254.169.254/metadata/identity/oauth2/token`) and its secret
    /// header value (`IDENTITY_HEADER`; None for IMDS, which uses `Metadata: true`).
    pub identity_endpoint: Option<String>,
    /// See `identity_endpoint`.
    pub identity_header: Option<Zeroizing<String>>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_retries: 2,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(5),
            identity_endpoint: None,
            identity_header: None,
        }
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("identity_endpoint", &self.identity_endpoint)
            .field(
                "identity_header",
                &self.identity_header.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

/// A resolved provider: where to call and with what credential (secret already opened).
#[derive(Clone, Debug)]
pub struct UpstreamTarget {
    /// Which adapter speaks to it.
    pub kind: ProviderKind,
    /// E.g. `https://api.openai.com/v1` or `https://x.openai.azure.com`, parsed once per
    /// provider (the gateway caches it), not per call.
    pub base_url: Url,
    /// Azure's `api-version` query parameter ([`AZURE_DEFAULT_API_VERSION`] when None).
    pub api_version: Option<String>,
    /// The credential.
    pub auth: UpstreamAuth,
    /// Cache key for tokens, e.g. `<tenant_id>/<provider_id>`: token caches must never be
    /// shared across tenants' credentials.
    pub cache_key: String,
}

/// How a call to the provider is authenticated.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// OpenAI-compatible: `Authorization: Bearer <key>`; Azure: `api-key: <key>` header.
    ApiKey(Zeroizing<String>),
    /// An Entra ID bearer token from the managed-identity endpoint in [`UpstreamConfig`]
    /// (`client_id` picks a user-assigned identity).
    ManagedIdentity { client_id: Option<String> },
    /// An Entra ID bearer token from the client-credentials grant:
    /// `POST {authority}/{tenant}/oauth2/v2.0/token` with `client_id`, `client_secret` and
    /// `scope=https://cognitiveservices.azure.com/.default`.
    ClientCredentials {
        /// Default (when empty) `https://login.microsoftonline.com`.
        authority: String,
        tenant: String,
        client_id: String,
        secret: Zeroizing<String>,
    },
}

impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey(_) => f.debug_tuple("ApiKey").field(&REDACTED).finish(),
            Self::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
            Self::ClientCredentials {
                authority,
                tenant,
                client_id,
                secret: _,
            } => f
                .debug_struct("ClientCredentials")
                .field("authority", authority)
                .field("tenant", tenant)
                .field("client_id", client_id)
                .field("secret", &REDACTED)
                .finish(),
        }
    }
}

const REDACTED: &str = "[redacted]";

/// Why an upstream call failed. No variant carries a URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A connect, request, first-byte or idle time limit ran out.
    #[error("the upstream timed out")]
    Timeout,
    /// Cannot connect, or the connection broke.
    #[error("cannot reach the upstream: {0}")]
    Connect(String),
    /// The upstream answered an error status.
    #[error("the upstream answered HTTP {status}: {message}")]
    Status {
        status: u16,
        /// From `retry-after-ms` or `Retry-After` (seconds or an HTTP date).
        retry_after: Option<Duration>,
        /// The OpenAI-shaped body's `error.message`, else the body, at most 500 characters.
        message: String,
    },
    /// The credential could not be obtained (an Entra ID token) or used; says why.
    #[error("cannot obtain an upstream credential: {0}")]
    Auth(String),
    /// The upstream answered something that is not valid JSON or SSE, or the request cannot
    /// be addressed (no `model` for an Azure deployment, an invalid base URL).
    #[error("the upstream broke the protocol: {0}")]
    Protocol(String),
}

/// One server-sent event of a streaming chat completion.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// One `data:` payload, a JSON object (a `chat.completion.chunk`, or whatever the upstream
    /// sent).
    Chunk(JsonObject),
    /// `data: [DONE]`: the stream is complete; nothing follows.
    Done,
}

/// One JSON object's text as the provider wrote it, checked to be one object when read: the
/// gateway passes it on without building it into values (see `relabel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonObject(Bytes);

impl JsonObject {
    /// Checks that `text` is one JSON object; `what` names it in the error.
    pub(crate) fn read(text: impl Into<Bytes>, what: &str) -> Result<Self, UpstreamError> {
        let text = text.into();
        let mut de = serde_json::Deserializer::from_slice(&text);
        serde::Deserializer::deserialize_map(&mut de, serde::de::IgnoredAny)
            .and_then(|_| de.end())
            .map_err(|e| UpstreamError::Protocol(format!("{what} is not a JSON object: {e}")))?;
        Ok(Self(text))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The object as values.
    pub fn to_value(&self) -> serde_json::Value {
        // Checked when read.
        serde_json::from_slice(&self.0).unwrap_or_default()
    }
}

/// The events of a streaming call, in order. After `Done` or an `Err` the stream ends; a
/// stream that ends without `Done` yields `Err(Protocol)` last.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, UpstreamError>> + Send>>;

/// Speaks one provider's chat-completions wire protocol.
#[async_trait]
pub trait ProviderAdapter: Send + Sync {
    /// Non-streaming: POSTs `body` (an OpenAI chat.completions request object, already
    /// complete: model, messages, max_tokens...) and answers the upstream's response body, a
    /// JSON object.
    async fn chat(
        &self,
        target: &UpstreamTarget,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<JsonObject, UpstreamError>;

    /// Streaming: `body` has `"stream": true` and `"stream_options": {"include_usage": true}`
    /// set by the caller. Answers the parsed SSE events in order. Retried only until the
    /// response headers arrive.
    async fn chat_stream(
        &self,
        target: &UpstreamTarget,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<EventStream, UpstreamError>;
}

/// The adapters, sharing one HTTP client and one token cache.
pub struct Upstreams {
    openai: OpenAiAdapter,
    azure: AzureAdapter,
}

impl Upstreams {
    /// Builds the HTTP client; nothing is contacted yet.
    pub fn new(cfg: UpstreamConfig) -> Result<Self, UpstreamError> {
        let inner = Arc::new(Inner::new(cfg)?);
        Ok(Self {
            openai: OpenAiAdapter::new(inner.clone()),
            azure: AzureAdapter::new(inner),
        })
    }

    /// The adapter that speaks `kind`'s protocol.
    pub fn adapter(&self, kind: ProviderKind) -> &dyn ProviderAdapter {
        match kind {
            ProviderKind::Openai => &self.openai,
            ProviderKind::AzureOpenai => &self.azure,
        }
    }
}
