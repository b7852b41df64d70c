//! HashiCorp Vault / OpenBao Transit secrets engine as the KMS.

use crate::kms::check_provider;
use crate::{CryptoError, DataKey, Kms, WrappedKey};
use agentplane_core::TenantId;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use zeroize::Zeroizing;

/// Time limit of every call to the KMS.
pub const KMS_TIMEOUT: Duration = Duration::from_secs(10);

/// Vault / OpenBao Transit over its HTTP API (`X-Vault-Token` header).
///
/// Uses a *derived* transit key (`derived=true`) with `context = base64(tenant id)` (the
/// hyphenated UUID text), so each tenant's data keys are wrapped under a per-tenant derived
/// KEK: a wrapped key only unwraps with its own tenant's context. `rewrap` runs inside the
/// KMS, so master-key rotation never exposes data keys to Agentplane. Every call has a 10 s
/// time limit. Errors name the operation, the HTTP status and Vault's `errors`, never the token.
pub struct TransitKms {
    client: reqwest::Client,
    addr: String,
    mount: String,
    key: String,
    token: SecretString,
}

#[derive(Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    context: &'a str,
}

#[derive(Serialize)]
struct CiphertextRequest<'a> {
    ciphertext: &'a str,
    context: &'a str,
}

#[derive(Deserialize)]
struct CiphertextResponse {
    ciphertext: String,
    #[serde(default)]
    key_version: Option<u32>,
}

#[derive(Deserialize)]
struct PlaintextResponse {
    plaintext: String,
}

