//! Usage reporting: the per-tenant summary and the cross-tenant export (JSON and CSV).

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use agentplane_core::authz::PlatformCtx;
use agentplane_core::time::Timestamp;
use agentplane_core::usage::UsageRecord;
use agentplane_core::UsageRecordId;
use serde_json::Value;

both_backends!(
    export_streams_every_record_in_range_as_json_and_csv,
    usage_reads_are_tenant_scoped
);

async fn seed(app: &TestApp, tenant: &str, n: i64, start_ms: i64) {
    let ctx = PlatformCtx::for_system("test").tenant(tenant.parse().unwrap());
    for i in 0..n {
        let rec = UsageRecord {
            id: UsageRecordId::new(),
            tenant_id: ctx.tenant_id(),
            ts: Timestamp::from_millis(start_ms + i),
            agent_id: Some(format!("agent, \"{i}\"")), // needs CSV quoting
            model: "gpt-test".into(),
            provider: "openai".into(),
            tokens_in: 3,
            tokens_out: i,
            latency_ms: 7,
            status: "ok".into(),
            trace_id: None,
        };
        app.control
            .store()
            .insert_usage_record(&ctx, &rec)
            .await
            .unwrap();
    }
}

async fn export_streams_every_record_in_range_as_json_and_csv(b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.platform_admin();
    let a = app.active_tenant("Alpha").await;
    let z = app.active_tenant("Zeta").await;
    let day = Timestamp::parse_rfc3339("2026-03-01T00:00:00Z")
        .unwrap()
        .millis();
    // 1,500 records for Alpha span several export pages; Zeta's fall partly outside the range.
    seed(&app, &a, 1500, day).await;
    seed(&app, &z, 10, day - 5).await;

    let (s, all) = status_json(
        app.get(
            "/v1/admin/usage/export?from=2026-03-01&to=2026-03-02",
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1505, "5 of Zeta's 10 are before `from`");
    let ts: Vec<&str> = all.iter().map(|r| r["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "ordered by time");
    assert_eq!(
        all.iter().filter(|r| r["tenant_id"] == z.as_str()).count(),
        5
    );

    let res = app.get("/v1/admin/usage/export?format=csv&from=2026-03-01T00:00:00.010Z&to=2026-03-01T00:00:00.012Z", &admin).await;
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = res.text().await.unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let headers = rows.headers().unwrap().clone();
    assert_eq!(&headers[0], "id");
    assert_eq!(&headers[3], "agent_id");
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(&records[0][3], "agent, \"10\"", "quoting round-trips");

    let (s, empty) = status_json(
        app.get(
            "/v1/admin/usage/export?from=2020-01-01&to=2020-01-02",
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!((s, empty), (200, Value::Array(vec![])));
    let empty_csv = app
        .get(
            "/v1/admin/usage/export?format=csv&from=2020-01-01&to=2020-01-02",
            &admin,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(
        empty_csv.starts_with("id,tenant_id,ts"),
        "an empty CSV still has its header: {empty_csv:?}"
    );

    for bad in [
        "format=xml",
        "from=yesterday",
        "from=2026-03-02&to=2026-03-01",
    ] {
        let (s, p) = status_json(
            app.get(&format!("/v1/admin/usage/export?{bad}"), &admin)
                .await,
        )
        .await;
        assert_eq!(
            (s, p["code"].as_str()),
            (422, Some("validation_failed")),
            "{bad}"
        );
    }
}

async fn usage_reads_are_tenant_scoped(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Alpha").await;
    let tadmin = app.tenant_user("tenant_admin", &a);
    let auditor = app.tenant_user("auditor", &a);
    let member = app.tenant_user("member", &a);
    for tok in [&tadmin, &auditor] {
        let (s, u) = status_json(app.get(&format!("/v1/admin/tenants/{a}/usage"), tok).await).await;
        assert_eq!((s, u["tenant_id"].as_str()), (200, Some(a.as_str())));
        assert_eq!(u["period"], Timestamp::now().period());
    }
    let (s, u) = status_json(
        app.get(
            &format!("/v1/admin/tenants/{a}/usage?period=2020-01"),
            &tadmin,
        )
        .await,
    )
    .await;
    assert_eq!((s, u["messages"]["used"].as_i64()), (200, Some(0)));
    let (s, _) = status_json(
        app.get(
            &format!("/v1/admin/tenants/{a}/usage?period=2020-13"),
            &tadmin,
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = status_json(
        app.get(&format!("/v1/admin/tenants/{a}/usage"), &member)
            .await,
    )
    .await;
    assert_eq!(s, 403, "members do not see usage");
    let (s, _) = status_json(app.get("/v1/admin/usage/export", &tadmin).await).await;
    assert_eq!(s, 403, "the cross-tenant export is for platform operators");
}
