//! The store conformance suite: the `Store` trait's contract, run against both backends
//! directly (no HTTP), so both implementations are held to the same behaviour.

use crate::both_backends;
use crate::helpers::{Backend, Db};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{Actor, PlatformCtx, TenantCtx};
use agentplane_core::job::{Job, JobKind, JobStatus};
use agentplane_core::page::PageRequest;
use agentplane_core::plan::{Plan, PlanLimits};
use agentplane_core::tenant::{Slug, Tenant, TenantStatus};
use agentplane_core::time::Timestamp;
use agentplane_core::usage::UsageRecord;
use agentplane_core::{PlanId, TenantId, UsageRecordId, UserId};
use agentplane_store::{
    AuditFilter, Conflict, IdempotencyRecord, Member, NewTenant, PgStore, Provisioning,
    SqliteStore, Store, StoreError, TimeRange,
};
use serde_json::json;
use std::sync::Arc;

both_backends!(
    plans_round_trip_and_conflict,
    tenant_insert_is_atomic_and_conflicts_name_their_cause,
    tenant_updates_are_optimistic,
    jobs_lease_expire_retry_and_die,
    provisioning_effects_happen_once,
    audit_chains_are_per_tenant_contiguous_and_verifiable,
    audit_reads_filter_paginate_and_are_recorded,
    usage_records_range_and_keyset_pagination,
);

async fn open(b: Backend) -> (Db, Arc<dyn Store>) {
    let db = Db::new(b).await;
    let store: Arc<dyn Store> = match &db.pg {
        None => Arc::new(SqliteStore::open(&db.sqlite_path()).await.unwrap()),
        Some(pg) => Arc::new(
            PgStore::connect(&pg.url, Some("agentplane_app"), 4)
                .await
                .unwrap(),
        ),
    };
    (db, store)
}

fn system() -> Actor {
    Actor::System {
        component: "conformance".into(),
    }
}

fn audit(chain: Chain, action: &str) -> NewAuditEvent {
    NewAuditEvent::new(chain, action, &system(), Timestamp::now())
}

fn tenant(slug: &str) -> Tenant {
    let now = Timestamp::now();
    Tenant {
        id: TenantId::new(),
        slug: Slug::parse(slug).unwrap(),
        name: slug.to_uppercase(),
        plan_id: PlanId::parse("free").unwrap(),
        status: TenantStatus::Provisioning,
        region: "default".into(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 1,
    }
}

fn new_tenant(slug: &str, idem: Option<&str>) -> NewTenant {
    let t = tenant(slug);
    NewTenant {
        provisioning_job: Job::new(
            t.id,
            JobKind::ProvisionTenant,
            json!({"admin_email": "a@b.test"}),
            t.created_at,
        ),
        audit: audit(Chain::Tenant(t.id), "tenant.create").pii(json!({"name": t.name})),
        idempotency: idem.map(|k| IdempotencyRecord {
            scope: "s".into(),
            key: k.into(),
            request_hash: "h".into(),
            status: 202,
            response: format!("{{\"slug\":\"{slug}\"}}"),
            created_at: t.created_at,
        }),
        tenant: t,
    }
}

fn platform() -> PlatformCtx {
    PlatformCtx::for_system("conformance")
}

fn ctx(t: TenantId) -> TenantCtx {
    platform().tenant(t)
}

async fn plans_round_trip_and_conflict(b: Backend) {
    let (_db, store) = open(b).await;
    let plan = Plan {
        id: PlanId::parse("team").unwrap(),
        name: "Team".into(),
        limits: PlanLimits {
            monthly_messages: 5,
            monthly_tokens: 50,
            requests_per_minute: 1,
            max_concurrent_runs: 1,
        },
        features: vec!["a".into(), "b".into()],
        created_at: Timestamp::from_millis(1_700_000_000_123),
    };
    store
        .insert_plan(&plan, audit(Chain::Platform, "plan.create"), None)
        .await
        .unwrap();
    assert_eq!(store.get_plan(&plan.id).await.unwrap(), Some(plan.clone()));
    let err = store
        .insert_plan(&plan, audit(Chain::Platform, "plan.create"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::PlanId)),
        "{err}"
    );
    let heads = store.audit_chain_heads(&platform()).await.unwrap();
    assert_eq!(
        heads
            .iter()
            .find(|h| h.0 == "platform")
            .and_then(|h| h.1.as_ref().map(|x| x.0)),
        Some(1),
        "the failed insert wrote no event"
    );
    let page = store.list_plans(&PageRequest::first(2)).await.unwrap();
    assert_eq!(
        page.items.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["free", "pro"]
    );
    let next = PageRequest::new(page.next_cursor.as_deref(), Some(2)).unwrap();
    let page2 = store.list_plans(&next).await.unwrap();
    assert_eq!(
        page2
            .items
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["team"]
    );
    assert!(page2.next_cursor.is_none());
}

