//! Provider credentials and envelope encryption: write-only secrets, nothing readable at rest,
//! ciphertexts bound to their tenant and row, connection tests against a server that speaks
//! the provider's protocol, key rotations that lose nothing, crypto-shredding on purge.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use agentplane_core::authz::PlatformCtx;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    providers_are_validated_write_only_and_tenant_scoped,
    no_secret_is_readable_at_rest,
    a_ciphertext_moved_to_another_row_or_tenant_does_not_open,
    test_connection_speaks_openai_and_azure,
    tenant_key_rotation_reseals_everything,
    master_key_rotation_under_concurrent_reads_loses_nothing,
    purge_destroys_the_tenant_keys,
    private_base_urls_are_refused_when_the_deployment_says_so,
);

async fn private_base_urls_are_refused_when_the_deployment_says_so(b: Backend) {
    let app = TestApp::spawn_with(b, |env| {
        env.insert(
            "AGENTPLANE_ALLOW_PRIVATE_PROVIDER_URLS".into(),
            "false".into(),
        );
    })
    .await;
    let a = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &a);
    for url in [
        "http://127.0.0.1:8080/v1",
        "http://localhost:11434/v1",
        "http://169.254.169.254/latest",
        "http://10.0.0.5:8000/v1",
        "http://[::1]:8000/v1",
        "http://[::ffff:192.168.0.1]/v1",
        "http://0.0.0.0/v1",
        "https://no-such-host.invalid/v1",
    ] {
        let (s, p) = create(
            &app,
            &a,
            &admin,
            json!({"name": "x", "kind": "openai", "base_url": url, "api_key": "k"}),
        )
        .await;
        assert_eq!(
            (s, p["field"].as_str()),
            (422, Some("base_url")),
            "{url}: {p}"
        );
    }
    let (_, list) = status_json(app.get(&format!("/v1/tenants/{a}/providers"), &admin).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

/// A server speaking the providers' model-listing protocol, accepting only `key`.
async fn mock_provider(key: &'static str) -> String {
    let openai = move |h: HeaderMap| async move {
        if h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {key}")) {
            axum::Json(json!({"object": "list", "data": [{"id": "gpt-a"}, {"id": "gpt-b"}]}))
                .into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "bad key"}})),
            )
                .into_response()
        }
    };
    let azure =
        move |h: HeaderMap, q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            let ok = h.get("api-key").and_then(|v| v.to_str().ok()) == Some(key)
                && q.get("api-version").is_some();
            if ok {
                axum::Json(json!({"data": [{"id": "gpt-4o"}]})).into_response()
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        };
    let app = axum::Router::new()
        .route("/v1/models", get(openai))
        .route("/openai/models", get(azure));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

async fn create(app: &TestApp, t: &str, token: &str, body: Value) -> (u16, Value) {
    status_json(
        app.post(&format!("/v1/tenants/{t}/providers"), token, body)
            .await,
    )
    .await
}

fn openai(name: &str, base: &str, key: &str) -> Value {
    json!({"name": name, "kind": "openai", "base_url": format!("{base}/v1"), "api_key": key, "models": ["gpt-a"]})
}

