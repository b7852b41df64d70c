//! Health, the OpenAPI document, the AXAG manifest and the registry-driven routing.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use agentplane_core::action::{Scope, REGISTRY};
use reqwest::Method;
use serde_json::Value;

both_backends!(health_reports_the_backend);

async fn health_reports_the_backend(b: Backend) {
    let app = TestApp::spawn(b).await;
    let res = app
        .client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("x-request-id"));
    let (s, body) = status_json(res).await;
    assert_eq!(s, 200);
    assert_eq!(
        body["database"],
        if b == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
}

fn method(m: agentplane_core::action::Method) -> Method {
    Method::from_bytes(m.as_str().as_bytes()).unwrap()
}

#[tokio::test]
async fn every_declared_action_is_routed_and_needs_a_token() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for a in REGISTRY {
        let path = a
            .path
            .replace("{tenant_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{plan_id}", "free")
            .replace("{setting_key}", "locale");
        let (s, p) = status_json(app.call(method(a.method), &path, None, None).await).await;
        assert_eq!(
            (s, p["code"].as_str()),
            (401, Some("unauthenticated")),
            "{} {}",
            a.intent,
            a.path
        );
    }
}

#[tokio::test]
async fn openapi_documents_every_action_and_has_not_drifted() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let res = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    let served = res.text().await.unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    for a in REGISTRY {
        let op = &doc["paths"][a.path][a.method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not in the OpenAPI document",
            a.method.as_str(),
            a.path
        );
    }
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    assert!(committed == served, "docs/openapi.json has drifted from the code: run `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit it");
}

#[tokio::test]
async fn axag_manifest_comes_from_the_registry() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, m) = status_json(
        app.client
            .get(format!("{}/v1/axag/manifest", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(m["tenant_boundary"], "strict");
    assert_eq!(m["scope"], "tenant");
    let intents: Vec<&str> = m["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["intent"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = REGISTRY
        .iter()
        .filter(|a| a.scope == Scope::Tenant)
        .map(|a| a.intent)
        .collect();
    assert_eq!(intents, expected);
    let users = m["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["intent"] == "admin.list_users")
        .unwrap();
    assert!(users["parameters"]["status_filter"]["enum"].is_array());
    assert_eq!(users["required_permission"], "users.read");
    assert_eq!(users["http"]["path"], "/v1/tenants/{tenant_id}/users");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, p) = status_json(app.call(Method::GET, "/nope", None, None).await).await;
    assert_eq!((s, p["code"].as_str()), (404, Some("not_found")));
    let (s, p) = status_json(app.call(Method::PUT, "/health", None, None).await).await;
    assert_eq!((s, p["code"].as_str()), (405, Some("method_not_allowed")));
}

/// docs/permissions.md is generated from the permission matrix and the action registry.
fn permissions_doc() -> String {
    use agentplane_core::authz::{role_grants, Role, PERMISSION_MATRIX};
    let mut s = String::from(
        "# Permissions\n\n\
         Generated from `PERMISSION_MATRIX` and the action registry (`crates/core/src/authz.rs`,\n\
         `crates/core/src/action.rs`) by `tests/api/meta.rs`; regenerate with\n\
         `UPDATE_DOCS=1 cargo test --test api permissions_doc`.\n\n\
         A caller first needs access to the tenant (`platform_admin`, `tenant_ids`, `tenant_id`/`tid`);\n\
         without it every tenant route answers 404, like a missing tenant. With access, the\n\
         route's permission decides (403 `forbidden` otherwise, recorded as `access.denied` in\n\
         the tenant's audit trail). Members of a suspended tenant get 403 `tenant_suspended`;\n\
         of a deleted one, 404.\n\n\
         Tenant users' Agentplane session tokens reach one tenant (`tid`); their roles are read\n\
         from the membership at every request. A tenant may also define custom roles: named\n\
         sets of the tenant permissions below that `tenant_admin` holds (never a platform\n\
         permission), and nobody grants a role or permission they do not hold. Delegated\n\
         tokens for agents hold at most the person's permissions. See [identity.md](identity.md).\n\n\
         ## Role x permission\n\n| permission |",
    );
    for r in Role::ALL {
        s.push_str(&format!(" `{}` |", r.as_str()));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(Role::ALL.len()));
    s.push('\n');
    for (p, _) in PERMISSION_MATRIX {
        s.push_str(&format!("| `{}` |", p.as_str()));
        for r in Role::ALL {
            s.push_str(if role_grants(r, *p) { " yes |" } else { " |" });
        }
        s.push('\n');
    }
    s.push_str("\n## Actions\n\n| intent | method | path | scope | permission | risk | confirm |\n|---|---|---|---|---|---|---|\n");
    for a in REGISTRY {
        s.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} | {} | {} |\n",
            a.intent,
            a.method.as_str(),
            a.path,
            a.scope.as_str(),
            a.permission
                .map_or("any authenticated caller".to_owned(), |p| format!(
                    "`{}`",
                    p.as_str()
                )),
            a.risk_level.as_str(),
            if a.confirmation_required { "yes" } else { "" },
        ));
    }
    s
}

#[test]
fn permissions_doc_matches_the_matrix() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/permissions.md");
    let generated = permissions_doc();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(committed == generated, "docs/permissions.md has drifted: run `UPDATE_DOCS=1 cargo test --test api permissions_doc`");
}
