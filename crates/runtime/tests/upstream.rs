//! The provider adapters against real HTTP servers on loopback that speak the OpenAI, Azure
//! OpenAI and Entra ID wire protocols.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentplane_runtime::trace::TraceContext;
use agentplane_runtime::upstream::{
    ProviderKind, StreamEvent, UpstreamAuth, UpstreamConfig, UpstreamError, UpstreamTarget,
    Upstreams,
};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

const KEY: &str = "sk-test-0123456789";
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const IDENTITY_HEADER: &str = "identity-header-secret-42";
const CLIENT_SECRET: &str = "client-secret-~xyz";

// ---------------------------------------------------------------- harness

/// One request as the mock server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn query(&self) -> HashMap<String, String> {
        pairs(self.uri.query().unwrap_or_default())
    }

    fn form(&self) -> HashMap<String, String> {
        pairs(std::str::from_utf8(&self.body).unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn pairs(urlencoded: &str) -> HashMap<String, String> {
    let url = reqwest::Url::parse(&format!("http://x/?{urlencoded}")).unwrap();
    url.query_pairs().into_owned().collect()
}

/// A server on a random loopback port that records every request and answers with
/// `respond(index of the call, request)`.
struct Mock {
    url: String,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    async fn start<F, Fut>(respond: F) -> Mock
    where
        F: Fn(usize, Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler = {
            let log = log.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let seen = Seen {
                    method,
                    uri,
                    headers,
                    body,
                };
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(seen.clone());
                    log.len() - 1
                };
                respond(n, seen)
            }
        };
        let app = Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock { url, log }
    }

    fn calls(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn seen(&self, n: usize) -> Seen {
        self.log.lock().unwrap()[n].clone()
    }
}

fn config() -> UpstreamConfig {
    UpstreamConfig {
        backoff_base: Duration::from_millis(1),
        ..UpstreamConfig::default()
    }
}

fn trace() -> TraceContext {
    TraceContext::from_header(Some(TRACE))
}

fn url(s: &str) -> reqwest::Url {
    reqwest::Url::parse(s).unwrap()
}

fn openai_target(mock: &Mock) -> UpstreamTarget {
    UpstreamTarget {
        kind: ProviderKind::Openai,
        base_url: url(&format!("{}/v1", mock.url)),
        api_version: None,
        auth: UpstreamAuth::ApiKey(Zeroizing::new(KEY.into())),
        cache_key: "tenant-a/openai".into(),
    }
}

fn azure_target(mock: &Mock, auth: UpstreamAuth, cache_key: &str) -> UpstreamTarget {
    UpstreamTarget {
        kind: ProviderKind::AzureOpenai,
        base_url: url(&mock.url),
        api_version: Some("2024-06-01".into()),
        auth,
        cache_key: cache_key.into(),
    }
}

fn request() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16
    })
}

fn stream_request() -> Value {
    let mut body = request();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

fn completion() -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    })
}

fn chunk(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    })
}

fn usage_chunk() -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    })
}

/// A chunk's object, or `None` for `[DONE]`.
fn payload(event: StreamEvent) -> Option<Value> {
    match event {
        StreamEvent::Chunk(obj) => Some(obj.to_value()),
        StreamEvent::Done => None,
    }
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    (status, Json(body)).into_response()
}

