//! Bad input: every malformed body, path, query and header gets a clear problem+json (never
//! a 5xx) and changes nothing; concurrent lifecycle calls leave a consistent tenant.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use agentplane_core::action::{ActionSpec, Scope, REGISTRY};
use agentplane_core::authz::{role_grants, PlatformCtx, Role};
use agentplane_core::page::PageRequest;
use agentplane_core::plan::Plan;
use agentplane_core::tenant::Tenant;
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    malformed_and_mistyped_bodies_are_refused,
    wrong_content_type_is_415,
    deeply_nested_json_is_refused,
    oversized_bodies_are_413,
    configured_body_limit_is_enforced,
    hostile_strings_are_refused,
    non_utf8_bodies_are_refused,
    malformed_tenant_ids_in_the_path_look_like_a_missing_tenant,
    bad_query_parameters_are_refused,
    query_strings_with_nul_and_foreign_cursors_are_refused,
    huge_authorization_header_is_401,
    bad_idempotency_keys_are_refused,
    unknown_routes_and_methods_are_problems,
    concurrent_suspend_and_reactivate_stay_consistent,
);

// --- helpers ---------------------------------------------------------------------------

/// Everything a refused request must leave as it was: every tenant row and every plan.
#[derive(Debug, PartialEq)]
struct State {
    tenants: Vec<Tenant>,
    plans: Vec<Plan>,
}

async fn state(app: &TestApp) -> State {
    let store = app.control.store();
    let tenants = store
        .list_tenants(&PlatformCtx::for_system("test"), &PageRequest::first(500))
        .await
        .unwrap()
        .items;
    let plans = store
        .list_plans(&PageRequest::first(500))
        .await
        .unwrap()
        .items;
    State { tenants, plans }
}

async fn chain_len(app: &TestApp, tenant: &str) -> usize {
    app.control
        .store()
        .audit_chain_page(&PlatformCtx::for_system("test"), tenant, 0, 1000)
        .await
        .unwrap()
        .len()
}

/// Sends `body` verbatim with the given content type (none when `None`).
async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(token)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    status_json(req.send().await.unwrap()).await
}

async fn send_json(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    send_raw(app, method, path, token, Some("application/json"), body).await
}

fn method(m: agentplane_core::action::Method) -> Method {
    Method::from_bytes(m.as_str().as_bytes()).unwrap()
}

fn plan_body(id: &str) -> Value {
    json!({"id": id, "name": "Input plan",
           "limits": {"monthly_messages": 1, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}})
}

/// The routes that take a JSON body, with a body each accepts.
fn body_routes(tenant: &str) -> Vec<(Method, String, Value)> {
    vec![
        (
            Method::POST,
            "/v1/tenants".to_owned(),
            json!({"name": "Fine", "admin_email": "a@fine.test"}),
        ),
        (
            Method::POST,
            "/v1/admin/plans".to_owned(),
            plan_body("fine"),
        ),
        (
            Method::PATCH,
            format!("/v1/admin/tenants/{tenant}/plan"),
            json!({"plan_id": "pro"}),
        ),
        (
            Method::POST,
            format!("/v1/admin/tenants/{tenant}/suspend?confirm=true"),
            json!({"reason": "fine"}),
        ),
    ]
}

// --- bodies ----------------------------------------------------------------------------

