//! Provider credentials: a tenant's LLM endpoints. The API key is write-only: it is sealed
//! with the tenant's data key on arrival and only a fingerprint is ever shown. Base URLs that
//! point into private networks are refused unless the deployment allows them (SSRF).

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent, Outcome};
use agentplane_core::authz::TenantCtx;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::provider::{
    fingerprint, validate_api_key, validate_models, validate_provider_name, Provider, ProviderAuth,
    ProviderKind,
};
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, ProviderId};
use agentplane_store::{Conflict, ProviderRecord, StoreError};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The secret `auth` takes: the key or client secret, or nothing (`""`) for a managed identity.
pub(crate) fn secret_for<'a>(
    auth: &ProviderAuth,
    given: Option<&'a str>,
) -> Result<&'a str, DomainError> {
    match (auth.needs_secret(), given) {
        (true, Some(k)) => validate_api_key(k).map(|()| k),
        (true, None) => Err(DomainError::invalid(
            "api_key",
            "is required for this authentication",
        )),
        (false, None) => Ok(""),
        (false, Some(_)) => Err(DomainError::invalid(
            "api_key",
            "a managed identity takes no secret",
        )),
    }
}

pub(crate) fn fingerprint_of(secret: &str) -> String {
    if secret.is_empty() {
        "none".to_owned()
    } else {
        fingerprint(secret.as_bytes())
    }
}

/// The associated-data kind of a sealed provider secret.
pub(crate) const SECRET_KIND: &str = "provider_secret";
pub(crate) use agentplane_core::provider::AZURE_DEFAULT_API_VERSION;

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1`, `http://10.0.0.5:8000/v1` (vLLM), or an Azure resource endpoint.
    pub base_url: String,
    /// How calls are authenticated (default: an API key).
    #[serde(default)]
    pub auth: ProviderAuth,
    /// The secret: the API key, or the Entra ID client secret for `client_credentials`; none
    /// for `managed_identity`. Write-only: sealed at once, never returned.
    #[schema(write_only, min_length = 1, max_length = 4096)]
    pub api_key: Option<String>,
    /// Azure only: the `api-version`.
    pub api_version: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    pub name: Option<String>,
    pub base_url: Option<String>,
    /// A new authentication method (with `api_key` when it needs a secret).
    pub auth: Option<ProviderAuth>,
    /// A new secret (rotation); write-only.
    #[schema(write_only)]
    pub api_key: Option<String>,
    pub api_version: Option<String>,
    pub models: Option<Vec<String>>,
    /// Refuse (409) if the provider changed since this version.
    pub expected_version: Option<i64>,
}

