//! Delegated tokens: an admin issues a token with which an AI agent acts for a person.
//!
//! - The token reaches the person's tenant only.
//! - It holds at most the person's permissions at each request (a demotion narrows it at
//!   once), and at most the optional ceiling given at issue.
//! - It expires, can be revoked, and is never refreshed.
//! - Every audit event it causes names the person and the agent (`<person>/agent:<agent>`).

use crate::{parse_object, ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{Permission, Role, TenantCtx};
use agentplane_core::identity::{parse_member_roles, validate_agent_label, AccessClaims, ActClaim};
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, SessionId};
use agentplane_store::identity::{Delegation, NewDelegation, NewSession};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;

/// Longest a delegated token may live: 30 days.
pub const MAX_DELEGATION_SECS: u64 = 30 * 86_400;

/// `POST /v1/tenants/{tenant_id}/delegations`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDelegation {
    /// The person the agent acts for (an active member of the tenant).
    pub user_id: String,
    /// The agent's label, recorded in every audit event the token causes.
    #[schema(min_length = 1, max_length = 64)]
    pub agent: String,
    /// At most these permissions (each held by the person and the issuer); default: the
    /// person's permissions, whatever they are at each request.
    #[schema(max_items = 64)]
    pub permissions: Option<Vec<String>>,
    /// Lifetime, 60 s to 30 days; default 3600.
    #[schema(minimum = 60, maximum = 2592000)]
    pub ttl_secs: Option<u64>,
}

/// The issued token: shown once.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DelegationCreated {
    #[serde(flatten)]
    pub delegation: Delegation,
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl ControlPlane {
    pub async fn create_delegation(
        &self,
        ctx: &TenantCtx,
        caller: &BTreeSet<Permission>,
        raw: serde_json::Value,
    ) -> Result<DelegationCreated> {
        let req: CreateDelegation = parse_object(raw)?;
        let agent = validate_agent_label(&req.agent)?;
        let ttl = req.ttl_secs.unwrap_or(3600);
        if !(60..=MAX_DELEGATION_SECS).contains(&ttl) {
            return Err(DomainError::invalid("ttl_secs", "must be 60 to 2592000").into());
        }
        let member = self
            .get_member(ctx, &req.user_id)
            .await
            .map_err(|e| match e {
                ControlError::NotFound(_) => {
                    DomainError::invalid("user_id", "is not a member of this tenant").into()
                }
                e => e,
            })?;
        if member.status != "active" {
            return Err(DomainError::invalid("user_id", "the member is not active").into());
        }
        let roles: BTreeSet<Role> = parse_member_roles(&member.roles).unwrap_or_default();
        let person = self.granted_by(ctx, &roles, &member.custom_roles).await?;
        let permissions = match &req.permissions {
            Some(names) => {
                let mut set = BTreeSet::new();
                for n in names {
                    let p = Permission::parse(n).ok_or_else(|| {
                        DomainError::invalid(
                            "permissions",
                            "each must be a permission of docs/permissions.md",
                        )
                    })?;
                    if !person.contains(&p) {
                        return Err(DomainError::invalid(
                            "permissions",
                            format!("the person does not hold {}", p.as_str()),
                        )
                        .into());
                    }
                    set.insert(p);
                }
                if set.is_empty() {
                    return Err(
                        DomainError::invalid("permissions", "must name at least one").into(),
                    );
                }
                set
            }
            None => person.clone(),
        };
        // The issuer cannot hand out more than they hold either.
        Self::within(caller, &permissions)?;
        let now = Timestamp::now();
        let session = NewSession {
            id: SessionId::new(),
            user_id: member.user_id,
            method: "delegation".into(),
            created_at: now,
            expires_at: now.plus_secs(ttl),
            refresh: None,
            delegation: Some(NewDelegation {
                agent: agent.clone(),
                permissions: req
                    .permissions
                    .as_ref()
                    .map(|_| permissions.iter().map(|p| p.as_str().to_owned()).collect()),
                created_by: ctx.actor().id().to_owned(),
            }),
        };
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "delegation.created",
            ctx.actor(),
            now,
        )
        .target("session", session.id)
        .data(json!({
            "user_id": member.user_id,
            "agent": agent,
            "permissions": session.delegation.as_ref().and_then(|d| d.permissions.clone()),
            "expires_at": session.expires_at,
        }));
        self.store.create_session(ctx, &session, audit).await?;
        let cfg = &self.identity.cfg;
        let claims = AccessClaims {
            iss: cfg.issuer.clone(),
            aud: super::AUDIENCE.into(),
            sub: member.user_id.to_string(),
            tid: ctx.tenant_id().to_string(),
            sid: session.id.to_string(),
            iat: now.millis() / 1000,
            exp: session.expires_at.millis() / 1000,
            jti: uuid::Uuid::now_v7().to_string(),
            act: Some(ActClaim {
                sub: format!("agent:{agent}"),
            }),
            scope: Some(
                permissions
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        let access_token = self.sign_access(&claims).await?;
        let delegation = self
            .store
            .list_delegations(ctx)
            .await?
            .into_iter()
            .find(|d| d.id == session.id)
            .ok_or(ControlError::NotFound("delegation"))?;
        Ok(DelegationCreated {
            delegation,
            access_token,
            token_type: "Bearer",
            expires_in: ttl,
        })
    }

    pub async fn list_delegations(&self, ctx: &TenantCtx) -> Result<Vec<Delegation>> {
        Ok(self.store.list_delegations(ctx).await?)
    }

    pub async fn revoke_delegation(&self, ctx: &TenantCtx, id: &str) -> Result<Delegation> {
        let id: SessionId = id
            .parse()
            .map_err(|_| ControlError::NotFound("delegation"))?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "delegation.revoked",
            ctx.actor(),
            now,
        )
        .target("session", id);
        self.store
            .revoke_delegation(ctx, id, now, audit)
            .await?
            .ok_or(ControlError::NotFound("delegation"))
    }
}
