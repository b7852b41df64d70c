//! SCIM 2.0: an identity provider provisions, assigns roles through groups, and
//! deprovisions, with the tenant's own token only; deprovisioning ends sessions and API keys
//! at once.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    an_idp_provisions_assigns_roles_and_deprovisions_with_immediate_effect,
    a_scim_token_reaches_its_own_tenant_only,
    scim_refuses_bad_input_in_its_own_error_shape,
);

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

async fn scim_token(app: &TestApp, tenant: &str) -> String {
    let (s, t) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/scim-token?confirm=true"),
            &app.tenant_user("tenant_admin", tenant),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert!(t["base_url"].as_str().unwrap().ends_with("/scim/v2"));
    t["token"].as_str().unwrap().to_owned()
}

/// A SCIM request as IdPs send it: `application/scim+json`. Status and body; checks the
/// media type and, for errors, SCIM's error shape.
async fn scim(
    app: &TestApp,
    m: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(m, format!("{}/scim/v2{path}", app.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    if status != 204 {
        assert_eq!(
            ct.as_deref(),
            Some("application/scim+json"),
            "{status} {body}"
        );
    }
    if status >= 400 {
        assert_eq!(
            body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
            "{body}"
        );
        assert_eq!(body["status"], status.to_string(), "{body}");
    }
    assert!(status < 500, "{status} {body}");
    (status, body)
}

async fn provision(app: &TestApp, token: &str, email: &str, ext: &str) -> Value {
    let (s, u) = scim(
        app,
        Method::POST,
        "/Users",
        token,
        Some(json!({
            "schemas": [USER], "userName": email, "externalId": ext, "active": true,
            "name": {"givenName": "Jane", "familyName": "Doe"},
            "emails": [{"value": email, "primary": true, "type": "work"}]
        })),
    )
    .await;
    assert_eq!(s, 201, "{u}");
    u
}

async fn an_idp_provisions_assigns_roles_and_deprovisions_with_immediate_effect(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Corp").await;
    let token = scim_token(&app, &a).await;
    let jane = provision(&app, &token, "Jane@Corp.test", "00u1").await;
    let id = jane["id"].as_str().unwrap().to_owned();
    assert_eq!(jane["userName"], "jane@corp.test");
    assert_eq!(jane["displayName"], "Jane Doe");
    assert_eq!(jane["active"], true);
    assert_eq!(
        jane["groups"],
        json!([{"value": "member", "display": "member", "$ref": "/scim/v2/Groups/member"}])
    );
    // IdPs look users up before creating them; a second create is a conflict.
    let (s, found) = scim(
        &app,
        Method::GET,
        "/Users?filter=userName%20eq%20%22jane%40corp.test%22",
        &token,
        None,
    )
    .await;
    assert_eq!((s, found["totalResults"].as_i64()), (200, Some(1)));
    assert_eq!(found["Resources"][0]["id"], id.as_str());
    let (s, _) = scim(
        &app,
        Method::GET,
        "/Users?filter=externalId%20eq%20%2200u1%22",
        &token,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, dup) = scim(
        &app,
        Method::POST,
        "/Users",
        &token,
        Some(json!({"schemas": [USER], "userName": "jane@corp.test"})),
    )
    .await;
    assert_eq!((s, dup["scimType"].as_str()), (409, Some("uniqueness")));
    // Group membership is role assignment.
    let (s, g) = scim(
        &app,
        Method::PATCH,
        "/Groups/tenant_admin",
        &token,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "Add", "path": "members", "value": [{"value": id}]}]})),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    assert!(g["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["value"] == id.as_str()));
    let admin = app.tenant_user("tenant_admin", &a);
    let (_, m) = status_json(
        app.get(&format!("/v1/tenants/{a}/users/{id}"), &admin)
            .await,
    )
    .await;
    assert_eq!(m["roles"], json!(["member", "tenant_admin"]));
    assert_eq!(m["external_id"], "00u1");
    // Jane signs in (an invitation gives her a local password) and makes an API key.
    let (_, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &admin,
            json!({"email": "jane@corp.test", "roles": ["member", "tenant_admin"]}),
        )
        .await,
    )
    .await;
    let (s, session) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": inv["token"], "password": "correct horse battery staple"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{session}");
    assert_eq!(
        session["user_id"],
        id.as_str(),
        "the provisioned person, linked by e-mail"
    );
    let jane_token = session["access_token"].as_str().unwrap().to_owned();
    let (s, key) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/api-keys"),
            &jane_token,
            json!({"name": "jane's app"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{key}");
    let api_key = key["key"].as_str().unwrap().to_owned();
    let models = |k: String| {
        let app = &app;
        async move {
            app.client
                .get(format!("{}/v1/models", app.base))
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(models(api_key.clone()).await, 200);
    // Deprovisioning: the IdP deactivates her. Everything she held stops at once.
    let (s, u) = scim(
        &app,
        Method::PATCH,
        &format!("/Users/{id}"),
        &token,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "Replace", "value": {"active": "False"}}]})),
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["active"], false);
    let (s, _) = status_json(app.get("/v1/auth/me", &jane_token).await).await;
    assert_eq!(s, 401);
    assert_eq!(models(api_key.clone()).await, 401);
    let (s, _) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"grant_type": "refresh_token", "refresh_token": session["refresh_token"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 401);
    // Reactivation restores the membership, not the revoked credentials.
    let (s, u) = scim(
        &app,
        Method::PATCH,
        &format!("/Users/{id}"),
        &token,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": true}]})),
    )
    .await;
    assert_eq!((s, &u["active"]), (200, &json!(true)));
    assert_eq!(models(api_key).await, 401);
    // Deletion; the audit trail names the SCIM token as the actor.
    let (s, _) = scim(&app, Method::DELETE, &format!("/Users/{id}"), &token, None).await;
    assert_eq!(s, 204);
    let (s, _) = scim(&app, Method::GET, &format!("/Users/{id}"), &token, None).await;
    assert_eq!(s, 404);
    let (_, events) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/audit?action=user.deprovisioned"),
            &admin,
        )
        .await,
    )
    .await;
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{events}");
    assert!(items.iter().all(
        |e| e["actor_kind"] == "system" && e["actor_id"].as_str().unwrap().starts_with("scim/")
    ));
    // The only admin cannot be taken out of tenant_admin by the IdP either.
    let (_, users) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &admin).await).await;
    let first = users["items"][0]["user_id"].as_str().unwrap().to_owned();
    let (s, p) = scim(
        &app,
        Method::PATCH,
        "/Groups/tenant_admin",
        &token,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": format!("members[value eq \"{first}\"]")}]})),
    )
    .await;
    assert_eq!(
        (s, p["scimType"].as_str()),
        (409, Some("mutability")),
        "{p}"
    );
}

