//! Row-level security on PostgreSQL, the second wall (invariant 2). PostgreSQL only: these
//! tests fail (never skip) when the test server is unreachable.
//!
//! - The catalog: every tenant table enables and forces RLS and leads its key with
//!   `tenant_id`; the server role owns nothing and cannot bypass RLS.
//! - Raw SQL as the server role sees and changes nothing without `app.tenant_id`, and only
//!   that tenant's rows with it; the setting ends with its transaction.
//! - The server itself runs as that role, and `serve` refuses an unmigrated database.

use crate::crash::Proc;
use crate::helpers::{pg_admin_url, pg_url_for, random_secret, Backend, PgDb, TestApp};
use agentplane_core::authz::PlatformCtx;
use agentplane_core::page::PageRequest;
use agentplane_core::time::Timestamp;
use agentplane_core::usage::UsageRecord;
use agentplane_core::{TenantId, UsageRecordId};
use agentplane_store::{PgStore, Store};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashMap};

const APP_ROLE: &str = "agentplane_app";

/// Every tenant-owned table of the foundation schema.
const TENANT_TABLES: [&str; 9] = [
    "tenants",
    "tenant_settings",
    "memberships",
    "usage_counters",
    "usage_records",
    "jobs",
    "audit_heads",
    "audit_events",
    "audit_pii",
];

/// A connection as the owner (the test server's superuser).
async fn owner(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL for tests is unreachable at {url} ({e}); run scripts/test")
    })
}

/// A connection that has become the server's role, as the server does.
async fn as_app_role(url: &str) -> PgConnection {
    let mut c = owner(url).await;
    sqlx::query(&format!("SET ROLE {APP_ROLE}"))
        .execute(&mut c)
        .await
        .unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(me, APP_ROLE);
    c
}

async fn count(c: &mut PgConnection, table: &str, filter: &str, tenant: &str) -> i64 {
    // Table names come from TENANT_TABLES, never from input.
    let sql = format!("SELECT count(*) FROM {table} {filter}");
    let q = sqlx::query_scalar::<_, i64>(&sql);
    let q = if filter.contains("$1") {
        q.bind(tenant)
    } else {
        q
    };
    q.fetch_one(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn counts_of(c: &mut PgConnection, tenant: &str) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for t in TENANT_TABLES {
        out.insert(t, count(c, t, "WHERE tenant_id = $1", tenant).await);
    }
    out
}

fn usage_record(tenant: TenantId) -> UsageRecord {
    UsageRecord {
        id: UsageRecordId::new(),
        tenant_id: tenant,
        ts: Timestamp::now(),
        agent_id: Some("agent-1".into()),
        model: "m".into(),
        provider: "p".into(),
        tokens_in: 3,
        tokens_out: 4,
        latency_ms: 5,
        status: "ok".into(),
        trace_id: None,
    }
}

/// Two active tenants, each with a usage record.
async fn two_tenants(app: &TestApp) -> (TenantId, TenantId) {
    let a: TenantId = app.active_tenant("Alpha").await.parse().unwrap();
    let b: TenantId = app.active_tenant("Bravo").await.parse().unwrap();
    let platform = PlatformCtx::for_system("test/rls");
    for t in [a, b] {
        app.control
            .store()
            .insert_usage_record(&platform.tenant(t), &usage_record(t))
            .await
            .unwrap();
    }
    (a, b)
}

fn is_rls_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().as_deref() == Some("42501") && d.message().contains("row-level security")
        }
        _ => false,
    }
}

