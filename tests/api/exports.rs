//! Exports and imports: what leaves, only the tenant's, verifiable, and back in again.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use agentplane_core::authz::PlatformCtx;
use agentplane_core::time::Timestamp;
use agentplane_core::usage::UsageRecord;
use agentplane_store::exports::{Cell, ExportFilter, ExportSink, ExportTable, EXPORT_TABLES};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};

both_backends!(
    a_full_export_holds_only_its_tenant_verifies_and_imports_into_another_deployment,
    subject_and_csv_exports_select_what_they_name,
    a_tampered_export_is_refused_and_changes_nothing,
    backups_verify_restore_into_a_new_tenant_and_leave_every_other_tenant_byte_identical,
);

/// Every row of a tenant's exportable tables, as the store reads them.
#[derive(Default)]
pub struct Rows(pub Vec<(&'static str, Vec<Cell>)>);

impl ExportSink for Rows {
    fn row(&mut self, t: &'static ExportTable, row: Vec<Cell>) -> agentplane_store::Result<()> {
        self.0.push((t.name, row));
        Ok(())
    }
}

pub async fn rows_of(app: &TestApp, tenant: &str) -> Rows {
    let ctx = PlatformCtx::for_system("test/rows").tenant(tenant.parse().unwrap());
    let tables: Vec<&'static ExportTable> = EXPORT_TABLES.iter().filter(|t| t.importable).collect();
    let mut rows = Rows::default();
    app.control
        .store()
        .dump_tenant(&ctx, &tables, &ExportFilter::default(), &mut rows)
        .await
        .unwrap();
    rows
}

async fn backups_verify_restore_into_a_new_tenant_and_leave_every_other_tenant_byte_identical(
    b: Backend,
) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Backed").await;
    let z = app.active_tenant("Bystander").await;
    seed(&app, &a, "backed-marker", 30).await;
    seed(&app, &z, "bystander-marker", 10).await;
    let admin = app.tenant_user("tenant_admin", &a);
    // Someone who will be erased after the backup.
    let (_, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/invitations"),
            &admin,
            json!({"email": "gone@backed.test"}),
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
    let z_before = rows_of(&app, &z).await.0;

    let path = format!("/v1/tenants/{a}/backups");
    let (s, _) = status_json(app.post(&path, &admin, json!({})).await).await;
    assert_eq!(s, 428);
    let (s, _) = status_json(
        app.post(
            &format!("{path}?confirm=true"),
            &app.tenant_user("auditor", &a),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
    let (s, backup) = status_json(
        app.post(&format!("{path}?confirm=true"), &admin, json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (s, backup["kind"].as_str()),
        (202, Some("backup")),
        "{backup}"
    );
    app.run_jobs().await;
    let id = backup["id"].as_str().unwrap().to_owned();
    let (_, list) = status_json(app.get(&path, &admin).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["status"], "ready", "{list}");
    let (_, exports) =
        status_json(app.get(&format!("/v1/tenants/{a}/exports"), &admin).await).await;
    assert!(
        exports["items"].as_array().unwrap().is_empty(),
        "a backup is not an export"
    );
    let (s, _) = status_json(
        app.get(
            &format!("/v1/tenants/{z}/backups/{id}"),
            &app.tenant_user("tenant_admin", &z),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404, "another tenant's backup is not found");

    // Verification: restored into a scratch tenant and compared, then rolled back.
    let tenants_before = status_json(app.get("/v1/tenants", &app.platform_admin()).await)
        .await
        .1;
    let (s, job) = status_json(
        app.post(&format!("{path}/{id}/verify"), &admin, json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (s, job["kind"].as_str()),
        (202, Some("tenant.backup_verify")),
        "{job}"
    );
    app.run_jobs().await;
    let (_, got) = status_json(app.get(&format!("{path}/{id}"), &admin).await).await;
    let report = &got["verification"];
    let jobs = status_json(app.get(&format!("/v1/tenants/{a}/jobs"), &admin).await)
        .await
        .1;
    assert_eq!(report["ok"], true, "{report} {jobs}");
    assert_eq!(
        report["tables"]["usage_records"]["restored"], 30,
        "{report}"
    );
    assert!(report["tables"]
        .as_object()
        .unwrap()
        .values()
        .all(|t| t["sha256_matches"] == true));
    let tenants_after = status_json(app.get("/v1/tenants", &app.platform_admin()).await)
        .await
        .1;
    assert_eq!(
        tenants_before, tenants_after,
        "the scratch tenant left nothing"
    );

    // The person is erased after the backup; a restore erases them again.
    let user = who["user_id"].as_str().unwrap();
    let (s, _) = status_json(
        app.post(
            &format!("/v1/tenants/{a}/users/{user}/erase?confirm=true"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202);
    app.run_jobs().await;
    // Nothing anywhere reads as the person: not the database, not an object (the backup that
    // holds them is sealed with the tenant key, and a restore erases them again, below).
    let needle = b"gone@backed.test";
    assert!(!crate::helpers::dump_database(&app.db)
        .windows(needle.len())
        .any(|w| w == needle));
    for f in crate::helpers::files_under(app.db.dir.path()) {
        let raw = std::fs::read(&f).unwrap_or_default();
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "{}",
            f.display()
        );
    }

    // Restore into a new tenant: platform operators only.
    let restore = format!("/v1/admin/tenants/{a}/backups/{id}/restore?confirm=true");
    let (s, _) = status_json(
        app.post(&restore, &admin, json!({"slug": "backed-drill"}))
            .await,
    )
    .await;
    assert_eq!(s, 403);
    let (s, job) = status_json(
        app.post(
            &restore,
            &app.platform_admin(),
            json!({"slug": "backed-drill", "name": "Drill"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, job["kind"].as_str()),
        (202, Some("tenant.restore")),
        "{job}"
    );
    app.run_jobs().await;
    let new_id = job["payload"]["tenant_id"].as_str().unwrap().to_owned();
    let (s, t) = status_json(
        app.get(&format!("/v1/tenants/{new_id}"), &app.platform_admin())
            .await,
    )
    .await;
    assert_eq!(
        (s, t["slug"].as_str(), t["name"].as_str()),
        (200, Some("backed-drill"), Some("Drill")),
        "{t}"
    );
    let restored = rows_of(&app, &new_id).await.0;
    let usage = restored
        .iter()
        .filter(|(t, _)| *t == "usage_records")
        .count();
    assert_eq!(usage, 30);
    let text = format!("{restored:?}");
    assert!(text.contains("backed-marker"));
    assert!(
        !text.contains("gone@backed.test"),
        "the erasure was replayed on the restore"
    );
    // The bystander's rows are exactly what they were.
    assert_eq!(rows_of(&app, &z).await.0, z_before);

    // A backup whose sealed object was altered fails verification, saying why.
    let (_, second) = status_json(
        app.post(&format!("{path}?confirm=true"), &admin, json!({}))
            .await,
    )
    .await;
    app.run_jobs().await;
    let second_id = second["id"].as_str().unwrap();
    let sealed: Vec<std::path::PathBuf> = crate::helpers::files_under(app.db.dir.path())
        .into_iter()
        .filter(|p| {
            p.to_string_lossy()
                .contains(&format!("/exports/{second_id}/"))
        })
        .collect();
    assert_eq!(sealed.len(), 1);
    let mut raw = std::fs::read(&sealed[0]).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    std::fs::write(&sealed[0], raw).unwrap();
    status_json(
        app.post(&format!("{path}/{second_id}/verify"), &admin, json!({}))
            .await,
    )
    .await;
    app.run_jobs().await;
    let (_, got) = status_json(app.get(&format!("{path}/{second_id}"), &admin).await).await;
    assert_eq!(got["verification"]["ok"], false, "{got}");

    // Retention by count: with one to keep, a new backup retires the older ones.
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{a}/settings/backup.retention_count?confirm=true"),
            Some(&admin),
            Some(json!({"setting_value": 1})),
        )
        .await;
    assert_eq!(res.status(), 200);
    status_json(
        app.post(&format!("{path}?confirm=true"), &admin, json!({}))
            .await,
    )
    .await;
    app.run_jobs().await;
    let (_, list) = status_json(app.get(&path, &admin).await).await;
    let states: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["deleted", "deleted", "ready"], "{list}");
}

/// Seeds a tenant with a setting, usage records and audit events carrying `marker`.
pub async fn seed(app: &TestApp, tenant: &str, marker: &str, records: usize) {
    let admin = app.tenant_user("tenant_admin", tenant);
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{tenant}/branding"),
            Some(&admin),
            Some(json!({"product_name": marker})),
        )
        .await;
    let (s, body) = status_json(res).await;
    assert_eq!(s, 200, "{body}");
    let ctx = PlatformCtx::for_system("test/seed").tenant(tenant.parse().unwrap());
    for i in 0..records {
        let rec = UsageRecord {
            id: agentplane_core::UsageRecordId::new(),
            tenant_id: tenant.parse().unwrap(),
            ts: Timestamp::from_millis(1_700_000_000_000 + i as i64 * 60_000),
            agent_id: None,
            model: format!("{marker}-model"),
            provider: "mock".into(),
            tokens_in: 10 + i as i64,
            tokens_out: 5,
            latency_ms: 20,
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

/// Requests an export, runs its job, and answers the ready record.
pub(crate) async fn export(app: &TestApp, tenant: &str, body: Value) -> Value {
    let admin = app.tenant_user("tenant_admin", tenant);
    let (s, rec) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/exports?confirm=true"),
            &admin,
            body,
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{rec}");
    assert_eq!(rec["status"], "pending");
    app.run_jobs().await;
    let (s, rec) = status_json(
        app.get(
            &format!(
                "/v1/tenants/{tenant}/exports/{}",
                rec["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("ready")), "{rec}");
    rec
}

/// The bytes of a ready export, through a signed link its tenant's admin asks for.
pub async fn link_bytes(app: &TestApp, tenant: &str, id: &str) -> Vec<u8> {
    let admin = app.tenant_user("tenant_admin", tenant);
    let (s, link) = status_json(
        app.post(
            &format!("/v1/tenants/{tenant}/exports/{id}/link"),
            &admin,
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{link}");
    let url = link["url"].as_str().unwrap();
    let path = &url[url.find("/v1/downloads/").unwrap()..];
    let res = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap().to_vec()
}

/// Downloads a ready export through its signed link: the bytes its record describes.
pub async fn download(app: &TestApp, tenant: &str, rec: &Value) -> Vec<u8> {
    let bytes = link_bytes(app, tenant, rec["id"].as_str().unwrap()).await;
    assert_eq!(bytes.len() as i64, rec["size"].as_i64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        rec["sha256"].as_str().unwrap()
    );
    bytes
}

/// The members of a ZIP export, verified the way a receiver does: every listed file's
/// SHA-256 and record count against manifest.json.
fn open_zip(bytes: &[u8]) -> (Value, BTreeMap<String, Vec<u8>>) {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        files.insert(f.name().to_owned(), data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let data = &files[f["name"].as_str().unwrap()];
        assert_eq!(
            hex::encode(Sha256::digest(data)),
            f["sha256"].as_str().unwrap()
        );
        let lines = data.iter().filter(|b| **b == b'\n').count() as u64;
        let rows = if f["name"].as_str().unwrap().ends_with(".csv") {
            lines - 1
        } else {
            lines
        };
        assert_eq!(rows, f["records"].as_u64().unwrap(), "{f}");
    }
    (manifest, files)
}

fn other(b: Backend) -> Backend {
    match b {
        Backend::Sqlite => Backend::Postgres,
        Backend::Postgres => Backend::Sqlite,
    }
}

pub(crate) async fn import(app: &TestApp, bytes: Vec<u8>, query: &str) -> (u16, Value) {
    let res = app
        .client
        .post(format!(
            "{}/v1/admin/tenants/import?confirm=true{query}",
            app.base
        ))
        .bearer_auth(app.platform_admin())
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    status_json(res).await
}

async fn a_full_export_holds_only_its_tenant_verifies_and_imports_into_another_deployment(
    b: Backend,
) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Alpha").await;
    let z = app.active_tenant("Zulu").await;
    seed(&app, &a, "alpha-marker", 30).await;
    seed(&app, &z, "zulu-marker", 30).await;
    let admin = app.tenant_user("tenant_admin", &a);

    // Confirmation, role and tenant boundary.
    let path = format!("/v1/tenants/{a}/exports");
    let (s, _) = status_json(
        app.post(&path, &admin, json!({"export_type": "full"}))
            .await,
    )
    .await;
    assert_eq!(s, 428);
    let (s, _) = status_json(
        app.post(
            &format!("{path}?confirm=true"),
            &app.tenant_user("auditor", &a),
            json!({"export_type": "full"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403, "an auditor may not take the tenant's data out");
    let (s, _) = status_json(
        app.post(
            &format!("{path}?confirm=true"),
            &admin,
            json!({"export_type": "everything"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);

    let rec = export(&app, &a, json!({"export_type": "full"})).await;
    let id = rec["id"].as_str().unwrap();
    assert_eq!(rec["manifest"]["counts"]["usage_records"], 30, "{rec}");
    // Another tenant's admin sees no such export, and gets no link for it.
    let zadmin = app.tenant_user("tenant_admin", &z);
    let (s, _) = status_json(
        app.get(&format!("/v1/tenants/{z}/exports/{id}"), &zadmin)
            .await,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = status_json(
        app.get(&format!("/v1/tenants/{a}/exports/{id}"), &zadmin)
            .await,
    )
    .await;
    assert!(s == 403 || s == 404, "{s}");

    let bytes = download(&app, &a, &rec).await;
    let (manifest, files) = open_zip(&bytes);
    assert_eq!(manifest["tenant_id"], a.as_str());
    assert_eq!(manifest, rec["manifest"]);
    let all: Vec<u8> = files.values().flatten().copied().collect();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("alpha-marker"));
    assert!(!text.contains("zulu-marker"), "nothing of the other tenant");
    assert!(!text.contains(&z), "not even its id");
    assert!(!text.contains("$argon2"), "no password hash leaves");
    // The stored artifact is sealed: its bytes are not the export's.
    let stored: Vec<_> = crate::helpers::files_under(app.db.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/exports/"))
        .collect();
    assert!(!stored.is_empty());
    for f in &stored {
        let raw = std::fs::read(f).unwrap();
        assert!(
            !raw.windows(12).any(|w| w == b"alpha-marker"),
            "{}",
            f.display()
        );
        assert!(
            !raw.windows(4).any(|w| w == b"PK\x03\x04"),
            "not a plain ZIP"
        );
    }
    // A link that was tampered with, or for another deployment, opens nothing.
    let (s, _) = status_json(
        app.call(
            reqwest::Method::GET,
            "/v1/downloads/eyJhbGciOiJFZERTQSJ9.e30.AAAA",
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 401);

    // Into another deployment on the other backend; then out again: the same data.
    let there = TestApp::spawn(other(b)).await;
    let (s, report) = import(&there, bytes.clone(), "").await;
    assert_eq!(s, 201, "{report}");
    assert_eq!(report["tenant_id"], a.as_str());
    assert_eq!(report["tables"]["usage_records"], 30);
    let rec2 = export(&there, &a, json!({"export_type": "full"})).await;
    let (_, files2) = open_zip(&download(&there, &a, &rec2).await);
    for (name, data) in &files {
        if name == "manifest.json" {
            continue;
        }
        if name.starts_with("audit_") {
            // The second export's own request is audited after the first's events.
            if name == "audit_events.jsonl" {
                assert!(
                    files2[name].starts_with(data),
                    "the imported chain is kept as it was"
                );
            }
            continue;
        }
        assert_eq!(
            &files2[name], data,
            "{name} differs after import and export"
        );
    }
    // The audit chain of the imported tenant still verifies there.
    let report = agentplane_audit::verify_all(
        there.control.store().as_ref(),
        &PlatformCtx::for_system("t"),
    )
    .await
    .unwrap();
    assert!(report.ok(), "{report:?}");
    // Twice is refused; as a new tenant it is fine.
    let (s, body) = import(&there, bytes.clone(), "").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (409, Some("tenant_exists")),
        "{body}"
    );
    let (s, copy) = import(&there, bytes, "&slug=alpha-copy&name=Alpha%20Copy").await;
    assert_eq!(s, 201, "{copy}");
    assert_ne!(copy["tenant_id"], a.as_str());
    let (s, t) = status_json(
        there
            .get(
                &format!("/v1/tenants/{}", copy["tenant_id"].as_str().unwrap()),
                &there.platform_admin(),
            )
            .await,
    )
    .await;
    assert_eq!((s, t["slug"].as_str()), (200, Some("alpha-copy")), "{t}");
    // The copy's chain verifies too: its events up to the import were hashed under Alpha's
    // id (and its next ones go on under its own).
    let copy_admin = there.tenant_user("tenant_admin", copy["tenant_id"].as_str().unwrap());
    let (s, _) = status_json(
        there
            .get(
                &format!(
                    "/v1/tenants/{}/settings",
                    copy["tenant_id"].as_str().unwrap()
                ),
                &copy_admin,
            )
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let report = agentplane_audit::verify_all(
        there.control.store().as_ref(),
        &PlatformCtx::for_system("t"),
    )
    .await
    .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        report.chains.len(),
        3,
        "platform, Alpha, its copy: {report:?}"
    );
    // A copy of the copy: its chain was hashed under Alpha's id, then the copy's, then its own.
    let copy_id = copy["tenant_id"].as_str().unwrap().to_owned();
    let rec3 = export(&there, &copy_id, json!({"export_type": "full"})).await;
    let bytes3 = download(&there, &copy_id, &rec3).await;
    let (s, copy2) = import(&there, bytes3, "&slug=alpha-copy-2").await;
    assert_eq!(s, 201, "{copy2}");
    let report = agentplane_audit::verify_all(
        there.control.store().as_ref(),
        &PlatformCtx::for_system("t"),
    )
    .await
    .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.chains.len(), 4, "{report:?}");
}

async fn subject_and_csv_exports_select_what_they_name(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Subject").await;
    let admin = app.tenant_user("tenant_admin", &a);
    let (_, users) = status_json(app.get(&format!("/v1/tenants/{a}/users"), &admin).await).await;
    let user = users["items"][0]["user_id"].as_str().unwrap().to_owned();
    let email = users["items"][0]["email"].as_str().unwrap().to_owned();
    let path = format!("/v1/tenants/{a}/exports?confirm=true");
    let (s, _) = status_json(
        app.post(&path, &admin, json!({"export_type": "gdpr_request"}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "a subject export names its subject");
    let (s, _) = status_json(
        app.post(
            &path,
            &admin,
            json!({"export_type": "full", "user_id": user}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = status_json(
        app.post(
            &path,
            &admin,
            json!({"export_type": "gdpr_request", "user_id": uuid::Uuid::new_v4()}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = status_json(
        app.post(&path, &admin, json!({"export_type": "full", "date_range": {"start": "2025-02-01", "end": "2025-01-01"}}))
            .await,
    )
    .await;
    assert_eq!(s, 422);

    let rec = export(
        &app,
        &a,
        json!({"export_type": "gdpr_request", "user_id": user, "format": "json"}),
    )
    .await;
    let bytes = download(&app, &a, &rec).await;
    let lines: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let members: Vec<&Value> = lines.iter().filter(|l| l["table"] == "members").collect();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["row"]["email"], email.as_str());
    assert!(lines
        .iter()
        .all(|l| l["table"] != "usage_records" && l["table"] != "settings"));
    assert_eq!(rec["manifest"]["counts"]["members"], 1);

    seed(&app, &a, "csv-marker", 5).await;
    let rec = export(&app, &a, json!({"export_type": "full", "format": "csv", "date_range": {"start": "2023-11-14", "end": "2023-11-14"}})).await;
    let (manifest, files) = open_zip(&download(&app, &a, &rec).await);
    assert_eq!(manifest["encoding"], "csv");
    let csv = String::from_utf8(files["usage_records.csv"].clone()).unwrap();
    assert!(csv.starts_with("id,ts,agent_id,model"), "{csv}");
    assert_eq!(
        manifest["counts"]["usage_records"], 5,
        "all five fall on 2023-11-14"
    );
    // A CSV export is for people, not for import.
    let (s, body) = import(&app, download(&app, &a, &rec).await, "&slug=from-csv").await;
    assert_eq!(s, 422, "{body}");
}

async fn a_tampered_export_is_refused_and_changes_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.active_tenant("Tamper").await;
    seed(&app, &a, "tamper-marker", 3).await;
    let rec = export(&app, &a, json!({"export_type": "full"})).await;
    let bytes = download(&app, &a, &rec).await;
    let (_, files) = open_zip(&bytes);
    let there = TestApp::spawn(b).await;
    let before = status_json(there.get("/v1/tenants", &there.platform_admin()).await)
        .await
        .1;

    let rebuild = |edit: &dyn Fn(&str, &mut Vec<u8>)| {
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in &files {
            let mut data = data.clone();
            edit(name, &mut data);
            out.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            out.write_all(&data).unwrap();
        }
        out.finish().unwrap().into_inner()
    };
    // One changed byte in a data file; a dropped record; a manifest edited to match a
    // changed file's count but not its hash.
    let flipped = rebuild(&|name, d| {
        if name == "usage_records.jsonl" {
            let i = d.iter().position(|b| *b == b'5').unwrap();
            d[i] = b'6';
        }
    });
    let dropped = rebuild(&|name, d| {
        if name == "usage_records.jsonl" {
            let cut = d.iter().position(|b| *b == b'\n').unwrap() + 1;
            d.drain(..cut);
        }
    });
    for (what, tampered) in [
        ("flipped", flipped),
        ("dropped", dropped),
        ("garbage", b"not a zip".to_vec()),
    ] {
        let (s, body) = import(&there, tampered, "").await;
        assert_eq!(s, 422, "{what}: {body}");
    }
    let after = status_json(there.get("/v1/tenants", &there.platform_admin()).await)
        .await
        .1;
    assert_eq!(before, after, "nothing was created");
    // The untouched export imports.
    let (s, body) = import(&there, bytes, "").await;
    assert_eq!(s, 201, "{body}");
}
