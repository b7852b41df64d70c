//! OpenAI-compatible providers: OpenAI, vLLM, Ollama, llama.cpp, Azure's `/openai/v1`.

use super::client::{Inner, KeyHeader};
use super::{EventStream, JsonObject, ProviderAdapter, UpstreamError, UpstreamTarget};
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
    ) -> Result<JsonObject, UpstreamError> {
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

/// `{base_url}/chat/completions`, whether the base URL ends with a slash or not.
fn endpoint(target: &UpstreamTarget) -> Result<Url, UpstreamError> {
    let mut url = target.base_url.clone();
    url.path_segments_mut()
        .map_err(|()| UpstreamError::Protocol("the base URL cannot have a path".into()))?
        .pop_if_empty()
        .extend(["chat", "completions"]);
    Ok(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::upstream::{ProviderKind, UpstreamAuth};
    use zeroize::Zeroizing;

    fn target(base_url: &str) -> UpstreamTarget {
        UpstreamTarget {
            kind: ProviderKind::Openai,
            base_url: Url::parse(base_url).unwrap(),
            api_version: None,
            auth: UpstreamAuth::ApiKey(Zeroizing::new("k".into())),
            cache_key: "t/p".into(),
        }
    }

    #[test]
    fn appends_the_route_to_the_base_path() {
        for (base, url) in [
            (
                "https://api.openai.com/v1",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "https://api.openai.com/v1/",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/chat/completions",
            ),
            ("http://h/a%20b/v1", "http://h/a%20b/v1/chat/completions"),
        ] {
            assert_eq!(endpoint(&target(base)).unwrap().as_str(), url, "{base}");
        }
    }
}