async fn a_scim_token_reaches_its_own_tenant_only(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Alpha").await;
    let tb = app.active_tenant("Beta").await;
    let ta = scim_token(&app, &a).await;
    let tbk = scim_token(&app, &tb).await;
    let jane = provision(&app, &ta, "jane@alpha.test", "a1").await;
    let id = jane["id"].as_str().unwrap();
    for (m, path, body) in [
        (Method::GET, format!("/Users/{id}"), None),
        (
            Method::PUT,
            format!("/Users/{id}"),
            Some(json!({"schemas": [USER], "userName": "jane@alpha.test", "active": false})),
        ),
        (
            Method::PATCH,
            format!("/Users/{id}"),
            Some(
                json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": false}]}),
            ),
        ),
        (Method::DELETE, format!("/Users/{id}"), None),
    ] {
        let (s, _) = scim(&app, m.clone(), &path, &tbk, body).await;
        assert_eq!(s, 404, "{m} {path} with tenant B's token");
    }
    // B's token cannot put A's user into B's groups either.
    let (s, _) = scim(
        &app,
        Method::PATCH,
        "/Groups/tenant_admin",
        &tbk,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]})),
    )
    .await;
    assert_eq!(s, 400);
    let (_, list) = scim(&app, Method::GET, "/Users", &tbk, None).await;
    assert!(!list.to_string().contains("jane@alpha.test"));
    let (_, still) = scim(&app, Method::GET, &format!("/Users/{id}"), &ta, None).await;
    assert_eq!(still["active"], true);
    // The same address provisioned in B is the same person, a separate membership.
    let in_b = provision(&app, &tbk, "jane@alpha.test", "b1").await;
    assert_eq!(in_b["id"], jane["id"]);
    // A rotated token stops at once; no token, or an admin's JWT, is not a SCIM token.
    let rotated = scim_token(&app, &a).await;
    let (s, _) = scim(&app, Method::GET, "/Users", &ta, None).await;
    assert_eq!(s, 401);
    let (s, _) = scim(&app, Method::GET, "/Users", &rotated, None).await;
    assert_eq!(s, 200);
    let (s, _) = scim(
        &app,
        Method::GET,
        "/Users",
        &app.tenant_user("tenant_admin", &a),
        None,
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{a}/scim-token?confirm=true"),
            Some(&app.tenant_user("tenant_admin", &a)),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = scim(&app, Method::GET, "/ServiceProviderConfig", &rotated, None).await;
    assert_eq!(s, 401);
    // Only a tenant admin makes SCIM tokens, and only for their tenant.
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/scim-token?confirm=true"),
            &app.tenant_user("auditor", &a),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/scim-token?confirm=true"),
            &app.tenant_user("tenant_admin", &tb),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
}

