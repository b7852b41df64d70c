//! Provider credentials the platform shares with the tenants of some plans: granted by plan,
//! used through a provider row of the tenant's own, the secret never reaching the tenant, and
//! a plan change applying to the next run.

use crate::both_backends;
use crate::gateway::complete;
use crate::helpers::{dump_database, status_json, Backend, TestApp};
use crate::mock_llm::MockLlm;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(a_plan_grants_a_shared_provider_whose_secret_never_reaches_the_tenant);

const SECRET: &str = "sk-platform-shared-secret";

async fn plan(app: &TestApp, id: &str) {
    let (s, b) = status_json(
        app.post(
            "/v1/admin/plans",
            &app.platform_admin(),
            json!({"id": id, "name": id, "limits": {"monthly_messages": 1000, "monthly_tokens": 10_000_000,
                   "requests_per_minute": 10_000, "max_concurrent_runs": 100}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

async fn move_to(app: &TestApp, tenant: &str, plan: &str) {
    let (s, b) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/admin/tenants/{tenant}/plan"),
            Some(&app.platform_admin()),
            Some(json!({"plan_id": plan})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

fn hello() -> Value {
    json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]})
}

async fn a_plan_grants_a_shared_provider_whose_secret_never_reaches_the_tenant(b: Backend) {
    let mock = MockLlm::start().await;
    // With the cache: the operator's grant change below drops what every process cached.
    let app = TestApp::spawn(b).await;
    let op = app.platform_admin();
    plan(&app, "gold").await;
    plan(&app, "basic").await;
    let t = app.active_tenant("Sharer").await;
    let admin = app.tenant_user("tenant_admin", &t);
    // Only operators share credentials.
    let body = json!({"name": "platform-openai", "kind": "openai", "base_url": mock.base,
                      "api_key": SECRET, "plans": ["gold"]});
    let (s, _) = status_json(
        app.post("/v1/admin/shared-providers", &admin, body.clone())
            .await,
    )
    .await;
    assert_eq!(s, 403);
    let (s, shared) = status_json(app.post("/v1/admin/shared-providers", &op, body).await).await;
    assert_eq!(s, 201, "{shared}");
    assert!(!shared.to_string().contains(SECRET));
    let sid = shared["id"].as_str().unwrap().to_owned();
    let attach = format!("/v1/tenants/{t}/shared-providers/{sid}/attach");

    // Not on a granting plan: invisible, and cannot be attached.
    move_to(&app, &t, "basic").await;
    let (_, list) = status_json(
        app.get(&format!("/v1/tenants/{t}/shared-providers"), &admin)
            .await,
    )
    .await;
    assert_eq!(list, json!([]));
    let (s, _) = status_json(app.post(&attach, &admin, json!({})).await).await;
    assert_eq!(s, 404);

    // On gold: attach it, and run an agent on it.
    move_to(&app, &t, "gold").await;
    let (_, list) = status_json(
        app.get(&format!("/v1/tenants/{t}/shared-providers"), &admin)
            .await,
    )
    .await;
    assert_eq!(list[0]["id"], sid.as_str());
    let (s, p) = status_json(
        app.post(&attach, &admin, json!({"name": "shared-llm"}))
            .await,
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(
        (p["shared_id"].as_str(), p["fingerprint"].as_str()),
        (Some(sid.as_str()), Some("shared"))
    );
    let (s, a) = status_json(
        app.post(
            &format!("/v1/tenants/{t}/agents"),
            &admin,
            json!({"name": "helper", "provider_id": p["id"], "model": "default"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let (s, k) = status_json(
        app.post(
            &format!("/v1/tenants/{t}/api-keys"),
            &admin,
            json!({"name": "app"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201);
    let key = k["key"].as_str().unwrap().to_owned();
    let (s, out) = complete(&app, &key, hello()).await;
    assert_eq!(s, 200, "{out}");
    let (headers, _) = mock.last();
    assert_eq!(
        headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {SECRET}"),
        "the platform's secret is what the provider receives"
    );
    // The tenant can rename it, never repoint it (that would send the secret elsewhere).
    let provider = format!("/v1/tenants/{t}/providers/{}", p["id"].as_str().unwrap());
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &provider,
            Some(&admin),
            Some(json!({"base_url": "http://127.0.0.1:9/v1"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &provider,
            Some(&admin),
            Some(json!({"name": "renamed"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (_, providers) =
        status_json(app.get(&format!("/v1/tenants/{t}/providers"), &admin).await).await;
    assert!(!providers.to_string().contains(SECRET));

    // A downgrade applies to the very next run.
    move_to(&app, &t, "basic").await;
    let calls = mock.calls();
    let (s, out) = complete(&app, &key, hello()).await;
    assert_eq!(s, 403, "{out}");
    assert_eq!(mock.calls(), calls, "nothing reached the provider");
    // The operator grants basic too: it works again.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/admin/shared-providers/{sid}"),
            Some(&op),
            Some(json!({"plans": ["gold", "basic"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = complete(&app, &key, hello()).await;
    assert_eq!(s, 200);
    // A master-key rotation re-wraps the shared secret's key; runs go on.
    let (s, r) = status_json(
        app.post("/v1/admin/keys/rotate?confirm=true", &op, json!({}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["signing_keys_rewrapped"].as_u64().unwrap() >= 2,
        "signing key + shared provider: {r}"
    );
    let (s, _) = complete(&app, &key, hello()).await;
    assert_eq!(s, 200);
    // The secret is sealed at rest.
    let dump = dump_database(&app.db);
    assert!(!dump.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    // Bad input changes nothing.
    for bad in [
        json!({"name": "x", "kind": "openai", "base_url": mock.base, "api_key": "k", "plans": ["no-such-plan"]}),
        json!({"name": "platform-openai", "kind": "openai", "base_url": mock.base, "api_key": "k"}),
        json!({"name": "y", "kind": "openai", "base_url": "ftp://nope", "api_key": "k"}),
    ] {
        let (s, p) = status_json(
            app.post("/v1/admin/shared-providers", &op, bad.clone())
                .await,
        )
        .await;
        assert!(matches!(s, 409 | 422), "{bad} -> {p}");
    }
    let (_, all) = status_json(app.get("/v1/admin/shared-providers", &op).await).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}