/// An SSE response whose body is `text` cut into pieces of the given sizes (cycling), each
/// sent on its own, then (if `stall`) nothing more, ever.
fn sse(text: String, sizes: &[usize], stall: bool) -> Response {
    let mut pieces = Vec::new();
    let mut rest = text.into_bytes();
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let tail = rest.split_off((*size).min(rest.len()));
        pieces.push(Bytes::from(std::mem::replace(&mut rest, tail)));
    }
    let body = futures::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, Infallible>(piece)
    });
    let body = if stall {
        Body::from_stream(body.chain(futures::stream::pending()))
    } else {
        Body::from_stream(body)
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn data(v: &Value) -> String {
    format!("data: {v}\r\n\r\n")
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

/// A provider that answers a completion only to `Authorization: Bearer <token>` for which
/// `accept(token)` holds, 401 otherwise.
async fn bearer_provider(accept: fn(&str) -> bool) -> Mock {
    Mock::start(move |_, seen| async move {
        let token = seen
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(t) if accept(t) => Json(completion()).into_response(),
            _ => openai_error(StatusCode::UNAUTHORIZED, "invalid token"),
        }
    })
    .await
}

fn assert_no_secret(err: &UpstreamError, secret: &str) {
    let text = format!("{err} {err:?}");
    assert!(!text.contains(secret), "secret leaked in {text}");
}

// ---------------------------------------------------------------- OpenAI

#[tokio::test]
async fn openai_chat_sends_the_key_to_the_path_with_the_traceparent() {
    let mock = Mock::start(|_, _| async { Json(completion()).into_response() }).await;
    let ups = Upstreams::new(config()).unwrap();

    let got = ups
        .adapter(ProviderKind::Openai)
        .chat(&openai_target(&mock), &request(), &trace())
        .await
        .unwrap();

    assert_eq!(got.to_value(), completion());
    let seen = mock.seen(0);
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri.path(), "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(seen.header("traceparent"), Some(TRACE));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(seen.json(), request());
}

#[tokio::test]
async fn openai_stream_yields_the_chunks_in_order_then_done() {
    let contents = ["Hel", "lo", " world"];
    let mut text = ": keep-alive\r\n\r\n".to_owned();
    for c in contents {
        text.push_str(&data(&chunk(c)));
    }
    text.push_str(": keep-alive\r\n\r\n");
    text.push_str(&data(&usage_chunk()));
    text.push_str("data: [DONE]\r\n\r\n");
    let mock = Mock::start(move |_, _| {
        let text = text.clone();
        async move { sse(text, &[1, 7, 3, 13, 2, 29, 61], false) }
    })
    .await;
    let ups = Upstreams::new(config()).unwrap();

    let stream = ups
        .adapter(ProviderKind::Openai)
        .chat_stream(&openai_target(&mock), &stream_request(), &trace())
        .await
        .unwrap();
    let events: Vec<_> = stream.map(|ev| payload(ev.unwrap())).collect().await;

    let mut expected: Vec<_> = contents.iter().map(|c| Some(chunk(c))).collect();
    expected.push(Some(usage_chunk()));
    expected.push(None);
    assert_eq!(events, expected);
    let seen = mock.seen(0);
    assert_eq!(seen.header("accept"), Some("text/event-stream"));
    assert_eq!(seen.header("traceparent"), Some(TRACE));
    assert_eq!(seen.json(), stream_request());
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn a_429_with_retry_after_is_retried_until_it_succeeds() {
    let mock = Mock::start(|n, _| async move {
        if n < 2 {
            let mut resp = openai_error(StatusCode::TOO_MANY_REQUESTS, "Rate limit reached");
            resp.headers_mut()
                .insert(header::RETRY_AFTER, "0".parse().unwrap());
            resp
        } else {
            Json(completion()).into_response()
        }
    })
    .await;
    let ups = Upstreams::new(config()).unwrap();

    let got = ups
        .adapter(ProviderKind::Openai)
        .chat(&openai_target(&mock), &request(), &trace())
        .await
        .unwrap();

    assert_eq!(got.to_value(), completion());
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn a_500_fails_after_max_retries() {
    let mock = Mock::start(|_, _| async {
        (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response()
    })
    .await;
    let cfg = config();
    let attempts = cfg.max_retries as usize + 1;
    let ups = Upstreams::new(cfg).unwrap();

    let err = ups
        .adapter(ProviderKind::Openai)
        .chat(&openai_target(&mock), &request(), &trace())
        .await
        .unwrap_err();

    let UpstreamError::Status {
        status: 500,
        message,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(message, "upstream exploded");
    assert_eq!(mock.calls(), attempts);
}

#[tokio::test]
async fn a_400_is_not_retried_and_carries_the_openai_error_message() {
    let mock = Mock::start(|_, _| async {
        openai_error(StatusCode::BAD_REQUEST, "The model `gpt-9` does not exist")
    })
    .await;
    let ups = Upstreams::new(config()).unwrap();

    let err = ups
        .adapter(ProviderKind::Openai)
        .chat(&openai_target(&mock), &request(), &trace())
        .await
        .unwrap_err();

    let UpstreamError::Status {
        status: 400,
        message,
        retry_after: None,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(message, "The model `gpt-9` does not exist");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_answered_not_waited_for() {
    let mock = Mock::start(|_, _| async {
        let mut resp = openai_error(StatusCode::TOO_MANY_REQUESTS, "Rate limit reached");
        resp.headers_mut()
            .insert(header::RETRY_AFTER, "60".parse().unwrap());
        resp
    })
    .await;
    let ups = Upstreams::new(config()).unwrap();

    let err = ups
        .adapter(ProviderKind::Openai)
        .chat(&openai_target(&mock), &request(), &trace())
        .await
        .unwrap_err();

    let UpstreamError::Status {
        status: 429,
        retry_after,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(retry_after, Some(Duration::from_secs(60)));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_stream_is_retried_until_the_headers_arrive() {
    let mock = Mock::start(|n, _| async move {
        if n == 0 {
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        } else {
            sse(
                format!("{}data: [DONE]\n\n", data(&chunk("hi"))),
                &[5],
                false,
            )
        }
    })
    .await;
    let ups = Upstreams::new(config()).unwrap();

    let stream = ups
        .adapter(ProviderKind::Openai)
        .chat_stream(&openai_target(&mock), &stream_request(), &trace())
        .await
        .unwrap();
    let events: Vec<_> = stream.map(|ev| payload(ev.unwrap())).collect().await;

    assert_eq!(events, [Some(chunk("hi")), None]);
    assert_eq!(mock.calls(), 2);
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn a_slow_upstream_times_out_and_is_retried() {
    let mock = Mock::start(|_, _| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Json(completion()).into_response()
    })
    .await;
    let ups = Upstreams::new(UpstreamConfig {
        request_timeout: Duration::from_millis(300),
        max_retries: 1,
        ..config()
    })
    .unwrap();

    let err = ups
        .adapter(ProviderKind::Openai)
        .chat(&openai_target(&mock), &request(), &trace())
        .await
        .unwrap_err();

    assert!(matches!(err, UpstreamError::Timeout), "{err:?}");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn a_stream_that_stalls_ends_with_a_timeout_after_its_first_chunks() {
    let text = format!("{}{}", data(&chunk("Hel")), data(&chunk("lo")));
    let mock = Mock::start(move |_, _| {
        let text = text.clone();
        async move { sse(text, &[11], true) }
    })
    .await;
    let ups = Upstreams::new(UpstreamConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    })
    .unwrap();

    let mut stream = ups
        .adapter(ProviderKind::Openai)
        .chat_stream(&openai_target(&mock), &stream_request(), &trace())
        .await
        .unwrap();

    assert_eq!(
        payload(stream.next().await.unwrap().unwrap()),
        Some(chunk("Hel"))
    );
    assert_eq!(
        payload(stream.next().await.unwrap().unwrap()),
        Some(chunk("lo"))
    );
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout), "{err:?}");
    assert!(stream.next().await.is_none());
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn answers_that_break_the_protocol_are_protocol_errors() {
    let mock = Mock::start(|n, _| async move {
        match n {
            0 => "<html>not json</html>".into_response(),
            _ => Json(completion()).into_response(),
        }
    })
    .await;
    let ups = Upstreams::new(config()).unwrap();
    let adapter = ups.adapter(ProviderKind::Openai);
    let target = openai_target(&mock);

    let not_json = adapter.chat(&target, &request(), &trace()).await;
    let not_sse = adapter
        .chat_stream(&target, &stream_request(), &trace())
        .await;

    assert!(matches!(not_json, Err(UpstreamError::Protocol(_))));
    assert!(matches!(not_sse, Err(UpstreamError::Protocol(_))));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_connect_error_without_the_url() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let target = UpstreamTarget {
        base_url: url(&format!("http://{addr}/v1")),
        ..openai_target(&Mock::start(|_, _| async { StatusCode::OK.into_response() }).await)
    };
    let ups = Upstreams::new(config()).unwrap();

    let err = ups
        .adapter(ProviderKind::Openai)
        .chat(&target, &request(), &trace())
        .await
        .unwrap_err();

    let UpstreamError::Connect(message) = &err else {
        panic!("{err:?}");
    };
    assert!(!message.contains(&addr.port().to_string()), "{message}");
    assert_no_secret(&err, KEY);
}

#[test]
fn debug_output_hides_secrets() {
    let cfg = UpstreamConfig {
        identity_endpoint: Some("http://127.0.0.1:1/msi/token".into()),
        identity_header: Some(Zeroizing::new(IDENTITY_HEADER.into())),
        ..UpstreamConfig::default()
    };
    let api_key = UpstreamAuth::ApiKey(Zeroizing::new(KEY.into()));
    let client_credentials = UpstreamAuth::ClientCredentials {
        authority: String::new(),
        tenant: "contoso".into(),
        client_id: "app-1".into(),
        secret: Zeroizing::new(CLIENT_SECRET.into()),
    };
    let text = format!("{cfg:?} {api_key:?} {client_credentials:?}");
    for secret in [IDENTITY_HEADER, KEY, CLIENT_SECRET] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("app-1"), "{text}");
}

// ---------------------------------------------------------------- Azure

#[tokio::test]
async fn azure_sends_the_api_key_to_the_deployment_with_the_api_version() {
    let mock = Mock::start(|_, _| async { Json(completion()).into_response() }).await;
    let ups = Upstreams::new(config()).unwrap();
    let auth = UpstreamAuth::ApiKey(Zeroizing::new(KEY.into()));

    let got = ups
        .adapter(ProviderKind::AzureOpenai)
        .chat(
            &azure_target(&mock, auth, "tenant-a/azure"),
            &request(),
            &trace(),
        )
        .await
        .unwrap();

    assert_eq!(got.to_value(), completion());
    let seen = mock.seen(0);
    assert_eq!(
        seen.uri.path(),
        "/openai/deployments/gpt-4o-mini/chat/completions"
    );
    assert_eq!(seen.query()["api-version"], "2024-06-01");
    assert_eq!(seen.header("api-key"), Some(KEY));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("traceparent"), Some(TRACE));
    assert_eq!(seen.json(), request());
}

#[tokio::test]
async fn azure_managed_identity_fetches_one_token_for_many_calls() {
    let identity = Mock::start(|_, seen| async move {
        let query = seen.query();
        if seen.header("x-identity-header") != Some(IDENTITY_HEADER)
            || query.get("resource").map(String::as_str)
                != Some("https://cognitiveservices.azure.com")
        {
            return (StatusCode::BAD_REQUEST, "bad token request").into_response();
        }
        Json(json!({
            "access_token": "mi-token-1",
            "expires_on": in_an_hour().to_string(),
            "resource": "https://cognitiveservices.azure.com",
            "token_type": "Bearer",
            "client_id": "uami-client"
        }))
        .into_response()
    })
    .await;
    let provider = bearer_provider(|t| t == "mi-token-1").await;
    let ups = Upstreams::new(UpstreamConfig {
        identity_endpoint: Some(format!("{}/msi/token", identity.url)),
        identity_header: Some(Zeroizing::new(IDENTITY_HEADER.into())),
        ..config()
    })
    .unwrap();
    let auth = UpstreamAuth::ManagedIdentity {
        client_id: Some("uami-client".into()),
    };
    let target = azure_target(&provider, auth, "tenant-a/azure");
    let adapter = ups.adapter(ProviderKind::AzureOpenai);

    let concurrent = futures::future::join_all(
        (0..4).map(|_| async { adapter.chat(&target, &request(), &trace()).await }),
    )
    .await;
    let later = adapter.chat(&target, &request(), &trace()).await;

    for result in concurrent.into_iter().chain([later]) {
        assert_eq!(result.unwrap().to_value(), completion());
    }
    assert_eq!(identity.calls(), 1);
    assert_eq!(provider.calls(), 5);
    let token_request = identity.seen(0);
    assert_eq!(token_request.method, Method::GET);
    assert_eq!(token_request.uri.path(), "/msi/token");
    let query = token_request.query();
    assert_eq!(query["api-version"], "2019-08-01");
    assert_eq!(query["client_id"], "uami-client");
    assert_eq!(provider.seen(0).header("api-key"), None);
}

#[tokio::test]
async fn imds_is_asked_with_the_metadata_header() {
    let identity = Mock::start(|_, seen| async move {
        if seen.header("metadata") != Some("true") {
            return (StatusCode::BAD_REQUEST, "missing Metadata header").into_response();
        }
        Json(json!({"access_token": "imds-token", "expires_in": "3599", "expires_on": "1"}))
            .into_response()
    })
    .await;
    let provider = bearer_provider(|t| t == "imds-token").await;
    let ups = Upstreams::new(UpstreamConfig {
        identity_endpoint: Some(format!("{}/metadata/identity/oauth2/token", identity.url)),
        ..config()
    })
    .unwrap();
    let auth = UpstreamAuth::ManagedIdentity { client_id: None };
    let target = azure_target(&provider, auth, "tenant-a/azure");

    for _ in 0..2 {
        let got = ups
            .adapter(ProviderKind::AzureOpenai)
            .chat(&target, &request(), &trace())
            .await;
        assert_eq!(got.unwrap().to_value(), completion());
    }

    assert_eq!(identity.calls(), 1);
    let query = identity.seen(0).query();
    assert_eq!(query["api-version"], "2018-02-01");
    assert!(!query.contains_key("client_id"));
    assert_eq!(identity.seen(0).header("x-identity-header"), None);
}

#[tokio::test]
async fn a_managed_identity_failure_is_an_auth_error_without_the_secret() {
    // A token endpoint that (wrongly) echoes the secret header back in its error.
    let identity = Mock::start(|_, seen| async move {
        let echoed = seen.header("x-identity-header").unwrap_or_default().to_owned();
        let body = json!({"error": {"code": "BadRequest", "message": format!("identity {echoed} is unknown")}});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    })
    .await;
    let provider = bearer_provider(|_| true).await;
    let ups = Upstreams::new(UpstreamConfig {
        identity_endpoint: Some(format!("{}/msi/token", identity.url)),
        identity_header: Some(Zeroizing::new(IDENTITY_HEADER.into())),
        ..config()
    })
    .unwrap();
    let auth = UpstreamAuth::ManagedIdentity { client_id: None };

    let err = ups
        .adapter(ProviderKind::AzureOpenai)
        .chat(
            &azure_target(&provider, auth.clone(), "t/p"),
            &request(),
            &trace(),
        )
        .await
        .unwrap_err();

    let UpstreamError::Auth(message) = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("400"), "{message}");
    assert!(message.contains("is unknown"), "{message}");
    assert_no_secret(&err, IDENTITY_HEADER);
    assert_eq!(identity.calls(), 1);
    assert_eq!(provider.calls(), 0);

    let unconfigured = Upstreams::new(config()).unwrap();
    let err = unconfigured
        .adapter(ProviderKind::AzureOpenai)
        .chat(&azure_target(&provider, auth, "t/p"), &request(), &trace())
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Auth(_)), "{err:?}");
}

#[tokio::test]
async fn client_credentials_tokens_are_cached_per_tenant() {
    let entra = Mock::start(|n, seen| async move {
        let form = seen.form();
        let expected = [
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", CLIENT_SECRET),
            ("scope", "https://cognitiveservices.azure.com/.default"),
        ];
        if expected
            .iter()
            .any(|(k, v)| form.get(*k).map(String::as_str) != Some(*v))
        {
            let body = json!({"error": "invalid_request", "error_description": "AADSTS900144: bad form"});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
        Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("cc-token-{n}")}))
            .into_response()
    })
    .await;
    let provider = bearer_provider(|t| t.starts_with("cc-token-")).await;
    let ups = Upstreams::new(config()).unwrap();
    let auth = UpstreamAuth::ClientCredentials {
        authority: entra.url.clone(),
        tenant: "contoso-tenant".into(),
        client_id: "app-1".into(),
        secret: Zeroizing::new(CLIENT_SECRET.into()),
    };
    let adapter = ups.adapter(ProviderKind::AzureOpenai);

    for cache_key in ["tenant-a/p1", "tenant-a/p1", "tenant-b/p1", "tenant-b/p1"] {
        let target = azure_target(&provider, auth.clone(), cache_key);
        let got = adapter.chat(&target, &request(), &trace()).await;
        assert_eq!(got.unwrap().to_value(), completion());
    }

    assert_eq!(entra.calls(), 2);
    let token_request = entra.seen(0);
    assert_eq!(token_request.method, Method::POST);
    assert_eq!(
        token_request.uri.path(),
        "/contoso-tenant/oauth2/v2.0/token"
    );
    let tokens: Vec<_> = (0..4)
        .map(|n| provider.seen(n).header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(
        tokens,
        [
            "Bearer cc-token-0",
            "Bearer cc-token-0",
            "Bearer cc-token-1",
            "Bearer cc-token-1"
        ]
    );
}

#[tokio::test]
async fn a_401_drops_the_cached_token() {
    let entra = Mock::start(|n, _| async move {
        Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("token-{n}")}))
            .into_response()
    })
    .await;
    let provider = bearer_provider(|t| t != "token-0").await;
    let ups = Upstreams::new(config()).unwrap();
    let auth = UpstreamAuth::ClientCredentials {
        authority: entra.url.clone(),
        tenant: "contoso-tenant".into(),
        client_id: "app-1".into(),
        secret: Zeroizing::new(CLIENT_SECRET.into()),
    };
    let target = azure_target(&provider, auth, "tenant-a/p1");
    let adapter = ups.adapter(ProviderKind::AzureOpenai);

    let rejected = adapter.chat(&target, &request(), &trace()).await;
    let accepted = adapter.chat(&target, &request(), &trace()).await;

    assert!(
        matches!(rejected, Err(UpstreamError::Status { status: 401, .. })),
        "{rejected:?}"
    );
    assert_eq!(accepted.unwrap().to_value(), completion());
    assert_eq!(entra.calls(), 2);
    assert_eq!(provider.calls(), 2);
    assert_eq!(
        provider.seen(1).header("authorization"),
        Some("Bearer token-1")
    );
}
