//! A model provider for the tests: a real HTTP server on loopback speaking OpenAI's
//! chat-completions protocol (and Azure OpenAI's deployment route), streaming included.
//! The requested `model` picks its behaviour:
//! - anything else: answers at once (prompt 7 tokens, completion 5; streams 3 chunks + usage);
//! - `slow`: answers after 300 ms;
//! - `drip`: streams 20 chunks 40 ms apart (completion 20 tokens);
//! - `fail`: answers 500 every time.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Seen {
    pub calls: Arc<AtomicUsize>,
    /// Entra ID tokens issued by the managed-identity endpoint.
    pub tokens: Arc<AtomicUsize>,
    /// Headers and body of the last call.
    pub last: Arc<Mutex<Option<(HeaderMap, Value)>>>,
}

pub struct MockLlm {
    /// For an `openai` provider: `http://127.0.0.1:<port>/v1`.
    pub base: String,
    /// The managed-identity token endpoint (`IDENTITY_ENDPOINT`), whose header secret
    /// (`IDENTITY_HEADER`) is `id-secret`.
    pub identity_endpoint: String,
    /// For an `azure_openai` provider: `http://127.0.0.1:<port>`.
    pub azure_base: String,
    pub seen: Seen,
}

impl MockLlm {
    pub async fn start() -> MockLlm {
        let seen = Seen::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(azure),
            )
            .route("/msi/token", axum::routing::get(identity))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        MockLlm {
            base: format!("http://{addr}/v1"),
            azure_base: format!("http://{addr}"),
            identity_endpoint: format!("http://{addr}/msi/token"),
            seen,
        }
    }

    pub fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> (HeaderMap, Value) {
        self.seen.last.lock().unwrap().clone().expect("a call")
    }
}

/// An App Service style managed-identity endpoint.
async fn identity(
    State(seen): State<Seen>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some("id-secret")
        || q.get("resource").map(String::as_str) != Some("https://cognitiveservices.azure.com")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad identity request"})),
        )
            .into_response();
    }
    let n = seen.tokens.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({"access_token": format!("entra-token-{n}"), "expires_in": "3600", "token_type": "Bearer"}))
        .into_response()
}

async fn azure(
    State(seen): State<Seen>,
    Path(deployment): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> Response {
    let api_key = headers.get("api-key").and_then(|v| v.to_str().ok()) == Some("azure-key");
    let entra = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer entra-token-"));
    if !(api_key || entra) || !q.contains_key("api-version") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "bad api-key"}})),
        )
            .into_response();
    }
    body["model"] = json!(deployment);
    openai(State(seen), headers, Json(body)).await
}

async fn openai(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    *seen.last.lock().unwrap() = Some((headers, body.clone()));
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match model.as_str() {
        "fail" => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "the mock fails on purpose"}})),
            )
                .into_response()
        }
        "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if !stream {
        return Json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {model}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        }))
        .into_response();
    }
    // "running-usage": every chunk carries the usage so far, the last one with content too
    // (as vLLM's continuous usage stats, or providers that put usage in the final content chunk).
    let running = model == "running-usage";
    let (n, gap) = if model == "drip" {
        (20, Duration::from_millis(40))
    } else {
        (3, Duration::ZERO)
    };
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let events = futures::stream::unfold(0usize, move |i| {
        let model = model.clone();
        async move {
            if i > n {
                return None;
            }
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let data = if running && i < n {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": i + 1, "total_tokens": 8 + i}})
                .to_string()
            } else if running {
                return None;
            } else if i < n {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}]})
                .to_string()
            } else if include_usage {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [],
                       "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}})
                .to_string()
            } else {
                return None;
            };
            Some((
                Ok::<_, std::convert::Infallible>(Event::default().data(data)),
                i + 1,
            ))
        }
    });
    let done = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Event::default().data("[DONE]"))
    });
    use futures::StreamExt;
    Sse::new(events.chain(done)).into_response()
}
