//! OpenID Connect relying party: a tenant's sign-in through its own identity provider.
//!
//! The authorization code flow with PKCE (S256), `state` and `nonce`, built on the
//! `openidconnect` crate:
//! 1. [`OidcClient::discover`] fetches `{issuer}/.well-known/openid-configuration` and the
//!    provider's JWKS; the metadata's `issuer` must equal the configured issuer exactly.
//! 2. [`OidcClient::authorize_url`] gives the URL to send the browser to and the
//!    [`PendingLogin`] that the server must remember (server-side, keyed by `state`) until the
//!    callback.
//! 3. [`OidcClient::exchange`] redeems the code at the token endpoint (`client_secret_basic`,
//!    with the PKCE verifier) and validates the ID token: signature against the JWKS (asymmetric
//!    algorithms only, never an HMAC keyed by the client secret), `iss`, `aud` = client id (no
//!    other audience), `azp` when present, `exp`, `iat`, `nonce` and `at_hash` when present.
//!
//! Secrets: the client secret, the PKCE verifier, the code and the tokens are never logged
//! and never appear in an [`OidcError`] or a `Debug` rendering of these types.
//!
//! SSRF: the issuer is tenant-supplied, and so are the endpoints its metadata names
//! (`jwks_uri`, `token_endpoint`). Every request goes through the `reqwest::Client` that the
//! caller hands to [`OidcClient::discover`], which must be built with redirects disabled
//! (`reqwest::redirect::Policy::none()`) so that a vetted URL cannot bounce the request to an
//! internal address, and with whatever address policy and timeouts the deployment applies.

// The SSO sign-in wiring uses this module; until it lands nothing in the crate calls it.

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthType, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// How far in the future an ID token's `iat` may be (clock skew between us and the provider).
const MAX_IAT_SKEW_SECS: i64 = 300;

/// A tenant's OIDC connection settings (already validated by the caller).
#[derive(Clone)]
pub(crate) struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    /// Plaintext, in memory only.
    pub client_secret: String,
    /// Scopes requested beyond `openid`, e.g. `email`, `profile`, `groups`.
    pub scopes: Vec<String>,
    /// The ID token claim naming the user's groups, e.g. `groups`.
    pub groups_claim: String,
}

impl fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .finish()
    }
}

/// What the sign-in start must remember (server-side, keyed by `state`) until the callback.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub redirect_uri: String,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("state", &self.state)
            .field("nonce", &self.nonce)
            .field("pkce_verifier", &"[redacted]")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// Who signed in, as the provider asserted it in a validated ID token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OidcIdentity {
    /// `sub`: stable and unique within `issuer`.
    pub subject: String,
    /// `iss`.
    pub issuer: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    /// The groups claim: an array of strings, or a single string; empty when absent.
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OidcError {
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error("token exchange failed: {0}")]
    Exchange(String),
    #[error("ID token rejected: {0}")]
    IdToken(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The ID token's claims beyond the standard ones (the groups claim among them), kept as JSON
/// so that the claim's name can be configured per tenant.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ExtraClaims {
    #[serde(flatten)]
    extra: HashMap<String, Value>,
}

impl AdditionalClaims for ExtraClaims {}

type IdFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<IdFields, CoreTokenType>;
/// `openidconnect`'s client with [`ExtraClaims`], an authorization and a token endpoint.
type RpClient = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

