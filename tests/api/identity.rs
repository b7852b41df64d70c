//! Identity: invitations (mailed through a real SMTP listener), password sign-in, sessions
//! with refresh rotation, Agentplane-signed access tokens and their JWKS, memberships and
//! custom roles, attacked across tenants and one role too low.

use crate::both_backends;
use crate::helpers::{dump_database, status_json, Backend, TestApp};
use crate::smtp_sink::SmtpSink;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    an_invitation_is_mailed_accepted_once_and_signs_in_by_subdomain_path_or_body,
    a_demotion_or_removal_applies_to_the_very_next_request,
    a_reused_refresh_token_ends_the_whole_session,
    sign_out_ends_the_session_at_once,
    another_tenants_admin_and_tokens_never_reach_a_tenants_people,
    custom_roles_grant_exactly_their_permissions_and_nobody_grants_more_than_they_hold,
    the_last_active_tenant_admin_cannot_be_demoted_or_removed,
    the_jwks_verifies_tokens_and_a_rotation_keeps_live_tokens_valid,
    repeated_wrong_passwords_are_throttled_and_audited,
    no_password_or_token_is_stored_readable,
    enforced_sso_refuses_password_sign_in,
    bad_identity_input_is_refused_and_changes_nothing,
    a_delegated_token_acts_for_one_person_in_one_tenant_and_never_wider,
    purging_a_tenant_forgets_people_who_belonged_nowhere_else,
    erasing_a_person_removes_them_from_every_store_with_a_signed_receipt,
);

const PASSWORD: &str = "correct horse battery staple";

async fn slug_of(app: &TestApp, tenant: &str) -> String {
    let (_, t) = status_json(
        app.get(&format!("/v1/tenants/{tenant}"), &app.platform_admin())
            .await,
    )
    .await;
    t["slug"].as_str().unwrap().to_owned()
}

/// Invites `email` (manual delivery: no SMTP) and accepts with `PASSWORD`: the tokens.
async fn join(app: &TestApp, tenant: &str, email: &str, body: Value) -> Value {
    let mut invite = body;
    invite["email"] = json!(email);
    let (s, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/invitations"),
            &app.tenant_user("tenant_admin", tenant),
            invite,
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(inv["delivery"], "manual");
    accept(app, inv["token"].as_str().unwrap()).await
}

async fn accept(app: &TestApp, token: &str) -> Value {
    let (s, t) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": token, "name": "Someone", "password": PASSWORD})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{t}");
    t
}

async fn sign_in(app: &TestApp, tenant: &str, email: &str, password: &str) -> (u16, Value) {
    status_json(
        app.call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"grant_type": "password", "tenant": tenant, "email": email, "password": password})),
        )
        .await,
    )
    .await
}

async fn refresh(app: &TestApp, token: &Value) -> (u16, Value) {
    status_json(
        app.call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"grant_type": "refresh_token", "refresh_token": token})),
        )
        .await,
    )
    .await
}

fn bearer(t: &Value) -> String {
    t["access_token"].as_str().unwrap().to_owned()
}

