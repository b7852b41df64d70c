//! Export and import throughput for one large tenant: `AGENTPLANE_BENCH_RECORDS` usage records
//! (default 1,000,000) and `AGENTPLANE_BENCH_EVENTS` audit events (default 100,000), on SQLite
//! and PostgreSQL. The tenant is created through the control plane; the bulk rows are seeded
//! with SQL (audit events so seeded are not a valid chain; the export does not care). Then a
//! `full` export is built by the real job, downloaded through a signed link, and imported into
//! a second, empty deployment of the same backend as a new tenant. Last, the tenant moves to
//! region `eu`, which has a database of its own (`AGENTPLANE_REGION_DATABASES`): the real
//! `tenant.move_region` job, every row streamed from one database into the other.
//!
//! Peak memory is the process's high-water mark (VmHWM) over each phase, reset before it
//! (`/proc/self/clear_refs`), so the seeding does not count.
//!
//! ```sh
//! cargo run --release --example export_tenant
//! AGENTPLANE_BENCH_BACKENDS=sqlite AGENTPLANE_BENCH_RECORDS=100000 cargo run --release --example export_tenant
//! ```

// A benchmark: printing its figures to stdout is its job.
#![allow(clippy::print_stdout)]

use agentplane_control::{ControlPlane, ImportTarget};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::TenantId;
use agentplane_server::app::{control_plane, open_store};
use agentplane_server::config::Config;
use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use std::collections::HashMap;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

#[path = "pg.rs"]
mod pg;
use pg::PgDb;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resets the peak-RSS mark (Linux) and answers the mark read later, in MiB.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let records = env_usize("AGENTPLANE_BENCH_RECORDS", 1_000_000);
    let events = env_usize("AGENTPLANE_BENCH_EVENTS", 100_000);
    let backends =
        std::env::var("AGENTPLANE_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    println!("backend   rows        export s   rows/s    peak MiB   artifact MiB   import s   rows/s    peak MiB  raw dump (export / raw)  move s   rows/s    peak MiB");
    for b in backends.split(',') {
        let (src_dir, dst_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (mut src_env, mut dst_env) = (env_for(src_dir.path()), env_for(dst_dir.path()));
        let mut dbs = Vec::new();
        let eu = if b == "postgres" {
            for env in [&mut src_env, &mut dst_env] {
                let db = PgDb::create().await?;
                env.insert("TENANT_CATALOG_DSN".into(), db.url.clone());
                dbs.push(db);
            }
            let db = PgDb::create().await?;
            let url = db.url.clone();
            dbs.push(db);
            url
        } else {
            format!("sqlite://{}", src_dir.path().join("eu.db").display())
        };
        // The source deployment has two regions; `eu` keeps its tenants in its own database.
        src_env.insert(
            "AGENTPLANE_REGIONS".into(),
            "eu=eu.example;us=us.example".into(),
        );
        src_env.insert("AGENTPLANE_REGION_DATABASES".into(), format!("eu={eu}"));
        let res = measure(b, &src_env, &dst_env, src_dir.path(), records, events).await;
        for db in dbs {
            db.drop_database().await?;
        }
        res?;
    }
    Ok(())
}

fn env_for(dir: &std::path::Path) -> HashMap<String, String> {
    HashMap::from([
        ("AGENTPLANE_DATA_DIR".to_owned(), dir.display().to_string()),
        ("AGENTPLANE_EMBEDDED_WORKER".to_owned(), "false".to_owned()),
    ])
}

async fn measure(
    backend: &str,
    src_env: &HashMap<String, String>,
    dst_env: &HashMap<String, String>,
    dir: &std::path::Path,
    records: usize,
    events: usize,
) -> Result<()> {
    let cfg = Config::from_sources(None, src_env)?;
    let control = control_plane(&cfg, open_store(&cfg).await?).await?;
    let platform = PlatformCtx::for_system("bench");
    let tenant = create_tenant(&control, &platform).await?;
    seed(src_env, dir, tenant, records, events).await?;
    let ctx = platform.tenant(tenant);
    let baseline_s = raw_dump(src_env, dir);

    reset_peak();
    let started = Instant::now();
    let rec = control
        .request_export(
            &ctx,
            serde_json::from_value(serde_json::json!({"export_type": "full"}))?,
        )
        .await?;
    while control.run_next_job().await?.is_some() {}
    let export_s = started.elapsed().as_secs_f64();
    let export_peak = peak_mib();
    let rec = control.export(&ctx, &rec.id).await?;
    if rec.status != "ready" {
        bail!("the export is {}", rec.status);
    }
    let rows: u64 = rec.manifest.as_ref().map_or(0, |m| {
        m["counts"]
            .as_object()
            .map_or(0, |c| c.values().filter_map(|v| v.as_u64()).sum())
    });
    let file = download(&control, &ctx, &rec.id, dir).await?;
    let artifact_mib = std::fs::metadata(&file)?.len() as f64 / (1024.0 * 1024.0);

    let dst_cfg = Config::from_sources(None, dst_env)?;
    let there = control_plane(&dst_cfg, open_store(&dst_cfg).await?).await?;
    reset_peak();
    let started = Instant::now();
    let report = there
        .import_tenant(
            &platform,
            &file,
            ImportTarget {
                new_slug: Some("bench-import".into()),
                new_name: None,
                new_tenant_id: None,
            },
        )
        .await?;
    let import_s = started.elapsed().as_secs_f64();
    let import_peak = peak_mib();
    if report.rows < rows {
        bail!("imported {} rows of {rows}", report.rows);
    }

    reset_peak();
    let started = Instant::now();
    control
        .request_region_move(
            &ctx,
            agentplane_control::MoveRegion {
                region: "eu".into(),
            },
        )
        .await?;
    while control.run_next_job().await?.is_some() {}
    let move_s = started.elapsed().as_secs_f64();
    let move_peak = peak_mib();
    let moved = control.tenant(&ctx).await?;
    if moved.region != "eu" {
        bail!("the tenant is still in {}", moved.region);
    }
    println!(
        "{backend:<9} {rows:<11} {export_s:<10.1} {:<9.0} {export_peak:<10.0} {artifact_mib:<14.1} {import_s:<10.1} {:<9.0} {import_peak:<9.0} {:<24} {move_s:<8.1} {:<9.0} {move_peak:.0}",
        rows as f64 / export_s,
        rows as f64 / import_s,
        baseline_s.map_or("-".to_owned(), |b| format!("{b:.1} s ({:.1}x)", export_s / b)),
        rows as f64 / move_s,
    );
    Ok(())
}

/// The baseline: the database's own dump of the two big tables (`pg_dump --data-only`, or
/// `sqlite3 .dump`), unencrypted, unverified, to /dev/null; `None` when the tool is missing.
fn raw_dump(env: &HashMap<String, String>, dir: &std::path::Path) -> Option<f64> {
    let mut cmd = match env.get("TENANT_CATALOG_DSN") {
        Some(dsn) => {
            let mut c = std::process::Command::new("pg_dump");
            c.args([
                "--data-only",
                "--table=usage_records",
                "--table=audit_events",
                dsn,
            ]);
            c
        }
        None => {
            let mut c = std::process::Command::new("sqlite3");
            c.arg(dir.join("agentplane.db"))
                .arg(".dump usage_records audit_events");
            c
        }
    };
    let started = Instant::now();
    let ok = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| started.elapsed().as_secs_f64())
}

