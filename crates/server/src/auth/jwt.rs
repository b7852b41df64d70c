//! Admin JWT verification: a bearer token in, a verified [`Principal`] out.
//!
//! Rules (seed: "Admin JWT validation uses `JWT_SHARED_SECRET` and `JWT_ALGORITHM`"):
//! - The algorithm is pinned by configuration. The header's `alg` is compared with it before
//!   any key is used, so `alg: none` and key confusion (an RS256 public key used as an HS256
//!   secret) fail as [`AuthError::WrongAlgorithm`]. Tokens with a `crit` header are refused.
//! - `exp` is required and enforced, `nbf` enforced when present, both with the configured
//!   leeway; `sub` is required and non-empty; `iss` and `aud` are required and checked when
//!   configured.
//! - With a JWKS, the key is chosen by `kid` (a token without `kid` is accepted only when the
//!   set holds exactly one key usable with the algorithm). A remote JWKS is refetched on an
//!   unknown `kid`, at most once per [`JWKS_REFETCH_INTERVAL`].
//! - Claims: roles from `roles` and `role` (string or list); scopes from `scp` and `scope`
//!   (space-separated string or list); tenant access is `All` for `platform_admin` or a `*`
//!   in `tenant_ids`, else the UUIDs found in `tenant_ids`, `tenant_id` and `tid` (other
//!   values are ignored, not fatal).

use crate::config::{
    algorithm_name, is_hmac, JwtConfig, ALLOWED_ALGORITHMS, MIN_SHARED_SECRET_BYTES,
};
use agentplane_core::authz::{Principal, Role, TenantAccess};
use agentplane_core::TenantId;
use axum::http::{header::AUTHORIZATION, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Longest accepted token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// A remote JWKS is refetched (on an unknown `kid`) at most this often.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// Time limit of one JWKS fetch.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted JWKS document.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a bearer token was refused. The messages are safe to show to the caller.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed bearer token")]
    Malformed,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no expiry (exp)")]
    MissingExpiry,
    #[error("token algorithm is not accepted")]
    WrongAlgorithm,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token is signed by an unknown key")]
    UnknownKey,
    #[error("token has no subject (sub)")]
    NoSubject,
}

impl AuthError {
    /// A stable machine-readable code, for problem+json answers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "auth.missing_token",
            Self::Malformed => "auth.malformed_token",
            Self::BadSignature => "auth.bad_signature",
            Self::Expired => "auth.token_expired",
            Self::NotYetValid => "auth.token_not_yet_valid",
            Self::MissingExpiry => "auth.missing_expiry",
            Self::WrongAlgorithm => "auth.wrong_algorithm",
            Self::WrongIssuer => "auth.wrong_issuer",
            Self::WrongAudience => "auth.wrong_audience",
            Self::UnknownKey => "auth.unknown_key",
            Self::NoSubject => "auth.missing_subject",
        }
    }
}

/// Why a [`JwtVerifier`] could not be built. Raised at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("JWT algorithm {0} is not supported")]
    UnsupportedAlgorithm(&'static str),
    #[error(
        "no JWT shared secret: set JWT_SHARED_SECRET (or JWT_SHARED_SECRET_FILE) to at least \
         {MIN_SHARED_SECRET_BYTES} random bytes"
    )]
    MissingSecret,
    #[error("the JWT shared secret is {len} bytes long; at least {MIN_SHARED_SECRET_BYTES} are required")]
    WeakSecret { len: usize },
    #[error("JWT algorithm {0} needs a JWKS: set AGENTPLANE_JWKS_FILE or AGENTPLANE_JWKS_URL")]
    MissingJwks(&'static str),
    #[error("both AGENTPLANE_JWKS_FILE and AGENTPLANE_JWKS_URL are set; set exactly one")]
    AmbiguousJwks,
    #[error("cannot read the JWKS file {}: {source}", path.display())]
    ReadJwks {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fetch the JWKS from {url}: {source}")]
    FetchJwks { url: String, source: reqwest::Error },
    #[error("invalid JWKS from {origin}: {reason}")]
    InvalidJwks { origin: String, reason: String },
    #[error("the JWKS from {origin} holds no key usable with {algorithm}")]
    NoUsableKey {
        origin: String,
        algorithm: &'static str,
    },
}

/// Verifies admin bearer tokens. Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    algorithm: Algorithm,
    validation: Validation,
    keys: Keys,
}

enum Keys {
    Shared(DecodingKey),
    Jwks(Jwks),
}

struct Jwks {
    algorithm: Algorithm,
    current: RwLock<Arc<KeySet>>,
    remote: Option<RemoteJwks>,
}

struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    /// When the last refetch (not the initial fetch) started.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
}

