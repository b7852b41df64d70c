//! TransitKms against a real OpenBao dev server (the Vault Transit API).
//!
//! Needs the `bao` binary: `AGENTPLANE_BAO_BIN`, `bao` on PATH, or `.venv/bin/bao` at the
//! workspace root (scripts/install-peers puts it there). Without it the tests fail: they
//! never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentplane_core::TenantId;
use agentplane_crypto::{CryptoError, DataKey, Kms, TransitKms, WrappedKey};
use rand::Rng;
use secrecy::SecretString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VENV_BAO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/bao");

fn bao_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("AGENTPLANE_BAO_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "AGENTPLANE_BAO_BIN={} does not exist; run scripts/test (or scripts/install-peers)",
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
         run scripts/test, which installs it with scripts/install-peers"
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

/// An OpenBao dev server with transit mounted; killed on drop.
struct Bao {
    child: Child,
    addr: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    async fn start() -> Self {
        let bin = bao_bin();
        let dir = tempfile::tempdir().unwrap();
        let token = format!("root-{:032x}", rand::thread_rng().gen::<u128>());
        let port = free_port_pair();
        let addr = format!("http://127.0.0.1:{port}");
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
            addr,
            token,
            dir,
        };
        bao.wait_healthy().await;
        let response = bao
            .http(reqwest::Method::POST, "sys/mounts/transit")
            .json(&serde_json::json!({"type": "transit"}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "enabling transit: {response:?}"
        );
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

    fn http(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token)
    }

    fn kms(&self, key: &str) -> TransitKms {
        self.kms_with(&self.token, "transit", key)
    }

    fn kms_with(&self, token: &str, mount: &str, key: &str) -> TransitKms {
        TransitKms::new(&self.addr, SecretString::from(token.to_owned()), mount, key).unwrap()
    }
}

fn kms_message(err: CryptoError) -> String {
    match err {
        CryptoError::Kms(m) => m,
        other => panic!("expected a Kms error, got {other:?}"),
    }
}

#[tokio::test]
async fn wraps_per_tenant_and_rewraps_after_rotation() {
    let bao = Bao::start().await;
    let kms = bao.kms("agentplane");
    kms.ensure_key().await.unwrap();
    kms.ensure_key().await.unwrap(); // idempotent
    assert_eq!(kms.name(), "transit:agentplane");
    assert_eq!(kms.current_version().await.unwrap(), 1);

    let (t, other) = (TenantId::new(), TenantId::new());
    let key = DataKey::generate();
    let v1 = kms.wrap(t, &key).await.unwrap();
    assert_eq!(v1.kms, "transit:agentplane");
    assert_eq!(v1.kek_version, 1);
    assert!(v1.blob.starts_with("vault:v1:"), "{}", v1.blob);
    let back = kms.unwrap(t, &v1).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());

    // Per-tenant derived KEKs: another tenant's context does not open it.
    assert!(matches!(
        kms.unwrap(other, &v1).await,
        Err(CryptoError::Decrypt)
    ));
    assert!(matches!(
        kms.rewrap(other, &v1).await,
        Err(CryptoError::Decrypt)
    ));
    // The same data key wrapped for two tenants gives unrelated blobs.
    let for_other = kms.wrap(other, &key).await.unwrap();
    assert_ne!(for_other.blob, v1.blob);

    assert_eq!(kms.rotate().await.unwrap(), 2);
    assert_eq!(kms.current_version().await.unwrap(), 2);
    let v2 = kms.rewrap(t, &v1).await.unwrap();
    assert_eq!(v2.kek_version, 2);
    assert!(v2.blob.starts_with("vault:v2:"), "{}", v2.blob);
    assert_eq!(
        kms.unwrap(t, &v2).await.unwrap().expose_secret(),
        key.expose_secret()
    );
    // Old versions still unwrap; new wraps use v2.
    assert_eq!(
        kms.unwrap(t, &v1).await.unwrap().expose_secret(),
        key.expose_secret()
    );
    assert_eq!(kms.wrap(t, &key).await.unwrap().kek_version, 2);

    // A label that disagrees with the blob, or another provider's key, is refused locally.
    let relabelled = WrappedKey {
        kek_version: 2,
        ..v1.clone()
    };
    assert!(matches!(
        kms.unwrap(t, &relabelled).await,
        Err(CryptoError::Malformed)
    ));
    let local = WrappedKey {
        kms: "local".into(),
        ..v1.clone()
    };
    assert!(kms_message(kms.unwrap(t, &local).await.unwrap_err()).contains("\"local\""));
    // A tampered ciphertext fails to decrypt.
    let mut tampered = v2.blob.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = WrappedKey {
        blob: String::from_utf8(tampered).unwrap(),
        ..v2
    };
    assert!(kms.unwrap(t, &tampered).await.is_err());
}

