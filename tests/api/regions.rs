//! A database per region (`AGENTPLANE_REGION_DATABASES`): a tenant's rows are kept in its
//! region's database and nowhere else, while every route, the gateway, the job queue, the
//! operators' lists and exports and the audit verification see all tenants as one deployment.

use crate::both_backends;
use crate::gateway::{complete, plan_for, records};
use crate::helpers::{dump_database, status_json, Backend, Db, TestApp};
use crate::mock_llm::MockLlm;
use serde_json::json;
use std::collections::HashMap;

both_backends!(a_tenants_rows_stay_in_its_regions_database);

/// The environment that gives `eu` its own database (`us` keeps its tenants in the main one).
fn regional_env(env: &mut HashMap<String, String>, eu: &Db) {
    env.insert(
        "AGENTPLANE_REGIONS".into(),
        "eu=localhost;us=127.0.0.1".into(),
    );
    let dsn = match &eu.pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}", eu.sqlite_path().display()),
    };
    env.insert("AGENTPLANE_REGION_DATABASES".into(), format!("eu={dsn}"));
    env.insert("AGENTPLANE_QUOTA_IDLE_MS".into(), "200".into());
}

/// A tenant of `region` with a provider the region allows, an agent whose prompt is
/// `marker`, an API key, and one run through the gateway. Answers its id and key.
async fn tenant_with_a_run(
    app: &TestApp,
    mock: &MockLlm,
    name: &str,
    region: &str,
    marker: &str,
) -> (String, String) {
    let op = app.platform_admin();
    let (s, t) = status_json(
        app.post(
            "/v1/tenants",
            &op,
            json!({"name": name, "admin_email": format!("admin@{marker}.test"), "region": region}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{t}");
    let id = t["tenant"]["id"].as_str().unwrap().to_owned();
    app.run_jobs().await;
    plan_for(app, &id, json!({})).await;
    let admin = app.tenant_user("tenant_admin", &id);
    let base = match region {
        "eu" => mock.base.replace("127.0.0.1", "localhost"),
        _ => mock.base.clone(),
    };
    let (s, p) = status_json(
        app.post(
            &format!("/v1/tenants/{id}/providers"),
            &admin,
            json!({"name": "llm", "kind": "openai", "base_url": base, "api_key": "sk"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let (s, a) = status_json(
        app.post(
            &format!("/v1/tenants/{id}/agents"),
            &admin,
            json!({"name": "helper", "provider_id": p["id"], "model": "gpt",
                   "system_prompt": marker}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let (s, k) = status_json(
        app.post(
            &format!("/v1/tenants/{id}/api-keys"),
            &admin,
            json!({"name": "app"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().unwrap().to_owned();
    let (s, body) = complete(
        app,
        &key,
        json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    (id, key)
}

async fn a_tenants_rows_stay_in_its_regions_database(b: Backend) {
    let mock = MockLlm::start().await;
    let eu_db = Db::new(b).await;
    let app = TestApp::spawn_with(b, |env| regional_env(env, &eu_db)).await;
    let (paris, paris_key) = tenant_with_a_run(&app, &mock, "Paris", "eu", "paris-marker").await;
    let (austin, _) = tenant_with_a_run(&app, &mock, "Austin", "us", "austin-marker").await;
    app.run_jobs().await;

    // Every byte of each database: Paris is in the eu one only, Austin in the main one only.
    let (eu, main) = (
        String::from_utf8_lossy(&dump_database(&eu_db)).into_owned(),
        String::from_utf8_lossy(&dump_database(&app.db)).into_owned(),
    );
    for marker in [paris.as_str(), "paris-marker"] {
        assert!(eu.contains(marker), "{marker} is in the eu database");
        assert!(!main.contains(marker), "{marker} is not in the main one");
    }
    for marker in [austin.as_str(), "austin-marker"] {
        assert!(main.contains(marker), "{marker} is in the main database");
        assert!(!eu.contains(marker), "{marker} is not in the eu one");
    }

    // One deployment to its operators: the tenant list pages over both databases, and the
    // usage export has both tenants' runs.
    let op = app.platform_admin();
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let (s, page) = status_json(
            app.get(&format!("/v1/admin/tenants?limit=1&cursor={cursor}"), &op)
                .await,
        )
        .await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let mut expected = vec![paris.clone(), austin.clone()];
    expected.sort();
    assert_eq!(seen, expected, "each tenant once, in id order");
    assert_eq!(records(&app, &paris).await.len(), 1);
    assert_eq!(records(&app, &austin).await.len(), 1);

    // Routing never crosses tenants: Austin's admin finds nothing of Paris.
    let austin_admin = app.tenant_user("tenant_admin", &austin);
    let (s, _) = status_json(
        app.get(&format!("/v1/tenants/{paris}/agents"), &austin_admin)
            .await,
    )
    .await;
    assert!(s == 403 || s == 404, "{s}");

    // The residency report names the database.
    for (t, name) in [(&paris, "eu"), (&austin, "main")] {
        let admin = app.tenant_user("tenant_admin", t);
        let (s, r) =
            status_json(app.get(&format!("/v1/tenants/{t}/residency"), &admin).await).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["storage"]["database_name"], name, "{r}");
    }

    // Between regions with separate databases a tenant cannot move (its rows would stay).
    let (s, e) = status_json(
        app.post(
            &format!("/v1/admin/tenants/{paris}/region?confirm=true"),
            &op,
            json!({"region": "us"}),
        )
        .await,
    )
    .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("region")), "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("separate databases"),
        "{e}"
    );

    // Another process on the same databases (it knows no tenant yet) finds each tenant, its
    // key, and verifies every audit chain of both databases.
    let mut env = app.db.env(&app.secret);
    regional_env(&mut env, &eu_db);
    let cfg = agentplane_server::config::Config::from_sources(None, &env).unwrap();
    let store = agentplane_server::app::open_store(&cfg).await.unwrap();
    let found = store.get_tenant(paris.parse().unwrap()).await.unwrap();
    assert_eq!(found.unwrap().region, "eu");
    let public_id = paris_key.split('_').nth(2).unwrap();
    let key = store.find_api_key(public_id).await.unwrap();
    assert_eq!(
        key.map(|k| k.key.tenant_id.to_string()),
        Some(paris.clone())
    );
    let platform = agentplane_core::authz::PlatformCtx::for_system("test/regions");
    let report = agentplane_audit::verify_all(store.as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let chains: Vec<&str> = report.chains.iter().map(|c| c.chain.as_str()).collect();
    assert!(
        chains.contains(&paris.as_str()) && chains.contains(&austin.as_str()),
        "{chains:?}"
    );
}