fn audit_actions(events: &Value) -> Vec<String> {
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn an_invitation_is_mailed_accepted_once_and_signs_in_by_subdomain_path_or_body(b: Backend) {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(b, |env| {
        env.insert("AGENTPLANE_SMTP_URL".into(), url);
        env.insert(
            "AGENTPLANE_MAIL_FROM".into(),
            "Agentplane <noreply@agentplane.test>".into(),
        );
        env.insert("AGENTPLANE_BASE_DOMAIN".into(), "agentplane.test".into());
    })
    .await;
    let a = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let (s, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &admin,
            json!({"email": "Bob@Example.com", "roles": ["member"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(inv["delivery"], "email");
    assert_eq!(inv["email"], "bob@example.com");
    assert!(
        inv.get("token").is_none(),
        "the token goes to the invitee only"
    );
    // The mail job delivers it to a real SMTP listener.
    assert_eq!(app.run_jobs().await, 1);
    let (_, jobs) = status_json(app.get(&format!("/v1/tenants/{a}/jobs"), &admin).await).await;
    let send = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "invitation.send")
        .unwrap();
    assert_eq!(
        send["status"], "succeeded",
        "mailed once, not again: {send}"
    );
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail.to, vec!["bob@example.com".to_owned()]);
    assert!(
        mail.subject().unwrap().contains("Acme"),
        "{:?}",
        mail.subject()
    );
    let body = mail.body();
    let token = body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .find(|w| w.starts_with("apinv_"))
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_owned();
    let tokens = accept(&app, &token).await;
    assert_eq!(tokens["tenant_id"], a.as_str());
    assert_eq!(tokens["token_type"], "Bearer");
    // Single use.
    let (s, p) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": token, "password": "another password 1"})),
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (400, Some("invalid_invitation")));
    // The member's token: tenant discovery by its claims.
    let (s, me) = status_json(app.get("/v1/auth/me", &bearer(&tokens)).await).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["tenant_id"], a.as_str());
    assert_eq!(me["roles"], json!(["member"]));
    let slug = slug_of(&app, &a).await;
    assert_eq!(me["tenant_slug"], slug.as_str());
    // The same person signing in by body, path and subdomain lands in the same place.
    let (s, by_body) = sign_in(&app, &slug, "bob@example.com", PASSWORD).await;
    assert_eq!(s, 200, "{by_body}");
    let (s, by_path) = status_json(
        app.call(
            Method::POST,
            &format!("/v1/auth/{a}/token"),
            None,
            Some(
                json!({"grant_type": "password", "email": "BOB@example.com", "password": PASSWORD}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{by_path}");
    let by_host: Value = app
        .client
        .post(format!("{}/v1/auth/token", app.base))
        .header("host", format!("{slug}.agentplane.test"))
        .json(&json!({"grant_type": "password", "email": "bob@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for t in [&tokens, &by_body, &by_path, &by_host] {
        assert_eq!(t["tenant_id"], a.as_str(), "{t}");
        assert_eq!(t["user_id"], tokens["user_id"], "{t}");
    }
    // Hints that disagree are refused, not resolved by precedence.
    let other = app.active_tenant("Other").await;
    let (s, p) = status_json(
        app.call(
            Method::POST,
            &format!("/v1/auth/{other}/token"),
            None,
            Some(json!({"grant_type": "password", "tenant": slug, "email": "bob@example.com", "password": PASSWORD})),
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (400, Some("tenant_unresolved")));
    // A member reads agents, not users.
    let (s, _) = status_json(
        app.get(&format!("/v1/tenants/{a}/agents"), &bearer(&tokens))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, p) = status_json(
        app.get(&format!("/v1/tenants/{a}/users"), &bearer(&tokens))
            .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (403, Some("forbidden")));
    // The invitation and the sign-ins are in the tenant's audit trail; the e-mail is not in
    // the chained event.
    let (_, events) = status_json(app.get(&format!("/v1/tenants/{a}/audit"), &admin).await).await;
    let actions = audit_actions(&events);
    for a in ["user.invited", "invitation.accepted", "session.created"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
}

async fn a_demotion_or_removal_applies_to_the_very_next_request(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Demote").await;
    let carol = join(
        &app,
        &a,
        "carol@demote.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let token = bearer(&carol);
    let users = format!("/v1/tenants/{a}/users");
    let (s, list) = status_json(app.get(&users, &token).await).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let user = carol["user_id"].as_str().unwrap();
    let (s, m) = status_json(
        app.call(
            Method::PATCH,
            &format!("{users}/{user}"),
            Some(&app.tenant_user("tenant_admin", &a)),
            Some(json!({"roles": ["member"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["roles"], json!(["member"]));
    // The same, unexpired access token no longer carries the old rights.
    let (s, p) = status_json(app.get(&users, &token).await).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/agents"), &token).await).await;
    assert_eq!(s, 200);
    // Suspension signs her out: access and refresh tokens stop.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("{users}/{user}"),
            Some(&app.tenant_user("tenant_admin", &a)),
            Some(json!({"status": "suspended"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, p) = status_json(app.get(&format!("/v1/tenants/{a}/agents"), &token).await).await;
    assert_eq!((s, p["code"].as_str()), (401, Some("unauthenticated")));
    let (s, _) = refresh(&app, &carol["refresh_token"]).await;
    assert_eq!(s, 401);
    let (s, _) = sign_in(&app, &a, "carol@demote.test", PASSWORD).await;
    assert_eq!(s, 401, "a suspended member cannot sign in");
    // Removal: gone, and her e-mail stays only in the audit's personal-data store.
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!("{users}/{user}?confirm=true"),
            Some(&app.tenant_user("tenant_admin", &a)),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = status_json(
        app.get(&format!("{users}/{user}"), &app.platform_admin())
            .await,
    )
    .await;
    assert_eq!(s, 404);
    let (_, events) = status_json(
        app.get(&format!("/v1/tenants/{a}/audit"), &app.platform_admin())
            .await,
    )
    .await;
    let actions = audit_actions(&events);
    assert_eq!(actions.iter().filter(|x| *x == "user.updated").count(), 2);
    assert!(actions.iter().any(|x| x == "user.removed"));
}

async fn a_reused_refresh_token_ends_the_whole_session(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Refresh").await;
    let first = join(&app, &a, "dan@refresh.test", json!({})).await;
    let (s, second) = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(s, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["user_id"], first["user_id"]);
    let (s, _) = status_json(app.get("/v1/auth/me", &bearer(&second)).await).await;
    assert_eq!(s, 200);
    // The first token again: someone holds a copy. The family dies.
    let (s, p) = refresh(&app, &first["refresh_token"]).await;
    assert_eq!((s, p["code"].as_str()), (401, Some("refresh_token_reused")));
    let (s, p) = refresh(&app, &second["refresh_token"]).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (401, Some("invalid_refresh_token")),
        "{p}"
    );
    let (s, _) = status_json(app.get("/v1/auth/me", &bearer(&second)).await).await;
    assert_eq!(s, 401, "access tokens of the session die with it");
    // A forged secret for a real id neither refreshes nor kills anything.
    let fresh = sign_in(&app, &a, "dan@refresh.test", PASSWORD).await.1;
    let real = fresh["refresh_token"].as_str().unwrap();
    let (id, _) = real.split_once('.').unwrap();
    let forged = format!("{id}.{}", "A".repeat(43));
    let (s, _) = refresh(&app, &json!(forged)).await;
    assert_eq!(s, 401);
    let (s, _) = refresh(&app, &fresh["refresh_token"]).await;
    assert_eq!(s, 200, "a wrong secret must not revoke the real session");
    // Concurrent use of one token: exactly one rotation wins.
    let t = sign_in(&app, &a, "dan@refresh.test", PASSWORD).await.1;
    let results =
        futures::future::join_all((0..4).map(|_| refresh(&app, &t["refresh_token"]))).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{results:?}");
    let (_, events) = status_json(
        app.get(&format!("/v1/tenants/{a}/audit"), &app.platform_admin())
            .await,
    )
    .await;
    assert!(audit_actions(&events)
        .iter()
        .any(|x| x == "session.refresh_reused"));
}

async fn sign_out_ends_the_session_at_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Logout").await;
    let t = join(&app, &a, "erin@logout.test", json!({})).await;
    let other = sign_in(&app, &a, "erin@logout.test", PASSWORD).await.1;
    let (s, _) = status_json(
        app.call(Method::POST, "/v1/auth/logout", Some(&bearer(&t)), None)
            .await,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = status_json(app.get("/v1/auth/me", &bearer(&t)).await).await;
    assert_eq!(s, 401);
    let (s, _) = refresh(&app, &t["refresh_token"]).await;
    assert_eq!(s, 401);
    // Her other session (another device) is untouched.
    let (s, _) = status_json(app.get("/v1/auth/me", &bearer(&other)).await).await;
    assert_eq!(s, 200);
    // An operator's external token has no session to end.
    let (s, _) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/logout",
            Some(&app.platform_admin()),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
}

async fn another_tenants_admin_and_tokens_never_reach_a_tenants_people(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Left").await;
    let tb = app.active_tenant("Right").await;
    let alice = join(
        &app,
        &a,
        "alice@left.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let bob = join(
        &app,
        &tb,
        "bob@right.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let user = alice["user_id"].as_str().unwrap();
    let b_admins = [app.tenant_user("tenant_admin", &tb), bearer(&bob)];
    for t in &b_admins {
        for (m, path, body) in [
            (Method::GET, format!("/v1/tenants/{a}/users/{user}"), None),
            (
                Method::PATCH,
                format!("/v1/tenants/{a}/users/{user}"),
                Some(json!({"roles": ["member"]})),
            ),
            (
                Method::DELETE,
                format!("/v1/tenants/{a}/users/{user}?confirm=true"),
                None,
            ),
            (Method::GET, format!("/v1/tenants/{a}/users"), None),
            (
                Method::POST,
                format!("/v1/tenants/{a}/invitations"),
                Some(json!({"email": "x@y.test"})),
            ),
            (Method::GET, format!("/v1/tenants/{a}/roles"), None),
            // Tenant A's user through tenant B's own path: not B's member.
            (Method::GET, format!("/v1/tenants/{tb}/users/{user}"), None),
        ] {
            let (s, p) = status_json(app.call(m.clone(), &path, Some(t), body).await).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (404, Some("not_found")),
                "{m} {path}"
            );
        }
    }
    // Alice is untouched.
    let (s, m) = status_json(
        app.get(&format!("/v1/tenants/{a}/users/{user}"), &bearer(&alice))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(m["roles"], json!(["tenant_admin"]));
    // A's credentials do not open B, by any route.
    let (s, _) = sign_in(&app, &tb, "alice@left.test", PASSWORD).await;
    assert_eq!(s, 401);
    // A token signed by another deployment's key (same claims, own issuer) is refused.
    let foreign = TestApp::spawn(b).await;
    let f_tenant = foreign.active_tenant("Foreign").await;
    let f_tokens = join(
        &foreign,
        &f_tenant,
        "mallory@foreign.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let (s, _) = status_json(app.get("/v1/auth/me", &bearer(&f_tokens)).await).await;
    assert_eq!(s, 401, "another deployment's key must not verify here");
    // The same person in two tenants: one user id, separate memberships and passwords.
    let both = join(&app, &tb, "alice@left.test", json!({"roles": ["member"]})).await;
    assert_eq!(both["user_id"], alice["user_id"]);
    let (_, me_b) = status_json(app.get("/v1/auth/me", &bearer(&both)).await).await;
    assert_eq!(
        (me_b["tenant_id"].as_str(), &me_b["roles"]),
        (Some(tb.as_str()), &json!(["member"]))
    );
    let (s, p) = status_json(
        app.get(&format!("/v1/tenants/{a}/users"), &bearer(&both))
            .await,
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (404, Some("not_found")),
        "a tenant-B token never reaches A"
    );
}

async fn custom_roles_grant_exactly_their_permissions_and_nobody_grants_more_than_they_hold(
    b: Backend,
) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Custom").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let roles = format!("/v1/tenants/{a}/roles");
    let (s, r) = status_json(
        app.post(
            &roles,
            &admin,
            json!({"name": "people-manager", "description": "invites people", "permissions": ["users.read", "users.write"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let (s, p) = status_json(
        app.post(
            &roles,
            &admin,
            json!({"name": "ops", "permissions": ["tenants.create"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "platform permissions stay with the operators: {p}");
    let (s, _) = status_json(
        app.post(
            &roles,
            &admin,
            json!({"name": "people-manager", "permissions": ["agents.read"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 409);
    let (_, list) = status_json(app.get(&roles, &admin).await).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        4,
        "3 built-in + 1 custom: {list}"
    );

    let pm = join(
        &app,
        &a,
        "pm@custom.test",
        json!({"roles": [], "custom_roles": ["people-manager"]}),
    )
    .await;
    let t = bearer(&pm);
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &t).await).await;
    assert_eq!(s, 200, "the custom role grants users.read");
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/agents"), &t).await).await;
    assert_eq!(s, 403, "and nothing else");
    // users.write, but not the permissions of tenant_admin: cannot make anyone (herself
    // included) an admin, nor invite one.
    let me = pm["user_id"].as_str().unwrap();
    let (s, p) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/users/{me}"),
            Some(&t),
            Some(json!({"roles": ["tenant_admin"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "{p}");
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &t,
            json!({"email": "boss@custom.test", "roles": ["tenant_admin"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
    let (s, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &t,
            json!({"email": "peer@custom.test", "roles": [], "custom_roles": ["people-manager"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "within her own permissions: {inv}");
    // Narrowing the role applies to her next request.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("{roles}/people-manager"),
            Some(&admin),
            Some(json!({"permissions": ["agents.read"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &t).await).await;
    assert_eq!(s, 403);
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/agents"), &t).await).await;
    assert_eq!(s, 200);
    // A role somebody holds cannot be deleted.
    let (s, p) = status_json(
        app.call(
            Method::DELETE,
            &format!("{roles}/people-manager?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("in_use")));
    // Unknown custom roles are refused on a member.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/users/{me}"),
            Some(&admin),
            Some(json!({"custom_roles": ["ghost"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
}

async fn the_last_active_tenant_admin_cannot_be_demoted_or_removed(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Solo").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let (_, list) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &admin).await).await;
    let first = list["items"][0]["user_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/tenants/{a}/users/{first}");
    for body in [json!({"roles": ["member"]}), json!({"status": "inactive"})] {
        let (s, p) = status_json(
            app.call(Method::PATCH, &path, Some(&admin), Some(body))
                .await,
        )
        .await;
        assert_eq!((s, p["code"].as_str()), (409, Some("last_admin")));
    }
    let (s, p) = status_json(
        app.call(
            Method::DELETE,
            &format!("{path}?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("last_admin")));
    // With a second admin, either may step down, but not both at once.
    let second = join(
        &app,
        &a,
        "second@solo.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let second_id = second["user_id"].as_str().unwrap().to_owned();
    let second_path = format!("/v1/tenants/{a}/users/{second_id}");
    let (r1, r2) = tokio::join!(
        app.call(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({"roles": ["member"]}))
        ),
        app.call(
            Method::PATCH,
            &second_path,
            Some(&admin),
            Some(json!({"roles": ["member"]}))
        ),
    );
    let mut statuses = [r1.status().as_u16(), r2.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
}

async fn the_jwks_verifies_tokens_and_a_rotation_keeps_live_tokens_valid(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Keys").await;
    let t = join(&app, &a, "kim@keys.test", json!({})).await;
    let jwks: Value = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let verify = |jwks: &Value, token: &str| -> Value {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let jwk = set
            .find(&kid)
            .unwrap_or_else(|| panic!("kid {kid} not published"));
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["agentplane"]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .unwrap()
            .claims
    };
    let claims = verify(&jwks, &bearer(&t));
    assert_eq!(claims["tid"], a.as_str());
    assert_eq!(claims["sub"], t["user_id"]);
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 600);
    // Rotation: confirmation required, platform only.
    let (s, _) = status_json(
        app.post(
            "/v1/admin/signing-keys/rotate",
            &app.platform_admin(),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 428);
    let (s, _) = status_json(
        app.post(
            "/v1/admin/signing-keys/rotate?confirm=true",
            &app.tenant_user("tenant_admin", &a),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
    let (s, rotated) = status_json(
        app.post(
            "/v1/admin/signing-keys/rotate?confirm=true",
            &app.platform_admin(),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    assert_eq!(rotated["jwks"]["keys"].as_array().unwrap().len(), 2);
    // The old token still works; new tokens use the new key, published too.
    let (s, _) = status_json(app.get("/v1/auth/me", &bearer(&t)).await).await;
    assert_eq!(s, 200);
    let (_, fresh) = refresh(&app, &t["refresh_token"]).await;
    let kid = jsonwebtoken::decode_header(&bearer(&fresh))
        .unwrap()
        .kid
        .unwrap();
    assert_eq!(kid, rotated["kid"].as_str().unwrap());
    verify(&rotated["jwks"], &bearer(&fresh));
    // A token whose payload was edited after signing fails.
    let token = bearer(&fresh);
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    payload["tid"] = json!(app.active_tenant("Elsewhere").await);
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let (s, _) = status_json(app.get("/v1/auth/me", &edited).await).await;
    assert_eq!(s, 401);
}

async fn repeated_wrong_passwords_are_throttled_and_audited(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Throttle").await;
    join(&app, &a, "tom@throttle.test", json!({})).await;
    for _ in 0..5 {
        let (s, p) = sign_in(&app, &a, "tom@throttle.test", "wrong password!!").await;
        assert_eq!((s, p["code"].as_str()), (401, Some("invalid_credentials")));
    }
    let res = app
        .call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"grant_type": "password", "tenant": a, "email": "tom@throttle.test", "password": PASSWORD})),
        )
        .await;
    assert!(res.headers().get("retry-after").is_some());
    let (s, p) = status_json(res).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (429, Some("sign_in_throttled")),
        "even the right password waits"
    );
    // An unknown e-mail answers exactly like a wrong password.
    let (s, p) = sign_in(&app, &a, "nobody@throttle.test", PASSWORD).await;
    assert_eq!((s, p["code"].as_str()), (401, Some("invalid_credentials")));
    let (_, events) = status_json(
        app.get(&format!("/v1/tenants/{a}/audit"), &app.platform_admin())
            .await,
    )
    .await;
    let failed = audit_actions(&events)
        .iter()
        .filter(|x| *x == "session.sign_in_failed")
        .count();
    assert_eq!(failed, 5);
}

async fn no_password_or_token_is_stored_readable(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Vault").await;
    let (s, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &app.tenant_user("tenant_admin", &a),
            json!({"email": "val@vault.test"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201);
    let invitation = inv["token"].as_str().unwrap().to_owned();
    let pending = dump_database(&app.db);
    let t = accept(&app, &invitation).await;
    let dump = dump_database(&app.db);
    let refresh_secret = t["refresh_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    for (what, needle) in [
        ("invitation token (pending)", invitation.as_str()),
        ("password", PASSWORD),
        ("refresh secret", refresh_secret),
    ] {
        let haystack = if what.contains("pending") {
            &pending
        } else {
            &dump
        };
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "{what} found in the database"
        );
    }
    let (s, list) = status_json(
        app.get(&format!("/v1/tenants/{a}/users"), &app.platform_admin())
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let text = list.to_string();
    assert!(!text.contains("argon2"), "no hash in the API: {text}");
    assert!(text.contains("\"has_password\":true"));
}

async fn enforced_sso_refuses_password_sign_in(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Sso").await;
    join(&app, &a, "sam@sso.test", json!({})).await;
    let (s, _) = status_json(
        app.call(
            Method::PUT,
            &format!("/v1/tenants/{a}/settings/sso.enforced?confirm=true"),
            Some(&app.tenant_user("tenant_admin", &a)),
            Some(json!({"setting_value": true})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, p) = sign_in(&app, &a, "sam@sso.test", PASSWORD).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (403, Some("local_sign_in_disabled"))
    );
    // A wrong password still reads as a wrong password (no oracle for the setting).
    let (s, _) = sign_in(&app, &a, "sam@sso.test", "wrong password!!").await;
    assert_eq!(s, 401);
}

async fn bad_identity_input_is_refused_and_changes_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Bad").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let invitations = format!("/v1/tenants/{a}/invitations");
    for body in [
        json!({"email": "not an email"}),
        json!({"email": "a@b.test\r\nBcc: x@y.z"}),
        json!({"email": "p@bad.test", "roles": ["platform_admin"]}),
        json!({"email": "p@bad.test", "roles": ["owner"]}),
        json!({"email": "p@bad.test", "custom_roles": ["ghost"]}),
        json!({"email": "p@bad.test", "surprise": 1}),
        json!(["p@bad.test"]),
    ] {
        let (s, p) = status_json(app.post(&invitations, &admin, body.clone()).await).await;
        assert!(matches!(s, 400 | 422), "{body} -> {p}");
    }
    let (_, list) = status_json(app.get(&invitations, &admin).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    for body in [
        json!({"token": "apinv_nope"}),
        json!({"token": "x".repeat(5000)}),
        json!({}),
    ] {
        let (s, _) = status_json(
            app.call(
                Method::POST,
                "/v1/auth/invitations/accept",
                None,
                Some(body),
            )
            .await,
        )
        .await;
        assert!(matches!(s, 400 | 422));
    }
    let (s, inv) = status_json(
        app.post(&invitations, &admin, json!({"email": "weak@bad.test"}))
            .await,
    )
    .await;
    assert_eq!(s, 201);
    let (s, p) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": inv["token"], "password": "short"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "{p}");
    // The weak password did not spend the invitation.
    accept(&app, inv["token"].as_str().unwrap()).await;
    // A revoked invitation cannot be accepted.
    let (_, inv2) = status_json(
        app.post(&invitations, &admin, json!({"email": "rev@bad.test"}))
            .await,
    )
    .await;
    let (s, r) = status_json(
        app.call(
            Method::DELETE,
            &format!("{invitations}/{}", inv2["id"].as_str().unwrap()),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (s, _) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": inv2["token"], "password": PASSWORD})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 400);
    for body in [
        json!({"grant_type": "magic"}),
        json!({"grant_type": "password", "tenant": a}),
        json!({"grant_type": "password", "email": "x@y.test", "password": "whatever password"}),
        json!({"grant_type": "refresh_token", "refresh_token": "aprt_garbage"}),
    ] {
        let (s, p) = status_json(
            app.call(Method::POST, "/v1/auth/token", None, Some(body.clone()))
                .await,
        )
        .await;
        assert!(matches!(s, 400 | 401 | 422), "{body} -> {s} {p}");
    }
}

async fn a_delegated_token_acts_for_one_person_in_one_tenant_and_never_wider(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Deleg").await;
    let other = app.active_tenant("Elsewhere").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let pat = join(
        &app,
        &a,
        "pat@deleg.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let person = pat["user_id"].as_str().unwrap().to_owned();
    let delegations = format!("/v1/tenants/{a}/delegations");
    // Settings read and write: the agent may change the locale for Pat, nothing else.
    let (s, d) = status_json(
        app.post(
            &delegations,
            &admin,
            json!({"user_id": person, "agent": "Support Copilot", "permissions": ["settings.read", "settings.write", "tenant.read"], "ttl_secs": 600}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{d}");
    let token = d["access_token"].as_str().unwrap().to_owned();
    assert!(d["expires_in"].as_u64().unwrap() <= 600);
    let (s, me) = status_json(app.get("/v1/auth/me", &token).await).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(
        me["permissions"],
        json!(["tenant.read", "settings.read", "settings.write"])
    );
    let (s, _) = status_json(
        app.call(
            Method::PUT,
            &format!("/v1/tenants/{a}/settings/locale?confirm=true"),
            Some(&token),
            Some(json!({"setting_value": "de"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    // Outside the ceiling, though Pat holds it.
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &token).await).await;
    assert_eq!(s, 403);
    // Another tenant: as if it did not exist.
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{other}"), &token).await).await;
    assert_eq!(s, 404);
    // The audit event names the person and the agent; filtering by the person finds it.
    let (_, events) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/audit?actor_id={person}&action=settings.update"),
            &admin,
        )
        .await,
    )
    .await;
    let ev = &events["items"][0];
    assert_eq!(ev["actor_kind"], "delegated", "{events}");
    assert_eq!(ev["actor_id"], format!("{person}/agent:Support Copilot"));
    // Demoting Pat narrows the agent at once: what Pat lost, the agent lost.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/users/{person}"),
            Some(&admin),
            Some(json!({"roles": ["auditor"]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = status_json(
        app.call(
            Method::PUT,
            &format!("/v1/tenants/{a}/settings/locale?confirm=true"),
            Some(&token),
            Some(json!({"setting_value": "fr"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403, "Pat no longer holds settings.write");
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/settings"), &token).await).await;
    assert_eq!(s, 200);
    // A ceiling beyond the person is refused; so is a label that could forge an actor id.
    for body in [
        json!({"user_id": person, "agent": "x", "permissions": ["users.write"]}),
        json!({"user_id": person, "agent": "x/agent:y"}),
        json!({"user_id": uuid::Uuid::now_v7(), "agent": "x"}),
        json!({"user_id": person, "agent": "x", "ttl_secs": 99_999_999}),
    ] {
        let (s, p) = status_json(app.post(&delegations, &admin, body.clone()).await).await;
        assert_eq!(s, 422, "{body} -> {p}");
    }
    // Revocation: refused from the next request on; the token is never listed.
    let (_, list) = status_json(app.get(&delegations, &admin).await).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&token));
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!("{delegations}/{}", d["id"].as_str().unwrap()),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/settings"), &token).await).await;
    assert_eq!(s, 401);
    // A delegation endpoint cannot revoke a person's sign-in session.
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!("{delegations}/{}", uuid::Uuid::now_v7()),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
    // Removing the person ends every token acting for them.
    let (_, d2) = status_json(
        app.post(
            &delegations,
            &admin,
            json!({"user_id": person, "agent": "Second"}),
        )
        .await,
    )
    .await;
    let t2 = d2["access_token"].as_str().unwrap().to_owned();
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/settings"), &t2).await).await;
    assert_eq!(s, 200);
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{a}/users/{person}?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = status_json(app.get(&format!("/v1/tenants/{a}/settings"), &t2).await).await;
    assert_eq!(s, 401);
}

async fn purging_a_tenant_forgets_people_who_belonged_nowhere_else(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let doomed = app.active_tenant("Doomed").await;
    let keep = app.active_tenant("Keeper").await;
    join(&app, &doomed, "only@doomed.test", json!({})).await;
    join(&app, &doomed, "both@doomed.test", json!({})).await;
    join(&app, &keep, "both@doomed.test", json!({})).await;
    let store = app.control.store();
    assert!(store
        .find_user_by_email("only@doomed.test")
        .await
        .unwrap()
        .is_some());
    app.call(
        Method::DELETE,
        &format!("/v1/admin/tenants/{doomed}?confirm=true"),
        Some(&admin),
        None,
    )
    .await;
    let (s, _) = status_json(
        app.call(
            Method::POST,
            &format!("/v1/admin/tenants/{doomed}/purge?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(app.run_jobs().await, 1);
    assert!(
        store
            .find_user_by_email("only@doomed.test")
            .await
            .unwrap()
            .is_none(),
        "a person of the purged tenant only is forgotten"
    );
    assert!(store
        .find_user_by_email("admin@doomed.test")
        .await
        .unwrap()
        .is_none());
    let both = store.find_user_by_email("both@doomed.test").await.unwrap();
    assert!(both.is_some(), "a member of another tenant stays");
    // And still signs in there.
    let (s, _) = sign_in(&app, &keep, "both@doomed.test", PASSWORD).await;
    assert_eq!(s, 200);
    let dump = dump_database(&app.db);
    assert!(!dump.windows(16).any(|w| w == b"only@doomed.test"));
}

async fn erasing_a_person_removes_them_from_every_store_with_a_signed_receipt(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Erase").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let carol = join(
        &app,
        &a,
        "carol@erase.test",
        json!({"roles": ["tenant_admin"]}),
    )
    .await;
    let user = carol["user_id"].as_str().unwrap().to_owned();
    let token = bearer(&carol);
    let (s, key) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/api-keys"),
            &token,
            json!({"name": "carol's"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201);
    // A pending re-invitation to the same address: also personal data.
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &admin,
            json!({"email": "carol@erase.test"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201);
    let (s, job) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/users/{user}/erase"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 428, "erasure needs confirmation: {job}");
    let (s, job) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/users/{user}/erase?confirm=true"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, job["kind"].as_str()),
        (202, Some("user.erase")),
        "{job}"
    );
    assert!(
        !job.to_string().contains("carol@erase.test"),
        "the address travels sealed"
    );
    assert_eq!(app.run_jobs().await, 1);
    // Access is gone at once.
    let (s, _) = status_json(app.get("/v1/auth/me", &token).await).await;
    assert_eq!(s, 401);
    let status = app
        .client
        .get(format!("{}/v1/models", app.base))
        .bearer_auth(key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // The receipt: what went where, signed with a key of the public JWKS.
    let (s, r) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/erasures/{}", job["id"].as_str().unwrap()),
            &app.tenant_user("auditor", &a),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let removed = &r["receipt"]["removed"];
    assert_eq!(removed["memberships"], 1, "{r}");
    assert_eq!(removed["people"], 1);
    assert!(removed["sessions"].as_u64().unwrap() >= 1);
    assert!(removed["invitations"].as_u64().unwrap() >= 2);
    assert!(removed["audit_personal_data"].as_u64().unwrap() >= 2);
    assert!(!r.to_string().contains("carol@erase.test"));
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sig = r["signature"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(sig).unwrap().kid.unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let signed = jsonwebtoken::decode::<Value>(sig, &key, &v).unwrap().claims;
    assert_eq!(signed, r["receipt"], "the receipt is what was signed");
    // A full scan of the database finds the address nowhere.
    let dump = dump_database(&app.db);
    let needle = b"carol@erase.test";
    assert!(
        !dump.windows(needle.len()).any(|w| w == needle),
        "personal data left in the database"
    );
    // The audit chain still verifies.
    let platform = agentplane_core::authz::PlatformCtx::for_system("test");
    let report = agentplane_audit::verify_all(app.control.store().as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    // The last admin cannot be erased; another tenant's admin cannot erase anyone here.
    let (_, users) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &admin).await).await;
    let first = users["items"][0]["user_id"].as_str().unwrap();
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/users/{first}/erase?confirm=true"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 409);
    let other = app.active_tenant("Else").await;
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/users/{first}/erase?confirm=true"),
            &app.tenant_user("tenant_admin", &other),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
}
