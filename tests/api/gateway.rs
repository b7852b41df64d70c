//! The execution gateway: `POST /v1/chat/completions` (plain and streamed) and
//! `POST /v1/tenants/{id}/runs` against a real HTTP provider on loopback; exact quotas under
//! concurrency, every run metered, the tenant always the key's.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use crate::mock_llm::MockLlm;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

both_backends!(
    completions_plain_and_streamed_are_metered_with_the_providers_figures,
    runs_take_the_tenant_from_the_key,
    concurrent_runs_never_overshoot_the_quota_and_lose_none,
    a_stream_cut_by_the_client_is_settled_with_the_real_tokens,
    usage_in_every_chunk_loses_no_content,
    a_client_gone_before_the_answer_is_still_metered,
    a_client_gone_before_the_first_chunk_is_still_metered,
    a_failing_provider_releases_the_reservation,
    limits_and_plan_changes_apply_at_once,
    bad_requests_get_openai_shaped_errors_and_change_nothing,
    azure_api_keys_need_the_fallback_flag,
    azure_managed_identity_needs_no_secret_and_no_fallback,
    the_official_openai_python_sdk_works_unchanged,
    agent_and_provider_changes_apply_at_once_in_every_process
);

pub(crate) struct Fixture {
    pub tenant: String,
    pub admin: String,
    pub key: String,
    pub agent_id: String,
}