/// The keys of a JWKS usable with the configured algorithm.
struct KeySet {
    keys: Vec<(Option<String>, Arc<DecodingKey>)>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.inner.keys {
            Keys::Shared(_) => "shared secret".to_owned(),
            Keys::Jwks(jwks) => {
                let count = jwks.snapshot().keys.len();
                match &jwks.remote {
                    Some(remote) => format!("JWKS from {} ({count} keys)", remote.url),
                    None => format!("JWKS file ({count} keys)"),
                }
            }
        };
        f.debug_struct("JwtVerifier")
            .field("algorithm", &algorithm_name(self.inner.algorithm))
            .field("keys", &keys)
            .finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier. HS* algorithms use `cfg.shared_secret`, else `dev_secret` (see
    /// [`Config::dev_secret`](crate::config::Config::dev_secret)); the others load the JWKS
    /// file, or fetch the JWKS URL once (10 s time limit).
    pub async fn from_config(
        cfg: &JwtConfig,
        dev_secret: Option<SecretString>,
    ) -> Result<Self, AuthSetupError> {
        let algorithm = cfg.algorithm;
        let name = algorithm_name(algorithm);
        if !ALLOWED_ALGORITHMS.contains(&algorithm) {
            return Err(AuthSetupError::UnsupportedAlgorithm(name));
        }
        let keys = if is_hmac(algorithm) {
            let secret = cfg
                .shared_secret
                .clone()
                .or(dev_secret)
                .ok_or(AuthSetupError::MissingSecret)?;
            let bytes = secret.expose_secret().as_bytes();
            if bytes.len() < MIN_SHARED_SECRET_BYTES {
                return Err(AuthSetupError::WeakSecret { len: bytes.len() });
            }
            Keys::Shared(DecodingKey::from_secret(bytes))
        } else {
            match (&cfg.jwks_file, &cfg.jwks_url) {
                (Some(_), Some(_)) => return Err(AuthSetupError::AmbiguousJwks),
                (None, None) => return Err(AuthSetupError::MissingJwks(name)),
                (Some(path), None) => {
                    // Read once at start-up, so a blocking read is fine.
                    let bytes = std::fs::read(path).map_err(|source| AuthSetupError::ReadJwks {
                        path: path.clone(),
                        source,
                    })?;
                    let set = KeySet::parse(&bytes, algorithm, &path.display().to_string())?;
                    Keys::Jwks(Jwks {
                        algorithm,
                        current: RwLock::new(Arc::new(set)),
                        remote: None,
                    })
                }
                (None, Some(url)) => {
                    let client = reqwest::Client::builder()
                        .timeout(JWKS_FETCH_TIMEOUT)
                        .build()
                        .map_err(|source| AuthSetupError::FetchJwks {
                            url: url.clone(),
                            source,
                        })?;
                    let set = fetch_jwks(&client, url, algorithm).await?;
                    Keys::Jwks(Jwks {
                        algorithm,
                        current: RwLock::new(Arc::new(set)),
                        remote: Some(RemoteJwks {
                            url: url.clone(),
                            client,
                            last_refetch: tokio::sync::Mutex::new(None),
                        }),
                    })
                }
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                algorithm,
                validation: validation(cfg),
                keys,
            }),
        })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// Verifies `token` (the bearer token, without the `Bearer ` prefix) and maps its claims
    /// to a [`Principal`].
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = peek_header(token)?;
        // The algorithm is pinned: compare before any key is chosen or used.
        match header.get("alg") {
            Some(Value::String(alg)) if alg == algorithm_name(self.inner.algorithm) => {}
            Some(Value::String(_)) => return Err(AuthError::WrongAlgorithm),
            _ => return Err(AuthError::Malformed),
        }
        // RFC 7515 4.1.11: extensions we do not understand must not be ignored.
        if header.contains_key("crit") {
            return Err(AuthError::Malformed);
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };
        let claims = match &self.inner.keys {
            Keys::Shared(key) => self.decode(token, key)?,
            Keys::Jwks(jwks) => {
                let key = match jwks.snapshot().select(kid) {
                    Some(key) => key,
                    None if kid.is_some() => {
                        jwks.refetch_if_due().await;
                        jwks.snapshot().select(kid).ok_or(AuthError::UnknownKey)?
                    }
                    None => return Err(AuthError::UnknownKey),
                };
                self.decode(token, &key)?
            }
        };
        principal_from_claims(&claims)
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<Map<String, Value>, AuthError> {
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|e| map_jwt_error(&e))
    }
}

fn validation(cfg: &JwtConfig) -> Validation {
    let mut v = Validation::new(cfg.algorithm);
    v.leeway = cfg.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    // jsonwebtoken checks `iss`/`aud` only when present: require them when configured.
    let mut required = vec!["exp"];
    if let Some(issuer) = &cfg.issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &cfg.audience {
        Some(audience) => {
            v.set_audience(&[audience]);
            v.validate_aud = true;
            required.push("aud");
        }
        // Without a configured audience, a token's `aud` is not ours to judge.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::NoSubject,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::MissingExpiry,
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            "sub" => AuthError::NoSubject,
            _ => AuthError::Malformed,
        },
        _ => AuthError::Malformed,
    }
}

/// Decodes the JOSE header without trusting anything in it.
fn peek_header(token: &str) -> Result<Map<String, Value>, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