async fn probe(app: &TestApp, t: &str, id: &str, token: &str) -> (u16, Value) {
    let r = app
        .call(
            Method::POST,
            &format!("/v1/tenants/{t}/providers/{id}/test"),
            Some(token),
            None,
        )
        .await;
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn providers_are_validated_write_only_and_tenant_scoped(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let z = app.active_tenant("Zeta").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let base = mock_provider("sk-acme").await;
    let res = app
        .post(
            &format!("/v1/tenants/{a}/providers"),
            &admin,
            openai("main", &base, "sk-acme"),
        )
        .await;
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let (s, p) = status_json(res).await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/tenants/{a}/providers/{id}"));
    assert!(p["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        !p.to_string().contains("sk-acme"),
        "the secret is never returned: {p}"
    );
    assert_eq!(
        p["key_version"], 1,
        "the tenant's first data key was made on first use"
    );

    let (s, p2) = create(&app, &a, &admin, openai("main", &base, "sk-other")).await;
    assert_eq!((s, p2["code"].as_str()), (409, Some("name_taken")));
    for (body, field) in [
        (
            json!({"name": "x", "kind": "anthropic", "base_url": "https://a.example/v1", "api_key": "k"}),
            None,
        ),
        (openai("bad url", &base, "k"), Some("name")),
        (
            json!({"name": "u", "kind": "openai", "base_url": "ftp://a.example", "api_key": "k"}),
            Some("base_url"),
        ),
        (
            json!({"name": "u", "kind": "openai", "base_url": "https://user:pw@a.example/v1", "api_key": "k"}),
            Some("base_url"),
        ),
        (
            json!({"name": "u", "kind": "openai", "base_url": "https://a.example/v1?key=x", "api_key": "k"}),
            Some("base_url"),
        ),
        (
            json!({"name": "u", "kind": "openai", "base_url": "https://a.example/v1", "api_key": ""}),
            Some("api_key"),
        ),
        (
            json!({"name": "u", "kind": "openai", "base_url": "https://a.example/v1", "api_key": "k", "secret": 1}),
            None,
        ),
    ] {
        let (s, p) = create(&app, &a, &admin, body.clone()).await;
        assert_eq!(s, 422, "{body}: {p}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{body}");
        }
    }
    let (_, list) = status_json(app.get(&format!("/v1/tenants/{a}/providers"), &admin).await).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "refused requests stored nothing"
    );

    // Rotating the secret changes the fingerprint; the response never carries it.
    let before = p["fingerprint"].clone();
    let (s, upd) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/providers/{id}"),
            Some(&admin),
            Some(json!({"api_key": "sk-acme-2", "expected_version": 1})),
        )
        .await,
    )
    .await;
    assert_eq!((s, upd["version"].as_i64()), (200, Some(2)));
    assert_ne!(upd["fingerprint"], before);
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/providers/{id}"),
            Some(&admin),
            Some(json!({"name": "x", "expected_version": 1})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 409, "stale expected_version");

    // Roles and tenants.
    let auditor = app.tenant_user("auditor", &a);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/providers/{id}"), &auditor)
            .await
            .status(),
        200
    );
    assert_eq!(
        create(&app, &a, &auditor, openai("aud", &base, "k"))
            .await
            .0,
        403
    );
    let member = app.tenant_user("member", &a);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/providers"), &member)
            .await
            .status(),
        403
    );
    let admin_z = app.tenant_user("tenant_admin", &z);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/providers/{id}"), &admin_z)
            .await
            .status(),
        404
    );
    // A provider id of tenant A under tenant B's path is not found either.
    assert_eq!(
        app.get(&format!("/v1/tenants/{z}/providers/{id}"), &admin_z)
            .await
            .status(),
        404
    );
    assert_eq!(probe(&app, &z, &id, &admin_z).await.0, 404);

    let del = format!("/v1/tenants/{a}/providers/{id}");
    assert_eq!(
        app.call(Method::DELETE, &del, Some(&admin), None)
            .await
            .status(),
        428
    );
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("{del}?confirm=true"),
            Some(&admin),
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("{del}?confirm=true"),
            Some(&admin),
            None
        )
        .await
        .status(),
        404
    );
    let (_, trail) = status_json(
        app.get(&format!("/v1/tenants/{a}/audit?limit=100"), &admin)
            .await,
    )
    .await;
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "provider.create",
        "provider.update",
        "provider.delete",
        "keys.create",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    assert!(
        !trail.to_string().contains("sk-acme"),
        "no secret in the audit trail"
    );
}

async fn no_secret_is_readable_at_rest(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let canary = format!("sk-live-CANARY-{}", uuid::Uuid::new_v4().simple());
    let (s, _) = create(
        &app,
        &a,
        &admin,
        openai("main", "https://api.openai.example", &canary),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = create(&app, &a, &admin, json!({"name": "az", "kind": "azure_openai", "base_url": "https://acme.openai.azure.example", "api_key": canary})).await;
    assert_eq!(s, 201);
    let dump = crate::helpers::dump_database(&app.db);
    let needle = canary.as_bytes();
    assert!(
        !dump.windows(needle.len()).any(|w| w == needle),
        "the secret is readable at rest"
    );
    // The data keys are stored wrapped only: the keyring file is elsewhere, and the dump holds
    // no key that opens anything without the KMS.
    assert!(
        std::fs::metadata(app.db.dir.path().join("master.keys")).is_ok(),
        "the dev keyring lives beside, not in, the database"
    );
}

async fn a_ciphertext_moved_to_another_row_or_tenant_does_not_open(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let z = app.active_tenant("Zeta").await;
    let (admin_a, admin_z) = (
        app.tenant_user("tenant_admin", &a),
        app.tenant_user("tenant_admin", &z),
    );
    let base = mock_provider("sk-right").await;
    let (_, p1) = create(&app, &a, &admin_a, openai("one", &base, "sk-right")).await;
    let (_, p2) = create(&app, &a, &admin_a, openai("two", &base, "sk-wrong")).await;
    let (_, p3) = create(&app, &z, &admin_z, openai("three", &base, "sk-wrong")).await;
    let (id1, id2, id3) = (
        p1["id"].as_str().unwrap(),
        p2["id"].as_str().unwrap(),
        p3["id"].as_str().unwrap(),
    );
    assert_eq!(probe(&app, &a, id1, &admin_a).await.1["ok"], true);
    assert_eq!(
        probe(&app, &a, id2, &admin_a).await.1["ok"],
        false,
        "the mock only takes sk-right"
    );

    // Copy provider one's sealed secret over provider two's (same tenant, same key).
    let copy = "UPDATE provider_credentials SET secret = (SELECT secret FROM provider_credentials WHERE id = $1), \
                key_version = (SELECT key_version FROM provider_credentials WHERE id = $1) WHERE id = $2";
    crate::helpers::raw_exec(&app.db, copy, &[id1, id2]).await;
    let (s, p) = probe(&app, &a, id2, &admin_a).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (500, Some("secret_unreadable")),
        "bound to its row: {p}"
    );
    // And over another tenant's provider.
    crate::helpers::raw_exec(&app.db, copy, &[id1, id3]).await;
    let (s, p) = probe(&app, &z, id3, &admin_z).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (500, Some("secret_unreadable")),
        "bound to its tenant: {p}"
    );
    assert!(!p.to_string().contains("sk-"));
    // The original still opens.
    assert_eq!(probe(&app, &a, id1, &admin_a).await.1["ok"], true);
}

