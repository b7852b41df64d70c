//! Data residency: a tenant pinned to a region only reaches the provider hosts its region
//! allows; refusals are clear and audited; the residency report shows storage, providers and
//! the audit log's evidence.

use crate::both_backends;
use crate::gateway::{complete, plan_for, usage};
use crate::helpers::{status_json, Backend, TestApp};
use crate::mock_llm::MockLlm;
use serde_json::{json, Value};

both_backends!(
    a_tenant_in_eu_never_reaches_a_us_provider,
    each_tenants_objects_stay_in_its_regions_store,
);

async fn each_tenants_objects_stay_in_its_regions_store(b: Backend) {
    let stores = tempfile::tempdir().unwrap();
    let (eu_dir, us_dir) = (stores.path().join("eu"), stores.path().join("us"));
    let spec = format!(
        "eu=file://{};us=file://{}",
        eu_dir.display(),
        us_dir.display()
    );
    let app = TestApp::spawn_with(b, |env| {
        env.insert(
            "AGENTPLANE_REGIONS".into(),
            "eu=localhost;us=127.0.0.1".into(),
        );
        env.insert("AGENTPLANE_REGION_OBJECT_STORES".into(), spec);
    })
    .await;
    let mut ids = Vec::new();
    for (name, region) in [("Paris", "eu"), ("Austin", "us")] {
        let (s, t) = tenant_in(&app, name, region).await;
        assert_eq!(s, 202, "{t}");
        let id = t["tenant"]["id"].as_str().unwrap().to_owned();
        app.run_jobs().await;
        let admin = app.tenant_user("tenant_admin", &id);
        let res = app
            .client
            .put(format!("{}/v1/tenants/{id}/branding/logo", app.base))
            .bearer_auth(&admin)
            .header("content-type", "image/png")
            .body(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let (s, rec) = status_json(
            app.post(
                &format!("/v1/tenants/{id}/exports?confirm=true"),
                &admin,
                json!({"export_type": "full"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "{rec}");
        app.run_jobs().await;
        let (_, r) = status_json(
            app.get(&format!("/v1/tenants/{id}/residency"), &admin)
                .await,
        )
        .await;
        let dir = if region == "eu" { &eu_dir } else { &us_dir };
        assert!(
            r["storage"]["objects"]
                .as_str()
                .unwrap()
                .contains(&dir.display().to_string()),
            "{r}"
        );
        ids.push(id);
    }
    // The EU tenant's logo and export are in the EU store only, the US tenant's in the US
    // store only, and nothing went to the default store.
    let eu: Vec<String> = crate::helpers::files_under(&eu_dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let us: Vec<String> = crate::helpers::files_under(&us_dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        eu.len() >= 2 && eu.iter().all(|p| p.contains(&ids[0])),
        "{eu:?}"
    );
    assert!(
        us.len() >= 2 && us.iter().all(|p| p.contains(&ids[1])),
        "{us:?}"
    );
    assert!(crate::helpers::files_under(&app.db.dir.path().join("objects")).is_empty());

    // Moving the EU tenant to the US: operators only, confirmed, a job; its objects follow.
    let paris = &ids[0];
    let admin = app.tenant_user("tenant_admin", paris);
    let path = format!("/v1/admin/tenants/{paris}/region");
    let (s, _) = status_json(
        app.post(
            &format!("{path}?confirm=true"),
            &admin,
            json!({"region": "us"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403, "a tenant admin may not move their tenant");
    let op = app.platform_admin();
    let (s, _) = status_json(app.post(&path, &op, json!({"region": "us"})).await).await;
    assert_eq!(s, 428);
    let (s, _) = status_json(
        app.post(
            &format!("{path}?confirm=true"),
            &op,
            json!({"region": "apac"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "not a region of this deployment");
    let (s, job) = status_json(
        app.post(
            &format!("{path}?confirm=true"),
            &op,
            json!({"region": "us"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, job["kind"].as_str()),
        (202, Some("tenant.move_region")),
        "{job}"
    );
    app.run_jobs().await;
    let (_, t) = status_json(app.get(&format!("/v1/tenants/{paris}"), &op).await).await;
    assert_eq!(t["region"], "us", "{t}");
    assert!(
        crate::helpers::files_under(&eu_dir).is_empty(),
        "the EU store forgot the tenant"
    );
    let us: Vec<String> = crate::helpers::files_under(&us_dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        us.iter().filter(|p| p.contains(paris.as_str())).count() >= 2,
        "{us:?}"
    );
    // Its logo is served from the new store, and the audit trail holds the move.
    let res = app
        .client
        .get(format!("{}/v1/tenants/{paris}/branding/logo", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, events) = status_json(
        app.get(
            &format!("/v1/tenants/{paris}/audit?action=tenant.region_moved"),
            &admin,
        )
        .await,
    )
    .await;
    let ev = &events["items"][0];
    assert_eq!(
        (ev["data"]["from"].as_str(), ev["data"]["to"].as_str()),
        (Some("eu"), Some("us")),
        "{events}"
    );
    assert!(ev["data"]["objects_copied"].as_u64().unwrap() >= 2, "{ev}");
}

async fn tenant_in(app: &TestApp, name: &str, region: &str) -> (u16, Value) {
    status_json(
        app.post(
            "/v1/tenants",
            &app.platform_admin(),
            json!({"name": name, "admin_email": format!("admin@{}.test", name.to_lowercase()), "region": region}),
        )
        .await,
    )
    .await
}

async fn a_tenant_in_eu_never_reaches_a_us_provider(b: Backend) {
    let mock = MockLlm::start().await;
    let app = TestApp::spawn_with(b, |env| {
        // The same mock seen through two host names: `localhost` is in eu, 127.0.0.1 in us.
        env.insert(
            "AGENTPLANE_REGIONS".into(),
            "eu=localhost;us=127.0.0.1".into(),
        );
        env.insert("AGENTPLANE_QUOTA_IDLE_MS".into(), "200".into());
    })
    .await;
    let (s, p) = tenant_in(&app, "Nowhere", "apac").await;
    assert_eq!((s, p["field"].as_str()), (422, Some("region")), "{p}");
    let (s, created) = tenant_in(&app, "Euro", "eu").await;
    assert_eq!(s, 202, "{created}");
    let t = created["tenant"]["id"].as_str().unwrap().to_owned();
    app.run_jobs().await;
    plan_for(&app, &t, json!({})).await;
    let admin = app.tenant_user("tenant_admin", &t);
    let us_base = mock.base.clone();
    let eu_base = mock.base.replace("127.0.0.1", "localhost");
    let mut agents = vec![];
    for (name, base) in [("us-llm", &us_base), ("eu-llm", &eu_base)] {
        let (s, p) = status_json(
            app.post(
                &format!("/v1/tenants/{t}/providers"),
                &admin,
                json!({"name": name, "kind": "openai", "base_url": base, "api_key": "sk"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "{p}");
        let (s, a) = status_json(
            app.post(
                &format!("/v1/tenants/{t}/agents"),
                &admin,
                json!({"name": format!("via-{name}"), "provider_id": p["id"], "model": "gpt"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "{a}");
        agents.push(a["name"].as_str().unwrap().to_owned());
    }
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
    let hello =
        |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "personal data"}]});

    // The us provider: refused before anything is sent, with a clear error.
    let (s, e) = complete(&app, key, hello("via-us-llm")).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (403, &json!("residency_violation")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("region eu"),
        "{e}"
    );
    assert_eq!(mock.calls(), 0, "no byte left for the us provider");
    // The eu provider works.
    let (s, body) = complete(&app, key, hello("via-eu-llm")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(mock.calls(), 1);
    let u = usage(&app, &t).await;
    assert_eq!(u["messages"]["used"], 1, "only the eu run counted: {u}");

    // The report: region, storage, verdicts, and the refusal as evidence from the audit log.
    let auditor = app.tenant_user("auditor", &t);
    let (s, r) = status_json(
        app.get(&format!("/v1/tenants/{t}/residency"), &auditor)
            .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["region"].as_str(), r["enforced"].as_bool()),
        (Some("eu"), Some(true))
    );
    assert_eq!(r["allowed_hosts"], json!(["localhost"]));
    let db = if b == Backend::Postgres {
        "postgresql"
    } else {
        "sqlite"
    };
    assert_eq!(r["storage"]["database"], db);
    assert!(r["storage"]["objects"]
        .as_str()
        .unwrap()
        .contains(&format!("tenants/{t}/")));
    let verdicts: Vec<(String, String)> = r["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        verdicts.contains(&("us-llm".into(), "out_of_region".into())),
        "{verdicts:?}"
    );
    assert!(
        verdicts.contains(&("eu-llm".into(), "allowed".into())),
        "{verdicts:?}"
    );
    let refused: Vec<&Value> = r["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "residency.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{}", r["evidence"]);
    assert_eq!(refused[0]["outcome"], "denied");
    assert_eq!(refused[0]["data"]["host"], "127.0.0.1");
    assert!(r["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "tenant.create" && e["data"]["region"] == "eu"));

    // Another tenant's auditor sees nothing of it; a member without audit rights neither.
    let (s, o) = tenant_in(&app, "Elsewhere", "us").await;
    assert_eq!(s, 202, "{o}");
    let other = o["tenant"]["id"].as_str().unwrap().to_owned();
    let (s, _) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/residency"),
            &app.tenant_user("auditor", &other),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
}
