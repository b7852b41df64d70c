//! Tenant settings: typed values, versions with history, rollback, immediate effect, features.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    settings_are_typed_versioned_and_audited,
    rollback_restores_an_old_value_as_a_new_version,
    concurrent_updates_with_expected_version_lose_nothing,
    settings_are_tenant_scoped_and_role_checked,
    features_follow_plan_and_settings,
);

fn put(
    app: &TestApp,
    tenant: &str,
    key: &str,
    token: &str,
    body: Value,
) -> impl std::future::Future<Output = reqwest::Response> {
    let path = format!("/v1/tenants/{tenant}/settings/{key}?confirm=true");
    let req = app
        .client
        .put(format!("{}{path}", app.base))
        .bearer_auth(token)
        .json(&body);
    async move { req.send().await.unwrap() }
}

async fn settings_are_typed_versioned_and_audited(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &t);
    let (s, list) = status_json(app.get(&format!("/v1/tenants/{t}/settings"), &admin).await).await;
    assert_eq!(s, 200);
    let retention = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["key"] == "audit.retention_days")
        .unwrap()
        .clone();
    assert_eq!(
        (retention["value"].as_i64(), retention["version"].as_i64()),
        (Some(365), Some(1)),
        "provisioned as version 1"
    );
    assert_eq!(retention["schema"]["minimum"], 30);

    // The seed's confirmation rule: a setting change must be confirmed.
    let path = format!("{}/v1/tenants/{t}/settings/audit.retention_days", app.base);
    let r = app
        .client
        .put(&path)
        .bearer_auth(&admin)
        .json(&json!({"setting_value": 90}))
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(r).await.0, 428);

    let (s, v2) = status_json(
        put(
            &app,
            &t,
            "audit.retention_days",
            &admin,
            json!({"setting_value": 90}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, v2["value"].as_i64(), v2["version"].as_i64()),
        (200, Some(90), Some(2))
    );
    // Idempotent: the same value again is not a new version.
    let (_, same) = status_json(
        put(
            &app,
            &t,
            "audit.retention_days",
            &admin,
            json!({"setting_value": 90}),
        )
        .await,
    )
    .await;
    assert_eq!(same["version"], 2);
    // Typed: wrong types and out-of-range values are refused and change nothing.
    for bad in [
        json!({"setting_value": 10}),
        json!({"setting_value": "90"}),
        json!({"setting_value": 90, "x": 1}),
        json!({}),
    ] {
        let (s, p) =
            status_json(put(&app, &t, "audit.retention_days", &admin, bad.clone()).await).await;
        assert_eq!(s, 422, "{bad}: {p}");
    }
    let (s, _) =
        status_json(put(&app, &t, "no.such.key", &admin, json!({"setting_value": 1})).await).await;
    assert_eq!(s, 404);

    let (_, hist) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/settings/audit.retention_days/history"),
            &admin,
        )
        .await,
    )
    .await;
    let items = hist["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (
            items[0]["version"].as_i64(),
            items[0]["value"].as_i64(),
            items[0]["previous"].as_i64()
        ),
        (Some(2), Some(90), Some(365))
    );
    assert_eq!(items[0]["actor_id"], format!("tenant_admin-of-{t}"));
    assert_eq!(
        items[1]["actor_kind"], "system",
        "version 1 came from provisioning"
    );

    let (_, trail) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/audit?action=settings.update"),
            &admin,
        )
        .await,
    )
    .await;
    let ev = &trail["items"][0];
    assert_eq!(
        (
            ev["data"]["key"].as_str(),
            ev["data"]["previous"].as_i64(),
            ev["data"]["value"].as_i64()
        ),
        (Some("audit.retention_days"), Some(365), Some(90))
    );
    assert_eq!(
        trail["items"].as_array().unwrap().len(),
        1,
        "the refused and idempotent writes left no event"
    );
}