async fn create_tenant(control: &ControlPlane, platform: &PlatformCtx) -> Result<TenantId> {
    let made = control
        .create_tenant(
            platform,
            serde_json::json!({"name": "Bench", "admin_email": "admin@bench.test", "region": "us"}),
            None,
        )
        .await?;
    while control.run_next_job().await?.is_some() {}
    made.body["tenant"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no tenant id")
}

/// Bulk rows by SQL, as the database owner.
async fn seed(
    env: &HashMap<String, String>,
    dir: &std::path::Path,
    tenant: TenantId,
    records: usize,
    events: usize,
) -> Result<()> {
    let t = tenant.to_string();
    let usage = format!(
        "INSERT INTO usage_records (tenant_id, id, ts, agent_id, model, provider, tokens_in, \
         tokens_out, latency_ms, status, trace_id) \
         SELECT '{t}', 'rec-' || x, 1700000000000 + x, 'agent-1', 'gpt-bench', 'openai', 100 + x % 50, \
         20, 300, 'ok', 'trace-' || x FROM generate_series(1, {records}) AS g(x)"
    );
    let audit = format!(
        "INSERT INTO audit_events (tenant_id, seq, id, ts, action, actor_kind, actor_id, target_kind, \
         target_id, outcome, data, pii_digest, trace_id, prev_hash, hash) \
         SELECT '{t}', 1000 + x, 'ev-' || x, 1700000000000 + x, 'bench.event', 'user', 'u-1', 'agent', \
         'a-1', 'success', '{{\"n\":1}}', NULL, NULL, 'prev', 'hash' FROM generate_series(1, {events}) AS g(x)"
    );
    match env.get("TENANT_CATALOG_DSN") {
        Some(dsn) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(dsn).await?;
            sqlx::query(&usage).execute(&mut c).await?;
            sqlx::query(&audit).execute(&mut c).await?;
        }
        None => {
            use sqlx::Connection;
            let url = format!("sqlite://{}", dir.join("agentplane.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await?;
            // SQLite has no generate_series by default: a recursive CTE counts instead.
            for sql in [&usage, &audit] {
                let (head, tail) = sql.split_once(" SELECT ").context("seed SQL")?;
                let n = if sql == &usage { records } else { events };
                let cte = format!(
                    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {n}) \
                     {head} SELECT {}",
                    tail.replace(&format!(" FROM generate_series(1, {n}) AS g(x)"), " FROM g")
                );
                sqlx::query(&cte).execute(&mut c).await?;
            }
        }
    }
    Ok(())
}

async fn download(
    control: &ControlPlane,
    ctx: &TenantCtx,
    id: &str,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let link = control.export_link(ctx, id).await?;
    let token = link.url.rsplit('/').next().context("link")?;
    let (_, stream) = control.open_download(token).await?;
    let path = dir.join("export.zip");
    let mut f = tokio::fs::File::create(&path).await?;
    let mut stream = std::pin::pin!(stream);
    while let Some(piece) = stream.try_next().await? {
        f.write_all(&piece).await?;
    }
    f.flush().await?;
    Ok(path)
}
