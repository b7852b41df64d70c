//! The keys that sign Agentplane's access tokens: Ed25519 (EdDSA), generated with `ring`,
//! the private half sealed with its own data key that the KMS wraps (like a tenant's), the
//! public half published at the JWKS endpoint. New tokens use the newest key; a retired key
//! still verifies until every token it signed has expired, then leaves the JWKS. Several
//! processes share the keys through the store: an unknown `kid` reloads them (at most once a
//! second).

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::PlatformCtx;
use agentplane_core::identity::AccessClaims;
use agentplane_core::time::Timestamp;
use agentplane_core::TenantId;
use agentplane_crypto::{open, seal, Aad, DataKey, WrappedKey};
use agentplane_store::identity::SigningKeyRecord;
use agentplane_store::{Conflict, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The KMS binds a wrapped key to a tenant id; the platform's own keys use the nil id, which
/// no tenant has (tenant ids are v7 UUIDs).
pub(crate) fn platform_scope() -> TenantId {
    TenantId::from(uuid::Uuid::nil())
}

const KIND: &str = "signing_key";

struct Loaded {
    kid: String,
    generation: i64,
    created_at: Timestamp,
    retired_at: Option<Timestamp>,
    public_x: String,
    decoding: DecodingKey,
}

struct Current {
    kid: String,
    created_at: Timestamp,
    encoding: EncodingKey,
}

#[derive(Default)]
pub(crate) struct Signer {
    keys: RwLock<Arc<Vec<Loaded>>>,
    current: RwLock<Option<Arc<Current>>>,
    last_reload: Mutex<Option<Instant>>,
}

fn lock_poisoned() -> ControlError {
    ControlError::Internal("signing key lock poisoned".into())
}

/// The RFC 7638 thumbprint of an Ed25519 public key: the key id.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

impl ControlPlane {
    fn signer(&self) -> &Signer {
        &self.identity.signer
    }

    /// Loads the keys and makes sure a current one exists that is younger than the rotation
    /// interval (creating one when not). Called at start and before signing.
    pub async fn ensure_signing_key(&self) -> Result<()> {
        let now = Timestamp::now();
        let fresh = |c: &Current| {
            now.millis() - c.created_at.millis()
                < i64::try_from(
                    self.identity
                        .cfg
                        .signing_key_rotate_secs
                        .saturating_mul(1000),
                )
                .unwrap_or(i64::MAX)
        };
        if let Some(c) = self.current_key()? {
            if fresh(&c) {
                return Ok(());
            }
        }
        self.reload_signing_keys().await?;
        if let Some(c) = self.current_key()? {
            if fresh(&c) {
                return Ok(());
            }
        }
        let platform = PlatformCtx::for_system("identity/signing-keys");
        match self.create_signing_key(&platform, false).await {
            // Another process rotated first: use its key.
            Err(ControlError::Store(StoreError::Conflict(Conflict::Version))) => {}
            r => {
                r?;
            }
        }
        self.reload_signing_keys().await
    }

    /// Rotates the signing key now (`admin.rotate_signing_key`).
    pub async fn rotate_signing_key(&self, platform: &PlatformCtx) -> Result<Value> {
        let kid = loop {
            match self.create_signing_key(platform, true).await {
                Err(ControlError::Store(StoreError::Conflict(Conflict::Version))) => {
                    self.reload_signing_keys().await?;
                }
                r => break r?,
            }
        };
        self.reload_signing_keys().await?;
        Ok(json!({"kid": kid, "jwks": self.jwks()?}))
    }

    /// Generates, seals and stores a new key, retiring the others; `audited`: an operator
    /// asked for it (an automatic rotation is not an audit event).
    async fn create_signing_key(&self, platform: &PlatformCtx, audited: bool) -> Result<String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| ControlError::Internal("Ed25519 key generation failed".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| ControlError::Internal("generated Ed25519 key unreadable".into()))?;
        let public_x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let kid = thumbprint(&public_x);
        let data_key = DataKey::generate();
        let wrapped = self.keys.kms().wrap(platform_scope(), &data_key).await?;
        let sealed = seal(
            &data_key,
            1,
            &Aad::new(platform_scope(), KIND, &kid),
            pkcs8.as_ref(),
        );
        let generation = self
            .signer()
            .keys
            .read()
            .map_err(|_| lock_poisoned())?
            .iter()
            .map(|k| k.generation)
            .max()
            .unwrap_or(0)
            + 1;
        let record = SigningKeyRecord {
            kid: kid.clone(),
            generation,
            public_x,
            wrapped_key: serde_json::to_string(&wrapped)
                .map_err(|e| ControlError::Internal(e.to_string()))?,
            sealed_private: sealed,
            created_at: Timestamp::now(),
            retired_at: None,
        };
        let audit = audited.then(|| {
            NewAuditEvent::new(
                Chain::Platform,
                "signing_key.rotated",
                platform.actor(),
                record.created_at,
            )
            .target("signing_key", &kid)
            .data(json!({"generation": generation}))
        });
        self.store
            .insert_signing_key(platform, &record, audit)
            .await?;
        Ok(kid)
    }

    /// Re-reads the keys from the store and unseals the newest one.
    pub(crate) async fn reload_signing_keys(&self) -> Result<()> {
        let records = self.store.signing_keys().await?;
        let mut loaded = Vec::with_capacity(records.len());
        for r in &records {
            let decoding = DecodingKey::from_ed_components(&r.public_x)
                .map_err(|e| ControlError::Internal(format!("signing key {}: {e}", r.kid)))?;
            loaded.push(Loaded {
                kid: r.kid.clone(),
                generation: r.generation,
                created_at: r.created_at,
                retired_at: r.retired_at,
                public_x: r.public_x.clone(),
                decoding,
            });
        }
        let newest = records
            .iter()
            .filter(|r| r.retired_at.is_none())
            .max_by_key(|r| r.generation);
        let have = self.current_key()?.map(|c| c.kid.clone());
        let current = match newest {
            Some(r) if have.as_deref() == Some(r.kid.as_str()) => self.current_key()?,
            Some(r) => Some(Arc::new(self.unseal(r).await?)),
            None => None,
        };
        *self.signer().keys.write().map_err(|_| lock_poisoned())? = Arc::new(loaded);
        *self.signer().current.write().map_err(|_| lock_poisoned())? = current;
        *self
            .signer()
            .last_reload
            .lock()
            .map_err(|_| lock_poisoned())? = Some(Instant::now());
        Ok(())
    }

    async fn unseal(&self, r: &SigningKeyRecord) -> Result<Current> {
        let wrapped: WrappedKey = serde_json::from_str(&r.wrapped_key)
            .map_err(|e| ControlError::Internal(format!("signing key {}: {e}", r.kid)))?;
        let data_key = self.keys.kms().unwrap(platform_scope(), &wrapped).await?;
        let pkcs8 = open(
            &data_key,
            &Aad::new(platform_scope(), KIND, &r.kid),
            &r.sealed_private,
        )?;
        Ok(Current {
            kid: r.kid.clone(),
            created_at: r.created_at,
            encoding: EncodingKey::from_ed_der(&pkcs8),
        })
    }

    fn current_key(&self) -> Result<Option<Arc<Current>>> {
        Ok(self
            .signer()
            .current
            .read()
            .map_err(|_| lock_poisoned())?
            .clone())
    }

    /// How long after retirement a key still verifies: every token it signed has expired.
    fn verify_window_ms(&self) -> i64 {
        let secs = self.identity.cfg.access_ttl_secs + self.identity.cfg.leeway_secs;
        i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    fn usable(&self, k: &Loaded, now: Timestamp) -> bool {
        k.retired_at
            .is_none_or(|r| now.millis() - r.millis() <= self.verify_window_ms())
    }

    /// The public keys that verify live tokens, as a JWKS (RFC 7517).
    pub fn jwks(&self) -> Result<Value> {
        let now = Timestamp::now();
        let keys = self
            .signer()
            .keys
            .read()
            .map_err(|_| lock_poisoned())?
            .clone();
        let mut list: Vec<&Loaded> = keys.iter().filter(|k| self.usable(k, now)).collect();
        list.sort_by_key(|k| std::cmp::Reverse(k.generation));
        Ok(json!({"keys": list.iter().map(|k| json!({
            "kty": "OKP", "crv": "Ed25519", "x": k.public_x, "kid": k.kid,
            "alg": "EdDSA", "use": "sig",
            "iat": k.created_at.millis() / 1000,
        })).collect::<Vec<_>>()}))
    }

    /// Signs any JSON document as a compact JWS with the current key (erasure receipts).
    pub(crate) fn receipt_signer(
        &self,
    ) -> Result<impl Fn(&Value) -> std::result::Result<String, String> + Sync> {
        let current = self
            .current_key()?
            .ok_or_else(|| ControlError::Internal("no signing key".into()))?;
        Ok(move |doc: &Value| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(current.kid.clone());
            header.typ = Some("agentplane-receipt+jwt".into());
            jsonwebtoken::encode(&header, doc, &current.encoding).map_err(|e| e.to_string())
        })
    }

    pub(crate) async fn sign_access(&self, claims: &AccessClaims) -> Result<String> {
        self.sign_typed("at+jwt", claims).await
    }

    /// Signs `claims` with the current key as a JWT of type `typ` (access tokens, download
    /// links): the audience inside tells a verifier what the token is for.
    pub(crate) async fn sign_typed(
        &self,
        typ: &str,
        claims: &impl serde::Serialize,
    ) -> Result<String> {
        self.ensure_signing_key().await?;
        let current = self
            .current_key()?
            .ok_or_else(|| ControlError::Internal("no signing key".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(current.kid.clone());
        header.typ = Some(typ.into());
        jsonwebtoken::encode(&header, claims, &current.encoding)
            .map_err(|e| ControlError::Internal(format!("signing failed: {e}")))
    }

    /// Verifies an access token's signature, issuer, audience and expiry.
    pub(crate) async fn verify_access_signature(&self, token: &str) -> Result<AccessClaims> {
        self.verify_typed(token, super::AUDIENCE, &["exp", "iss", "aud", "sub"])
            .await
    }

    /// Verifies a JWT this deployment signed: signature, issuer, `audience` and expiry.
    pub(crate) async fn verify_typed<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        required: &[&str],
    ) -> Result<T> {
        use crate::error::AuthFailure::InvalidAccessToken as Bad;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| ControlError::Auth(Bad("malformed")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(ControlError::Auth(Bad("unexpected algorithm")));
        }
        let kid = header.kid.ok_or(ControlError::Auth(Bad("no key id")))?;
        let mut key = self.decoding_key(&kid)?;
        if key.is_none() && self.may_reload()? {
            self.reload_signing_keys().await?;
            key = self.decoding_key(&kid)?;
        }
        let key = key.ok_or(ControlError::Auth(Bad("unknown or retired key")))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.identity.cfg.issuer]);
        v.set_audience(&[audience]);
        v.leeway = self.identity.cfg.leeway_secs;
        v.set_required_spec_claims(required);
        let data = jsonwebtoken::decode::<T>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            ControlError::Auth(Bad(match e.kind() {
                K::ExpiredSignature => "expired",
                K::InvalidSignature => "bad signature",
                K::InvalidIssuer | K::InvalidAudience => "not issued for this deployment",
                _ => "malformed",
            }))
        })?;
        Ok(data.claims)
    }

    fn decoding_key(&self, kid: &str) -> Result<Option<DecodingKey>> {
        let now = Timestamp::now();
        let keys = self
            .signer()
            .keys
            .read()
            .map_err(|_| lock_poisoned())?
            .clone();
        Ok(keys
            .iter()
            .find(|k| k.kid == kid && self.usable(k, now))
            .map(|k| k.decoding.clone()))
    }

    fn may_reload(&self) -> Result<bool> {
        let last = *self
            .signer()
            .last_reload
            .lock()
            .map_err(|_| lock_poisoned())?;
        Ok(last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)))
    }

    /// Master-key rotation: re-wraps the signing keys' data keys with the newest KEK.
    pub(crate) async fn rewrap_signing_keys(
        &self,
        platform: &PlatformCtx,
        kek_version: u32,
    ) -> Result<usize> {
        let mut n = 0;
        for r in self.store.signing_keys().await? {
            let wrapped: WrappedKey = serde_json::from_str(&r.wrapped_key)
                .map_err(|e| ControlError::Internal(format!("signing key {}: {e}", r.kid)))?;
            if wrapped.kek_version < kek_version {
                let new = self.keys.kms().rewrap(platform_scope(), &wrapped).await?;
                let text = serde_json::to_string(&new)
                    .map_err(|e| ControlError::Internal(e.to_string()))?;
                self.store
                    .rewrap_signing_key(platform, &r.kid, &text)
                    .await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_id_is_the_rfc7638_thumbprint() {
        // RFC 8037, appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
