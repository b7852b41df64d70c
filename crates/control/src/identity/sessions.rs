//! Sign-in and sessions: tenant discovery, password sign-in, invitation acceptance,
//! refresh-token rotation with reuse detection, sign-out, and turning a verified access
//! token into a [`Principal`] with what the membership grants now.

use super::members::token_hash;
use super::password;
use crate::error::AuthFailure;
use crate::{parse_object, ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent, Outcome};
use agentplane_core::authz::{Permission, Principal, Role, SessionRef, TenantAccess, TenantCtx};
use agentplane_core::identity::{
    normalize_email, validate_display_name, validate_password, AccessClaims,
};
use agentplane_core::tenant::{Slug, Tenant, TenantStatus};
use agentplane_core::time::Timestamp;
use agentplane_core::{SessionId, TenantId, UserId};
use agentplane_store::identity::{Acceptance, NewRefresh, NewSession, Rotation};
use agentplane_store::{Conflict, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;
use subtle::ConstantTimeEq;

const REFRESH_PREFIX: &str = "aprt_";

/// Where a sign-in request names its tenant. Every hint given must name the same tenant.
#[derive(Clone, Debug, Default)]
pub struct TenantHints {
    /// The request's `Host` (subdomain discovery under the base domain).
    pub host: Option<String>,
    /// The `{tenant}` path segment of `/v1/auth/{tenant}/...` (slug or id).
    pub path: Option<String>,
    /// The body's `tenant` field (slug or id).
    pub body: Option<String>,
}

/// `POST /v1/auth/token` with `grant_type: password`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordGrant {
    /// `password`, `refresh_token`, or `ldap` (the tenant's directory checks `username` and
    /// `password`).
    #[schema(pattern = "^(password|refresh_token|ldap)$")]
    pub grant_type: String,
    /// The tenant's slug or id (or use its subdomain or `/v1/auth/{tenant}/token`).
    #[schema(max_length = 64)]
    pub tenant: Option<String>,
    #[schema(max_length = 254)]
    pub email: Option<String>,
    #[schema(max_length = 1024)]
    pub password: Option<String>,
    #[schema(max_length = 200)]
    pub refresh_token: Option<String>,
    /// `ldap`: the directory's user name.
    #[schema(max_length = 256)]
    pub username: Option<String>,
    /// `ldap`: the SSO connection (needed when the tenant has several directories).
    #[schema(max_length = 64)]
    pub connection: Option<String>,
}

/// `POST /v1/auth/invitations/accept`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    #[schema(max_length = 200)]
    pub token: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// The local password for this tenant (unless the tenant enforces SSO).
    #[schema(min_length = 12, max_length = 1024)]
    pub password: Option<String>,
}

/// Tokens of a session.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single use: each refresh answers a new one; presenting a used one ends the session.
    pub refresh_token: String,
    pub tenant_id: TenantId,
    pub user_id: UserId,
}

/// `GET /v1/auth/me`: the caller, their tenant and what they may do there.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub subject: String,
    pub tenant_id: Option<TenantId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_slug: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_name: Option<String>,
    pub roles: Vec<Role>,
    pub custom_roles: Vec<String>,
    /// As named in docs/permissions.md (`agents.read`, ...).
    pub permissions: Vec<String>,
    /// A delegated token's agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

fn new_refresh() -> (String, NewRefresh) {
    let mut id = [0u8; 12];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{REFRESH_PREFIX}{id}.{secret}");
    (
        token,
        NewRefresh {
            id,
            secret_hash: token_hash(&secret),
        },
    )
}

fn split_refresh(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(REFRESH_PREFIX)?.split_once('.')?;
    (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() == 43)
        .then_some((id, secret))
}

fn unresolved(why: &'static str) -> ControlError {
    ControlError::Auth(AuthFailure::TenantUnresolved(why))
}