async fn rollback_restores_an_old_value_as_a_new_version(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &t);
    for v in [["openai"], ["azure_openai"]] {
        status_json(
            put(
                &app,
                &t,
                "providers.allowed",
                &admin,
                json!({"setting_value": v}),
            )
            .await,
        )
        .await;
    }
    let rb = format!("/v1/tenants/{t}/settings/providers.allowed/rollback");
    let (s, _) = status_json(app.post(&rb, &admin, json!({"version": 2})).await).await;
    assert_eq!(s, 428);
    let (s, restored) = status_json(
        app.post(&format!("{rb}?confirm=true"), &admin, json!({"version": 2}))
            .await,
    )
    .await;
    assert_eq!((s, restored["version"].as_i64()), (200, Some(4)));
    assert_eq!(restored["value"], json!(["openai"]));
    let (s, _) = status_json(
        app.post(
            &format!("{rb}?confirm=true"),
            &admin,
            json!({"version": 99}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
    let (_, trail) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/audit?action=settings.rollback"),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(trail["items"][0]["data"]["restored_version"], 2);
}

async fn concurrent_updates_with_expected_version_lose_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &t);
    // 20 writers read version 1 and each try to write their own value: exactly one wins.
    let futs = (0..20).map(|i| {
        put(
            &app,
            &t,
            "data.retention_days",
            &admin,
            json!({"setting_value": 100 + i, "expected_version": 1}),
        )
    });
    let results = futures::future::join_all(futs).await;
    let mut ok = 0;
    for r in results {
        let (s, p) = status_json(r).await;
        match s {
            200 => ok += 1,
            409 => assert_eq!(p["code"], "concurrent_update"),
            other => panic!("{other} {p}"),
        }
    }
    assert_eq!(ok, 1);
    // Without expected_version, concurrent writers all land, as consecutive versions.
    let futs = (0..10).map(|i| {
        put(
            &app,
            &t,
            "timezone",
            &admin,
            json!({"setting_value": format!("Zone/{i}")}),
        )
    });
    for r in futures::future::join_all(futs).await {
        assert_eq!(status_json(r).await.0, 200);
    }
    let (_, hist) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/settings/timezone/history?limit=100"),
            &admin,
        )
        .await,
    )
    .await;
    let versions: Vec<i64> = hist["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=11).rev().collect::<Vec<_>>());
    // Each version's `previous` is the value of the version before it.
    let items = hist["items"].as_array().unwrap();
    for w in items.windows(2) {
        assert_eq!(w[0]["previous"], w[1]["value"]);
    }
}

async fn settings_are_tenant_scoped_and_role_checked(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Alpha").await;
    let z = app.active_tenant("Zeta").await;
    let admin_a = app.tenant_user("tenant_admin", &a);
    let admin_z = app.tenant_user("tenant_admin", &z);
    status_json(put(&app, &a, "locale", &admin_a, json!({"setting_value": "de"})).await).await;
    let (_, zs) = status_json(
        app.get(&format!("/v1/tenants/{z}/settings"), &admin_z)
            .await,
    )
    .await;
    let locale = zs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "locale")
        .unwrap();
    assert_eq!(
        locale["value"], "en",
        "another tenant's change does not leak"
    );
    let (s, _) =
        status_json(put(&app, &a, "locale", &admin_z, json!({"setting_value": "fr"})).await).await;
    assert_eq!(s, 404, "another tenant's admin cannot even see it");
    let auditor = app.tenant_user("auditor", &a);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/settings"), &auditor)
            .await
            .status(),
        200
    );
    let (s, _) =
        status_json(put(&app, &a, "locale", &auditor, json!({"setting_value": "fr"})).await).await;
    assert_eq!(s, 403, "auditors read settings but do not change them");
    let member = app.tenant_user("member", &a);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/settings"), &member)
            .await
            .status(),
        403
    );
    let (_, mine) = status_json(
        app.get(&format!("/v1/tenants/{a}/settings"), &admin_a)
            .await,
    )
    .await;
    assert_eq!(
        mine.as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == "locale")
            .unwrap()["value"],
        "de"
    );
}

async fn features_follow_plan_and_settings(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Acme").await;
    let op = app.platform_admin();
    app.call(
        Method::PATCH,
        &format!("/v1/admin/tenants/{t}/plan"),
        Some(&op),
        Some(json!({"plan_id": "pro"})),
    )
    .await;
    let member = app.tenant_user("member", &t);
    let (_, f) = status_json(app.get(&format!("/v1/tenants/{t}/features"), &member).await).await;
    assert_eq!(
        f,
        json!([{"name": "sso", "enabled": true, "source": "plan"}, {"name": "audit_export", "enabled": true, "source": "plan"}])
    );
    let admin = app.tenant_user("tenant_admin", &t);
    status_json(
        put(
            &app,
            &t,
            "features.disabled",
            &admin,
            json!({"setting_value": ["audit_export"]}),
        )
        .await,
    )
    .await;
    let (_, f) = status_json(app.get(&format!("/v1/tenants/{t}/features"), &member).await).await;
    assert_eq!(
        f[1],
        json!({"name": "audit_export", "enabled": false, "source": "hidden_by_tenant"}),
        "applies at once"
    );
    app.call(
        Method::PATCH,
        &format!("/v1/admin/tenants/{t}/plan"),
        Some(&op),
        Some(json!({"plan_id": "free"})),
    )
    .await;
    let (_, f) = status_json(app.get(&format!("/v1/tenants/{t}/features"), &member).await).await;
    assert_eq!(f, json!([]), "the free plan has no extra features");
}
