//! The audit log (invariant 4): reading it is itself recorded; it is append-only in the
//! database; `agentplane audit verify` (the real binary) names every kind of tampering; and
//! erasing personal data leaves the chain verifiable.

use crate::both_backends;
use crate::crash::Proc;
use crate::helpers::{status_json, Backend, Db, TestApp};
use agentplane_core::authz::PlatformCtx;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

both_backends!(
    reading_the_trail_is_audited_filtered_and_paginated,
    audit_events_are_append_only,
    verify_passes_on_an_untampered_database,
    verify_catches_an_edited_event,
    verify_catches_a_deleted_middle_event,
    verify_catches_a_deleted_last_event,
    verify_catches_edited_personal_data,
    verify_catches_a_chain_whose_head_was_removed,
    erasing_personal_data_keeps_the_chain_verifiable,
);

/// `GET /v1/tenants/{id}/audit` with query parameters: status and body.
async fn read_audit(app: &TestApp, tenant: &str, token: &str, q: &[(&str, &str)]) -> (u16, Value) {
    let res = app
        .client
        .get(format!("{}/v1/tenants/{tenant}/audit", app.base))
        .query(q)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    status_json(res).await
}

fn items(page: &Value) -> &Vec<Value> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
}

fn seqs(page: &Value) -> Vec<i64> {
    items(page)
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

/// Every event matching `q`, walking the cursor `limit` at a time; checks that pages are
/// newest first and never overlap. Returns the events and the number of pages read.
async fn walk(
    app: &TestApp,
    tenant: &str,
    token: &str,
    q: &[(&str, &str)],
    limit: u32,
) -> (Vec<Value>, usize) {
    let limit_s = limit.to_string();
    let mut all: Vec<Value> = vec![];
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params: Vec<(&str, &str)> = q.to_vec();
        params.push(("limit", limit_s.as_str()));
        if let Some(c) = &cursor {
            params.push(("cursor", c.as_str()));
        }
        let (s, page) = read_audit(app, tenant, token, &params).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        assert!(pages < 1000, "the cursor never ends");
        let got = items(&page);
        assert!(got.len() <= limit as usize, "{page}");
        all.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(got.len(), limit as usize, "only the last page is short");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    let s: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        s.windows(2).all(|w| w[0] > w[1]),
        "newest first, no duplicates: {s:?}"
    );
    (all, pages)
}