#[derive(Deserialize)]
struct KeyInfo {
    latest_version: u32,
    #[serde(default)]
    derived: bool,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

impl TransitKms {
    /// `addr` is the server (`http://127.0.0.1:8200`), `mount` the transit engine's mount
    /// path (`transit`), `key` the transit key's name. Nothing is contacted yet.
    pub fn new(
        addr: &str,
        token: SecretString,
        mount: &str,
        key: &str,
    ) -> Result<Self, CryptoError> {
        let addr = addr.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(addr).map_err(|e| {
            CryptoError::Config(format!("transit address {addr:?} is not a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(CryptoError::Config(format!(
                "transit address {addr:?} must be http:// or https:// with a host"
            )));
        }
        let mount = mount.trim().trim_matches('/');
        let mount_ok = !mount.is_empty()
            && mount.split('/').all(|seg| {
                !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(path_byte)
            });
        if !mount_ok {
            return Err(CryptoError::Config(format!(
                "transit mount {mount:?} must be a path of letters, digits, '-', '_' and '.'"
            )));
        }
        let key_ok = !key.is_empty() && key != "." && key != ".." && key.bytes().all(path_byte);
        if !key_ok {
            return Err(CryptoError::Config(format!(
                "transit key name {key:?} must be letters, digits, '-', '_' and '.'"
            )));
        }
        let token_ok = !token.expose_secret().is_empty()
            && HeaderValue::from_str(token.expose_secret()).is_ok();
        if !token_ok {
            return Err(CryptoError::Config(
                "transit token is empty or has characters not allowed in an HTTP header".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(KMS_TIMEOUT)
            .connect_timeout(KMS_TIMEOUT)
            .build()
            .map_err(|e| CryptoError::Config(format!("transit HTTP client: {e}")))?;
        Ok(Self {
            client,
            addr: addr.to_owned(),
            mount: mount.to_owned(),
            key: key.to_owned(),
            token,
        })
    }

    /// Creates the derived key if missing (`POST keys/{key} {"derived": true}`); idempotent.
    /// An existing key that is not derived is a configuration error (it cannot separate tenants).
    pub async fn ensure_key(&self) -> Result<(), CryptoError> {
        let path = format!("keys/{}", self.key);
        let (status, body) = self.send("read key", Method::GET, &path, None).await?;
        let info: KeyInfo = if status == StatusCode::NOT_FOUND && is_plain_not_found(&body) {
            let create = br#"{"derived":true}"#.to_vec();
            let (status, body) = self
                .send("create key", Method::POST, &path, Some(create))
                .await?;
            if !status.is_success() {
                return Err(self.failure("create key", status, &body));
            }
            self.key_info().await?
        } else if status.is_success() {
            parse_data("read key", &body)?
        } else {
            return Err(self.failure("read key", status, &body));
        };
        if !info.derived {
            return Err(CryptoError::Config(format!(
                "transit key {:?} exists but is not derived (derived=false): it cannot give each \
                 tenant its own KEK; configure another key name and let Agentplane create it",
                self.key
            )));
        }
        Ok(())
    }

    async fn key_info(&self) -> Result<KeyInfo, CryptoError> {
        self.call("read key", Method::GET, &format!("keys/{}", self.key), None)
            .await
    }

    /// One request; transport failures become clear errors, the status and body are returned.
    ///
    /// A request that fails before any answer (typically a pooled keep-alive connection the
    /// server closed) is tried once more on a fresh connection, except `rotate`, which is not
    /// idempotent. Timeouts are never retried: the 10 s limit holds per attempt.
    async fn send(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), CryptoError> {
        let url = format!("{}/v1/{}/{}", self.addr, self.mount, path);
        let retriable = op != "rotate";
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut token = HeaderValue::from_str(self.token.expose_secret())
                .map_err(|_| CryptoError::Config("transit token is not a valid header".into()))?;
            token.set_sensitive(true);
            let mut request = self
                .client
                .request(method.clone(), &url)
                .header("X-Vault-Token", token);
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            match request.send().await {
                Ok(response) => break response,
                Err(e) if retriable && attempt == 1 && !e.is_timeout() => continue,
                Err(e) => return Err(self.transport(op, &e)),
            }
        };
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(op, &e))?;
        // Reuses the buffer when possible, so the copy that is zeroized is the only one.
        Ok((status, Zeroizing::new(Vec::from(bytes))))
    }

    /// A request whose success answer carries `data: T`.
    async fn call<T: DeserializeOwned>(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CryptoError> {
        let (status, bytes) = self.send(op, method, path, body).await?;
        if !status.is_success() {
            return Err(self.failure(op, status, &bytes));
        }
        parse_data(op, &bytes)
    }

    fn transport(&self, op: &str, e: &reqwest::Error) -> CryptoError {
        let what = if e.is_timeout() {
            format!("no answer within {} s", KMS_TIMEOUT.as_secs())
        } else if e.is_connect() {
            format!("cannot connect ({})", root_cause(e))
        } else {
            format!("request failed ({})", root_cause(e))
        };
        CryptoError::Kms(format!(
            "transit {op} at {}: {what}; is OpenBao/Vault running and reachable there?",
            self.addr
        ))
    }

    fn failure(&self, op: &str, status: StatusCode, body: &[u8]) -> CryptoError {
        let errors = serde_json::from_slice::<ErrorBody>(body)
            .map(|b| b.errors)
            .unwrap_or_default();
        let said = if errors.is_empty() {
            String::new()
        } else {
            format!(" [server: {}]", errors.join("; "))
        };
        // A ciphertext of another tenant (other context) or a tampered one.
        if status == StatusCode::BAD_REQUEST
            && errors
                .iter()
                .any(|e| e.contains("message authentication failed"))
        {
            return CryptoError::Decrypt;
        }
        let hint = match status.as_u16() {
            401 | 403 => "permission denied: check the token and that its policy allows this path"
                .to_owned(),
            404 => format!(
                "not found: check that a transit engine is mounted at {:?} and that key {:?} exists (ensure_key)",
                self.mount, self.key
            ),
            400 => "request rejected".to_owned(),
            429 => "rate limited: retry later".to_owned(),
            503 => "server unavailable (sealed or in standby?)".to_owned(),
            s if s >= 500 => "server error".to_owned(),
            _ => "unexpected answer".to_owned(),
        };
        CryptoError::Kms(format!(
            "transit {op} (key {:?} at {}/v1/{}): {hint} (HTTP {}){said}",
            self.key,
            self.addr,
            self.mount,
            status.as_u16()
        ))
    }

    fn wrapped(&self, op: &str, response: CiphertextResponse) -> Result<WrappedKey, CryptoError> {
        let version = ciphertext_version(&response.ciphertext).ok_or_else(|| {
            CryptoError::Kms(format!(
                "transit {op}: the server answered a ciphertext without a \"vault:vN:\" prefix"
            ))
        })?;
        if response.key_version.is_some_and(|v| v != version) {
            return Err(CryptoError::Kms(format!(
                "transit {op}: the server's key_version disagrees with its ciphertext prefix"
            )));
        }
        Ok(WrappedKey {
            kms: self.name(),
            kek_version: version,
            blob: response.ciphertext,
        })
    }

    fn checked_blob<'a>(&self, wrapped: &'a WrappedKey) -> Result<&'a str, CryptoError> {
        check_provider(&self.name(), wrapped)?;
        match ciphertext_version(&wrapped.blob) {
            Some(v) if v == wrapped.kek_version => Ok(&wrapped.blob),
            _ => Err(CryptoError::Malformed),
        }
    }
}

impl fmt::Debug for TransitKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitKms")
            .field("addr", &self.addr)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("token", &"**redacted**")
            .finish()
    }
}

#[async_trait]
impl Kms for TransitKms {
    fn name(&self) -> String {
        format!("transit:{}", self.key)
    }

    async fn current_version(&self) -> Result<u32, CryptoError> {
        Ok(self.key_info().await?.latest_version)
    }

    async fn wrap(&self, tenant: TenantId, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        let plaintext = Zeroizing::new(B64.encode(key.expose_secret()));
        let context = tenant_context(tenant);
        // The request body (and reqwest's buffers) are not zeroized: the key is on its way
        // to the KMS anyway; what this crate keeps is.
        let body = json_body(&EncryptRequest {
            plaintext: &plaintext,
            context: &context,
        })?;
        let response: CiphertextResponse = self
            .call(
                "encrypt",
                Method::POST,
                &format!("encrypt/{}", self.key),
                Some(body),
            )
            .await?;
        self.wrapped("encrypt", response)
    }

