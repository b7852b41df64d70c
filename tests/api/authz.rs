//! Attacks on authentication and authorization: cross-tenant probes on every tenant route,
//! every role one step below every action's permission, broken and forged tokens, and the
//! claim forms the seed allows. Routes and permissions are generated from the action
//! registry and the permission matrix, so a new action is attacked without a new test.

use crate::both_backends;
use crate::helpers::{random_secret, status_json, Backend, TestApp};
use agentplane_core::action::{ActionSpec, Scope, REGISTRY};
use agentplane_core::authz::{role_grants, PlatformCtx, Role};
use agentplane_core::tenant::Tenant;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;

both_backends!(
    cross_tenant_probes_on_every_tenant_route_look_like_a_missing_tenant,
    every_role_below_an_actions_permission_is_forbidden_and_every_role_with_it_passes,
    broken_and_forged_tokens_are_unauthenticated,
    claim_forms_of_the_seed_are_understood,
    wildcard_tenant_access_and_platform_admin_reach,
    tenant_admin_cannot_use_platform_actions,
);

// --- helpers ---------------------------------------------------------------------------

fn method(m: agentplane_core::action::Method) -> Method {
    Method::from_bytes(m.as_str().as_bytes()).unwrap()
}

/// The action's path for `tenant`, with `?confirm=true` when the action requires it, so
/// that a refusal is never only a missing confirmation.
fn path_for(a: &ActionSpec, tenant: &str) -> String {
    let mut p = a
        .path
        .replace("{tenant_id}", tenant)
        .replace("{plan_id}", "free")
        .replace("{setting_key}", "locale")
        .replace("{provider_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{agent_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{key_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{job_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{user_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{invitation_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{role_name}", "no-such-role")
        .replace("{delegation_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{connection_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{receipt_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{export_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{backup_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{shared_id}", &uuid::Uuid::now_v7().to_string());
    if a.confirmation_required {
        p.push_str("?confirm=true");
    }
    p
}

/// A plausible body: one the action accepts when the caller may call it.
fn body_for(a: &ActionSpec, n: usize) -> Option<Value> {
    match a.intent {
        "admin.change_tenant_plan" => Some(json!({"plan_id": "pro"})),
        "admin.move_tenant_region" => Some(json!({"region": format!("region-{n}")})),
        "admin.export_tenant_data" => Some(json!({"export_type": "users_only"})),
        "admin.restore_backup" => Some(json!({
            "slug": format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        })),
        "admin.suspend_tenant" => Some(json!({"reason": "authz test"})),
        "admin.update_tenant_settings" => Some(json!({"setting_value": format!("l{n}")})),
        "admin.update_branding" => Some(json!({"product_name": format!("Brand {n}")})),
        "admin.create_provider" => Some(json!({
            "name": format!("p{n}-{}", uuid::Uuid::new_v4().simple()), "kind": "openai",
            "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-authz"
        })),
        "admin.update_provider" => Some(json!({"models": ["m1"]})),
        "admin.update_agent" => Some(json!({"model": format!("model-{n}")})),
        "admin.create_api_key" => Some(json!({"name": format!("key {n}")})),
        "admin.update_user" => Some(json!({"roles": ["auditor"]})),
        "admin.create_role" => Some(json!({
            "name": format!("r{}", uuid::Uuid::new_v4().simple()), "permissions": ["agents.read"]
        })),
        "admin.update_role" => Some(json!({"description": format!("changed {n}")})),
        "admin.create_sso_connection" => Some(json!({
            "kind": "oidc", "name": format!("idp {}", uuid::Uuid::new_v4().simple()),
            "config": {"issuer": "http://127.0.0.1:9", "client_id": "agentplane"}, "secret": "s3cret"
        })),
        "admin.update_sso_connection" => Some(json!({"enabled": false})),
        "admin.create_shared_provider" => Some(json!({
            "name": format!("shared-{}", uuid::Uuid::new_v4().simple()), "kind": "openai",
            "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-shared", "plans": ["free"]
        })),
        "admin.update_shared_provider" => Some(json!({"plans": ["free"]})),
        "admin.invite_user" => Some(json!({
            "email": format!("i{}@people.test", uuid::Uuid::new_v4().simple())
        })),
        "admin.set_webhook" => Some(json!({"url": format!("http://127.0.0.1:9/hook{n}")})),
        "admin.rollback_tenant_setting" => Some(json!({"version": 1})),
        "admin.create_plan" => Some(json!({
            "id": format!("authz-{n}"), "name": "Authz plan",
            "limits": {"monthly_messages": 1, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}
        })),
        "admin.create_tenant" => Some(json!({
            "name": format!("Created {n}"), "admin_email": format!("a{n}@created.test")
        })),
        _ => None,
    }
}

