//! A tenant admin's people: memberships, custom roles and invitations.

use crate::error::ConflictKind;
use crate::{parse_object, ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{role_grants, Permission, Role, TenantCtx, PERMISSION_MATRIX};
use agentplane_core::identity::{
    normalize_email, parse_member_roles, parse_role_permissions, validate_display_name,
    validate_role_name, MAX_CUSTOM_ROLES, MEMBER_STATUSES, TENANT_ROLES,
};
use agentplane_core::job::{Job, JobKind};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, InvitationId, UserId};
use agentplane_store::identity::{CustomRole, Invitation, MemberChange, NewInvitation};
use agentplane_store::{Conflict, Member, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// `PATCH /v1/tenants/{tenant_id}/users/{user_id}`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// Built-in roles: `tenant_admin`, `auditor`, `member`.
    #[schema(max_items = 3)]
    pub roles: Option<Vec<String>>,
    /// Names of the tenant's custom roles.
    #[schema(max_items = 100)]
    pub custom_roles: Option<Vec<String>>,
    #[schema(pattern = "^(active|inactive|suspended)$")]
    pub status: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    #[schema(pattern = "^[a-z][a-z0-9_-]{1,62}$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: String,
    #[schema(min_items = 1, max_items = 64)]
    pub permissions: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRole {
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_items = 1, max_items = 64)]
    pub permissions: Option<Vec<String>>,
}

/// A role as `GET .../roles` lists it: built-in or custom, with its permissions.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RoleView {
    pub name: String,
    pub builtin: bool,
    pub description: String,
    pub permissions: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteUser {
    #[schema(max_length = 254)]
    pub email: String,
    /// Built-in roles; default `["member"]`.
    #[schema(max_items = 3)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    #[schema(max_items = 100)]
    pub custom_roles: Vec<String>,
}

/// The created invitation. With SMTP configured the link goes only to the invited address
/// (`delivery: email`); without, it is returned here once for the admin to pass on
/// (`delivery: manual`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InvitationCreated {
    #[serde(flatten)]
    pub invitation: Invitation,
    /// `email` or `manual`.
    pub delivery: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_url: Option<String>,
}

const TOKEN_PREFIX: &str = "apinv_";
const TOKEN_KIND: &str = "invitation_token";

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn role_permissions(role: Role) -> BTreeSet<Permission> {
    Permission::all()
        .filter(|p| role_grants(role, *p))
        .collect()
}

impl ControlPlane {
    /// The permissions `roles` and `custom` would grant (unknown custom roles grant none:
    /// the store refuses them).
    pub(super) async fn granted_by(
        &self,
        ctx: &TenantCtx,
        roles: &BTreeSet<Role>,
        custom: &[String],
    ) -> Result<BTreeSet<Permission>> {
        let mut perms: BTreeSet<Permission> =
            roles.iter().flat_map(|r| role_permissions(*r)).collect();
        if !custom.is_empty() {
            for r in self.store.list_roles(ctx).await? {
                if custom.contains(&r.name) {
                    perms.extend(r.permissions.iter().filter_map(|p| Permission::parse(p)));
                }
            }
        }
        Ok(perms)
    }

    /// Nobody grants more than they hold.
    pub(super) fn within(
        caller: &BTreeSet<Permission>,
        granted: &BTreeSet<Permission>,
    ) -> Result<()> {
        match granted.iter().find(|p| !caller.contains(p)) {
            None => Ok(()),
            Some(p) => Err(DomainError::invalid(
                "roles",
                format!("would grant {}, which the caller does not hold", p.as_str()),
            )
            .into()),
        }
    }

    fn custom_role_names(names: &[String]) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for n in names {
            let n = validate_role_name(n).map_err(|_| {
                DomainError::invalid("custom_roles", "each must be a custom role's name")
            })?;
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }

    pub async fn get_member(&self, ctx: &TenantCtx, user: &str) -> Result<Member> {
        let user: UserId = user.parse().map_err(|_| ControlError::NotFound("user"))?;
        self.store
            .get_member(ctx, user)
            .await?
            .ok_or(ControlError::NotFound("user"))
    }

