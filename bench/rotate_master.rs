//! End-to-end master-key rotation timing: 1,000 tenants, each with one data key and one sealed
//! provider credential, created through the real control plane; then `rotate_master_key` is
//! timed and every secret is opened again through a fresh control plane (empty key cache).
//!
//! Runs on SQLite (a temp dir) and PostgreSQL (a fresh database on `AGENTPLANE_TEST_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`, migrated as the owner, used as
//! `agentplane_app`, dropped at the end), with the local KMS, and with OpenBao/Vault Transit
//! too when `AGENTPLANE_BAO_ADDR` and `AGENTPLANE_BAO_TOKEN` are set (a transit engine must be
//! mounted at `transit`; each run uses a fresh key `bench-<uuid>`).
//!
//! ```sh
//! cargo run --release --example rotate_master
//! AGENTPLANE_BAO_ADDR=http://127.0.0.1:8200 AGENTPLANE_BAO_TOKEN=root \
//!     cargo run --release --example rotate_master
//! ```
//!
//! `AGENTPLANE_BENCH_TENANTS` (default 1000) and `AGENTPLANE_BENCH_BACKENDS` (default
//! `sqlite,postgres`) narrow a run. See bench/README.md for measured figures.

// A benchmark: printing its figures to stdout is its job.
#![allow(clippy::print_stdout)]

use agentplane_control::{ControlPlane, CreateProvider, MasterRotation};
use agentplane_core::authz::PlatformCtx;
use agentplane_core::provider::ProviderKind;
use agentplane_core::TenantId;
use agentplane_server::app::{control_plane, open_store};
use agentplane_server::config::Config;
use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[path = "pg.rs"]
mod pg;
use pg::PgDb;

/// Requests in flight while creating and verifying (the rotation itself uses its own 16).
const CONCURRENCY: usize = 8;
const BASE_URL: &str = "https://api.example.invalid/v1";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Clone)]
enum KmsChoice {
    Local,
    Transit { addr: String, token: String },
}

impl KmsChoice {
    fn label(&self) -> &'static str {
        match self {
            KmsChoice::Local => "local",
            KmsChoice::Transit { .. } => "transit",
        }
    }
}

struct Figures {
    backend: Backend,
    kms: &'static str,
    tenants: usize,
    rotation: MasterRotation,
    total: Duration,
    setup: Duration,
    verify: Duration,
}

impl Figures {
    fn ms_per_1000(&self) -> f64 {
        let keys = self.rotation.keys_rewrapped.max(1) as f64;
        self.total.as_secs_f64() * 1000.0 * 1000.0 / keys
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let tenants: usize = match std::env::var("AGENTPLANE_BENCH_TENANTS") {
        Ok(v) => v
            .parse()
            .context("AGENTPLANE_BENCH_TENANTS must be a number")?,
        Err(_) => 1000,
    };
    if tenants == 0 {
        bail!("AGENTPLANE_BENCH_TENANTS must be at least 1");
    }
    let backends = std::env::var("AGENTPLANE_BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(|b| match b.trim() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => bail!("unknown backend {other:?} in AGENTPLANE_BENCH_BACKENDS"),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut kmses = vec![KmsChoice::Local];
    match (
        std::env::var("AGENTPLANE_BAO_ADDR"),
        std::env::var("AGENTPLANE_BAO_TOKEN"),
    ) {
        (Ok(addr), Ok(token)) => kmses.push(KmsChoice::Transit { addr, token }),
        _ => println!(
            "(OpenBao Transit skipped: set AGENTPLANE_BAO_ADDR and AGENTPLANE_BAO_TOKEN to include it)"
        ),
    }
    println!(
        "master-key rotation, {tenants} tenants x 1 data key + 1 sealed provider secret, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut all = vec![];
    for &backend in &backends {
        for kms in &kmses {
            let figures = run(backend, kms, tenants)
                .await
                .with_context(|| format!("{} / {}", backend.name(), kms.label()))?;
            println!(
                "{:<8} {:<7} tenants {:>5}  re-wrapped {:>5}  rotation {:>7.1} ms  ({:>6.1} ms per 1,000 keys)  \
                 [setup {:.1} s, verify {:.1} s]",
                figures.backend.name(),
                figures.kms,
                figures.tenants,
                figures.rotation.keys_rewrapped,
                figures.total.as_secs_f64() * 1000.0,
                figures.ms_per_1000(),
                figures.setup.as_secs_f64(),
                figures.verify.as_secs_f64(),
            );
            all.push(figures);
        }
    }

    println!();
    println!("| backend | KMS | tenants | keys re-wrapped | total ms | ms per 1,000 keys |");
    println!("|---|---|---:|---:|---:|---:|");
    for f in &all {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} |",
            f.backend.name(),
            f.kms,
            f.tenants,
            f.rotation.keys_rewrapped,
            f.total.as_secs_f64() * 1000.0,
            f.ms_per_1000()
        );
    }
    Ok(())
}

/// One (backend, KMS) run on fresh storage; the PostgreSQL database is dropped afterwards,
/// whatever happened.
async fn run(backend: Backend, kms: &KmsChoice, tenants: usize) -> Result<Figures> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut env = HashMap::from([
        (
            "AGENTPLANE_DATA_DIR".to_owned(),
            dir.path().display().to_string(),
        ),
        ("AGENTPLANE_EMBEDDED_WORKER".to_owned(), "false".to_owned()),
    ]);
    if let KmsChoice::Transit { addr, token } = kms {
        env.insert("AGENTPLANE_KMS".into(), "transit".into());
        env.insert("AGENTPLANE_TRANSIT_ADDR".into(), addr.clone());
        env.insert("AGENTPLANE_TRANSIT_TOKEN".into(), token.clone());
        // A fresh key per run: it starts at version 1 whatever earlier runs did.
        env.insert(
            "AGENTPLANE_TRANSIT_KEY".into(),
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        );
    }
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let db = PgDb::create().await?;
            env.insert("TENANT_CATALOG_DSN".into(), db.url.clone());
            Some(db)
        }
    };
    let result = measure(backend, kms.label(), &env, tenants).await;
    if let Some(db) = pg {
        db.drop_database().await?;
    }
    result
}