/// The string values of a claim that may be a string or a list of strings (other values
/// are skipped).
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn principal_from_claims(claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let subject = match claims.get("sub") {
        // The subject is recorded in audit events: printable and bounded.
        Some(Value::String(sub))
            if !sub.trim().is_empty() && sub.len() <= 255 && !sub.chars().any(char::is_control) =>
        {
            sub.clone()
        }
        _ => return Err(AuthError::NoSubject),
    };
    // jsonwebtoken skips an `nbf` it cannot read; a non-numeric `nbf` is not ours to ignore.
    if claims.get("nbf").is_some_and(|nbf| !nbf.is_number()) {
        return Err(AuthError::Malformed);
    }

    let mut roles = BTreeSet::new();
    let mut unknown_roles: Vec<String> = Vec::new();
    for name in strings(claims.get("roles"))
        .into_iter()
        .chain(strings(claims.get("role")))
    {
        match Role::parse(name) {
            Some(role) => {
                roles.insert(role);
            }
            None => {
                if !unknown_roles.iter().any(|u| u == name) {
                    unknown_roles.push(name.to_owned());
                }
            }
        }
    }

    let mut scopes: Vec<String> = Vec::new();
    for claim in ["scp", "scope"] {
        for scope in strings(claims.get(claim))
            .into_iter()
            .flat_map(str::split_whitespace)
        {
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
    }

    let tenant_ids = strings(claims.get("tenant_ids"));
    let tenant_access =
        if roles.contains(&Role::PlatformAdmin) || tenant_ids.iter().any(|t| t.trim() == "*") {
            TenantAccess::All
        } else {
            let ids = tenant_ids
                .into_iter()
                .chain(strings(claims.get("tenant_id")))
                .chain(strings(claims.get("tid")))
                .filter_map(|id| id.trim().parse::<TenantId>().ok())
                .collect();
            TenantAccess::Only(ids)
        };

    Ok(Principal {
        subject,
        roles,
        unknown_roles,
        scopes,
        tenant_access,
        issuer: claims.get("iss").and_then(Value::as_str).map(str::to_owned),
        extra_permissions: BTreeSet::new(),
        custom_roles: Vec::new(),
        session: None,
        agent: None,
        ceiling: None,
    })
}

impl Jwks {
    fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Refetches a remote JWKS unless a refetch started less than
    /// [`JWKS_REFETCH_INTERVAL`] ago. Failures keep the current keys.
    async fn refetch_if_due(&self) {
        let Some(remote) = &self.remote else { return };
        let mut last = remote.last_refetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match fetch_jwks(&remote.client, &remote.url, self.algorithm).await {
            Ok(set) => {
                tracing::info!(url = %remote.url, keys = set.keys.len(), "refetched the JWKS");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refetch failed; keeping the current keys"),
        }
    }
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys usable with `algorithm`; keys of other
    /// types, curves, algorithms or uses (and keys this library cannot read) are skipped.
    fn parse(bytes: &[u8], algorithm: Algorithm, origin: &str) -> Result<Self, AuthSetupError> {
        let invalid = |reason: String| AuthSetupError::InvalidJwks {
            origin: origin.to_owned(),
            reason,
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(invalid(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let Some(items) = doc.get("keys").and_then(Value::as_array) else {
            return Err(invalid("no \"keys\" array".to_owned()));
        };
        let mut keys: Vec<(Option<String>, Arc<DecodingKey>)> = Vec::new();
        for item in items {
            let jwk: Jwk = match serde_json::from_value(item.clone()) {
                Ok(jwk) => jwk,
                Err(e) => {
                    tracing::debug!(%origin, error = %e, "skipping an unreadable JWK");
                    continue;
                }
            };
            if !usable_with(&jwk, algorithm) {
                continue;
            }
            let kid = jwk.common.key_id.clone();
            if kid.is_some() && keys.iter().any(|(k, _)| *k == kid) {
                tracing::warn!(%origin, kid = kid.as_deref(), "skipping a JWK with a duplicate kid");
                continue;
            }
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => keys.push((kid, Arc::new(key))),
                Err(e) => tracing::warn!(%origin, error = %e, "skipping an invalid JWK"),
            }
        }
        if keys.is_empty() {
            return Err(AuthSetupError::NoUsableKey {
                origin: origin.to_owned(),
                algorithm: algorithm_name(algorithm),
            });
        }
        Ok(Self { keys })
    }

    /// The key for `kid`; without a `kid`, the only key.
    fn select(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid))
                .map(|(_, key)| key.clone()),
            None => match self.keys.as_slice() {
                [(_, key)] => Some(key.clone()),
                _ => None,
            },
        }
    }
}

fn usable_with(jwk: &Jwk, algorithm: Algorithm) -> bool {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return false;
    }
    if jwk
        .common
        .key_algorithm
        .is_some_and(|alg| alg.to_string() != algorithm_name(algorithm))
    {
        return false;
    }
    match (&jwk.algorithm, algorithm) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        _ => false,
    }
}

async fn fetch_jwks(
    client: &reqwest::Client,
    url: &str,
    algorithm: Algorithm,
) -> Result<KeySet, AuthSetupError> {
    let fetch_error = |source| AuthSetupError::FetchJwks {
        url: url.to_owned(),
        source,
    };
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(fetch_error)?
        .error_for_status()
        .map_err(fetch_error)?;
    let body = response.bytes().await.map_err(fetch_error)?;
    KeySet::parse(&body, algorithm, url)
}

/// The bearer token of a request's `Authorization` header: [`AuthError::Missing`] without
/// the header; [`AuthError::Malformed`] when it is repeated, not `Bearer` (any case), empty,
/// or longer than [`MAX_TOKEN_BYTES`].
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value
        .trim_start()
        .split_once(' ')
        .ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.contains(char::is_whitespace) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Signs `claims` (used verbatim) as an HS256 JWT. For tests and the CLI.