/// A relying party for one tenant's provider: its discovered metadata and keys, the client
/// credentials and the HTTP client every request goes through.
pub(crate) struct OidcClient {
    client: RpClient,
    http: reqwest::Client,
    issuer: String,
    client_id: String,
    scopes: Vec<Scope>,
    groups_claim: String,
    /// The provider's ID token signing algorithms that we accept: asymmetric ones only.
    signing_algs: Vec<CoreJwsSigningAlgorithm>,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Discovers `{issuer}/.well-known/openid-configuration` (and the JWKS it names). The
    /// discovered issuer must equal `settings.issuer` exactly.
    ///
    /// `http` is built by the caller and MUST have redirects disabled
    /// (`reqwest::redirect::Policy::none()`): the issuer and the endpoints in its metadata are
    /// tenant-controlled, and a redirect would take a request past the caller's vetting of the
    /// URL (SSRF). It is kept for the token requests of [`OidcClient::exchange`].
    pub async fn discover(
        settings: &OidcSettings,
        http: reqwest::Client,
    ) -> Result<Self, OidcError> {
        if settings.client_id.is_empty() {
            return Err(OidcError::Config("the client id is empty".into()));
        }
        if settings.client_secret.is_empty() {
            return Err(OidcError::Config("the client secret is empty".into()));
        }
        if settings.groups_claim.is_empty() {
            return Err(OidcError::Config("the groups claim name is empty".into()));
        }
        let mut scopes: Vec<Scope> = Vec::new();
        for scope in &settings.scopes {
            if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(OidcError::Config(format!("invalid scope {scope:?}")));
            }
            // `openid` is always requested.
            if scope != "openid" && !scopes.iter().any(|s| s.as_str() == scope) {
                scopes.push(Scope::new(scope.clone()));
            }
        }
        let issuer_url = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer {:?}: {e}", settings.issuer)))?;
        if !matches!(issuer_url.url().scheme(), "https" | "http") {
            return Err(OidcError::Config(format!(
                "issuer {:?} is not an http(s) URL",
                settings.issuer
            )));
        }

        let metadata = CoreProviderMetadata::discover_async(issuer_url, &http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        if metadata.issuer().as_str() != settings.issuer {
            return Err(OidcError::Discovery(format!(
                "the provider names its issuer {:?}, not {:?}",
                metadata.issuer().as_str(),
                settings.issuer
            )));
        }
        let token_url = metadata.token_endpoint().cloned().ok_or_else(|| {
            OidcError::Discovery("the provider metadata has no token_endpoint".into())
        })?;
        let signing_algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| is_asymmetric(alg))
            .cloned()
            .collect();
        if signing_algs.is_empty() {
            return Err(OidcError::Discovery(
                "the provider supports no asymmetric ID token signing algorithm".into(),
            ));
        }

        let client: RpClient = openidconnect::Client::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            Some(ClientSecret::new(settings.client_secret.clone())),
        )
        .set_token_uri(token_url)
        .set_auth_type(AuthType::BasicAuth);

        Ok(Self {
            client,
            http,
            issuer: settings.issuer.clone(),
            client_id: settings.client_id.clone(),
            scopes,
            groups_claim: settings.groups_claim.clone(),
            signing_algs,
        })
    }

    /// Authorization code + PKCE (S256) + nonce + state: the URL to send the browser to, and
    /// what to remember until the callback.
    pub fn authorize_url(&self, redirect_uri: &str) -> Result<(String, PendingLogin), OidcError> {
        let redirect = parse_redirect_uri(redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect))
            .url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            redirect_uri: redirect_uri.to_owned(),
        };
        Ok((url.to_string(), pending))
    }

    /// Exchanges the code (`client_secret_basic`, with the PKCE verifier), validates the ID
    /// token (signature via the JWKS, `iss`, `aud` = client id, `azp` if present, `exp`/`iat`,
    /// `nonce` == `pending.nonce`, `at_hash` if present) and returns the identity.
    ///
    /// The caller has already matched the callback's `state` to `pending` (and forgets
    /// `pending` now: a code and a nonce are good once).
    pub async fn exchange(
        &self,
        code: &str,
        pending: &PendingLogin,
    ) -> Result<OidcIdentity, OidcError> {
        if code.is_empty() {
            return Err(OidcError::Exchange(
                "the authorization code is empty".into(),
            ));
        }
        if pending.nonce.is_empty() {
            return Err(OidcError::IdToken(
                "no nonce was remembered for this sign-in".into(),
            ));
        }
        let redirect = parse_redirect_uri(&pending.redirect_uri)?;
        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(token_error(&e)))?;

        let id_token = tokens
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response has no ID token".into()))?;
        let verifier = self
            .client
            .id_token_verifier()
            .set_allowed_algs(self.signing_algs.iter().cloned())
            .set_issue_time_verifier_fn(|iat| {
                let now = now_unix();
                if iat.timestamp() > now.saturating_add(MAX_IAT_SKEW_SECS) {
                    Err(format!("issued in the future (iat {})", iat.timestamp()))
                } else {
                    Ok(())
                }
            });
        let nonce = Nonce::new(pending.nonce.clone());
        let claims = id_token
            .claims(&verifier, &nonce)
            .map_err(|e| OidcError::IdToken(error_chain(&e)))?;

        // openidconnect leaves `azp` to the relying party (OIDC Core 3.1.3.7, step 5).
        if let Some(azp) = claims.authorized_party() {
            if azp.as_str() != self.client_id {
                return Err(OidcError::IdToken(format!(
                    "authorized party {:?} is not this client",
                    azp.as_str()
                )));
            }
        }
        // The access token is bound to the ID token when the provider says so.
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| OidcError::IdToken(error_chain(&e)))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| OidcError::IdToken(error_chain(&e)))?;
            let actual = AccessTokenHash::from_token(tokens.access_token(), alg, key)
                .map_err(|e| OidcError::IdToken(format!("at_hash: {}", error_chain(&e))))?;
            if actual != *expected {
                return Err(OidcError::IdToken(
                    "at_hash does not match the access token".into(),
                ));
            }
        }

        let groups = groups_from(
            claims.additional_claims().extra.get(&self.groups_claim),
            &self.groups_claim,
        )?;
        let name = claims.name().and_then(|name| {
            name.get(None)
                .or_else(|| name.iter().next().map(|(_, n)| n))
                .map(|n| n.as_str().to_owned())
        });
        Ok(OidcIdentity {
            subject: claims.subject().as_str().to_owned(),
            issuer: claims.issuer().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified(),
            name,
            groups,
        })
    }
}

