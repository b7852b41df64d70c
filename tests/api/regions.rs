//! A database per region (`AGENTPLANE_REGION_DATABASES`): a tenant's rows are kept in its
//! region's database and nowhere else, while every route, the gateway, the job queue, the
//! operators' lists and exports and the audit verification see all tenants as one deployment.

use crate::both_backends;
use crate::gateway::{complete, plan_for, records};
use crate::helpers::{dump_database, status_json, Backend, Db, TestApp};
use crate::mock_llm::MockLlm;
use serde_json::json;
use std::collections::HashMap;

both_backends!(
    a_tenants_rows_stay_in_its_regions_database,
    a_tenant_moves_to_another_regions_database_with_every_row_and_no_run_lost,
    a_worker_killed_mid_move_leaves_the_tenant_whole_and_the_next_one_moves_it_once,
);

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

/// [`regional_env`] where both regions allow the mock under both its names, so that a tenant
/// keeps its provider wherever it moves.
fn movable_env(env: &mut HashMap<String, String>, eu: &Db) {
    regional_env(env, eu);
    let both = "localhost,127.0.0.1";
    env.insert("AGENTPLANE_REGIONS".into(), format!("eu={both};us={both}"));
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

    // An export of an eu tenant imported as a new tenant lands in the eu database, its
    // import recorded on its own chain there and on the platform's in the main database.
    let (s, t) = status_json(
        app.post(
            "/v1/tenants",
            &op,
            json!({"name": "Lyon", "admin_email": "admin@lyon.test", "region": "eu"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{t}");
    let lyon = t["tenant"]["id"].as_str().unwrap().to_owned();
    app.run_jobs().await;
    let rec = crate::exports::export(&app, &lyon, json!({"export_type": "full"})).await;
    let bytes = crate::exports::download(&app, &lyon, &rec).await;
    let (s, imported) = crate::exports::import(&app, bytes, "&slug=lyon-copy").await;
    assert_eq!(s, 201, "{imported}");
    let copy = imported["tenant_id"].as_str().unwrap().to_owned();
    // And one with an agent and its provider: the provider comes without its secret (no
    // export holds one), the agent keeps it, and a run asks for the secret until it is set.
    let rec = crate::exports::export(&app, &paris, json!({"export_type": "full"})).await;
    let bytes = crate::exports::download(&app, &paris, &rec).await;
    let (s, imported) = crate::exports::import(&app, bytes, "&slug=paris-copy").await;
    assert_eq!(s, 201, "{imported}");
    let paris_copy = imported["tenant_id"].as_str().unwrap().to_owned();
    assert_eq!(
        count(
            &eu_db,
            "SELECT COUNT(*) FROM agents WHERE tenant_id = $1",
            &paris_copy
        )
        .await,
        1
    );
    let copy_admin = app.tenant_user("tenant_admin", &paris_copy);
    let (_, k) = status_json(
        app.post(
            &format!("/v1/tenants/{paris_copy}/api-keys"),
            &copy_admin,
            json!({"name": "app"}),
        )
        .await,
    )
    .await;
    let copy_key = k["key"].as_str().unwrap().to_owned();
    let hi = json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]});
    let (s, e) = complete(&app, &copy_key, hi.clone()).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("set it again"),
        "{e}"
    );
    let (_, providers) = status_json(
        app.get(&format!("/v1/tenants/{paris_copy}/providers"), &copy_admin)
            .await,
    )
    .await;
    let provider = providers["items"][0]["id"].as_str().unwrap().to_owned();
    let res = app
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tenants/{paris_copy}/providers/{provider}"),
            Some(&copy_admin),
            Some(json!({"api_key": "sk-again"})),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let (s, body) = complete(&app, &copy_key, hi).await;
    assert_eq!(s, 200, "{body}");
    // The copy, whose chain began under Paris's id, moves out and back: the chain's origin
    // goes along each time, and each database's kept copy still verifies (below).
    for region in ["us", "eu"] {
        let j = move_tenant(&app, &paris_copy, region).await;
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    let (s, body) = complete(
        &app,
        &copy_key,
        json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let tenants = "SELECT COUNT(*) FROM tenants WHERE tenant_id = $1";
    assert_eq!(count(&eu_db, tenants, &copy).await, 1);
    assert_eq!(count(&app.db, tenants, &copy).await, 0);
    let events = "SELECT COUNT(*) FROM audit_events WHERE action = 'tenant.imported' AND data LIKE '%' || $1 || '%'";
    assert_eq!(count(&eu_db, events, &lyon).await, 1, "on the copy's chain");
    assert_eq!(count(&app.db, events, &lyon).await, 1, "on the platform's");

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

/// How many rows `sql` (with `$1` = `arg`) counts in a database, as its owner sees it.
async fn count(db: &Db, sql: &str, arg: &str) -> i64 {
    use sqlx::Connection;
    match &db.pg {
        Some(pg) => {
            let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(arg)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
        None => {
            let url = format!("sqlite://{}", db.sqlite_path().display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(arg)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    }
}

/// The tables of a database that have a `tenant_id` column.
async fn tenant_tables(db: &Db) -> Vec<String> {
    use sqlx::Connection;
    let mut names: Vec<String> = match &db.pg {
        Some(pg) => {
            let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND column_name = 'tenant_id'",
            )
            .fetch_all(&mut c)
            .await
            .unwrap()
        }
        None => {
            let url = format!("sqlite://{}", db.sqlite_path().display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(
                "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND p.name = 'tenant_id'",
            )
            .fetch_all(&mut c)
            .await
            .unwrap()
        }
    };
    names.sort();
    names
}

/// Moves `tenant` to `region` (the job runs at once) and answers the job's final state.
async fn move_tenant(app: &TestApp, tenant: &str, region: &str) -> serde_json::Value {
    let op = app.platform_admin();
    let (s, job) = status_json(
        app.post(
            &format!("/v1/admin/tenants/{tenant}/region?confirm=true"),
            &op,
            json!({"region": region}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{job}");
    app.run_jobs().await;
    let admin = app.tenant_user("tenant_admin", tenant);
    let (s, j) = status_json(
        app.get(
            &format!("/v1/tenants/{tenant}/jobs/{}", job["id"].as_str().unwrap()),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{j}");
    j
}

async fn a_tenant_moves_to_another_regions_database_with_every_row_and_no_run_lost(b: Backend) {
    let mock = MockLlm::start().await;
    let eu_db = Db::new(b).await;
    let app = TestApp::spawn_with(b, |env| movable_env(env, &eu_db)).await;
    let (paris, key) = tenant_with_a_run(&app, &mock, "Paris", "eu", "paris-marker").await;
    let (austin, _) = tenant_with_a_run(&app, &mock, "Austin", "us", "austin-marker").await;
    app.run_jobs().await;

    // Every table with a tenant's rows is one the move knows.
    let mut known: Vec<String> = agentplane_store::moves::TENANT_TABLES
        .iter()
        .map(|t| t.to_string())
        .collect();
    known.push("tenant_moves".into());
    known.sort();
    assert_eq!(tenant_tables(&eu_db).await, known);

    let admin = app.tenant_user("tenant_admin", &paris);
    let read = |path: &'static str| {
        let (app, admin, paris) = (&app, admin.clone(), paris.clone());
        async move {
            let (s, v) = status_json(
                app.get(&format!("/v1/tenants/{paris}/{path}"), &admin)
                    .await,
            )
            .await;
            assert_eq!(s, 200, "{path}: {v}");
            v
        }
    };
    let before = (
        read("agents").await,
        read("providers").await,
        read("users").await,
    );

    // Runs keep coming while the tenant moves: each one is answered, as a success or as a
    // clear "moving, retry", and every success is metered exactly once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs = {
        let (base, key, stop) = (app.base.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut moving) = (0i64, 0i64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok < 5 {
                let res = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                match res.status().as_u16() {
                    200 => ok += 1,
                    503 => {
                        let e: serde_json::Value = res.json().await.unwrap();
                        assert_eq!(e["error"]["code"], "tenant_moving", "{e}");
                        moving += 1;
                    }
                    s => panic!("{s}: {}", res.text().await.unwrap()),
                }
            }
            (ok, moving)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let job = move_tenant(&app, &paris, "us").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, moving) = runs.await.unwrap();
    assert!(ok >= 5, "{ok} runs after the move");
    let u = crate::gateway::settled(&app, &paris).await;
    assert_eq!(
        u["messages"]["used"],
        1 + ok,
        "every success metered, no other: {u} ({moving} moving)"
    );
    assert_eq!(records(&app, &paris).await.len() as i64, 1 + ok);

    // It is the same tenant, in the main database now.
    let after = (
        read("agents").await,
        read("providers").await,
        read("users").await,
    );
    assert_eq!(before, after);
    let (_, t) = status_json(
        app.get(&format!("/v1/tenants/{paris}"), &app.platform_admin())
            .await,
    )
    .await;
    assert_eq!(t["region"], "us", "{t}");
    let (_, r) = status_json(
        app.get(&format!("/v1/tenants/{paris}/residency"), &admin)
            .await,
    )
    .await;
    assert_eq!(r["storage"]["database_name"], "main", "{r}");
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) FROM tenants WHERE tenant_id = $1",
            &paris
        )
        .await,
        1
    );

    // The eu database kept nothing of it but its audit chain (without personal data).
    for t in agentplane_store::moves::TENANT_TABLES {
        let n = count(
            &eu_db,
            &format!("SELECT COUNT(*) FROM {t} WHERE tenant_id = $1"),
            &paris,
        )
        .await;
        match *t {
            "audit_events" | "audit_heads" => assert!(n > 0, "{t} kept"),
            _ => assert_eq!(n, 0, "{t} left in eu"),
        }
    }
    let eu = String::from_utf8_lossy(&dump_database(&eu_db)).into_owned();
    assert!(
        !eu.contains("paris-marker"),
        "no prompt, address or name left in eu"
    );

    // Both copies of its chain verify, and its trail (in its new home) goes on.
    assert_eq!(moves_in_trail(&app, &paris).await, 1);

    // And back: the eu database continues the chain it kept.
    let (s, body) = complete(
        &app,
        &key,
        json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let job = move_tenant(&app, &paris, "eu").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (s, body) = complete(
        &app,
        &key,
        json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(moves_in_trail(&app, &paris).await, 2);
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) FROM tenants WHERE tenant_id = $1",
            &paris
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &eu_db,
            "SELECT COUNT(*) FROM tenants WHERE tenant_id = $1",
            &paris
        )
        .await,
        1
    );
    let u = crate::gateway::settled(&app, &paris).await;
    assert_eq!(u["messages"]["used"], 3 + ok, "{u}");

    let mut env = app.db.env(&app.secret);
    regional_env(&mut env, &eu_db);
    let cfg = agentplane_server::config::Config::from_sources(None, &env).unwrap();
    let store = agentplane_server::app::open_store(&cfg).await.unwrap();
    let platform = agentplane_core::authz::PlatformCtx::for_system("test/regions");
    let report = agentplane_audit::verify_all(store.as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let chains: Vec<&str> = report.chains.iter().map(|c| c.chain.as_str()).collect();
    assert!(chains.contains(&paris.as_str()), "{chains:?}");
    assert!(
        chains.contains(&format!("{paris}@main").as_str()),
        "{chains:?}"
    );
    assert!(chains.contains(&austin.as_str()), "{chains:?}");
}

/// How many moves the tenant's audit trail records.
async fn moves_in_trail(app: &TestApp, tenant: &str) -> usize {
    let auditor = app.tenant_user("auditor", tenant);
    let (s, v) = status_json(
        app.get(
            &format!("/v1/tenants/{tenant}/audit?action=tenant.region_moved"),
            &auditor,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().unwrap().len()
}

/// A run through the gateway, retried once if the tenant moved under this process.
async fn run_once(app: &TestApp, key: &str) {
    let hi = json!({"model": "helper", "messages": [{"role": "user", "content": "hi"}]});
    let (mut s, mut body) = complete(app, key, hi.clone()).await;
    if s == 503 {
        (s, body) = complete(app, key, hi).await;
    }
    assert_eq!(s, 200, "{body}");
}

async fn a_worker_killed_mid_move_leaves_the_tenant_whole_and_the_next_one_moves_it_once(
    b: Backend,
) {
    use crate::crash::{Proc, PATIENCE, POLL, SIGABRT};
    use std::os::unix::process::ExitStatusExt;
    let mock = MockLlm::start().await;
    let eu_db = Db::new(b).await;
    let app = TestApp::spawn_with(b, |env| movable_env(env, &eu_db)).await;
    let (paris, key) = tenant_with_a_run(&app, &mock, "Paris", "eu", "paris-marker").await;
    let (s, job) = status_json(
        app.post(
            &format!("/v1/admin/tenants/{paris}/region?confirm=true"),
            &app.platform_admin(),
            json!({"region": "us"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let (mut env, mut crash_env) = crate::crash::worker_envs(&app, "move.before_release");
    movable_env(&mut env, &eu_db);
    movable_env(&mut crash_env, &eu_db);

    // 1. The worker dies once the copy is in the main database, before the eu one lets
    //    the tenant go: the tenant is whole in eu, where it goes on working.
    let mut doomed = Proc::spawn(&["worker"], &crash_env);
    let status = doomed.wait(PATIENCE).await;
    assert_eq!(status.signal(), Some(SIGABRT), "{}", doomed.describe());
    let tenants = "SELECT COUNT(*) FROM tenants WHERE tenant_id = $1";
    assert_eq!(count(&eu_db, tenants, &paris).await, 1);
    assert_eq!(count(&app.db, tenants, &paris).await, 1, "the copy arrived");
    let cfg = agentplane_server::config::Config::from_sources(None, &env).unwrap();
    let fresh = agentplane_server::app::open_store(&cfg).await.unwrap();
    let t = fresh
        .get_tenant(paris.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        t.region, "eu",
        "a process that looks it up finds it where it is whole"
    );
    run_once(&app, &key).await;

    // 2. A second worker takes the job over and moves it, with what was written since.
    let mut rescuer = Proc::spawn(&["worker"], &env);
    let admin = app.tenant_user("tenant_admin", &paris);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let res = app
            .get(
                &format!("/v1/tenants/{paris}/jobs/{}", job["id"].as_str().unwrap()),
                &admin,
            )
            .await;
        let status = res.status().as_u16();
        let j: serde_json::Value = res.json().await.unwrap();
        // While the rows move, the tenant answers "moving, retry" (at once, holding nothing).
        assert!(
            status == 200 || (status == 503 && j["code"] == "tenant_moving"),
            "{status} {j}"
        );
        if j["status"] == "succeeded" {
            assert_eq!(j["attempts"], 2, "{j}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{j}\n{}",
            rescuer.describe()
        );
        tokio::time::sleep(POLL).await;
    }
    rescuer.terminate();
    assert!(
        rescuer.wait(PATIENCE).await.success(),
        "{}",
        rescuer.describe()
    );
    assert_eq!(count(&eu_db, tenants, &paris).await, 0);
    assert_eq!(count(&app.db, tenants, &paris).await, 1);
    run_once(&app, &key).await;
    let u = crate::gateway::settled(&app, &paris).await;
    assert_eq!(
        u["messages"]["used"], 3,
        "the run made between the attempts came along: {u}"
    );
    assert_eq!(moves_in_trail(&app, &paris).await, 1, "moved once");
}
