//! OpenAI-compatible providers: OpenAI, vLLM, Ollama, llama.cpp, Azure's `/openai/v1`.

use super::client::{Inner, KeyHeader};
use super::{EventStream, ProviderAdapter, UpstreamError, UpstreamTarget};
use crate::trace::TraceContext;
use async_trait::async_trait;
use reqwest::Url;
use std::sync::Arc;

/// `POST {base_url}/chat/completions` with `Authorization: Bearer <API key>` (or an Entra ID
/// token, for an OpenAI-compatible Azure endpoint).
pub struct OpenAiAdapter {
    inner: Arc<Inner>,
}

impl OpenAiAdapter {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl ProviderAdapter for OpenAiAdapter {
    async fn chat(
        &self,
        target: &UpstreamTarget,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<serde_json::Value, UpstreamError> {
        let url = endpoint(target)?;
        self.inner
            .chat(target, url, KeyHeader::Bearer, body, trace)
            .await
    }

    async fn chat_stream(
        &self,
        target: &UpstreamTarget,
        body: &serde_json::Value,
        trace: &TraceContext,
    ) -> Result<EventStream, UpstreamError> {
        let url = endpoint(target)?;
        self.inner
            .chat_stream(target, url, KeyHeader::Bearer, body, trace)
            .await
    }
}

fn endpoint(target: &UpstreamTarget) -> Result<Url, UpstreamError> {
    let base = target.base_url.trim_end_matches('/');
    Url::parse(&format!("{base}/chat/completions"))
        .map_err(|e| UpstreamError::Protocol(format!("the base URL is not a URL: {e}")))
}
