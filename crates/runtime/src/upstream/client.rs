//! What the adapters share: the HTTP client, credentials, retries and reading responses.

use super::entra::TokenCache;
use super::{
    retry, sse, EventStream, JsonObject, UpstreamAuth, UpstreamConfig, UpstreamError,
    UpstreamTarget,
};
use crate::trace::TraceContext;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use std::error::Error as _;
use std::time::Duration;
use zeroize::Zeroizing;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";
/// The largest non-streaming response body accepted.
const MAX_RESPONSE: usize = 16 << 20;
/// How much of an error response is read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The longest error message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 500;

/// How a provider takes a plain API key (Entra tokens are always `Authorization: Bearer`).
#[derive(Clone, Copy)]
pub(crate) enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `api-key: <key>`.
    ApiKey,
}

/// The HTTP client, the configuration and the token cache, shared by the adapters.
pub(crate) struct Inner {
    pub(crate) client: reqwest::Client,
    pub(crate) cfg: UpstreamConfig,
    tokens: TokenCache,
}

/// The header authenticating one call, and the secret in it (to keep out of errors).
struct Credential {
    name: HeaderName,
    value: HeaderValue,
    secret: Zeroizing<String>,
    /// A cached Entra ID token (dropped from the cache when the provider rejects it).
    token: bool,
}

impl Inner {
    pub(crate) fn new(cfg: UpstreamConfig) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| UpstreamError::Connect(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            cfg,
            tokens: TokenCache::default(),
        })
    }

    /// A non-streaming call: POST `body` to `url`, answer the response's body.
    pub(crate) async fn chat(
        &self,
        target: &UpstreamTarget,
        url: Url,
        key_header: KeyHeader,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<JsonObject, UpstreamError> {
        let cred = self.credential(target, key_header).await?;
        let body = encode(body)?;
        let limit = self.cfg.request_timeout;
        let result = async {
            let build = || self.post(&url, &cred, &body, trace, JSON).timeout(limit);
            let resp = self.send(build, limit, &cred.secret).await?;
            let bytes = read_body(resp, MAX_RESPONSE).await?;
            if bytes.len() > MAX_RESPONSE {
                return Err(UpstreamError::Protocol(format!(
                    "the response is larger than {} MiB",
                    MAX_RESPONSE >> 20
                )));
            }
            JsonObject::read(bytes, "the response")
        }
        .await;
        self.forget_rejected_token(target, &cred, &result).await;
        result
    }

    /// A streaming call: POST `body` to `url`, answer the response's events.
    pub(crate) async fn chat_stream(
        &self,
        target: &UpstreamTarget,
        url: Url,
        key_header: KeyHeader,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<EventStream, UpstreamError> {
        let cred = self.credential(target, key_header).await?;
        let body = encode(body)?;
        let build = || self.post(&url, &cred, &body, trace, EVENT_STREAM);
        let result = self
            .send(build, self.cfg.first_byte_timeout, &cred.secret)
            .await;
        self.forget_rejected_token(target, &cred, &result).await;
        let resp = result?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(EVENT_STREAM) {
            return Err(UpstreamError::Protocol(format!(
                "expected {EVENT_STREAM}, got {content_type:?}"
            )));
        }
        Ok(sse::events(resp.bytes_stream(), self.cfg.idle_timeout))
    }

    /// Sends the request `build` makes until it gets a success status, retrying transient
    /// failures. `header_timeout` limits each attempt until the response headers (and the
    /// reading of an error body); `secret` is scrubbed from error messages.
    pub(crate) async fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
        header_timeout: Duration,
        secret: &str,
    ) -> Result<Response, UpstreamError> {
        let build = &build;
        retry::run(&self.cfg, || async move {
            let resp = tokio::time::timeout(header_timeout, build().send())
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(transport_error)?;
            if resp.status().is_success() {
                Ok(resp)
            } else {
                Err(status_error(resp, header_timeout, secret).await)
            }
        })
        .await
    }

    fn post(
        &self,
        url: &Url,
        cred: &Credential,
        body: &Bytes,
        trace: &TraceContext,
        accept: &'static str,
    ) -> RequestBuilder {
        self.client
            .post(url.clone())
            .header(cred.name.clone(), cred.value.clone())
            .header(CONTENT_TYPE, JSON)
            .header(ACCEPT, accept)
            .header("traceparent", trace.header_value())
            .body(body.clone())
    }

    async fn credential(
        &self,
        target: &UpstreamTarget,
        key_header: KeyHeader,
    ) -> Result<Credential, UpstreamError> {
        let (secret, token) = match &target.auth {
            UpstreamAuth::ApiKey(key) => (key.clone(), false),
            _ => (self.tokens.token(self, target).await?, true),
        };
        let (name, value) = match (token, key_header) {
            (false, KeyHeader::ApiKey) => (
                HeaderName::from_static("api-key"),
                HeaderValue::from_str(&secret),
            ),
            _ => (
                AUTHORIZATION,
                HeaderValue::from_str(&Zeroizing::new(format!("Bearer {}", secret.as_str()))),
            ),
        };
        let mut value = value.map_err(|_| {
            UpstreamError::Auth(
                "the credential has characters not allowed in an HTTP header".into(),
            )
        })?;
        value.set_sensitive(true);
        Ok(Credential {
            name,
            value,
            secret,
            token,
        })
    }

    /// A 401 means the provider no longer accepts the cached token: the next call fetches anew.
    async fn forget_rejected_token<T>(
        &self,
        target: &UpstreamTarget,
        cred: &Credential,
        result: &Result<T, UpstreamError>,
    ) {
        if cred.token && matches!(result, Err(UpstreamError::Status { status: 401, .. })) {
            self.tokens.forget(target, &cred.secret).await;
        }
    }
}

