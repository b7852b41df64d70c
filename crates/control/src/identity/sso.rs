//! Per-tenant SSO: each tenant configures its own OIDC provider(s) and LDAP directory(ies).
//!
//! - A connection belongs to one tenant; its secret (OIDC client secret, LDAP bind password)
//!   is sealed with that tenant's key. Changing one tenant's connections touches no other
//!   tenant's rows, caches or sign-ins.
//! - An OIDC sign-in starts at `/v1/auth/{tenant}/sso/{connection}/start`. The server keeps
//!   the state, nonce and PKCE verifier (sealed, single use, 10 minutes); the callback finds
//!   the tenant and connection *from the state only*. A code from another tenant's provider
//!   therefore cannot be redeemed as this tenant's: it fails at this tenant's provider, and
//!   the ID token must name this connection's issuer and client.
//! - LDAP signs in through `/v1/auth/token` with `grant_type: ldap`.
//! - Both end in [`ControlPlane::sso_sign_in`]: just-in-time membership in *this* tenant,
//!   name and roles synced from the IdP on every sign-in (groups mapped to roles), then a
//!   session.

use super::ldap::{self, LdapSettings, LdapTls};
use super::oidc::{OidcClient, OidcSettings, PendingLogin};
use super::saml::{self, SamlSettings};
use super::sessions::TenantHints;
use super::TokenPair;
use crate::error::{AuthFailure, ConflictKind};
use crate::{parse_object, ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent, Outcome};
use agentplane_core::authz::{Role, TenantCtx};
use agentplane_core::identity::{normalize_email, validate_display_name, TENANT_ROLES};
use agentplane_core::tenant::TenantStatus;
use agentplane_core::time::Timestamp;
use agentplane_core::DomainError;
use agentplane_store::identity::{MemberChange, SsoConnection, SsoConnectionRecord, SsoState};
use agentplane_store::{Conflict, Member, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const SECRET_KIND: &str = "sso_secret";
const STATE_KIND: &str = "sso_state";
/// How long a started OIDC sign-in may take.
const STATE_TTL_SECS: u64 = 600;

/// `POST /v1/tenants/{tenant_id}/sso`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSso {
    /// `oidc` or `ldap`.
    #[schema(pattern = "^(oidc|saml|ldap)$")]
    pub kind: String,
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// OIDC: `issuer`, `client_id`, `scopes` (default `["email", "profile"]`), `groups_claim`
    /// (default `groups`). SAML: `idp_entity_id`, `idp_sso_url`, `idp_cert_pem`, `email_attr`,
    /// `name_attr`, `groups_attr` (default: the NameID is the e-mail). LDAP: `url`, `tls` (`starttls` or `ldaps`), `ca_pem`, `bind_dn`,
    /// `user_base`, `user_filter` (default `(uid={username})`), `group_base`, `group_filter`
    /// (default `(member={dn})`), `email_attr`, `name_attr`, `group_name_attr`.
    pub config: Value,
    /// OIDC client secret or LDAP bind password: write-only (SAML needs none).
    #[schema(min_length = 1, max_length = 4096)]
    pub secret: Option<String>,
    /// IdP group -> Agentplane roles (`tenant_admin`, `auditor`, `member` or a custom role).
    /// When set, roles follow the groups at every sign-in; a person in no mapped group is a
    /// `member`.
    #[serde(default)]
    pub role_mapping: BTreeMap<String, Vec<String>>,
    /// Create a membership at first sign-in. Default true.
    pub jit: Option<bool>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSso {
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    pub config: Option<Value>,
    #[schema(min_length = 1, max_length = 4096)]
    pub secret: Option<String>,
    pub role_mapping: Option<BTreeMap<String, Vec<String>>>,
    pub jit: Option<bool>,
    pub enabled: Option<bool>,
}

/// What an IdP said about the person signing in.
pub(crate) struct SsoIdentity {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

fn fingerprint(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..6])
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

fn str_field(config: &Value, key: &'static str, default: Option<&str>) -> Result<String> {
    match config.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 2048 => {
            Ok(s.trim().to_owned())
        }
        None | Some(Value::Null) => default
            .map(str::to_owned)
            .ok_or_else(|| DomainError::invalid("config", format!("{key} is required")).into()),
        _ => {
            Err(DomainError::invalid("config", format!("{key} must be a non-empty string")).into())
        }
    }
}