async fn tenant_insert_is_atomic_and_conflicts_name_their_cause(b: Backend) {
    let (_db, store) = open(b).await;
    let first = new_tenant("acme", Some("k1"));
    let id = first.tenant.id;
    store.insert_tenant(first.clone()).await.unwrap();
    assert_eq!(
        store.get_tenant(id).await.unwrap(),
        Some(first.tenant.clone())
    );
    assert!(store
        .slug_taken(&Slug::parse("acme").unwrap())
        .await
        .unwrap());
    assert!(!store
        .slug_taken(&Slug::parse("acme-2").unwrap())
        .await
        .unwrap());
    let rec = store.get_idempotency("s", "k1").await.unwrap().unwrap();
    assert_eq!(rec.response, "{\"slug\":\"acme\"}");

    let err = store
        .insert_tenant(new_tenant("other", Some("k1")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::IdempotencyKey)),
        "{err}"
    );
    let err = store
        .insert_tenant(new_tenant("acme", Some("k2")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::Slug)), "{err}");
    // Neither failed insert left anything behind: no tenant, no job, no idempotency record.
    let all = store
        .list_tenants(&platform(), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    assert!(store.get_idempotency("s", "k2").await.unwrap().is_none());
    assert!(store
        .claim_job(Timestamp::now(), 1000)
        .await
        .unwrap()
        .is_some());
    assert!(
        store
            .claim_job(Timestamp::now(), 1000)
            .await
            .unwrap()
            .is_none(),
        "exactly one job"
    );
    assert_eq!(
        store.audit_chain_heads(&platform()).await.unwrap().len(),
        1,
        "one chain, one event"
    );
}

async fn tenant_updates_are_optimistic(b: Backend) {
    let (_db, store) = open(b).await;
    let nt = new_tenant("acme", None);
    let t = nt.tenant.clone();
    store.insert_tenant(nt).await.unwrap();
    let c = ctx(t.id);
    let v2 = Tenant {
        status: TenantStatus::Active,
        version: 2,
        ..t.clone()
    };
    store
        .update_tenant(&c, &v2, 1, None, audit(Chain::Tenant(t.id), "x"))
        .await
        .unwrap();
    let stale = Tenant {
        status: TenantStatus::Suspended,
        version: 2,
        ..t.clone()
    };
    let err = store
        .update_tenant(&c, &stale, 1, None, audit(Chain::Tenant(t.id), "y"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::Version)));
    assert_eq!(
        store.get_tenant(t.id).await.unwrap().unwrap().status,
        TenantStatus::Active
    );
    let events = store
        .audit_chain_page(&platform(), &t.id.to_string(), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.0.action.as_str())
            .collect::<Vec<_>>(),
        ["tenant.create", "x"]
    );
    // A context for another tenant is refused before anything is written.
    let err = store
        .update_tenant(
            &ctx(TenantId::new()),
            &v2,
            2,
            None,
            audit(Chain::Tenant(t.id), "z"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CrossTenant(_)), "{err}");
    let rec = UsageRecord {
        id: UsageRecordId::new(),
        tenant_id: t.id,
        ts: Timestamp::now(),
        agent_id: None,
        model: "m".into(),
        provider: "p".into(),
        tokens_in: 1,
        tokens_out: 1,
        latency_ms: 1,
        status: "ok".into(),
        trace_id: None,
    };
    let err = store
        .insert_usage_record(&ctx(TenantId::new()), &rec)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CrossTenant(_)), "{err}");
}

