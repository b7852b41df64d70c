//! The test harness: `TestApp::spawn(backend)` starts the real server (built through the
//! real configuration path) on 127.0.0.1:0 against a fresh SQLite file or a fresh
//! PostgreSQL database, with the embedded worker off so tests drive jobs themselves.

use agentplane_control::ControlPlane;
use agentplane_server::config::Config;
use agentplane_server::Server;
use rand::distributions::{Alphanumeric, DistString};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed `async fn name(backend: Backend)` once per backend, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

pub fn pg_admin_url() -> String {
    std::env::var("AGENTPLANE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The DSN of database `db` on the test server, as the admin (owner) role.
pub fn pg_url_for(db: &str) -> String {
    let admin = pg_admin_url();
    let (base, _) = admin.rsplit_once('/').expect("DSN with a database");
    format!("{base}/{db}")
}

/// A fresh, migrated PostgreSQL database; dropped when the guard drops.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        let name = format!("ap_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap_or_else(|e| {
            panic!("PostgreSQL for tests is unreachable at {} ({e}); run scripts/test, or set AGENTPLANE_TEST_PG_URL", pg_admin_url())
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.ok();
        let url = pg_url_for(&name);
        agentplane_store::PgStore::migrate(&url).await.unwrap();
        PgDb { name, url }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Async drop does not exist: drop the database from a short-lived runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Where a test app keeps its data.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
}

impl Db {
    pub async fn new(backend: Backend) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDb::create().await),
        };
        Db { dir, pg }
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("agentplane.db")
    }

    /// The environment a server process (in-process or the real binary) is configured with.
    pub fn env(&self, secret: &str) -> HashMap<String, String> {
        let mut env = HashMap::from([
            (
                "AGENTPLANE_DATA_DIR".to_owned(),
                self.dir.path().display().to_string(),
            ),
            ("JWT_SHARED_SECRET".to_owned(), secret.to_owned()),
            ("AGENTPLANE_EMBEDDED_WORKER".to_owned(), "false".to_owned()),
        ]);
        if let Some(pg) = &self.pg {
            env.insert("TENANT_CATALOG_DSN".into(), pg.url.clone());
        }
        env
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub secret: String,
    pub control: ControlPlane,
    pub db: Db,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 48)
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with extra environment (e.g. `AGENTPLANE_MAX_BODY_BYTES`).
    pub async fn spawn_with(
        backend: Backend,
        tweak: impl FnOnce(&mut HashMap<String, String>),
    ) -> TestApp {
        let db = Db::new(backend).await;
        Self::spawn_on(db, tweak).await
    }

    pub async fn spawn_on(db: Db, tweak: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
        let secret = random_secret();
        let mut env = db.env(&secret);
        tweak(&mut env);
        let cfg = Config::from_sources(None, &env).unwrap();
        cfg.validate().unwrap();
        let server = Server::build(&cfg).await.unwrap();
        let control = server.control().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(listener, shutdown.clone()));
        TestApp {
            base,
            client: reqwest::Client::new(),
            secret,
            control,
            db,
            shutdown,
        }
    }

    pub fn token(&self, claims: Value) -> String {
        let mut claims = claims;
        let now = jsonwebtoken::get_current_timestamp();
        if claims.get("exp").is_none() {
            claims["exp"] = json!(now + 600);
        }
        if claims.get("sub").is_none() {
            claims["sub"] = json!("test-user");
        }
        agentplane_server::auth::mint_hs256(self.secret.as_bytes(), &claims).unwrap()
    }

    pub fn platform_admin(&self) -> String {
        self.token(json!({"sub": "operator", "roles": ["platform_admin"]}))
    }

    /// A token for `role` in `tenant` only.
    pub fn tenant_user(&self, role: &str, tenant: &str) -> String {
        self.token(
            json!({"sub": format!("{role}-of-{tenant}"), "roles": [role], "tenant_id": tenant}),
        )
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a tenant and runs its provisioning job: an active tenant's id.
    pub async fn active_tenant(&self, name: &str) -> String {
        let admin = self.platform_admin();
        let res = self.post("/v1/tenants", &admin, json!({"name": name, "admin_email": format!("admin@{}.test", name.to_lowercase().replace(' ', "-"))})).await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let body: Value = res.json().await.unwrap();
        let id = body["tenant"]["id"].as_str().unwrap().to_owned();
        self.run_jobs().await;
        let t: Value = self
            .get(&format!("/v1/tenants/{id}"), &admin)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(t["status"], "active");
        id
    }

    /// Runs due jobs until none is left.
    pub async fn run_jobs(&self) -> usize {
        let mut n = 0;
        while self.control.run_next_job().await.unwrap().is_some() {
            n += 1;
        }
        n
    }
}

/// Status and parsed body, asserting problem+json for errors.
pub async fn status_json(res: Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = res.text().await.unwrap();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status >= 400 {
        assert_eq!(
            ct, "application/problem+json",
            "error without problem+json: {status} {body}"
        );
        assert!(body["code"].is_string(), "problem without a code: {body}");
        assert_eq!(body["status"], status, "{body}");
    }
    assert!(status < 500, "server error: {status} {body}");
    (status, body)
}

/// Every byte the database holds, as an attacker with a copy of it would see them: the SQLite
/// file and its write-ahead log, or a `pg_dump` of the PostgreSQL database.
pub fn dump_database(db: &Db) -> Vec<u8> {
    let dump = match &db.pg {
        None => {
            let mut bytes = std::fs::read(db.sqlite_path()).unwrap();
            bytes.extend(
                std::fs::read(db.sqlite_path().with_extension("db-wal")).unwrap_or_default(),
            );
            bytes
        }
        Some(pg) => {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", &pg.url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    };
    assert!(dump.len() > 1000, "the dump is real");
    dump
}

/// Runs SQL as the database owner, around the server (test-only tampering).
pub async fn raw_exec(db: &Db, sql: &str, args: &[&str]) {
    use sqlx::Connection;
    match &db.pg {
        Some(pg) => {
            let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(*a);
            }
            q.execute(&mut c).await.unwrap();
        }
        None => {
            let mut c = sqlx::SqliteConnection::connect(&format!(
                "sqlite://{}",
                db.sqlite_path().display()
            ))
            .await
            .unwrap();
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(*a);
            }
            q.execute(&mut c).await.unwrap();
        }
    }
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