impl ControlPlane {
    pub(crate) async fn tenant_by_ref(&self, r: &str) -> Result<Option<Tenant>> {
        if let Ok(id) = r.parse::<TenantId>() {
            return Ok(self.store.get_tenant(id).await?);
        }
        match Slug::parse(r) {
            Ok(slug) => Ok(self.store.tenant_by_slug(&slug).await?),
            Err(_) => Ok(None),
        }
    }

    /// The tenant a sign-in request names: by subdomain, path or body, which must agree.
    /// An unknown tenant reads like wrong credentials.
    pub async fn resolve_tenant(&self, hints: &TenantHints) -> Result<Tenant> {
        let from_host = match (&hints.host, &self.identity.cfg.base_domain) {
            (Some(host), Some(base)) => {
                let host = host
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                host.strip_suffix(base.as_str())
                    .and_then(|s| s.strip_suffix('.'))
                    .filter(|s| !s.is_empty() && !s.contains('.'))
                    .map(str::to_owned)
            }
            _ => None,
        };
        let mut found: Option<Tenant> = None;
        for r in [
            from_host.as_deref(),
            hints.path.as_deref(),
            hints.body.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            let t = self
                .tenant_by_ref(r.trim())
                .await?
                .ok_or(ControlError::Auth(AuthFailure::InvalidCredentials))?;
            if found.as_ref().is_some_and(|f| f.id != t.id) {
                return Err(unresolved(
                    "the subdomain, the path and the body name different tenants",
                ));
            }
            found = Some(t);
        }
        found.ok_or_else(|| {
            unresolved(
                "name the tenant: its subdomain, /v1/auth/{tenant}/token, or the `tenant` field",
            )
        })
    }

    async fn local_sign_in_enabled(&self, ctx: &TenantCtx) -> Result<bool> {
        let s = self.setting(ctx, "sso.enforced").await?;
        Ok(s.value != serde_json::Value::Bool(true))
    }

    pub(super) async fn issue(
        &self,
        tenant: TenantId,
        user: UserId,
        session: SessionId,
        refresh_token: String,
    ) -> Result<TokenPair> {
        let now = Timestamp::now();
        let cfg = &self.identity.cfg;
        let claims = AccessClaims {
            iss: cfg.issuer.clone(),
            aud: super::AUDIENCE.into(),
            sub: user.to_string(),
            tid: tenant.to_string(),
            sid: session.to_string(),
            iat: now.millis() / 1000,
            exp: now.millis() / 1000 + i64::try_from(cfg.access_ttl_secs).unwrap_or(600),
            jti: uuid::Uuid::now_v7().to_string(),
            act: None,
            scope: None,
        };
        Ok(TokenPair {
            access_token: self.sign_access(&claims).await?,
            token_type: "Bearer",
            expires_in: cfg.access_ttl_secs,
            refresh_token,
            tenant_id: tenant,
            user_id: user,
        })
    }

    pub(super) fn new_session(
        &self,
        user: UserId,
        method: &str,
        now: Timestamp,
    ) -> (String, NewSession) {
        let (refresh_token, refresh) = new_refresh();
        (
            refresh_token,
            NewSession {
                id: SessionId::new(),
                user_id: user,
                method: method.into(),
                created_at: now,
                expires_at: now.plus_secs(self.identity.cfg.session_ttl_secs),
                refresh: Some(refresh),
                delegation: None,
            },
        )
    }

    /// `POST /v1/auth/token`: the password grant or the refresh grant.
    pub async fn token(&self, hints: TenantHints, raw: serde_json::Value) -> Result<TokenPair> {
        let req: PasswordGrant = parse_object(raw)?;
        match req.grant_type.as_str() {
            "password" => {
                let (Some(email), Some(password)) = (req.email, req.password) else {
                    return Err(agentplane_core::DomainError::invalid(
                        "body",
                        "the password grant needs email and password",
                    )
                    .into());
                };
                let hints = TenantHints {
                    body: req.tenant,
                    ..hints
                };
                self.sign_in_password(&hints, &email, password).await
            }
            "refresh_token" => {
                let Some(token) = req.refresh_token else {
                    return Err(agentplane_core::DomainError::invalid(
                        "refresh_token",
                        "the refresh grant needs refresh_token",
                    )
                    .into());
                };
                self.refresh(&token).await
            }
            "ldap" => {
                let (Some(username), Some(password)) = (req.username, req.password) else {
                    return Err(agentplane_core::DomainError::invalid(
                        "body",
                        "the ldap grant needs username and password",
                    )
                    .into());
                };
                let hints = TenantHints {
                    body: req.tenant,
                    ..hints
                };
                self.sign_in_ldap(&hints, req.connection.as_deref(), &username, password)
                    .await
            }
            _ => Err(agentplane_core::DomainError::invalid(
                "grant_type",
                "must be password, refresh_token or ldap",
            )
            .into()),
        }
    }