fn parse_redirect_uri(redirect_uri: &str) -> Result<RedirectUrl, OidcError> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|e| OidcError::Config(format!("redirect URI {redirect_uri:?}: {e}")))?;
    if !matches!(redirect.url().scheme(), "https" | "http") {
        return Err(OidcError::Config(format!(
            "redirect URI {redirect_uri:?} is not an http(s) URL"
        )));
    }
    Ok(redirect)
}

/// ID tokens must be signed with the provider's keys: an HMAC (keyed by the client secret)
/// or `none` is refused.
fn is_asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    matches!(
        alg,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
            | CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384
            | CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512
            | CoreJwsSigningAlgorithm::RsaSsaPssSha256
            | CoreJwsSigningAlgorithm::RsaSsaPssSha384
            | CoreJwsSigningAlgorithm::RsaSsaPssSha512
            | CoreJwsSigningAlgorithm::EcdsaP256Sha256
            | CoreJwsSigningAlgorithm::EcdsaP384Sha384
            | CoreJwsSigningAlgorithm::EcdsaP521Sha512
            | CoreJwsSigningAlgorithm::EdDsa
    )
}

/// The groups claim: an array of strings or a single string; absent or null: no groups.
/// Duplicates are dropped, the first occurrence's order kept.
fn groups_from(value: Option<&Value>, claim: &str) -> Result<Vec<String>, OidcError> {
    let wrong = || {
        OidcError::IdToken(format!(
            "claim {claim:?} is neither a string nor an array of strings"
        ))
    };
    let mut groups: Vec<String> = Vec::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(group)) => groups.push(group.clone()),
        Some(Value::Array(items)) => {
            for item in items {
                let group = item.as_str().ok_or_else(wrong)?;
                if !groups.iter().any(|g| g == group) {
                    groups.push(group.to_owned());
                }
            }
        }
        Some(_) => return Err(wrong()),
    }
    Ok(groups)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// A failed token request, described without the response body (which could carry tokens).