async fn measure(
    backend: Backend,
    kms: &'static str,
    env: &HashMap<String, String>,
    tenants: usize,
) -> Result<Figures> {
    let cfg = Config::from_sources(None, env)?;
    let store = open_store(&cfg).await?;
    let control = control_plane(&cfg, store).await?;
    let platform = PlatformCtx::for_system("bench");

    let setup_started = Instant::now();
    let ids = populate(&control, &platform, tenants).await?;
    let setup = setup_started.elapsed();

    let started = Instant::now();
    let rotation = control.rotate_master_key(&platform).await?;
    let total = started.elapsed();
    if rotation.keys_rewrapped != tenants || rotation.tenants != tenants {
        bail!(
            "rotation re-wrapped {} keys of {} tenants, expected {tenants} of {tenants}",
            rotation.keys_rewrapped,
            rotation.tenants
        );
    }
    if !rotation.kms.starts_with(kms) {
        bail!("rotated with KMS {:?}, expected {kms}", rotation.kms);
    }
    drop(control);

    // A fresh control plane (new store pool, new KMS client, empty key cache) opens everything.
    let verify_started = Instant::now();
    let fresh = control_plane(&cfg, open_store(&cfg).await?).await?;
    let kek_version = i64::from(rotation.kek_version);
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, (tenant, provider))| {
            let fresh = &fresh;
            let ctx = platform.tenant(*tenant);
            async move {
                let (_, secret) = fresh.provider_secret(&ctx, provider).await?;
                if secret.as_slice() != api_key(i).as_bytes() {
                    bail!("tenant {tenant}: the secret opened to something else");
                }
                let keys = fresh.tenant_keys(&ctx).await?;
                if keys.len() != 1 || keys.iter().any(|k| k.kek_version != kek_version) {
                    bail!("tenant {tenant}: keys not re-wrapped to KEK v{kek_version}");
                }
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let verify = verify_started.elapsed();

    Ok(Figures {
        backend,
        kms,
        tenants,
        rotation,
        total,
        setup,
        verify,
    })
}

fn api_key(i: usize) -> String {
    format!("sk-bench-{i:05}-0123456789abcdef")
}

/// Creates `n` active tenants, each with one provider (whose creation makes the tenant's first
/// data key): their ids and provider ids, in creation order.
async fn populate(
    control: &ControlPlane,
    platform: &PlatformCtx,
    n: usize,
) -> Result<Vec<(TenantId, String)>> {
    let tenants: Vec<TenantId> = futures::stream::iter(0..n)
        .map(|i| async move {
            let created = control
                .create_tenant(
                    platform,
                    serde_json::json!({
                        "name": format!("Bench {i:05}"),
                        "admin_email": format!("admin{i}@bench.test"),
                    }),
                    None,
                )
                .await?;
            let id = created.body["tenant"]["id"]
                .as_str()
                .context("create_tenant answered no tenant id")?;
            id.parse::<TenantId>()
                .map_err(|e| anyhow::anyhow!("tenant id {id:?}: {e}"))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;

    // Provisioning jobs, a few workers at a time (as several worker processes would).
    let jobs: Vec<usize> = futures::stream::iter(0..CONCURRENCY.min(4))
        .map(|_| async move {
            let mut done = 0;
            while control.run_next_job().await?.is_some() {
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    let jobs: usize = jobs.into_iter().sum();
    if jobs != n {
        bail!("ran {jobs} provisioning jobs for {n} tenants");
    }

    futures::stream::iter(tenants.into_iter().enumerate())
        .map(|(i, tenant)| async move {
            let ctx = platform.tenant(tenant);
            let provider = control
                .create_provider(
                    &ctx,
                    CreateProvider {
                        name: "main".into(),
                        kind: ProviderKind::Openai,
                        base_url: BASE_URL.into(),
                        auth: Default::default(),
                        api_key: Some(api_key(i)),
                        api_version: None,
                        models: vec![],
                    },
                )
                .await?;
            Ok::<_, anyhow::Error>((tenant, provider.id.to_string()))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}