#[tokio::test]
async fn catalog_forces_rls_on_every_tenant_table_and_the_app_role_is_powerless() {
    let db = PgDb::create().await;
    let mut c = owner(&db.url).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' \
           AND t.table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for t in TENANT_TABLES {
        assert!(
            tables.iter().any(|x| x == t),
            "{t} has no tenant_id column? {tables:?}"
        );
    }
    for t in &tables {
        let (rls, force): (bool, bool) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass",
        )
        .bind(format!("public.{t}"))
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert!(rls, "{t}: ROW LEVEL SECURITY is not enabled");
        assert!(force, "{t}: ROW LEVEL SECURITY is not forced");
        let first_key: Option<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1::regclass AND i.indisprimary",
        )
        .bind(format!("public.{t}"))
        .fetch_optional(&mut c)
        .await
        .unwrap();
        assert_eq!(
            first_key.as_deref(),
            Some("tenant_id"),
            "{t}: the primary key must lead with tenant_id"
        );
        let policies: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND tablename = $1 \
             AND qual LIKE '%app.tenant_id%' AND with_check LIKE '%app.tenant_id%'",
        )
        .bind(t)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert!(policies >= 1, "{t}: no policy on app.tenant_id");
    }

    let (bypass, superuser, createrole): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolbypassrls, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1",
    )
    .bind(APP_ROLE)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(!bypass, "{APP_ROLE} must not have BYPASSRLS");
    assert!(!superuser, "{APP_ROLE} must not be a superuser");
    assert!(!createrole, "{APP_ROLE} must not create roles");
    let powerful_parents: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
         WHERE m.member = $1::regrole AND (r.rolsuper OR r.rolbypassrls)",
    )
    .bind(APP_ROLE)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(powerful_parents, 0, "{APP_ROLE} inherits no bypass");
    let owned: Vec<String> =
        sqlx::query_scalar("SELECT relname::text FROM pg_class WHERE relowner = $1::regrole")
            .bind(APP_ROLE)
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert!(
        owned.is_empty(),
        "{APP_ROLE} owns relations (owners bypass unforced RLS and can alter policies): {owned:?}"
    );
    let owned_schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspowner = $1::regrole")
            .bind(APP_ROLE)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(owned_schemas, 0);
    for privilege in ["UPDATE", "DELETE", "TRUNCATE"] {
        let has: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'audit_events', $2)")
            .bind(APP_ROLE)
            .bind(privilege)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert!(!has, "{APP_ROLE} may {privilege} audit_events");
    }
    c.close().await.ok();
}

#[tokio::test]
async fn raw_sql_as_the_server_role_sees_only_the_tenant_in_context() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (a, b) = two_tenants(&app).await;
    let (a, b) = (a.to_string(), b.to_string());
    let url = app.db.pg.as_ref().unwrap().url.clone();

    // The owner (superuser) sees both tenants in every table: the zeros below mean something.
    let mut su = owner(&url).await;
    let a_counts = counts_of(&mut su, &a).await;
    let b_counts = counts_of(&mut su, &b).await;
    for (t, n) in a_counts.iter().chain(b_counts.iter()) {
        assert!(*n > 0, "{t} has no row for a seeded tenant");
    }
    let b_name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE tenant_id = $1")
        .bind(&b)
        .fetch_one(&mut su)
        .await
        .unwrap();

    let mut c = as_app_role(&url).await;
    // No tenant in context: nothing at all.
    for t in TENANT_TABLES {
        assert_eq!(
            count(&mut c, t, "", "").await,
            0,
            "{t} without app.tenant_id"
        );
        assert_eq!(
            count(&mut c, t, "WHERE tenant_id = $1", &a).await,
            0,
            "{t} without app.tenant_id, asking for A"
        );
    }

    // Tenant A in context: A's rows, none of B's, even when asked for by id.
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(&a)
        .execute(&mut *tx)
        .await
        .unwrap();
    for t in TENANT_TABLES {
        assert_eq!(
            count(&mut tx, t, "", "").await,
            a_counts[t],
            "{t}: A sees exactly its rows"
        );
        assert_eq!(
            count(&mut tx, t, "WHERE tenant_id = $1", &b).await,
            0,
            "{t}: A asks for B's rows by id"
        );
        assert_eq!(
            count(&mut tx, t, "WHERE tenant_id <> $1", &a).await,
            0,
            "{t}: A sees only A"
        );
    }
    // Writes to B's rows touch nothing.
    for sql in [
        "UPDATE tenants SET name = 'pwned' WHERE tenant_id = $1",
        "UPDATE tenant_settings SET value = '\"pwned\"' WHERE tenant_id = $1",
        "DELETE FROM memberships WHERE tenant_id = $1",
        "UPDATE usage_counters SET messages_used = 999 WHERE tenant_id = $1",
        "DELETE FROM usage_records WHERE tenant_id = $1",
        "UPDATE jobs SET status = 'dead' WHERE tenant_id = $1",
        "UPDATE audit_heads SET seq = 0 WHERE tenant_id = $1",
        "DELETE FROM audit_pii WHERE tenant_id = $1",
    ] {
        let n = sqlx::query(sql)
            .bind(&b)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .rows_affected();
        assert_eq!(n, 0, "{sql} with A in context");
    }
    tx.commit().await.unwrap();

    // Inserting a row of B, or moving a row of A to B, violates the WITH CHECK.
    let bad_writes = [
        "INSERT INTO usage_records (tenant_id, id, ts, model, provider, tokens_in, tokens_out, \
         latency_ms, status) VALUES ($1, 'forged', 0, 'm', 'p', 1, 1, 1, 'ok')",
        "INSERT INTO audit_events (tenant_id, seq, id, ts, action, actor_kind, actor_id, outcome, \
         data, prev_hash, hash) VALUES ($1, 999, 'forged', 0, 'tenant.create', 'user', 'x', \
         'success', '{}', '0', '0')",
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1 || '-x', 1, '0')",
        "UPDATE usage_records SET tenant_id = $1",
        "UPDATE memberships SET tenant_id = $1",
    ];
    for sql in bad_writes {
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(&a)
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query(sql)
            .bind(&b)
            .execute(&mut *tx)
            .await
            .expect_err(sql);
        assert!(is_rls_violation(&err), "{sql}: {err}");
        tx.rollback().await.unwrap();
    }

    // The setting ends with its transaction, committed or not.
    for commit in [true, false] {
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(&a)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(count(&mut tx, "tenants", "", "").await, 1);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let mut tx = c.begin().await.unwrap();
        for t in TENANT_TABLES {
            assert_eq!(
                count(&mut tx, t, "", "").await,
                0,
                "{t} after the scoped transaction ended (commit: {commit})"
            );
        }
        tx.commit().await.unwrap();
    }
    // Outside an explicit transaction, a local setting lasts one statement.
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(&a)
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(count(&mut c, "tenants", "", "").await, 0);
    c.close().await.ok();

    // B is untouched.
    assert_eq!(counts_of(&mut su, &b).await, b_counts);
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE tenant_id = $1")
        .bind(&b)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(name, b_name);
    su.close().await.ok();
}