fn token_error<RE>(
    error: &RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> String
where
    RE: std::error::Error + 'static,
{
    match error {
        RequestTokenError::ServerResponse(response) => {
            let mut out = format!("the provider answered {}", response.error());
            if let Some(description) = response.error_description() {
                out.push_str(": ");
                out.push_str(description);
            }
            out
        }
        RequestTokenError::Request(e) => format!("request failed: {}", error_chain(e)),
        RequestTokenError::Parse(e, _body) => format!(
            "the token response does not parse at `{}` ({:?} error)",
            e.path(),
            e.inner().classify()
        ),
        RequestTokenError::Other(message) => message.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Against a real provider: panva's `oidc-provider`, run by
    //! `tests/peers/oidc/provider.mjs` (see `tests/api/oidc_peer.rs`, which this replicates
    //! minimally), with a headless login through its `/interaction/UID/login?account=ID`.

    use super::*;
    use reqwest::redirect::Policy;
    use reqwest::Url;
    use serde_json::json;
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::process::Command;

    const CLIENT_ID: &str = "agentplane-rp";
    const REDIRECT_URI: &str = "http://127.0.0.1:9/auth/oidc/callback";

    fn peer_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/oidc")
    }

    /// `npm ci` in the peer's directory unless `oidc-provider` is installed, once per process.
    fn ensure_installed() {
        static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
        let outcome = INSTALLED.get_or_init(|| {
            let dir = peer_dir();
            if dir.join("node_modules/oidc-provider/package.json").exists() {
                return Ok(());
            }
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run `npm ci` in {}: {e}", dir.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`npm ci` in {} failed ({}):\n{}",
                    dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        });
        if let Err(e) = outcome {
            panic!("oidc peer: {e}");
        }
    }

    struct Peer {
        /// `http://127.0.0.1:PORT`.
        issuer: String,
        child: tokio::process::Child,
        log: Arc<Mutex<String>>,
        _dir: tempfile::TempDir,
    }

    impl Peer {
        /// The provider with one confidential client (`CLIENT_ID`, `secret`) and these accounts.
        async fn start(secret: &str, accounts: Value) -> Peer {
            ensure_installed();
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("config.json");
            let body = json!({
                "clients": [{
                    "client_id": CLIENT_ID,
                    "client_secret": secret,
                    "redirect_uris": [REDIRECT_URI],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                }],
                "accounts": accounts,
            });
            std::fs::write(&config, serde_json::to_vec(&body).unwrap()).unwrap();

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
                .unwrap_or_else(|e| panic!("oidc peer: cannot run `node`: {e}"));

            // Drain both pipes for the child's whole life.
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
            let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
            let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
            let sink = log.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = stdout.next_line().await {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            let Ok(Ok(Some(line))) = first else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("oidc peer did not start; stderr:\n{}", log.lock().unwrap());
            };
            let ready: Value = serde_json::from_str(&line).unwrap();
            let issuer = ready["issuer"].as_str().unwrap().to_owned();
            Peer {
                issuer,
                child,
                log,
                _dir: dir,
            }
        }

        fn settings(&self, secret: &str) -> OidcSettings {
            OidcSettings {
                issuer: self.issuer.clone(),
                client_id: CLIENT_ID.into(),
                client_secret: secret.into(),
                scopes: vec!["email".into(), "profile".into(), "groups".into()],
                groups_claim: "groups".into(),
            }
        }

        /// GETs `authorize_url` with a cookie-keeping client, logs in (and consents) as
        /// `account` at each interaction, and returns the first redirect Location outside the
        /// provider (the callback with code and state), without following it.
        async fn login(&self, authorize_url: &str, account: &str) -> String {
            let http = reqwest::Client::builder()
                .cookie_store(true)
                .redirect(Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let issuer = Url::parse(&self.issuer).unwrap();
            let mut url = Url::parse(authorize_url).unwrap();
            for _ in 0..10 {
                let res = http.get(url.clone()).send().await.unwrap();
                let status = res.status();
                let location = res
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|l| l.to_str().unwrap().to_owned());
                let Some(location) = location.filter(|_| status.is_redirection()) else {
                    let body = res.text().await.unwrap_or_default();
                    panic!(
                        "oidc peer: GET {url} answered {status}:\n{body}\nlog:\n{}",
                        self.log.lock().unwrap()
                    );
                };
                let next = url.join(&location).unwrap();
                if next.origin() != issuer.origin() {
                    return location;
                }
                let segments: Vec<String> = next
                    .path_segments()
                    .map(|s| s.map(str::to_owned).collect())
                    .unwrap_or_default();
                url = match segments.as_slice() {
                    [interaction, uid] if interaction == "interaction" => {
                        let mut login = issuer.join(&format!("/interaction/{uid}/login")).unwrap();
                        login.query_pairs_mut().append_pair("account", account);
                        login
                    }
                    _ => next,
                };
            }
            panic!("oidc peer: more than 10 redirects from {authorize_url}");
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
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

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn random() -> String {
        use base64::Engine as _;
        use rand::RngCore as _;
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn accounts() -> Value {
        json!({
            "alice": {
                "sub": "alice-0001",
                "email": "alice@example.com",
                "email_verified": true,
                "name": "Alice Example",
                "groups": ["engineering", "admins", "engineering"],
            },
            "bob": {
                "sub": "bob-0002",
                "email": "bob@example.com",
                "email_verified": false,
                "name": "Bob",
                "groups": "solo",
            },
            "carol": {
                "sub": "carol-0003",
                "email": "carol@example.com",
            },
        })
    }

    /// The `code` and `state` of a callback Location.
    fn callback(location: &str) -> (String, String) {
        assert!(
            location.starts_with(&format!("{REDIRECT_URI}?")),
            "{location}"
        );
        let query: HashMap<String, String> = Url::parse(location)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        let code = query
            .get("code")
            .unwrap_or_else(|| panic!("no code: {location}"));
        (code.clone(), query["state"].clone())
    }

    /// Signs in as `account` through a fresh authorization request: (code, pending).
    async fn sign_in(peer: &Peer, rp: &OidcClient, account: &str) -> (String, PendingLogin) {
        let (url, pending) = rp.authorize_url(REDIRECT_URI).unwrap();
        let (code, state) = callback(&peer.login(&url, account).await);
        assert_eq!(state, pending.state);
        (code, pending)
    }

    #[tokio::test]
    async fn oidc_full_flow_returns_the_identity() {
        let secret = random();
        let peer = Peer::start(&secret, accounts()).await;
        let rp = OidcClient::discover(&peer.settings(&secret), http())
            .await
            .unwrap();

        let (url, pending) = rp.authorize_url(REDIRECT_URI).unwrap();
        let query: HashMap<String, String> = Url::parse(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], CLIENT_ID);
        assert_eq!(query["redirect_uri"], REDIRECT_URI);
        assert_eq!(query["scope"], "openid email profile groups");
        assert_eq!(query["state"], pending.state);
        assert_eq!(query["nonce"], pending.nonce);
        assert_eq!(query["code_challenge_method"], "S256");
        assert_ne!(query["code_challenge"], pending.pkce_verifier);
        assert_eq!(pending.redirect_uri, REDIRECT_URI);
        // The PKCE verifier never leaves the server.
        assert!(!url.contains(&pending.pkce_verifier));
        assert!(!format!("{pending:?}").contains(&pending.pkce_verifier));

        let (code, state) = callback(&peer.login(&url, "alice").await);
        assert_eq!(state, pending.state);
        let identity = rp.exchange(&code, &pending).await.unwrap();
        assert_eq!(
            identity,
            OidcIdentity {
                subject: "alice-0001".into(),
                issuer: peer.issuer.clone(),
                email: Some("alice@example.com".into()),
                email_verified: Some(true),
                name: Some("Alice Example".into()),
                groups: vec!["engineering".into(), "admins".into()],
            }
        );

        // A single-string groups claim is one group; a missing one is none.
        let (code, pending) = sign_in(&peer, &rp, "bob").await;
        let bob = rp.exchange(&code, &pending).await.unwrap();
        assert_eq!(bob.groups, vec!["solo".to_string()]);
        assert_eq!(bob.email_verified, Some(false));
        let (code, pending) = sign_in(&peer, &rp, "carol").await;
        let carol = rp.exchange(&code, &pending).await.unwrap();
        assert_eq!(carol.subject, "carol-0003");
        assert_eq!(carol.email.as_deref(), Some("carol@example.com"));
        assert_eq!(carol.name, None);
        assert!(carol.groups.is_empty());
    }

    #[tokio::test]
    async fn oidc_a_nonce_other_than_the_requested_one_is_rejected() {
        let secret = random();
        let peer = Peer::start(&secret, accounts()).await;
        let rp = OidcClient::discover(&peer.settings(&secret), http())
            .await
            .unwrap();
        let (code, pending) = sign_in(&peer, &rp, "alice").await;
        let tampered = PendingLogin {
            nonce: random(),
            ..pending
        };
        let err = rp.exchange(&code, &tampered).await.unwrap_err();
        assert!(
            matches!(&err, OidcError::IdToken(m) if m.contains("nonce")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn oidc_a_wrong_client_secret_fails_the_exchange() {
        let secret = random();
        let peer = Peer::start(&secret, accounts()).await;
        let wrong = random();
        let rp = OidcClient::discover(&peer.settings(&wrong), http())
            .await
            .unwrap();
        let (code, pending) = sign_in(&peer, &rp, "alice").await;
        let err = rp.exchange(&code, &pending).await.unwrap_err();
        assert!(
            matches!(&err, OidcError::Exchange(m) if m.contains("invalid_client")),
            "{err:?}"
        );
        // Neither secret shows in the error.
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(&wrong) && !shown.contains(&secret),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn oidc_a_code_is_redeemed_once() {
        let secret = random();
        let peer = Peer::start(&secret, accounts()).await;
        let rp = OidcClient::discover(&peer.settings(&secret), http())
            .await
            .unwrap();
        let (code, pending) = sign_in(&peer, &rp, "alice").await;
        rp.exchange(&code, &pending).await.unwrap();
        let err = rp.exchange(&code, &pending).await.unwrap_err();
        assert!(
            matches!(&err, OidcError::Exchange(m) if m.contains("invalid_grant")),
            "{err:?}"
        );

        // PKCE: a code is not redeemed with another verifier.
        let (code, pending) = sign_in(&peer, &rp, "alice").await;
        let other = PendingLogin {
            pkce_verifier: PkceCodeChallenge::new_random_sha256().1.secret().clone(),
            ..pending
        };
        let err = rp.exchange(&code, &other).await.unwrap_err();
        assert!(
            matches!(&err, OidcError::Exchange(m) if m.contains("invalid_grant")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn oidc_discovery_requires_the_exact_issuer() {
        let secret = random();
        let peer = Peer::start(&secret, accounts()).await;
        // Same provider, same metadata document, but not the issuer it names.
        for issuer in [
            format!("{}/", peer.issuer),
            peer.issuer.replace("127.0.0.1", "localhost"),
        ] {
            let settings = OidcSettings {
                issuer: issuer.clone(),
                ..peer.settings(&secret)
            };
            let err = OidcClient::discover(&settings, http()).await.unwrap_err();
            assert!(
                matches!(&err, OidcError::Discovery(m) if m.contains("issuer")),
                "{issuer}: {err:?}"
            );
        }
        // Nothing listens there.
        let settings = OidcSettings {
            issuer: "http://127.0.0.1:9".into(),
            ..peer.settings(&secret)
        };
        let err = OidcClient::discover(&settings, http()).await.unwrap_err();
        assert!(matches!(err, OidcError::Discovery(_)), "{err:?}");
        // Not a URL at all.
        let settings = OidcSettings {
            issuer: "not a url".into(),
            ..peer.settings(&secret)
        };
        let err = OidcClient::discover(&settings, http()).await.unwrap_err();
        assert!(matches!(err, OidcError::Config(_)), "{err:?}");
    }

    #[tokio::test]
    async fn oidc_rejects_a_bad_redirect_uri() {
        let secret = random();
        let peer = Peer::start(&secret, accounts()).await;
        let rp = OidcClient::discover(&peer.settings(&secret), http())
            .await
            .unwrap();
        for bad in ["", "/relative/callback", "javascript:alert(1)"] {
            let err = rp.authorize_url(bad).unwrap_err();
            assert!(matches!(err, OidcError::Config(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn oidc_groups_claim_shapes() {
        assert_eq!(groups_from(None, "groups").unwrap(), Vec::<String>::new());
        assert_eq!(
            groups_from(Some(&Value::Null), "groups").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            groups_from(Some(&json!("a")), "groups").unwrap(),
            vec!["a".to_string()]
        );
        assert_eq!(
            groups_from(Some(&json!(["a", "b", "a"])), "groups").unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(matches!(
            groups_from(Some(&json!(["a", 1])), "groups"),
            Err(OidcError::IdToken(_))
        ));
        assert!(matches!(
            groups_from(Some(&json!({"a": 1})), "groups"),
            Err(OidcError::IdToken(_))
        ));
    }

    #[test]
    fn oidc_secrets_stay_out_of_debug() {
        let settings = OidcSettings {
            issuer: "https://idp.example.com".into(),
            client_id: "c".into(),
            client_secret: "s3cret-value".into(),
            scopes: vec![],
            groups_claim: "groups".into(),
        };
        assert!(!format!("{settings:?}").contains("s3cret-value"));
    }

    /// The SSO handlers run on axum: the client is shared across tasks, its futures are Send.
    #[test]
    fn oidc_client_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<OidcClient>();
        let settings = OidcSettings {
            issuer: "https://idp.example.com".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            scopes: vec![],
            groups_claim: "groups".into(),
        };
        send(&OidcClient::discover(&settings, reqwest::Client::new()));
        fn exchange_is_send(rp: &OidcClient, pending: &PendingLogin) {
            send(&rp.exchange("code", pending));
        }
        let _ = exchange_is_send;
    }
}