/// A plan with these monthly messages (and generous everything else), for `tenant`.
pub(crate) async fn plan_for(app: &TestApp, tenant: &str, limits: Value) {
    let op = app.platform_admin();
    let id = format!("gw{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut l = json!({"monthly_messages": 1_000_000, "monthly_tokens": 1_000_000_000,
                       "requests_per_minute": 1_000_000, "max_concurrent_runs": 10_000});
    for (k, v) in limits.as_object().unwrap() {
        l[k] = v.clone();
    }
    let (s, b) = status_json(
        app.post(
            "/v1/admin/plans",
            &op,
            json!({"id": id, "name": "Gateway test", "limits": l}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let res = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/tenants/{tenant}/plan"),
            Some(&op),
            Some(json!({"plan_id": id})),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// An active tenant on a plan with `limits`, a provider pointing at `base` of `kind`, an agent
/// named `agent` running `model`, and an API key.
pub(crate) async fn fixture(
    app: &TestApp,
    name: &str,
    kind: &str,
    base: &str,
    model: &str,
    limits: Value,
) -> Fixture {
    let tenant = app.active_tenant(name).await;
    plan_for(app, &tenant, limits).await;
    let admin = app.tenant_user("tenant_admin", &tenant);
    let api_key = if kind == "azure_openai" {
        "azure-key"
    } else {
        "sk-test"
    };
    let (s, p) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/providers"),
            &admin,
            json!({"name": "llm", "kind": kind, "base_url": base, "api_key": api_key}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let (s, a) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/agents"),
            &admin,
            json!({"name": "helper", "provider_id": p["id"], "model": model,
                   "system_prompt": "You are terse.", "params": {"max_tokens": 64}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let (s, k) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/api-keys"),
            &admin,
            json!({"name": "app"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{k}");
    Fixture {
        tenant,
        admin,
        key: k["key"].as_str().unwrap().to_owned(),
        agent_id: a["id"].as_str().unwrap().to_owned(),
    }
}

pub(crate) async fn complete(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if s >= 400 {
        assert!(
            body["error"]["message"].is_string(),
            "OpenAI-shaped error: {body}"
        );
    }
    (s, body)
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// A streamed chat completion with the agent `helper`.
async fn stream_to_helper(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(key)
        .json(&json!({"model": "helper", "stream": true, "messages": [{"role": "user", "content": "go"}]}))
        .send()
        .await
        .unwrap()
}

/// The chunks of a streamed answer that ends with `[DONE]`, and their content joined.
fn stream_chunks(body: &str) -> (Vec<Value>, String) {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (chunks, text)
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

pub(crate) async fn usage(app: &TestApp, tenant: &str) -> Value {
    let (s, u) = status_json(
        app.get(
            &format!("/v1/admin/tenants/{tenant}/usage"),
            &app.platform_admin(),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{u}");
    u
}

/// The tenant's last usage record, waiting for it: a run whose client left is settled on its
/// own time.
async fn record_once_written(app: &TestApp, tenant: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = records(app, tenant).await.pop() {
            return r;
        }
        assert!(Instant::now() < deadline, "the run was never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn records(app: &TestApp, tenant: &str) -> Vec<Value> {
    let (s, all) = status_json(
        app.get("/v1/admin/usage/export?format=json", &app.platform_admin())
            .await,
    )
    .await;
    assert_eq!(s, 200, "{all}");
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tenant_id"] == tenant)
        .cloned()
        .collect()
}

/// Waits until the process has returned its idle leases (nothing reserved any more).
pub(crate) async fn settled(app: &TestApp, tenant: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let u = usage(app, tenant).await;
        if u["messages"]["reserved"] == 0 && u["tokens"]["reserved"] == 0 {
            return u;
        }
        assert!(Instant::now() < deadline, "leases never returned: {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fast_leases(env: &mut std::collections::HashMap<String, String>) {
    env.insert("AGENTPLANE_QUOTA_IDLE_MS".into(), "200".into());
    env.insert("AGENTPLANE_UPSTREAM_MAX_RETRIES".into(), "1".into());
}

async fn completions_plain_and_streamed_are_metered_with_the_providers_figures(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(&app, "Meter", "openai", &mock.base, "gpt-test", json!({})).await;

    // Plain: the provider sees the agent's model, system prompt and bound, and our trace.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&f.key)
        .header("traceparent", trace)
        .json(&json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["model"], "helper");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from gpt-test"
    );
    assert_eq!(body["usage"]["total_tokens"], 12);
    let (headers, sent) = mock.last();
    assert_eq!(sent["model"], "gpt-test");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(sent["messages"][1]["content"], "hi");
    assert_eq!(
        sent["max_tokens"], 64,
        "the request may lower the agent's bound, never raise it"
    );
    assert_eq!(headers["authorization"], "Bearer sk-test");
    let forwarded = headers["traceparent"].to_str().unwrap();
    assert!(
        forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{forwarded}"
    );
    assert!(
        !forwarded.contains("00f067aa0ba902b7"),
        "our own span, not the caller's"
    );

    // Streamed: chunks in order, usage in the last chunk, then [DONE].
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&f.key)
        .json(&json!({"model": f.agent_id, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (chunks, text) = stream_chunks(&res.text().await.unwrap());
    assert_eq!(text, "t0 t1 t2 ");
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 3, "{last}");
    assert_eq!(mock.last().1["stream_options"]["include_usage"], true);

    // Both runs are metered with the provider's figures, and the lease is given back.
    let u = settled(&app, &f.tenant).await;
    assert_eq!(u["messages"]["used"], 2, "{u}");
    assert_eq!(u["tokens"]["used"], 12 + 10, "{u}");
    let recs = records(&app, &f.tenant).await;
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs
        .iter()
        .all(|r| r["status"] == "ok" && r["provider"] == "llm" && r["model"] == "gpt-test"));
    assert!(recs
        .iter()
        .any(|r| r["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(
        recs.iter()
            .map(|r| r["tokens_out"].as_i64().unwrap())
            .sum::<i64>(),
        8
    );

    // The tenant admin sees the same through the tenant-scoped usage route.
    let (s, own) = status_json(
        app.get(&format!("/v1/admin/tenants/{}/usage", f.tenant), &f.admin)
            .await,
    )
    .await;
    assert_eq!((s, &own["messages"]["used"]), (200, &json!(2)), "{own}");
}

async fn runs_take_the_tenant_from_the_key(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let a = fixture(&app, "Alpha", "openai", &mock.base, "gpt-a", json!({})).await;
    let other = fixture(&app, "Bravo", "openai", &mock.base, "gpt-b", json!({})).await;

    let run = |tenant: String, key: String, body: Value| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(format!("{}/v1/tenants/{tenant}/runs", app.base))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            status_json(res).await
        }
    };
    let (s, r) = run(
        a.tenant.clone(),
        a.key.clone(),
        json!({"agent": "helper", "input": "hi"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["output"], "hello from gpt-a");
    assert_eq!(r["usage"]["total_tokens"], 12);
    assert_eq!(r["trace_id"].as_str().unwrap().len(), 32);
    // Both tenants have an agent named `helper`: each key runs its own tenant's.
    let (s, r) = complete(&app, &other.key, hello("helper")).await;
    assert_eq!(
        (s, &r["choices"][0]["message"]["content"]),
        (200, &json!("hello from gpt-b"))
    );

    // Tenant B's key: on A's path, and on A's agent by id through the OpenAI surface.
    let (s, _) = run(
        a.tenant.clone(),
        other.key.clone(),
        json!({"agent": "helper", "input": "hi"}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, e) = complete(&app, &other.key, hello(&a.agent_id)).await;
    assert_eq!(s, 404, "{e}");
    assert_eq!(e["error"]["code"], "agent_not_found");
    let (s, _) = run(
        other.tenant.clone(),
        other.key.clone(),
        json!({"agent": a.agent_id, "input": "hi"}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(mock.calls(), 2, "no refused run reached the provider");

    // A key scoped to no agent of this tenant's runs nothing; a revoked key is refused at once.
    let (s, k) = status_json(
        app.post(
            &format!("/v1/tenants/{}/api-keys", a.tenant),
            &a.admin,
            json!({"name": "scoped", "scopes": {"models": ["another-model"]}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let (s, _) = complete(&app, k["key"].as_str().unwrap(), hello("helper")).await;
    assert_eq!(s, 404);
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!(
                "/v1/tenants/{}/api-keys/{}?confirm=true",
                a.tenant,
                k["api_key"]["id"].as_str().unwrap()
            ),
            Some(&a.admin),
            None,
        )
        .await,
    )
    .await;
    assert!(s == 200 || s == 204, "{s}");
    let (s, e) = complete(&app, k["key"].as_str().unwrap(), hello("helper")).await;
    assert_eq!(s, 401, "{e}");
    let (s, _) = run(
        a.tenant.clone(),
        "ap_live_0000000000000000_nope".into(),
        json!({"agent": "helper", "input": "x"}),
    )
    .await;
    assert_eq!(s, 401);

    // Runs problems are problem+json: bodies that are not runs change nothing.
    for bad in [
        json!({"agent": "helper"}),
        json!({"agent": "helper", "input": "a", "messages": []}),
        json!({"agent": 5}),
        json!([1]),
    ] {
        let (s, p) = run(a.tenant.clone(), a.key.clone(), bad.clone()).await;
        assert!(s == 400 || s == 422, "{bad} -> {s} {p}");
    }
    assert_eq!(usage(&app, &a.tenant).await["messages"]["used"], 1);

    // An agent's new model applies once the per-process cache (1 s by default) expires.
    let res = app
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{}/agents/{}", a.tenant, a.agent_id),
            Some(&a.admin),
            Some(json!({"model": "gpt-a2"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (s, r) = complete(&app, &a.key, hello("helper")).await;
    assert_eq!(
        (s, &r["choices"][0]["message"]["content"]),
        (200, &json!("hello from gpt-a2"))
    );
}

async fn concurrent_runs_never_overshoot_the_quota_and_lose_none(b: Backend) {
    const QUOTA: i64 = 50;
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(
        &app,
        "Exact",
        "openai",
        &mock.base,
        "gpt-test",
        json!({"monthly_messages": QUOTA}),
    )
    .await;
    let results =
        futures::future::join_all((0..200).map(|_| complete(&app, &f.key, hello("helper")))).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count() as i64;
    for (s, e) in &results {
        assert!(*s == 200 || *s == 429, "{s} {e}");
        if *s == 429 {
            assert_eq!(e["error"]["code"], "quota_exceeded", "{e}");
        }
    }
    assert!(ok <= QUOTA, "{ok} runs succeeded on a quota of {QUOTA}");
    let u = settled(&app, &f.tenant).await;
    assert_eq!(u["messages"]["used"], ok, "{u}");
    assert_eq!(records(&app, &f.tenant).await.len() as i64, ok);

    // Nothing was lost: retrying until refused uses exactly the rest.
    let mut more = 0;
    loop {
        let (s, e) = complete(&app, &f.key, hello("helper")).await;
        if s != 200 {
            assert_eq!(
                (s, &e["error"]["code"]),
                (429, &json!("quota_exceeded")),
                "{e}"
            );
            break;
        }
        more += 1;
        assert!(ok + more <= QUOTA);
    }
    assert_eq!(ok + more, QUOTA);
    assert_eq!(records(&app, &f.tenant).await.len() as i64, QUOTA);
    assert_eq!(
        mock.calls() as i64,
        QUOTA,
        "a refused run never reaches the provider"
    );
    let u = settled(&app, &f.tenant).await;
    assert_eq!(
        (
            u["messages"]["used"].as_i64(),
            u["messages"]["remaining"].as_i64()
        ),
        (Some(QUOTA), Some(0))
    );
}

async fn a_stream_cut_by_the_client_is_settled_with_the_real_tokens(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(&app, "Cut", "openai", &mock.base, "drip", json!({})).await;
    let res = stream_to_helper(&app, &f.key).await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("t0"));
    drop(body); // the client goes away after the first chunk

    let rec = record_once_written(&app, &f.tenant).await;
    assert_eq!(rec["status"], "client_closed");
    assert_eq!(
        (rec["tokens_in"].as_i64(), rec["tokens_out"].as_i64()),
        (Some(7), Some(20)),
        "{rec}"
    );
    let u = settled(&app, &f.tenant).await;
    assert_eq!(
        (u["messages"]["used"].as_i64(), u["tokens"]["used"].as_i64()),
        (Some(1), Some(27))
    );
}

/// A provider that reports the usage so far in every chunk, content chunks included: every
/// chunk reaches the client, in order, and the run is settled with the last figures.
async fn usage_in_every_chunk_loses_no_content(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(
        &app,
        "Running",
        "openai",
        &mock.base,
        "running-usage",
        json!({}),
    )
    .await;
    let res = stream_to_helper(&app, &f.key).await;
    assert_eq!(res.status(), 200);
    let (chunks, text) = stream_chunks(&res.text().await.unwrap());
    assert_eq!(text, "t0 t1 t2 ", "{chunks:?}");
    let completion: Vec<_> = chunks
        .iter()
        .map(|c| c["usage"]["completion_tokens"].as_i64())
        .collect();
    assert_eq!(completion, [Some(1), Some(2), Some(3)]);
    assert!(chunks.iter().all(|c| c["model"] == "helper"), "{chunks:?}");

    let rec = record_once_written(&app, &f.tenant).await;
    assert_eq!(rec["status"], "ok");
    assert_eq!(
        (rec["tokens_in"].as_i64(), rec["tokens_out"].as_i64()),
        (Some(7), Some(3)),
        "{rec}"
    );
}

/// A non-streamed run is driven by the client's request; when the client leaves mid-call, the
/// run goes on by itself and is settled with the provider's figures.
async fn a_client_gone_before_the_answer_is_still_metered(b: Backend) {
    client_leaves_early(b, hello("helper"), "ok", (7, 5)).await;
}

/// A streamed run whose client leaves before the provider's first chunk still reads the
/// provider to the end and is settled with its figures.
async fn a_client_gone_before_the_first_chunk_is_still_metered(b: Backend) {
    let body = json!({"model": "helper", "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    client_leaves_early(b, body, "client_closed", (7, 3)).await;
}

/// Sends `body` to a provider that answers after 300 ms, gives up after 100 ms, then expects
/// one usage record with `status` and the provider's `tokens` (in, out), and the tenant
/// charged one message and those tokens.
async fn client_leaves_early(b: Backend, body: Value, status: &str, tokens: (i64, i64)) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(&app, "Gone early", "openai", &mock.base, "slow", json!({})).await;
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&f.key)
        .timeout(Duration::from_millis(100))
        .json(&body)
        .send()
        .await;
    assert!(
        res.is_err_and(|e| e.is_timeout()),
        "the client gave up first"
    );
    assert_eq!(
        mock.calls(),
        1,
        "the provider was called before the client left"
    );

    let rec = record_once_written(&app, &f.tenant).await;
    assert_eq!(rec["status"], status, "{rec}");
    assert_eq!(
        (rec["tokens_in"].as_i64(), rec["tokens_out"].as_i64()),
        (Some(tokens.0), Some(tokens.1)),
        "the provider's own figures, read after the client left: {rec}"
    );
    let u = settled(&app, &f.tenant).await;
    assert_eq!(
        (u["messages"]["used"].as_i64(), u["tokens"]["used"].as_i64()),
        (Some(1), Some(tokens.0 + tokens.1)),
        "{u}"
    );
}

async fn a_failing_provider_releases_the_reservation(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(
        &app,
        "Failing",
        "openai",
        &mock.base,
        "fail",
        json!({"monthly_messages": 1}),
    )
    .await;
    for _ in 0..2 {
        let (s, e) = complete(&app, &f.key, hello("helper")).await;
        assert_eq!(s, 502, "{e}");
        assert_eq!(e["error"]["code"], "upstream_error");
    }
    assert_eq!(mock.calls(), 4, "each run tried twice (one retry)");
    // Streamed, the failure before any output is an HTTP error too.
    let (s, _) = complete(
        &app,
        &f.key,
        json!({"model": "helper", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(s, 502);
    let u = settled(&app, &f.tenant).await;
    assert_eq!(
        u["messages"]["used"], 0,
        "failed runs consume no quota: {u}"
    );
    let recs = records(&app, &f.tenant).await;
    assert_eq!(recs.len(), 3);
    assert!(recs
        .iter()
        .all(|r| r["status"] == "upstream_error" && r["tokens_out"] == 0));

    // Unreachable provider: a clear 502, nothing consumed either.
    let app2 = TestApp::spawn_with(b, fast_leases).await;
    let g = fixture(
        &app2,
        "Gone",
        "openai",
        "http://127.0.0.1:9/v1",
        "gpt",
        json!({}),
    )
    .await;
    let (s, e) = complete(&app2, &g.key, hello("helper")).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (502, &json!("upstream_error")),
        "{e}"
    );
}

async fn limits_and_plan_changes_apply_at_once(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(
        &app,
        "Limited",
        "openai",
        &mock.base,
        "slow",
        json!({"requests_per_minute": 3, "max_concurrent_runs": 1, "monthly_messages": 2}),
    )
    .await;
    // Concurrency: one run in flight; the second is refused while it runs.
    let (a, b2) = tokio::join!(complete(&app, &f.key, hello("helper")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        complete(&app, &f.key, hello("helper")).await
    });
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(
        (b2.0, &b2.1["error"]["code"]),
        (429, &json!("concurrency_limited")),
        "{}",
        b2.1
    );
    // Quota: the second message of two, then refused, naming the quota.
    assert_eq!(complete(&app, &f.key, hello("helper")).await.0, 200);
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&f.key)
        .json(&hello("helper"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-should-retry"], "false");
    assert!(
        res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let e: Value = res.json().await.unwrap();
    assert_eq!(
        (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
        (Some("insufficient_quota"), Some("quota_exceeded"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("monthly_messages"),
        "{e}"
    );
    // A bigger plan applies to the very next request.
    plan_for(
        &app,
        &f.tenant,
        json!({"requests_per_minute": 5, "max_concurrent_runs": 1, "monthly_messages": 10}),
    )
    .await;
    assert_eq!(complete(&app, &f.key, hello("helper")).await.0, 200);
    // Rate: three requests were counted at the old rate; five a minute leaves two.
    assert_eq!(complete(&app, &f.key, hello("helper")).await.0, 200);
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&f.key)
        .json(&hello("helper"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limited", "{e}");
    let u = settled(&app, &f.tenant).await;
    assert_eq!(u["messages"]["used"], 4, "{u}");
}

async fn bad_requests_get_openai_shaped_errors_and_change_nothing(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(&app, "Strict", "openai", &mock.base, "gpt", json!({})).await;
    let cases = [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "helper"}),
        json!({"model": "helper", "messages": []}),
        json!({"model": "helper", "messages": [{"content": "no role"}]}),
        json!({"model": "helper", "messages": [{"role": "wizard", "content": "x"}]}),
        json!({"model": "helper", "messages": [{"role": "user", "content": 5}]}),
        json!({"model": "helper", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
        json!({"model": "helper", "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}),
        json!({"model": "helper", "messages": [{"role": "user", "content": "x"}], "n": 100}),
        json!({"model": "helper", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        json!({"model": "helper", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}),
        json!([1, 2]),
        json!("text"),
    ];
    for body in cases {
        let (s, e) = complete(&app, &f.key, body.clone()).await;
        assert_eq!(s, 400, "{body} -> {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
    let (s, e) = complete(&app, &f.key, hello("no-such-agent")).await;
    assert_eq!((s, &e["error"]["code"]), (404, &json!("agent_not_found")));
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&f.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .json(&hello("helper"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(mock.calls(), 0);
    assert_eq!(usage(&app, &f.tenant).await["messages"]["used"], 0);
    assert!(records(&app, &f.tenant).await.is_empty());
}

async fn azure_api_keys_need_the_fallback_flag(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(
        &app,
        "Azure Off",
        "azure_openai",
        &mock.azure_base,
        "gpt-4o-deploy",
        json!({}),
    )
    .await;
    let (s, e) = complete(&app, &f.key, hello("helper")).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (403, &json!("provider_not_allowed")),
        "{e}"
    );
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ALLOW_API_KEY_FALLBACK"));
    assert_eq!(mock.calls(), 0);
    // Registering an Azure endpoint as an OpenAI-compatible one does not get around it.
    let g = fixture(
        &app,
        "Azure Disguised",
        "openai",
        "https://res.openai.azure.com/openai/v1",
        "gpt",
        json!({}),
    )
    .await;
    let (s, e) = complete(&app, &g.key, hello("helper")).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (403, &json!("provider_not_allowed")),
        "{e}"
    );

    let app = TestApp::spawn_with(b, |env| {
        fast_leases(env);
        env.insert("ALLOW_API_KEY_FALLBACK".into(), "true".into());
    })
    .await;
    let f = fixture(
        &app,
        "Azure On",
        "azure_openai",
        &mock.azure_base,
        "gpt-4o-deploy",
        json!({}),
    )
    .await;
    let (s, body) = complete(&app, &f.key, hello("helper")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from gpt-4o-deploy"
    );
    assert_eq!(mock.last().0["api-key"], "azure-key");
}

/// Two server processes on one PostgreSQL share a tenant's 50 messages: 200 concurrent runs
/// spread over both never succeed more than 50 times, every success is recorded, and retrying
/// until refused uses exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_share_a_quota_exactly() {
    two_processes(false).await
}

/// The same with one of the processes killed (SIGKILL) while its runs are in flight: its lease
/// expires and comes back; nothing overshoots and nothing is lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_process_overshoots_nothing_and_loses_nothing() {
    two_processes(true).await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn two_processes(kill: bool) {
    use crate::crash::Proc;
    const QUOTA: i64 = 50;
    const LEASE_MS: u64 = 2_000;
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(Backend::Postgres, fast_leases).await;
    let model = if kill { "slow" } else { "gpt-test" };
    let f = fixture(
        &app,
        "Two",
        "openai",
        &mock.base,
        model,
        json!({"monthly_messages": QUOTA}),
    )
    .await;
    let mut servers = vec![];
    let mut bases = vec![];
    for _ in 0..2 {
        let port = free_port();
        let mut env = app.db.env(&app.secret);
        env.insert("AGENTPLANE_LISTEN".into(), format!("127.0.0.1:{port}"));
        env.insert("AGENTPLANE_QUOTA_LEASE_MS".into(), LEASE_MS.to_string());
        env.insert("AGENTPLANE_QUOTA_IDLE_MS".into(), "200".into());
        servers.push(Proc::spawn(&["serve"], &env));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let client = reqwest::Client::new();
    for (base, server) in bases.iter().zip(&servers) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/health")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "server never started: {}",
                server.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let run = |i: usize| {
        let (client, base, key) = (client.clone(), bases[i % 2].clone(), f.key.clone());
        async move {
            let res = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&hello("helper"))
                .send()
                .await;
            match res {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    Some((s, body))
                }
                Err(_) => None, // the process was killed under it
            }
        }
    };
    let burst = futures::future::join_all((0..200).map(run));
    let results = if kill {
        let killer = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            servers[1].kill();
        };
        tokio::join!(burst, killer).0
    } else {
        burst.await
    };
    let ok = results.iter().flatten().filter(|(s, _)| *s == 200).count() as i64;
    for (s, e) in results.iter().flatten() {
        assert!(*s == 200 || *s == 429, "{s} {e}");
    }
    assert!(ok <= QUOTA, "{ok} successes on a quota of {QUOTA}");
    if kill {
        assert!(
            results.iter().any(Option::is_none),
            "some runs were cut by the kill"
        );
        // The dead process's lease comes back once it expires.
        tokio::time::sleep(Duration::from_millis(LEASE_MS + 500)).await;
    } else {
        settled(&app, &f.tenant).await;
    }
    let recorded = records(&app, &f.tenant).await.len() as i64;
    if kill {
        // A run the killed process settled just before dying has its record although its
        // client never saw the answer; a run it did not settle has none, and consumed nothing.
        assert!(
            ok <= recorded && recorded <= QUOTA,
            "{ok} successes, {recorded} records"
        );
    } else {
        assert_eq!(recorded, ok, "every success recorded, nothing else");
    }
    // Retrying until refused, through the surviving process, uses exactly the rest.
    let mut used = recorded;
    loop {
        let Some((s, e)) = run(0).await else {
            panic!("the surviving server failed")
        };
        if s != 200 {
            assert_eq!(
                (s, &e["error"]["code"]),
                (429, &json!("quota_exceeded")),
                "{e}"
            );
            break;
        }
        used += 1;
        assert!(used <= QUOTA, "overshoot: {used}");
    }
    assert_eq!(used, QUOTA, "quota lost");
    assert_eq!(records(&app, &f.tenant).await.len() as i64, QUOTA);
    let u = usage(&app, &f.tenant).await;
    assert_eq!(u["messages"]["used"], QUOTA, "{u}");
}

/// The Python interpreter with the official `openai` package (`scripts/install-peers` puts it
/// in `.venv`; `AGENTPLANE_PYTHON` overrides). Missing, the test fails: it never skips.
fn sdk_python() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python3");
    let python = std::env::var("AGENTPLANE_PYTHON").unwrap_or_else(|_| venv.to_owned());
    assert!(
        std::path::Path::new(&python).is_file(),
        "{python} is missing: run scripts/install-peers (scripts/test does) to install the OpenAI SDK"
    );
    python
}

async fn the_official_openai_python_sdk_works_unchanged(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, fast_leases).await;
    let f = fixture(&app, "Sdk", "openai", &mock.base, "gpt-test", json!({})).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let out = tokio::process::Command::new(sdk_python())
        .arg(script)
        .env("AGENTPLANE_BASE", format!("{}/v1", app.base))
        .env("AGENTPLANE_KEY", &f.key)
        .env("AGENTPLANE_MODEL", "helper")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["models"], json!(["helper"]), "{seen}");
    assert_eq!(seen["content"], "hello from gpt-test");
    assert_eq!(seen["usage"]["total_tokens"], 12);
    assert_eq!(seen["stream_text"], "t0 t1 t2 ");
    assert_eq!(seen["stream_usage"]["completion_tokens"], 3, "{seen}");
    assert_eq!(seen["not_found"], "agent_not_found");
    assert_eq!(seen["unauthenticated"], "AuthenticationError");
    let u = settled(&app, &f.tenant).await;
    assert_eq!(u["messages"]["used"], 2, "{u}");
}

async fn azure_managed_identity_needs_no_secret_and_no_fallback(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, |env| {
        fast_leases(env);
        env.insert("IDENTITY_ENDPOINT".into(), mock.identity_endpoint.clone());
        env.insert("IDENTITY_HEADER".into(), "id-secret".into());
        env.insert(
            "AGENTPLANE_MANAGED_IDENTITY_HOSTS".into(),
            "127.0.0.1".into(),
        );
    })
    .await;
    let t = app.active_tenant("Entra").await;
    plan_for(&app, &t, json!({})).await;
    let admin = app.tenant_user("tenant_admin", &t);
    let providers = format!("/v1/tenants/{t}/providers");
    let mi = json!({"type": "managed_identity"});
    // Refused shapes: a secret with a managed identity, Entra on an OpenAI provider, client
    // credentials without their secret, an unknown method.
    for bad in [
        json!({"name": "x", "kind": "azure_openai", "base_url": mock.azure_base, "auth": mi, "api_key": "k"}),
        json!({"name": "x", "kind": "openai", "base_url": mock.base, "auth": mi}),
        json!({"name": "x", "kind": "azure_openai", "base_url": mock.azure_base,
               "auth": {"type": "client_credentials", "tenant": "t", "client_id": "c"}}),
        json!({"name": "x", "kind": "azure_openai", "base_url": mock.azure_base, "auth": {"type": "password"}}),
        // The deployment's identity only goes to the hosts the operator lists.
        json!({"name": "x", "kind": "azure_openai", "auth": mi,
               "base_url": mock.azure_base.replace("127.0.0.1", "localhost")}),
    ] {
        let (s, p) = status_json(app.post(&providers, &admin, bad.clone()).await).await;
        assert_eq!(s, 422, "{bad} -> {p}");
    }
    let (s, p) = status_json(
        app.post(
            &providers,
            &admin,
            json!({"name": "azure", "kind": "azure_openai",
        "base_url": mock.azure_base, "auth": mi}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(
        (p["auth"]["type"].as_str(), p["fingerprint"].as_str()),
        (Some("managed_identity"), Some("none"))
    );
    let (s, a) = status_json(
        app.post(
            &format!("/v1/tenants/{t}/agents"),
            &admin,
            json!({"name": "helper", "provider_id": p["id"], "model": "gpt-4o-deploy"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let (_, k) = status_json(
        app.post(
            &format!("/v1/tenants/{t}/api-keys"),
            &admin,
            json!({"name": "app"}),
        )
        .await,
    )
    .await;
    let key = k["key"].as_str().unwrap();
    for _ in 0..2 {
        let (s, body) = complete(&app, key, hello("helper")).await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(mock.last().0["authorization"], "Bearer entra-token-1");
    assert_eq!(
        mock.seen.tokens.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the token is cached"
    );
}

/// What a run calls (the agent, its provider, the opened secret) is cached per process for
/// an hour here, so only the announcements of a change can drop it: a change through this
/// process applies to its very next run; on PostgreSQL another process hears of it too, and
/// of a change made by hand in psql.
async fn agent_and_provider_changes_apply_at_once_in_every_process(b: Backend) {
    use crate::crash::Proc;
    let mock = MockLlm::start().await;
    let hour = |env: &mut std::collections::HashMap<String, String>| {
        env.insert("AGENTPLANE_GATEWAY_CACHE_MS".into(), "3600000".into());
    };
    let app = TestApp::spawn_with(b, hour).await;
    let f = fixture(&app, "Cached", "openai", &mock.base, "model-a", json!({})).await;
    let mut bases = vec![app.base.clone()];
    let mut other = None;
    if b == Backend::Postgres {
        let port = free_port();
        let mut env = app.db.env(&app.secret);
        env.insert("AGENTPLANE_LISTEN".into(), format!("127.0.0.1:{port}"));
        hour(&mut env);
        other = Some(Proc::spawn(&["serve"], &env));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let client = reqwest::Client::new();
    // One run through `base`: the model and the bearer secret the provider saw.
    let seen = |base: String| {
        let (client, key, mock) = (client.clone(), f.key.clone(), &mock);
        async move {
            let res = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&hello("helper"))
                .send()
                .await
                .ok()?;
            if res.status() != 200 {
                return None;
            }
            let (headers, body) = mock.last();
            let auth = headers["authorization"].to_str().unwrap().to_owned();
            Some((body["model"].as_str().unwrap().to_owned(), auth))
        }
    };
    let until = |base: String, want: (&'static str, &'static str)| {
        let seen = &seen;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = seen(base.clone()).await;
                if got.as_ref().map(|(m, a)| (m.as_str(), a.as_str())) == Some(want) {
                    return;
                }
                assert!(Instant::now() < deadline, "{base} still calls {got:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Every process has the agent cached.
    for base in &bases {
        until(base.clone(), ("model-a", "Bearer sk-test")).await;
    }

    // The agent changed through this process: its next run calls the new model.
    let (s, a) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{}/agents/{}", f.tenant, f.agent_id),
            Some(&f.admin),
            Some(json!({"model": "model-b", "expected_version": 1})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let next = seen(app.base.clone()).await.unwrap();
    assert_eq!(next, ("model-b".into(), "Bearer sk-test".into()));

    // The provider's secret rotated: the next run sends the new one.
    let (s, page) = status_json(
        app.get(&format!("/v1/tenants/{}/providers", f.tenant), &f.admin)
            .await,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let provider = page["items"][0]["id"].as_str().unwrap().to_owned();
    let (s, p) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{}/providers/{provider}", f.tenant),
            Some(&f.admin),
            Some(json!({"api_key": "sk-rotated", "expected_version": 1})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let next = seen(app.base.clone()).await.unwrap();
    assert_eq!(next, ("model-b".into(), "Bearer sk-rotated".into()));

    if other.is_some() {
        // Another process hears of both changes, in seconds where its cache keeps an hour.
        until(bases[1].clone(), ("model-b", "Bearer sk-rotated")).await;
        // And of a change no server made.
        crate::helpers::raw_exec(
            &app.db,
            "UPDATE agents SET model = 'model-c' WHERE tenant_id = $1 AND id = $2",
            &[&f.tenant, &f.agent_id],
        )
        .await;
        for base in &bases {
            until(base.clone(), ("model-c", "Bearer sk-rotated")).await;
        }
    }
}
