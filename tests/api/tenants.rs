//! Tenant creation, provisioning and the lifecycle state machine over HTTP.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::json;

both_backends!(
    create_provisions_defaults_quota_and_first_admin,
    slugs_are_generated_unique_and_validated,
    lifecycle_state_machine_is_enforced,
    suspended_and_deleted_tenants_are_refused,
    purge_removes_tenant_data_and_keeps_the_chain,
    concurrent_creations_with_one_idempotency_key_make_one_tenant,
    idempotency_key_reused_with_another_body_is_refused,
    plan_change_applies_at_once,
    users_filter_by_role_before_paging,
);

async fn create_provisions_defaults_quota_and_first_admin(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let res = app
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "Acme Corp", "admin_email": "Ann@Acme.TEST", "plan_id": "pro"}),
        )
        .await;
    let location = res
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = status_json(res).await;
    assert_eq!(status, 202);
    let id = body["tenant"]["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/tenants/{id}"));
    assert_eq!(body["tenant"]["status"], "provisioning");
    assert_eq!(body["tenant"]["slug"], "acme-corp");
    assert_eq!(body["tenant"]["plan_id"], "pro");

    // The tenant's own admin cannot use it before provisioning finishes.
    let tadmin = app.tenant_user("tenant_admin", &id);
    let (s, p) = status_json(app.get(&format!("/v1/tenants/{id}/users"), &tadmin).await).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("tenant_provisioning")));

    let (s, out) = status_json(
        app.call(
            Method::POST,
            "/v1/provisioning/jobs/run-next",
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(out["result"], "succeeded");
    assert_eq!(out["job"]["kind"], "tenant.provision");
    let (s, _) = status_json(
        app.call(
            Method::POST,
            "/v1/provisioning/jobs/run-next",
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 204, "the queue is empty afterwards");

    let (_, t) = status_json(app.get(&format!("/v1/tenants/{id}"), &tadmin).await).await;
    assert_eq!(t["status"], "active");
    let (_, users) = status_json(app.get(&format!("/v1/tenants/{id}/users"), &tadmin).await).await;
    let users = users["items"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    // E-mail addresses are normalised to lower case.
    assert_eq!(users[0]["email"], "ann@acme.test");
    assert_eq!(users[0]["roles"], json!(["tenant_admin"]));

    let (_, usage) = status_json(
        app.get(&format!("/v1/admin/tenants/{id}/usage"), &tadmin)
            .await,
    )
    .await;
    assert_eq!(usage["plan_id"], "pro");
    assert_eq!(
        usage["messages"],
        json!({"used": 0, "reserved": 0, "limit": 100000, "remaining": 100000})
    );

    let ctx = agentplane_core::authz::PlatformCtx::for_system("test").tenant(id.parse().unwrap());
    let settings = app.control.store().list_settings(&ctx).await.unwrap();
    let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
    assert!(
        keys.contains(&"audit.retention_days") && keys.contains(&"locale"),
        "{keys:?}"
    );

    let (_, trail) = status_json(app.get(&format!("/v1/tenants/{id}/audit"), &tadmin).await).await;
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["tenant.provisioned", "tenant.create"],
        "newest first"
    );
}

async fn slugs_are_generated_unique_and_validated(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let mut slugs = vec![];
    for _ in 0..3 {
        let (s, body) = status_json(
            app.post(
                "/v1/tenants",
                &admin,
                json!({"name": "Globex", "admin_email": "a@globex.test"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202);
        slugs.push(body["tenant"]["slug"].as_str().unwrap().to_owned());
    }
    assert_eq!(slugs, ["globex", "globex-2", "globex-3"]);
    let (s, p) = status_json(
        app.post(
            "/v1/tenants",
            &admin,
            json!({"name": "X", "slug": "globex", "admin_email": "a@x.test"}),
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("slug_taken")));
    for (body, field) in [
        (json!({"name": "", "admin_email": "a@x.test"}), "name"),
        (
            json!({"name": "Ok", "admin_email": "not-an-email"}),
            "email",
        ),
        (
            json!({"name": "Ok", "admin_email": "a@x.test", "slug": "Bad Slug"}),
            "slug",
        ),
        (
            json!({"name": "Ok", "admin_email": "a@x.test", "slug": "admin"}),
            "slug",
        ),
        (
            json!({"name": "Ok", "admin_email": "a@x.test", "plan_id": "nope"}),
            "plan_id",
        ),
        (
            json!({"name": "Ok", "admin_email": "a@x.test", "region": "EU WEST"}),
            "region",
        ),
    ] {
        let (s, p) = status_json(app.post("/v1/tenants", &admin, body.clone()).await).await;
        assert_eq!(s, 422, "{body}");
        assert_eq!(p["code"], "validation_failed");
        assert_eq!(p["field"], field, "{p}");
    }
    let (_, list) = status_json(app.get("/v1/admin/tenants", &admin).await).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        3,
        "refused requests created nothing"
    );
}

async fn lifecycle_state_machine_is_enforced(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let id = app.active_tenant("Initech").await;
    let t = |s: &str| format!("/v1/admin/tenants/{id}/{s}");

    let (s, p) = status_json(
        app.call(Method::POST, &t("suspend"), Some(&admin), None)
            .await,
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (428, Some("confirmation_required")),
        "suspend needs confirmation"
    );
    let (s, body) = status_json(
        app.post(
            &(t("suspend") + "?confirm=true"),
            &admin,
            json!({"reason": "unpaid"}),
        )
        .await,
    )
    .await;
    assert_eq!((s, body["status"].as_str()), (200, Some("suspended")));
    let (s, p) = status_json(
        app.call(
            Method::POST,
            &(t("suspend") + "?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("invalid_transition")));
    let (s, body) = status_json(
        app.call(Method::POST, &t("reactivate"), Some(&admin), None)
            .await,
    )
    .await;
    assert_eq!((s, body["status"].as_str()), (200, Some("active")));
    let (s, p) = status_json(
        app.call(Method::POST, &t("reactivate"), Some(&admin), None)
            .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("invalid_transition")));
    let (s, p) = status_json(
        app.call(
            Method::POST,
            &(t("purge") + "?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (409, Some("invalid_transition")),
        "only a deleted tenant can be purged"
    );

    let del = format!("/v1/admin/tenants/{id}");
    let (s, _) = status_json(app.call(Method::DELETE, &del, Some(&admin), None).await).await;
    assert_eq!(s, 428);
    let (s, body) = status_json(
        app.call(
            Method::DELETE,
            &(del.clone() + "?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, body["status"].as_str()), (200, Some("deleted")));
    assert!(body["deleted_at"].is_string());
    // Restorable within the grace period; the scheduled purge then does nothing.
    let (s, body) = status_json(
        app.call(Method::POST, &t("reactivate"), Some(&admin), None)
            .await,
    )
    .await;
    assert_eq!((s, body["status"].as_str()), (200, Some("active")));
    assert!(body.get("deleted_at").is_none());

    let (_, trail) = status_json(
        app.get(&format!("/v1/tenants/{id}/audit?limit=20"), &admin)
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
        actions,
        [
            "tenant.reactivate",
            "tenant.delete",
            "tenant.reactivate",
            "tenant.suspend",
            "tenant.provisioned",
            "tenant.create"
        ]
    );
    let suspend = &trail["items"][3];
    assert_eq!(suspend["data"]["reason"], "unpaid");
    assert_eq!(suspend["actor_id"], "operator");
}

async fn suspended_and_deleted_tenants_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let id = app.active_tenant("Umbrella").await;
    let tadmin = app.tenant_user("tenant_admin", &id);
    let routes = [
        format!("/v1/tenants/{id}"),
        format!("/v1/tenants/{id}/users"),
        format!("/v1/tenants/{id}/audit"),
        format!("/v1/admin/tenants/{id}/usage"),
    ];
    for r in &routes {
        assert_eq!(app.get(r, &tadmin).await.status(), 200, "{r}");
    }
    app.post(
        &format!("/v1/admin/tenants/{id}/suspend?confirm=true"),
        &admin,
        json!({}),
    )
    .await;
    for r in &routes {
        let (s, p) = status_json(app.get(r, &tadmin).await).await;
        assert_eq!(
            (s, p["code"].as_str()),
            (403, Some("tenant_suspended")),
            "{r}"
        );
        // The operator still sees it.
        assert_eq!(app.get(r, &admin).await.status(), 200, "{r}");
    }
    app.call(
        Method::POST,
        &format!("/v1/admin/tenants/{id}/reactivate"),
        Some(&admin),
        None,
    )
    .await;
    app.call(
        Method::DELETE,
        &format!("/v1/admin/tenants/{id}?confirm=true"),
        Some(&admin),
        None,
    )
    .await;
    for r in &routes {
        let (s, p) = status_json(app.get(r, &tadmin).await).await;
        assert_eq!(
            (s, p["code"].as_str()),
            (404, Some("not_found")),
            "a deleted tenant is gone for its users: {r}"
        );
    }
}

async fn purge_removes_tenant_data_and_keeps_the_chain(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let keep = app.active_tenant("Keeper").await;
    let id = app.active_tenant("Doomed").await;
    app.call(
        Method::DELETE,
        &format!("/v1/admin/tenants/{id}?confirm=true"),
        Some(&admin),
        None,
    )
    .await;
    // The purge scheduled by the delete is not due yet (grace period).
    assert_eq!(app.run_jobs().await, 0);
    let (s, job) = status_json(
        app.call(
            Method::POST,
            &format!("/v1/admin/tenants/{id}/purge?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, job["kind"].as_str()), (202, Some("tenant.purge")));
    assert_eq!(app.run_jobs().await, 1);
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{id}"), &admin).await).await;
    assert_eq!(s, 404);

    let platform = agentplane_core::authz::PlatformCtx::for_system("test");
    let ctx = platform.tenant(id.parse().unwrap());
    let store = app.control.store();
    assert!(store.list_settings(&ctx).await.unwrap().is_empty());
    let page = agentplane_core::page::PageRequest::first(10);
    assert!(store
        .list_members(&ctx, &Default::default(), &page)
        .await
        .unwrap()
        .items
        .is_empty());
    // The chain survives the purge, verifies, and ends with the purge; its personal data is gone.
    let report = agentplane_audit::verify_all(store.as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let events = store
        .audit_chain_page(&platform, &id, 0, 100)
        .await
        .unwrap();
    assert_eq!(events.last().unwrap().0.action, "tenant.purge");
    assert_eq!(events.last().unwrap().0.data["memberships"], 1);
    assert!(
        events.iter().all(|(_, pii)| pii.is_none()),
        "personal data of a purged tenant is erased"
    );
    // The other tenant is untouched.
    let keep_ctx = platform.tenant(keep.parse().unwrap());
    assert_eq!(
        store
            .list_members(&keep_ctx, &Default::default(), &page)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(store
        .audit_chain_page(&platform, &keep, 0, 100)
        .await
        .unwrap()
        .iter()
        .any(|(_, pii)| pii.is_some()));
}

async fn concurrent_creations_with_one_idempotency_key_make_one_tenant(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let body = json!({"name": "Hooli", "admin_email": "gavin@hooli.test"});
    let futs = (0..50).map(|_| {
        app.client
            .post(format!("{}/v1/tenants", app.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "create-hooli-1")
            .json(&body)
            .send()
    });
    let responses = futures::future::join_all(futs).await;
    let mut bodies = vec![];
    let mut replayed = 0;
    for r in responses {
        let r = r.unwrap();
        replayed += usize::from(r.headers().contains_key("idempotent-replayed"));
        let (s, v) = status_json(r).await;
        assert_eq!(s, 202, "{v}");
        bodies.push(v);
    }
    assert_eq!(replayed, 49, "one fresh answer, 49 replays");
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every response is the same tenant"
    );
    let (_, list) = status_json(app.get("/v1/admin/tenants", &admin).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.run_jobs().await, 1, "one provisioning job");
}

async fn idempotency_key_reused_with_another_body_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let send = |name: &'static str| {
        app.client
            .post(format!("{}/v1/tenants", app.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "k-1")
            .json(&json!({"name": name, "admin_email": "a@b.test"}))
            .send()
    };
    assert_eq!(send("First").await.unwrap().status(), 202);
    let (s, p) = status_json(send("Second").await.unwrap()).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Keys are per caller: another operator may use the same key.
    let other = app.token(json!({"sub": "operator-2", "roles": ["platform_admin"]}));
    let r = app
        .client
        .post(format!("{}/v1/tenants", app.base))
        .bearer_auth(&other)
        .header("Idempotency-Key", "k-1")
        .json(&json!({"name": "Second", "admin_email": "a@b.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (s, _) = status_json(
        app.client
            .post(format!("{}/v1/tenants", app.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "")
            .json(&json!({"name": "X", "admin_email": "a@b.test"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422, "an empty key is refused");
    let (_, list) = status_json(app.get("/v1/admin/tenants", &admin).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

async fn plan_change_applies_at_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let id = app.active_tenant("Stark").await;
    let tok = app.tenant_user("tenant_admin", &id);
    let usage_path = format!("/v1/admin/tenants/{id}/usage");
    let plan_path = format!("/v1/admin/tenants/{id}/plan");
    assert_eq!(
        status_json(app.get(&usage_path, &tok).await).await.1["messages"]["limit"],
        1000
    );
    let (s, t) = status_json(
        app.call(
            Method::PATCH,
            &plan_path,
            Some(&admin),
            Some(json!({"plan_id": "pro"})),
        )
        .await,
    )
    .await;
    assert_eq!((s, t["plan_id"].as_str()), (200, Some("pro")));
    let usage = status_json(app.get(&usage_path, &tok).await).await.1;
    assert_eq!(usage["messages"]["limit"], 100000);
    assert_eq!(usage["tokens"]["limit"], 100000000);
    let (s, p) = status_json(
        app.call(
            Method::PATCH,
            &plan_path,
            Some(&admin),
            Some(json!({"plan_id": "missing"})),
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (422, Some("validation_failed")));
    let tadmin = app.tenant_user("tenant_admin", &id);
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/admin/tenants/{id}/plan"),
            Some(&tadmin),
            Some(json!({"plan_id": "free"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403, "tenant admins cannot change their own plan");
    assert_eq!(
        status_json(app.get(&usage_path, &tok).await).await.1["plan_id"],
        "pro"
    );
}

async fn users_filter_by_role_before_paging(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Acme").await;
    // The first admin plus, in user-id order: member, auditor, member, auditor, auditor.
    for (i, role) in ["member", "auditor", "member", "auditor", "auditor"]
        .iter()
        .enumerate()
    {
        crate::helpers::raw_exec(
            &app.db,
            "INSERT INTO memberships (tenant_id, user_id, email, roles, status, created_at) VALUES ($1, $2, $3, $4, 'active', 0)",
            &[&t, &uuid::Uuid::now_v7().to_string(), &format!("u{i}@acme.test"), &format!("[\"{role}\"]")],
        )
        .await;
    }
    let admin = app.tenant_user("tenant_admin", &t);
    let mut seen = vec![];
    let mut cursor = String::new();
    for _ in 0..5 {
        let (s, page) = status_json(
            app.get(
                &format!("/v1/tenants/{t}/users?role_filter=auditor&limit=2{cursor}"),
                &admin,
            )
            .await,
        )
        .await;
        assert_eq!(s, 200);
        let items = page["items"].as_array().unwrap();
        assert!(
            items.iter().all(|m| m["roles"] == json!(["auditor"])),
            "{page}"
        );
        seen.extend(
            items
                .iter()
                .map(|m| m["email"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            // Full pages until the last one: the filter runs before the page is cut.
            Some(c) => {
                assert_eq!(items.len(), 2);
                cursor = format!("&cursor={c}");
            }
            None => break,
        }
    }
    assert_eq!(seen, ["u1@acme.test", "u3@acme.test", "u4@acme.test"]);
    let (_, admins) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/users?role_filter=tenant_admin"),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(admins["items"].as_array().unwrap().len(), 1);
    // `_` and `%` are LIKE wildcards: unknown roles are refused before any query.
    for bad in ["tenant%25", "tenant_%25", "nope"] {
        let (s, p) = status_json(
            app.get(&format!("/v1/tenants/{t}/users?role_filter={bad}"), &admin)
                .await,
        )
        .await;
        assert_eq!(
            (s, p["field"].as_str()),
            (422, Some("role_filter")),
            "{bad}"
        );
    }
}