fn opt_str(config: &Value, key: &'static str) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => str_field(config, key, None).map(Some),
    }
}

fn oidc_settings(config: &Value, secret: String) -> Result<OidcSettings> {
    let scopes = match config.get("scopes") {
        None | Some(Value::Null) => vec!["email".to_owned(), "profile".to_owned()],
        Some(Value::Array(a)) if a.len() <= 20 => a
            .iter()
            .map(|s| {
                s.as_str()
                    .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()))
                    .map(str::to_owned)
                    .ok_or_else(|| DomainError::invalid("config", "scopes must be scope names"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(DomainError::invalid("config", "scopes must be a list").into()),
    };
    Ok(OidcSettings {
        issuer: str_field(config, "issuer", None)?,
        client_id: str_field(config, "client_id", None)?,
        client_secret: secret,
        scopes,
        groups_claim: str_field(config, "groups_claim", Some("groups"))?,
    })
}

fn ldap_settings(config: &Value, secret: String) -> Result<LdapSettings> {
    let tls = match str_field(config, "tls", Some("starttls"))?.as_str() {
        "starttls" => LdapTls::StartTls,
        "ldaps" => LdapTls::Ldaps,
        _ => return Err(DomainError::invalid("config", "tls must be starttls or ldaps").into()),
    };
    let url = str_field(config, "url", None)?;
    let scheme_ok = match tls {
        LdapTls::StartTls => url.starts_with("ldap://"),
        LdapTls::Ldaps => url.starts_with("ldaps://"),
    };
    if !scheme_ok {
        return Err(DomainError::invalid(
            "config",
            "url must be ldap://host:port with starttls, or ldaps://host:port with ldaps",
        )
        .into());
    }
    let user_filter = str_field(config, "user_filter", Some("(uid={username})"))?;
    if !user_filter.contains("{username}") {
        return Err(DomainError::invalid("config", "user_filter must contain {username}").into());
    }
    Ok(LdapSettings {
        url,
        tls,
        ca_pem: opt_str(config, "ca_pem")?,
        bind_dn: str_field(config, "bind_dn", None)?,
        bind_password: secret,
        user_base: str_field(config, "user_base", None)?,
        user_filter,
        group_base: opt_str(config, "group_base")?,
        group_filter: str_field(config, "group_filter", Some("(member={dn})"))?,
        email_attr: str_field(config, "email_attr", Some("mail"))?,
        name_attr: str_field(config, "name_attr", Some("cn"))?,
        group_name_attr: str_field(config, "group_name_attr", Some("cn"))?,
        timeout_secs: 10,
    })
}

impl ControlPlane {
    /// Checks a connection's settings (and, for outbound hosts, the SSRF policy).
    async fn check_sso_config(&self, kind: &str, config: &Value, secret: &str) -> Result<()> {
        if !config.is_object() {
            return Err(DomainError::invalid("config", "must be an object").into());
        }
        match kind {
            "oidc" => {
                let s = oidc_settings(config, secret.to_owned())?;
                self.check_outbound_url("config", &s.issuer).await?;
            }
            "saml" => {
                let s = self.saml_settings(config, "check")?;
                for (field, url) in [("idp_sso_url", &s.idp_sso_url)] {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(DomainError::invalid(
                            "config",
                            format!("{field} must be an http(s) URL"),
                        )
                        .into());
                    }
                }
                if !s.idp_cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(DomainError::invalid(
                        "config",
                        "idp_cert_pem must be a PEM certificate",
                    )
                    .into());
                }
            }
            "ldap" => {
                let s = ldap_settings(config, secret.to_owned())?;
                // The same SSRF rule as provider URLs, on the directory's host.
                let http_like = s
                    .url
                    .replacen("ldaps://", "https://", 1)
                    .replacen("ldap://", "http://", 1);
                self.check_outbound_url("config", &http_like).await?;
            }
            _ => return Err(DomainError::invalid("kind", "must be oidc, saml or ldap").into()),
        }
        Ok(())
    }

    async fn check_role_mapping(
        &self,
        ctx: &TenantCtx,
        mapping: &BTreeMap<String, Vec<String>>,
    ) -> Result<()> {
        if mapping.len() > 200 {
            return Err(DomainError::invalid("role_mapping", "at most 200 groups").into());
        }
        let custom: Vec<String> = self
            .store
            .list_roles(ctx)
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        for (group, roles) in mapping {
            if group.is_empty() || group.len() > 256 {
                return Err(DomainError::invalid(
                    "role_mapping",
                    "group names are 1-256 characters",
                )
                .into());
            }
            for r in roles {
                let builtin = Role::parse(r).is_some_and(|r| TENANT_ROLES.contains(&r));
                if !builtin && !custom.contains(r) {
                    return Err(DomainError::invalid(
                        "role_mapping",
                        format!("{r} is neither a tenant role nor a custom role of this tenant"),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    pub async fn list_sso(&self, ctx: &TenantCtx) -> Result<Vec<SsoConnection>> {
        Ok(self
            .store
            .list_sso(ctx)
            .await?
            .into_iter()
            .map(|r| r.connection)
            .collect())
    }

    async fn sso_record(&self, ctx: &TenantCtx, id: &str) -> Result<SsoConnectionRecord> {
        self.store
            .get_sso(ctx, id)
            .await?
            .ok_or(ControlError::NotFound("sso connection"))
    }

    pub async fn get_sso(&self, ctx: &TenantCtx, id: &str) -> Result<SsoConnection> {
        Ok(self.sso_record(ctx, id).await?.connection)
    }

    pub async fn create_sso(&self, ctx: &TenantCtx, raw: Value) -> Result<SsoConnection> {
        let req: CreateSso = parse_object(raw)?;
        let name = validate_display_name(&req.name)?;
        let secret = match (req.kind.as_str(), req.secret) {
            ("saml", None) => String::new(),
            ("saml", Some(_)) => {
                return Err(
                    DomainError::invalid("secret", "a SAML connection has no secret").into(),
                )
            }
            (_, Some(s)) if !s.is_empty() => s,
            _ => return Err(DomainError::invalid("secret", "is required").into()),
        };
        let req = CreateSso {
            secret: Some(secret.clone()),
            ..req
        };
        self.check_sso_config(&req.kind, &req.config, &secret)
            .await?;
        self.check_role_mapping(ctx, &req.role_mapping).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let (sealed, key_version) = self
            .seal_secret(ctx, SECRET_KIND, &id, secret.as_bytes())
            .await?;
        let now = Timestamp::now();
        let connection = SsoConnection {
            tenant_id: ctx.tenant_id(),
            id: id.clone(),
            kind: req.kind,
            name,
            config: req.config,
            role_mapping: req.role_mapping,
            jit: req.jit.unwrap_or(true),
            enabled: req.enabled.unwrap_or(true),
            secret_fingerprint: if secret.is_empty() {
                String::new()
            } else {
                fingerprint(&secret)
            },
            key_version,
            created_at: now,
            updated_at: now,
        };
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "sso.created", ctx.actor(), now)
            .target("sso_connection", &id)
            .data(json!({"kind": connection.kind, "name": connection.name, "config": connection.config,
                "role_mapping": connection.role_mapping, "fingerprint": connection.secret_fingerprint}));
        let rec = SsoConnectionRecord {
            connection: connection.clone(),
            sealed_secret: sealed,
        };
        match self.store.insert_sso(ctx, &rec, audit).await {
            Err(StoreError::Conflict(Conflict::Name)) => {
                Err(ControlError::Conflict(ConflictKind::NameTaken))
            }
            r => r.map(|()| connection).map_err(Into::into),
        }
    }

    pub async fn update_sso(&self, ctx: &TenantCtx, id: &str, raw: Value) -> Result<SsoConnection> {
        let req: UpdateSso = parse_object(raw)?;
        let mut rec = self.sso_record(ctx, id).await?;
        let c = &mut rec.connection;
        if let Some(n) = &req.name {
            c.name = validate_display_name(n)?;
        }
        if let Some(cfg) = req.config {
            c.config = cfg;
        }
        if let Some(m) = req.role_mapping {
            self.check_role_mapping(ctx, &m).await?;
            c.role_mapping = m;
        }
        if let Some(j) = req.jit {
            c.jit = j;
        }
        if let Some(e) = req.enabled {
            c.enabled = e;
        }
        if rec.connection.kind == "saml" && req.secret.is_some() {
            return Err(DomainError::invalid("secret", "a SAML connection has no secret").into());
        }
        let secret = match &req.secret {
            Some(s) => s.clone(),
            None => String::from_utf8_lossy(
                &self
                    .open_secret(ctx, SECRET_KIND, id, &rec.sealed_secret)
                    .await?,
            )
            .into_owned(),
        };
        let c = &mut rec.connection;
        self.check_sso_config(&c.kind, &c.config, &secret).await?;
        if req.secret.is_some() {
            let (sealed, v) = self
                .seal_secret(ctx, SECRET_KIND, id, secret.as_bytes())
                .await?;
            rec.sealed_secret = sealed;
            rec.connection.key_version = v;
            rec.connection.secret_fingerprint = fingerprint(&secret);
        }
        let c = &mut rec.connection;
        c.updated_at = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "sso.updated",
            ctx.actor(),
            c.updated_at,
        )
        .target("sso_connection", id)
        .data(
            json!({"name": c.name, "config": c.config, "role_mapping": c.role_mapping,
                "jit": c.jit, "enabled": c.enabled, "fingerprint": c.secret_fingerprint,
                "secret_changed": req.secret.is_some()}),
        );
        match self.store.update_sso(ctx, &rec, audit).await {
            Ok(true) => Ok(rec.connection),
            Ok(false) => Err(ControlError::NotFound("sso connection")),
            Err(StoreError::Conflict(Conflict::Name)) => {
                Err(ControlError::Conflict(ConflictKind::NameTaken))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_sso(&self, ctx: &TenantCtx, id: &str) -> Result<()> {
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "sso.deleted",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("sso_connection", id);
        if self.store.delete_sso(ctx, id, audit).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("sso connection"))
        }
    }

    /// Tests a connection: OIDC discovery, or an LDAP bind as the service account.
    pub async fn test_sso(&self, ctx: &TenantCtx, id: &str) -> Result<Value> {
        let rec = self.sso_record(ctx, id).await?;
        let secret = self
            .open_secret(ctx, SECRET_KIND, id, &rec.sealed_secret)
            .await?;
        let secret = String::from_utf8_lossy(&secret).into_owned();
        let started = std::time::Instant::now();
        let outcome = match rec.connection.kind.as_str() {
            "oidc" => OidcClient::discover(
                &oidc_settings(&rec.connection.config, secret)?,
                self.http_for_idp()?,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
            // The SP never calls a SAML IdP: the settings themselves are what can be checked.
            "saml" => self
                .check_sso_config("saml", &rec.connection.config, "")
                .await
                .map_err(|e| e.to_string()),
            _ => ldap::check(&ldap_settings(&rec.connection.config, secret)?)
                .await
                .map_err(|e| e.to_string()),
        };
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "sso.tested",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("sso_connection", id)
        .outcome(if outcome.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        self.store.append_audit(audit).await?;
        Ok(match outcome {
            Ok(()) => json!({"ok": true, "latency_ms": ms}),
            Err(e) => json!({"ok": false, "latency_ms": ms, "error": e}),
        })
    }

    /// Re-seals the tenant's SSO secrets with its newest data key (tenant-key rotation).
    pub(crate) async fn reseal_sso(&self, ctx: &TenantCtx) -> Result<usize> {
        let mut n = 0;
        for mut rec in self.store.list_sso(ctx).await? {
            let id = rec.connection.id.clone();
            let secret = self
                .open_secret(ctx, SECRET_KIND, &id, &rec.sealed_secret)
                .await?;
            let (sealed, v) = self.seal_secret(ctx, SECRET_KIND, &id, &secret).await?;
            if v == rec.connection.key_version {
                continue;
            }
            rec.sealed_secret = sealed;
            rec.connection.key_version = v;
            let audit = NewAuditEvent::new(
                Chain::Tenant(ctx.tenant_id()),
                "sso.resealed",
                ctx.actor(),
                Timestamp::now(),
            )
            .target("sso_connection", &id)
            .data(json!({"key_version": v}));
            self.store.update_sso(ctx, &rec, audit).await?;
            n += 1;
        }
        Ok(n)
    }

    /// The enabled connection `id` of `kind` of the tenant, with its secret.
    async fn live_connection(
        &self,
        ctx: &TenantCtx,
        id: &str,
        kind: &str,
    ) -> Result<(SsoConnection, String)> {
        let bad = || ControlError::Auth(AuthFailure::InvalidCredentials);
        let rec = self.store.get_sso(ctx, id).await?.ok_or_else(bad)?;
        if !kind.split('|').any(|k| k == rec.connection.kind) || !rec.connection.enabled {
            return Err(bad());
        }
        let secret = self
            .open_secret(ctx, SECRET_KIND, id, &rec.sealed_secret)
            .await?;
        Ok((
            rec.connection,
            String::from_utf8_lossy(&secret).into_owned(),
        ))
    }

    fn http_for_idp(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| ControlError::Internal(format!("http client: {e}")))
    }

    fn callback_url(&self) -> String {
        format!("{}/v1/auth/sso/callback", self.identity.cfg.issuer)
    }

    /// Starts an OIDC sign-in: the URL of the tenant's provider to send the browser to.
    pub async fn start_sso(&self, hints: &TenantHints, connection: &str) -> Result<String> {
        let tenant = self.resolve_tenant(hints).await?;
        if tenant.status != TenantStatus::Active {
            return Err(ControlError::Auth(AuthFailure::InvalidCredentials));
        }
        let ctx = TenantCtx::for_sign_in(tenant.id, "sso");
        let (conn, secret) = self.live_connection(&ctx, connection, "oidc|saml").await?;
        if conn.kind == "saml" {
            return self.start_saml(&ctx, &conn).await;
        }
        let client =
            OidcClient::discover(&oidc_settings(&conn.config, secret)?, self.http_for_idp()?)
                .await
                .map_err(|e| ControlError::Idp(e.to_string()))?;
        let (url, pending) = client
            .authorize_url(&self.callback_url())
            .map_err(|e| ControlError::Idp(e.to_string()))?;
        let hash = state_hash(&pending.state);
        let plain =
            serde_json::to_vec(&pending).map_err(|e| ControlError::Internal(e.to_string()))?;
        let (sealed, _) = self.seal_secret(&ctx, STATE_KIND, &hash, &plain).await?;
        let state = SsoState {
            tenant_id: tenant.id,
            connection_id: conn.id,
            pending: sealed,
            expires_at: Timestamp::now().plus_secs(STATE_TTL_SECS),
        };
        self.store.put_sso_state(&ctx, &hash, &state).await?;
        Ok(url)
    }

    /// A SAML connection's settings: the IdP's from the configuration, ours from the public URL.
    fn saml_settings(&self, config: &Value, connection_id: &str) -> Result<SamlSettings> {
        let base = &self.identity.cfg.issuer;
        Ok(SamlSettings {
            idp_entity_id: str_field(config, "idp_entity_id", None)?,
            idp_sso_url: str_field(config, "idp_sso_url", None)?,
            idp_cert_pem: str_field(config, "idp_cert_pem", None)?,
            sp_entity_id: format!("{base}/v1/auth/sso/saml/{connection_id}"),
            acs_url: format!("{base}/v1/auth/sso/saml/acs"),
            email_attr: opt_str(config, "email_attr")?,
            name_attr: opt_str(config, "name_attr")?,
            groups_attr: opt_str(config, "groups_attr")?,
            clock_skew_secs: 120,
        })
    }

    /// SP-initiated SAML: an AuthnRequest to the tenant's IdP; the RelayState finds the
    /// sign-in again at the ACS, and the request id must come back as `InResponseTo`.
    async fn start_saml(&self, ctx: &TenantCtx, conn: &SsoConnection) -> Result<String> {
        let settings = self.saml_settings(&conn.config, &conn.id)?;
        let mut relay = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut relay);
        let relay = hex::encode(relay);
        let (url, request_id) = saml::authn_request_url(&settings, &relay)
            .map_err(|e| ControlError::Idp(e.to_string()))?;
        let hash = state_hash(&relay);
        let plain = serde_json::to_vec(&json!({"request_id": request_id}))
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let (sealed, _) = self.seal_secret(ctx, STATE_KIND, &hash, &plain).await?;
        let state = SsoState {
            tenant_id: ctx.tenant_id(),
            connection_id: conn.id.clone(),
            pending: sealed,
            expires_at: Timestamp::now().plus_secs(STATE_TTL_SECS),
        };
        self.store.put_sso_state(ctx, &hash, &state).await?;
        Ok(url)
    }

    /// The SP metadata of a tenant's SAML connection, for its IdP administrator.
    pub async fn saml_metadata(&self, hints: &TenantHints, connection: &str) -> Result<String> {
        let tenant = self.resolve_tenant(hints).await?;
        let ctx = TenantCtx::for_sign_in(tenant.id, "sso");
        let rec = self
            .store
            .get_sso(&ctx, connection)
            .await?
            .filter(|r| r.connection.kind == "saml")
            .ok_or(ControlError::NotFound("sso connection"))?;
        Ok(saml::sp_metadata(
            &self.saml_settings(&rec.connection.config, connection)?,
        ))
    }

    /// The IdP posted its Response to our ACS: the tenant and connection come from the
    /// RelayState only; the assertion is validated, and consumed once.
    pub async fn finish_saml(&self, relay_state: &str, response: &str) -> Result<TokenPair> {
        let bad = || ControlError::Auth(AuthFailure::InvalidCredentials);
        if relay_state.is_empty() || relay_state.len() > 256 || response.is_empty() {
            return Err(bad());
        }
        let hash = state_hash(relay_state);
        let s = self.store.take_sso_state(&hash).await?.ok_or_else(bad)?;
        if s.expires_at <= Timestamp::now() {
            return Err(bad());
        }
        let ctx = TenantCtx::for_sign_in(s.tenant_id, "sso");
        let plain = self
            .open_secret(&ctx, STATE_KIND, &hash, &s.pending)
            .await?;
        let pending: Value =
            serde_json::from_slice(&plain).map_err(|e| ControlError::Internal(e.to_string()))?;
        let (conn, _) = self.live_connection(&ctx, &s.connection_id, "saml").await?;
        let settings = self.saml_settings(&conn.config, &conn.id)?;
        let now = Timestamp::now().millis() / 1000;
        let who =
            match saml::validate_response(&settings, response, pending["request_id"].as_str(), now)
                .await
            {
                Ok(w) => w,
                Err(saml::SamlError::Unavailable(e)) => return Err(ControlError::Idp(e)),
                Err(e) => {
                    let audit = NewAuditEvent::new(
                        Chain::Tenant(s.tenant_id),
                        "session.sign_in_failed",
                        ctx.actor(),
                        Timestamp::now(),
                    )
                    .target("sso_connection", &conn.id)
                    .outcome(Outcome::Failure)
                    .data(json!({"method": "saml", "error": e.to_string()}));
                    self.store.append_audit(audit).await?;
                    return Err(bad());
                }
            };
        let until = Timestamp::from_millis(who.not_on_or_after.saturating_mul(1000));
        if !self
            .store
            .consume_assertion(&ctx, &who.assertion_id, until)
            .await?
        {
            let audit = NewAuditEvent::new(
                Chain::Tenant(s.tenant_id),
                "session.sign_in_failed",
                ctx.actor(),
                Timestamp::now(),
            )
            .target("sso_connection", &conn.id)
            .outcome(Outcome::Failure)
            .data(json!({"method": "saml", "error": "assertion replayed"}));
            self.store.append_audit(audit).await?;
            return Err(bad());
        }
        let email = who
            .email
            .clone()
            .or_else(|| who.name_id.contains('@').then(|| who.name_id.clone()));
        let identity = SsoIdentity {
            subject: who.name_id,
            email,
            name: who.name,
            groups: who.groups,
        };
        self.sso_sign_in(&ctx, &conn, identity, "saml").await
    }

    /// The provider sent the browser back: the tenant and connection come from the state.
    pub async fn finish_sso(
        &self,
        state: &str,
        code: &str,
        iss: Option<&str>,
    ) -> Result<TokenPair> {
        let bad = || ControlError::Auth(AuthFailure::InvalidCredentials);
        if state.is_empty() || state.len() > 256 || code.is_empty() || code.len() > 2048 {
            return Err(bad());
        }
        let hash = state_hash(state);
        let s = self.store.take_sso_state(&hash).await?.ok_or_else(bad)?;
        if s.expires_at <= Timestamp::now() {
            return Err(bad());
        }
        let ctx = TenantCtx::for_sign_in(s.tenant_id, "sso");
        let plain = self
            .open_secret(&ctx, STATE_KIND, &hash, &s.pending)
            .await?;
        let pending: PendingLogin =
            serde_json::from_slice(&plain).map_err(|e| ControlError::Internal(e.to_string()))?;
        if pending.state != state {
            return Err(bad());
        }
        let (conn, secret) = self.live_connection(&ctx, &s.connection_id, "oidc").await?;
        let settings = oidc_settings(&conn.config, secret)?;
        // RFC 9207: an answer from another provider (a mix-up attack) is refused.
        if iss.is_some_and(|i| i.trim_end_matches('/') != settings.issuer.trim_end_matches('/')) {
            return Err(bad());
        }
        let client = OidcClient::discover(&settings, self.http_for_idp()?)
            .await
            .map_err(|e| ControlError::Idp(e.to_string()))?;
        let identity = match client.exchange(code, &pending).await {
            Ok(i) => i,
            Err(e) => {
                let audit = NewAuditEvent::new(
                    Chain::Tenant(s.tenant_id),
                    "session.sign_in_failed",
                    ctx.actor(),
                    Timestamp::now(),
                )
                .target("sso_connection", &conn.id)
                .outcome(Outcome::Failure)
                .data(json!({"method": "oidc", "error": e.to_string()}));
                self.store.append_audit(audit).await?;
                return Err(bad());
            }
        };
        let identity = SsoIdentity {
            subject: identity.subject,
            email: identity
                .email
                .filter(|_| identity.email_verified != Some(false)),
            name: identity.name,
            groups: identity.groups,
        };
        self.sso_sign_in(&ctx, &conn, identity, "oidc").await
    }

    /// `grant_type: ldap`: the tenant's directory checks the password.
    pub(crate) async fn sign_in_ldap(
        &self,
        hints: &TenantHints,
        connection: Option<&str>,
        username: &str,
        password: String,
    ) -> Result<TokenPair> {
        let bad = || ControlError::Auth(AuthFailure::InvalidCredentials);
        let tenant = self.resolve_tenant(hints).await?;
        if tenant.status != TenantStatus::Active || username.is_empty() || username.len() > 256 {
            return Err(bad());
        }
        let throttle_key = format!("ldap:{}", username.to_lowercase());
        if let Some(secs) = self.identity.throttle.blocked(tenant.id, &throttle_key) {
            return Err(ControlError::Auth(AuthFailure::Throttled(secs)));
        }
        let ctx = TenantCtx::for_sign_in(tenant.id, "sso");
        let id = match connection {
            Some(c) => c.to_owned(),
            None => {
                let ldaps: Vec<_> = self
                    .store
                    .list_sso(&ctx)
                    .await?
                    .into_iter()
                    .filter(|r| r.connection.kind == "ldap" && r.connection.enabled)
                    .collect();
                match ldaps.as_slice() {
                    [one] => one.connection.id.clone(),
                    _ => return Err(bad()),
                }
            }
        };
        let (conn, secret) = self.live_connection(&ctx, &id, "ldap").await?;
        let settings = ldap_settings(&conn.config, secret)?;
        let found = match ldap::authenticate(&settings, username, &password).await {
            Ok(f) => f,
            Err(ldap::LdapError::InvalidCredentials) => {
                self.identity.throttle.failed(tenant.id, &throttle_key);
                return Err(bad());
            }
            Err(e) => return Err(ControlError::Idp(e.to_string())),
        };
        self.identity.throttle.succeeded(tenant.id, &throttle_key);
        let identity = SsoIdentity {
            subject: found.dn,
            email: found.email,
            name: found.name,
            groups: found.groups,
        };
        self.sso_sign_in(&ctx, &conn, identity, "ldap").await
    }

    /// Just-in-time membership and attribute sync in the connection's tenant, then a session.
    async fn sso_sign_in(
        &self,
        ctx: &TenantCtx,
        conn: &SsoConnection,
        who: SsoIdentity,
        method: &str,
    ) -> Result<TokenPair> {
        let bad = || ControlError::Auth(AuthFailure::InvalidCredentials);
        let email = who
            .email
            .as_deref()
            .and_then(|e| normalize_email("email", e).ok())
            .ok_or_else(bad)?;
        let name = who
            .name
            .as_deref()
            .and_then(|n| validate_display_name(n).ok());
        // Roles from the groups, when the connection maps any.
        let mapped: Option<(Vec<String>, Vec<String>)> =
            (!conn.role_mapping.is_empty()).then(|| {
                let mut builtin = Vec::new();
                let mut custom = Vec::new();
                for g in &who.groups {
                    for r in conn.role_mapping.get(g).into_iter().flatten() {
                        let list = if Role::parse(r).is_some() {
                            &mut builtin
                        } else {
                            &mut custom
                        };
                        if !list.contains(r) {
                            list.push(r.clone());
                        }
                    }
                }
                if builtin.is_empty() && custom.is_empty() {
                    builtin.push(Role::Member.as_str().to_owned());
                }
                builtin.sort();
                custom.sort();
                (builtin, custom)
            });
        let external = format!("{}:{}", conn.id, who.subject);
        let existing = self.store.local_credential(ctx, &email).await?;
        let now = Timestamp::now();
        let user = match existing {
            Some(c) if c.status != "active" => return Err(bad()),
            Some(c) => {
                let before = self
                    .store
                    .get_member(ctx, c.user_id)
                    .await?
                    .ok_or_else(bad)?;
                let mut change = MemberChange {
                    name: name.clone().filter(|n| before.name.as_ref() != Some(n)),
                    external_id: (before.external_id.as_deref() != Some(external.as_str()))
                        .then(|| Some(external.clone())),
                    ..Default::default()
                };
                if let Some((b, cr)) = &mapped {
                    let mut old_b = before.roles.clone();
                    let mut old_c = before.custom_roles.clone();
                    old_b.sort();
                    old_c.sort();
                    if &old_b != b {
                        change.roles = Some(b.clone());
                    }
                    if &old_c != cr {
                        change.custom_roles = Some(cr.clone());
                    }
                }
                let changed = change.name.is_some()
                    || change.external_id.is_some()
                    || change.roles.is_some()
                    || change.custom_roles.is_some();
                if changed {
                    let audit = |change: &MemberChange| {
                        NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "user.synced", ctx.actor(), now)
                            .target("user", c.user_id)
                            .data(json!({"connection": conn.id, "roles": change.roles, "custom_roles": change.custom_roles}))
                    };
                    match self
                        .store
                        .update_member(ctx, c.user_id, &change, now, audit(&change))
                        .await
                    {
                        // The IdP cannot remove the tenant's last admin: keep the roles.
                        Err(StoreError::Conflict(Conflict::LastAdmin))
                        | Err(StoreError::Conflict(Conflict::Reference)) => {
                            change.roles = None;
                            change.custom_roles = None;
                            self.store
                                .update_member(ctx, c.user_id, &change, now, audit(&change))
                                .await?;
                        }
                        r => {
                            r?;
                        }
                    }
                }
                c.user_id
            }
            None if !conn.jit => return Err(bad()),
            None => {
                let (roles, custom) =
                    mapped.unwrap_or_else(|| (vec![Role::Member.as_str().to_owned()], Vec::new()));
                let member = Member {
                    tenant_id: ctx.tenant_id(),
                    user_id: self
                        .store
                        .find_user_by_email(&email)
                        .await?
                        .unwrap_or_default(),
                    email: email.clone(),
                    name,
                    roles,
                    custom_roles: custom,
                    status: "active".into(),
                    has_password: false,
                    external_id: Some(external),
                    created_at: now,
                    updated_at: now,
                    last_sign_in_at: None,
                };
                let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "user.provisioned", ctx.actor(), now)
                    .data(json!({"connection": conn.id, "method": method, "roles": member.roles, "custom_roles": member.custom_roles}))
                    .pii(json!({"email": email}));
                match self.store.insert_member(ctx, &member, audit).await {
                    Ok(m) => m.user_id,
                    // A custom role deleted since the mapping was saved: provision as member.
                    Err(StoreError::Conflict(Conflict::Reference)) => {
                        let member = Member {
                            custom_roles: Vec::new(),
                            ..member
                        };
                        let audit = NewAuditEvent::new(
                            Chain::Tenant(ctx.tenant_id()),
                            "user.provisioned",
                            ctx.actor(),
                            now,
                        )
                        .data(
                            json!({"connection": conn.id, "method": method, "roles": member.roles}),
                        )
                        .pii(json!({"email": email}));
                        self.store.insert_member(ctx, &member, audit).await?.user_id
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let session_ctx = TenantCtx::for_sign_in(ctx.tenant_id(), &user.to_string());
        let (refresh_token, session) =
            self.new_session(user, &format!("{method}:{}", conn.id), now);
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "session.created",
            session_ctx.actor(),
            now,
        )
        .target("session", session.id)
        .data(json!({"method": method, "connection": conn.id, "expires_at": session.expires_at}));
        self.store
            .create_session(&session_ctx, &session, audit)
            .await?;
        self.issue(ctx.tenant_id(), user, session.id, refresh_token)
            .await
    }
}