    async fn unwrap(&self, tenant: TenantId, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        let ciphertext = self.checked_blob(wrapped)?;
        let context = tenant_context(tenant);
        let body = json_body(&CiphertextRequest {
            ciphertext,
            context: &context,
        })?;
        let response: PlaintextResponse = self
            .call(
                "decrypt",
                Method::POST,
                &format!("decrypt/{}", self.key),
                Some(body),
            )
            .await?;
        let encoded = Zeroizing::new(response.plaintext);
        let bytes = Zeroizing::new(
            B64.decode(encoded.as_bytes())
                .map_err(|_| CryptoError::Malformed)?,
        );
        DataKey::from_slice(&bytes)
    }

    /// Vault's `rewrap`: the data key never leaves the KMS.
    async fn rewrap(
        &self,
        tenant: TenantId,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, CryptoError> {
        let ciphertext = self.checked_blob(wrapped)?;
        let context = tenant_context(tenant);
        let body = json_body(&CiphertextRequest {
            ciphertext,
            context: &context,
        })?;
        let response: CiphertextResponse = self
            .call(
                "rewrap",
                Method::POST,
                &format!("rewrap/{}", self.key),
                Some(body),
            )
            .await?;
        self.wrapped("rewrap", response)
    }

    async fn rotate(&self) -> Result<u32, CryptoError> {
        let path = format!("keys/{}/rotate", self.key);
        let (status, body) = self.send("rotate", Method::POST, &path, None).await?;
        if !status.is_success() {
            return Err(self.failure("rotate", status, &body));
        }
        // Newer servers answer with the key's info; older ones with 204.
        match serde_json::from_slice::<Envelope<KeyInfo>>(&body) {
            Ok(Envelope { data: Some(info) }) => Ok(info.latest_version),
            _ => self.current_version().await,
        }
    }
}

fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// The derivation context of a tenant: base64 of its hyphenated UUID text.
fn tenant_context(tenant: TenantId) -> String {
    B64.encode(tenant.to_string())
}

/// The N of a `vault:vN:...` ciphertext.
fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (version, body) = rest.split_once(':')?;
    if body.is_empty() {
        return None;
    }
    version.parse().ok().filter(|v| *v > 0)
}

fn json_body<T: Serialize>(value: &T) -> Result<Vec<u8>, CryptoError> {
    serde_json::to_vec(value)
        .map_err(|e| CryptoError::Kms(format!("transit: encoding request: {e}")))
}

fn parse_data<T: DeserializeOwned>(op: &str, body: &[u8]) -> Result<T, CryptoError> {
    match serde_json::from_slice::<Envelope<T>>(body) {
        Ok(Envelope { data: Some(data) }) => Ok(data),
        _ => Err(CryptoError::Kms(format!(
            "transit {op}: the server's answer is not the expected JSON (is the address a Vault/OpenBao server?)"
        ))),
    }
}

/// A 404 for a missing key answers `{"errors":[]}`; a missing mount names the route.
fn is_plain_not_found(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|b| b.errors.is_empty())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version("vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version("vault:v12:abc"), Some(12));
        for bad in [
            "",
            "vault:v0:abc",
            "vault:v1:",
            "vault:vx:abc",
            "v1:abc",
            "vault:1:abc",
        ] {
            assert_eq!(ciphertext_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn config_is_validated_and_debug_hides_the_token() {
        let token = || SecretString::from("s.topsecret-token".to_owned());
        let kms =
            TransitKms::new("http://127.0.0.1:8200/", token(), "/transit/", "agentplane").unwrap();
        assert_eq!(kms.name(), "transit:agentplane");
        let debug = format!("{kms:?}");
        assert!(!debug.contains("topsecret"), "{debug}");
        assert!(debug.contains("**redacted**"));
        for (addr, mount, key) in [
            ("127.0.0.1:8200", "transit", "k"),
            ("ftp://x", "transit", "k"),
            ("http://x", "", "k"),
            ("http://x", "a/../b", "k"),
            ("http://x", "transit", "a/b"),
            ("http://x", "transit", ""),
            ("http://x", "transit", "k?x"),
        ] {
            let err = TransitKms::new(addr, token(), mount, key).unwrap_err();
            assert!(
                matches!(err, CryptoError::Config(_)),
                "{addr} {mount} {key}: {err}"
            );
        }
        let err = TransitKms::new("http://x", SecretString::from("a\nb".to_owned()), "t", "k")
            .unwrap_err();
        assert!(!err.to_string().contains("a\nb"));
    }

    #[test]
    fn tenant_context_is_base64_of_the_id_text() {
        let t = TenantId::new();
        assert_eq!(
            B64.decode(tenant_context(t)).unwrap(),
            t.to_string().as_bytes()
        );
    }
}
