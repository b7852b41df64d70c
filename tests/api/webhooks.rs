//! Usage notifications: crossing 80% and 100% of a monthly quota calls the tenant's webhook
//! once each, signed (Standard Webhooks), delivered by the durable queue with retries.

use crate::both_backends;
use crate::gateway::{complete, fixture, settled};
use crate::helpers::{status_json, Backend, TestApp};
use crate::mock_llm::MockLlm;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

both_backends!(usage_thresholds_call_the_signed_webhook_once_each);

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Answer 500 to this many deliveries first.
    fail: Arc<AtomicUsize>,
}

async fn receiver() -> (String, Receiver) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(|headers: HeaderMap, body: String| async move {
            if state
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            state.got.lock().unwrap().push((headers, body));
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r)
}

fn verify(secret: &str, headers: &HeaderMap, body: &str) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = agentplane_control::webhook_signature(&key, id, ts, body.as_bytes());
    assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected);
    // And not with another key.
    assert_ne!(
        agentplane_control::webhook_signature(b"another key", id, ts, body.as_bytes()),
        expected
    );
}

async fn usage_thresholds_call_the_signed_webhook_once_each(b: Backend) {
    let mock = MockLlm::start().await;
    let (url, rx) = receiver().await;
    let app = TestApp::spawn_with(b, |env| {
        env.insert("AGENTPLANE_QUOTA_IDLE_MS".into(), "200".into());
    })
    .await;
    let f = fixture(
        &app,
        "Hooked",
        "openai",
        &mock.base,
        "gpt",
        json!({"monthly_messages": 5}),
    )
    .await;
    let hook = format!("/v1/tenants/{}/webhook", f.tenant);

    // Set: the secret is shown once; reads show its fingerprint only.
    for bad in [
        json!({"url": "ftp://example.com/x"}),
        json!({"url": "not a url"}),
        json!({"url": 5}),
        json!({}),
    ] {
        let (s, p) = status_json(
            app.call(Method::PUT, &hook, Some(&f.admin), Some(bad.clone()))
                .await,
        )
        .await;
        assert!(s == 400 || s == 422, "{bad} -> {s} {p}");
    }
    let (s, w) = status_json(
        app.call(
            Method::PUT,
            &hook,
            Some(&f.admin),
            Some(json!({"url": url})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{w}");
    let secret = w["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let (s, got) = status_json(app.get(&hook, &f.admin).await).await;
    assert_eq!((s, &got["url"]), (200, &json!(url)));
    assert!(
        !got.to_string().contains(&secret[6..]),
        "the secret is never shown again"
    );
    let other = app.active_tenant("Other").await;
    let (s, _) = status_json(
        app.get(&hook, &app.tenant_user("tenant_admin", &other))
            .await,
    )
    .await;
    assert_eq!(s, 404, "another tenant's admin sees no webhook");

    // 3 of 5: nothing. The 4th crosses 80%.
    for _ in 0..4 {
        assert_eq!(complete(&app, &f.key, crate::gateway_hello()).await.0, 200);
    }
    settled(&app, &f.tenant).await;
    app.run_jobs().await;
    {
        let got = rx.got.lock().unwrap();
        assert_eq!(got.len(), 1, "one notification at 80%");
        let (headers, body) = &got[0];
        verify(&secret, headers, body);
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "usage.threshold_reached");
        assert_eq!(
            v["data"],
            json!({"tenant_id": f.tenant, "period": v["data"]["period"], "quota": "monthly_messages",
                   "threshold": 80, "used": 4, "limit": 5})
        );
    }

    // A tenant-key rotation re-seals the signing secret; the secret itself stays the same.
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{}/keys/rotate?confirm=true", f.tenant),
            &f.admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202);
    app.run_jobs().await;
    let (_, got) = status_json(app.get(&hook, &f.admin).await).await;
    assert_eq!(got["key_version"], 2, "{got}");

    // The 5th crosses 100%; the endpoint fails once and the queue retries it.
    rx.fail.store(1, Ordering::SeqCst);
    assert_eq!(complete(&app, &f.key, crate::gateway_hello()).await.0, 200);
    settled(&app, &f.tenant).await;
    app.run_jobs().await;
    assert_eq!(
        rx.got.lock().unwrap().len(),
        1,
        "the failed delivery is not counted"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await; // the first retry's backoff
    app.run_jobs().await;
    {
        let got = rx.got.lock().unwrap();
        assert_eq!(got.len(), 2, "delivered on retry");
        let (headers, body) = &got[1];
        verify(&secret, headers, body);
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (v["data"]["threshold"].as_i64(), v["data"]["used"].as_i64()),
            (Some(100), Some(5))
        );
    }

    // Refused runs cross nothing more; a deleted webhook hears nothing.
    assert_eq!(complete(&app, &f.key, crate::gateway_hello()).await.0, 429);
    let (s, _) = status_json(app.call(Method::DELETE, &hook, Some(&f.admin), None).await).await;
    assert_eq!(s, 204);
    let (s, _) = status_json(app.get(&hook, &f.admin).await).await;
    assert_eq!(s, 404);
    app.run_jobs().await;
    assert_eq!(rx.got.lock().unwrap().len(), 2);
}
