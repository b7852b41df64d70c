//! Entra ID tokens for Azure OpenAI: managed identity or client credentials, cached.

use super::client::{read_body, Inner};
use super::{UpstreamAuth, UpstreamError, UpstreamTarget};
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Url;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The resource (v1) Azure OpenAI tokens are issued for.
const RESOURCE: &str = "https://cognitiveservices.azure.com";
/// The same, as a v2 client-credentials scope.
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// A token is renewed this long before it expires (or at half its lifetime, if sooner).
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Longer lifetimes are taken as this (Entra's tokens live at most a day).
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Entra ID tokens by (target's cache key, credential). One lock per entry: concurrent
/// callers of one entry share one fetch, callers of other entries do not wait.
#[derive(Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

type Entry = Arc<tokio::sync::Mutex<Option<Token>>>;

struct Token {
    value: Zeroizing<String>,
    renew_at: Instant,
}

impl TokenCache {
    /// A valid token for `target` (whose auth is an Entra ID credential): the cached one, or
    /// a new one fetched with `inner`'s client.
    pub(crate) async fn token(
        &self,
        inner: &Inner,
        target: &UpstreamTarget,
    ) -> Result<Zeroizing<String>, UpstreamError> {
        let entry = self.entry(target);
        let mut slot = entry.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.value.clone());
        }
        let token = fetch(inner, &target.auth).await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    /// Drops `target`'s cached token if it is still `rejected` (not already renewed).
    pub(crate) async fn forget(&self, target: &UpstreamTarget, rejected: &str) {
        let entry = self.entry(target);
        let mut slot = entry.lock().await;
        if slot.as_ref().is_some_and(|t| t.value.as_str() == rejected) {
            *slot = None;
        }
    }

    fn entry(&self, target: &UpstreamTarget) -> Entry {
        let credential = match &target.auth {
            UpstreamAuth::ApiKey(_) => String::new(),
            UpstreamAuth::ManagedIdentity { client_id } => {
                format!(
                    "managed-identity {}",
                    client_id.as_deref().unwrap_or_default()
                )
            }
            UpstreamAuth::ClientCredentials {
                authority,
                tenant,
                client_id,
                secret: _,
            } => format!("client-credentials {authority} {tenant} {client_id}"),
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .entry((target.cache_key.clone(), credential))
            .or_default()
            .clone()
    }
}

/// Fetches a token; every failure is an `Auth` error saying why, with no secret in it.
async fn fetch(inner: &Inner, auth: &UpstreamAuth) -> Result<Token, UpstreamError> {
    let (source, result) = match auth {
        UpstreamAuth::ManagedIdentity { client_id } => (
            "the managed-identity endpoint",
            managed_identity(inner, client_id.as_deref()).await,
        ),
        UpstreamAuth::ClientCredentials {
            authority,
            tenant,
            client_id,
            secret,
        } => (
            "the Entra ID token endpoint",
            client_credentials(inner, authority, tenant, client_id, secret).await,
        ),
        UpstreamAuth::ApiKey(_) => {
            return Err(UpstreamError::Auth(
                "an API key is not an Entra ID credential".into(),
            ))
        }
    };
    result.map_err(|e| match e {
        UpstreamError::Auth(why) => UpstreamError::Auth(why),
        UpstreamError::Status {
            status, message, ..
        } => UpstreamError::Auth(format!("{source} answered HTTP {status}: {message}")),
        e => UpstreamError::Auth(format!("{source}: {e}")),
    })
}

/// `GET {identity_endpoint}?api-version=...&resource=...[&client_id=...]`, with the
/// `X-IDENTITY-HEADER` secret (App Service, Container Apps) or `Metadata: true` (IMDS).
async fn managed_identity(inner: &Inner, client_id: Option<&str>) -> Result<Token, UpstreamError> {
    let endpoint =
        inner.cfg.identity_endpoint.as_deref().ok_or_else(|| {
            UpstreamError::Auth("no managed-identity endpoint is configured".into())
        })?;
    let url = Url::parse(endpoint).map_err(|e| {
        UpstreamError::Auth(format!("the managed-identity endpoint is not a URL: {e}"))
    })?;
    let secret = inner.cfg.identity_header.as_deref().map(String::as_str);
    let header = secret
        .map(|s| {
            let mut v = HeaderValue::from_str(s).map_err(|_| {
                UpstreamError::Auth("the identity header is not a valid HTTP header value".into())
            })?;
            v.set_sensitive(true);
            Ok::<_, UpstreamError>(v)
        })
        .transpose()?;
    let api_version = if header.is_some() {
        "2019-08-01"
    } else {
        "2018-02-01"
    };
    let mut query = vec![("api-version", api_version), ("resource", RESOURCE)];
    query.extend(client_id.map(|id| ("client_id", id)));
    let limit = inner.cfg.request_timeout;
    let build = || {
        let req = inner
            .client
            .get(url.clone())
            .query(&query)
            .header(ACCEPT, "application/json")
            .timeout(limit);
        match &header {
            Some(h) => req.header("X-IDENTITY-HEADER", h.clone()),
            None => req.header("Metadata", "true"),
        }
    };
    let resp = inner.send(build, limit, secret.unwrap_or_default()).await?;
    parse_token(&read_body(resp, MAX_TOKEN_RESPONSE).await?)
}

/// `POST {authority}/{tenant}/oauth2/v2.0/token` with the client-credentials grant.
async fn client_credentials(
    inner: &Inner,
    authority: &str,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> Result<Token, UpstreamError> {
    let authority = match authority.trim_end_matches('/') {
        "" => DEFAULT_AUTHORITY,
        a => a,
    };
    let mut url = Url::parse(authority)
        .map_err(|e| UpstreamError::Auth(format!("the authority is not a URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| UpstreamError::Auth("the authority cannot have a path".into()))?
        .pop_if_empty()
        .extend([tenant, "oauth2", "v2.0", "token"]);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", SCOPE),
    ];
    let limit = inner.cfg.request_timeout;
    let build = || {
        inner
            .client
            .post(url.clone())
            .form(&form)
            .header(ACCEPT, "application/json")
            .timeout(limit)
    };
    let resp = inner.send(build, limit, secret).await?;
    parse_token(&read_body(resp, MAX_TOKEN_RESPONSE).await?)
}

/// `{"access_token": ..., "expires_in": seconds}` or `"expires_on": epoch seconds` (either
/// may be a string, as the managed-identity endpoints send them).
fn parse_token(body: &[u8]) -> Result<Token, UpstreamError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: Option<serde_json::Value>,
        expires_on: Option<serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        UpstreamError::Protocol("the answer is not JSON with an access_token".into())
    })?;
    let value = Zeroizing::new(answer.access_token);
    if value.is_empty() {
        return Err(UpstreamError::Protocol("the access_token is empty".into()));
    }
    let seconds = |v: Option<serde_json::Value>| {
        v.and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
    };
    let lifetime = match (seconds(answer.expires_in), seconds(answer.expires_on)) {
        (Some(expires_in), _) => Duration::from_secs(expires_in),
        (None, Some(expires_on)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Duration::from_secs(expires_on).saturating_sub(now)
        }
        (None, None) => {
            return Err(UpstreamError::Protocol(
                "the answer has neither expires_in nor expires_on".into(),
            ))
        }
    };
    let lifetime = lifetime.min(MAX_LIFETIME);
    Ok(Token {
        value,
        renew_at: Instant::now() + lifetime - RENEW_BEFORE.min(lifetime / 2),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn renews_in(body: &str) -> Duration {
        parse_token(body.as_bytes())
            .unwrap()
            .renew_at
            .saturating_duration_since(Instant::now())
    }

    #[test]
    fn renews_five_minutes_early_or_at_half_life() {
        let in_an_hour = renews_in(r#"{"access_token":"t","expires_in":3600}"#);
        assert!(in_an_hour <= Duration::from_secs(3300) && in_an_hour > Duration::from_secs(3200));
        let short = renews_in(r#"{"access_token":"t","expires_in":"120"}"#);
        assert!(short <= Duration::from_secs(60) && short > Duration::from_secs(50));
        let on = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let body = format!(r#"{{"access_token":"t","expires_on":"{on}"}}"#);
        assert!(renews_in(&body) > Duration::from_secs(3200));
        let expired = renews_in(r#"{"access_token":"t","expires_on":1000}"#);
        assert_eq!(expired, Duration::ZERO);
        let huge = renews_in(r#"{"access_token":"t","expires_in":18446744073709551615}"#);
        assert!(huge <= MAX_LIFETIME);
    }

    #[test]
    fn rejects_answers_without_a_token_or_expiry() {
        for body in [
            "",
            "{}",
            r#"{"access_token":""}"#,
            r#"{"access_token":"t"}"#,
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":7,"expires_in":60}"#,
        ] {
            assert!(
                matches!(
                    parse_token(body.as_bytes()),
                    Err(UpstreamError::Protocol(_))
                ),
                "{body}"
            );
        }
    }
}