/// The result of "test connection".
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ProbeResult {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub detail: String,
    /// Models the endpoint lists, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<usize>,
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

impl ControlPlane {
    /// The deployment's managed identity is the platform's credential, not the tenant's: a
    /// provider may send its token only to the hosts the operator lists.
    pub fn check_identity_host(&self, auth: &ProviderAuth, base_url: &str) -> Result<()> {
        if !matches!(auth, ProviderAuth::ManagedIdentity { .. }) {
            return Ok(());
        }
        let host = Url::parse(base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        if self
            .cfg
            .managed_identity_hosts
            .iter()
            .any(|p| p.matches(&host))
        {
            Ok(())
        } else {
            Err(DomainError::invalid(
                "auth",
                format!(
                    "the deployment's managed identity may not be used for {host}: the operator \
                     lists the hosts it may reach in AGENTPLANE_MANAGED_IDENTITY_HOSTS"
                ),
            )
            .into())
        }
    }

    async fn check_base_url(&self, raw: &str) -> Result<String> {
        self.check_outbound_url("base_url", raw).await
    }

    /// Checks the shape of a URL the platform will call, and (unless the deployment allows
    /// private endpoints) that every address it resolves to is public (SSRF).
    pub(crate) async fn check_outbound_url(
        &self,
        field: &'static str,
        raw: &str,
    ) -> Result<String> {
        let bad = |why: &str| ControlError::Invalid(DomainError::invalid(field, why.to_owned()));
        let url = Url::parse(raw.trim()).map_err(|_| bad("must be an absolute http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(bad("must be an absolute http(s) URL"));
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad(
                "must not carry credentials, a query or a fragment (send the key as api_key)",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("must name a host"))?
            .to_owned();
        if !self.cfg.allow_private_provider_urls {
            let port = url.port_or_known_default().unwrap_or(443);
            let host_for_lookup = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let addrs: Vec<IpAddr> = tokio::net::lookup_host((host_for_lookup.as_str(), port))
                .await
                .map_err(|_| bad("does not resolve"))?
                .map(|a| a.ip())
                .collect();
            if addrs.is_empty() || addrs.into_iter().any(is_private) {
                return Err(bad("resolves to a private, loopback or link-local address, which this deployment does not allow"));
            }
        }
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }

    pub async fn create_provider(&self, ctx: &TenantCtx, req: CreateProvider) -> Result<Provider> {
        let name = validate_provider_name(&req.name)?;
        req.auth.validate(req.kind)?;
        let secret = secret_for(&req.auth, req.api_key.as_deref())?;
        validate_models(&req.models)?;
        let base_url = self.check_base_url(&req.base_url).await?;
        self.check_identity_host(&req.auth, &base_url)?;
        let id = ProviderId::new();
        let (sealed, key_version) = self
            .seal_secret(ctx, SECRET_KIND, &id.to_string(), secret.as_bytes())
            .await?;
        let now = Timestamp::now();
        let provider = Provider {
            id,
            tenant_id: ctx.tenant_id(),
            name,
            kind: req.kind,
            base_url,
            auth: req.auth,
            api_version: match req.kind {
                ProviderKind::AzureOpenai => Some(
                    req.api_version
                        .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_owned()),
                ),
                ProviderKind::Openai => None,
            },
            models: req.models,
            fingerprint: fingerprint_of(secret),
            key_version,
            created_at: now,
            updated_at: now,
            version: 1,
            shared_id: None,
        };
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "provider.create", ctx.actor(), now)
            .target("provider", id)
            .data(json!({"name": provider.name, "kind": provider.kind, "base_url": provider.base_url, "fingerprint": provider.fingerprint}));
        let rec = ProviderRecord {
            provider: provider.clone(),
            sealed_secret: sealed,
        };
        match self.store.insert_provider(ctx, &rec, audit).await {
            Err(StoreError::Conflict(Conflict::Name)) => Err(ControlError::Conflict(
                crate::error::ConflictKind::NameTaken,
            )),
            r => r.map(|()| provider).map_err(Into::into),
        }
    }

    pub async fn list_providers(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<Provider>> {
        let p = self.store.list_providers(ctx, page).await?;
        Ok(Page {
            items: p.items.into_iter().map(|r| r.provider).collect(),
            next_cursor: p.next_cursor,
        })
    }

    async fn provider_record(&self, ctx: &TenantCtx, id: &str) -> Result<ProviderRecord> {
        let id: ProviderId = id.parse().map_err(|_| ControlError::NotFound("provider"))?;
        self.store
            .get_provider(ctx, id)
            .await?
            .ok_or(ControlError::NotFound("provider"))
    }

    pub async fn provider(&self, ctx: &TenantCtx, id: &str) -> Result<Provider> {
        Ok(self.provider_record(ctx, id).await?.provider)
    }

    pub async fn update_provider(
        &self,
        ctx: &TenantCtx,
        id: &str,
        req: UpdateProvider,
    ) -> Result<Provider> {
        let current = self.provider_record(ctx, id).await?;
        if req
            .expected_version
            .is_some_and(|v| v != current.provider.version)
        {
            return Err(ControlError::Conflict(
                crate::error::ConflictKind::ConcurrentUpdate,
            ));
        }
        if current.provider.shared_id.is_some()
            && (req.base_url.is_some()
                || req.auth.is_some()
                || req.api_key.is_some()
                || req.api_version.is_some()
                || req.models.is_some())
        {
            return Err(DomainError::invalid(
                "body",
                "a shared provider's settings belong to the platform: only its name can change here",
            )
            .into());
        }
        let mut next = current.clone();
        let p = &mut next.provider;
        let mut changed = vec![];
        if let Some(n) = &req.name {
            p.name = validate_provider_name(n)?;
            changed.push("name");
        }
        if let Some(u) = &req.base_url {
            p.base_url = self.check_base_url(u).await?;
            changed.push("base_url");
        }
        if let Some(m) = &req.models {
            validate_models(m)?;
            p.models.clone_from(m);
            changed.push("models");
        }
        if let Some(v) = &req.api_version {
            if p.kind != ProviderKind::AzureOpenai {
                return Err(DomainError::invalid(
                    "api_version",
                    "only Azure providers take an api_version",
                )
                .into());
            }
            p.api_version = Some(v.clone());
            changed.push("api_version");
        }
        if let Some(a) = &req.auth {
            a.validate(p.kind)?;
            if a.needs_secret() && req.api_key.is_none() && !p.auth.needs_secret() {
                return Err(
                    DomainError::invalid("api_key", "this authentication needs a secret").into(),
                );
            }
            p.auth = a.clone();
            changed.push("auth");
        }
        let secret = match (&req.api_key, next.provider.auth.needs_secret()) {
            (Some(k), _) => Some(secret_for(&next.provider.auth, Some(k))?),
            // A managed identity has no secret: whatever was stored goes.
            (None, false) if req.auth.is_some() => Some(""),
            (None, _) => None,
        };
        if let Some(s) = secret {
            let (sealed, version) = self.seal_secret(ctx, SECRET_KIND, id, s.as_bytes()).await?;
            next.sealed_secret = sealed;
            next.provider.key_version = version;
            next.provider.fingerprint = fingerprint_of(s);
            changed.push("api_key");
        }
        self.check_identity_host(&next.provider.auth, &next.provider.base_url)?;
        let p = &mut next.provider;
        p.version = current.provider.version + 1;
        p.updated_at = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "provider.update",
            ctx.actor(),
            p.updated_at,
        )
        .target("provider", p.id)
        .data(json!({"changed": changed, "fingerprint": p.fingerprint, "base_url": p.base_url}));
        match self
            .store
            .update_provider(ctx, &next, current.provider.version, audit)
            .await
        {
            Err(StoreError::Conflict(Conflict::Name)) => Err(ControlError::Conflict(
                crate::error::ConflictKind::NameTaken,
            )),
            Err(StoreError::Conflict(Conflict::Version)) => Err(ControlError::Conflict(
                crate::error::ConflictKind::ConcurrentUpdate,
            )),
            r => r.map(|()| next.provider).map_err(Into::into),
        }
    }

    pub async fn delete_provider(&self, ctx: &TenantCtx, id: &str) -> Result<()> {
        let id: ProviderId = id.parse().map_err(|_| ControlError::NotFound("provider"))?;
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "provider.delete",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("provider", id);
        let deleted = match self.store.delete_provider(ctx, id, audit).await {
            Err(StoreError::Conflict(Conflict::Reference)) => {
                return Err(ControlError::Conflict(crate::error::ConflictKind::InUse))
            }
            r => r?,
        };
        if deleted {
            Ok(())
        } else {
            Err(ControlError::NotFound("provider"))
        }
    }

    /// The provider's secret, opened: for the gateway's calls, never for an API response.
    pub async fn provider_secret(
        &self,
        ctx: &TenantCtx,
        id: &str,
    ) -> Result<(Provider, agentplane_crypto::Zeroizing<Vec<u8>>)> {
        let (p, secret, granted_to) = self.provider_target(ctx, id).await?;
        if let Some(plans) = granted_to {
            if !plans.contains(&self.tenant_plan(ctx).await?) {
                return Err(ControlError::NotFound("provider"));
            }
        }
        Ok((p, secret))
    }

    /// The provider a run calls, its secret, and, for a shared provider, the plans that
    /// grant it (the caller checks the key's plan at every run; this checks it too).
    pub async fn provider_target(
        &self,
        ctx: &TenantCtx,
        id: &str,
    ) -> Result<(
        Provider,
        agentplane_crypto::Zeroizing<Vec<u8>>,
        Option<Vec<String>>,
    )> {
        let rec = self.provider_record(ctx, id).await?;
        if let Some(shared) = &rec.provider.shared_id {
            return self.shared_target(rec.provider.clone(), shared).await;
        }
        let secret = self
            .open_secret(ctx, SECRET_KIND, id, &rec.sealed_secret)
            .await?;
        Ok((rec.provider, secret, None))
    }

    /// "Test connection": lists the endpoint's models with the stored secret. Audited.
    pub async fn test_provider(&self, ctx: &TenantCtx, id: &str) -> Result<ProbeResult> {
        let (p, secret) = self.provider_secret(ctx, id).await?;
        // The URL was checked when stored; check again, DNS may have changed since.
        self.check_base_url(&p.base_url).await?;
        if p.auth != ProviderAuth::ApiKey {
            return Ok(ProbeResult {
                ok: false,
                status: None,
                latency_ms: 0,
                detail: "test connection checks API keys; an Entra ID identity is checked by the \
                         provider on the first run"
                    .into(),
                models: None,
            });
        }
        let key = String::from_utf8_lossy(&secret).into_owned();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ControlError::Invalid(DomainError::invalid("base_url", e.to_string())))?;
        let req = match p.kind {
            ProviderKind::Openai => client
                .get(format!("{}/models", p.base_url))
                .bearer_auth(&key),
            ProviderKind::AzureOpenai => client
                .get(format!("{}/openai/models", p.base_url))
                .query(&[(
                    "api-version",
                    p.api_version
                        .as_deref()
                        .unwrap_or(AZURE_DEFAULT_API_VERSION),
                )])
                .header("api-key", &key),
        };
        let started = Instant::now();
        let res = req.send().await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let result = match res {
            Err(e) => ProbeResult {
                ok: false,
                status: None,
                latency_ms,
                detail: if e.is_timeout() {
                    "timed out after 10 s".into()
                } else {
                    format!("cannot connect: {}", e.without_url())
                },
                models: None,
            },
            Ok(r) => {
                let status = r.status();
                let body: Option<serde_json::Value> = r.json().await.ok();
                let models = body
                    .as_ref()
                    .and_then(|b| b["data"].as_array())
                    .map(Vec::len);
                let detail = match status.as_u16() {
                    200..=299 => "connected".to_owned(),
                    401 | 403 => "the provider rejected the credentials".to_owned(),
                    404 => "no models endpoint at this base URL".to_owned(),
                    s => format!("the provider answered HTTP {s}"),
                };
                ProbeResult {
                    ok: status.is_success(),
                    status: Some(status.as_u16()),
                    latency_ms,
                    detail,
                    models,
                }
            }
        };
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "provider.test", ctx.actor(), Timestamp::now())
            .target("provider", p.id)
            .outcome(if result.ok { Outcome::Success } else { Outcome::Failure })
            .data(json!({"status": result.status, "detail": result.detail, "latency_ms": result.latency_ms}));
        self.store.append_audit(audit).await?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::is_private;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                is_private(ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))),
                "{ip}"
            );
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(
                !is_private(ip.parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))),
                "{ip}"
            );
        }
    }
}