fn encode(body: &serde_json::Value) -> Result<Bytes, UpstreamError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))
}

/// Reads the body to its end, or until more than `limit` bytes arrived.
pub(crate) async fn read_body(mut resp: Response, limit: usize) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            break;
        }
    }
    Ok(body)
}

async fn status_error(resp: Response, within: Duration, secret: &str) -> UpstreamError {
    let status = resp.status();
    let retry_after = retry::retry_after(resp.headers());
    let body = tokio::time::timeout(within, read_body(resp, MAX_ERROR_BODY))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    UpstreamError::Status {
        status: status.as_u16(),
        retry_after,
        message: error_message(&body, status, secret),
    }
}

/// The error's message: OpenAI's `error.message` (or Entra's `error_description`, or a bare
/// `error` / `message` string), else the body's text, else the status's reason; `secret`
/// replaced, at most 500 characters.
fn error_message(body: &[u8], status: StatusCode, secret: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_json = json.as_ref().and_then(|v| {
        [
            &v["error"]["message"],
            &v["error_description"],
            &v["error"],
            &v["message"],
        ]
        .into_iter()
        .find_map(|m| m.as_str())
    });
    let mut text = match from_json {
        Some(m) => m.to_owned(),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    };
    if text.is_empty() {
        text = status.canonical_reason().unwrap_or_default().to_owned();
    }
    if !secret.is_empty() {
        text = text.replace(secret, super::REDACTED);
    }
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// A transport failure as an error: its cause chain, without the URL.
pub(crate) fn transport_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        return UpstreamError::Timeout;
    }
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    UpstreamError::Connect(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let openai = br#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#;
        assert_eq!(
            error_message(openai, StatusCode::BAD_REQUEST, "sk"),
            "bad model"
        );
        let entra = br#"{"error":"invalid_client","error_description":"AADSTS7000215: wrong"}"#;
        assert_eq!(
            error_message(entra, StatusCode::UNAUTHORIZED, ""),
            "AADSTS7000215: wrong"
        );
        let echo = b"<html>your key is sk-123 sk-123</html>";
        assert_eq!(
            error_message(echo, StatusCode::BAD_GATEWAY, "sk-123"),
            "<html>your key is [redacted] [redacted]</html>"
        );
        let long = "é".repeat(2000);
        assert_eq!(
            error_message(long.as_bytes(), StatusCode::BAD_GATEWAY, "")
                .chars()
                .count(),
            500
        );
        assert_eq!(
            error_message(b"", StatusCode::TOO_MANY_REQUESTS, ""),
            "Too Many Requests"
        );
    }
}
