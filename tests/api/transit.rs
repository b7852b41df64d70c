//! The server on a real OpenBao Transit KMS (`bao server -dev`): provider secrets sealed under
//! data keys wrapped by a per-tenant derived transit key, master-key rotation re-wrapping inside
//! the KMS, and the failure modes: a token without encrypt/decrypt changes nothing, a token that
//! does not exist stops the real binary at startup, a stopped OpenBao answers 503.
//!
//! Needs the `bao` binary: `AGENTPLANE_BAO_BIN`, `bao` on PATH, or `.venv/bin/bao` at the
//! workspace root (scripts/install-peers puts it there). Without it the tests fail: they never
//! skip.

use crate::both_backends;
use crate::crash::Proc;
use crate::helpers::{random_secret, status_json, Backend, Db, TestApp};
use agentplane_core::authz::PlatformCtx;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use rand::Rng;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

both_backends!(
    provider_secrets_live_under_transit_and_survive_master_rotation,
    a_token_without_encrypt_rights_changes_nothing,
    a_token_that_does_not_exist_stops_the_binary_at_startup,
    a_stopped_openbao_answers_503_and_stores_nothing,
);

const VENV_BAO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/bao");
/// The transit key the server uses by default (`AGENTPLANE_TRANSIT_KEY`).
const KEY: &str = "agentplane";

fn bao_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("AGENTPLANE_BAO_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "AGENTPLANE_BAO_BIN={} does not exist; run scripts/install-peers (or scripts/test)",
            bin.display()
        );
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bao");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let venv = Path::new(VENV_BAO);
    if venv.is_file() {
        return venv.to_path_buf();
    }
    panic!(
        "OpenBao's `bao` binary was not found (AGENTPLANE_BAO_BIN, PATH, {VENV_BAO}): \
         run scripts/install-peers (or scripts/test, which runs it)"
    );
}

/// A port whose successor is free too (the dev server's cluster listener takes port + 1).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(a) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

/// An OpenBao dev server (in memory, fresh random root token, HOME in a temp dir) with a
/// transit engine mounted at `transit`; killed on drop.
struct Bao {
    child: Child,
    addr: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Bao {
    async fn start() -> Bao {
        let bin = bao_bin();
        let dir = tempfile::tempdir().unwrap();
        let token = format!("root-{:032x}", rand::thread_rng().gen::<u128>());
        let port = free_port_pair();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={token}"),
                "-dev-no-store-token",
            ])
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut bao = Bao {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            token,
            dir,
        };
        bao.wait_healthy().await;
        let res = bao
            .http(Method::POST, "sys/mounts/transit")
            .json(&json!({"type": "transit"}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "enabling transit: {res:?}");
        bao
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bao exited early ({status}):\n{}", self.log());
            }
            let health = client
                .get(format!("{}/v1/sys/health", self.addr))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao did not become healthy within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (idempotent). Its state was in memory only: it is gone.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A request to the bao HTTP API as root.
    fn http(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token)
    }

    /// The transit key's `latest_version`, read as root.
    async fn key_version(&self) -> u64 {
        let res = self
            .http(Method::GET, &format!("transit/keys/{KEY}"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{res:?}");
        let body: Value = res.json().await.unwrap();
        body["data"]["latest_version"].as_u64().unwrap()
    }

    /// A token whose only right is `read` on the transit key (no encrypt, decrypt or rotate).
    async fn read_only_token(&self) -> String {
        let policy = format!("path \"transit/keys/{KEY}\" {{ capabilities = [\"read\"] }}");
        let res = self
            .http(Method::PUT, "sys/policies/acl/agentplane-read-only")
            .json(&json!({ "policy": policy }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "writing the policy: {res:?}");
        let res = self
            .http(Method::POST, "auth/token/create")
            .json(&json!({"policies": ["agentplane-read-only"]}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "creating the token: {res:?}");
        let body: Value = res.json().await.unwrap();
        body["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// The server's environment for this transit engine, with `token`.
    fn env(&self, token: &str) -> impl FnOnce(&mut HashMap<String, String>) {
        let addr = self.addr.clone();
        let token = token.to_owned();
        move |env| {
            env.insert("AGENTPLANE_KMS".into(), "transit".into());
            env.insert("AGENTPLANE_TRANSIT_ADDR".into(), addr);
            env.insert("AGENTPLANE_TRANSIT_TOKEN".into(), token);
        }
    }
}

/// A server speaking the OpenAI model-listing protocol, accepting only `key`.
async fn mock_provider(key: &'static str) -> String {
    let models = move |h: HeaderMap| async move {
        if h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {key}")) {
            axum::Json(json!({"object": "list", "data": [{"id": "gpt-a"}]})).into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "bad key"}})),
            )
                .into_response()
        }
    };
    let app = axum::Router::new().route("/v1/models", get(models));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