async fn jobs_lease_expire_retry_and_die(b: Backend) {
    let (_db, store) = open(b).await;
    let nt = new_tenant("acme", None);
    let job_id = nt.provisioning_job.id;
    store.insert_tenant(nt).await.unwrap();
    let t0 = Timestamp::now();
    let j1 = store.claim_job(t0, 1000).await.unwrap().unwrap();
    assert_eq!(
        (j1.id, j1.status, j1.attempts),
        (job_id, JobStatus::Running, 1)
    );
    assert!(
        store.claim_job(t0, 1000).await.unwrap().is_none(),
        "a leased job is not claimed twice"
    );
    // The lease expires: another worker reclaims it, and the first worker's lease is lost.
    let j2 = store
        .claim_job(t0.plus_millis(1001), 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j2.id, j2.attempts), (job_id, 2));
    assert_ne!(j1.lease_token, j2.lease_token);
    let err = store
        .complete_job(&j1, t0.plus_millis(1002))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::LeaseLost)));
    // A failure requeues with backoff; it is not due before its retry time.
    store
        .fail_job(&j2, "boom", t0.plus_millis(1003))
        .await
        .unwrap();
    let failed = store.get_job(job_id).await.unwrap().unwrap();
    assert_eq!(
        (failed.status, failed.last_error.as_deref()),
        (JobStatus::Queued, Some("boom"))
    );
    assert_eq!(failed.run_at, t0.plus_millis(1003 + Job::retry_delay_ms(2)));
    assert!(store
        .claim_job(t0.plus_millis(1004), 1000)
        .await
        .unwrap()
        .is_none());
    // Exhaust the attempts: the job dies.
    let mut now = failed.run_at;
    let mut last = None;
    while let Some(j) = store.claim_job(now, 10).await.unwrap() {
        store.fail_job(&j, "again", now).await.unwrap();
        now = store
            .get_job(job_id)
            .await
            .unwrap()
            .unwrap()
            .run_at
            .plus_millis(1);
        last = Some(j);
    }
    let dead = store.get_job(job_id).await.unwrap().unwrap();
    assert_eq!(dead.status, JobStatus::Dead);
    assert_eq!(dead.attempts, dead.max_attempts);
    assert_eq!(last.map(|j| j.attempts), Some(dead.max_attempts));
    store.complete_job(&dead, now).await.unwrap_err();
}

async fn provisioning_effects_happen_once(b: Backend) {
    let (_db, store) = open(b).await;
    let nt = new_tenant("acme", None);
    let t = nt.tenant.clone();
    store.insert_tenant(nt).await.unwrap();
    let now = Timestamp::now();
    let j1 = store.claim_job(now, 1000).await.unwrap().unwrap();
    let admin = Member {
        tenant_id: t.id,
        user_id: UserId::new(),
        email: "a@b.test".into(),
        name: None,
        roles: vec!["tenant_admin".into()],
        custom_roles: vec![],
        status: "active".into(),
        has_password: false,
        external_id: None,
        created_at: now,
        updated_at: now,
        last_sign_in_at: None,
    };
    let p = Provisioning {
        settings: vec![("locale".into(), json!("en"))],
        first_admin: admin,
        period: now.period(),
    };
    let active = Tenant {
        status: TenantStatus::Active,
        version: 2,
        ..t.clone()
    };
    let c = TenantCtx::for_system_job(t.id, j1.id);
    // The lease expired and a second worker took the job: the first one's effects are refused whole.
    let j2 = store
        .claim_job(now.plus_millis(1001), 1000)
        .await
        .unwrap()
        .unwrap();
    let err = store
        .finish_provisioning(
            &c,
            &j1,
            &active,
            &p,
            audit(Chain::Tenant(t.id), "tenant.provisioned"),
            now,
        )
        .await;
    assert!(err.is_err());
    assert!(
        store.list_settings(&c).await.unwrap().is_empty(),
        "rolled back"
    );
    store
        .finish_provisioning(
            &c,
            &j2,
            &active,
            &p,
            audit(Chain::Tenant(t.id), "tenant.provisioned"),
            now,
        )
        .await
        .unwrap();
    assert_eq!(store.list_settings(&c).await.unwrap().len(), 1);
    let members = store
        .list_members(&c, &Default::default(), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(members.items.len(), 1);
    assert_eq!(
        store
            .usage_counter(&c, &now.period())
            .await
            .unwrap()
            .map(|u| u.messages_used),
        Some(0)
    );
    assert_eq!(
        store.get_job(j2.id).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );
}

async fn audit_chains_are_per_tenant_contiguous_and_verifiable(b: Backend) {
    let (_db, store) = open(b).await;
    let (a, bb) = (TenantId::new(), TenantId::new());
    let mut tasks = vec![];
    for i in 0..40 {
        let store = store.clone();
        let chain = match i % 3 {
            0 => Chain::Tenant(a),
            1 => Chain::Tenant(bb),
            _ => Chain::Platform,
        };
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(audit(chain, "concurrent").pii(json!({"i": i})))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = agentplane_audit::verify_all(store.as_ref(), &platform())
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let counts: Vec<(String, i64)> = report
        .chains
        .iter()
        .map(|c| (c.chain.clone(), c.events))
        .collect();
    assert_eq!(counts.iter().map(|c| c.1).sum::<i64>(), 40);
    assert!(
        counts.contains(&(a.to_string(), 14))
            && counts.contains(&(bb.to_string(), 13))
            && counts.contains(&("platform".into(), 13))
    );
    let page = store
        .audit_chain_page(&platform(), &a.to_string(), 0, 100)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.0.seq).collect::<Vec<_>>(),
        (1..=14).collect::<Vec<_>>()
    );
    assert!(
        page.iter()
            .all(|(e, pii)| pii.as_ref().map(|p| &p.value) == e.pii.as_ref()
                && e.pii_digest.is_some())
    );
}