pub fn mint_hs256(secret: &[u8], claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ring::signature::{EcdsaKeyPair, EcdsaSigningAlgorithm, ECDSA_P256_SHA256_FIXED_SIGNING};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    const SECRET: &str = "hs256-test-secret-that-is-long-enough";

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `{"sub": "user-1", "exp": now + 10 min}` with `extra` merged in (null removes a claim).
    fn claims(extra: Value) -> Value {
        let mut base = json!({"sub": "user-1", "exp": now() + 600});
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    base.insert(k, v);
                }
            }
        }
        base
    }

    fn hs_config() -> JwtConfig {
        JwtConfig {
            shared_secret: Some(SECRET.into()),
            ..JwtConfig::default()
        }
    }

    async fn hs_verifier() -> JwtVerifier {
        JwtVerifier::from_config(&hs_config(), None).await.unwrap()
    }

    fn mint(claims: &Value) -> String {
        mint_hs256(SECRET.as_bytes(), claims).unwrap()
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let header = Header {
            kid: kid.map(str::to_owned),
            ..Header::new(alg)
        };
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    // --- test keys, generated at run time -------------------------------------------------

    struct RsaKey {
        private_pem: String,
        public_pem: String,
        n: String,
        e: String,
    }

    impl RsaKey {
        fn encoding(&self) -> EncodingKey {
            EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap()
        }
        fn jwk(&self, kid: &str) -> Value {
            json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": self.n, "e": self.e})
        }
    }

    /// One 2048-bit key for the whole test binary (generation is slow in debug builds).
    fn rsa_key() -> &'static RsaKey {
        static KEY: OnceLock<RsaKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
            let public = private.to_public_key();
            RsaKey {
                private_pem: private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
                public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
                n: b64(&public.n().to_bytes_be()),
                e: b64(&public.e().to_bytes_be()),
            }
        })
    }

    struct EcKey {
        pkcs8: Vec<u8>,
        x: String,
        y: String,
    }

    impl EcKey {
        fn new(alg: &'static EcdsaSigningAlgorithm) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
            // Uncompressed point: 0x04 || x || y.
            let point = ring::signature::KeyPair::public_key(&pair).as_ref();
            let half = (point.len() - 1) / 2;
            Self {
                pkcs8: doc.as_ref().to_vec(),
                x: b64(&point[1..=half]),
                y: b64(&point[1 + half..]),
            }
        }
        fn p256() -> Self {
            Self::new(&ECDSA_P256_SHA256_FIXED_SIGNING)
        }
        fn encoding(&self) -> EncodingKey {
            EncodingKey::from_ec_der(&self.pkcs8)
        }
        fn jwk(&self, kid: Option<&str>) -> Value {
            let mut jwk =
                json!({"kty": "EC", "crv": "P-256", "use": "sig", "x": self.x, "y": self.y});
            if let Some(kid) = kid {
                jwk["kid"] = json!(kid);
            }
            jwk
        }
    }

    fn jwks_file(dir: &tempfile::TempDir, keys: &[Value]) -> PathBuf {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        path
    }

    async fn jwks_verifier(algorithm: Algorithm, keys: &[Value]) -> JwtVerifier {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JwtConfig {
            algorithm,
            jwks_file: Some(jwks_file(&dir, keys)),
            ..JwtConfig::default()
        };
        JwtVerifier::from_config(&cfg, None).await.unwrap()
    }

    // --- HS256 ----------------------------------------------------------------------------

    #[tokio::test]
    async fn hs256_maps_every_claim_form() {
        let verifier = hs_verifier().await;
        let (a, b, c) = (TenantId::new(), TenantId::new(), TenantId::new());

        // Lists: roles, scp, tenant_ids (with a non-UUID that is ignored), plus tenant_id and tid.
        let p = verifier
            .verify(&mint(&claims(json!({
                "iss": "https://idp.example",
                "roles": ["tenant_admin", "auditor", "flight_controller", "tenant_admin"],
                "scp": ["admin.read", "admin.write"],
                "tenant_ids": [a.to_string(), "not-a-uuid", 42],
                "tenant_id": b.to_string(),
                "tid": c.to_string(),
            }))))
            .await
            .unwrap();
        assert_eq!(p.subject, "user-1");
        assert_eq!(p.roles, [Role::TenantAdmin, Role::Auditor].into());
        assert_eq!(p.unknown_roles, vec!["flight_controller".to_owned()]);
        assert_eq!(
            p.scopes,
            vec!["admin.read".to_owned(), "admin.write".to_owned()]
        );
        assert_eq!(p.tenant_access, TenantAccess::Only([a, b, c].into()));
        assert_eq!(p.issuer.as_deref(), Some("https://idp.example"));

        // Single strings: role, scope (space-separated), tenant_id alone.
        let p = verifier
            .verify(&mint(&claims(json!({
                "role": "member",
                "scope": "tenants.read  usage.read",
                "tenant_id": a.to_string(),
            }))))
            .await
            .unwrap();
        assert_eq!(p.roles, [Role::Member].into());
        assert!(p.unknown_roles.is_empty());
        assert_eq!(
            p.scopes,
            vec!["tenants.read".to_owned(), "usage.read".to_owned()]
        );
        assert_eq!(p.tenant_access, TenantAccess::Only([a].into()));
        assert_eq!(p.issuer, None);

        // `roles` as a string and `role` as a list are accepted too, and combined.
        let p = verifier
            .verify(&mint(&claims(
                json!({"roles": "auditor", "role": ["member"], "tid": c.to_string()}),
            )))
            .await
            .unwrap();
        assert_eq!(p.roles, [Role::Auditor, Role::Member].into());
        assert_eq!(p.tenant_access, TenantAccess::Only([c].into()));

        // `*` in tenant_ids reaches every tenant.
        let p = verifier
            .verify(&mint(&claims(
                json!({"roles": ["tenant_admin"], "tenant_ids": [a.to_string(), "*"]}),
            )))
            .await
            .unwrap();
        assert_eq!(p.tenant_access, TenantAccess::All);

        // platform_admin reaches every tenant.
        let p = verifier
            .verify(&mint(&claims(json!({"roles": ["platform_admin"]}))))
            .await
            .unwrap();
        assert_eq!(p.tenant_access, TenantAccess::All);
        assert!(p.is_platform_admin());

        // No tenant claims: no tenant; `*` outside tenant_ids grants nothing.
        let p = verifier
            .verify(&mint(&claims(
                json!({"roles": ["tenant_admin"], "tenant_id": "*", "tid": "garbage"}),
            )))
            .await
            .unwrap();
        assert_eq!(p.tenant_access, TenantAccess::Only(BTreeSet::new()));
        assert!(p.scopes.is_empty() && p.roles.len() == 1);
    }

    #[tokio::test]
    async fn time_claims_are_enforced_with_leeway() {
        let verifier = hs_verifier().await;
        let expired = mint(&claims(json!({"exp": now() - 3600})));
        assert_eq!(
            verifier.verify(&expired).await.unwrap_err(),
            AuthError::Expired
        );
        // Within the 30 s leeway.
        verifier
            .verify(&mint(&claims(json!({"exp": now() - 5}))))
            .await
            .unwrap();

        let early = mint(&claims(json!({"nbf": now() + 3600})));
        assert_eq!(
            verifier.verify(&early).await.unwrap_err(),
            AuthError::NotYetValid
        );
        verifier
            .verify(&mint(&claims(json!({"nbf": now() + 5}))))
            .await
            .unwrap();
        verifier
            .verify(&mint(&claims(json!({"nbf": now() - 60}))))
            .await
            .unwrap();
        let unreadable_nbf = mint(&claims(json!({"nbf": "tomorrow"})));
        assert_eq!(
            verifier.verify(&unreadable_nbf).await.unwrap_err(),
            AuthError::Malformed
        );

        let no_exp = mint(&claims(json!({"exp": null})));
        assert_eq!(
            verifier.verify(&no_exp).await.unwrap_err(),
            AuthError::MissingExpiry
        );
        let string_exp = mint(&claims(json!({"exp": (now() + 600).to_string()})));
        assert_eq!(
            verifier.verify(&string_exp).await.unwrap_err(),
            AuthError::MissingExpiry
        );

        // Zero leeway is honoured.
        let strict = JwtVerifier::from_config(
            &JwtConfig {
                leeway_secs: 0,
                ..hs_config()
            },
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            strict
                .verify(&mint(&claims(json!({"exp": now() - 5}))))
                .await
                .unwrap_err(),
            AuthError::Expired
        );
    }

    #[tokio::test]
    async fn subject_is_required() {
        let verifier = hs_verifier().await;
        for sub in [json!(null), json!(""), json!("  "), json!(17)] {
            let token = mint(&claims(json!({ "sub": sub })));
            assert_eq!(
                verifier.verify(&token).await.unwrap_err(),
                AuthError::NoSubject,
                "{sub}"
            );
        }
    }

    #[tokio::test]
    async fn wrong_secret_and_tampering_fail_the_signature() {
        let verifier = hs_verifier().await;
        let other =
            mint_hs256(b"another-secret-another-secret-another", &claims(json!({}))).unwrap();
        assert_eq!(
            verifier.verify(&other).await.unwrap_err(),
            AuthError::BadSignature
        );

        // Swap in a payload granting platform_admin, keep the signature.
        let token = mint(&claims(json!({"roles": ["member"]})));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(claims(json!({"roles": ["platform_admin"]}))
            .to_string()
            .as_bytes());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            verifier.verify(&tampered).await.unwrap_err(),
            AuthError::BadSignature
        );
        verifier.verify(&token).await.unwrap();
    }

    #[tokio::test]
    async fn alg_none_and_other_algorithms_are_refused() {
        let verifier = hs_verifier().await;
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(claims(json!({"roles": ["platform_admin"]}))
            .to_string()
            .as_bytes());
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(
            verifier.verify(&unsigned).await.unwrap_err(),
            AuthError::WrongAlgorithm
        );
        for alg in ["None", "NONE", "hs256"] {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            let token = format!("{header}.{payload}.");
            assert_eq!(
                verifier.verify(&token).await.unwrap_err(),
                AuthError::WrongAlgorithm,
                "{alg}"
            );
        }
        // A correctly signed token with another HMAC algorithm is still refused.
        let hs512 = sign(
            Algorithm::HS512,
            None,
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert_eq!(
            verifier.verify(&hs512).await.unwrap_err(),
            AuthError::WrongAlgorithm
        );
    }

    #[tokio::test]
    async fn malformed_tokens() {
        let verifier = hs_verifier().await;
        assert_eq!(verifier.verify("").await.unwrap_err(), AuthError::Missing);
        for token in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            "e30.e30.",
            "bnVsbA.e30.",
        ] {
            assert_eq!(
                verifier.verify(token).await.unwrap_err(),
                AuthError::Malformed,
                "{token}"
            );
        }
        // A header without alg, with a critical extension, with a non-string kid.
        let payload = b64(claims(json!({})).to_string().as_bytes());
        for header in [json!({"typ": "JWT"}), json!({"alg": 5})] {
            let token = format!("{}.{payload}.sig", b64(header.to_string().as_bytes()));
            assert_eq!(
                verifier.verify(&token).await.unwrap_err(),
                AuthError::Malformed,
                "{header}"
            );
        }
        let valid = mint(&claims(json!({})));
        let signature = valid.rsplit('.').next().unwrap();
        for header in [
            json!({"alg": "HS256", "crit": ["exp"]}),
            json!({"alg": "HS256", "kid": 1}),
        ] {
            let token = format!(
                "{}.{payload}.{signature}",
                b64(header.to_string().as_bytes())
            );
            assert_eq!(
                verifier.verify(&token).await.unwrap_err(),
                AuthError::Malformed,
                "{header}"
            );
        }
        // A payload that is not a JSON object.
        let token = mint_hs256(SECRET.as_bytes(), &json!(["sub"])).unwrap();
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthError::Malformed
        );
        // Oversized.
        let big = mint(&claims(json!({"pad": "x".repeat(MAX_TOKEN_BYTES)})));
        assert_eq!(
            verifier.verify(&big).await.unwrap_err(),
            AuthError::Malformed
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_when_configured() {
        let cfg = JwtConfig {
            issuer: Some("https://idp.example".into()),
            audience: Some("agentplane".into()),
            ..hs_config()
        };
        let verifier = JwtVerifier::from_config(&cfg, None).await.unwrap();
        let good = json!({"iss": "https://idp.example", "aud": "agentplane"});
        verifier.verify(&mint(&claims(good.clone()))).await.unwrap();
        let p = verifier
            .verify(&mint(&claims(
                json!({"iss": "https://idp.example", "aud": ["other", "agentplane"]}),
            )))
            .await
            .unwrap();
        assert_eq!(p.issuer.as_deref(), Some("https://idp.example"));

        for (extra, expected) in [
            (
                json!({"iss": "https://evil.example"}),
                AuthError::WrongIssuer,
            ),
            (json!({"iss": null}), AuthError::WrongIssuer),
            (json!({"iss": 7}), AuthError::WrongIssuer),
            (json!({"aud": "other"}), AuthError::WrongAudience),
            (
                json!({"aud": ["other", "another"]}),
                AuthError::WrongAudience,
            ),
            (json!({"aud": null}), AuthError::WrongAudience),
        ] {
            let mut c = claims(good.clone());
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            assert_eq!(
                verifier.verify(&mint(&c)).await.unwrap_err(),
                expected,
                "{extra}"
            );
        }

        // Unconfigured: any iss/aud passes.
        hs_verifier()
            .await
            .verify(&mint(&claims(json!({"iss": "x", "aud": "y"}))))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn setup_refuses_missing_or_weak_secrets_and_uses_the_dev_secret() {
        let cfg = JwtConfig::default();
        assert!(matches!(
            JwtVerifier::from_config(&cfg, None).await,
            Err(AuthSetupError::MissingSecret)
        ));
        let weak = JwtConfig {
            shared_secret: Some("short".into()),
            ..JwtConfig::default()
        };
        assert!(matches!(
            JwtVerifier::from_config(&weak, None).await,
            Err(AuthSetupError::WeakSecret { len: 5 })
        ));
        let unsupported = JwtConfig {
            algorithm: Algorithm::EdDSA,
            ..hs_config()
        };
        assert!(matches!(
            JwtVerifier::from_config(&unsupported, None).await,
            Err(AuthSetupError::UnsupportedAlgorithm("EdDSA"))
        ));

        let verifier = JwtVerifier::from_config(&cfg, Some(SECRET.into()))
            .await
            .unwrap();
        verifier.verify(&mint(&claims(json!({})))).await.unwrap();
        // A configured secret wins over the dev secret.
        let verifier = JwtVerifier::from_config(
            &hs_config(),
            Some("dev-secret-dev-secret-dev-secret-1".into()),
        )
        .await
        .unwrap();
        verifier.verify(&mint(&claims(json!({})))).await.unwrap();
        assert!(!format!("{verifier:?}").contains(SECRET));
    }

    // --- public keys ----------------------------------------------------------------------

    #[tokio::test]
    async fn rs256_with_a_jwks_file() {
        let key = rsa_key();
        let verifier = jwks_verifier(Algorithm::RS256, &[key.jwk("rsa-1")]).await;
        let token = sign(
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(json!({"roles": ["auditor"]})),
            &key.encoding(),
        );
        let p = verifier.verify(&token).await.unwrap();
        assert_eq!(p.roles, [Role::Auditor].into());
        // Without kid, the only key is used.
        verifier
            .verify(&sign(
                Algorithm::RS256,
                None,
                &claims(json!({})),
                &key.encoding(),
            ))
            .await
            .unwrap();
        // A forged payload under a real signature.
        let (head, rest) = token.split_once('.').unwrap();
        let signature = rest.rsplit('.').next().unwrap();
        let payload = b64(claims(json!({"roles": ["platform_admin"]}))
            .to_string()
            .as_bytes());
        let forged = format!("{head}.{payload}.{signature}");
        assert_eq!(
            verifier.verify(&forged).await.unwrap_err(),
            AuthError::BadSignature
        );
        // Expiry applies to public-key tokens too.
        let expired = sign(
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(json!({"exp": now() - 3600})),
            &key.encoding(),
        );
        assert_eq!(
            verifier.verify(&expired).await.unwrap_err(),
            AuthError::Expired
        );
    }

    #[tokio::test]
    async fn algorithm_confusion_is_refused() {
        let key = rsa_key();
        let verifier = jwks_verifier(Algorithm::RS256, &[key.jwk("rsa-1")]).await;
        let c = claims(json!({"roles": ["platform_admin"]}));
        // The classic attack: HS256 keyed with the server's own public key.
        for secret in [
            key.public_pem.as_bytes(),
            key.public_pem.trim_end().as_bytes(),
        ] {
            let hmac = EncodingKey::from_secret(secret);
            for kid in [None, Some("rsa-1")] {
                let token = sign(Algorithm::HS256, kid, &c, &hmac);
                assert_eq!(
                    verifier.verify(&token).await.unwrap_err(),
                    AuthError::WrongAlgorithm
                );
            }
        }
        // Another public-key algorithm with the same key is refused as well.
        let ps256 = sign(Algorithm::PS256, Some("rsa-1"), &c, &key.encoding());
        assert_eq!(
            verifier.verify(&ps256).await.unwrap_err(),
            AuthError::WrongAlgorithm
        );
        // The same claims, properly signed, pass: the refusals above are about the algorithm.
        verifier
            .verify(&sign(Algorithm::RS256, Some("rsa-1"), &c, &key.encoding()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn es256_with_a_jwks_file_and_kid_selection() {
        let (a, b) = (EcKey::p256(), EcKey::p256());
        let verifier = jwks_verifier(Algorithm::ES256, &[a.jwk(Some("a")), b.jwk(Some("b"))]).await;
        let c = claims(json!({"role": "tenant_admin"}));
        verifier
            .verify(&sign(Algorithm::ES256, Some("a"), &c, &a.encoding()))
            .await
            .unwrap();
        let p = verifier
            .verify(&sign(Algorithm::ES256, Some("b"), &c, &b.encoding()))
            .await
            .unwrap();
        assert_eq!(p.roles, [Role::TenantAdmin].into());
        // The kid picks the key: signed by b, labelled a.
        let mislabelled = sign(Algorithm::ES256, Some("a"), &c, &b.encoding());
        assert_eq!(
            verifier.verify(&mislabelled).await.unwrap_err(),
            AuthError::BadSignature
        );
        // Unknown kid, and no kid with two candidate keys.
        let unknown = sign(Algorithm::ES256, Some("c"), &c, &a.encoding());
        assert_eq!(
            verifier.verify(&unknown).await.unwrap_err(),
            AuthError::UnknownKey
        );
        let no_kid = sign(Algorithm::ES256, None, &c, &a.encoding());
        assert_eq!(
            verifier.verify(&no_kid).await.unwrap_err(),
            AuthError::UnknownKey
        );

        // Keys of the wrong type, curve, algorithm or use are not candidates, so a set with
        // one usable key serves tokens without kid.
        let rsa = rsa_key();
        let mut enc = b.jwk(None);
        enc["use"] = json!("enc");
        let mut wrong_alg = b.jwk(None);
        wrong_alg["alg"] = json!("ES384");
        let junk = json!({"kty": "EC", "crv": "P-256", "x": "not base64!"});
        let unknown_alg =
            json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "x": "AA", "y": "AA"});
        let verifier = jwks_verifier(
            Algorithm::ES256,
            &[rsa.jwk("r"), enc, wrong_alg, junk, unknown_alg, a.jwk(None)],
        )
        .await;
        verifier.verify(&no_kid).await.unwrap();
        let by_b = sign(Algorithm::ES256, None, &c, &b.encoding());
        assert_eq!(
            verifier.verify(&by_b).await.unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[tokio::test]
    async fn jwks_setup_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |path: PathBuf| JwtConfig {
            algorithm: Algorithm::RS256,
            jwks_file: Some(path),
            ..JwtConfig::default()
        };
        let err = JwtVerifier::from_config(&cfg(dir.path().join("missing.json")), None)
            .await
            .unwrap_err();
        assert!(matches!(err, AuthSetupError::ReadJwks { .. }), "{err}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"nokeys\": []}").unwrap();
        let err = JwtVerifier::from_config(&cfg(bad), None).await.unwrap_err();
        assert!(matches!(err, AuthSetupError::InvalidJwks { .. }), "{err}");
        // Only EC keys for an RSA algorithm.
        let ec_only = jwks_file(&dir, &[EcKey::p256().jwk(Some("a"))]);
        let err = JwtVerifier::from_config(&cfg(ec_only), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AuthSetupError::NoUsableKey {
                    algorithm: "RS256",
                    ..
                }
            ),
            "{err}"
        );
        let none = JwtConfig {
            algorithm: Algorithm::RS256,
            ..JwtConfig::default()
        };
        assert!(matches!(
            JwtVerifier::from_config(&none, None).await,
            Err(AuthSetupError::MissingJwks("RS256"))
        ));
        let both = JwtConfig {
            jwks_url: Some("http://127.0.0.1:9/".into()),
            ..cfg(dir.path().join("x"))
        };
        assert!(matches!(
            JwtVerifier::from_config(&both, None).await,
            Err(AuthSetupError::AmbiguousJwks)
        ));
    }

    // --- remote JWKS ----------------------------------------------------------------------

    struct JwksServer {
        url: String,
        body: Arc<std::sync::Mutex<String>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve_jwks(keys: &[Value]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(std::sync::Mutex::new(json!({ "keys": keys }).to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (body, hits) = (body.clone(), hits.clone());
            move || {
                let (body, hits) = (body.clone(), hits.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let text = body.lock().unwrap().clone();
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        text,
                    )
                }
            }
        };
        let app = axum::Router::new().route("/jwks.json", axum::routing::get(handler));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url,
            body,
            hits,
            task,
        }
    }

    #[tokio::test]
    async fn jwks_url_is_fetched_and_refetched_at_most_once_a_minute() {
        let (a, b, c) = (EcKey::p256(), EcKey::p256(), EcKey::p256());
        let server = serve_jwks(&[a.jwk(Some("a"))]).await;
        let cfg = JwtConfig {
            algorithm: Algorithm::ES256,
            jwks_url: Some(server.url.clone()),
            ..JwtConfig::default()
        };
        let verifier = JwtVerifier::from_config(&cfg, None).await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        let claims = claims(json!({"roles": ["member"]}));

        verifier
            .verify(&sign(Algorithm::ES256, Some("a"), &claims, &a.encoding()))
            .await
            .unwrap();
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "a known kid needs no fetch"
        );

        // The issuer rotates in key b: the first token with kid b triggers one refetch.
        *server.body.lock().unwrap() =
            json!({"keys": [a.jwk(Some("a")), b.jwk(Some("b"))]}).to_string();
        let by_b = sign(Algorithm::ES256, Some("b"), &claims, &b.encoding());
        verifier.verify(&by_b).await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        verifier.verify(&by_b).await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);

        // Key c appears too, but a refetch happened less than a minute ago: no new fetch.
        *server.body.lock().unwrap() =
            json!({"keys": [a.jwk(Some("a")), c.jwk(Some("c"))]}).to_string();
        let by_c = sign(Algorithm::ES256, Some("c"), &claims, &c.encoding());
        assert_eq!(
            verifier.verify(&by_c).await.unwrap_err(),
            AuthError::UnknownKey
        );
        let random_kids = (0..5).map(|i| {
            sign(
                Algorithm::ES256,
                Some(&format!("x{i}")),
                &claims,
                &c.encoding(),
            )
        });
        for token in random_kids {
            assert_eq!(
                verifier.verify(&token).await.unwrap_err(),
                AuthError::UnknownKey
            );
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        // Clones share the key set and the limiter.
        assert_eq!(
            verifier.clone().verify(&by_c).await.unwrap_err(),
            AuthError::UnknownKey
        );
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn jwks_url_that_fails_at_start_is_an_error() {
        let server = serve_jwks(&[]).await;
        let cfg = JwtConfig {
            algorithm: Algorithm::ES256,
            jwks_url: Some(server.url.clone()),
            ..JwtConfig::default()
        };
        let err = JwtVerifier::from_config(&cfg, None).await.unwrap_err();
        assert!(matches!(err, AuthSetupError::NoUsableKey { .. }), "{err}");
        let cfg = JwtConfig {
            jwks_url: Some(server.url.replace("jwks.json", "missing")),
            ..cfg
        };
        let err = JwtVerifier::from_config(&cfg, None).await.unwrap_err();
        assert!(matches!(err, AuthSetupError::FetchJwks { .. }), "{err}");
    }

    // --- the Authorization header ---------------------------------------------------------

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_token_extraction() {
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            Ok("abc.def.ghi")
        );
        assert_eq!(bearer_token(&headers(&["bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["BEARER   abc  "])), Ok("abc"));
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Bearerabc",
            "abc",
            "Bearer a b",
            "Token abc",
        ] {
            assert_eq!(
                bearer_token(&headers(&[bad])),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token(&headers(&[&long])), Err(AuthError::Malformed));
        let max = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            bearer_token(&headers(&[&max])).map(str::len),
            Ok(MAX_TOKEN_BYTES)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Malformed)
        );
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(bearer_token(&non_ascii), Err(AuthError::Malformed));
    }

    #[test]
    fn mint_hs256_uses_claims_verbatim() {
        let token = mint_hs256(b"k", &json!({"a": 1})).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload, json!({"a": 1}));
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
    }

    #[test]
    fn error_codes_are_distinct() {
        let all = [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::MissingExpiry,
            AuthError::WrongAlgorithm,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::UnknownKey,
            AuthError::NoSubject,
        ];
        let codes: BTreeSet<&str> = all.iter().map(AuthError::code).collect();
        assert_eq!(codes.len(), all.len());
    }
}