    async fn sign_in_password(
        &self,
        hints: &TenantHints,
        email: &str,
        password: String,
    ) -> Result<TokenPair> {
        let bad = || ControlError::Auth(AuthFailure::InvalidCredentials);
        let tenant = self.resolve_tenant(hints).await?;
        let email = normalize_email("email", email).map_err(|_| bad())?;
        if password.len() > agentplane_core::identity::MAX_PASSWORD_BYTES {
            return Err(bad());
        }
        let throttle = &self.identity.throttle;
        if let Some(secs) = throttle.blocked(tenant.id, &email) {
            return Err(ControlError::Auth(AuthFailure::Throttled(secs)));
        }
        // The actor of a sign-in attempt is unknown: the e-mail never goes into the chained
        // audit event (the target names the membership).
        let ctx = TenantCtx::for_sign_in(tenant.id, "sign-in");
        let cred = if tenant.status == TenantStatus::Active {
            self.store.local_credential(&ctx, &email).await?
        } else {
            None
        };
        let usable = cred
            .as_ref()
            .filter(|c| c.status == "active")
            .and_then(|c| c.password_hash.clone());
        let ok = password::verify(password, usable).await?;
        let now = Timestamp::now();
        if !ok {
            throttle.failed(tenant.id, &email);
            if let Some(c) = &cred {
                let audit = NewAuditEvent::new(
                    Chain::Tenant(tenant.id),
                    "session.sign_in_failed",
                    ctx.actor(),
                    now,
                )
                .target("user", c.user_id)
                .outcome(Outcome::Failure)
                .data(json!({"method": "password"}));
                self.store.append_audit(audit).await?;
            }
            return Err(bad());
        }
        if !self.local_sign_in_enabled(&ctx).await? {
            return Err(ControlError::Auth(AuthFailure::LocalSignInDisabled));
        }
        throttle.succeeded(tenant.id, &email);
        let user = cred.map(|c| c.user_id).ok_or_else(bad)?;
        let ctx = TenantCtx::for_sign_in(tenant.id, &user.to_string());
        let (refresh_token, session) = self.new_session(user, "password", now);
        let audit = NewAuditEvent::new(
            Chain::Tenant(tenant.id),
            "session.created",
            ctx.actor(),
            now,
        )
        .target("session", session.id)
        .data(json!({"method": "password", "expires_at": session.expires_at}));
        self.store.create_session(&ctx, &session, audit).await?;
        self.issue(tenant.id, user, session.id, refresh_token).await
    }

