//! Jobs survive crashes (invariant 6): the real `agentplane worker` binary is killed in the
//! middle of a provisioning transaction (at the `provision.before_commit` crash point), and a
//! second worker finishes the job once the lease expires, with no effect lost or doubled.
//! Also: two worker processes on one PostgreSQL database never run a job twice.
//!
//! `Proc` (the real binary as a child process, with bounded waits) is shared with `rls.rs`
//! and `audit.rs`.

use crate::both_backends;
use crate::helpers::{status_json, Backend, Db, PgDb, TestApp};
use agentplane_core::authz::PlatformCtx;
use agentplane_core::job::JobStatus;
use agentplane_core::page::PageRequest;
use agentplane_core::tenant::TenantStatus;
use agentplane_core::{JobId, TenantId};
use serde_json::json;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often the tests poll for a state change, and the longest they wait for one.
pub(crate) const POLL: Duration = Duration::from_millis(100);
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// SIGABRT, the signal `std::process::abort` raises.
pub(crate) const SIGABRT: i32 = 6;

/// The real `agentplane` binary running as a child process, with only the environment the
/// test gives it, its output in files (so a chatty child can never block on a full pipe),
/// and killed on drop if a test panics while it runs.
pub(crate) struct Proc {
    what: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    exited: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str], env: &HashMap<String, String>) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_agentplane"))
            .args(args)
            .env_clear()
            .envs(env)
            .env("NO_COLOR", "1")
            .env("AGENTPLANE_LOG", "info")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start agentplane {args:?}: {e}"));
        Proc {
            what: format!("agentplane {}", args.join(" ")),
            child,
            out,
            err,
            exited: None,
            _dir: dir,
        }
    }

    /// Runs `args` to completion (at most `PATIENCE`): its status, stdout and stderr.
    pub(crate) async fn run(
        args: &[&str],
        env: &HashMap<String, String>,
    ) -> (ExitStatus, String, String) {
        let mut p = Proc::spawn(args, env);
        let status = p.wait(PATIENCE).await;
        (status, p.stdout(), p.stderr())
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The exit status if the process has exited.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    /// Waits for the process to exit; kills it and fails the test after `limit`.
    pub(crate) async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the process to shut down gracefully (SIGTERM).
    pub(crate) fn terminate(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", self.child.id()))
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot send SIGTERM to {}", self.what);
    }

    /// Kills the process at once (SIGKILL): no shutdown code runs.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// A description for assertion messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

both_backends!(
    worker_killed_mid_provisioning_loses_nothing_and_duplicates_nothing,
    worker_killed_mid_erasure_erases_once_with_one_receipt,
    worker_killed_mid_export_finishes_it_once_with_one_artifact,
    worker_killed_mid_restore_restores_once,
);

async fn worker_killed_mid_restore_restores_once(b: Backend) {
    let app = TestApp::spawn_on(Db::new(b).await, |_| {}).await;
    let tenant = app.active_tenant("Lazarus").await;
    crate::exports::seed(&app, &tenant, "lazarus-marker", 25).await;
    let admin = app.tenant_user("tenant_admin", &tenant);
    let (s, backup) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/backups?confirm=true"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{backup}");
    app.run_jobs().await;
    let id = backup["id"].as_str().unwrap();
    let (s, job) = status_json(
        app.post(
            &format!("/v1/admin/tenants/{tenant}/backups/{id}/restore?confirm=true"),
            &app.platform_admin(),
            json!({"slug": "lazarus-drill"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let new_id: TenantId = job["payload"]["tenant_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let store = app.control.store().clone();
    let (env, crash_env) = worker_envs(&app, "import.before_commit");

    // 1. The worker dies inside the loading transaction: no tenant, not even a part of one.
    let mut doomed = Proc::spawn(&["worker"], &crash_env);
    let status = doomed.wait(PATIENCE).await;
    assert_eq!(status.signal(), Some(SIGABRT), "{}", doomed.describe());
    assert!(store.get_tenant(new_id).await.unwrap().is_none());
    assert!(crate::exports::rows_of(&app, &new_id.to_string())
        .await
        .0
        .is_empty());

    // 2. A second worker restores it, once.
    let mut rescuer = Proc::spawn(&["worker"], &env);
    let job_id: JobId = job["id"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while store.get_job(job_id).await.unwrap().unwrap().status != JobStatus::Succeeded {
        if let Some(s) = rescuer.try_status() {
            panic!("the second worker exited ({s:?})\n{}", rescuer.describe());
        }
        assert!(
            Instant::now() < deadline,
            "not restored\n{}",
            rescuer.describe()
        );
        tokio::time::sleep(POLL).await;
    }
    rescuer.terminate();
    assert!(
        rescuer.wait(PATIENCE).await.success(),
        "{}",
        rescuer.describe()
    );
    assert_eq!(store.get_job(job_id).await.unwrap().unwrap().attempts, 2);
    // Exactly the backup's records (the source itself has moved on: the workers applied its
    // retention to the 2023 records meanwhile).
    let restored = crate::exports::rows_of(&app, &new_id.to_string()).await.0;
    let (_, rec) = status_json(
        app.get(&format!("/v1/tenants/{tenant}/backups/{id}"), &admin)
            .await,
    )
    .await;
    let counts = rec["manifest"]["counts"].as_object().unwrap();
    for (t, n) in counts {
        let got = restored.iter().filter(|(name, _)| name == t).count() as u64;
        // Restored under a new id, the chain records the id its events were hashed under.
        let made = u64::from(t == "audit_origins");
        assert_eq!(got, n.as_u64().unwrap() + made, "{t}");
    }
    assert_eq!(counts["usage_records"], 25);
    let t = store.get_tenant(new_id).await.unwrap().unwrap();
    assert_eq!(t.slug.as_str(), "lazarus-drill");
}

/// The environment of worker processes on `app`'s database with a one-second lease and a
/// quick poll: a rescuer's, and a doomed one's that aborts at `crash_point`.
pub(crate) fn worker_envs(
    app: &TestApp,
    crash_point: &str,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let mut env = app.db.env(&app.secret);
    env.insert("AGENTPLANE_JOB_LEASE_SECS".into(), "1".into());
    env.insert("AGENTPLANE_WORKER_POLL_INTERVAL_MS".into(), "50".into());
    let mut crash_env = env.clone();
    crash_env.insert("AGENTPLANE_CRASH_AT".into(), crash_point.into());
    (env, crash_env)
}

async fn worker_killed_mid_export_finishes_it_once_with_one_artifact(b: Backend) {
    let app = TestApp::spawn_on(Db::new(b).await, |_| {}).await;
    let tenant = app.active_tenant("Exodus").await;
    let admin = app.tenant_user("tenant_admin", &tenant);
    let (s, rec) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/exports?confirm=true"),
            &admin,
            json!({"export_type": "full"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let export_path = format!("/v1/tenants/{tenant}/exports/{id}");
    let get = || app.get(&export_path, &admin);
    let (env, crash_env) = worker_envs(&app, "export.before_commit");

    // 1. The worker dies after uploading, before recording: the export is still pending.
    let mut doomed = Proc::spawn(&["worker"], &crash_env);
    let status = doomed.wait(PATIENCE).await;
    assert_eq!(status.signal(), Some(SIGABRT), "{}", doomed.describe());
    let (_, now) = status_json(get().await).await;
    assert_eq!(now["status"], "pending", "{now}");

    // 2. A second worker takes over after the lease and finishes it.
    let mut rescuer = Proc::spawn(&["worker"], &env);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, now) = status_json(get().await).await;
        if now["status"] == "ready" {
            break;
        }
        if let Some(s) = rescuer.try_status() {
            panic!("the second worker exited ({s:?})\n{}", rescuer.describe());
        }
        assert!(
            Instant::now() < deadline,
            "not ready\n{}",
            rescuer.describe()
        );
        tokio::time::sleep(POLL).await;
    }
    rescuer.terminate();
    assert!(
        rescuer.wait(PATIENCE).await.success(),
        "{}",
        rescuer.describe()
    );
    let job = app
        .control
        .store()
        .get_job(rec["job_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.status, job.attempts),
        (JobStatus::Succeeded, 2),
        "{job:?}"
    );
    // One artifact (the first attempt's upload is gone), one completion in the audit trail.
    let artifacts: Vec<PathBuf> = crate::helpers::files_under(app.db.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&format!("/exports/{id}/")))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let chain = app
        .control
        .store()
        .audit_chain_page(&PlatformCtx::for_system("t"), &tenant, 0, 1000)
        .await
        .unwrap();
    let completed = chain
        .iter()
        .filter(|(e, _)| e.action == "export.completed")
        .count();
    assert_eq!(completed, 1);
    // And it downloads whole: the manifest inside matches the record.
    let (_, now) = status_json(get().await).await;
    let bytes = crate::exports::download(&app, &tenant, &now).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_reader(zip.by_name("manifest.json").unwrap()).unwrap();
    assert_eq!(manifest, now["manifest"]);
}

async fn worker_killed_mid_erasure_erases_once_with_one_receipt(b: Backend) {
    let app = TestApp::spawn_on(Db::new(b).await, |_| {}).await;
    let tenant = app.active_tenant("Forget").await;
    let admin = app.tenant_user("tenant_admin", &tenant);
    let (_, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/invitations"),
            &admin,
            json!({"email": "gone@forget.test"}),
        )
        .await,
    )
    .await;
    let (s, who) = status_json(
        app.call(
            reqwest::Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": inv["token"], "password": "correct horse battery staple"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{who}");
    let user = who["user_id"].as_str().unwrap().to_owned();
    let (s, job) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/users/{user}/erase?confirm=true"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let store = app.control.store().clone();
    let ctx = PlatformCtx::for_system("test/crash").tenant(tenant.parse().unwrap());
    let (env, crash_env) = worker_envs(&app, "erase.before_commit");

    // 1. The worker dies inside the erasing transaction: nothing of it is visible.
    let mut doomed = Proc::spawn(&["worker"], &crash_env);
    let status = doomed.wait(PATIENCE).await;
    assert_eq!(status.signal(), Some(SIGABRT), "{}", doomed.describe());
    assert!(
        doomed.stderr().contains("erase.before_commit"),
        "{}",
        doomed.describe()
    );
    assert!(store
        .erasure_receipt(&ctx, &job_id)
        .await
        .unwrap()
        .is_none());
    let member = store.get_member(&ctx, user.parse().unwrap()).await.unwrap();
    assert!(member.is_some(), "the uncommitted erasure removed nothing");

    // 2. A second worker takes the job over after the lease and finishes it, once.
    let mut rescuer = Proc::spawn(&["worker"], &env);
    let deadline = Instant::now() + PATIENCE;
    while store
        .erasure_receipt(&ctx, &job_id)
        .await
        .unwrap()
        .is_none()
    {
        if let Some(s) = rescuer.try_status() {
            panic!("the second worker exited ({s:?})\n{}", rescuer.describe());
        }
        assert!(
            Instant::now() < deadline,
            "no receipt\n{}",
            rescuer.describe()
        );
        tokio::time::sleep(POLL).await;
    }
    rescuer.terminate();
    assert!(
        rescuer.wait(PATIENCE).await.success(),
        "{}",
        rescuer.describe()
    );
    assert!(store
        .get_member(&ctx, user.parse().unwrap())
        .await
        .unwrap()
        .is_none());
    let job = store
        .get_job(job_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 2, "{job:?}");
    let chain = store
        .audit_chain_page(&PlatformCtx::for_system("t"), &tenant, 0, 1000)
        .await
        .unwrap();
    let erased = chain
        .iter()
        .filter(|(e, _)| e.action == "user.erased")
        .count();
    assert_eq!(erased, 1, "one erasure, recorded once");
    let dump = crate::helpers::dump_database(&app.db);
    assert!(!dump.windows(16).any(|w| w == b"gone@forget.test"));
}

async fn worker_killed_mid_provisioning_loses_nothing_and_duplicates_nothing(b: Backend) {
    let db = Db::new(b).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    let admin = app.platform_admin();
    let (s, body) = status_json(
        app.post(
            "/v1/tenants",
            &admin,
            json!({"name": "Phoenix", "admin_email": "first@phoenix.test"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let tenant: TenantId = body["tenant"]["id"].as_str().unwrap().parse().unwrap();
    let job_id: JobId = body["provisioning_job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no provisioning_job_id in {body}"))
        .parse()
        .unwrap();
    let store = app.control.store().clone();
    let platform = PlatformCtx::for_system("test/crash");
    let ctx = platform.tenant(tenant);
    let page = PageRequest::first(50);

    let (env, crash_env) = worker_envs(&app, "provision.before_commit");

    // 1. The worker dies inside the provisioning transaction.
    let mut doomed = Proc::spawn(&["worker"], &crash_env);
    let status = doomed.wait(PATIENCE).await;
    assert!(!status.success(), "{}", doomed.describe());
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the worker aborts at the crash point: {status:?}\n{}",
        doomed.describe()
    );
    assert!(
        doomed.stderr().contains("provision.before_commit"),
        "it died at the named crash point, not elsewhere:\n{}",
        doomed.describe()
    );

    // Nothing of the uncommitted transaction is visible; the claim (its own commit) is.
    let t = store.get_tenant(tenant).await.unwrap().unwrap();
    assert_eq!(t.status, TenantStatus::Provisioning);
    assert_eq!(t.version, 1);
    let members = store
        .list_members(&ctx, &Default::default(), &page)
        .await
        .unwrap();
    assert!(members.items.is_empty(), "{:?}", members.items);
    assert!(store.list_settings(&ctx).await.unwrap().is_empty());
    let job = store.get_job(job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running, "{job:?}");
    assert_eq!(job.attempts, 1, "{job:?}");
    assert!(job.lease_until.is_some(), "{job:?}");
    let chain = store
        .audit_chain_page(&platform, &tenant.to_string(), 0, 100)
        .await
        .unwrap();
    let actions: Vec<&str> = chain.iter().map(|(e, _)| e.action.as_str()).collect();
    assert_eq!(actions, ["tenant.create"]);

    // 2. Another worker takes the job over once the 1 s lease has expired, and finishes it.
    let mut rescuer = Proc::spawn(&["worker"], &env);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let t = store.get_tenant(tenant).await.unwrap().unwrap();
        if t.status == TenantStatus::Active {
            break;
        }
        if let Some(s) = rescuer.try_status() {
            panic!("the second worker exited ({s:?})\n{}", rescuer.describe());
        }
        assert!(
            Instant::now() < deadline,
            "the tenant is still {:?} after {PATIENCE:?}\n{}",
            t.status,
            rescuer.describe()
        );
        tokio::time::sleep(POLL).await;
    }
    rescuer.terminate();
    let status = rescuer.wait(PATIENCE).await;
    assert!(
        status.success(),
        "SIGTERM stops the worker cleanly: {status:?}\n{}",
        rescuer.describe()
    );

    let t = store.get_tenant(tenant).await.unwrap().unwrap();
    assert_eq!(t.status, TenantStatus::Active);
    assert_eq!(t.version, 2, "one activation");
    let members = store
        .list_members(&ctx, &Default::default(), &page)
        .await
        .unwrap()
        .items;
    assert_eq!(members.len(), 1, "exactly the first admin: {members:?}");
    assert_eq!(members[0].email, "first@phoenix.test");
    assert_eq!(members[0].roles, ["tenant_admin"]);
    let settings = store.list_settings(&ctx).await.unwrap();
    let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(keys, unique, "each default setting once");
    for k in ["locale", "timezone", "audit.retention_days"] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let job = store.get_job(job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 2, "{job:?}");
    assert_eq!(job.lease_until, None, "{job:?}");

    let chain = store
        .audit_chain_page(&platform, &tenant.to_string(), 0, 100)
        .await
        .unwrap();
    let actions: Vec<&str> = chain.iter().map(|(e, _)| e.action.as_str()).collect();
    assert_eq!(actions, ["tenant.create", "tenant.provisioned"]);
    let provisioned = &chain[1].0;
    assert_eq!(provisioned.data["attempt"], 2);
    assert_eq!(provisioned.data["job_id"], json!(job_id));
    assert_eq!(
        provisioned.data["first_admin_user_id"],
        json!(members[0].user_id),
        "the admin committed is the one the event records"
    );
    let period = provisioned.data["period"].as_str().unwrap();
    assert!(store.usage_counter(&ctx, period).await.unwrap().is_some());
    let report = agentplane_audit::verify_all(store.as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(app.run_jobs().await, 0, "nothing left in the queue");
}

/// Two worker processes claim from one queue with `FOR UPDATE SKIP LOCKED`: ten queued
/// provisioning jobs are each run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_postgres_provision_every_tenant_exactly_once() {
    use sqlx::Connection;
    const TENANTS: usize = 10;
    let app = TestApp::spawn(Backend::Postgres).await;
    let admin = app.platform_admin();
    let mut ids = vec![];
    for i in 0..TENANTS {
        let (s, body) = status_json(
            app.post(
                "/v1/tenants",
                &admin,
                json!({"name": format!("Swarm {i}"), "admin_email": format!("admin{i}@swarm.test")}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "{body}");
        ids.push(body["tenant"]["id"].as_str().unwrap().to_owned());
    }
    let pg: &PgDb = app.db.pg.as_ref().unwrap();
    let mut owner = sqlx::PgConnection::connect(&pg.url).await.unwrap();

    let mut env = app.db.env(&app.secret);
    env.insert("AGENTPLANE_WORKER_POLL_INTERVAL_MS".into(), "50".into());
    let mut workers = [
        Proc::spawn(&["worker"], &env),
        Proc::spawn(&["worker"], &env),
    ];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tenants WHERE status = 'active'")
                .fetch_one(&mut owner)
                .await
                .unwrap();
        if active == TENANTS as i64 {
            break;
        }
        for w in &mut workers {
            if let Some(s) = w.try_status() {
                panic!("a worker exited ({s:?})\n{}", w.describe());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{active}/{TENANTS} tenants active after {PATIENCE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    for w in &mut workers {
        w.terminate();
    }
    for w in &mut workers {
        let s = w.wait(PATIENCE).await;
        assert!(s.success(), "{s:?}\n{}", w.describe());
    }

    // The owner (a superuser) sees every tenant's rows.
    let provisioned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM audit_events WHERE action = 'tenant.provisioned' \
         GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    let mut expected: Vec<(String, i64)> = ids.iter().map(|id| (id.clone(), 1)).collect();
    expected.sort();
    assert_eq!(provisioned, expected, "one tenant.provisioned per tenant");
    let admins: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM memberships GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert_eq!(admins, expected, "one admin per tenant");
    let jobs: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT tenant_id, status, attempts FROM jobs WHERE kind = 'tenant.provision' \
         ORDER BY tenant_id",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    let expected_jobs: Vec<(String, String, i64)> = expected
        .iter()
        .map(|(id, _)| (id.clone(), "succeeded".to_owned(), 1))
        .collect();
    assert_eq!(jobs, expected_jobs, "each job claimed once, never twice");
    // Each worker schedules backups as it starts: two at once still take one per tenant.
    let backups: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM jobs WHERE kind = 'tenant.backup' \
         GROUP BY tenant_id HAVING count(*) > 1",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert_eq!(
        backups,
        vec![],
        "one backup per tenant, whatever the workers"
    );
    owner.close().await.ok();

    let platform = PlatformCtx::for_system("test/crash");
    let report = agentplane_audit::verify_all(app.control.store().as_ref(), &platform)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert!(report.chains.len() >= TENANTS, "{report:?}");
}
