//! `agentplane`: the one binary. `serve` runs the API (and, by default, the job worker) on
//! the embedded SQLite file or PostgreSQL; `migrate` brings a PostgreSQL schema up to date
//! as its owner; `worker` runs only the job worker; `audit verify` recomputes every audit
//! hash chain; `tenant import` loads a tenant's export; `token` mints an admin JWT with the configured shared secret (development).

// A CLI: printing its results to stdout is its job.
#![allow(clippy::print_stdout)]

use agentplane_core::authz::PlatformCtx;
use agentplane_server::config::Config;
use agentplane_server::Server;
use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "agentplane",
    version,
    about = "Multi-tenant platform for hosting AI agents"
)]
struct Cli {
    /// TOML configuration file (also AGENTPLANE_CONFIG).
    #[arg(long, global = true, env = "AGENTPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded database and local files (also AGENTPLANE_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (with the embedded job worker unless AGENTPLANE_EMBEDDED_WORKER=false).
    Serve {
        /// Address to listen on (also AGENTPLANE_LISTEN). Default 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply the database migrations (PostgreSQL: as the schema owner).
    Migrate,
    /// Run the durable job worker only.
    Worker,
    /// Audit log operations.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tenant operations.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Mint an HS256 admin token with the configured (or dev) shared secret.
    Token {
        #[arg(long, default_value = "admin")]
        sub: String,
        /// Role(s): platform_admin, tenant_admin, auditor, member.
        #[arg(long = "role", default_value = "platform_admin")]
        roles: Vec<String>,
        /// Tenant id(s) the token reaches (or `*`).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Load a tenant's `full` export (the ZIP a download link gives) into this deployment,
    /// after verifying every file against its manifest.
    Import {
        /// The export file.
        file: PathBuf,
        /// Import as a new tenant with this slug (and a new id) instead of the exported one.
        #[arg(long)]
        slug: Option<String>,
        /// The new tenant's name (with --slug).
        #[arg(long, requires = "slug")]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every hash chain; exit 1 naming the first broken link.
    Verify,
}

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("AGENTPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AGENTPLANE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = &cli.data_dir {
        cfg.data_dir.clone_from(d);
    }
    Ok(cfg)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(&cli)?;
    match cli.command {
        Command::Serve { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            cfg.validate()?;
            let server = Server::build(&cfg).await?;
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("cannot listen on {}", cfg.listen))?;
            let backend = if cfg.tenant_catalog_dsn.is_some() {
                "postgres"
            } else {
                "sqlite"
            };
            tracing::info!(
                listen = %listener.local_addr()?, profile = %cfg.profile, backend,
                data_dir = %cfg.data_dir.display(), "agentplane serving"
            );
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            server.run(listener, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let backend = agentplane_server::app::migrate(&cfg).await?;
            println!("migrations applied ({backend})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => {
            cfg.validate()?;
            let store = agentplane_server::app::open_store(&cfg).await?;
            let control = agentplane_server::app::control_plane(&cfg, store).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            tracing::info!("agentplane worker running");
            control.run_worker(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let store = agentplane_server::app::open_store(&cfg).await?;
            let platform = PlatformCtx::for_system("cli/audit-verify");
            let report = agentplane_audit::verify_all(store.as_ref(), &platform).await?;
            for c in &report.chains {
                match &c.broken {
                    None => println!("ok      {} ({} events)", c.chain, c.events),
                    Some(b) => println!("BROKEN  {}: {b}", c.chain),
                }
            }
            if report.ok() {
                println!(
                    "{} chains, {} events verified",
                    report.chains.len(),
                    report.events()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("audit chain verification FAILED");
                Ok(ExitCode::from(1))
            }
        }
        Command::Tenant {
            command: TenantCommand::Import { file, slug, name },
        } => {
            cfg.validate()?;
            let store = agentplane_server::app::open_store(&cfg).await?;
            let control = agentplane_server::app::control_plane(&cfg, store).await?;
            let platform = PlatformCtx::for_system("cli/tenant-import");
            let target = agentplane_control::ImportTarget {
                new_slug: slug,
                new_name: name,
                new_tenant_id: None,
            };
            let report = control.import_tenant(&platform, &file, target).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            sub,
            roles,
            tenants,
            ttl,
        } => {
            let secret = match (&cfg.jwt.shared_secret, cfg.dev_secret()?) {
                (Some(s), _) => s.expose_secret().to_owned(),
                (None, Some(s)) => s.expose_secret().to_owned(),
                (None, None) => anyhow::bail!("no shared secret: set JWT_SHARED_SECRET (tokens for RS*/ES* come from your IdP)"),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let claims = serde_json::json!({
                "sub": sub, "roles": roles, "tenant_ids": tenants, "iat": now, "exp": now + ttl,
            });
            println!(
                "{}",
                agentplane_server::auth::mint_hs256(secret.as_bytes(), &claims)?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        } else {
            let _ = ctrl_c.await;
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
