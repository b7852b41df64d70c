//! Plans over HTTP.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use serde_json::json;

both_backends!(
    plans_create_get_list_paginate,
    plan_input_is_validated_and_duplicates_refused,
    plan_creation_is_idempotent_with_a_key,
);

fn plan(id: &str) -> serde_json::Value {
    json!({"id": id, "name": format!("Plan {id}"), "features": ["sso"],
           "limits": {"monthly_messages": 10, "monthly_tokens": 1000, "requests_per_minute": 5, "max_concurrent_runs": 2}})
}

async fn plans_create_get_list_paginate(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    for id in ["p-a", "p-b", "p-c", "p-d"] {
        let (s, body) = status_json(app.post("/v1/admin/plans", &admin, plan(id)).await).await;
        assert_eq!(s, 201);
        assert_eq!(body["limits"]["monthly_messages"], 10);
    }
    let (s, p) = status_json(app.get("/v1/admin/plans/p-c", &admin).await).await;
    assert_eq!((s, p["name"].as_str()), (200, Some("Plan p-c")));
    let (s, _) = status_json(app.get("/v1/admin/plans/nope", &admin).await).await;
    assert_eq!(s, 404);
    let (s, _) = status_json(app.get("/v1/admin/plans/NOT%20VALID", &admin).await).await;
    assert_eq!(s, 404);

    // free, p-a, p-b, p-c, p-d, pro in pages of 4.
    let mut ids = vec![];
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let (s, page) = status_json(
            app.get(&format!("/v1/admin/plans?limit=4{q}"), &admin)
                .await,
        )
        .await;
        assert_eq!(s, 200);
        pages += 1;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(ids, ["free", "p-a", "p-b", "p-c", "p-d", "pro"]);
    let (s, p) = status_json(app.get("/v1/admin/plans?cursor=zz", &admin).await).await;
    assert_eq!((s, p["code"].as_str()), (422, Some("validation_failed")));
    let (s, _) = status_json(app.get("/v1/admin/plans?limit=0", &admin).await).await;
    assert_eq!(s, 422);

    // Plan creation is audited on the platform chain.
    let platform = agentplane_core::authz::PlatformCtx::for_system("test");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, "platform", 0, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    assert!(events
        .iter()
        .all(|(e, _)| e.action == "plan.create" && e.actor_id == "operator"));
}

async fn plan_input_is_validated_and_duplicates_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let (s, p) = status_json(app.post("/v1/admin/plans", &admin, plan("free")).await).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("plan_exists")));
    let mut bad_limits = plan("neg");
    bad_limits["limits"]["monthly_tokens"] = json!(-1);
    let mut bad_feature = plan("feat");
    bad_feature["features"] = json!(["has space"]);
    let mut extra = plan("extra");
    extra["surprise"] = json!(1);
    let mut missing = plan("missing");
    missing["limits"]
        .as_object_mut()
        .unwrap()
        .remove("monthly_tokens");
    for body in [
        plan("Bad Id"),
        plan(""),
        bad_limits,
        bad_feature,
        extra,
        missing,
        json!([]),
        json!({"id": 5}),
    ] {
        let (s, p) = status_json(app.post("/v1/admin/plans", &admin, body.clone()).await).await;
        assert_eq!(s, 422, "{body} -> {p}");
    }
    let tadmin = app.token(json!({"roles": ["tenant_admin"], "tenant_ids": ["*"]}));
    let (s, _) = status_json(app.post("/v1/admin/plans", &tadmin, plan("sneaky")).await).await;
    assert_eq!(s, 403);
    assert_eq!(
        app.get("/v1/admin/plans", &tadmin).await.status(),
        200,
        "tenant admins may read plans"
    );
    let (_, list) = status_json(app.get("/v1/admin/plans", &admin).await).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        2,
        "nothing was created"
    );
}

async fn plan_creation_is_idempotent_with_a_key(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let send = |body: serde_json::Value| {
        app.client
            .post(format!("{}/v1/admin/plans", app.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "plan-1")
            .json(&body)
            .send()
    };
    let first = send(plan("gold")).await.unwrap();
    assert_eq!(first.headers()["location"], "/v1/admin/plans/gold");
    let (s1, b1) = status_json(first).await;
    let again = send(plan("gold")).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let (s2, b2) = status_json(again).await;
    assert_eq!(
        (s1, s2),
        (201, 201),
        "a retried creation answers like the first, not 409"
    );
    assert_eq!(b1, b2);
    let (s, p) = status_json(send(plan("silver")).await.unwrap()).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Without a key, a repeat is a conflict.
    let (s, _) = status_json(app.post("/v1/admin/plans", &admin, plan("gold")).await).await;
    assert_eq!(s, 409);
    let platform = agentplane_core::authz::PlatformCtx::for_system("test");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, "platform", 0, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "created and audited once");
}