async fn test_connection_speaks_openai_and_azure(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let base = mock_provider("sk-good").await;
    let (_, good) = create(&app, &a, &admin, openai("good", &base, "sk-good")).await;
    let (_, bad) = create(&app, &a, &admin, openai("bad", &base, "sk-bad")).await;
    let (_, az) = create(
        &app,
        &a,
        &admin,
        json!({"name": "az", "kind": "azure_openai", "base_url": base, "api_key": "sk-good"}),
    )
    .await;
    assert_eq!(az["api_version"], "2024-10-21", "a default api-version");
    let (s, r) = probe(&app, &a, good["id"].as_str().unwrap(), &admin).await;
    assert_eq!(
        (
            s,
            r["ok"].as_bool(),
            r["models"].as_u64(),
            r["status"].as_u64()
        ),
        (200, Some(true), Some(2), Some(200))
    );
    let (_, r) = probe(&app, &a, bad["id"].as_str().unwrap(), &admin).await;
    assert_eq!(
        (
            r["ok"].as_bool(),
            r["status"].as_u64(),
            r["detail"].as_str()
        ),
        (
            Some(false),
            Some(401),
            Some("the provider rejected the credentials")
        )
    );
    let (_, r) = probe(&app, &a, az["id"].as_str().unwrap(), &admin).await;
    assert_eq!(
        (r["ok"].as_bool(), r["models"].as_u64()),
        (Some(true), Some(1))
    );
    let (_, dead) = create(&app, &a, &admin, openai("dead", "http://127.0.0.1:9", "k")).await;
    let (_, r) = probe(&app, &a, dead["id"].as_str().unwrap(), &admin).await;
    assert_eq!(r["ok"], false);
    assert!(
        r["detail"].as_str().unwrap().starts_with("cannot connect"),
        "{r}"
    );
    let (_, trail) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/audit?action=provider.test"),
            &admin,
        )
        .await,
    )
    .await;
    let outcomes: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failure", "success", "failure", "success"]);
}

async fn tenant_key_rotation_reseals_everything(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let base = mock_provider("sk-1").await;
    let mut ids = vec![];
    for i in 0..3 {
        let (_, p) = create(&app, &a, &admin, openai(&format!("p{i}"), &base, "sk-1")).await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let rotate = format!("/v1/tenants/{a}/keys/rotate");
    assert_eq!(
        app.call(Method::POST, &rotate, Some(&admin), None)
            .await
            .status(),
        428
    );
    let (s, job) = status_json(
        app.call(
            Method::POST,
            &format!("{rotate}?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, job["kind"].as_str()), (202, Some("tenant.reseal")));
    let (_, keys) = status_json(app.get(&format!("/v1/tenants/{a}/keys"), &admin).await).await;
    let states: Vec<(i64, &str)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["version"].as_i64().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(1, "retired"), (2, "active")]);
    assert!(
        !keys.to_string().contains("wrapped"),
        "no key material, even wrapped, in the API"
    );
    // Before the job runs, old secrets still open (retired keys open what they sealed) and new
    // ones are sealed with the new key.
    assert_eq!(probe(&app, &a, &ids[0], &admin).await.1["ok"], true);
    let (_, p) = create(&app, &a, &admin, openai("new", &base, "sk-1")).await;
    assert_eq!(p["key_version"], 2);
    assert_eq!(app.run_jobs().await, 1);
    let (_, list) = status_json(app.get(&format!("/v1/tenants/{a}/providers"), &admin).await).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["key_version"] == 2),
        "{list}"
    );
    for id in &ids {
        assert_eq!(
            probe(&app, &a, id, &admin).await.1["ok"],
            true,
            "resealed secrets open and are intact"
        );
    }
    let (_, trail) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/audit?action=keys.resealed"),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(trail["items"][0]["data"]["resealed"], 3);
}

