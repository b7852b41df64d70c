//! Tenant API keys and the OpenAI-compatible `GET /v1/models`: shown once, stored as a hash,
//! scoped, revocable at once, tenant taken from the key, errors in OpenAI's shape.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    keys_authenticate_the_gateway_scoped_and_revocable,
    key_secrets_are_never_stored_or_shown_again
);

async fn models(app: &TestApp, key: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(format!("{}/v1/models", app.base));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let s = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if s >= 400 {
        assert_eq!(ct, "application/json", "OpenAI-shaped errors");
        assert!(
            body["error"]["message"].is_string() && body["error"]["type"].is_string(),
            "{body}"
        );
    }
    (s, body)
}

async fn agent(app: &TestApp, t: &str, admin: &str, name: &str, provider: &str) -> String {
    let (s, a) = status_json(
        app.post(
            &format!("/v1/tenants/{t}/agents"),
            admin,
            json!({"name": name, "provider_id": provider, "model": format!("model-{name}")}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

async fn setup(app: &TestApp, name: &str) -> (String, String, String) {
    let t = app.active_tenant(name).await;
    let admin = app.tenant_user("tenant_admin", &t);
    let (_, p) = status_json(app.post(&format!("/v1/tenants/{t}/providers"), &admin,
        json!({"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk"})).await).await;
    (t, admin, p["id"].as_str().unwrap().to_owned())
}

async fn keys_authenticate_the_gateway_scoped_and_revocable(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (a, admin_a, pa) = setup(&app, "Acme").await;
    let (z, admin_z, pz) = setup(&app, "Zeta").await;
    let support = agent(&app, &a, &admin_a, "support", &pa).await;
    agent(&app, &a, &admin_a, "sales", &pa).await;
    agent(&app, &z, &admin_z, "zeta-bot", &pz).await;

    let (s, created) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/api-keys"),
            &admin_a,
            json!({"name": "web app"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key_a = created["key"].as_str().unwrap().to_owned();
    assert!(
        key_a.starts_with("ap_live_")
            && key_a.starts_with(created["api_key"]["prefix"].as_str().unwrap())
    );
    let (s, list) = models(&app, Some(&key_a)).await;
    assert_eq!(s, 200);
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["sales", "support"], "the tenant comes from the key");
    let (_, created_z) = status_json(
        app.post(
            &format!("/v1/tenants/{z}/api-keys"),
            &admin_z,
            json!({"name": "z"}),
        )
        .await,
    )
    .await;
    let (_, list_z) = models(&app, created_z["key"].as_str()).await;
    assert_eq!(list_z["data"][0]["id"], "zeta-bot");
    assert_eq!(
        list_z["data"].as_array().unwrap().len(),
        1,
        "tenant B's key sees only tenant B"
    );

    // Scoped to one agent.
    let (s, scoped) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/api-keys"),
            &admin_a,
            json!({"name": "s", "scopes": {"agents": [support]}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201);
    let (_, l) = models(&app, scoped["key"].as_str()).await;
    assert_eq!(l["data"].as_array().unwrap().len(), 1);
    // Scopes must name the tenant's own agents; expiry must be in the future.
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{z}/api-keys"),
            &admin_z,
            json!({"name": "x", "scopes": {"agents": [support]}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/api-keys"),
            &admin_a,
            json!({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);

    // Bad keys, all answered alike.
    let (public, _) = key_a
        .trim_start_matches("ap_live_")
        .split_once('_')
        .unwrap();
    let wrong_secret = format!("ap_live_{public}_{}", "0".repeat(64));
    for bad in [
        None,
        Some(""),
        Some("sk-something"),
        Some(wrong_secret.as_str()),
        Some("ap_live_zz"),
    ] {
        let (s, e) = models(&app, bad).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (401, Some("invalid_api_key")),
            "{bad:?}"
        );
    }

    // Revocation takes effect on the very next request.
    let key_id = created["api_key"]["id"].as_str().unwrap();
    let path = format!("/v1/tenants/{a}/api-keys/{key_id}");
    assert_eq!(
        app.call(Method::DELETE, &path, Some(&admin_a), None)
            .await
            .status(),
        428
    );
    let (s, revoked) = status_json(
        app.call(
            Method::DELETE,
            &format!("{path}?confirm=true"),
            Some(&admin_a),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(models(&app, Some(&key_a)).await.0, 401);
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{z}/api-keys/{key_id}?confirm=true"),
            Some(&admin_z),
            None
        )
        .await
        .status(),
        404,
        "another tenant cannot revoke it"
    );

    // A suspended tenant's keys are refused.
    let op = app.platform_admin();
    app.post(
        &format!("/v1/admin/tenants/{z}/suspend?confirm=true"),
        &op,
        json!({}),
    )
    .await;
    let (s, e) = models(&app, created_z["key"].as_str()).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("tenant_unavailable"))
    );

    // Last use is recorded in batches, not on every request.
    let scoped_id = scoped["api_key"]["id"].as_str().unwrap();
    assert!(
        last_used(&app, &a, &admin_a, scoped_id).await.is_null(),
        "no write per request"
    );
    assert!(app.control.flush_key_uses().await.unwrap() >= 1);
    assert!(last_used(&app, &a, &admin_a, scoped_id).await.is_string());

    let (_, trail) = status_json(
        app.get(&format!("/v1/tenants/{a}/audit?limit=100"), &admin_a)
            .await,
    )
    .await;
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|x| **x == "api_key.create").count(),
        2
    );
    assert_eq!(
        actions.iter().filter(|x| **x == "api_key.revoke").count(),
        1
    );
}

async fn key_secrets_are_never_stored_or_shown_again(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (a, admin, _) = setup(&app, "Acme").await;
    let (_, created) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/api-keys"),
            &admin,
            json!({"name": "k"}),
        )
        .await,
    )
    .await;
    let key = created["key"].as_str().unwrap();
    let secret = key.rsplit('_').next().unwrap();
    let (_, list) = status_json(app.get(&format!("/v1/tenants/{a}/api-keys"), &admin).await).await;
    assert!(!list.to_string().contains(secret), "never shown again");
    let dump = crate::helpers::dump_database(&app.db);
    assert!(
        !dump.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is not stored"
    );
}

async fn last_used(app: &TestApp, t: &str, admin: &str, id: &str) -> Value {
    let (_, l) = status_json(app.get(&format!("/v1/tenants/{t}/api-keys"), admin).await).await;
    l["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()["last_used_at"]
        .clone()
}

/// Key lookups are cached in each server process. A change made through one process, or by
/// hand in the database, reaches another process by `NOTIFY`: this second process keeps
/// lookups for an hour, yet refuses a revoked key, and a suspended tenant's key, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_change_reaches_every_process_without_waiting_for_its_cache() {
    use crate::crash::Proc;
    use crate::gateway::fixture;
    use crate::mock_llm::MockLlm;
    use std::time::{Duration, Instant};
    let mock = MockLlm::start().await;
    let app = TestApp::spawn(Backend::Postgres).await;
    let f = fixture(&app, "Cached", "openai", &mock.base, "gpt-test", json!({})).await;
    let new_key = || async {
        let (s, k) = status_json(
            app.post(
                &format!("/v1/tenants/{}/api-keys", f.tenant),
                &f.admin,
                json!({"name": "more"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "{k}");
        (
            k["key"].as_str().unwrap().to_owned(),
            k["api_key"]["id"].as_str().unwrap().to_owned(),
        )
    };
    let (by_hand, by_hand_id) = new_key().await;
    let (third, _) = new_key().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = app.db.env(&app.secret);
    env.insert("AGENTPLANE_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert("AGENTPLANE_KEY_CACHE_MS".into(), "3600000".into());
    let other = Proc::spawn(&["serve"], &env);
    let base = format!("http://127.0.0.1:{port}");
    let status = |key: String| {
        let (client, url) = (app.client.clone(), format!("{base}/v1/models"));
        async move {
            match client.get(url).bearer_auth(key).send().await {
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => None,
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(f.key.clone()).await != Some(200) {
        assert!(Instant::now() < deadline, "{}", other.describe());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every key is now in the other process's cache.
    for k in [&f.key, &by_hand, &third] {
        assert_eq!(status(k.clone()).await, Some(200));
    }
    // Within seconds, where the cache alone would take an hour.
    let refused = |key: String, expected: u16| {
        let status = &status;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let s = status(key.clone()).await;
                if s == Some(expected) {
                    return;
                }
                assert!(Instant::now() < deadline, "still {s:?}, not {expected}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Revoked through this process: refused here on the next request, and there.
    let key_id = {
        let (s, page) = status_json(
            app.get(&format!("/v1/tenants/{}/api-keys", f.tenant), &f.admin)
                .await,
        )
        .await;
        assert_eq!(s, 200);
        let prefix = &f.key[..f.key.rfind('_').unwrap()];
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["prefix"] == prefix)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let res = app
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{}/api-keys/{key_id}?confirm=true", f.tenant),
            Some(&f.admin),
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(models(&app, Some(&f.key)).await.0, 401);
    refused(f.key.clone(), 401).await;

    // Revoked by an operator in psql, past every server.
    crate::helpers::raw_exec(
        &app.db,
        "UPDATE api_keys SET revoked_at = 1 WHERE tenant_id = $1 AND id = $2",
        &[&f.tenant, &by_hand_id],
    )
    .await;
    refused(by_hand.clone(), 401).await;
    assert_eq!(models(&app, Some(&by_hand)).await.0, 401);

    // The tenant suspended through this process: its last key is refused there too.
    let res = app
        .post(
            &format!("/v1/admin/tenants/{}/suspend?confirm=true", f.tenant),
            &app.platform_admin(),
            json!({"reason": "unpaid"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    refused(third.clone(), 403).await;
    drop(other);
}