async fn scim_refuses_bad_input_in_its_own_error_shape(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Strict").await;
    let token = scim_token(&app, &a).await;
    let jane = provision(&app, &token, "jane@strict.test", "s1").await;
    let id = jane["id"].as_str().unwrap();
    let (s, cfg) = scim(&app, Method::GET, "/ServiceProviderConfig", &token, None).await;
    assert_eq!((s, &cfg["patch"]["supported"]), (200, &json!(true)));
    for (m, path, body) in [
        (
            Method::POST,
            "/Users".to_owned(),
            json!({"schemas": [USER], "userName": "not-an-email"}),
        ),
        (
            Method::POST,
            "/Users".to_owned(),
            json!({"schemas": [USER], "userName": "x@strict.test", "active": "maybe"}),
        ),
        (
            Method::PATCH,
            format!("/Users/{id}"),
            json!({"Operations": [{"op": "replace", "path": "active", "value": false}]}),
        ),
        (
            Method::PATCH,
            format!("/Users/{id}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "move", "path": "active"}]}),
        ),
        (
            Method::PATCH,
            format!("/Users/{id}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": "other@strict.test"}]}),
        ),
        (
            Method::PUT,
            format!("/Users/{id}"),
            json!({"schemas": [USER], "userName": "other@strict.test"}),
        ),
        (
            Method::POST,
            "/Groups".to_owned(),
            json!({"displayName": "no-such-role"}),
        ),
    ] {
        let (s, p) = scim(&app, m.clone(), &path, &token, Some(body.clone())).await;
        assert_eq!(
            (s, p["scimType"].as_str()),
            (400, Some("invalidValue")),
            "{m} {path} {body} -> {p}"
        );
    }
    let (s, _) = scim(
        &app,
        Method::GET,
        "/Users?filter=userName%20co%20%22j%22",
        &token,
        None,
    )
    .await;
    assert_eq!(s, 400);
    // Not JSON at all.
    let res = app
        .client
        .post(format!("{}/scim/v2/Users", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/scim+json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Nothing changed.
    let (_, list) = scim(&app, Method::GET, "/Users", &token, None).await;
    assert_eq!(list["totalResults"], 2, "the first admin and jane: {list}");
    let (_, j) = scim(&app, Method::GET, &format!("/Users/{id}"), &token, None).await;
    assert_eq!(j["userName"], "jane@strict.test");
    // Paging: startIndex is 1-based.
    let (_, page) = scim(
        &app,
        Method::GET,
        "/Users?startIndex=2&count=1",
        &token,
        None,
    )
    .await;
    assert_eq!(
        (
            page["startIndex"].as_i64(),
            page["itemsPerPage"].as_i64(),
            page["totalResults"].as_i64()
        ),
        (Some(2), Some(1), Some(2))
    );
}