async fn audit_reads_filter_paginate_and_are_recorded(b: Backend) {
    let (_db, store) = open(b).await;
    let t = TenantId::new();
    for i in 0..7 {
        let action = if i % 2 == 0 { "even" } else { "odd" };
        store
            .append_audit(audit(Chain::Tenant(t), action))
            .await
            .unwrap();
    }
    let c = ctx(t);
    let read = || audit(Chain::Tenant(t), "audit.read");
    let filter = AuditFilter {
        action: Some("even".into()),
        ..Default::default()
    };
    let p1 = store
        .list_audit(&c, &filter, &PageRequest::first(3), read())
        .await
        .unwrap();
    assert_eq!(
        p1.items.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [7, 5, 3]
    );
    let p2 = store
        .list_audit(
            &c,
            &filter,
            &PageRequest::new(p1.next_cursor.as_deref(), Some(3)).unwrap(),
            read(),
        )
        .await
        .unwrap();
    assert_eq!(p2.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert!(p2.next_cursor.is_none());
    let all = store
        .list_audit(
            &c,
            &AuditFilter::default(),
            &PageRequest::first(100),
            read(),
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 9, "7 events and the 2 earlier reads");
    assert_eq!(all.items[0].action, "audit.read");
    // Another tenant's context sees none of it, and cannot record its read in this chain.
    let o = TenantId::new();
    let other = store
        .list_audit(
            &ctx(o),
            &AuditFilter::default(),
            &PageRequest::first(100),
            audit(Chain::Tenant(o), "audit.read"),
        )
        .await;
    assert!(other.unwrap().items.is_empty());
    let err = store
        .list_audit(
            &ctx(o),
            &AuditFilter::default(),
            &PageRequest::first(100),
            read(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CrossTenant(_)), "{err}");
}

async fn usage_records_range_and_keyset_pagination(b: Backend) {
    let (_db, store) = open(b).await;
    let (a, bb) = (TenantId::new(), TenantId::new());
    for (t, n) in [(a, 5), (bb, 3)] {
        for i in 0..n {
            let rec = UsageRecord {
                id: UsageRecordId::new(),
                tenant_id: t,
                ts: Timestamp::from_millis(1_000 + i % 2), // ties on ts exercise the keyset
                agent_id: Some("agent".into()),
                model: "m".into(),
                provider: "p".into(),
                tokens_in: 10,
                tokens_out: i,
                latency_ms: 5,
                status: "ok".into(),
                trace_id: None,
            };
            store.insert_usage_record(&ctx(t), &rec).await.unwrap();
        }
    }
    let mut seen = vec![];
    let mut page = PageRequest::first(3);
    loop {
        let p = store
            .all_usage_records(&platform(), TimeRange::default(), &page)
            .await
            .unwrap();
        seen.extend(p.items.iter().map(|r| (r.ts, r.tenant_id, r.id)));
        match p.next_cursor {
            Some(c) => page = PageRequest::new(Some(&c), Some(3)).unwrap(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "ordered, no duplicates");
    let only_a = store
        .tenant_usage_records(&ctx(a), TimeRange::default(), &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(only_a.items.len(), 5);
    assert!(only_a.items.iter().all(|r| r.tenant_id == a));
    let ranged = store
        .all_usage_records(
            &platform(),
            TimeRange {
                from: Some(Timestamp::from_millis(1_001)),
                to: Some(Timestamp::from_millis(1_002)),
            },
            &PageRequest::first(100),
        )
        .await
        .unwrap();
    assert_eq!(ranged.items.len(), 3, "2 of a's, 1 of b's at ts 1001");
}