#[tokio::test]
async fn a_key_that_is_not_derived_is_refused() {
    let bao = Bao::start().await;
    let response = bao
        .http(reqwest::Method::POST, "transit/keys/plain")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    match bao.kms("plain").ensure_key().await {
        Err(CryptoError::Config(m)) => assert!(m.contains("not derived"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_token_is_a_clear_error_and_changes_nothing() {
    let bao = Bao::start().await;
    let good = bao.kms("agentplane");
    let wrong_token = "s.WrongToken-7c1f3e9a";
    let bad = bao.kms_with(wrong_token, "transit", "agentplane");

    // Not even the key gets created with a wrong token.
    let m = kms_message(bad.ensure_key().await.unwrap_err());
    assert!(
        m.contains("permission denied") && m.contains("HTTP 403"),
        "{m}"
    );
    assert!(m.contains("check the token"), "{m}");
    assert!(!m.contains(wrong_token) && !m.contains(&bao.token), "{m}");
    let m = kms_message(good.current_version().await.unwrap_err());
    assert!(m.contains("HTTP 404") && m.contains("ensure_key"), "{m}");

    good.ensure_key().await.unwrap();
    let t = TenantId::new();
    let key = DataKey::generate();
    let wrapped = good.wrap(t, &key).await.unwrap();
    for err in [
        bad.wrap(t, &key).await.unwrap_err(),
        bad.unwrap(t, &wrapped).await.map(drop).unwrap_err(),
        bad.rewrap(t, &wrapped).await.map(drop).unwrap_err(),
        bad.rotate().await.map(drop).unwrap_err(),
    ] {
        let m = kms_message(err);
        assert!(m.contains("HTTP 403"), "{m}");
        assert!(!m.contains(wrong_token) && !m.contains(&bao.token), "{m}");
    }
    // Nothing changed: still version 1, the wrapped key still opens.
    assert_eq!(good.current_version().await.unwrap(), 1);
    assert_eq!(
        good.unwrap(t, &wrapped).await.unwrap().expose_secret(),
        key.expose_secret()
    );
    // Debug never shows the token either.
    assert!(!format!("{bad:?}").contains(wrong_token));

    // A transit engine that is not mounted says so.
    let m = kms_message(
        bao.kms_with(&bao.token, "nowhere", "agentplane")
            .ensure_key()
            .await
            .unwrap_err(),
    );
    assert!(m.contains("HTTP 404") && m.contains("\"nowhere\""), "{m}");
}

#[tokio::test]
async fn a_stopped_server_is_a_clear_error() {
    let bao = Bao::start().await;
    let kms = bao.kms("agentplane");
    kms.ensure_key().await.unwrap();
    let t = TenantId::new();
    let wrapped = kms.wrap(t, &DataKey::generate()).await.unwrap();
    let addr = bao.addr.clone();
    let token = bao.token.clone();
    drop(bao);

    let started = Instant::now();
    let m = kms_message(kms.unwrap(t, &wrapped).await.map(drop).unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "bounded by the 10 s timeout"
    );
    assert!(m.contains(&addr) && m.contains("cannot connect"), "{m}");
    assert!(m.contains("is OpenBao/Vault running"), "{m}");
    assert!(!m.contains(&token), "{m}");
    let m = kms_message(kms.rotate().await.unwrap_err());
    assert!(m.contains("transit rotate"), "{m}");
}
