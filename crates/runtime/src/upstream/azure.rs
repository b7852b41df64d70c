//! Azure OpenAI / AI Foundry deployments.

use super::client::{Inner, KeyHeader};
use super::{EventStream, JsonObject, ProviderAdapter, UpstreamError, UpstreamTarget};
use crate::trace::TraceContext;
use async_trait::async_trait;
use reqwest::Url;
use std::sync::Arc;

/// The `api-version` sent when the target names none.
pub use agentplane_core::provider::AZURE_DEFAULT_API_VERSION;

/// `POST {base_url}/openai/deployments/{model}/chat/completions?api-version=...`, where
/// `{model}` is the body's `model` (the deployment name), with an `api-key` header or an
/// Entra ID `Authorization: Bearer` token.
pub struct AzureAdapter {
    inner: Arc<Inner>,
}

impl AzureAdapter {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl ProviderAdapter for AzureAdapter {
    async fn chat(
        &self,
        target: &UpstreamTarget,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<JsonObject, UpstreamError> {
        let url = endpoint(target, body)?;
        self.inner
            .chat(target, url, KeyHeader::ApiKey, body, trace)
            .await
    }

    async fn chat_stream(
        &self,
        target: &UpstreamTarget,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<EventStream, UpstreamError> {
        let url = endpoint(target, body)?;
        self.inner
            .chat_stream(target, url, KeyHeader::ApiKey, body, trace)
            .await
    }
}

/// The deployment's URL; the model name is one percent-encoded path segment.
fn endpoint(target: &UpstreamTarget, body: &serde_json::Value) -> Result<Url, UpstreamError> {
    let model = body["model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| UpstreamError::Protocol("the request has no model".into()))?;
    let mut url = target.base_url.clone();
    url.path_segments_mut()
        .map_err(|()| UpstreamError::Protocol("the base URL cannot have a path".into()))?
        .pop_if_empty()
        .extend(["openai", "deployments", model, "chat", "completions"]);
    let api_version = target
        .api_version
        .as_deref()
        .unwrap_or(AZURE_DEFAULT_API_VERSION);
    url.query_pairs_mut()
        .append_pair("api-version", api_version);
    Ok(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::upstream::{ProviderKind, UpstreamAuth};
    use serde_json::json;

    fn target(base_url: &str, api_version: Option<&str>) -> UpstreamTarget {
        UpstreamTarget {
            kind: ProviderKind::AzureOpenai,
            base_url: Url::parse(base_url).unwrap(),
            api_version: api_version.map(Into::into),
            auth: UpstreamAuth::ManagedIdentity { client_id: None },
            cache_key: "t/p".into(),
        }
    }

    #[test]
    fn addresses_the_deployment() {
        let url = endpoint(
            &target("https://x.openai.azure.com/", None),
            &json!({"model": "gpt-4o"}),
        );
        assert_eq!(
            url.unwrap().as_str(),
            "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
        );
        let odd = json!({"model": "my model/../x?y#z"});
        let url = endpoint(
            &target("https://apim.example.com/llm", Some("2025-01-01-preview")),
            &odd,
        );
        assert_eq!(
            url.unwrap().as_str(),
            "https://apim.example.com/llm/openai/deployments/my%20model%2F..%2Fx%3Fy%23z/chat/completions?api-version=2025-01-01-preview"
        );
        assert!(endpoint(&target("https://x", None), &json!({})).is_err());
    }
}