fn openai(name: &str, base: &str, key: &str) -> Value {
    json!({"name": name, "kind": "openai", "base_url": format!("{base}/v1"), "api_key": key})
}

async fn create(app: &TestApp, t: &str, token: &str, body: Value) -> Response {
    app.post(&format!("/v1/tenants/{t}/providers"), token, body)
        .await
}

/// A 503 `kms_unavailable` problem (which `status_json` refuses, being >= 500): its detail.
async fn kms_unavailable(res: Response) -> String {
    let status = res.status().as_u16();
    let ct = res.headers().get("content-type").cloned();
    let retry = res.headers().get("retry-after").cloned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        ct.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert_eq!(body["code"], "kms_unavailable", "{body}");
    assert_eq!(body["status"], 503, "{body}");
    assert!(retry.is_some(), "a 503 says when to retry: {body}");
    body["detail"].as_str().unwrap().to_owned()
}

async fn probe(app: &TestApp, t: &str, id: &str, token: &str) -> (u16, Value) {
    status_json(
        app.call(
            Method::POST,
            &format!("/v1/tenants/{t}/providers/{id}/test"),
            Some(token),
            None,
        )
        .await,
    )
    .await
}

/// Asserts the tenant holds no provider, no data key and no `provider.create` audit event.
async fn assert_nothing_stored(app: &TestApp, t: &str) {
    let admin = app.tenant_user("tenant_admin", t);
    let (s, list) = status_json(app.get(&format!("/v1/tenants/{t}/providers"), &admin).await).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"], json!([]), "no provider: {list}");
    let (s, keys) = status_json(app.get(&format!("/v1/tenants/{t}/keys"), &admin).await).await;
    assert_eq!(s, 200, "{keys}");
    assert_eq!(keys, json!([]), "no tenant key row: {keys}");
    let ctx = PlatformCtx::for_system("test").tenant(t.parse().unwrap());
    assert!(app.control.tenant_keys(&ctx).await.unwrap().is_empty());
    let (s, trail) = status_json(
        app.get(
            &format!("/v1/tenants/{t}/audit?action=provider.create"),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{trail}");
    assert_eq!(
        trail["items"],
        json!([]),
        "no provider.create event: {trail}"
    );
    let (_, trail) = status_json(
        app.get(&format!("/v1/tenants/{t}/audit?action=keys.create"), &admin)
            .await,
    )
    .await;
    assert_eq!(trail["items"], json!([]), "no keys.create event: {trail}");
}

async fn provider_secrets_live_under_transit_and_survive_master_rotation(b: Backend) {
    let bao = Bao::start().await;
    let app = TestApp::spawn_with(b, bao.env(&bao.token)).await;
    let base = mock_provider("sk-transit").await;
    let mut tenants = vec![];
    for name in ["Acme", "Zeta"] {
        let t = app.active_tenant(name).await;
        let admin = app.tenant_user("tenant_admin", &t);
        let (s, p) =
            status_json(create(&app, &t, &admin, openai("main", &base, "sk-transit")).await).await;
        assert_eq!(s, 201, "{p}");
        assert!(!p.to_string().contains("sk-transit"), "{p}");
        let id = p["id"].as_str().unwrap().to_owned();
        let (s, r) = probe(&app, &t, &id, &admin).await;
        assert_eq!((s, r["ok"].as_bool()), (200, Some(true)), "{r}");
        let (_, keys) = status_json(app.get(&format!("/v1/tenants/{t}/keys"), &admin).await).await;
        assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
        assert_eq!(keys[0]["kms"], "transit:agentplane", "{keys}");
        assert_eq!(keys[0]["kek_version"], 1, "{keys}");
        assert_eq!(keys[0]["state"], "active", "{keys}");
        assert!(
            !keys.to_string().contains("vault:v"),
            "never the wrapped key: {keys}"
        );
        tenants.push((t, admin, id));
    }
    // The key was created by startup's ensure_key, derived (one KEK per tenant).
    let res = bao
        .http(Method::GET, &format!("transit/keys/{KEY}"))
        .send()
        .await
        .unwrap();
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["data"]["derived"], true, "{info}");
    assert_eq!(bao.key_version().await, 1);

    let op = app.platform_admin();
    let (s, r) = status_json(
        app.call(
            Method::POST,
            "/v1/admin/keys/rotate?confirm=true",
            Some(&op),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["kms"], "transit:agentplane", "{r}");
    assert_eq!(r["kek_version"], 2, "{r}");
    assert_eq!(r["keys_rewrapped"], tenants.len(), "{r}");
    assert_eq!(r["tenants"], tenants.len(), "{r}");
    assert_eq!(bao.key_version().await, 2, "the KMS made a new KEK version");

    for (t, admin, id) in &tenants {
        let (_, keys) = status_json(app.get(&format!("/v1/tenants/{t}/keys"), admin).await).await;
        assert_eq!(keys[0]["kek_version"], 2, "{keys}");
        let (s, r) = probe(&app, t, id, admin).await;
        assert_eq!((s, r["ok"].as_bool()), (200, Some(true)), "{r}");
    }
    // A second rotation in a row re-wraps everything again.
    let (s, r) = status_json(
        app.call(
            Method::POST,
            "/v1/admin/keys/rotate?confirm=true",
            Some(&op),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["kek_version"].as_u64(), r["keys_rewrapped"].as_u64()),
        (Some(3), Some(2)),
        "{r}"
    );

    // A fresh server from the same configuration (empty key cache) unwraps through OpenBao.
    let mut env = app.db.env(&app.secret);
    bao.env(&bao.token)(&mut env);
    let cfg = agentplane_server::config::Config::from_sources(None, &env).unwrap();
    let fresh = agentplane_server::Server::build(&cfg).await.unwrap();
    for (t, _, id) in &tenants {
        let ctx = PlatformCtx::for_system("test").tenant(t.parse().unwrap());
        let (_, secret) = fresh.control().provider_secret(&ctx, id).await.unwrap();
        assert_eq!(secret.as_slice(), b"sk-transit");
        let keys = fresh.control().tenant_keys(&ctx).await.unwrap();
        assert!(
            keys.iter()
                .all(|k| k.kek_version == 3 && k.wrapped.starts_with("vault:v3:")),
            "{keys:?}"
        );
    }
}

async fn a_token_without_encrypt_rights_changes_nothing(b: Backend) {
    let bao = Bao::start().await;
    // A working server first: it creates the transit key and one tenant's secret.
    let good = TestApp::spawn_with(b, bao.env(&bao.token)).await;
    let base = mock_provider("sk-good").await;
    let g = good.active_tenant("Good").await;
    let g_admin = good.tenant_user("tenant_admin", &g);
    let (s, p) =
        status_json(create(&good, &g, &g_admin, openai("main", &base, "sk-good")).await).await;
    assert_eq!(s, 201, "{p}");
    let g_id = p["id"].as_str().unwrap().to_owned();

    // Startup only reads the key (ensure_key), which this token may: the server starts.
    let read_only = bao.read_only_token().await;
    let app = TestApp::spawn_on(Db::new(b).await, bao.env(&read_only)).await;
    let t = app.active_tenant("Acme").await;
    let admin = app.tenant_user("tenant_admin", &t);
    let detail =
        kms_unavailable(create(&app, &t, &admin, openai("main", &base, "sk-acme")).await).await;
    assert!(
        detail.contains("permission denied") && detail.contains("HTTP 403"),
        "{detail}"
    );
    assert!(
        detail.contains("transit encrypt"),
        "names the operation: {detail}"
    );
    assert!(!detail.contains(&read_only), "{detail}");
    assert!(!detail.contains(&bao.token), "{detail}");
    assert!(!detail.contains("sk-acme"), "{detail}");
    assert_nothing_stored(&app, &t).await;

    // Nor can it rotate the master key: the KMS key stays at version 1, nothing is audited.
    let op = app.platform_admin();
    let detail = kms_unavailable(
        app.call(
            Method::POST,
            "/v1/admin/keys/rotate?confirm=true",
            Some(&op),
            None,
        )
        .await,
    )
    .await;
    assert!(
        detail.contains("transit rotate") && detail.contains("HTTP 403"),
        "{detail}"
    );
    assert!(!detail.contains(&read_only), "{detail}");
    assert_eq!(bao.key_version().await, 1);
    let platform = PlatformCtx::for_system("test");
    let events = app
        .control
        .store()
        .audit_chain_page(&platform, "platform", 0, 100)
        .await
        .unwrap();
    let rotations: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e.action == "keys.rotate_master")
        .map(|(e, _)| e.outcome.as_str())
        .collect();
    assert_eq!(
        rotations,
        ["failure"],
        "the refused rotation is recorded as a failure, not a success"
    );

    // The working server is untouched.
    let (s, r) = probe(&good, &g, &g_id, &g_admin).await;
    assert_eq!((s, r["ok"].as_bool()), (200, Some(true)), "{r}");
}

async fn a_token_that_does_not_exist_stops_the_binary_at_startup(b: Backend) {
    let bao = Bao::start().await;
    let db = Db::new(b).await;
    let bogus = format!("s.{}", random_secret());
    let mut env = db.env(&random_secret());
    bao.env(&bogus)(&mut env);
    let started = Instant::now();
    let mut p = Proc::spawn(&["serve", "--listen", "127.0.0.1:0"], &env);
    let status = p.wait(Duration::from_secs(30)).await;
    let err = p.stderr();
    assert!(!status.success(), "{}", p.describe());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "refused quickly: {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("transit") && err.contains("permission denied"),
        "a clear reason: {}",
        p.describe()
    );
    assert!(
        err.contains(&bao.addr),
        "names the server: {}",
        p.describe()
    );
    for out in [&err, &p.stdout()] {
        assert!(!out.contains(&bogus), "never prints the token: {out}");
        assert!(!out.contains(&bao.token), "{out}");
    }
    assert!(!p.stdout().contains("agentplane serving") && !err.contains("agentplane serving"));
    // Nothing was created in OpenBao either.
    let res = bao
        .http(Method::GET, &format!("transit/keys/{KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "the key was not created");
}

async fn a_stopped_openbao_answers_503_and_stores_nothing(b: Backend) {
    let mut bao = Bao::start().await;
    let app = TestApp::spawn_with(b, bao.env(&bao.token)).await;
    let base = mock_provider("sk-kept").await;
    // Tenant A's data key gets cached; tenant B has none yet.
    let a = app.active_tenant("Acme").await;
    let a_admin = app.tenant_user("tenant_admin", &a);
    let (s, p) =
        status_json(create(&app, &a, &a_admin, openai("main", &base, "sk-kept")).await).await;
    assert_eq!(s, 201, "{p}");
    let a_id = p["id"].as_str().unwrap().to_owned();
    let z = app.active_tenant("Zeta").await;
    let z_admin = app.tenant_user("tenant_admin", &z);
    let addr = bao.addr.clone();
    let root = bao.token.clone();

    bao.stop();
    let started = Instant::now();
    let detail =
        kms_unavailable(create(&app, &z, &z_admin, openai("main", &base, "sk-lost")).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded by the KMS time limit: {:?}",
        started.elapsed()
    );
    assert!(
        detail.contains(&addr) && detail.contains("cannot connect"),
        "{detail}"
    );
    assert!(detail.contains("is OpenBao/Vault running"), "{detail}");
    assert!(
        !detail.contains(&root) && !detail.contains("sk-lost"),
        "{detail}"
    );
    assert_nothing_stored(&app, &z).await;

    // A master-key rotation cannot start either, and records nothing.
    let op = app.platform_admin();
    let detail = kms_unavailable(
        app.call(
            Method::POST,
            "/v1/admin/keys/rotate?confirm=true",
            Some(&op),
            None,
        )
        .await,
    )
    .await;
    assert!(detail.contains("cannot connect"), "{detail}");

    // A key already unwrapped stays usable from the cache while the KMS is down (by design:
    // opening a secret costs no KMS round trip) ...
    let (s, r) = probe(&app, &a, &a_id, &a_admin).await;
    assert_eq!((s, r["ok"].as_bool()), (200, Some(true)), "{r}");
    // ... but a new server cannot start without its KMS (startup's ensure_key), clearly.
    let mut env = app.db.env(&app.secret);
    bao.env(&root)(&mut env);
    let cfg = agentplane_server::config::Config::from_sources(None, &env).unwrap();
    let err = match agentplane_server::Server::build(&cfg).await {
        Ok(_) => panic!("a server started without its KMS"),
        // The message with its causes, as `agentplane serve` prints it (`{:#}`).
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    assert!(
        err.contains("key management") && err.contains("cannot connect") && err.contains(&addr),
        "{err}"
    );
    assert!(!err.contains(&root), "{err}");
}