async fn suspend_and_reactivate(app: &TestApp, tenant: &str, reason: &str) {
    let admin = app.platform_admin();
    let (s, body) = status_json(
        app.post(
            &format!("/v1/admin/tenants/{tenant}/suspend?confirm=true"),
            &admin,
            json!({ "reason": reason }),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = status_json(
        app.call(
            Method::POST,
            &format!("/v1/admin/tenants/{tenant}/reactivate"),
            Some(&admin),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

async fn reading_the_trail_is_audited_filtered_and_paginated(b: Backend) {
    let app = TestApp::spawn(b).await;
    let id = app.active_tenant("Watched").await;
    const ROUNDS: usize = 30;
    for i in 0..ROUNDS {
        suspend_and_reactivate(&app, &id, &format!("round {i}")).await;
        // Distinct milliseconds, so the time filters below split the rounds cleanly.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let auditor = app.tenant_user("auditor", &id);
    let auditor_sub = format!("auditor-of-{id}");

    // A read with a purpose is recorded, and the record is visible on the next read.
    let (s, first) = read_audit(&app, &id, &auditor, &[("purpose", "incident-42")]).await;
    assert_eq!(s, 200, "{first}");
    let top_before = seqs(&first)[0];
    assert!(
        items(&first).iter().all(|e| e["action"] != "audit.read"),
        "no read before this one"
    );
    let (_, second) = read_audit(&app, &id, &auditor, &[]).await;
    let read = &items(&second)[0];
    assert_eq!(read["action"], "audit.read", "{read}");
    assert_eq!(read["seq"], top_before + 1);
    assert_eq!(read["actor_id"], auditor_sub.as_str());
    assert_eq!(read["actor_kind"], "user");
    assert_eq!(read["target_id"], id.as_str());
    assert_eq!(read["data"]["purpose"], "incident-42");
    let second_read = seqs(&second)[0] + 1;

    // action
    let (suspends, _) = walk(&app, &id, &auditor, &[("action", "tenant.suspend")], 7).await;
    assert_eq!(suspends.len(), ROUNDS);
    assert!(suspends.iter().all(|e| e["action"] == "tenant.suspend"));
    let reasons: Vec<&str> = suspends
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..ROUNDS).rev().map(|i| format!("round {i}")).collect();
    assert_eq!(reasons, expected);
    // The filters of a read are recorded too.
    let (_, page) = read_audit(&app, &id, &auditor, &[("limit", "1")]).await;
    assert_eq!(items(&page)[0]["action"], "audit.read");
    assert_eq!(
        items(&page)[0]["data"]["filter"]["action"],
        "tenant.suspend"
    );

    // actor_id
    let (by_operator, _) = walk(&app, &id, &auditor, &[("actor_id", "operator")], 500).await;
    let actions: Vec<&str> = by_operator
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 2 * ROUNDS + 1, "{actions:?}");
    assert_eq!(actions.last(), Some(&"tenant.create"));
    assert!(by_operator.iter().all(|e| e["actor_id"] == "operator"));
    let (by_auditor, _) = walk(
        &app,
        &id,
        &auditor,
        &[("actor_id", auditor_sub.as_str())],
        500,
    )
    .await;
    assert!(!by_auditor.is_empty());
    assert!(by_auditor
        .iter()
        .all(|e| e["action"] == "audit.read" && e["actor_id"] == auditor_sub.as_str()));
    assert!(by_auditor.iter().any(|e| e["seq"] == second_read - 1));
    let (none, _) = walk(&app, &id, &auditor, &[("actor_id", "nobody")], 50).await;
    assert!(none.is_empty());

    // from / to (to is exclusive), on the suspensions' own timestamps.
    let split = suspends[ROUNDS / 2]["ts"].as_str().unwrap().to_owned();
    let ms = |e: &Value| {
        time::OffsetDateTime::parse(
            e["ts"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp_nanos()
            / 1_000_000
    };
    let split_ms = ms(&suspends[ROUNDS / 2]);
    let later: Vec<i64> = suspends
        .iter()
        .filter(|e| ms(e) >= split_ms)
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let earlier: Vec<i64> = suspends
        .iter()
        .filter(|e| ms(e) < split_ms)
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(!later.is_empty() && !earlier.is_empty(), "{split}");
    let seq_of =
        |v: Vec<Value>| -> Vec<i64> { v.iter().map(|e| e["seq"].as_i64().unwrap()).collect() };
    let (from, _) = walk(
        &app,
        &id,
        &auditor,
        &[("action", "tenant.suspend"), ("from", split.as_str())],
        500,
    )
    .await;
    assert_eq!(seq_of(from), later, "from={split}");
    let (to, _) = walk(
        &app,
        &id,
        &auditor,
        &[("action", "tenant.suspend"), ("to", split.as_str())],
        500,
    )
    .await;
    assert_eq!(seq_of(to), earlier, "to={split}");
    let (both, _) = walk(
        &app,
        &id,
        &auditor,
        &[("from", "2000-01-01"), ("to", "2000-01-02")],
        500,
    )
    .await;
    assert!(both.is_empty(), "a day long ago");
    let (s, p) = read_audit(&app, &id, &auditor, &[("from", "yesterday")]).await;
    assert_eq!((s, p["code"].as_str()), (422, Some("validation_failed")));

    // The cursor walks the whole trail, newest first, without duplicates or gaps; the reads
    // the walk itself records land above it, not inside it.
    let (_, top) = read_audit(&app, &id, &auditor, &[("limit", "1")]).await;
    let newest = seqs(&top)[0];
    let (all, pages) = walk(&app, &id, &auditor, &[], 7).await;
    let walked: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=newest + 1).rev().collect();
    assert_eq!(walked, expected, "every event exactly once");
    assert!(pages > 5);
    let (_, after) = read_audit(&app, &id, &auditor, &[("limit", "1")]).await;
    assert_eq!(
        seqs(&after)[0],
        newest + 1 + pages as i64,
        "one audit.read per page read"
    );
    assert_eq!(all.last().unwrap()["action"], "tenant.create");
}

/// A direct database connection that bypasses the server (and, for tampering, the
/// append-only triggers).
enum Direct {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

impl Direct {
    async fn open(db: &Db) -> Direct {
        match &db.pg {
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(db.sqlite_path())
                    .busy_timeout(std::time::Duration::from_secs(10));
                Direct::Sqlite(sqlx::SqliteConnection::connect_with(&opts).await.unwrap())
            }
            // The owner's DSN: the test server's superuser, triggers enabled.
            Some(pg) => Direct::Pg(sqlx::PgConnection::connect(&pg.url).await.unwrap()),
        }
    }

    /// Runs `sql` with `$1` bound to `tenant`: rows affected, or the database's refusal.
    async fn exec(&mut self, sql: &str, tenant: &str) -> Result<u64, sqlx::Error> {
        match self {
            Direct::Sqlite(c) => Ok(sqlx::query(sql)
                .bind(tenant)
                .execute(&mut *c)
                .await?
                .rows_affected()),
            Direct::Pg(c) => Ok(sqlx::query(sql)
                .bind(tenant)
                .execute(&mut *c)
                .await?
                .rows_affected()),
        }
    }

    async fn batch(&mut self, sql: &str) {
        match self {
            Direct::Sqlite(c) => c.execute(sql).await.map(|_| ()),
            Direct::Pg(c) => c.execute(sql).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// From now on this connection is not stopped by the append-only triggers: PostgreSQL
    /// replica mode (superuser) skips ordinary triggers; on SQLite the file's owner can drop them.
    async fn bypass_triggers(&mut self) {
        match self {
            Direct::Sqlite(_) => {
                self.batch(
                    "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;",
                )
                .await
            }
            Direct::Pg(_) => self.batch("SET session_replication_role = replica").await,
        }
    }

    async fn count_events(&mut self, tenant: &str) -> i64 {
        let sql = "SELECT count(*) FROM audit_events WHERE tenant_id = $1";
        match self {
            Direct::Sqlite(c) => {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(tenant)
                    .fetch_one(&mut *c)
                    .await
            }
            Direct::Pg(c) => {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(tenant)
                    .fetch_one(&mut *c)
                    .await
            }
        }
        .unwrap()
    }

    async fn close(self) {
        match self {
            Direct::Sqlite(c) => c.close().await.ok(),
            Direct::Pg(c) => c.close().await.ok(),
        };
    }
}

fn assert_append_only_refusal(res: Result<u64, sqlx::Error>, what: &str) {
    match res {
        Ok(n) => panic!("{what} was allowed ({n} rows)"),
        Err(e) => assert!(
            e.to_string().contains("append-only"),
            "{what} refused, but not by the append-only rule: {e}"
        ),
    }
}

async fn audit_events_are_append_only(b: Backend) {
    let app = TestApp::spawn(b).await;
    let id = app.active_tenant("Ledger").await;
    suspend_and_reactivate(&app, &id, "x").await;
    let platform = PlatformCtx::for_system("test/audit");
    let store = app.control.store().clone();
    let before = store
        .audit_chain_page(&platform, &id, 0, 100)
        .await
        .unwrap();
    assert_eq!(before.len(), 4);

    let mut c = Direct::open(&app.db).await;
    for (what, sql) in [
        (
            "UPDATE",
            "UPDATE audit_events SET data = '{\"forged\":true}' WHERE tenant_id = $1 AND seq = 3",
        ),
        ("DELETE", "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 4"),
        (
            "DELETE of everything",
            "DELETE FROM audit_events WHERE tenant_id = $1 OR tenant_id <> $1",
        ),
        (
            "upsert",
            "INSERT INTO audit_events (tenant_id, seq, id, ts, action, actor_kind, actor_id, outcome, \
             data, prev_hash, hash) VALUES ($1, 3, 'forged', 0, 'tenant.suspend', 'user', 'x', \
             'success', '{}', '0', '0') ON CONFLICT (tenant_id, seq) DO UPDATE SET data = excluded.data",
        ),
    ] {
        assert_append_only_refusal(c.exec(sql, &id).await, what);
    }
    if let Direct::Pg(pg) = &mut c {
        let res = sqlx::query("TRUNCATE audit_events").execute(&mut *pg).await;
        assert_append_only_refusal(res.map(|r| r.rows_affected()), "TRUNCATE");

        // The server's role: not even granted, whatever the tenant context.
        sqlx::query("SET ROLE agentplane_app")
            .execute(&mut *pg)
            .await
            .unwrap();
        for sql in [
            "UPDATE audit_events SET data = '{}' WHERE tenant_id = $1",
            "DELETE FROM audit_events WHERE tenant_id = $1",
            "TRUNCATE audit_events",
        ] {
            let mut tx = pg.begin().await.unwrap();
            sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .unwrap();
            let q = sqlx::query(sql);
            let q = if sql.contains("$1") { q.bind(&id) } else { q };
            let err = q.execute(&mut *tx).await.expect_err(sql);
            assert!(
                matches!(&err, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501")),
                "{sql} as agentplane_app: {err}"
            );
            tx.rollback().await.unwrap();
        }
        sqlx::query("RESET ROLE").execute(&mut *pg).await.unwrap();
    }
    assert_eq!(c.count_events(&id).await, 4);
    c.close().await;

    let after = store
        .audit_chain_page(&platform, &id, 0, 100)
        .await
        .unwrap();
    assert_eq!(before, after, "nothing changed");
    let report = agentplane_audit::verify_all(store.as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
}

/// SQLite's `INSERT OR REPLACE` deletes the conflicting row without firing DELETE triggers
/// (unless `recursive_triggers` is on), so it must be refused by an INSERT trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_insert_or_replace_cannot_rewrite_an_event() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let id = app.active_tenant("Replace").await;
    let mut c = Direct::open(&app.db).await;
    for sql in [
        "INSERT OR REPLACE INTO audit_events (tenant_id, seq, id, ts, action, actor_kind, actor_id, \
         outcome, data, prev_hash, hash) SELECT tenant_id, seq, id, ts, 'tenant.forged', actor_kind, \
         actor_id, outcome, data, prev_hash, hash FROM audit_events WHERE tenant_id = $1 AND seq = 1",
        "REPLACE INTO audit_events (tenant_id, seq, id, ts, action, actor_kind, actor_id, outcome, \
         data, prev_hash, hash) SELECT tenant_id, seq, id, ts, 'tenant.forged', actor_kind, \
         actor_id, outcome, data, prev_hash, hash FROM audit_events WHERE tenant_id = $1 AND seq = 2",
    ] {
        assert_append_only_refusal(c.exec(sql, &id).await, sql);
    }
    c.close().await;
    let platform = PlatformCtx::for_system("test/audit");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, &id, 0, 10)
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|(e, _)| e.action.as_str()).collect();
    assert_eq!(actions, ["tenant.create", "tenant.provisioned"]);
}

/// An app with a victim tenant whose chain is
/// `1 tenant.create, 2 tenant.provisioned (with personal data), 3 tenant.suspend,
/// 4 tenant.reactivate`, and a bystander tenant.
async fn victim_and_bystander(b: Backend) -> (TestApp, String, String) {
    let app = TestApp::spawn(b).await;
    let victim = app.active_tenant("Victim").await;
    let bystander = app.active_tenant("Bystander").await;
    suspend_and_reactivate(&app, &victim, "audit test").await;
    let platform = PlatformCtx::for_system("test/audit");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, &victim, 0, 100)
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|(e, _)| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.provisioned",
            "tenant.suspend",
            "tenant.reactivate"
        ]
    );
    assert!(events[1].1.is_some(), "provisioning records personal data");
    (app, victim, bystander)
}

/// Runs `agentplane audit verify` on the app's database: exit code and stdout.
async fn verify(app: &TestApp) -> (Option<i32>, String) {
    let (status, out, err) = Proc::run(&["audit", "verify"], &app.db.env(&app.secret)).await;
    assert!(
        status.code().is_some(),
        "audit verify crashed: {status:?}\n{out}\n{err}"
    );
    (status.code(), format!("{out}\n--- stderr\n{err}"))
}

fn assert_line(out: &str, line: &str) {
    assert!(
        out.lines().any(|l| l.trim_end() == line),
        "no line {line:?} in:\n{out}"
    );
}

/// Tampers with the victim through a direct connection that bypasses the triggers, then
/// expects `audit verify` to exit 1 naming the victim's chain and what broke, and to pass
/// the bystander.
/// `expected` is the exact reason printed, or `None` when any reason will do.
async fn tamper_and_verify(b: Backend, sql: &str, expected: Option<&str>) {
    let (app, victim, bystander) = victim_and_bystander(b).await;
    let (code, out) = verify(&app).await;
    assert_eq!(code, Some(0), "{out}");

    let mut c = Direct::open(&app.db).await;
    c.bypass_triggers().await;
    let n = c.exec(sql, &victim).await.unwrap();
    assert_eq!(n, 1, "{sql}");
    c.close().await;

    let (code, out) = verify(&app).await;
    assert_eq!(code, Some(1), "{out}");
    match expected {
        Some(reason) => assert_line(&out, &format!("BROKEN  {victim}: {reason}")),
        None => assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("BROKEN  {victim}: "))),
            "no BROKEN line for {victim} in:\n{out}"
        ),
    }
    assert_line(&out, &format!("ok      {bystander} (2 events)"));
    assert!(out.contains("audit chain verification FAILED"), "{out}");
    assert_eq!(
        out.matches("BROKEN").count(),
        1,
        "only the victim's chain: {out}"
    );
}

