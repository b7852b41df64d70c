//! Per-tenant SSO against real peers: a real OpenID provider per tenant (oidc-provider) and
//! a real directory (slapd). An IdP of tenant A never signs anyone into tenant B, and
//! changing one tenant's SSO leaves the others' sign-in untouched.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use crate::ldap_peer::{LdapPeer, LdapUser};
use crate::oidc_peer::{Client, OidcPeer};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    oidc_signs_people_into_their_own_tenant_only,
    ldap_signs_in_with_the_tenants_directory_and_syncs_attributes,
    sso_connections_are_tenant_admin_business_and_keep_their_secrets,
    saml_signs_in_with_a_signed_assertion_once_and_never_into_another_tenant,
);

/// What the test server sends as `redirect_uri` (its configured public URL).
const CALLBACK: &str = "http://127.0.0.1:8080/v1/auth/sso/callback";

async fn slug_of(app: &TestApp, tenant: &str) -> String {
    let (_, t) = status_json(
        app.get(&format!("/v1/tenants/{tenant}"), &app.platform_admin())
            .await,
    )
    .await;
    t["slug"].as_str().unwrap().to_owned()
}

async fn connect(app: &TestApp, tenant: &str, body: Value) -> Value {
    let (s, c) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/sso"),
            &app.tenant_user("tenant_admin", tenant),
            body,
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{c}");
    c
}

async fn oidc_peer(client_id: &str, accounts: Value) -> OidcPeer {
    OidcPeer::start(
        &[Client {
            client_id: client_id.into(),
            client_secret: format!("{client_id}-secret"),
            redirect_uri: CALLBACK.into(),
        }],
        accounts,
    )
    .await
}

fn oidc_connection(peer: &OidcPeer, client_id: &str, mapping: Value) -> Value {
    json!({
        "kind": "oidc", "name": format!("{client_id} IdP"),
        "config": {"issuer": peer.issuer, "client_id": client_id, "scopes": ["email", "profile", "groups"]},
        "secret": format!("{client_id}-secret"),
        "role_mapping": mapping,
    })
}

/// Starts the tenant's sign-in: the provider's authorization URL.
async fn start(app: &TestApp, tenant: &str, connection: &str) -> (u16, Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .get(format!(
            "{}/v1/auth/{tenant}/sso/{connection}/start",
            app.base
        ))
        .send()
        .await
        .unwrap();
    let location = res
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (res.status().as_u16(), location)
}

/// Delivers the provider's redirect (`CALLBACK?code=..&state=..`) to the server.
async fn callback(app: &TestApp, redirect: &str) -> (u16, Value) {
    let query = redirect
        .strip_prefix(CALLBACK)
        .unwrap_or_else(|| panic!("redirect elsewhere: {redirect}"));
    status_json(
        app.call(
            Method::GET,
            &format!("/v1/auth/sso/callback{query}"),
            None,
            None,
        )
        .await,
    )
    .await
}

fn query_param(url: &str, key: &str) -> String {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {url}"))
        .to_owned()
}