    async fn refresh(&self, token: &str) -> Result<TokenPair> {
        let bad = || ControlError::Auth(AuthFailure::InvalidRefreshToken);
        let (id, secret) = split_refresh(token).ok_or_else(bad)?;
        let found = self.store.find_refresh(id).await?.ok_or_else(bad)?;
        let presented = token_hash(secret);
        if !bool::from(presented.as_bytes().ct_eq(found.secret_hash.as_bytes())) {
            return Err(bad());
        }
        let status = self
            .store
            .get_tenant(found.tenant_id)
            .await?
            .map(|t| t.status);
        if status != Some(TenantStatus::Active) {
            return Err(bad());
        }
        let ctx = TenantCtx::for_sign_in(found.tenant_id, &format!("session/{}", found.session_id));
        let (refresh_token, new) = new_refresh();
        let now = Timestamp::now();
        let reuse = NewAuditEvent::new(
            Chain::Tenant(found.tenant_id),
            "session.refresh_reused",
            ctx.actor(),
            now,
        )
        .target("session", found.session_id)
        .outcome(Outcome::Failure)
        .data(json!({"revoked": true}));
        match self
            .store
            .rotate_refresh(&ctx, id, &new, now, reuse)
            .await?
        {
            Rotation::Rotated { user_id } => {
                self.issue(found.tenant_id, user_id, found.session_id, refresh_token)
                    .await
            }
            Rotation::Reused => Err(ControlError::Auth(AuthFailure::RefreshTokenReused)),
            Rotation::Ended => Err(bad()),
        }
    }

