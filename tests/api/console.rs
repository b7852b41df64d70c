//! The web console's shell applies each tenant's branding, and only its own.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use serde_json::json;

both_backends!(the_console_shows_each_tenants_branding_and_never_another_tenants);

async fn page(app: &TestApp, path: &str, host: Option<&str>) -> (u16, String, Option<String>) {
    let mut req = app.client.get(format!("{}{path}", app.base));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let res = req.send().await.unwrap();
    let csp = res
        .headers()
        .get("content-security-policy")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), res.text().await.unwrap(), csp)
}

async fn the_console_shows_each_tenants_branding_and_never_another_tenants(b: Backend) {
    let app = TestApp::spawn_with(b, |env| {
        env.insert("AGENTPLANE_BASE_DOMAIN".into(), "agentplane.test".into());
    })
    .await;
    let mut tenants = Vec::new();
    for (name, product, colour, domain) in [
        ("Acme", "Acme <AI> & Co", "#ff0000", "ai.acme.test"),
        ("Globex", "Globex Assist", "#00ff00", "assist.globex.test"),
    ] {
        let id = app.active_tenant(name).await;
        let admin = app.tenant_user("tenant_admin", &id);
        let res = app
            .call(
                reqwest::Method::PUT,
                &format!("/v1/tenants/{id}/branding"),
                Some(&admin),
                Some(json!({"product_name": product, "primary_color": colour, "custom_domain": domain})),
            )
            .await;
        let (s, body) = status_json(res).await;
        assert_eq!(s, 200, "{body}");
        let res = app
            .client
            .put(format!("{}/v1/tenants/{id}/branding/logo", app.base))
            .bearer_auth(&admin)
            .header("content-type", "image/png")
            .body([&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..], name.as_bytes()].concat())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        let (_, t) = status_json(app.get(&format!("/v1/tenants/{id}"), &admin).await).await;
        tenants.push((id, t["slug"].as_str().unwrap().to_owned(), domain));
    }
    let (acme, globex) = (&tenants[0], &tenants[1]);

    // By path, by custom domain and by subdomain: the same tenant's page, escaped, with a
    // strict CSP; nothing of the other tenant.
    for (path, host) in [
        (format!("/console/{}", acme.1), None),
        ("/console".to_owned(), Some(acme.2.to_owned())),
        (
            "/console".to_owned(),
            Some(format!("{}.agentplane.test", acme.1)),
        ),
    ] {
        let (s, html, csp) = page(&app, &path, host.as_deref()).await;
        assert_eq!(s, 200, "{path} {host:?}: {html}");
        assert!(
            html.contains("<title>Acme &lt;AI&gt; &amp; Co</title>"),
            "{html}"
        );
        assert!(!html.contains("<AI>"), "the product name is escaped");
        assert!(html.contains("--primary: #ff0000"));
        assert!(html.contains(&format!("/console/{}/logo", acme.1)));
        assert!(!html.contains("Globex") && !html.contains("#00ff00"));
        assert!(csp.unwrap().contains("script-src 'self'"));
    }
    let (s, html, _) = page(&app, "/console", Some(globex.2)).await;
    assert_eq!(s, 200);
    assert!(html.contains("Globex Assist") && !html.contains("Acme"));

    // Host and path naming different tenants, an unknown tenant, no tenant at all: not found.
    for (path, host) in [
        (format!("/console/{}", globex.1), Some(acme.2)),
        ("/console/no-such-tenant".to_owned(), None),
        ("/console".to_owned(), Some("elsewhere.test")),
    ] {
        let (s, html, _) = page(&app, &path, host).await;
        assert_eq!(s, 404, "{path} {host:?}");
        assert!(!html.contains("Acme") && !html.contains("Globex"));
    }

    // Each console's logo is its own tenant's.
    for (t, name) in [(acme, "Acme"), (globex, "Globex")] {
        let res = app
            .client
            .get(format!("{}/console/{}/logo", app.base, t.1))
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["content-type"], "image/png");
        let bytes = res.bytes().await.unwrap();
        assert!(bytes.ends_with(name.as_bytes()));
    }

    // A suspended tenant's console is not shown.
    let res = app
        .post(
            &format!("/v1/admin/tenants/{}/suspend?confirm=true", globex.0),
            &app.platform_admin(),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let (s, _, _) = page(&app, "/console", Some(globex.2)).await;
    assert_eq!(s, 404);
    // The script the page loads is served.
    let (s, js, _) = page(&app, "/console/app.js", None).await;
    assert_eq!(s, 200);
    assert!(js.contains("/v1/auth/"));
}