async fn oidc_signs_people_into_their_own_tenant_only(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Alpha").await;
    let tb = app.active_tenant("Beta").await;
    let peer_a = oidc_peer(
        "alpha",
        json!({"alice": {"sub": "alice-sub", "email": "alice@alpha.test", "email_verified": true, "name": "Alice A", "groups": ["eng-admins"]},
               "eve": {"sub": "eve-sub", "email": "eve@alpha.test", "email_verified": true, "name": "Eve", "groups": []}}),
    )
    .await;
    let peer_b = oidc_peer(
        "beta",
        json!({"bob": {"sub": "bob-sub", "email": "bob@beta.test", "email_verified": true, "name": "Bob B", "groups": []}}),
    )
    .await;
    let ca = connect(
        &app,
        &a,
        oidc_connection(&peer_a, "alpha", json!({"eng-admins": ["tenant_admin"]})),
    )
    .await;
    let cb = connect(&app, &tb, oidc_connection(&peer_b, "beta", json!({}))).await;
    let (ca, cb) = (
        ca["id"].as_str().unwrap().to_owned(),
        cb["id"].as_str().unwrap().to_owned(),
    );
    let slug_a = slug_of(&app, &a).await;

    // Alice signs in to A through A's provider: provisioned just in time, roles from groups.
    let (s, url) = start(&app, &slug_a, &ca).await;
    assert_eq!(s, 303);
    let url = url.unwrap();
    assert!(url.starts_with(&peer_a.issuer), "{url}");
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("nonce="),
        "{url}"
    );
    let redirect = peer_a.login(&url, "alice").await;
    let (s, tokens) = callback(&app, &redirect).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["tenant_id"], a.as_str());
    let (_, me) = status_json(
        app.get("/v1/auth/me", tokens["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["roles"], json!(["tenant_admin"]));
    let (_, m) = status_json(
        app.get(
            &format!(
                "/v1/tenants/{a}/users/{}",
                tokens["user_id"].as_str().unwrap()
            ),
            &app.platform_admin(),
        )
        .await,
    )
    .await;
    assert_eq!(
        (m["email"].as_str(), m["name"].as_str()),
        (Some("alice@alpha.test"), Some("Alice A"))
    );
    // No mapped group: a member.
    let (_, url) = start(&app, &a, &ca).await;
    let (s, eve) = callback(&app, &peer_a.login(&url.unwrap(), "eve").await).await;
    assert_eq!(s, 200);
    let (_, me) = status_json(
        app.get("/v1/auth/me", eve["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["roles"], json!(["member"]));
    // The callback is single use.
    let (s, _) = callback(&app, &redirect).await;
    assert_eq!(s, 401);

    // A code from A's provider delivered with B's state: B redeems it at B's provider, which
    // never issued it. Nobody lands in B.
    let (_, url_b) = start(&app, &tb, &cb).await;
    let state_b = query_param(&url_b.unwrap(), "state");
    let (_, url_a) = start(&app, &a, &ca).await;
    let redirect_a = peer_a.login(&url_a.unwrap(), "alice").await;
    let code_a = query_param(&redirect_a, "code");
    let forged = format!("{CALLBACK}?code={code_a}&state={state_b}");
    let (s, p) = callback(&app, &forged).await;
    assert_eq!(s, 401, "{p}");
    // ... and the answer of another provider is refused outright (RFC 9207 `iss`).
    let (_, url_b) = start(&app, &tb, &cb).await;
    let redirect_b = peer_b.login(&url_b.unwrap(), "bob").await;
    let mixed = format!(
        "{CALLBACK}?code={}&state={}&iss={}",
        query_param(&redirect_b, "code"),
        query_param(&redirect_b, "state"),
        peer_a.issuer
    );
    let (s, _) = callback(&app, &mixed).await;
    assert_eq!(s, 401);
    let (_, users_b) = status_json(
        app.get(&format!("/v1/tenants/{tb}/users"), &app.platform_admin())
            .await,
    )
    .await;
    assert!(!users_b.to_string().contains("alpha.test"), "{users_b}");
    // A tenant's path with another tenant's connection: nothing to start.
    let (s, _) = start(&app, &slug_a, &cb).await;
    assert_eq!(s, 401);

    // Changing A's SSO leaves B's sign-in untouched.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/sso/{ca}"),
            Some(&app.tenant_user("tenant_admin", &a)),
            Some(json!({"enabled": false})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = start(&app, &a, &ca).await;
    assert_eq!(s, 401);
    let (_, url_b) = start(&app, &tb, &cb).await;
    let (s, bob) = callback(&app, &peer_b.login(&url_b.unwrap(), "bob").await).await;
    assert_eq!(s, 200, "{bob}");
    assert_eq!(bob["tenant_id"], tb.as_str());
    // The provider refusing is a clear 401.
    let (_, url_b) = start(&app, &tb, &cb).await;
    let denied = peer_b.deny(&url_b.unwrap()).await;
    let (s, p) = callback(&app, &denied).await;
    assert_eq!((s, p["code"].as_str()), (401, Some("sso_refused")));
}

async fn ldap_signs_in_with_the_tenants_directory_and_syncs_attributes(b: Backend) {
    let peer = LdapPeer::start(&[
        LdapUser {
            uid: "alice",
            password: "alice-ldap-pw",
            mail: "alice@corp.test",
            cn: "Alice Corp",
            groups: &["engineers"],
        },
        LdapUser {
            uid: "carol",
            password: "carol-ldap-pw",
            mail: "carol@corp.test",
            cn: "Carol Corp",
            groups: &[],
        },
    ])
    .await;
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Corp").await;
    let other = app.active_tenant("Other").await;
    let config = |url: &str, tls: &str| {
        json!({
            "url": url, "tls": tls, "ca_pem": peer.ca_pem, "bind_dn": peer.bind_dn,
            "user_base": format!("ou=people,{}", peer.base_dn),
            "group_base": format!("ou=groups,{}", peer.base_dn),
        })
    };
    let conn = connect(
        &app,
        &a,
        json!({"kind": "ldap", "name": "Corp directory", "config": config(&peer.url, "starttls"),
               "secret": peer.bind_password, "role_mapping": {"engineers": ["auditor"]}}),
    )
    .await;
    let grant = |tenant: &str, user: &str, pw: &str| json!({"grant_type": "ldap", "tenant": tenant, "username": user, "password": pw});
    let token = |body: Value| {
        let app = &app;
        async move {
            status_json(
                app.call(Method::POST, "/v1/auth/token", None, Some(body))
                    .await,
            )
            .await
        }
    };
    let (s, alice) = token(grant(&a, "alice", "alice-ldap-pw")).await;
    assert_eq!(s, 200, "{alice}");
    let (_, me) = status_json(
        app.get("/v1/auth/me", alice["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(
        (me["tenant_id"].as_str(), &me["roles"]),
        (Some(a.as_str()), &json!(["auditor"]))
    );
    let (s, carol) = token(grant(&a, "carol", "carol-ldap-pw")).await;
    assert_eq!(s, 200);
    let (_, me) = status_json(
        app.get("/v1/auth/me", carol["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["roles"], json!(["member"]));
    for (user, pw) in [
        ("alice", "wrong"),
        ("alice", ""),
        ("nobody", "x"),
        ("*", "alice-ldap-pw"),
        ("alice)(uid=*", "alice-ldap-pw"),
    ] {
        let (s, p) = token(grant(&a, user, pw)).await;
        assert!(matches!(s, 401 | 422), "{user}/{pw}: {s} {p}");
    }
    // Another tenant has no directory: the same credentials open nothing there.
    let (s, _) = token(grant(&other, "alice", "alice-ldap-pw")).await;
    assert_eq!(s, 401);
    // Attribute sync at each sign-in.
    peer.set_attr("alice", "cn", "Alice Renamed").await;
    let (s, again) = token(grant(&a, "alice", "alice-ldap-pw")).await;
    assert_eq!(s, 200);
    let user = again["user_id"].as_str().unwrap();
    assert_eq!(user, alice["user_id"].as_str().unwrap());
    let (_, m) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/users/{user}"),
            &app.platform_admin(),
        )
        .await,
    )
    .await;
    assert_eq!(m["name"], "Alice Renamed");
    // A suspended member cannot sign in through the directory either.
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/users/{user}"),
            Some(&app.tenant_user("tenant_admin", &a)),
            Some(json!({"status": "suspended"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = token(grant(&a, "alice", "alice-ldap-pw")).await;
    assert_eq!(s, 401);
    // LDAPS, a second connection: the connection must then be named.
    let ldaps = connect(
        &app,
        &a,
        json!({"kind": "ldap", "name": "Corp LDAPS", "config": config(&peer.ldaps_url, "ldaps"),
               "secret": peer.bind_password, "jit": false}),
    )
    .await;
    let (s, _) = token(grant(&a, "carol", "carol-ldap-pw")).await;
    assert_eq!(s, 401, "two directories: which one?");
    let mut g = grant(&a, "carol", "carol-ldap-pw");
    g["connection"] = ldaps["id"].clone();
    let (s, _) = token(g).await;
    assert_eq!(s, 200, "an existing member signs in without JIT");
    // Test connection: ok; with a wrong bind password: not ok, and says so.
    let admin = app.tenant_user("tenant_admin", &a);
    let test = |id: String| {
        let (app, admin, a) = (&app, admin.clone(), a.clone());
        async move {
            status_json(
                app.post(&format!("/v1/tenants/{a}/sso/{id}/test"), &admin, json!({}))
                    .await,
            )
            .await
        }
    };
    let (s, r) = test(conn["id"].as_str().unwrap().to_owned()).await;
    assert_eq!((s, &r["ok"]), (200, &json!(true)), "{r}");
    let (s, _) = status_json(
        app.call(
            Method::PATCH,
            &format!("/v1/tenants/{a}/sso/{}", ldaps["id"].as_str().unwrap()),
            Some(&admin),
            Some(json!({"secret": "not the bind password"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (_, r) = test(ldaps["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(r["ok"], false, "{r}");
}

async fn sso_connections_are_tenant_admin_business_and_keep_their_secrets(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Keep").await;
    let tb = app.active_tenant("Other").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let body = json!({
        "kind": "oidc", "name": "Okta",
        "config": {"issuer": "https://idp.example.test", "client_id": "agentplane"},
        "secret": "very-secret-client-secret",
    });
    let c = connect(&app, &a, body.clone()).await;
    let id = c["id"].as_str().unwrap();
    assert!(!c.to_string().contains("very-secret-client-secret"));
    assert_eq!(c["secret_fingerprint"].as_str().unwrap().len(), 12);
    let (s, list) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/sso"),
            &app.tenant_user("auditor", &a),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert!(!list.to_string().contains("very-secret"));
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/sso"),
            &app.tenant_user("auditor", &a),
            body.clone(),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
    for (m, path) in [
        (Method::GET, format!("/v1/tenants/{a}/sso/{id}")),
        (Method::PATCH, format!("/v1/tenants/{a}/sso/{id}")),
        (
            Method::DELETE,
            format!("/v1/tenants/{a}/sso/{id}?confirm=true"),
        ),
        (Method::GET, format!("/v1/tenants/{tb}/sso/{id}")),
    ] {
        let (s, _) = status_json(
            app.call(
                m.clone(),
                &path,
                Some(&app.tenant_user("tenant_admin", &tb)),
                Some(json!({"enabled": false})),
            )
            .await,
        )
        .await;
        assert_eq!(s, 404, "{m} {path}");
    }
    for bad in [
        json!({"kind": "saml", "name": "x", "config": {}, "secret": "s"}),
        json!({"kind": "oidc", "name": "x", "config": {"client_id": "c"}, "secret": "s"}),
        json!({"kind": "oidc", "name": "x", "config": {"issuer": "ftp://idp", "client_id": "c"}, "secret": "s"}),
        json!({"kind": "ldap", "name": "x", "config": {"url": "ldap://127.0.0.1:1", "tls": "ldaps", "bind_dn": "cn=x", "user_base": "dc=x"}, "secret": "s"}),
        json!({"kind": "ldap", "name": "x", "config": {"url": "ldap://127.0.0.1:1", "bind_dn": "cn=x", "user_base": "dc=x", "user_filter": "(uid=*)"}, "secret": "s"}),
        json!({"kind": "oidc", "name": "x", "config": {"issuer": "https://i.test", "client_id": "c"}, "secret": "s", "role_mapping": {"g": ["platform_admin"]}}),
        json!({"kind": "oidc", "name": "x", "config": {"issuer": "https://i.test", "client_id": "c"}, "secret": "s", "role_mapping": {"g": ["ghost-role"]}}),
    ] {
        let (s, p) = status_json(
            app.post(&format!("/v1/tenants/{a}/sso"), &admin, bad.clone())
                .await,
        )
        .await;
        assert_eq!(s, 422, "{bad} -> {p}");
    }
    let (s, _) = status_json(
        app.post(&format!("/v1/tenants/{a}/sso"), &admin, body)
            .await,
    )
    .await;
    assert_eq!(s, 409, "names are unique per tenant");
    let (_, list) = status_json(app.get(&format!("/v1/tenants/{a}/sso"), &admin).await).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The secret is sealed: the raw database does not hold it.
    let dump = crate::helpers::dump_database(&app.db);
    let needle = b"very-secret-client-secret";
    assert!(!dump.windows(needle.len()).any(|w| w == needle));
    let (s, _) = status_json(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{a}/sso/{id}?confirm=true"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 204);
}

// --- SAML ----------------------------------------------------------------------------------

const ACS: &str = "http://127.0.0.1:8080/v1/auth/sso/saml/acs";
const NS_P: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_A: &str = "urn:oasis:names:tc:SAML:2.0:assertion";

/// An IdP key pair made at test time with the openssl CLI.
fn idp_keys(dir: &std::path::Path, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let st = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    (
        std::fs::read_to_string(key).unwrap(),
        std::fs::read_to_string(cert).unwrap(),
    )
}

fn iso(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

struct Assertion<'a> {
    id: &'a str,
    in_response_to: &'a str,
    issuer: &'a str,
    audience: &'a str,
    email: &'a str,
    groups: &'a [&'a str],
    not_on_or_after: i64,
}

/// A Response whose Assertion is signed by `xmlsec1 --sign` with `key`.
fn signed_response(a: &Assertion, key: &str, cert: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let groups: String = a
        .groups
        .iter()
        .map(|g| format!("<saml:AttributeValue>{g}</saml:AttributeValue>"))
        .collect();
    let sig = format!(
        concat!(
            r#"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>"#,
            r#"<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>"#,
            r#"<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>"#,
            r##"<ds:Reference URI="#{id}"><ds:Transforms>"##,
            r#"<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>"#,
            r#"<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>"#,
            r#"<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>"#,
            r#"<ds:DigestValue/></ds:Reference></ds:SignedInfo><ds:SignatureValue/>"#,
            r#"<ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data></ds:KeyInfo></ds:Signature>"#
        ),
        id = a.id
    );
    let xml = format!(
        concat!(
            r#"<samlp:Response xmlns:samlp="{p}" xmlns:saml="{ns}" ID="_r{id}" Version="2.0" IssueInstant="{ii}" "#,
            r#"Destination="{acs}" InResponseTo="{irt}"><saml:Issuer>{issuer}</saml:Issuer>"#,
            r#"<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>"#,
            r#"<saml:Assertion ID="{id}" Version="2.0" IssueInstant="{ii}"><saml:Issuer>{issuer}</saml:Issuer>{sig}"#,
            r#"<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{email}</saml:NameID>"#,
            r#"<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">"#,
            r#"<saml:SubjectConfirmationData InResponseTo="{irt}" NotOnOrAfter="{noa}" Recipient="{acs}"/>"#,
            r#"</saml:SubjectConfirmation></saml:Subject>"#,
            r#"<saml:Conditions NotBefore="{nb}" NotOnOrAfter="{noa}"><saml:AudienceRestriction>"#,
            r#"<saml:Audience>{aud}</saml:Audience></saml:AudienceRestriction></saml:Conditions>"#,
            r#"<saml:AuthnStatement AuthnInstant="{ii}"><saml:AuthnContext><saml:AuthnContextClassRef>"#,
            r#"urn:oasis:names:tc:SAML:2.0:ac:classes:Password</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>"#,
            r#"<saml:AttributeStatement><saml:Attribute Name="displayName"><saml:AttributeValue>Sam L</saml:AttributeValue></saml:Attribute>"#,
            r#"<saml:Attribute Name="groups">{groups}</saml:Attribute></saml:AttributeStatement>"#,
            r#"</saml:Assertion></samlp:Response>"#
        ),
        p = NS_P,
        ns = NS_A,
        id = a.id,
        ii = iso(now - 5),
        acs = ACS,
        irt = a.in_response_to,
        issuer = a.issuer,
        sig = sig,
        email = a.email,
        noa = iso(a.not_on_or_after),
        nb = iso(now - 60),
        aud = a.audience,
        groups = groups,
    );
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("k.pem"), key).unwrap();
    std::fs::write(p("c.pem"), cert).unwrap();
    std::fs::write(p("in.xml"), xml).unwrap();
    let out = std::process::Command::new("xmlsec1")
        .arg("--sign")
        .arg("--privkey-pem")
        .arg(format!("{},{}", p("k.pem").display(), p("c.pem").display()))
        .args([
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        ])
        .args(["--node-id", a.id, "--output"])
        .arg(p("out.xml"))
        .arg(p("in.xml"))
        .output()
        .expect("xmlsec1 (scripts/install-peers installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(p("out.xml")).unwrap()
}

/// The AuthnRequest's ID and the RelayState of a start redirect.
fn authn_request(location: &str) -> (String, String) {
    use base64::Engine;
    use std::io::Read;
    let param = |k: &str| {
        let raw = query_param(location, k);
        url_decode(&raw)
    };
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(param("SAMLRequest"))
        .unwrap();
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut xml)
        .unwrap();
    let id = xml
        .split("ID=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (id, param("RelayState"))
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

async fn acs(app: &TestApp, xml: &str, relay: &str) -> (u16, Value) {
    use base64::Engine;
    let body = format!(
        "SAMLResponse={}&RelayState={}",
        url_encode(&base64::engine::general_purpose::STANDARD.encode(xml)),
        url_encode(relay)
    );
    let res = app
        .client
        .post(format!("{}/v1/auth/sso/saml/acs", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    status_json(res).await
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn saml_signs_in_with_a_signed_assertion_once_and_never_into_another_tenant(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, cert_a) = idp_keys(dir.path(), "idp-a");
    let (key_b, cert_b) = idp_keys(dir.path(), "idp-b");
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Samla").await;
    let tb = app.active_tenant("Samlb").await;
    let conn = |cert: &str, idp: &str| {
        json!({"kind": "saml", "name": "SAML IdP", "config": {
            "idp_entity_id": idp, "idp_sso_url": format!("{idp}/sso"), "idp_cert_pem": cert,
            "name_attr": "displayName", "groups_attr": "groups"},
            "role_mapping": {"admins": ["tenant_admin"]}})
    };
    let ca = connect(&app, &a, conn(&cert_a, "https://idp-a.test")).await;
    let cb = connect(&app, &tb, conn(&cert_b, "https://idp-b.test")).await;
    let (ca, cb) = (
        ca["id"].as_str().unwrap().to_owned(),
        cb["id"].as_str().unwrap().to_owned(),
    );
    let sp_a = format!("http://127.0.0.1:8080/v1/auth/sso/saml/{ca}");
    // The SP metadata names our ACS and entity id.
    let md = app
        .client
        .get(format!("{}/v1/auth/{a}/sso/{ca}/saml-metadata", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(md.contains(&sp_a) && md.contains(ACS), "{md}");
    let later = time::OffsetDateTime::now_utc().unix_timestamp() + 300;

    // SP-initiated: start, the IdP answers with a signed assertion for that request.
    let (s, loc) = start(&app, &a, &ca).await;
    assert_eq!(s, 303);
    let loc = loc.unwrap();
    assert!(
        loc.starts_with("https://idp-a.test/sso?SAMLRequest="),
        "{loc}"
    );
    let (request, relay) = authn_request(&loc);
    let good = Assertion {
        id: "_a1",
        in_response_to: &request,
        issuer: "https://idp-a.test",
        audience: &sp_a,
        email: "sam@samla.test",
        groups: &["admins"],
        not_on_or_after: later,
    };
    let xml = signed_response(&good, &key_a, &cert_a);
    let (s, tokens) = acs(&app, &xml, &relay).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["tenant_id"], a.as_str());
    let (_, me) = status_json(
        app.get("/v1/auth/me", tokens["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["roles"], json!(["tenant_admin"]));
    // The same post again: the sign-in was used.
    let (s, _) = acs(&app, &xml, &relay).await;
    assert_eq!(s, 401);
    // A new sign-in, answered with the same assertion id (re-signed for the new request):
    // a replay.
    let (_, loc) = start(&app, &a, &ca).await;
    let (request2, relay2) = authn_request(&loc.unwrap());
    let replay = signed_response(
        &Assertion {
            in_response_to: &request2,
            ..good
        },
        &key_a,
        &cert_a,
    );
    let (s, _) = acs(&app, &replay, &relay2).await;
    assert_eq!(s, 401, "a consumed assertion id is refused");
    // Each attack on a fresh sign-in: wrong audience, expired, wrong issuer, another key.
    type Attack<'a> = (&'a str, Box<dyn Fn(&str) -> String + 'a>);
    let attacks: Vec<Attack> = vec![
        (
            "wrong audience",
            Box::new(|r: &str| {
                signed_response(
                    &Assertion {
                        id: "_a2",
                        in_response_to: r,
                        audience: "https://other-sp.test",
                        ..good
                    },
                    &key_a,
                    &cert_a,
                )
            }),
        ),
        (
            "expired",
            Box::new(|r: &str| {
                signed_response(
                    &Assertion {
                        id: "_a3",
                        in_response_to: r,
                        not_on_or_after: later - 1000,
                        ..good
                    },
                    &key_a,
                    &cert_a,
                )
            }),
        ),
        (
            "wrong issuer",
            Box::new(|r: &str| {
                signed_response(
                    &Assertion {
                        id: "_a4",
                        in_response_to: r,
                        issuer: "https://idp-b.test",
                        ..good
                    },
                    &key_a,
                    &cert_a,
                )
            }),
        ),
        (
            "tenant B's IdP key",
            Box::new(|r: &str| {
                signed_response(
                    &Assertion {
                        id: "_a5",
                        in_response_to: r,
                        ..good
                    },
                    &key_b,
                    &cert_b,
                )
            }),
        ),
        (
            "tampered after signing",
            Box::new(|r: &str| {
                signed_response(
                    &Assertion {
                        id: "_a6",
                        in_response_to: r,
                        ..good
                    },
                    &key_a,
                    &cert_a,
                )
                .replace("sam@samla.test", "boss@samla.test")
            }),
        ),
    ];
    for (what, make) in attacks {
        let (_, loc) = start(&app, &a, &ca).await;
        let (req, relay) = authn_request(&loc.unwrap());
        let (s, p) = acs(&app, &make(&req), &relay).await;
        assert_eq!(s, 401, "{what}: {p}");
    }
    // Tenant A's IdP cannot sign anyone into B: B checks B's certificate only.
    let (_, loc) = start(&app, &tb, &cb).await;
    let (req_b, relay_b) = authn_request(&loc.unwrap());
    let sp_b = format!("http://127.0.0.1:8080/v1/auth/sso/saml/{cb}");
    let forged = signed_response(
        &Assertion {
            id: "_b1",
            in_response_to: &req_b,
            issuer: "https://idp-b.test",
            audience: &sp_b,
            ..good
        },
        &key_a,
        &cert_a,
    );
    let (s, _) = acs(&app, &forged, &relay_b).await;
    assert_eq!(s, 401);
    let (_, users_b) = status_json(
        app.get(&format!("/v1/tenants/{tb}/users"), &app.platform_admin())
            .await,
    )
    .await;
    assert!(!users_b.to_string().contains("samla.test"));
    // Unsolicited (IdP-initiated) responses have no sign-in to belong to.
    let (s, _) = acs(&app, &xml, "no-such-relay-state").await;
    assert_eq!(s, 401);
    let (_, events) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/audit?action=session.sign_in_failed"),
            &app.platform_admin(),
        )
        .await,
    )
    .await;
    assert!(events["items"].as_array().unwrap().len() >= 6, "{events}");
}