    /// `POST /v1/auth/invitations/accept`: joins the invitation's tenant and signs in.
    pub async fn accept_invitation(&self, raw: serde_json::Value) -> Result<TokenPair> {
        let req: AcceptInvitation = parse_object(raw)?;
        let bad = || ControlError::Auth(AuthFailure::InvalidInvitation);
        if !req.token.starts_with("apinv_") || req.token.len() > 200 {
            return Err(bad());
        }
        let inv = self
            .store
            .find_invitation(&token_hash(&req.token))
            .await?
            .ok_or_else(bad)?;
        let now = Timestamp::now();
        if inv.state(now) != "pending" {
            return Err(bad());
        }
        let status = self
            .store
            .get_tenant(inv.tenant_id)
            .await?
            .map(|t| t.status);
        if status != Some(TenantStatus::Active) {
            return Err(bad());
        }
        let name = req.name.as_deref().map(validate_display_name).transpose()?;
        let ctx = TenantCtx::for_sign_in(inv.tenant_id, &format!("invitation/{}", inv.id));
        let password_hash = match req.password {
            Some(p) => {
                if !self.local_sign_in_enabled(&ctx).await? {
                    return Err(ControlError::Auth(AuthFailure::LocalSignInDisabled));
                }
                validate_password(&p)?;
                Some(password::hash(p).await?)
            }
            None => None,
        };
        let new_user = self
            .store
            .find_user_by_email(&inv.email)
            .await?
            .unwrap_or_default();
        let (refresh_token, session) = self.new_session(new_user, "invitation", now);
        let audit = NewAuditEvent::new(
            Chain::Tenant(inv.tenant_id),
            "invitation.accepted",
            ctx.actor(),
            now,
        )
        .data(json!({
            "invitation_id": inv.id,
            "roles": inv.roles,
            "custom_roles": inv.custom_roles,
            "session_id": session.id,
        }));
        let acc = Acceptance {
            new_user_id: new_user,
            name,
            password_hash,
            session,
        };
        let member = self
            .store
            .accept_invitation(&ctx, inv.id, &acc, now, audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(Conflict::Version) => bad(),
                e => e.into(),
            })?;
        self.issue(inv.tenant_id, member.user_id, acc.session.id, refresh_token)
            .await
    }

    /// `POST /v1/auth/logout`: ends the caller's session; its access and refresh tokens stop
    /// working at once.
    pub async fn sign_out(&self, principal: &Principal) -> Result<()> {
        let Some(s) = &principal.session else {
            return Err(agentplane_core::DomainError::invalid(
                "authorization",
                "only Agentplane session tokens can sign out",
            )
            .into());
        };
        let session: SessionId = s
            .session_id
            .parse()
            .map_err(|_| ControlError::Auth(AuthFailure::InvalidAccessToken("malformed")))?;
        let ctx = TenantCtx::for_sign_in(s.tenant_id, &principal.subject);
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(s.tenant_id),
            "session.revoked",
            ctx.actor(),
            now,
        )
        .target("session", session)
        .data(json!({"reason": "signed_out"}));
        self.store
            .revoke_session(&ctx, session, "signed_out", now, audit)
            .await?;
        Ok(())
    }

    /// Whether `token` claims to be one of ours (its unverified `iss` is our issuer); the
    /// server then verifies it here instead of with the operators' identity provider.
    pub fn issued_here(&self, token: &str) -> bool {
        let Some(payload) = token.split('.').nth(1) else {
            return false;
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("iss").and_then(|i| i.as_str()).map(str::to_owned))
            .is_some_and(|iss| iss == self.identity.cfg.issuer)
    }

    /// Verifies an Agentplane access token and answers the principal with what its session's
    /// membership grants now (a demotion or sign-out applies to the next request).
    pub async fn verify_access_token(&self, token: &str) -> Result<Principal> {
        let bad = |why| ControlError::Auth(AuthFailure::InvalidAccessToken(why));
        let claims = self.verify_access_signature(token).await?;
        let tenant: TenantId = claims.tid.parse().map_err(|_| bad("malformed"))?;
        let user: UserId = claims.sub.parse().map_err(|_| bad("malformed"))?;
        let session: SessionId = claims.sid.parse().map_err(|_| bad("malformed"))?;
        let ctx = TenantCtx::for_verified_token(tenant, &claims.sub);
        let grant = self
            .store
            .session_grant(&ctx, session, user, Timestamp::now())
            .await?
            .ok_or(bad("session ended"))?;
        let roles: BTreeSet<Role> = grant
            .roles
            .iter()
            .filter_map(|r| Role::parse(r))
            .filter(|r| agentplane_core::identity::TENANT_ROLES.contains(r))
            .collect();
        let extra_permissions = grant
            .custom_permissions
            .iter()
            .filter_map(|p| Permission::parse(p))
            .filter(|p| p.tenant_grantable())
            .collect();
        // A delegated token names its agent in the token and in its session: both must agree.
        let agent = match (&claims.act, &grant.agent) {
            (None, None) => None,
            (Some(act), Some(agent)) if act.sub == format!("agent:{agent}") => Some(agent.clone()),
            _ => return Err(bad("delegation mismatch")),
        };
        // No ceiling stored: the person's permissions (agent tokens never widen them).
        let ceiling = grant.ceiling.as_ref().map(|c| {
            c.iter()
                .filter_map(|p| Permission::parse(p))
                .collect::<BTreeSet<_>>()
        });
        Ok(Principal {
            subject: claims.sub,
            roles,
            unknown_roles: Vec::new(),
            scopes: Vec::new(),
            tenant_access: TenantAccess::Only([tenant].into()),
            issuer: Some(claims.iss),
            extra_permissions,
            custom_roles: grant.custom_roles,
            session: Some(SessionRef {
                tenant_id: tenant,
                session_id: claims.sid,
            }),
            agent,
            ceiling,
        })
    }

    /// `GET /v1/auth/me`: tenant discovery by the token's claims.
    pub async fn who_am_i(&self, principal: &Principal) -> Result<WhoAmI> {
        let tenant = match &principal.tenant_access {
            TenantAccess::Only(ids) if ids.len() == 1 => match ids.iter().next() {
                Some(id) => self.store.get_tenant(*id).await?,
                None => None,
            },
            _ => None,
        };
        Ok(WhoAmI {
            subject: principal.subject.clone(),
            tenant_id: tenant.as_ref().map(|t| t.id),
            tenant_slug: tenant.as_ref().map(|t| t.slug.as_str().to_owned()),
            tenant_name: tenant.as_ref().map(|t| t.name.clone()),
            roles: principal.roles.iter().copied().collect(),
            custom_roles: principal.custom_roles.clone(),
            permissions: principal
                .permissions()
                .into_iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            agent: principal.agent.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_round_trip_their_shape() {
        let (token, r) = new_refresh();
        let (id, secret) = split_refresh(&token).unwrap();
        assert_eq!(id, r.id);
        assert_eq!(token_hash(secret), r.secret_hash);
        assert!(split_refresh("aprt_zz.yy").is_none());
        assert!(split_refresh(&token.replace("aprt_", "ap_")).is_none());
    }
}