#[tokio::test]
async fn the_server_runs_as_the_unprivileged_role_under_rls() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (a, b) = two_tenants(&app).await;
    let url = app.db.pg.as_ref().unwrap().url.clone();
    let mut su = owner(&url).await;
    // A setting only B has.
    sqlx::query(
        "INSERT INTO tenant_settings (tenant_id, key, value, updated_at) \
         VALUES ($1, 'probe.only_b', '\"b\"', 0)",
    )
    .bind(b.to_string())
    .execute(&mut su)
    .await
    .unwrap();

    let platform = PlatformCtx::for_system("test/rls");
    let (ctx_a, ctx_b) = (platform.tenant(a), platform.tenant(b));
    let server_store = app.control.store().clone();
    let like_server = PgStore::connect(&url, Some(APP_ROLE), 1).await.unwrap();
    let stores: [(&str, &dyn Store); 2] = [
        ("the running server's store", server_store.as_ref()),
        ("a store connected like the server", &like_server),
    ];
    let keys = |s: &[agentplane_store::Setting]| -> Vec<String> {
        s.iter().map(|x| x.key.clone()).collect()
    };
    for (what, store) in stores {
        let sa = keys(&store.list_settings(&ctx_a).await.unwrap());
        let sb = keys(&store.list_settings(&ctx_b).await.unwrap());
        assert!(sa.contains(&"locale".to_owned()), "{what}: {sa:?}");
        assert!(!sa.contains(&"probe.only_b".to_owned()), "{what}: {sa:?}");
        assert!(sb.contains(&"probe.only_b".to_owned()), "{what}: {sb:?}");
        let page = PageRequest::first(100);
        let members = store
            .list_members(&ctx_a, &Default::default(), &page)
            .await
            .unwrap()
            .items;
        assert_eq!(members.len(), 1, "{what}");
        assert!(members.iter().all(|m| m.tenant_id == a), "{what}");
        let usage = store
            .tenant_usage_records(&ctx_a, Default::default(), &page)
            .await
            .unwrap()
            .items;
        assert_eq!(usage.len(), 1, "{what}");
        assert!(usage.iter().all(|r| r.tenant_id == a), "{what}");
    }

    // Proof that the server's queries run as agentplane_app under RLS: a restrictive
    // policy for that role alone hides A's `locale` from both stores, not from the owner.
    sqlx::query(
        "CREATE POLICY rls_probe ON tenant_settings AS RESTRICTIVE FOR SELECT TO agentplane_app \
         USING (key <> 'locale')",
    )
    .execute(&mut su)
    .await
    .unwrap();
    for (what, store) in stores {
        let sa = keys(&store.list_settings(&ctx_a).await.unwrap());
        assert!(
            !sa.contains(&"locale".to_owned()),
            "{what} is not subject to agentplane_app's policies: {sa:?}"
        );
        assert!(sa.contains(&"timezone".to_owned()), "{what}: {sa:?}");
    }
    let as_owner = PgStore::connect(&url, None, 1).await.unwrap();
    let sa = keys(&as_owner.list_settings(&ctx_a).await.unwrap());
    assert!(
        sa.contains(&"locale".to_owned()),
        "the probe is specific to the role: {sa:?}"
    );
    as_owner.close().await;
    like_server.close().await;
    su.close().await.ok();
}