async fn verify_passes_on_an_untampered_database(b: Backend) {
    let (app, victim, bystander) = victim_and_bystander(b).await;
    // Reads are recorded; the chain still verifies.
    let auditor = app.tenant_user("auditor", &victim);
    let (s, _) = read_audit(&app, &victim, &auditor, &[("purpose", "check")]).await;
    assert_eq!(s, 200);
    let (code, out) = verify(&app).await;
    assert_eq!(code, Some(0), "{out}");
    assert_line(&out, &format!("ok      {victim} (5 events)"));
    assert_line(&out, &format!("ok      {bystander} (2 events)"));
    assert!(!out.contains("BROKEN"), "{out}");
    assert!(out.contains("events verified"), "{out}");
}

async fn verify_catches_an_edited_event(b: Backend) {
    tamper_and_verify(
        b,
        "UPDATE audit_events SET data = '{\"reason\":\"nothing to see\"}' WHERE tenant_id = $1 AND seq = 3",
        Some("seq 3: content does not match its hash"),
    )
    .await;
}

async fn verify_catches_a_deleted_middle_event(b: Backend) {
    tamper_and_verify(
        b,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 2",
        Some("expected seq 2, found seq 3"),
    )
    .await;
}

async fn verify_catches_a_deleted_last_event(b: Backend) {
    tamper_and_verify(
        b,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 4",
        Some(
            "the chain ends at seq 3 but its head records seq 4: events were removed from its end",
        ),
    )
    .await;
}