async fn malformed_and_mistyped_bodies_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Bodies").await;
    let before = state(&app).await;
    let trail = chain_len(&app, &a).await;

    let tenants = "/v1/tenants";
    let plans = "/v1/admin/plans";
    let plan = format!("/v1/admin/tenants/{a}/plan");
    let suspend = format!("/v1/admin/tenants/{a}/suspend?confirm=true");
    let limits = r#""limits": {"monthly_messages": 1, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}"#;
    let cases: Vec<(Method, &str, String, u16, &str)> = vec![
        // Syntax.
        (Method::POST, tenants, r#"{"name":"#.into(), 400, "malformed_json"),
        (Method::POST, tenants, "{".into(), 400, "malformed_json"),
        (Method::POST, tenants, "".into(), 400, "malformed_json"),
        (Method::POST, tenants, r#"{"name": "A", "admin_email": "a@b.test",}"#.into(), 400, "malformed_json"),
        (Method::POST, tenants, r#"{'name': 'A'}"#.into(), 400, "malformed_json"),
        (Method::POST, tenants, r#"{"name": "A", "admin_email": "a@b.test"} trailing"#.into(), 400, "malformed_json"),
        (Method::POST, plans, r#"{"id":"#.into(), 400, "malformed_json"),
        (Method::PATCH, &plan, r#"{"plan_id":"#.into(), 400, "malformed_json"),
        (Method::POST, &suspend, r#"{"reason":"#.into(), 400, "malformed_json"),
        // Wrong types and shapes.
        (Method::POST, tenants, r#"{"name": 5, "admin_email": "a@b.test"}"#.into(), 422, "validation_failed"),
        (Method::POST, tenants, r#"{"name": ["A"], "admin_email": "a@b.test"}"#.into(), 422, "validation_failed"),
        (Method::POST, tenants, r#"{"name": "A", "admin_email": null}"#.into(), 422, "validation_failed"),
        (Method::POST, tenants, r#"[{"name": "A", "admin_email": "a@b.test"}]"#.into(), 422, "validation_failed"),
        (Method::POST, tenants, "null".into(), 422, "validation_failed"),
        (Method::POST, tenants, "42".into(), 422, "validation_failed"),
        (Method::POST, tenants, r#""a string""#.into(), 422, "validation_failed"),
        (Method::POST, tenants, "{}".into(), 422, "validation_failed"),
        (Method::POST, plans, format!(r#"{{"id": 7, "name": "X", {limits}}}"#), 422, "validation_failed"),
        (Method::POST, plans, r#"{"id": "x", "name": "X", "limits": "lots"}"#.into(), 422, "validation_failed"),
        (Method::POST, plans, r#"{"id": "x", "name": "X", "limits": {"monthly_messages": 1e300, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}}"#.into(), 422, "validation_failed"),
        (Method::POST, plans, r#"{"id": "x", "name": "X", "limits": {"monthly_messages": 18446744073709551616, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}}"#.into(), 422, "validation_failed"),
        (Method::POST, plans, r#"{"id": "x", "name": "X", "limits": {"monthly_messages": -1, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1}}"#.into(), 422, "validation_failed"),
        (Method::POST, plans, format!(r#"{{"id": "x", "name": "X", "features": "sso", {limits}}}"#), 422, "validation_failed"),
        (Method::POST, plans, "[]".into(), 422, "validation_failed"),
        (Method::PATCH, &plan, r#"{"plan_id": 1}"#.into(), 422, "validation_failed"),
        (Method::PATCH, &plan, r#"{"plan_id": null}"#.into(), 422, "validation_failed"),
        (Method::PATCH, &plan, r#"["pro"]"#.into(), 422, "validation_failed"),
        (Method::PATCH, &plan, "{}".into(), 422, "validation_failed"),
        (Method::POST, &suspend, r#"{"reason": 5}"#.into(), 422, "validation_failed"),
        (Method::POST, &suspend, r#"["unpaid"]"#.into(), 422, "validation_failed"),
        // Positional arrays in place of objects (serde would read them as structs).
        (Method::POST, tenants, r#"["Arr", "arr@b.test", null, null, null]"#.into(), 422, "validation_failed"),
        (Method::POST, plans, r#"["arr", "Arr", [1, 1, 1, 1]]"#.into(), 422, "validation_failed"),
        (Method::POST, plans, r#"{"id": "arr", "name": "Arr", "limits": [1, 1, 1, 1]}"#.into(), 422, "validation_failed"),
        // Unknown fields (a typo must not be silently dropped).
        (Method::POST, tenants, r#"{"name": "A", "admin_email": "a@b.test", "plan": "pro"}"#.into(), 422, "validation_failed"),
        (Method::POST, plans, format!(r#"{{"id": "x", "name": "X", "feature": ["sso"], {limits}}}"#), 422, "validation_failed"),
        (Method::POST, plans, r#"{"id": "x", "name": "X", "limits": {"monthly_messages": 1, "monthly_tokens": 1, "requests_per_minute": 1, "max_concurrent_runs": 1, "max_agents": 5}}"#.into(), 422, "validation_failed"),
        (Method::PATCH, &plan, r#"{"plan_id": "pro", "effective": "now"}"#.into(), 422, "validation_failed"),
        (Method::POST, &suspend, r#"{"reason": "x", "notify": true}"#.into(), 422, "validation_failed"),
    ];
    for (m, path, body, status, code) in cases {
        let (s, p) = send_json(&app, m.clone(), path, &admin, body.clone()).await;
        assert_eq!(
            (s, p["code"].as_str()),
            (status, Some(code)),
            "{m} {path} {body:?}: {p}"
        );
        assert!(
            p["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "a clear detail: {p}"
        );
    }
    // Nothing changed: no tenant, no plan, A still active on its plan, no trail entry.
    assert_eq!(state(&app).await, before);
    assert_eq!(chain_len(&app, &a).await, trail);
    // The control: the same routes accept a good body.
    for (m, path, body) in body_routes(&a) {
        let (s, p) = send_json(&app, m.clone(), &path, &admin, body.to_string()).await;
        assert!((200..300).contains(&s), "{m} {path}: {s} {p}");
    }
}

async fn wrong_content_type_is_415(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Types").await;
    let before = state(&app).await;
    for (m, path, body) in body_routes(&a) {
        // The suspend body is optional; the others need JSON.
        if path.contains("/suspend") {
            continue;
        }
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            Some("applicationjson"),
            None,
        ] {
            let (s, p) = send_raw(&app, m.clone(), &path, &admin, ct, body.to_string()).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (415, Some("unsupported_media_type")),
                "{m} {path} as {ct:?}"
            );
        }
        // JSON with parameters or a +json suffix is JSON.
        let (s, _) = send_raw(
            &app,
            m.clone(),
            &path,
            &admin,
            Some("application/json; charset=utf-8"),
            // A body that passes media-type checks and then fails validation, so nothing
            // is created either way.
            "{\"unknown_field\": 1}",
        )
        .await;
        assert_eq!(s, 422, "{m} {path}");
    }
    let (s, p) = send_raw(
        &app,
        Method::POST,
        "/v1/tenants",
        &admin,
        None,
        Vec::<u8>::new(),
    )
    .await;
    assert!(
        matches!(
            (s, p["code"].as_str()),
            (415, Some("unsupported_media_type")) | (400, _)
        ),
        "an empty POST /v1/tenants without a type: {s} {p}"
    );
    assert_eq!(state(&app).await, before);
}

async fn deeply_nested_json_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Nested").await;
    let before = state(&app).await;
    let arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    // Deep inside an otherwise valid body.
    let inside = format!(
        r#"{{"name": "Deep", "admin_email": "a@b.test", "slug": {}"x"{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    for (m, path, _) in body_routes(&a) {
        for body in [&arrays, &objects, &inside] {
            let (s, p) = send_json(&app, m.clone(), &path, &admin, body.clone()).await;
            assert!(
                s == 400 || s == 422,
                "{m} {path}: {s} {p} (body of {} bytes)",
                body.len()
            );
        }
    }
    assert_eq!(state(&app).await, before);
}

/// An oversized request over a plain TCP connection. The server stops reading a body once it
/// is over the limit and closes the connection; bytes a client is still sending then meet a
/// reset that can make an HTTP client lose the 413. So the head declares the whole body
/// (`Content-Length`, or a chunk of that size) but only `limit + 1` bytes are sent: exactly
/// what the server must read before it refuses, so the exchange is deterministic.
async fn oversized(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: &str,
    declared: usize,
    limit: usize,
    chunked: bool,
) -> (u16, Value) {
    let addr = app.base.trim_start_matches("http://").to_owned();
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {declared}")
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    if chunked {
        request.extend(format!("{declared:x}\r\n").as_bytes());
    }
    // The start of a JSON document that would go on for `declared` bytes.
    request.extend(b"{\"name\": \"");
    request.resize(request.len() + limit + 1 - 10, b'x');
    let response = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        // A guard against a hang, not a timing assertion.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let w = std::thread::spawn(move || {
            let _ = writer.write_all(&request);
        });
        let mut out = Vec::new();
        // Bytes read before an error are kept; the server closes after answering.
        let _ = stream.read_to_end(&mut out);
        let _ = w.join();
        out
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete answer to {method} {path}: {text:?}"));
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned());
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{status} {body}"
    );
    assert_eq!(body["status"], status);
    assert!(status < 500, "{status} {body}");
    (status, body)
}

async fn oversized_bodies_are_413(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Large").await;
    let before = state(&app).await;
    let limit = 1024 * 1024;
    // 2 MiB bodies, declared by length or sent chunked: refused for their size.
    for (m, path, _) in body_routes(&a) {
        for chunked in [false, true] {
            let (s, p) = oversized(&app, &m, &path, &admin, 2 * 1024 * 1024, limit, chunked).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (413, Some("payload_too_large")),
                "{m} {path} chunked={chunked}: {p}"
            );
        }
    }
    // Just under the default limit of 1 MiB: read, and refused for its content.
    let under = format!(
        r#"{{"name": "Big", "admin_email": "a@b.test", "slug": "{}"}}"#,
        "x".repeat(limit - 100)
    );
    let (s, p) = send_json(&app, Method::POST, "/v1/tenants", &admin, under).await;
    assert_eq!(
        (s, p["code"].as_str(), p["field"].as_str()),
        (422, Some("validation_failed"), Some("slug"))
    );
    assert_eq!(state(&app).await, before);
}

async fn configured_body_limit_is_enforced(b: Backend) {
    let app = TestApp::spawn_with(b, |env| {
        env.insert("AGENTPLANE_MAX_BODY_BYTES".into(), "4096".into());
    })
    .await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Limited").await;
    let before = state(&app).await;
    for (m, path, _) in body_routes(&a) {
        for chunked in [false, true] {
            let (s, p) = oversized(&app, &m, &path, &admin, 5 * 1024, 4096, chunked).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (413, Some("payload_too_large")),
                "{m} {path} chunked={chunked}: {p}"
            );
        }
    }
    assert_eq!(state(&app).await, before);
    // A body just under the limit is read and accepted.
    let small = json!({"name": "Small", "admin_email": "a@small.test", "slug": format!("s{}", "x".repeat(30))});
    let padded = format!("{small}{}", " ".repeat(4000 - small.to_string().len()));
    assert_eq!(padded.len(), 4000);
    let (s, p) = send_json(&app, Method::POST, "/v1/tenants", &admin, padded).await;
    assert_eq!(s, 202, "a small body is accepted: {p}");
}

// --- strings ---------------------------------------------------------------------------

async fn hostile_strings_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Strings").await;
    let before = state(&app).await;
    let long = "n".repeat(10_000);
    let tenant = |extra: Value| {
        let mut v = json!({"name": "Fine", "admin_email": "a@fine.test"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/tenants", tenant(json!({"name": "a\u{0}b"})), "name"),
        ("/v1/tenants", tenant(json!({"name": "\u{0}"})), "name"),
        ("/v1/tenants", tenant(json!({"name": "bell\u{7}"})), "name"),
        ("/v1/tenants", tenant(json!({"name": "new\nline"})), "name"),
        (
            "/v1/tenants",
            tenant(json!({"name": "esc\u{1b}[31m"})),
            "name",
        ),
        ("/v1/tenants", tenant(json!({"name": "del\u{7f}"})), "name"),
        ("/v1/tenants", tenant(json!({"name": "c1\u{85}x"})), "name"),
        ("/v1/tenants", tenant(json!({"name": long})), "name"),
        ("/v1/tenants", tenant(json!({"name": "   "})), "name"),
        (
            "/v1/tenants",
            tenant(json!({"admin_email": "a\u{0}@b.test"})),
            "email",
        ),
        (
            "/v1/tenants",
            tenant(json!({"admin_email": format!("{long}@b.test")})),
            "email",
        ),
        ("/v1/tenants", tenant(json!({"slug": "ab\u{0}c"})), "slug"),
        ("/v1/tenants", tenant(json!({"slug": long})), "slug"),
        ("/v1/tenants", tenant(json!({"slug": "../../etc"})), "slug"),
        (
            "/v1/tenants",
            tenant(json!({"region": "eu\u{0}"})),
            "region",
        ),
        ("/v1/tenants", tenant(json!({"region": long})), "region"),
        (
            "/v1/tenants",
            tenant(json!({"plan_id": "pro\u{0}"})),
            "plan_id",
        ),
        ("/v1/tenants", tenant(json!({"plan_id": long})), "plan_id"),
        (
            "/v1/admin/plans",
            json!({"id": "p\u{0}", "name": "X", "limits": plan_body("x")["limits"]}),
            "plan_id",
        ),
        (
            "/v1/admin/plans",
            json!({"id": "ok", "name": "X\u{0}", "limits": plan_body("x")["limits"]}),
            "name",
        ),
        (
            "/v1/admin/plans",
            json!({"id": "ok", "name": long, "limits": plan_body("x")["limits"]}),
            "name",
        ),
        (
            "/v1/admin/plans",
            json!({"id": "ok", "name": "X", "features": ["a\u{0}"], "limits": plan_body("x")["limits"]}),
            "features",
        ),
    ];
    for (path, body, field) in cases {
        let (s, p) = status_json(app.post(path, &admin, body.clone()).await).await;
        assert_eq!(
            (s, p["code"].as_str(), p["field"].as_str()),
            (422, Some("validation_failed"), Some(field)),
            "{path} {body}"
        );
    }
    let plan = format!("/v1/admin/tenants/{a}/plan");
    for id in ["pro\u{0}", long.as_str(), "../free"] {
        let (s, p) = status_json(
            app.call(
                Method::PATCH,
                &plan,
                Some(&admin),
                Some(json!({"plan_id": id})),
            )
            .await,
        )
        .await;
        assert_eq!((s, p["field"].as_str()), (422, Some("plan_id")));
    }
    assert_eq!(state(&app).await, before, "refused strings changed nothing");

    // A suspension reason is free text: control characters and NUL are either refused or
    // stored and read back intact; never a server error.
    let suspend = format!("/v1/admin/tenants/{a}/suspend?confirm=true");
    let reason = "unpaid\u{0}\u{7}\n\u{1b}[2J";
    let (s, p) = status_json(app.post(&suspend, &admin, json!({"reason": reason})).await).await;
    match s {
        422 => assert_eq!(state(&app).await, before),
        200 => {
            assert_eq!(p["status"], "suspended");
            let (s, trail) = status_json(
                app.get(
                    &format!("/v1/tenants/{a}/audit?action=tenant.suspend"),
                    &admin,
                )
                .await,
            )
            .await;
            assert_eq!(s, 200);
            assert_eq!(trail["items"][0]["data"]["reason"], reason);
        }
        _ => panic!("suspend with a control-character reason: {s} {p}"),
    }
}

async fn non_utf8_bodies_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Bytes").await;
    let before = state(&app).await;
    // Each route gets its own field, so the bytes are the only thing wrong.
    let fields = ["name", "name", "plan_id", "reason"];
    let values: [&[u8]; 6] = [
        b"\xff\xfe",
        b"A\xc3",
        // Overlong encoding of '/', and a UTF-16 surrogate encoded in UTF-8.
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        // A lone surrogate as a JSON escape.
        b"\\ud800",
        // A raw NUL byte (control characters must be escaped in JSON strings).
        b"A\x00",
    ];
    for ((m, path, _), field) in body_routes(&a).into_iter().zip(fields) {
        let mut bodies: Vec<Vec<u8>> = values
            .iter()
            .map(|v| [format!("{{\"{field}\": \"").as_bytes(), v, b"\"}"].concat())
            .collect();
        // UTF-16 with a BOM, and NUL bytes alone.
        bodies.push(b"\xff\xfe{\x00}\x00".to_vec());
        bodies.push(b"\x00\x00\x00\x00".to_vec());
        for body in bodies {
            let (s, p) = send_json(&app, m.clone(), &path, &admin, body.clone()).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (400, Some("malformed_json")),
                "{m} {path} {}: {p}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    assert_eq!(state(&app).await, before);
}

// --- paths -----------------------------------------------------------------------------

async fn malformed_tenant_ids_in_the_path_look_like_a_missing_tenant(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Paths").await;
    let tadmin = app.tenant_user("tenant_admin", &a);
    let star = app.token(json!({"sub": "star", "roles": ["tenant_admin"], "tenant_ids": ["*"]}));
    let before = state(&app).await;
    let trail = chain_len(&app, &a).await;
    let long = "a".repeat(1000);
    let long_hex = "0".repeat(1000);
    let bad_ids: Vec<String> = vec![
        "not-a-uuid".into(),
        "00000000-0000-0000-0000-00000000000g".into(),
        format!("{a}x"),
        format!("{a}%00"),
        format!("{a}%2F..%2F..%2Fadmin%2Ftenants"),
        format!("..%2F{a}"),
        "..%2F..%2Fadmin%2Ftenants".into(),
        "%2e%2e".into(),
        "%00".into(),
        "%FF%FE".into(),
        "%E2%80%AE".into(),
        "'%20OR%201=1--".into(),
        "*".into(),
        "%2A".into(),
        long,
        long_hex,
    ];
    let tenant_actions: Vec<&ActionSpec> = REGISTRY
        .iter()
        .copied()
        .filter(|x| x.scope == Scope::Tenant)
        .collect();
    let missing = uuid::Uuid::now_v7().to_string();
    for action in tenant_actions {
        let path = |id: &str| {
            let mut p = action
                .path
                .replace("{tenant_id}", id)
                .replace("{setting_key}", "locale");
            if action.confirmation_required {
                p.push_str("?confirm=true");
            }
            p
        };
        let body = (action.intent == "admin.change_tenant_plan").then(|| json!({"plan_id": "pro"}));
        // A caller with tenant access but without the permission is refused before the
        // tenant is looked up (403 for any well-formed id): compare only callers who may
        // call the action, or who reach no other tenant.
        let star_may = action
            .permission
            .is_none_or(|p| role_grants(Role::TenantAdmin, p));
        let tokens: Vec<&String> = if star_may {
            vec![&admin, &tadmin, &star]
        } else {
            vec![&admin, &tadmin]
        };
        for token in tokens {
            let reference = app
                .call(
                    method(action.method),
                    &path(&missing),
                    Some(token),
                    body.clone(),
                )
                .await;
            assert_eq!(reference.status(), 404);
            let reference = reference.bytes().await.unwrap();
            for id in &bad_ids {
                let res = app
                    .call(method(action.method), &path(id), Some(token), body.clone())
                    .await;
                let ct = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let (s, bytes) = (res.status(), res.bytes().await.unwrap());
                assert_eq!(
                    (s.as_u16(), ct.as_str()),
                    (404, "application/problem+json"),
                    "{} {}",
                    action.intent,
                    path(id)
                );
                assert_eq!(
                    bytes,
                    reference,
                    "{} {}: distinguishable from a missing tenant",
                    action.intent,
                    path(id)
                );
            }
        }
    }
    assert_eq!(state(&app).await, before);
    assert_eq!(chain_len(&app, &a).await, trail);
}

// --- query strings ---------------------------------------------------------------------

async fn bad_query_parameters_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Queries").await;
    let before = state(&app).await;
    let trail = chain_len(&app, &a).await;
    let lists = [
        "/v1/admin/tenants".to_owned(),
        "/v1/admin/plans".to_owned(),
        format!("/v1/tenants/{a}/users"),
        format!("/v1/tenants/{a}/audit"),
    ];
    let mut cases: Vec<(String, u16, Option<&str>)> = vec![];
    for l in &lists {
        for (q, status, field) in [
            ("limit=abc", 400, None),
            ("limit=-1", 400, None),
            ("limit=1.5", 400, None),
            ("limit=99999999999999999999", 400, None),
            ("limit=100000", 422, Some("limit")),
            ("limit=0", 422, Some("limit")),
            ("limit=501", 422, Some("limit")),
            ("cursor=%%%", 422, Some("cursor")),
            ("cursor=zz", 422, Some("cursor")),
            ("cursor=abc", 422, Some("cursor")),
            ("cursor=ff", 422, Some("cursor")),
        ] {
            cases.push((format!("{l}?{q}"), status, field));
        }
        cases.push((
            format!("{l}?cursor={}", "00".repeat(300)),
            422,
            Some("cursor"),
        ));
    }
    let more: Vec<(String, u16, Option<&str>)> = vec![
        (
            format!("/v1/tenants/{a}/users?status_filter=deleted"),
            422,
            Some("status_filter"),
        ),
        (
            format!("/v1/tenants/{a}/audit?from=yesterday"),
            422,
            Some("from"),
        ),
        (
            format!("/v1/tenants/{a}/audit?to=2026-02-30"),
            422,
            Some("to"),
        ),
        (
            format!("/v1/admin/tenants/{a}/usage?period=2026-13"),
            422,
            Some("period"),
        ),
        (
            format!("/v1/admin/tenants/{a}/usage?period=2026-00"),
            422,
            Some("period"),
        ),
        (
            format!("/v1/admin/tenants/{a}/usage?period=26-01"),
            422,
            Some("period"),
        ),
        (
            format!("/v1/admin/tenants/{a}/usage?period=2026-1"),
            422,
            Some("period"),
        ),
        (
            format!("/v1/admin/tenants/{a}/usage?period=%EF%BC%92026-01"),
            422,
            Some("period"),
        ),
        (
            format!("/v1/admin/tenants/{a}/usage?period=2026-01%00"),
            422,
            Some("period"),
        ),
        (
            "/v1/admin/usage/export?format=xml".into(),
            422,
            Some("format"),
        ),
        (
            "/v1/admin/usage/export?format=CSV%00".into(),
            422,
            Some("format"),
        ),
        (
            "/v1/admin/usage/export?from=yesterday".into(),
            422,
            Some("from"),
        ),
        (
            "/v1/admin/usage/export?to=2026-13-01".into(),
            422,
            Some("to"),
        ),
        (
            "/v1/admin/usage/export?from=2026-01-01T25:00:00Z".into(),
            422,
            Some("from"),
        ),
    ];
    cases.extend(more);
    for (path, status, field) in cases {
        let (s, p) = status_json(app.get(&path, &admin).await).await;
        assert_eq!(s, status, "{path}: {p}");
        if let Some(f) = field {
            assert_eq!(
                (p["code"].as_str(), p["field"].as_str()),
                (Some("validation_failed"), Some(f)),
                "{path}"
            );
        } else {
            assert_eq!(p["code"], "bad_query", "{path}");
        }
    }
    assert_eq!(state(&app).await, before);
    assert_eq!(
        chain_len(&app, &a).await,
        trail,
        "a refused audit read is not recorded as a read"
    );
}

/// Query values that pass the type check but would reach the database: NUL bytes (which
/// PostgreSQL text refuses) and well-formed cursors that this server never issued.
async fn query_strings_with_nul_and_foreign_cursors_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Nul").await;
    let before = state(&app).await;
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let lists = [
        "/v1/admin/tenants".to_owned(),
        "/v1/admin/plans".to_owned(),
        format!("/v1/tenants/{a}/users"),
        format!("/v1/tenants/{a}/audit"),
    ];
    for l in &lists {
        // A cursor is opaque: one the server did not issue is a 422, never a 5xx.
        for c in [hex("\u{0}"), hex("a\u{0}b"), hex("not a key"), hex("9|x|y")] {
            let (s, p) = status_json(app.get(&format!("{l}?cursor={c}"), &admin).await).await;
            assert!(
                s == 200 || (s, p["field"].as_str()) == (422, Some("cursor")),
                "{l}?cursor={c}: {s} {p}"
            );
        }
    }
    // Filters with NUL and control characters simply match nothing (or are refused).
    for q in [
        "action=tenant.create%00",
        "actor_id=%00",
        "purpose=audit%00review",
        "action=%1b%5b2J",
    ] {
        let path = format!("/v1/tenants/{a}/audit?{q}");
        let (s, p) = status_json(app.get(&path, &admin).await).await;
        assert!(s == 200 || s == 422, "{path}: {s} {p}");
        if s == 200 && !q.starts_with("purpose") {
            assert_eq!(p["items"], json!([]), "{path}");
        }
    }
    for q in [
        "role_filter=%00",
        "role_filter=tenant_admin%00",
        "status_filter=active%00",
    ] {
        let path = format!("/v1/tenants/{a}/users?{q}");
        let (s, p) = status_json(app.get(&path, &admin).await).await;
        assert!(s == 200 || s == 422, "{path}: {s} {p}");
        if s == 200 {
            assert_eq!(p["items"], json!([]), "{path}");
        }
    }
    assert_eq!(state(&app).await, before);
}

// --- headers ---------------------------------------------------------------------------

async fn huge_authorization_header_is_401(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Headers").await;
    let good = app.platform_admin();
    // A real token padded past the 8 KiB limit with claims: signed, but too long.
    let padded =
        app.token(json!({"sub": "op", "roles": ["platform_admin"], "pad": "p".repeat(9 * 1024)}));
    assert!(padded.len() > 8 * 1024);
    for path in [format!("/v1/tenants/{a}"), "/v1/admin/tenants".to_owned()] {
        for value in [
            format!("Bearer {}", "a".repeat(9 * 1024)),
            format!("Bearer {padded}"),
            format!("Bearer {good}{}", "=".repeat(9 * 1024)),
            format!("Bearer {}", "a.".repeat(20 * 1024)),
        ] {
            let res = app
                .client
                .get(format!("{}{path}", app.base))
                .header("authorization", value)
                .send()
                .await
                .unwrap();
            let www = res.headers().get("www-authenticate").cloned();
            let (s, p) = status_json(res).await;
            assert_eq!(
                (s, p["code"].as_str()),
                (401, Some("unauthenticated")),
                "{path}"
            );
            assert_eq!(www, Some(HeaderValue::from_static("Bearer")));
        }
        // An unrelated big header does not stop a good request.
        let res = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth(&good)
            .header("x-filler", "f".repeat(16 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(status_json(res).await.0, 200, "{path}");
    }
}

async fn bad_idempotency_keys_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let before = state(&app).await;
    let keys: Vec<HeaderValue> = vec![
        HeaderValue::from_str(&"k".repeat(300)).unwrap(),
        HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        HeaderValue::from_bytes("clé-ключ-鍵".as_bytes()).unwrap(),
        HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        HeaderValue::from_static("has space"),
        HeaderValue::from_static("tab\there"),
        HeaderValue::from_static(""),
    ];
    // Every creating route takes an Idempotency-Key.
    let creating = [
        (
            "/v1/tenants",
            json!({"name": "Idem", "admin_email": "a@idem.test"}),
        ),
        ("/v1/admin/plans", plan_body("idem")),
    ];
    let send = |path: &str, key: HeaderValue, body: &Value| {
        app.client
            .post(format!("{}{path}", app.base))
            .bearer_auth(&admin)
            .header("idempotency-key", key)
            .json(body)
            .send()
    };
    for (path, body) in &creating {
        for key in &keys {
            let (s, p) = status_json(send(path, key.clone(), body).await.unwrap()).await;
            assert_eq!(
                (s, p["code"].as_str(), p["field"].as_str()),
                (422, Some("validation_failed"), Some("Idempotency-Key")),
                "{path} {key:?}"
            );
        }
    }
    assert_eq!(state(&app).await, before);
    // The longest accepted key works.
    let longest = HeaderValue::from_str(&"k".repeat(255)).unwrap();
    for (path, body) in &creating {
        let (s, p) = status_json(send(path, longest.clone(), body).await.unwrap()).await;
        assert!(s == 201 || s == 202, "{path}: {s} {p}");
    }
}

async fn unknown_routes_and_methods_are_problems(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Routes").await;
    for (m, path, status) in [
        (Method::GET, "/v1/nope".to_owned(), 404),
        (Method::GET, "/v1/tenants".to_owned(), 405),
        (Method::PUT, format!("/v1/tenants/{a}"), 405),
        (Method::DELETE, format!("/v1/tenants/{a}"), 405),
        (Method::GET, format!("/v1/admin/tenants/{a}/suspend"), 405),
        (Method::GET, format!("/v1/tenants/{a}/users/extra"), 404),
        (Method::GET, "/%2e%2e/%2e%2e/etc/passwd".to_owned(), 404),
    ] {
        let (s, p) = status_json(app.call(m.clone(), &path, Some(&admin), None).await).await;
        assert_eq!(s, status, "{m} {path}: {p}");
    }
    let (_, t) = status_json(app.get(&format!("/v1/tenants/{a}"), &admin).await).await;
    assert_eq!(t["status"], "active");
}

// --- concurrency -----------------------------------------------------------------------

async fn concurrent_suspend_and_reactivate_stay_consistent(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Racy").await;
    let other = app.active_tenant("Bystander").await;
    let suspend = format!("/v1/admin/tenants/{a}/suspend?confirm=true");
    let reactivate = format!("/v1/admin/tenants/{a}/reactivate");
    let calls = (0..20).map(|i| {
        let (path, is_suspend) = if i % 2 == 0 {
            (suspend.clone(), true)
        } else {
            (reactivate.clone(), false)
        };
        let req = app
            .client
            .post(format!("{}{path}", app.base))
            .bearer_auth(&admin);
        async move { (is_suspend, req.send().await.unwrap()) }
    });
    let answers = futures::future::join_all(calls).await;
    let mut successes: Vec<(i64, String)> = vec![];
    for (is_suspend, res) in answers {
        let (s, body) = status_json(res).await;
        match s {
            200 => {
                let expected = if is_suspend { "suspended" } else { "active" };
                assert_eq!(body["status"], expected, "{body}");
                successes.push((body["version"].as_i64().unwrap(), expected.to_owned()));
            }
            409 => assert!(
                matches!(
                    body["code"].as_str(),
                    Some("invalid_transition" | "concurrent_update")
                ),
                "{body}"
            ),
            _ => panic!("unexpected answer {s} {body}"),
        }
    }
    assert!(!successes.is_empty(), "at least the first suspend succeeds");
    // Each success is one version step, and they alternate from `active`.
    successes.sort();
    for (i, (version, status)) in successes.iter().enumerate() {
        let i = i64::try_from(i).unwrap();
        assert_eq!(*version, 3 + i, "versions are consecutive: {successes:?}");
        let expected = if i % 2 == 0 { "suspended" } else { "active" };
        assert_eq!(status, expected, "transitions alternate: {successes:?}");
    }
    let n = i64::try_from(successes.len()).unwrap();
    let t = app
        .control
        .store()
        .get_tenant(a.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        t.version,
        1 + n + 1,
        "created, provisioned, then {n} transitions"
    );
    assert_eq!(t.status.as_str(), successes.last().unwrap().1);

    // The trail holds exactly the successful transitions, in order, and verifies.
    let platform = PlatformCtx::for_system("test");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, &a, 0, 1000)
        .await
        .unwrap();
    let transitions: Vec<(String, String)> = events
        .iter()
        .map(|(e, _)| e)
        .filter(|e| e.action == "tenant.suspend" || e.action == "tenant.reactivate")
        .map(|e| {
            (
                e.data["from"].as_str().unwrap().to_owned(),
                e.data["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(transitions.len(), successes.len());
    let mut state_now = "active".to_owned();
    for (from, to) in &transitions {
        assert_eq!(from, &state_now, "{transitions:?}");
        state_now.clone_from(to);
    }
    assert_eq!(state_now, t.status.as_str());
    let report = agentplane_audit::verify_all(app.control.store().as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    // The bystander was not touched.
    let (_, o) = status_json(app.get(&format!("/v1/tenants/{other}"), &admin).await).await;
    assert_eq!(
        (o["status"].as_str(), o["version"].as_i64()),
        (Some("active"), Some(2))
    );
}