#[tokio::test]
async fn serve_refuses_an_unmigrated_database_until_migrate_runs() {
    // The role is cluster-wide and created by the migrations; make sure it exists, as it does
    // on any server that ever ran `agentplane migrate` (see the report for a fresh cluster).
    drop(PgDb::create().await);
    let name = format!("ap_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = owner(&pg_admin_url()).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    // Not migrated; the guard drops the database at the end.
    let db = PgDb {
        name: name.clone(),
        url: pg_url_for(&name),
    };
    let data = tempfile::tempdir().unwrap();
    let env = HashMap::from([
        ("TENANT_CATALOG_DSN".to_owned(), db.url.clone()),
        ("JWT_SHARED_SECRET".to_owned(), random_secret()),
        (
            "AGENTPLANE_DATA_DIR".to_owned(),
            data.path().display().to_string(),
        ),
    ]);

    let (status, out, err) = Proc::run(&["serve", "--listen", "127.0.0.1:0"], &env).await;
    assert!(
        !status.success(),
        "serve started on an empty database\n{out}\n{err}"
    );
    assert!(
        err.contains("agentplane migrate"),
        "the error tells what to do: {err}"
    );

    let migrations = |url: String| async move {
        let mut c = owner(&url).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.ok();
        n
    };
    let (status, out, err) = Proc::run(&["migrate"], &env).await;
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("migrations applied (postgres)"), "{out}");
    let applied = migrations(db.url.clone()).await;
    assert!(applied >= 1);
    let (status, out, err) = Proc::run(&["migrate"], &env).await;
    assert!(
        status.success(),
        "a second migrate is a no-op: {out}\n{err}"
    );
    assert_eq!(migrations(db.url.clone()).await, applied);

    // And now the server starts.
    let mut serve = Proc::spawn(&["serve", "--listen", "127.0.0.1:0"], &env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !serve.stderr().contains("agentplane serving") {
        if let Some(s) = serve.try_status() {
            panic!("serve exited ({s:?}) after migrate\n{}", serve.describe());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not start\n{}",
            serve.describe()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    serve.terminate();
    let s = serve.wait(std::time::Duration::from_secs(30)).await;
    assert!(s.success(), "{s:?}\n{}", serve.describe());
}

/// On a cluster where `agentplane migrate` never ran, the server role does not exist yet
/// (the migrations create it). Simulated with a role name that exists nowhere: `serve` must
/// say what is wrong, not time out on a pool that cannot open a connection.
#[tokio::test]
async fn serve_names_a_missing_server_role() {
    let db = PgDb::create().await;
    let role = format!("ap_missing_{}", uuid::Uuid::new_v4().simple());
    let data = tempfile::tempdir().unwrap();
    let env = HashMap::from([
        ("TENANT_CATALOG_DSN".to_owned(), db.url.clone()),
        ("JWT_SHARED_SECRET".to_owned(), random_secret()),
        ("AGENTPLANE_DB_ROLE".to_owned(), role.clone()),
        (
            "AGENTPLANE_DATA_DIR".to_owned(),
            data.path().display().to_string(),
        ),
    ]);
    let (status, out, err) = Proc::run(&["serve", "--listen", "127.0.0.1:0"], &env).await;
    assert!(
        !status.success(),
        "serve started without its role\n{out}\n{err}"
    );
    let final_error = err
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no final error line in:\n{err}"));
    assert!(
        final_error.contains(&role),
        "the error names the missing role {role}: {final_error}"
    );
}