    pub async fn update_member(
        &self,
        ctx: &TenantCtx,
        caller: &BTreeSet<Permission>,
        user: &str,
        raw: serde_json::Value,
    ) -> Result<Member> {
        let req: UpdateUser = parse_object(raw)?;
        let before = self.get_member(ctx, user).await?;
        let mut change = MemberChange::default();
        let roles = match &req.roles {
            Some(r) => {
                let parsed = parse_member_roles(r)?;
                change.roles = Some(parsed.iter().map(|r| r.as_str().to_owned()).collect());
                parsed
            }
            None => parse_member_roles(&before.roles).unwrap_or_default(),
        };
        let custom = match &req.custom_roles {
            Some(c) => {
                let c = Self::custom_role_names(c)?;
                change.custom_roles = Some(c.clone());
                c
            }
            None => before.custom_roles.clone(),
        };
        if roles.is_empty() && custom.is_empty() {
            return Err(DomainError::invalid("roles", "a user needs at least one role").into());
        }
        if let Some(s) = &req.status {
            if !MEMBER_STATUSES.contains(&s.as_str()) {
                return Err(DomainError::invalid(
                    "status",
                    "must be active, inactive or suspended",
                )
                .into());
            }
            change.status = Some(s.clone());
        }
        if let Some(n) = &req.name {
            change.name = Some(validate_display_name(n)?);
        }
        // Only what is newly granted must be within the caller's permissions.
        let old_roles = parse_member_roles(&before.roles).unwrap_or_default();
        let old = self
            .granted_by(ctx, &old_roles, &before.custom_roles)
            .await?;
        let new = self.granted_by(ctx, &roles, &custom).await?;
        let added: BTreeSet<Permission> = new.difference(&old).copied().collect();
        Self::within(caller, &added)?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "user.updated",
            ctx.actor(),
            now,
        )
        .target("user", before.user_id)
        .data(json!({
            "roles": {"from": before.roles, "to": change.roles.as_ref().unwrap_or(&before.roles)},
            "custom_roles": {"from": before.custom_roles, "to": custom},
            "status": {"from": before.status, "to": change.status.as_ref().unwrap_or(&before.status)},
        }));
        self.store
            .update_member(ctx, before.user_id, &change, now, audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(Conflict::Reference) => ControlError::from(
                    DomainError::invalid("custom_roles", "names a role the tenant does not have"),
                ),
                e => e.into(),
            })?
            .ok_or(ControlError::NotFound("user"))
    }

    pub async fn remove_member(&self, ctx: &TenantCtx, user: &str) -> Result<()> {
        let member = self.get_member(ctx, user).await?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "user.removed",
            ctx.actor(),
            now,
        )
        .target("user", member.user_id)
        .data(json!({"roles": member.roles, "custom_roles": member.custom_roles}))
        .pii(json!({"email": member.email}));
        if self
            .store
            .remove_member(ctx, member.user_id, now, audit)
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound("user"))
        }
    }

    pub async fn list_roles(&self, ctx: &TenantCtx) -> Result<Vec<RoleView>> {
        let mut out: Vec<RoleView> = TENANT_ROLES
            .iter()
            .map(|r| RoleView {
                name: r.as_str().to_owned(),
                builtin: true,
                description: match r {
                    Role::TenantAdmin => "Manages the tenant's users, roles, agents and settings",
                    Role::Auditor => "Reads usage, audit and configuration; changes nothing",
                    _ => "Uses the tenant's agents",
                }
                .to_owned(),
                permissions: PERMISSION_MATRIX
                    .iter()
                    .filter(|(_, roles)| roles.contains(r))
                    .map(|(p, _)| p.as_str().to_owned())
                    .collect(),
            })
            .collect();
        out.extend(
            self.store
                .list_roles(ctx)
                .await?
                .into_iter()
                .map(|r| RoleView {
                    name: r.name,
                    builtin: false,
                    description: r.description,
                    permissions: r.permissions,
                }),
        );
        Ok(out)
    }

    fn role_description(d: &str) -> Result<String> {
        let d = d.trim();
        if d.chars().count() > 500 || d.chars().any(|c| c.is_control() && c != '\n') {
            return Err(DomainError::invalid(
                "description",
                "must be at most 500 characters without control characters",
            )
            .into());
        }
        Ok(d.to_owned())
    }

    pub async fn create_role(
        &self,
        ctx: &TenantCtx,
        caller: &BTreeSet<Permission>,
        raw: serde_json::Value,
    ) -> Result<CustomRole> {
        let req: CreateRole = parse_object(raw)?;
        let name = validate_role_name(&req.name)?;
        let perms = parse_role_permissions(&req.permissions)?;
        Self::within(caller, &perms)?;
        if self.store.list_roles(ctx).await?.len() >= MAX_CUSTOM_ROLES {
            return Err(
                DomainError::invalid("name", "the tenant has 100 custom roles already").into(),
            );
        }
        let now = Timestamp::now();
        let role = CustomRole {
            name,
            description: Self::role_description(&req.description)?,
            permissions: perms.iter().map(|p| p.as_str().to_owned()).collect(),
            created_at: now,
            updated_at: now,
        };
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "role.created",
            ctx.actor(),
            now,
        )
        .target("role", &role.name)
        .data(json!({"permissions": role.permissions}));
        self.store
            .insert_role(ctx, &role, audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(Conflict::Name) => {
                    ControlError::Conflict(ConflictKind::NameTaken)
                }
                e => e.into(),
            })?;
        Ok(role)
    }

    pub async fn update_role(
        &self,
        ctx: &TenantCtx,
        caller: &BTreeSet<Permission>,
        name: &str,
        raw: serde_json::Value,
    ) -> Result<CustomRole> {
        let req: UpdateRole = parse_object(raw)?;
        let mut role = self
            .store
            .list_roles(ctx)
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or(ControlError::NotFound("role"))?;
        let before = role.permissions.clone();
        if let Some(p) = &req.permissions {
            let perms = parse_role_permissions(p)?;
            let old: BTreeSet<Permission> =
                before.iter().filter_map(|p| Permission::parse(p)).collect();
            let added: BTreeSet<Permission> = perms.difference(&old).copied().collect();
            Self::within(caller, &added)?;
            role.permissions = perms.iter().map(|p| p.as_str().to_owned()).collect();
        }
        if let Some(d) = &req.description {
            role.description = Self::role_description(d)?;
        }
        role.updated_at = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "role.updated",
            ctx.actor(),
            role.updated_at,
        )
        .target("role", &role.name)
        .data(json!({"permissions": {"from": before, "to": role.permissions}}));
        if self.store.update_role(ctx, &role, audit).await? {
            Ok(role)
        } else {
            Err(ControlError::NotFound("role"))
        }
    }

    pub async fn delete_role(&self, ctx: &TenantCtx, name: &str) -> Result<()> {
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "role.deleted",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("role", name);
        match self.store.delete_role(ctx, name, audit).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlError::NotFound("role")),
            Err(StoreError::Conflict(Conflict::Reference)) => {
                Err(ControlError::Conflict(ConflictKind::InUse))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn invite_user(
        &self,
        ctx: &TenantCtx,
        caller: &BTreeSet<Permission>,
        raw: serde_json::Value,
    ) -> Result<InvitationCreated> {
        let req: InviteUser = parse_object(raw)?;
        let email = normalize_email("email", &req.email)?;
        let roles = parse_member_roles(req.roles.as_deref().unwrap_or(&["member".to_owned()]))?;
        let custom = Self::custom_role_names(&req.custom_roles)?;
        if roles.is_empty() && custom.is_empty() {
            return Err(
                DomainError::invalid("roles", "an invitation needs at least one role").into(),
            );
        }
        Self::within(caller, &self.granted_by(ctx, &roles, &custom).await?)?;
        let now = Timestamp::now();
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let invitation = Invitation {
            tenant_id: ctx.tenant_id(),
            id: InvitationId::new(),
            email: email.clone(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            custom_roles: custom,
            invited_by: ctx.actor().id().to_owned(),
            created_at: now,
            expires_at: now.plus_secs(self.identity.cfg.invitation_ttl_secs),
            accepted_at: None,
            accepted_by: None,
            revoked_at: None,
        };
        let (sealed_token, key_version) = self
            .seal_secret(
                ctx,
                TOKEN_KIND,
                &invitation.id.to_string(),
                token.as_bytes(),
            )
            .await?;
        let mailed = self.identity.cfg.mailer.is_some();
        let job = mailed.then(|| {
            Job::new(
                ctx.tenant_id(),
                JobKind::SendInvitation,
                json!({"invitation_id": invitation.id}),
                now,
            )
        });
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "user.invited",
            ctx.actor(),
            now,
        )
        .target("invitation", invitation.id)
        .data(json!({
            "roles": invitation.roles,
            "custom_roles": invitation.custom_roles,
            "expires_at": invitation.expires_at,
            "delivery": if mailed { "email" } else { "manual" },
        }))
        .pii(json!({"email": email}));
        let new = NewInvitation {
            invitation: invitation.clone(),
            token_hash: token_hash(&token),
            sealed_token,
            key_version,
        };
        self.store
            .insert_invitation(ctx, &new, job.as_ref(), audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(Conflict::Reference) => ControlError::from(
                    DomainError::invalid("custom_roles", "names a role the tenant does not have"),
                ),
                e => e.into(),
            })?;
        Ok(if mailed {
            InvitationCreated {
                invitation,
                delivery: "email",
                token: None,
                accept_url: None,
            }
        } else {
            InvitationCreated {
                accept_url: Some(self.accept_url(&token)),
                token: Some(token),
                invitation,
                delivery: "manual",
            }
        })
    }

    fn accept_url(&self, token: &str) -> String {
        format!(
            "{}/accept-invitation#token={token}",
            self.identity.cfg.issuer.trim_end_matches('/')
        )
    }

    pub async fn list_invitations(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<Invitation>> {
        Ok(self.store.list_invitations(ctx, page).await?)
    }

    pub async fn revoke_invitation(&self, ctx: &TenantCtx, id: &str) -> Result<Invitation> {
        let id: InvitationId = id
            .parse()
            .map_err(|_| ControlError::NotFound("invitation"))?;
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "invitation.revoked",
            ctx.actor(),
            now,
        )
        .target("invitation", id);
        match self.store.revoke_invitation(ctx, id, now, audit).await {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(ControlError::NotFound("invitation")),
            Err(StoreError::Conflict(Conflict::Version)) => {
                Err(ControlError::Conflict(ConflictKind::AlreadyFinished))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The `invitation.send` job: mails the link, unless the invitation is no longer pending,
    /// then completes the job (a lost lease means another worker took it over).
    pub(crate) async fn send_invitation(&self, job: &Job) -> Result<()> {
        self.mail_invitation(job).await?;
        Ok(self.store.complete_job(job, Timestamp::now()).await?)
    }

    async fn mail_invitation(&self, job: &Job) -> Result<()> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let id: InvitationId = job
            .payload
            .get("invitation_id")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ControlError::Internal("invitation job without an id".into()))?;
        let Some((inv, Some((sealed, _)))) = self.store.invitation_token(&ctx, id).await? else {
            return Ok(());
        };
        if inv.state(Timestamp::now()) != "pending" {
            return Ok(());
        }
        let Some(mailer) = &self.identity.cfg.mailer else {
            return Err(ControlError::Internal("SMTP is not configured".into()));
        };
        let token = self
            .open_secret(&ctx, TOKEN_KIND, &id.to_string(), &sealed)
            .await?;
        let token = String::from_utf8_lossy(&token).into_owned();
        let tenant = self
            .store
            .get_tenant(inv.tenant_id)
            .await?
            .ok_or(ControlError::NotFound("tenant"))?;
        let body = format!(
            "You are invited to join {name} on Agentplane as {roles}.\n\n\
             Accept the invitation: {url}\n\n\
             Or accept it through the API: POST /v1/auth/invitations/accept with \
             {{\"token\": \"{token}\"}}.\n\n\
             The invitation is for {email} only, can be used once, and expires at {expires}.\n\
             If you did not expect it, ignore this message.\n",
            name = tenant.name,
            roles = inv.roles.join(", "),
            url = self.accept_url(&token),
            email = inv.email,
            expires = inv.expires_at,
        );
        mailer
            .send(
                &inv.email,
                &format!("You are invited to join {} on Agentplane", tenant.name),
                &body,
            )
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))
    }
}
