//! The durable job queue as tenants see it: fair across tenants, progress readable over the
//! API, cancellation of queued and running jobs.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    one_tenants_backlog_does_not_starve_another,
    jobs_report_progress_and_can_be_cancelled,
    retention_removes_old_data_and_old_personal_data_and_keeps_the_chain,
);

async fn rotate(app: &TestApp, tenant: &str) -> Value {
    let (s, job) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/keys/rotate?confirm=true"),
            &app.platform_admin(),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{job}");
    job
}

async fn one_tenants_backlog_does_not_starve_another(b: Backend) {
    let app = TestApp::spawn(b).await;
    let busy = app.active_tenant("Busy").await;
    let quiet = app.active_tenant("Quiet").await;
    for _ in 0..12 {
        rotate(&app, &busy).await;
    }
    let quiet_job = rotate(&app, &quiet).await;
    // The quiet tenant's one job runs second, not after the busy tenant's twelve.
    let first = app.control.run_next_job().await.unwrap().unwrap();
    let second = app.control.run_next_job().await.unwrap().unwrap();
    assert_eq!(first.job.tenant_id.to_string(), busy);
    assert_eq!(second.job.id.to_string(), quiet_job["id"].as_str().unwrap());
    assert_eq!(app.run_jobs().await, 11, "the rest still runs");
}