/// The raw answer: status, content type and body bytes.
#[derive(Debug, PartialEq, Eq)]
struct Raw {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn raw(app: &TestApp, a: &ActionSpec, tenant: &str, token: &str) -> Raw {
    let res = app
        .call(
            method(a.method),
            &path_for(a, tenant),
            Some(token),
            body_for(a, 0),
        )
        .await;
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Raw {
        status,
        content_type,
        body: res.bytes().await.unwrap().to_vec(),
    }
}

/// What must not change when a probe is refused: the tenant row and the length of its
/// audit chain.
async fn snapshot(app: &TestApp, tenant: &str) -> (Tenant, usize) {
    let store = app.control.store();
    let t = store
        .get_tenant(tenant.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    (t, chain(app, tenant).await.len())
}

async fn chain(app: &TestApp, tenant: &str) -> Vec<agentplane_core::audit::AuditEvent> {
    app.control
        .store()
        .audit_chain_page(&PlatformCtx::for_system("t"), tenant, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn identity(app: &TestApp, claims: Value) -> Value {
    let (s, p) = status_json(
        app.get("/v1/admin/debug/identity", &app.token(claims.clone()))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{claims} -> {p}");
    p
}

fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

fn strs(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// --- 1. cross-tenant probes ------------------------------------------------------------

async fn cross_tenant_probes_on_every_tenant_route_look_like_a_missing_tenant(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Alpha").await;
    let tb = app.active_tenant("Beta").await;
    let tokens = [
        app.tenant_user("tenant_admin", &tb),
        app.tenant_user("auditor", &tb),
        app.tenant_user("member", &tb),
        app.token(json!({"sub": "list-of-b", "roles": ["tenant_admin"], "tenant_ids": [tb]})),
    ];
    // The tokens are good: each reaches its own tenant.
    for t in &tokens {
        let (s, _) = status_json(app.get(&format!("/v1/tenants/{tb}"), t).await).await;
        assert_eq!(s, 200);
    }
    let before = snapshot(&app, &a).await;
    let b_before = snapshot(&app, &tb).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let operator = app.platform_admin();
    let tenant_actions: Vec<&ActionSpec> = REGISTRY
        .iter()
        .copied()
        .filter(|a| a.scope == Scope::Tenant)
        .collect();
    assert!(
        tenant_actions.len() >= 8,
        "the registry lost tenant actions"
    );
    for action in &tenant_actions {
        // The platform operator's answer for a tenant that does not exist.
        let absent = raw(&app, action, &missing, &operator).await;
        assert_eq!(absent.status, 404, "{}", action.intent);
        for (i, t) in tokens.iter().enumerate() {
            let probe = raw(&app, action, &a, t).await;
            let control = raw(&app, action, &missing, t).await;
            assert_eq!(probe.status, 404, "{} with token {i}", action.intent);
            assert_eq!(probe.content_type, "application/problem+json");
            let p: Value = serde_json::from_slice(&probe.body).unwrap();
            assert_eq!(p["code"], "not_found", "{}", action.intent);
            assert_eq!(
                probe, control,
                "{} with token {i}: another tenant's answer differs from a missing one's",
                action.intent
            );
            assert_eq!(
                probe.body, absent.body,
                "{} with token {i}: differs from the answer for a missing tenant",
                action.intent
            );
        }
    }
    assert_eq!(
        snapshot(&app, &a).await,
        before,
        "probes changed the tenant or wrote into its audit trail"
    );
    let (t, _) = snapshot(&app, &a).await;
    assert_eq!(
        (t.status.as_str(), t.plan_id.to_string().as_str()),
        ("active", "free")
    );
    assert_eq!(
        snapshot(&app, &tb).await.1,
        b_before.1,
        "probes are only logged, not written into the prober's trail either"
    );
}

// --- 2. the permission matrix ----------------------------------------------------------

/// A small valid PNG (header only: the server checks the signature, not the pixels).
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

/// Sends the action as a caller who may call it would: JSON bodies, or the raw image for a
/// logo upload.
async fn send(
    app: &TestApp,
    action: &ActionSpec,
    tenant: &str,
    token: &str,
    n: usize,
) -> reqwest::Response {
    if action.intent == "admin.create_agent" || action.path.contains("{agent_id}") {
        // A fresh provider (and agent) per call, made by the operator.
        let op = app.platform_admin();
        let create_p = REGISTRY
            .iter()
            .find(|a| a.intent == "admin.create_provider")
            .unwrap();
        let (_, prov) = status_json(
            app.call(
                Method::POST,
                &path_for(create_p, tenant),
                Some(&op),
                body_for(create_p, n),
            )
            .await,
        )
        .await;
        let agent_body = json!({"name": format!("a{n}-{}", uuid::Uuid::new_v4().simple()), "provider_id": prov["id"], "model": "m"});
        let agents_path = format!("/v1/tenants/{tenant}/agents");
        if action.intent == "admin.create_agent" {
            return app
                .call(Method::POST, &agents_path, Some(token), Some(agent_body))
                .await;
        }
        let (s, agent) = status_json(
            app.call(Method::POST, &agents_path, Some(&op), Some(agent_body))
                .await,
        )
        .await;
        assert_eq!(s, 201, "preparing an agent: {agent}");
        let path = path_for(action, tenant);
        let placeholder = path
            .split('/')
            .nth(5)
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let path = path.replace(&placeholder, agent["id"].as_str().unwrap());
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if action.path.contains("{key_id}") {
        let (s, k) = status_json(
            app.post(
                &format!("/v1/tenants/{tenant}/api-keys"),
                &app.platform_admin(),
                json!({"name": "to revoke"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "preparing a key: {k}");
        let path = path_for(action, tenant);
        let placeholder = path
            .split('/')
            .nth(5)
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let path = path.replace(&placeholder, k["api_key"]["id"].as_str().unwrap());
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if action.path.contains("{provider_id}") {
        // A fresh provider per call: a delete by one allowed role must not 404 the next.
        let create = REGISTRY
            .iter()
            .find(|a| a.intent == "admin.create_provider")
            .unwrap();
        let (s, p) = status_json(
            app.call(
                Method::POST,
                &path_for(create, tenant),
                Some(&app.platform_admin()),
                body_for(create, n),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "preparing a provider: {p}");
        let path = path_for(action, tenant);
        let placeholder = path
            .split('/')
            .nth(5)
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let path = path.replace(&placeholder, p["id"].as_str().unwrap());
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if action.path.contains("{shared_id}") {
        // A shared provider granted to the tenant's plan, made by the operator.
        let create = REGISTRY
            .iter()
            .find(|a| a.intent == "admin.create_shared_provider")
            .unwrap();
        let (s, sp) = status_json(
            app.call(
                Method::POST,
                create.path,
                Some(&app.platform_admin()),
                body_for(create, n),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "preparing a shared provider: {sp}");
        let path = action
            .path
            .replace("{tenant_id}", tenant)
            .replace("{shared_id}", sp["id"].as_str().unwrap());
        let body = body_for(action, n).or(Some(json!({})));
        return app
            .call(method(action.method), &path, Some(token), body)
            .await;
    }
    if action.path.contains("{export_id}") || action.intent == "admin.import_tenant" {
        // A ready export made by the operator (and, to import, its bytes).
        let op = app.platform_admin();
        let (s, rec) = status_json(
            app.post(
                &format!("/v1/tenants/{tenant}/exports?confirm=true"),
                &op,
                json!({"export_type": "full"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "preparing an export: {rec}");
        app.run_jobs().await;
        let id = rec["id"].as_str().unwrap();
        if action.intent == "admin.import_tenant" {
            let bytes = crate::exports::link_bytes(app, tenant, id).await;
            return app
                .client
                .post(format!(
                    "{}/v1/admin/tenants/import?confirm=true&slug=imp-{}",
                    app.base,
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                ))
                .bearer_auth(token)
                .header("content-type", "application/zip")
                .body(bytes)
                .send()
                .await
                .unwrap();
        }
        let path = action
            .path
            .replace("{tenant_id}", tenant)
            .replace("{export_id}", id);
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if action.path.contains("{backup_id}") {
        // A ready backup made by the operator.
        let op = app.platform_admin();
        let (s, rec) = status_json(
            app.post(
                &format!("/v1/tenants/{tenant}/backups?confirm=true"),
                &op,
                json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "preparing a backup: {rec}");
        app.run_jobs().await;
        let mut path = action
            .path
            .replace("{tenant_id}", tenant)
            .replace("{backup_id}", rec["id"].as_str().unwrap());
        if action.confirmation_required {
            path.push_str("?confirm=true");
        }
        let body = body_for(action, n).or(Some(json!({})));
        return app
            .call(method(action.method), &path, Some(token), body)
            .await;
    }
    if action.path.contains("{receipt_id}") {
        // A person invited, accepted and erased by the operator: the receipt to read.
        let op = app.platform_admin();
        let email = format!("e{}@people.test", uuid::Uuid::new_v4().simple());
        let (_, inv) = status_json(
            app.post(
                &format!("/v1/tenants/{tenant}/invitations"),
                &op,
                json!({"email": email}),
            )
            .await,
        )
        .await;
        let (_, t) = status_json(
            app.call(
                Method::POST,
                "/v1/auth/invitations/accept",
                None,
                Some(json!({"token": inv["token"]})),
            )
            .await,
        )
        .await;
        let (s, job) = status_json(
            app.post(
                &format!(
                    "/v1/tenants/{tenant}/users/{}/erase?confirm=true",
                    t["user_id"].as_str().unwrap()
                ),
                &op,
                json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "preparing an erasure: {job}");
        app.run_jobs().await;
        let path = format!(
            "/v1/tenants/{tenant}/erasures/{}",
            job["id"].as_str().unwrap()
        );
        return app
            .call(method(action.method), &path, Some(token), None)
            .await;
    }
    if action.path.contains("{connection_id}") {
        // A fresh connection per call, made by the operator.
        let create = REGISTRY
            .iter()
            .find(|a| a.intent == "admin.create_sso_connection")
            .unwrap();
        let (s, c) = status_json(
            app.call(
                Method::POST,
                &path_for(create, tenant),
                Some(&app.platform_admin()),
                body_for(create, n),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "preparing an SSO connection: {c}");
        let mut path = action
            .path
            .replace("{tenant_id}", tenant)
            .replace("{connection_id}", c["id"].as_str().unwrap());
        if action.confirmation_required {
            path.push_str("?confirm=true");
        }
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if action.intent == "admin.delete_scim_token" {
        // A token to revoke, made by the operator.
        let (s, t) = status_json(
            app.post(
                &format!("/v1/tenants/{tenant}/scim-token?confirm=true"),
                &app.platform_admin(),
                json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201, "preparing a SCIM token: {t}");
    }
    if action.intent == "admin.create_delegation" || action.path.contains("{delegation_id}") {
        // A delegation for the tenant's first admin, issued by the operator.
        let op = app.platform_admin();
        let (_, users) =
            status_json(app.get(&format!("/v1/tenants/{tenant}/users"), &op).await).await;
        let body = json!({"user_id": users["items"][0]["user_id"], "agent": format!("agent {n}")});
        let path = format!("/v1/tenants/{tenant}/delegations");
        if action.intent == "admin.create_delegation" {
            return app.post(&path, token, body).await;
        }
        let (s, d) = status_json(app.post(&path, &op, body).await).await;
        assert_eq!(s, 201, "preparing a delegation: {d}");
        let path = format!("{path}/{}", d["id"].as_str().unwrap());
        return app
            .call(method(action.method), &path, Some(token), None)
            .await;
    }
    if ["{user_id}", "{role_name}", "{invitation_id}"]
        .iter()
        .any(|p| action.path.contains(p))
    {
        // A fresh user (invited and accepted), custom role or invitation per call.
        let op = app.platform_admin();
        let (placeholder, id) = if action.path.contains("{role_name}") {
            let create = REGISTRY
                .iter()
                .find(|a| a.intent == "admin.create_role")
                .unwrap();
            let (s, r) = status_json(
                app.call(
                    Method::POST,
                    &path_for(create, tenant),
                    Some(&op),
                    body_for(create, n),
                )
                .await,
            )
            .await;
            assert_eq!(s, 201, "preparing a role: {r}");
            ("{role_name}", r["name"].as_str().unwrap().to_owned())
        } else {
            let email = format!("u{}@people.test", uuid::Uuid::new_v4().simple());
            let (s, inv) = status_json(
                app.post(
                    &format!("/v1/tenants/{tenant}/invitations"),
                    &op,
                    json!({"email": email}),
                )
                .await,
            )
            .await;
            assert_eq!(s, 201, "preparing an invitation: {inv}");
            if action.path.contains("{invitation_id}") {
                ("{invitation_id}", inv["id"].as_str().unwrap().to_owned())
            } else {
                let (s, t) = status_json(
                    app.call(
                        Method::POST,
                        "/v1/auth/invitations/accept",
                        None,
                        Some(json!({"token": inv["token"]})),
                    )
                    .await,
                )
                .await;
                assert_eq!(s, 200, "accepting an invitation: {t}");
                ("{user_id}", t["user_id"].as_str().unwrap().to_owned())
            }
        };
        let mut path = action
            .path
            .replace("{tenant_id}", tenant)
            .replace(placeholder, &id);
        if action.confirmation_required {
            path.push_str("?confirm=true");
        }
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if action.path.contains("{job_id}") {
        // A fresh queued job (a key rotation's re-seal), so that a cancel can succeed.
        let (s, job) = status_json(
            app.post(
                &format!("/v1/tenants/{tenant}/keys/rotate?confirm=true"),
                &app.platform_admin(),
                json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "preparing a job: {job}");
        let path = action
            .path
            .replace("{tenant_id}", tenant)
            .replace("{job_id}", job["id"].as_str().unwrap());
        return app
            .call(
                method(action.method),
                &path,
                Some(token),
                body_for(action, n),
            )
            .await;
    }
    if matches!(action.intent, "admin.get_webhook" | "admin.delete_webhook") {
        // A webhook to read or delete, set by the operator.
        let (s, w) = status_json(
            app.call(
                Method::PUT,
                &format!("/v1/tenants/{tenant}/webhook"),
                Some(&app.platform_admin()),
                Some(json!({"url": "http://127.0.0.1:9/hook"})),
            )
            .await,
        )
        .await;
        assert_eq!(s, 200, "preparing a webhook: {w}");
    }
    if action.intent == "admin.upload_logo" {
        return app
            .client
            .put(format!("{}{}", app.base, path_for(action, tenant)))
            .bearer_auth(token)
            .header("content-type", "image/png")
            .body(PNG.to_vec())
            .send()
            .await
            .unwrap();
    }
    app.call(
        method(action.method),
        &path_for(action, tenant),
        Some(token),
        body_for(action, n),
    )
    .await
}

/// Puts the tenant into the state in which the action can succeed for an operator.
async fn prepare(app: &TestApp, action: &ActionSpec, tenant: &str) {
    let operator = app.platform_admin();
    if action.intent == "admin.get_logo" {
        let upload = REGISTRY
            .iter()
            .find(|a| a.intent == "admin.upload_logo")
            .unwrap();
        assert_eq!(
            send(app, upload, tenant, &operator, 0).await.status(),
            200,
            "preparing a logo"
        );
        return;
    }
    let path = match action.intent {
        "admin.reactivate_tenant" => format!("/v1/admin/tenants/{tenant}/suspend?confirm=true"),
        "admin.purge_tenant" => format!("/v1/admin/tenants/{tenant}?confirm=true"),
        _ => return,
    };
    let m = if action.intent == "admin.purge_tenant" {
        Method::DELETE
    } else {
        Method::POST
    };
    let (s, _) = status_json(app.call(m, &path, Some(&operator), None).await).await;
    assert_eq!(s, 200, "preparing {}", action.intent);
}

async fn every_role_below_an_actions_permission_is_forbidden_and_every_role_with_it_passes(
    b: Backend,
) {
    let app = TestApp::spawn(b).await;
    let mut denied_checked = 0;
    let mut allowed_checked = 0;
    for (n, action) in REGISTRY.iter().enumerate() {
        let Some(perm) = action.permission else {
            continue;
        };
        // A fresh tenant per action: what one action does cannot change another's answer.
        let a = app.active_tenant(&format!("Perm {n}")).await;
        prepare(&app, action, &a).await;
        for role in Role::ALL.into_iter().filter(|r| !role_grants(*r, perm)) {
            let token = app.tenant_user(role.as_str(), &a);
            let trail_before = chain(&app, &a).await.len();
            let (s, p) = status_json(
                app.call(
                    method(action.method),
                    &path_for(action, &a),
                    Some(&token),
                    body_for(action, n),
                )
                .await,
            )
            .await;
            let what = format!("{} as {}", action.intent, role.as_str());
            assert_eq!(
                (s, p["code"].as_str()),
                (403, Some("forbidden")),
                "{what}: {p}"
            );
            assert_eq!(p["required_permission"], perm.as_str(), "{what}");
            let trail = chain(&app, &a).await;
            if action.scope == Scope::Tenant {
                assert_eq!(trail.len(), trail_before + 1, "{what}: one denial recorded");
                let ev = trail.last().unwrap();
                assert_eq!(ev.action, "access.denied", "{what}");
                assert_eq!(ev.outcome, "denied", "{what}");
                assert_eq!(ev.target_id.as_deref(), Some(action.intent), "{what}");
                assert_eq!(ev.data["required_permission"], perm.as_str(), "{what}");
                assert_eq!(ev.actor_id, format!("{}-of-{a}", role.as_str()), "{what}");
            } else {
                assert_eq!(trail.len(), trail_before, "{what}");
            }
            denied_checked += 1;
        }
        for role in Role::ALL.into_iter().filter(|r| role_grants(*r, perm)) {
            let token = app.tenant_user(role.as_str(), &a);
            let (s, p) = status_json(send(&app, action, &a, &token, n).await).await;
            assert!(
                (200..300).contains(&s),
                "{} as {}: {s} {p}",
                action.intent,
                role.as_str()
            );
            allowed_checked += 1;
        }
    }
    // Every role against every action that declares a permission.
    let with_permission = REGISTRY.iter().filter(|x| x.permission.is_some()).count();
    assert!(with_permission >= 16, "the registry lost actions");
    assert_eq!(
        denied_checked + allowed_checked,
        Role::ALL.len() * with_permission
    );
    assert!(denied_checked >= 30, "{denied_checked}");
}

// --- 3. tokens -------------------------------------------------------------------------

async fn broken_and_forged_tokens_are_unauthenticated(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Tokens").await;
    let now = jsonwebtoken::get_current_timestamp();
    let secret = app.secret.as_bytes();
    let operator = json!({"sub": "operator", "roles": ["platform_admin"], "exp": now + 600});
    let good = app.token(operator.clone());
    let with = |extra: Value| {
        let mut c = operator.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let without = |key: &str| {
        let mut c = operator.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let mint = |c: &Value| agentplane_server::auth::mint_hs256(secret, c).unwrap();

    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&operator)
    );
    // `none` with the signature of a real token attached.
    let good_sig = good.rsplit('.').next().unwrap().to_owned();
    let alg_none_signed = format!(
        "{}.{}.{good_sig}",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&operator)
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &operator,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    // A member's token whose payload was edited after signing to claim platform_admin.
    let member = app.token(json!({"sub": "m", "roles": ["member"], "tenant_id": a}));
    let parts: Vec<&str> = member.split('.').collect();
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": "m", "roles": ["platform_admin"], "exp": now + 600})),
        parts[2]
    );
    let stripped = format!("{}.{}.", parts[0], parts[1]);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("Bearer without a token", Some("Bearer ".into())),
        ("Bearer alone", Some("Bearer".into())),
        ("Basic scheme", Some("Basic dXNlcjpwYXNz".into())),
        ("token without a scheme", Some(good.clone())),
        ("garbage", Some("Bearer garbage".into())),
        ("three garbage parts", Some("Bearer a.b.c".into())),
        ("empty parts", Some("Bearer ..".into())),
        ("two tokens", Some(format!("Bearer {good} {good}"))),
        (
            "expired beyond the leeway",
            Some(format!("Bearer {}", mint(&with(json!({"exp": now - 120}))))),
        ),
        (
            "nbf in the future",
            Some(format!(
                "Bearer {}",
                mint(&with(json!({"nbf": now + 3600})))
            )),
        ),
        ("no exp", Some(format!("Bearer {}", mint(&without("exp"))))),
        ("no sub", Some(format!("Bearer {}", mint(&without("sub"))))),
        (
            "empty sub",
            Some(format!("Bearer {}", mint(&with(json!({"sub": " "}))))),
        ),
        (
            "another secret",
            Some(format!(
                "Bearer {}",
                agentplane_server::auth::mint_hs256(random_secret().as_bytes(), &operator).unwrap()
            )),
        ),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        (
            "alg none with a signature",
            Some(format!("Bearer {alg_none_signed}")),
        ),
        (
            "HS512 when HS256 is pinned",
            Some(format!("Bearer {hs512}")),
        ),
        (
            "payload edited after signing",
            Some(format!("Bearer {edited}")),
        ),
        ("signature stripped", Some(format!("Bearer {stripped}"))),
    ];
    let routes = [format!("/v1/tenants/{a}"), "/v1/admin/tenants".to_owned()];
    for route in &routes {
        // The control: the good token passes, so a 401 below is the defect's doing.
        let (s, _) = status_json(app.get(route, &good).await).await;
        assert_eq!(s, 200, "{route}");
        for (what, header) in &cases {
            let mut req = app.client.get(format!("{}{route}", app.base));
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let res = req.send().await.unwrap();
            let www = res
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (s, p) = status_json(res).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (401, Some("unauthenticated")),
                "{route}: {what}: {p}"
            );
            assert_eq!(www.as_deref(), Some("Bearer"), "{route}: {what}");
        }
    }
    // Within the leeway an expiry is tolerated (clock skew), so the expired case above
    // failed for being expired, not for some other reason.
    let (s, _) = status_json(
        app.get(&routes[0], &mint(&with(json!({"exp": now - 5}))))
            .await,
    )
    .await;
    assert_eq!(s, 200, "a token 5 s past exp is within the 30 s leeway");
}

// --- 4. claim forms --------------------------------------------------------------------

async fn claim_forms_of_the_seed_are_understood(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = uuid::Uuid::now_v7().to_string();
    let tb = uuid::Uuid::now_v7().to_string();

    let p = identity(
        &app,
        json!({"sub": "alice", "roles": ["tenant_admin", "auditor"]}),
    )
    .await;
    assert_eq!(p["subject"], "alice");
    assert_eq!(set(&p["roles"]), strs(&["tenant_admin", "auditor"]));
    assert_eq!(set(&p["unknown_roles"]), strs(&[]));

    let p = identity(&app, json!({"role": "auditor"})).await;
    assert_eq!(set(&p["roles"]), strs(&["auditor"]));
    let p = identity(&app, json!({"role": ["member"], "roles": ["auditor"]})).await;
    assert_eq!(set(&p["roles"]), strs(&["auditor", "member"]));
    let p = identity(&app, json!({"roles": ["root", "member"]})).await;
    assert_eq!(set(&p["roles"]), strs(&["member"]));
    assert_eq!(
        set(&p["unknown_roles"]),
        strs(&["root"]),
        "unknown roles grant nothing"
    );
    // A role name is matched exactly: no case folding into a real role.
    let p = identity(&app, json!({"roles": ["Platform_Admin"]})).await;
    assert_eq!(set(&p["roles"]), strs(&[]));
    assert_eq!(p["tenant_access"]["kind"], "only");

    let p = identity(&app, json!({"scp": ["usage.read", "audit.read"]})).await;
    assert_eq!(set(&p["scopes"]), strs(&["usage.read", "audit.read"]));
    let p = identity(&app, json!({"scope": "usage.read  audit.read users.read"})).await;
    assert_eq!(
        set(&p["scopes"]),
        strs(&["usage.read", "audit.read", "users.read"])
    );
    let p = identity(&app, json!({"scp": "a b", "scope": ["b", "c"]})).await;
    assert_eq!(set(&p["scopes"]), strs(&["a", "b", "c"]));

    let only = |p: &Value| {
        assert_eq!(p["tenant_access"]["kind"], "only", "{p}");
        set(&p["tenant_access"]["tenant_ids"])
    };
    let p = identity(&app, json!({"roles": ["member"], "tenant_ids": [a, tb]})).await;
    assert_eq!(only(&p), strs(&[&a, &tb]));
    let p = identity(&app, json!({"roles": ["member"], "tenant_id": a})).await;
    assert_eq!(only(&p), strs(&[&a]));
    let p = identity(&app, json!({"roles": ["member"], "tid": tb})).await;
    assert_eq!(only(&p), strs(&[&tb]));
    let p = identity(
        &app,
        json!({"roles": ["member"], "tenant_ids": [a], "tenant_id": tb, "tid": tb}),
    )
    .await;
    assert_eq!(only(&p), strs(&[&a, &tb]));
    let p = identity(
        &app,
        json!({"roles": ["member"], "tenant_ids": ["not-a-uuid", 7]}),
    )
    .await;
    assert_eq!(
        only(&p),
        strs(&[]),
        "values that are not tenant ids are ignored"
    );
    let p = identity(&app, json!({"roles": ["member"]})).await;
    assert_eq!(only(&p), strs(&[]));

    let p = identity(&app, json!({"roles": ["member"], "tenant_ids": ["*"]})).await;
    assert_eq!(p["tenant_access"], json!({"kind": "all"}));
    let p = identity(&app, json!({"roles": ["member"], "tenant_ids": "*"})).await;
    assert_eq!(p["tenant_access"], json!({"kind": "all"}));
    // `*` is honoured in `tenant_ids` only.
    let p = identity(
        &app,
        json!({"roles": ["member"], "tenant_id": "*", "tid": "*"}),
    )
    .await;
    assert_eq!(only(&p), strs(&[]));
    let p = identity(&app, json!({"roles": ["platform_admin"]})).await;
    assert_eq!(p["tenant_access"], json!({"kind": "all"}));
    assert_eq!(set(&p["roles"]), strs(&["platform_admin"]));
}

async fn wildcard_tenant_access_and_platform_admin_reach(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Wild A").await;
    let tb = app.active_tenant("Wild B").await;
    let star = app.token(json!({"sub": "star", "roles": ["member"], "tenant_ids": ["*"]}));
    for t in [&a, &tb] {
        let (s, body) = status_json(app.get(&format!("/v1/tenants/{t}"), &star).await).await;
        assert_eq!((s, body["id"].as_str()), (200, Some(t.as_str())));
        let (s, p) = status_json(app.get(&format!("/v1/tenants/{t}/users"), &star).await).await;
        assert_eq!((s, p["code"].as_str()), (403, Some("forbidden")));
        assert_eq!(p["required_permission"], "users.read");
    }
    let (s, p) = status_json(app.get("/v1/admin/tenants", &star).await).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (403, Some("forbidden")),
        "`*` is tenant access, not a platform role"
    );

    // The platform admin reaches every read action, of every tenant and of the platform.
    let operator = app.token(json!({"sub": "op", "roles": ["platform_admin"]}));
    let upload = REGISTRY
        .iter()
        .find(|x| x.intent == "admin.upload_logo")
        .unwrap();
    for t in [&a, &tb] {
        assert_eq!(
            send(&app, upload, t, &operator, 0).await.status(),
            200,
            "a logo to read"
        );
    }
    for action in REGISTRY
        .iter()
        .filter(|x| x.method == agentplane_core::action::Method::Get)
    {
        for t in [&a, &tb] {
            let (s, p) = status_json(send(&app, action, t, &operator, 0).await).await;
            assert_eq!(s, 200, "{} {p}", action.intent);
        }
    }
}

// --- 5. a tenant admin is not an operator ----------------------------------------------

async fn tenant_admin_cannot_use_platform_actions(b: Backend) {
    let app = TestApp::spawn(b).await;
    let operator = app.platform_admin();
    let a = app.active_tenant("Admin A").await;
    // A tenant whose provisioning job is still queued.
    let (s, created) = status_json(
        app.post(
            "/v1/tenants",
            &operator,
            json!({"name": "Pending", "admin_email": "p@pending.test"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202);
    let pending = created["tenant"]["id"].as_str().unwrap().to_owned();
    let tadmin = app.tenant_user("tenant_admin", &a);
    let (_, tenants_before) = status_json(app.get("/v1/admin/tenants", &operator).await).await;

    let attempts: [(Method, &str, Option<Value>, &str); 5] = [
        (
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "Rogue", "admin_email": "r@rogue.test"})),
            "tenants.create",
        ),
        (Method::GET, "/v1/admin/tenants", None, "tenants.list"),
        (
            Method::GET,
            "/v1/admin/usage/export?format=csv",
            None,
            "usage.export_all",
        ),
        (
            Method::POST,
            "/v1/provisioning/jobs/run-next",
            None,
            "jobs.run",
        ),
        (
            Method::POST,
            "/v1/admin/plans",
            Some(
                json!({"id": "rogue", "name": "Rogue", "limits": {"monthly_messages": 1, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}}),
            ),
            "plans.write",
        ),
    ];
    for (m, path, body, perm) in attempts {
        let (s, p) = status_json(app.call(m.clone(), path, Some(&tadmin), body).await).await;
        assert_eq!(
            (s, p["code"].as_str(), p["required_permission"].as_str()),
            (403, Some("forbidden"), Some(perm)),
            "{m} {path}"
        );
    }
    // Nothing happened: no tenant, no plan, the queued job did not run.
    let (_, tenants_after) = status_json(app.get("/v1/admin/tenants", &operator).await).await;
    assert_eq!(tenants_before, tenants_after);
    let (s, _) = status_json(app.get("/v1/admin/plans/rogue", &operator).await).await;
    assert_eq!(s, 404);
    let (_, t) = status_json(app.get(&format!("/v1/tenants/{pending}"), &operator).await).await;
    assert_eq!(t["status"], "provisioning");
    assert_eq!(
        app.run_jobs().await,
        1,
        "the provisioning job is still queued"
    );
}
