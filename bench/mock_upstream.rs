//! A mock OpenAI-compatible upstream for the gateway load benchmark (`bench/gateway.sh`).
//!
//! ```sh
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:18101 --mode zero
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:18102 --mode delay20
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:18103 --mode sse --chunks 16 --chunk-gap-ms 20
//! ```
//!
//! Routes (each also under `/v1`): `POST /chat/completions`, `GET /models`, and `GET /stats`
//! (requests served so far, for the benchmark's cross-checks).
//!
//! - Non-streaming: a `chat.completion` with `usage` (`prompt_tokens` = bytes of the messages'
//!   text / 4, rounded up; `completion_tokens` fixed, `--completion-tokens`, default 16).
//! - `"stream": true`: server-sent events, one `data: {chunk}\n\n` per chunk; chunk `i`'s
//!   content is `"{i} "`, so the concatenated content of a complete, ordered stream is
//!   `"0 1 2 ... N-1 "`; then a chunk with `finish_reason: "stop"`, a chunk with `usage` (and
//!   empty `choices`) when `stream_options.include_usage` is true, then `data: [DONE]`. The
//!   first chunk is sent at once; `--chunk-gap-ms` apart after that.
//! - Modes: `zero` answers at once; `delay20` waits 20 ms before answering (before the
//!   headers, for streams too); `sse` answers at once and spaces stream chunks 20 ms apart by
//!   default (`zero` and `delay20` send the chunks back to back unless `--chunk-gap-ms` says
//!   otherwise).
//!
//! The API key is not checked. Multi-threaded tokio runtime, TCP_NODELAY, no logging.
//!
//! With `--proxy-to <base URL>` it answers nothing itself: it forwards each non-streaming
//! `POST /chat/completions` there as it is and returns the answer as it is. That is a bare
//! proxy on the gateway's own stack (axum, hyper, reqwest), with no parsing, no
//! authentication and no database: the ceiling for any gateway on the same machine.

// A benchmark tool: printing where it listens is its job.
#![allow(clippy::print_stdout)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Answer at once.
    Zero,
    /// Wait 20 ms before answering.
    Delay20,
    /// Answer at once; stream chunks 20 ms apart by default.
    Sse,
}

#[derive(Parser)]
#[command(name = "mock_upstream", about = "Mock OpenAI-compatible upstream")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18101")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value = "zero")]
    mode: Mode,
    /// Content chunks per stream.
    #[arg(long, default_value_t = 16)]
    chunks: u32,
    /// Pause between content chunks of a stream (default: 20 in `sse` mode, else 0).
    #[arg(long)]
    chunk_gap_ms: Option<u64>,
    /// `completion_tokens` of a non-streaming answer.
    #[arg(long, default_value_t = 16)]
    completion_tokens: u64,
    /// Be a bare proxy to this base URL instead (`.../v1`).
    #[arg(long)]
    proxy_to: Option<String>,
}

struct Mock {
    delay: Duration,
    gap: Duration,
    chunks: u32,
    completion_tokens: u64,
    requests: AtomicU64,
    streams: AtomicU64,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock_upstream: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock_upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A bare proxy: where to, and the client (configured as the gateway's).
struct Proxy {
    url: String,
    client: reqwest::Client,
}

async fn proxy(State(p): State<Arc<Proxy>>, body: Bytes) -> Response {
    let sent = p
        .client
        .post(&p.url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let res = match sent {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = res.status();
    match res.bytes().await {
        Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    if let Some(base) = &args.proxy_to {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(std::io::Error::other)?;
        let p = Arc::new(Proxy {
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            client,
        });
        let app = Router::new()
            .route("/chat/completions", post(proxy))
            .route("/v1/chat/completions", post(proxy))
            .with_state(p);
        let listener = listen(args.listen).await?;
        println!("mock_upstream proxying {} to {base}", args.listen);
        return axum::serve(listener, app.into_make_service()).await;
    }
    let default_gap = if args.mode == Mode::Sse { 20 } else { 0 };
    let mock = Arc::new(Mock {
        delay: if args.mode == Mode::Delay20 {
            Duration::from_millis(20)
        } else {
            Duration::ZERO
        },
        gap: Duration::from_millis(args.chunk_gap_ms.unwrap_or(default_gap)),
        chunks: args.chunks,
        completion_tokens: args.completion_tokens,
        requests: AtomicU64::new(0),
        streams: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/chat/completions", post(chat))
        .route("/v1/chat/completions", post(chat))
        .route("/models", get(models))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/v1/stats", get(stats))
        .with_state(mock);
    let listener = listen(args.listen).await?;
    println!("mock_upstream listening on {}", args.listen);
    axum::serve(listener, app).await
}

/// A listener whose connections send each write at once (`TCP_NODELAY`), as a provider's do.
async fn listen(
    addr: std::net::SocketAddr,
) -> std::io::Result<impl axum::serve::Listener<Addr = std::net::SocketAddr>> {
    Ok(tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    }))
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}
        ]}),
    )
}

async fn stats(State(mock): State<Arc<Mock>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "requests": mock.requests.load(Ordering::Relaxed),
            "streams": mock.streams.load(Ordering::Relaxed),
        }),
    )
}

async fn chat(State(mock): State<Arc<Mock>>, body: Bytes) -> Response {
    let n = mock.requests.fetch_add(1, Ordering::Relaxed);
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": format!("invalid JSON body: {e}"),
                    "type": "invalid_request_error", "param": null, "code": null}}),
            )
        }
    };
    if !mock.delay.is_zero() {
        tokio::time::sleep(mock.delay).await;
    }
    let prompt_tokens = prompt_tokens(&req.messages);
    let model = req.model.unwrap_or_else(|| "mock-model".to_owned());
    let id = format!("chatcmpl-mock-{n}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if !req.stream {
        let completion = mock.completion_tokens;
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                },
            }),
        );
    }
    mock.streams.fetch_add(1, Ordering::Relaxed);
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = |delta: Value, finish: Value| {
        sse_frame(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    };
    let mut frames: Vec<(Duration, Bytes)> = Vec::with_capacity(mock.chunks as usize + 3);
    for i in 0..mock.chunks {
        let delta = if i == 0 {
            json!({"role": "assistant", "content": format!("{i} ")})
        } else {
            json!({"content": format!("{i} ")})
        };
        let gap = if i == 0 { Duration::ZERO } else { mock.gap };
        frames.push((gap, chunk(delta, Value::Null)));
    }
    frames.push((Duration::ZERO, chunk(json!({}), json!("stop"))));
    if include_usage {
        let completion = u64::from(mock.chunks);
        frames.push((
            Duration::ZERO,
            sse_frame(&json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                },
            })),
        ));
    }
    frames.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    let body = futures::stream::iter(frames).then(|(gap, frame)| async move {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Ok::<Bytes, Infallible>(frame)
    });
    let mut res = Body::from_stream(body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// About a token per four bytes of the messages' text (at least 1).
fn prompt_tokens(messages: &[Message]) -> u64 {
    fn text_len(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(parts) => parts
                .iter()
                .map(|p| p.get("text").map_or(0, text_len))
                .sum(),
            _ => 0,
        }
    }
    let bytes: usize = messages.iter().map(|m| text_len(&m.content)).sum();
    (bytes as u64).div_ceil(4).max(1)
}

fn sse_frame(v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a `Value` cannot fail.
    let _ = serde_json::to_writer(&mut out, v);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
