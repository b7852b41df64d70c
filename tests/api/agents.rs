//! Agents: CRUD with versions, audited, bound to a provider of their own tenant.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    agents_are_versioned_audited_and_role_checked,
    an_agent_cannot_point_at_another_tenants_provider
);

async fn provider(app: &TestApp, t: &str, token: &str, name: &str) -> String {
    let body = json!({"name": name, "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"});
    let (s, p) = status_json(
        app.post(&format!("/v1/tenants/{t}/providers"), token, body)
            .await,
    )
    .await;
    assert_eq!(s, 201, "{p}");
    p["id"].as_str().unwrap().to_owned()
}

async fn agents_are_versioned_audited_and_role_checked(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &t);
    let pid = provider(&app, &t, &admin, "main").await;
    let body = json!({"name": "support-bot", "provider_id": pid, "model": "gpt-4o-mini", "system_prompt": "Be kind.", "params": {"temperature": 0.2, "max_tokens": 256}});
    let res = app
        .post(&format!("/v1/tenants/{t}/agents"), &admin, body.clone())
        .await;
    let (s, agent) = status_json(res).await;
    assert_eq!((s, agent["version"].as_i64()), (201, Some(1)), "{agent}");
    let id = agent["id"].as_str().unwrap().to_owned();
    let (s, p) = status_json(
        app.post(&format!("/v1/tenants/{t}/agents"), &admin, body)
            .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("name_taken")));
    for (bad, field) in [
        (
            json!({"name": "x", "provider_id": pid, "model": "m", "params": {"temperature": 3}}),
            "params.temperature",
        ),
        (
            json!({"name": "x", "provider_id": pid, "model": "m", "params": {"max_tokens": 0}}),
            "params.max_tokens",
        ),
        (
            json!({"name": "bad name", "provider_id": pid, "model": "m"}),
            "name",
        ),
        (
            json!({"name": "x", "provider_id": pid, "model": "has space"}),
            "model",
        ),
        (
            json!({"name": "x", "provider_id": uuid::Uuid::now_v7(), "model": "m"}),
            "provider_id",
        ),
    ] {
        let (s, p) = status_json(
            app.post(&format!("/v1/tenants/{t}/agents"), &admin, bad.clone())
                .await,
        )
        .await;
        assert_eq!((s, p["field"].as_str()), (422, Some(field)), "{bad}: {p}");
    }
    let (s, p) = status_json(
        app.post(
            &format!("/v1/tenants/{t}/agents"),
            &admin,
            json!({"name": "x", "provider_id": pid, "model": "m", "params": {"seed": 1}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "unknown parameters are refused: {p}");

    let path = format!("/v1/tenants/{t}/agents/{id}");
    let (s, v2) = status_json(
        app.call(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({"system_prompt": "Be brief.", "expected_version": 1})),
        )
        .await,
    )
    .await;
    assert_eq!((s, v2["version"].as_i64()), (200, Some(2)));
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({"model": "x", "expected_version": 1})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 409, "stale expected_version");
    let (_, same) = status_json(
        app.call(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({"system_prompt": "Be brief."})),
        )
        .await,
    )
    .await;
    assert_eq!(same["version"], 2, "no change, no version");
    let (_, versions) = status_json(app.get(&format!("{path}/versions"), &admin).await).await;
    let vs: Vec<(i64, &str)> = versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["agent"]["system_prompt"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(vs, [(2, "Be brief."), (1, "Be kind.")]);

    // Members read agents; only admins change them; other tenants see nothing.
    let member = app.tenant_user("member", &t);
    assert_eq!(app.get(&path, &member).await.status(), 200);
    assert_eq!(
        app.call(
            Method::PATCH,
            &path,
            Some(&member),
            Some(json!({"model": "m"}))
        )
        .await
        .status(),
        403
    );
    let z = app.active_tenant("Zeta").await;
    let admin_z = app.tenant_user("tenant_admin", &z);
    assert_eq!(app.get(&path, &admin_z).await.status(), 404);
    assert_eq!(
        app.get(&format!("/v1/tenants/{z}/agents/{id}"), &admin_z)
            .await
            .status(),
        404
    );

    // A provider in use cannot be deleted; once the agent is gone it can.
    let (s, p) = status_json(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{t}/providers/{pid}?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("in_use")));
    assert_eq!(
        app.call(Method::DELETE, &path, Some(&admin), None)
            .await
            .status(),
        428
    );
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("{path}?confirm=true"),
            Some(&admin),
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(app.get(&path, &admin).await.status(), 404);
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{t}/providers/{pid}?confirm=true"),
            Some(&admin),
            None
        )
        .await
        .status(),
        204
    );

    let (_, trail) = status_json(
        app.get(&format!("/v1/tenants/{t}/audit?limit=100"), &admin)
            .await,
    )
    .await;
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["agent.create", "agent.update", "agent.delete"] {
        assert_eq!(
            actions.iter().filter(|a| **a == want).count(),
            1,
            "{want}: {actions:?}"
        );
    }
}

async fn an_agent_cannot_point_at_another_tenants_provider(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let z = app.active_tenant("Zeta").await;
    let (admin_a, admin_z) = (
        app.tenant_user("tenant_admin", &a),
        app.tenant_user("tenant_admin", &z),
    );
    let pa = provider(&app, &a, &admin_a, "a-main").await;
    let pz = provider(&app, &z, &admin_z, "z-main").await;
    // Tenant Z names tenant A's provider: refused exactly like a provider that does not exist.
    let (s, p) = status_json(
        app.post(
            &format!("/v1/tenants/{z}/agents"),
            &admin_z,
            json!({"name": "thief", "provider_id": pa, "model": "m"}),
        )
        .await,
    )
    .await;
    assert_eq!((s, p["field"].as_str()), (422, Some("provider_id")));
    let (s, agent) = status_json(
        app.post(
            &format!("/v1/tenants/{z}/agents"),
            &admin_z,
            json!({"name": "ok", "provider_id": pz, "model": "m"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201);
    let path = format!("/v1/tenants/{z}/agents/{}", agent["id"].as_str().unwrap());
    let (s, p) = status_json(
        app.call(
            Method::PATCH,
            &path,
            Some(&admin_z),
            Some(json!({"provider_id": pa})),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, p["field"].as_str()),
        (422, Some("provider_id")),
        "nor by an update"
    );
    let (_, list): (u16, Value) =
        status_json(app.get(&format!("/v1/tenants/{a}/agents"), &admin_a).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}
