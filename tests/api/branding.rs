//! Branding: validated fields, a custom domain unique across tenants, logos stored under the
//! tenant's object prefix and served safely, and nothing of it crossing to another tenant.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::json;

both_backends!(
    branding_fields_are_validated_audited_and_tenant_scoped,
    logos_are_sniffed_stored_per_tenant_and_purged
);

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR-acme-logo";
const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0-zeta";

async fn put_branding(
    app: &TestApp,
    t: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    status_json(
        app.call(
            Method::PUT,
            &format!("/v1/tenants/{t}/branding"),
            Some(token),
            Some(body),
        )
        .await,
    )
    .await
}

async fn upload(
    app: &TestApp,
    t: &str,
    token: &str,
    ct: &str,
    bytes: &[u8],
) -> (u16, serde_json::Value) {
    let r = app
        .client
        .put(format!("{}/v1/tenants/{t}/branding/logo", app.base))
        .bearer_auth(token)
        .header("content-type", ct)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    status_json(r).await
}

async fn branding_fields_are_validated_audited_and_tenant_scoped(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let z = app.active_tenant("Zeta").await;
    let (admin_a, admin_z) = (
        app.tenant_user("tenant_admin", &a),
        app.tenant_user("tenant_admin", &z),
    );
    let (s, empty) = status_json(
        app.get(&format!("/v1/tenants/{a}/branding"), &admin_a)
            .await,
    )
    .await;
    assert_eq!((s, empty["version"].as_i64()), (200, Some(0)));

    let (s, br) = put_branding(&app, &a, &admin_a, json!({"product_name": "Acme AI", "primary_color": "#FF0066", "custom_domain": "AI.Acme.example"})).await;
    assert_eq!(s, 200, "{br}");
    assert_eq!(
        (
            br["primary_color"].as_str(),
            br["custom_domain"].as_str(),
            br["version"].as_i64()
        ),
        (Some("#ff0066"), Some("ai.acme.example"), Some(1))
    );
    // Another tenant cannot claim the domain, and gets nothing else changed.
    let (s, p) = put_branding(
        &app,
        &z,
        &admin_z,
        json!({"product_name": "Zeta", "custom_domain": "ai.acme.example"}),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("domain_taken")));
    let (_, zb) = status_json(
        app.get(&format!("/v1/tenants/{z}/branding"), &admin_z)
            .await,
    )
    .await;
    assert_eq!(zb["version"], 0);
    // Invalid values are refused whole.
    for bad in [
        json!({"primary_color": "red"}),
        json!({"custom_domain": "localhost"}),
        json!({"product_name": ""}),
        json!({"logo": "x"}),
    ] {
        let (s, _) = put_branding(&app, &a, &admin_a, bad.clone()).await;
        assert_eq!(s, 422, "{bad}");
    }
    // Absent fields stay, null clears.
    let (_, br) = put_branding(
        &app,
        &a,
        &admin_a,
        json!({"custom_domain": null, "accent_color": "#00AA00"}),
    )
    .await;
    assert_eq!(
        (
            br["product_name"].as_str(),
            br["custom_domain"].as_str(),
            br["accent_color"].as_str()
        ),
        (Some("Acme AI"), None, Some("#00aa00"))
    );
    // The freed domain can now be claimed.
    let (s, _) = put_branding(
        &app,
        &z,
        &admin_z,
        json!({"custom_domain": "ai.acme.example"}),
    )
    .await;
    assert_eq!(s, 200);

    let member = app.tenant_user("member", &a);
    let (s, seen) = status_json(app.get(&format!("/v1/tenants/{a}/branding"), &member).await).await;
    assert_eq!(
        (s, seen["product_name"].as_str()),
        (200, Some("Acme AI")),
        "members see their tenant's branding"
    );
    let (s, _) = put_branding(&app, &a, &member, json!({"product_name": "Hijack"})).await;
    assert_eq!(s, 403);
    let (s, _) = status_json(
        app.get(&format!("/v1/tenants/{a}/branding"), &admin_z)
            .await,
    )
    .await;
    assert_eq!(s, 404, "another tenant's branding is invisible");

    let (_, trail) = status_json(
        app.get(
            &format!("/v1/tenants/{a}/audit?action=branding.update"),
            &admin_a,
        )
        .await,
    )
    .await;
    assert_eq!(
        trail["items"].as_array().unwrap().len(),
        2,
        "two accepted changes, nothing for the refused ones"
    );
}