async fn jobs_report_progress_and_can_be_cancelled(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Worky").await;
    let admin = app.tenant_user("tenant_admin", &t);
    let jobs = format!("/v1/tenants/{t}/jobs");

    // Progress: a finished re-seal says what it did.
    let job = rotate(&app, &t).await;
    let id = job["id"].as_str().unwrap();
    app.run_jobs().await;
    let (s, j) = status_json(app.get(&format!("{jobs}/{id}"), &admin).await).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["progress"]["percent"], 100);
    assert!(
        j["progress"]["message"]
            .as_str()
            .unwrap()
            .starts_with("re-sealed"),
        "{j}"
    );
    let (s, _) = status_json(
        app.post(&format!("{jobs}/{id}/cancel"), &admin, json!({}))
            .await,
    )
    .await;
    assert_eq!(s, 409, "a finished job cannot be cancelled");

    // A queued job is cancelled at once and never runs.
    let queued = rotate(&app, &t).await;
    let qid = queued["id"].as_str().unwrap();
    let (s, j) = status_json(
        app.post(&format!("{jobs}/{qid}/cancel"), &admin, json!({}))
            .await,
    )
    .await;
    assert_eq!((s, j["status"].as_str()), (200, Some("cancelled")), "{j}");
    assert_eq!(app.run_jobs().await, 0);
    let (_, j) = status_json(app.get(&format!("{jobs}/{qid}"), &admin).await).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_i64()),
        (Some("cancelled"), Some(0))
    );

    // A running job stops at its next heartbeat.
    let running = rotate(&app, &t).await;
    let store = app.control.store().clone();
    let claimed = store
        .claim_job(agentplane_core::time::Timestamp::now(), 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id.to_string(), running["id"].as_str().unwrap());
    let now = agentplane_core::time::Timestamp::now;
    assert!(!store
        .heartbeat_job(&claimed, now(), 60_000, Some((40, "working")))
        .await
        .unwrap());
    let (_, j) = status_json(app.get(&format!("{jobs}/{}", claimed.id), &admin).await).await;
    assert_eq!(
        (j["status"].as_str(), j["progress"]["percent"].as_i64()),
        (Some("running"), Some(40))
    );
    let (s, j) = status_json(
        app.post(&format!("{jobs}/{}/cancel", claimed.id), &admin, json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (s, j["cancel_requested"].as_bool()),
        (200, Some(true)),
        "{j}"
    );
    assert!(
        store
            .heartbeat_job(&claimed, now(), 60_000, None)
            .await
            .unwrap(),
        "the beat says stop"
    );
    store.finish_cancelled(&claimed, now()).await.unwrap();
    let (_, j) = status_json(app.get(&format!("{jobs}/{}", claimed.id), &admin).await).await;
    assert_eq!(j["status"], "cancelled");

    // The list shows them all; another tenant sees none of them; members may not look.
    let (s, page) = status_json(app.get(&jobs, &admin).await).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id) && ids.contains(&qid));
    let other = app.active_tenant("Nosy").await;
    let (s, _) = status_json(
        app.get(
            &format!("/v1/tenants/{other}/jobs/{id}"),
            &app.tenant_user("tenant_admin", &other),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404, "another tenant's job id is not found");
    let (s, _) = status_json(app.get(&jobs, &app.tenant_user("member", &t)).await).await;
    assert_eq!(s, 403);
    let (s, _) = status_json(
        app.call(
            Method::POST,
            &format!("{jobs}/{qid}/cancel"),
            Some(&app.tenant_user("auditor", &t)),
            Some(json!({})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403, "auditors read jobs, never cancel them");
}

async fn retention_removes_old_data_and_old_personal_data_and_keeps_the_chain(b: Backend) {
    use agentplane_core::audit::{Chain, NewAuditEvent};
    use agentplane_core::authz::{Actor, PlatformCtx};
    use agentplane_core::time::Timestamp;
    use agentplane_core::usage::UsageRecord;
    let app = TestApp::spawn(b).await;
    let t = app.active_tenant("Keeper").await;
    let other = app.active_tenant("Other").await;
    let admin = app.tenant_user("tenant_admin", &t);
    let (s, _) = status_json(
        app.call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{t}/settings/data.retention_days?confirm=true"),
            Some(&admin),
            Some(json!({"setting_value": 7})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let store = app.control.store();
    let platform = PlatformCtx::for_system("test");
    let day = 86_400_000;
    let now = Timestamp::now();
    for (tenant, age_days) in [(&t, 10), (&t, 1), (&other, 10)] {
        let ctx = platform.tenant(tenant.parse().unwrap());
        let rec = UsageRecord {
            id: agentplane_core::UsageRecordId::new(),
            tenant_id: tenant.parse().unwrap(),
            ts: now.plus_millis(-age_days * day),
            agent_id: None,
            model: "m".into(),
            provider: "p".into(),
            tokens_in: 1,
            tokens_out: 1,
            latency_ms: 1,
            status: "ok".into(),
            trace_id: None,
        };
        store.insert_usage_record(&ctx, &rec).await.unwrap();
    }
    // An audit event (with personal data) older than a year, and a fresh one.
    let actor = Actor::System {
        component: "test".into(),
    };
    for age in [400, 1] {
        let ev = NewAuditEvent::new(
            Chain::Tenant(t.parse().unwrap()),
            "test.old",
            &actor,
            now.plus_millis(-age * day),
        )
        .pii(json!({"email": format!("aged{age}@keeper.test")}));
        store.append_audit(ev).await.unwrap();
    }
    let op = app.platform_admin();
    let (s, r) = status_json(app.post("/v1/admin/retention/run", &op, json!({})).await).await;
    assert_eq!(s, 428, "{r}");
    let (s, r) = status_json(
        app.post("/v1/admin/retention/run?confirm=true", &op, json!({}))
            .await,
    )
    .await;
    assert_eq!((s, r["scheduled"].as_u64()), (202, Some(2)), "{r}");
    assert_eq!(app.run_jobs().await, 2);
    let runs = store
        .audit_chain_page(&platform, "platform", 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(e, _)| e.action == "retention.run")
        .count();
    assert_eq!(
        runs, 1,
        "the operator's run is in the platform's audit trail"
    );
    let usage = |tenant: &str| {
        let ctx = platform.tenant(tenant.parse().unwrap());
        async move {
            store
                .tenant_usage_records(
                    &ctx,
                    Default::default(),
                    &agentplane_core::page::PageRequest::first(100),
                )
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(
        usage(&t).await,
        1,
        "the 10-day-old record is gone, yesterday's stays"
    );
    assert_eq!(
        usage(&other).await,
        1,
        "the other tenant keeps its default (365 days)"
    );
    // Audit: the old event stays in the chain, without its personal data; the chain verifies.
    let dump = crate::helpers::dump_database(&app.db);
    let holds = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    assert!(!holds(b"aged400@keeper.test"), "old personal data is gone");
    assert!(holds(b"aged1@keeper.test"), "recent personal data stays");
    let report = agentplane_audit::verify_all(store.as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let (_, events) = status_json(
        app.get(&format!("/v1/tenants/{t}/audit?action=test.old"), &admin)
            .await,
    )
    .await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2);
    // The worker's daily schedule finds nothing due: both ran within the day.
    let n = app
        .control
        .schedule_retention(&platform, std::time::Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(n, 0);
}
