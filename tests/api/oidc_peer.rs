//! A real OpenID Connect provider for the tests: panva's certified `oidc-provider` (npm), run
//! by `tests/peers/oidc/provider.mjs` on a free loopback port with the clients and accounts a
//! test gives it. PKCE (S256) is required; ID tokens carry the claims of the granted scopes
//! (`email`, `profile` → name, `groups`); a fresh RS256 signing key every start.
//!
//! Login is headless: [`OidcPeer::login`] follows the authorization request with a
//! cookie-keeping client and, where the provider sends the user agent to its interaction page,
//! calls the peer's `/interaction/UID/login?account=ID` instead, which logs in as that account
//! and consents to everything requested. It stops at the redirect to the client.

use base64::Engine as _;
use reqwest::redirect::Policy;
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

pub struct OidcPeer {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub issuer: String,
    child: tokio::process::Child,
    /// Everything the provider wrote to stderr (and to stdout after its first line).
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// A confidential client registered at the peer: authorization code flow only, authenticating
/// at the token endpoint with `client_secret_basic`.
#[derive(Clone, Debug)]
pub struct Client {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc")
}

/// `npm ci` in the peer's directory unless `oidc-provider` is installed there, once per test
/// process (concurrent tests wait for it).
async fn ensure_installed() {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let dir = peer_dir();
            if dir.join("node_modules/oidc-provider/package.json").exists() {
                return;
            }
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap_or_else(|e| {
                    panic!("oidc peer: cannot run `npm ci` in {} (is Node.js installed?): {e}", dir.display())
                });
            if !out.status.success() {
                panic!(
                    "oidc peer: `npm ci` in {} failed ({}); run scripts/install-peers\nstdout:\n{}\nstderr:\n{}",
                    dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
        .await;
}

impl OidcPeer {
    /// Starts the provider with these clients and accounts (account id -> claims JSON; a
    /// `sub` claim is the account's subject, else its id).
    /// Runs `npm ci` in tests/peers/oidc first if node_modules is missing (idempotent; panics
    /// with a clear message if npm fails).
    pub async fn start(clients: &[Client], accounts: Value) -> OidcPeer {
        assert!(
            accounts.is_object(),
            "oidc peer: accounts must be a JSON object, got {accounts}"
        );
        ensure_installed().await;

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let clients: Vec<Value> = clients
            .iter()
            .map(|c| {
                json!({
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "redirect_uris": [c.redirect_uri],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                })
            })
            .collect();
        let body = json!({"clients": clients, "accounts": accounts});
        std::fs::write(&config, serde_json::to_vec_pretty(&body).unwrap()).unwrap();

        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(&config)
            .arg("0")
            .current_dir(peer_dir())
            .env("OIDC_PEER_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("oidc peer: cannot run `node` (is Node.js installed?): {e}")
            });

        // Drain both pipes for the child's whole life, so it never blocks on a full pipe.
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<String>();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            while let Ok(Some(line)) = stdout.next_line().await {
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(line);
                    }
                    None => {
                        let mut log = sink.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            }
        });

        let line = match tokio::time::timeout(Duration::from_secs(30), first_rx).await {
            Ok(Ok(line)) => line,
            outcome => {
                let why = if outcome.is_err() {
                    "did not start within 30 s"
                } else {
                    "exited"
                };
                let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await
                {
                    Ok(status) => format!("{status:?}"),
                    Err(_) => "still running".to_string(),
                };
                // Let the stderr reader catch up with a dying process.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "oidc peer {why} ({status}); stderr:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("oidc peer: first stdout line is not JSON ({e}): {line:?}"));
        let issuer = ready["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("oidc peer: no issuer in {line}"));

        OidcPeer {
            issuer: issuer.to_string(),
            child,
            log,
            _dir: dir,
        }
    }

    /// What the provider has logged so far (its stderr), for a test's failure message.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The provider's OpenID configuration (`/.well-known/openid-configuration`).
    pub async fn discovery(&self) -> Value {
        let res = reqwest::get(format!("{}/.well-known/openid-configuration", self.issuer))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "oidc peer discovery");
        res.json().await.unwrap()
    }

    /// Drives a headless login: GET `authorize_url` (our server's redirect target at the IdP),
    /// log in as `account`, consent, and return the final redirect Location to the client's
    /// redirect_uri (containing code & state, or error) without following it.
    pub async fn login(&self, authorize_url: &str, account: &str) -> String {
        self.interact(authorize_url, |uid| {
            let mut url = Url::parse(&format!("{}/interaction/{uid}/login", self.issuer)).unwrap();
            url.query_pairs_mut().append_pair("account", account);
            url
        })
        .await
    }

    /// Like [`OidcPeer::login`], but the user declines at the provider: the returned Location
    /// carries `error=access_denied`.
    pub async fn deny(&self, authorize_url: &str) -> String {
        self.interact(authorize_url, |uid| {
            Url::parse(&format!("{}/interaction/{uid}/abort", self.issuer)).unwrap()
        })
        .await
    }

    /// Follows redirects by hand, within the provider's origin, sending each visit of the
    /// interaction page to `act(uid)` instead; returns the first Location outside the provider.
    async fn interact(&self, authorize_url: &str, act: impl Fn(&str) -> Url) -> String {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let issuer = Url::parse(&self.issuer).unwrap();
        let mut url = Url::parse(authorize_url)
            .unwrap_or_else(|e| panic!("oidc peer: bad authorization URL {authorize_url:?}: {e}"));
        for _ in 0..10 {
            let res = http.get(url.clone()).send().await.unwrap();
            let status = res.status();
            let location = res
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| l.to_str().unwrap().to_string());
            let Some(location) = location.filter(|_| status.is_redirection()) else {
                let body = res.text().await.unwrap_or_default();
                panic!(
                    "oidc peer: GET {url} answered {status}, not a redirect:\n{body}\nprovider log:\n{}",
                    self.log()
                );
            };
            let next = url.join(&location).unwrap();
            if next.origin() != issuer.origin() {
                return location;
            }
            let segments: Vec<&str> = next
                .path_segments()
                .map(|s| s.collect())
                .unwrap_or_default();
            url = match segments.as_slice() {
                ["interaction", uid] => act(uid),
                _ => next,
            };
        }
        panic!("oidc peer: more than 10 redirects from {authorize_url}");
    }
}

impl Drop for OidcPeer {
    fn drop(&mut self) {
        // kill_on_drop would only kill; also reap (briefly), so no zombie outlives the test.
        if self.child.start_kill().is_ok() {
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// PKCE S256: `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The query parameters of a redirect Location.
fn query_of(location: &str) -> std::collections::HashMap<String, String> {
    Url::parse(location)
        .unwrap_or_else(|e| panic!("not an absolute URL {location:?}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn the_oidc_peer_completes_a_pkce_code_flow() {
    let client = Client {
        client_id: "agentplane-test".into(),
        client_secret: random_token(),
        redirect_uri: "http://127.0.0.1:9/auth/oidc/callback".into(),
    };
    let peer = OidcPeer::start(
        std::slice::from_ref(&client),
        json!({
            "alice": {
                "sub": "alice-0001",
                "email": "alice@example.com",
                "email_verified": true,
                "name": "Alice Example",
                "groups": ["engineering", "admins"],
            }
        }),
    )
    .await;
    let config = peer.discovery().await;
    assert_eq!(config["issuer"], peer.issuer);
    let authorization_endpoint = config["authorization_endpoint"].as_str().unwrap();
    let token_endpoint = config["token_endpoint"].as_str().unwrap();
    assert_eq!(config["code_challenge_methods_supported"], json!(["S256"]));

    let authorize = |state: &str, nonce: &str, challenge: Option<&str>| {
        let mut url = Url::parse(authorization_endpoint).unwrap();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &client.client_id)
                .append_pair("redirect_uri", &client.redirect_uri)
                .append_pair("scope", "openid email profile groups")
                .append_pair("state", state)
                .append_pair("nonce", nonce);
            if let Some(challenge) = challenge {
                q.append_pair("code_challenge", challenge)
                    .append_pair("code_challenge_method", "S256");
            }
        }
        url.to_string()
    };
    let http = reqwest::Client::new();
    let redeem = |code: String, verifier: Option<String>| {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", client.redirect_uri.clone()),
        ];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier));
        }
        http.post(token_endpoint)
            .basic_auth(&client.client_id, Some(&client.client_secret))
            .form(&form)
            .send()
    };