async fn master_key_rotation_under_concurrent_reads_loses_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let base = mock_provider("sk-m").await;
    let mut tenants = vec![];
    for i in 0..4 {
        let t = app.active_tenant(&format!("T{i}")).await;
        let admin = app.tenant_user("tenant_admin", &t);
        let (_, p) = create(&app, &t, &admin, openai("p", &base, "sk-m")).await;
        tenants.push((t, admin, p["id"].as_str().unwrap().to_owned()));
    }
    let op = app.platform_admin();
    // Readers open every secret over and over while the master key rotates twice.
    let readers = tenants.iter().map(|(t, admin, id)| async {
        let mut ok = 0;
        for _ in 0..15 {
            let (s, r) = probe(&app, t, id, admin).await;
            assert_eq!((s, r["ok"].as_bool()), (200, Some(true)), "{r}");
            ok += 1;
        }
        ok
    });
    let rotations = async {
        let mut reports = vec![];
        for _ in 0..2 {
            let (s, r) = status_json(
                app.call(
                    Method::POST,
                    "/v1/admin/keys/rotate?confirm=true",
                    Some(&op),
                    None,
                )
                .await,
            )
            .await;
            assert_eq!(s, 200, "{r}");
            reports.push(r);
        }
        reports
    };
    let (counts, reports) = futures::join!(futures::future::join_all(readers), rotations);
    assert_eq!(counts.iter().sum::<i32>(), 60);
    assert_eq!(
        (
            reports[0]["kek_version"].as_u64(),
            reports[0]["keys_rewrapped"].as_u64()
        ),
        (Some(2), Some(4))
    );
    assert_eq!(
        (
            reports[1]["kek_version"].as_u64(),
            reports[1]["keys_rewrapped"].as_u64()
        ),
        (Some(3), Some(4))
    );
    // A fresh process (empty key cache) unwraps the re-wrapped keys with the new master key.
    let cfg =
        agentplane_server::config::Config::from_sources(None, &app.db.env(&app.secret)).unwrap();
    let fresh = agentplane_server::Server::build(&cfg).await.unwrap();
    for (t, _, id) in &tenants {
        let ctx = PlatformCtx::for_system("test").tenant(t.parse().unwrap());
        let (_, secret) = fresh.control().provider_secret(&ctx, id).await.unwrap();
        assert_eq!(secret.as_slice(), b"sk-m");
        let keys = fresh.control().tenant_keys(&ctx).await.unwrap();
        assert!(keys.iter().all(|k| k.kek_version == 3), "{keys:?}");
    }
    let platform = PlatformCtx::for_system("test");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, "platform", 0, 100)
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|(e, _)| e.action == "keys.rotate_master")
            .count(),
        2
    );
}

async fn purge_destroys_the_tenant_keys(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let (_, p) = create(
        &app,
        &a,
        &admin,
        openai("p", "https://api.example", "sk-gone"),
    )
    .await;
    let id = p["id"].as_str().unwrap().to_owned();
    let op = app.platform_admin();
    app.call(
        Method::DELETE,
        &format!("/v1/admin/tenants/{a}?confirm=true"),
        Some(&op),
        None,
    )
    .await;
    app.call(
        Method::POST,
        &format!("/v1/admin/tenants/{a}/purge?confirm=true"),
        Some(&op),
        None,
    )
    .await;
    let (_, outcome) = status_json(
        app.call(
            Method::POST,
            "/v1/provisioning/jobs/run-next",
            Some(&op),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(outcome["result"], "succeeded", "{outcome}");
    let ctx = PlatformCtx::for_system("test").tenant(a.parse().unwrap());
    assert!(
        app.control.tenant_keys(&ctx).await.unwrap().is_empty(),
        "the data keys are destroyed"
    );
    assert!(app.control.provider_secret(&ctx, &id).await.is_err());
    let events = app
        .control
        .store()
        .audit_chain_page(&PlatformCtx::for_system("t"), &a, 0, 100)
        .await
        .unwrap();
    let purge = &events.last().unwrap().0;
    assert_eq!(
        (
            purge.data["tenant_keys"].as_u64(),
            purge.data["providers"].as_u64()
        ),
        (Some(1), Some(1))
    );
}
