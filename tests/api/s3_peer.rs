//! The object store on a real S3 API: moto's server (PyPI `moto[server]`, installed into
//! `.venv` by scripts/install-peers) stands in for AWS S3, MinIO or any S3-compatible store.
//! Logos and sealed exports land in the bucket under the tenant's prefix; a download and an
//! erasure go through it.
//!
//! Needs `moto_server`: `AGENTPLANE_MOTO_BIN`, or `.venv/bin/moto_server`.

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use serde_json::json;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

both_backends!(exports_and_logos_live_sealed_in_an_s3_bucket_under_the_tenants_prefix);

const VENV_MOTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/moto_server");
const BUCKET: &str = "agentplane-test";

fn moto_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AGENTPLANE_MOTO_BIN") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(VENV_MOTO);
    assert!(
        venv.is_file(),
        "moto_server was not found (AGENTPLANE_MOTO_BIN, {VENV_MOTO}): run scripts/install-peers \
         (or scripts/test, which runs it)"
    );
    venv
}

/// A moto S3 server on a free port with one bucket; killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto_server");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Creating the bucket is also the readiness probe.
            if let Ok(res) = client
                .put(format!("{}/{BUCKET}", moto.endpoint))
                .send()
                .await
            {
                assert!(res.status().is_success(), "creating the bucket: {res:?}");
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not start:\n{}",
                moto.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Every key in the bucket (ListObjectsV2; moto takes unsigned requests).
    pub async fn keys(&self) -> Vec<String> {
        let body = reqwest::get(format!("{}/{BUCKET}?list-type=2", self.endpoint))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    pub async fn object(&self, key: &str) -> Vec<u8> {
        reqwest::get(format!("{}/{BUCKET}/{key}", self.endpoint))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }
}

async fn exports_and_logos_live_sealed_in_an_s3_bucket_under_the_tenants_prefix(b: Backend) {
    let moto = Moto::start().await;
    let endpoint = moto.endpoint.clone();
    let app = TestApp::spawn_with(b, |env| {
        for (k, v) in [
            (
                "AGENTPLANE_OBJECT_STORE_URL",
                format!("s3://{BUCKET}/deployment-1"),
            ),
            ("AGENTPLANE_OBJECT_STORE_ENDPOINT", endpoint),
            ("AGENTPLANE_OBJECT_STORE_REGION", "us-east-1".into()),
            ("AGENTPLANE_OBJECT_STORE_ACCESS_KEY_ID", "test".into()),
            ("AGENTPLANE_OBJECT_STORE_SECRET_ACCESS_KEY", "test".into()),
            ("AGENTPLANE_OBJECT_STORE_ALLOW_HTTP", "true".into()),
        ] {
            env.insert(k.into(), v);
        }
    })
    .await;
    let tenant = app.active_tenant("Bucketed").await;
    crate::exports::seed(&app, &tenant, "bucket-marker", 20).await;
    let admin = app.tenant_user("tenant_admin", &tenant);
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let res = app
        .client
        .put(format!("{}/v1/tenants/{tenant}/branding/logo", app.base))
        .bearer_auth(&admin)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
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
    app.run_jobs().await;
    let id = rec["id"].as_str().unwrap();
    let (_, rec) = status_json(
        app.get(&format!("/v1/tenants/{tenant}/exports/{id}"), &admin)
            .await,
    )
    .await;
    assert_eq!(rec["status"], "ready", "{rec}");

    // In the bucket, under the deployment's prefix and the tenant's: the logo as uploaded, the
    // export sealed.
    let keys = moto.keys().await;
    let prefix = format!("deployment-1/tenants/{tenant}/");
    assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{keys:?}");
    let export_key = keys
        .iter()
        .find(|k| k.contains(&format!("/exports/{id}/")))
        .unwrap_or_else(|| panic!("no export object in {keys:?}"));
    let sealed = moto.object(export_key).await;
    assert!(!sealed.windows(13).any(|w| w == b"bucket-marker"));
    assert!(!sealed.windows(4).any(|w| w == b"PK\x03\x04"));
    assert!(
        keys.iter().any(|k| k.contains("/branding/logo-")),
        "{keys:?}"
    );
    let res = app
        .client
        .get(format!("{}/v1/tenants/{tenant}/branding/logo", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.bytes().await.unwrap().to_vec(), png);

    // The download opens the sealed object from the bucket, whole.
    let bytes = crate::exports::download(&app, &tenant, &rec).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    assert!(zip.by_name("manifest.json").is_ok());

    // Purging the tenant empties its prefix in the bucket.
    let op = app.platform_admin();
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/admin/tenants/{tenant}?confirm=true"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    let (s, job) = status_json(
        app.post(
            &format!("/v1/admin/tenants/{tenant}/purge?confirm=true"),
            &op,
            json!({}),
        )
        .await,
    )
    .await;
    assert!(s == 200 || s == 202, "{s} {job}");
    app.run_jobs().await;
    assert!(moto.keys().await.is_empty(), "{:?}", moto.keys().await);
}