    // The happy path.
    let (state, nonce, verifier) = (random_token(), random_token(), random_token());
    let location = peer
        .login(
            &authorize(&state, &nonce, Some(&pkce_challenge(&verifier))),
            "alice",
        )
        .await;
    assert!(
        location.starts_with(&format!("{}?", client.redirect_uri)),
        "{location}"
    );
    let query = query_of(&location);
    assert_eq!(query.get("state"), Some(&state), "{location}");
    assert_eq!(query.get("iss"), Some(&peer.issuer), "{location}");
    let code = query
        .get("code")
        .unwrap_or_else(|| panic!("no code: {location}"))
        .clone();

    let res = redeem(code.clone(), Some(verifier.clone())).await.unwrap();
    let status = res.status();
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let id_token = tokens["id_token"].as_str().unwrap();

    // The ID token, verified against the provider's JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(config["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("the ID token's kid in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&client.client_id]);
    validation.set_issuer(&[&peer.issuer]);
    let claims = jsonwebtoken::decode::<Value>(
        id_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["iss"], peer.issuer);
    assert_eq!(claims["aud"], client.client_id);
    assert_eq!(claims["sub"], "alice-0001");
    assert_eq!(claims["nonce"], nonce);
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], json!(["engineering", "admins"]));

    // A code is good once.
    let res = redeem(code, Some(verifier)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // PKCE is required: a code issued for a challenge is not redeemed without a verifier...
    let (state, verifier) = (random_token(), random_token());
    let location = peer
        .login(
            &authorize(&state, &random_token(), Some(&pkce_challenge(&verifier))),
            "alice",
        )
        .await;
    let code = query_of(&location)["code"].clone();
    let res = redeem(code.clone(), None).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["error"], "invalid_grant", "{error}");
    // ... nor with another verifier; only with its own.
    let res = redeem(code.clone(), Some(random_token())).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = redeem(code, Some(verifier)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // ... and an authorization request without a challenge is refused at the provider.
    let state = random_token();
    let location = peer
        .login(&authorize(&state, &random_token(), None), "alice")
        .await;
    let query = query_of(&location);
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("invalid_request"),
        "{location}"
    );
    assert_eq!(query.get("state"), Some(&state), "{location}");

    // The user may decline.
    let state = random_token();
    let location = peer
        .deny(&authorize(
            &state,
            &random_token(),
            Some(&pkce_challenge(&random_token())),
        ))
        .await;
    let query = query_of(&location);
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("access_denied"),
        "{location}"
    );
    assert_eq!(query.get("state"), Some(&state), "{location}");
}