async fn logos_are_sniffed_stored_per_tenant_and_purged(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Acme").await;
    let z = app.active_tenant("Zeta").await;
    let (admin_a, admin_z) = (
        app.tenant_user("tenant_admin", &a),
        app.tenant_user("tenant_admin", &z),
    );

    let (s, br) = upload(&app, &a, &admin_a, "image/png", PNG).await;
    assert_eq!(
        (
            s,
            br["logo"]["content_type"].as_str(),
            br["logo"]["size"].as_u64()
        ),
        (200, Some("image/png"), Some(PNG.len() as u64))
    );
    let (s, _) = upload(&app, &z, &admin_z, "image/jpeg", JPEG).await;
    assert_eq!(s, 200);
    for (ct, bytes, why) in [
        (
            "image/svg+xml",
            &b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"[..],
            "svg",
        ),
        ("image/jpeg", PNG, "declared type differs from the bytes"),
        ("image/png", &b"not an image at all"[..], "not an image"),
        ("image/png", &b""[..], "empty"),
    ] {
        let (s, p) = upload(&app, &a, &admin_a, ct, bytes).await;
        assert_eq!((s, p["field"].as_str()), (422, Some("logo")), "{why}");
    }
    let mut big = PNG.to_vec();
    big.resize(256 * 1024 + 1, 0);
    assert_eq!(upload(&app, &a, &admin_a, "image/png", &big).await.0, 413);

    let res = app
        .get(&format!("/v1/tenants/{a}/branding/logo"), &admin_a)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        PNG,
        "the refused uploads changed nothing"
    );
    let zeta_logo = app
        .get(&format!("/v1/tenants/{z}/branding/logo"), &admin_z)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(zeta_logo.as_ref(), JPEG);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/branding/logo"), &admin_z)
            .await
            .status(),
        404
    );

    // Objects live under the tenant's prefix; replacing a logo removes the old object.
    let objects = app.db.dir.path().join("objects/tenants");
    let files = |t: &str| {
        std::fs::read_dir(objects.join(t).join("branding"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!((files(&a), files(&z)), (1, 1));
    let (s, _) = upload(&app, &a, &admin_a, "image/jpeg", JPEG).await;
    assert_eq!(s, 200);
    assert_eq!(files(&a), 1, "the replaced logo's object is gone");
    let (s, br) = status_json(
        app.call(
            Method::DELETE,
            &format!("/v1/tenants/{a}/branding/logo"),
            Some(&admin_a),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, br["logo"].is_null()), (200, true));
    assert_eq!(files(&a), 0);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/branding/logo"), &admin_a)
            .await
            .status(),
        404
    );

    // Purging a tenant removes its objects (and only its).
    let op = app.platform_admin();
    app.call(
        Method::DELETE,
        &format!("/v1/admin/tenants/{z}?confirm=true"),
        Some(&op),
        None,
    )
    .await;
    app.call(
        Method::POST,
        &format!("/v1/admin/tenants/{z}/purge?confirm=true"),
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
    assert!(!objects.join(&z).join("branding").exists() || files(&z) == 0);
    let platform = agentplane_core::authz::PlatformCtx::for_system("t");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, &z, 0, 100)
        .await
        .unwrap();
    let purge = &events.last().unwrap().0;
    assert_eq!(
        (
            purge.action.as_str(),
            purge.data["objects"].as_u64(),
            purge.data["branding"].as_u64()
        ),
        ("tenant.purge", Some(1), Some(1))
    );
}