async fn verify_catches_edited_personal_data(b: Backend) {
    tamper_and_verify(
        b,
        "UPDATE audit_pii SET pii = '{\"first_admin_email\":\"someone-else@victim.test\"}' \
         WHERE tenant_id = $1 AND event_id = \
         (SELECT id FROM audit_events WHERE tenant_id = $1 AND seq = 2)",
        Some("seq 2: personal data does not match its digest"),
    )
    .await;
}

/// The head row is what reveals events removed from a chain's end; a chain whose head is
/// gone (which even the server role may DELETE) must not drop out of verification.
async fn verify_catches_a_chain_whose_head_was_removed(b: Backend) {
    tamper_and_verify(b, "DELETE FROM audit_heads WHERE tenant_id = $1", None).await;
}

async fn erasing_personal_data_keeps_the_chain_verifiable(b: Backend) {
    let (app, victim, bystander) = victim_and_bystander(b).await;
    // audit_pii is not append-only: a plain connection, triggers in force, may erase it.
    let mut c = Direct::open(&app.db).await;
    let n = c
        .exec("DELETE FROM audit_pii WHERE tenant_id = $1", &victim)
        .await
        .unwrap();
    assert!(
        n >= 2,
        "the creation and provisioning events held personal data ({n})"
    );
    c.close().await;

    let platform = PlatformCtx::for_system("test/audit");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, &victim, 0, 100)
        .await
        .unwrap();
    assert!(events.iter().all(|(_, pii)| pii.is_none()), "erased");
    assert!(
        events[1].0.pii_digest.is_some(),
        "the chain keeps the digest, not the data"
    );

    let (code, out) = verify(&app).await;
    assert_eq!(code, Some(0), "{out}");
    assert_line(&out, &format!("ok      {victim} (4 events)"));
    assert_line(&out, &format!("ok      {bystander} (2 events)"));
}
