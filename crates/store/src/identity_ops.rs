//! [`IdentityStore`] for one backend (compiled once per backend, like `ops.rs`).

use super::ops::{
    after_key, append_audit, convert, insert_job, overfetch, same_tenant, scoped, to_json,
};
use super::{BackendStore, Db, LOCK_TENANT};
use crate::error::{corrupt, is_unique_violation};
use crate::identity::*;
use crate::rows::{json, parse, MemberRow};
use crate::{Conflict, Member, Result, StoreError};
use agentplane_core::audit::NewAuditEvent;
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::Job;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::{InvitationId, SessionId, TenantId, UserId};
use async_trait::async_trait;
use sqlx::Transaction;

type Tx<'a> = Transaction<'a, Db>;

/// The person with this (normalised) e-mail: inserted with `candidate` as id unless known.
pub(super) async fn upsert_user(
    tx: &mut Tx<'_>,
    candidate: UserId,
    email: &str,
    now: Timestamp,
) -> Result<String> {
    sqlx::query(
        "INSERT INTO users (user_id, email, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(candidate.to_string())
    .bind(email)
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    let (id,): (String,) = sqlx::query_as("SELECT user_id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&mut **tx)
        .await?;
    Ok(id)
}

async fn member_in(tx: &mut Tx<'_>, tenant: &str, user: &str) -> Result<Option<Member>> {
    let row: Option<MemberRow> =
        sqlx::query_as("SELECT * FROM memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    row.map(Member::try_from).transpose()
}

fn is_active_admin(m: &Member) -> bool {
    m.status == "active" && m.roles.iter().any(|r| r == "tenant_admin")
}

/// Refuses a change that leaves the tenant without an active `tenant_admin` (the tenant row
/// is locked first, so two admins demoting each other cannot both pass).
async fn keep_an_admin(tx: &mut Tx<'_>, tenant: &str, changed: &str) -> Result<()> {
    sqlx::query(LOCK_TENANT)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?;
    let (others,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM memberships WHERE tenant_id = $1 AND user_id <> $2 \
         AND status = 'active' AND roles LIKE '%\"tenant_admin\"%'",
    )
    .bind(tenant)
    .bind(changed)
    .fetch_one(&mut **tx)
    .await?;
    if others == 0 {
        return Err(StoreError::Conflict(Conflict::LastAdmin));
    }
    Ok(())
}

/// A person leaving (removed, suspended, deprovisioned) takes their access with them: their
/// sessions, the delegated tokens of their agents, and the API keys they created.
async fn revoke_user_access(
    tx: &mut Tx<'_>,
    tenant: &str,
    user: &str,
    reason: &str,
    now: Timestamp,
) -> Result<u64> {
    sqlx::query(
        "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND revoked_at IS NULL \
         AND (created_by = $2 OR created_by LIKE $2 || '/agent:%')",
    )
    .bind(tenant)
    .bind(user)
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    revoke_user_sessions(tx, tenant, user, reason, now).await
}

async fn revoke_user_sessions(
    tx: &mut Tx<'_>,
    tenant: &str,
    user: &str,
    reason: &str,
    now: Timestamp,
) -> Result<u64> {
    let res = sqlx::query(
        "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(user)
    .bind(now.millis())
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected())
}

async fn insert_session(tx: &mut Tx<'_>, tenant: &str, s: &NewSession) -> Result<()> {
    let d = s.delegation.as_ref();
    sqlx::query(
        "INSERT INTO sessions (tenant_id, id, user_id, method, created_at, expires_at, agent, \
         permissions, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(tenant)
    .bind(s.id.to_string())
    .bind(s.user_id.to_string())
    .bind(&s.method)
    .bind(s.created_at.millis())
    .bind(s.expires_at.millis())
    .bind(d.map(|d| d.agent.clone()))
    .bind(
        d.and_then(|d| d.permissions.as_ref())
            .map(to_json)
            .transpose()?,
    )
    .bind(d.map(|d| d.created_by.clone()))
    .execute(&mut **tx)
    .await?;
    if let Some(r) = &s.refresh {
        insert_refresh(tx, tenant, &s.id.to_string(), r, s.created_at).await?;
    }
    if d.is_some() {
        // Issuing a token for someone is not their sign-in.
        return Ok(());
    }
    sqlx::query(
        "UPDATE memberships SET last_sign_in_at = $3 WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant)
    .bind(s.user_id.to_string())
    .bind(s.created_at.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_refresh(
    tx: &mut Tx<'_>,
    tenant: &str,
    session: &str,
    r: &NewRefresh,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, tenant_id, session_id, secret_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.id)
    .bind(tenant)
    .bind(session)
    .bind(&r.secret_hash)
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The custom roles named must exist in the tenant.
async fn check_custom_roles(tx: &mut Tx<'_>, tenant: &str, names: &[String]) -> Result<()> {
    for name in names {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT name FROM tenant_roles WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::Conflict(Conflict::Reference));
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    name: String,
    description: String,
    permissions: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<RoleRow> for CustomRole {
    type Error = StoreError;
    fn try_from(r: RoleRow) -> Result<Self> {
        Ok(CustomRole {
            permissions: json(&r.permissions, "tenant_roles.permissions")?,
            name: r.name,
            description: r.description,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
        })
    }
}

const INVITATION_COLUMNS: &str = "tenant_id, id, email, roles, custom_roles, invited_by, \
     created_at, expires_at, accepted_at, accepted_by, revoked_at";

#[derive(sqlx::FromRow)]
struct InvitationRow {
    tenant_id: String,
    id: String,
    email: String,
    roles: String,
    custom_roles: String,
    invited_by: String,
    created_at: i64,
    expires_at: i64,
    accepted_at: Option<i64>,
    accepted_by: Option<String>,
    revoked_at: Option<i64>,
}

impl TryFrom<InvitationRow> for Invitation {
    type Error = StoreError;
    fn try_from(r: InvitationRow) -> Result<Self> {
        Ok(Invitation {
            tenant_id: parse(&r.tenant_id, "invitations.tenant_id")?,
            id: parse(&r.id, "invitations.id")?,
            email: r.email,
            roles: json(&r.roles, "invitations.roles")?,
            custom_roles: json(&r.custom_roles, "invitations.custom_roles")?,
            invited_by: r.invited_by,
            created_at: Timestamp::from_millis(r.created_at),
            expires_at: Timestamp::from_millis(r.expires_at),
            accepted_at: r.accepted_at.map(Timestamp::from_millis),
            accepted_by: r
                .accepted_by
                .map(|u| parse(&u, "invitations.accepted_by"))
                .transpose()?,
            revoked_at: r.revoked_at.map(Timestamp::from_millis),
        })
    }
}

async fn invitation_in(tx: &mut Tx<'_>, tenant: &str, id: &str) -> Result<Option<Invitation>> {
    let sql =
        format!("SELECT {INVITATION_COLUMNS} FROM invitations WHERE tenant_id = $1 AND id = $2");
    let row: Option<InvitationRow> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(Invitation::try_from).transpose()
}

#[derive(sqlx::FromRow)]
struct DelegationRow {
    id: String,
    user_id: String,
    agent: Option<String>,
    permissions: Option<String>,
    created_by: Option<String>,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<DelegationRow> for Delegation {
    type Error = StoreError;
    fn try_from(r: DelegationRow) -> Result<Self> {
        Ok(Delegation {
            id: parse(&r.id, "sessions.id")?,
            user_id: parse(&r.user_id, "sessions.user_id")?,
            agent: r.agent.unwrap_or_default(),
            permissions: r
                .permissions
                .map(|p| json(&p, "sessions.permissions"))
                .transpose()?,
            created_by: r.created_by.unwrap_or_default(),
            created_at: Timestamp::from_millis(r.created_at),
            expires_at: Timestamp::from_millis(r.expires_at),
            revoked_at: r.revoked_at.map(Timestamp::from_millis),
        })
    }
}

#[derive(sqlx::FromRow)]
struct SsoRow {
    tenant_id: String,
    id: String,
    kind: String,
    name: String,
    config: String,
    role_mapping: String,
    jit: bool,
    enabled: bool,
    secret: Vec<u8>,
    key_version: i64,
    fingerprint: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SsoRow> for SsoConnectionRecord {
    type Error = StoreError;
    fn try_from(r: SsoRow) -> Result<Self> {
        Ok(SsoConnectionRecord {
            connection: SsoConnection {
                tenant_id: parse(&r.tenant_id, "sso_connections.tenant_id")?,
                id: r.id,
                kind: r.kind,
                name: r.name,
                config: json(&r.config, "sso_connections.config")?,
                role_mapping: json(&r.role_mapping, "sso_connections.role_mapping")?,
                jit: r.jit,
                enabled: r.enabled,
                secret_fingerprint: r.fingerprint,
                key_version: r.key_version,
                created_at: Timestamp::from_millis(r.created_at),
                updated_at: Timestamp::from_millis(r.updated_at),
            },
            sealed_secret: r.secret,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SigningKeyRow {
    kid: String,
    generation: i64,
    public_x: String,
    wrapped_key: String,
    sealed_private: Vec<u8>,
    created_at: i64,
    retired_at: Option<i64>,
}

#[async_trait]
impl IdentityStore for BackendStore {
    async fn get_member(&self, ctx: &TenantCtx, user: UserId) -> Result<Option<Member>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let m = member_in(&mut tx, &ctx.tenant_id().to_string(), &user.to_string()).await?;
        tx.commit().await?;
        Ok(m)
    }

    async fn update_member(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        change: &MemberChange,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Member>> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let user = user.to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let Some(before) = member_in(&mut tx, &tenant, &user).await? else {
            return Ok(None);
        };
        let mut after = before.clone();
        if let Some(roles) = &change.roles {
            after.roles.clone_from(roles);
        }
        if let Some(custom) = &change.custom_roles {
            check_custom_roles(&mut tx, &tenant, custom).await?;
            after.custom_roles.clone_from(custom);
        }
        if let Some(status) = &change.status {
            after.status.clone_from(status);
        }
        if let Some(name) = &change.name {
            after.name = Some(name.clone());
        }
        if let Some(ext) = &change.external_id {
            after.external_id.clone_from(ext);
        }
        if is_active_admin(&before) && !is_active_admin(&after) {
            keep_an_admin(&mut tx, &tenant, &user).await?;
        }
        sqlx::query(
            "UPDATE memberships SET roles = $3, custom_roles = $4, status = $5, name = $6, \
             updated_at = $7, external_id = $8 WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(&tenant)
        .bind(&user)
        .bind(to_json(&after.roles)?)
        .bind(to_json(&after.custom_roles)?)
        .bind(&after.status)
        .bind(&after.name)
        .bind(now.millis())
        .bind(&after.external_id)
        .execute(&mut *tx)
        .await?;
        if after.status != "active" {
            revoke_user_access(&mut tx, &tenant, &user, "membership_inactive", now).await?;
        }
        append_audit(&mut tx, audit).await?;
        let m = member_in(&mut tx, &tenant, &user).await?;
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(m)
    }

    async fn remove_member(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let user = user.to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let Some(before) = member_in(&mut tx, &tenant, &user).await? else {
            return Ok(false);
        };
        if is_active_admin(&before) {
            keep_an_admin(&mut tx, &tenant, &user).await?;
        }
        sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(&tenant)
            .bind(&user)
            .execute(&mut *tx)
            .await?;
        revoke_user_access(&mut tx, &tenant, &user, "membership_removed", now).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        Ok(true)
    }

    async fn insert_member(
        &self,
        ctx: &TenantCtx,
        member: &Member,
        audit: NewAuditEvent,
    ) -> Result<Member> {
        same_tenant(ctx, member.tenant_id, "membership")?;
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        check_custom_roles(&mut tx, &tenant, &member.custom_roles).await?;
        let user = upsert_user(&mut tx, member.user_id, &member.email, member.created_at).await?;
        let res = sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, email, name, roles, custom_roles, status, \
             external_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&tenant)
        .bind(&user)
        .bind(&member.email)
        .bind(&member.name)
        .bind(to_json(&member.roles)?)
        .bind(to_json(&member.custom_roles)?)
        .bind(&member.status)
        .bind(&member.external_id)
        .bind(member.created_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            r => r?,
        };
        append_audit(&mut tx, audit.target("user", &user)).await?;
        let m = member_in(&mut tx, &tenant, &user)
            .await?
            .ok_or_else(|| corrupt("membership vanished in its own transaction"))?;
        tx.commit().await?;
        Ok(m)
    }

    async fn scim_members(
        &self,
        ctx: &TenantCtx,
        filter: &ScimFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<Member>)> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM memberships WHERE tenant_id = $1 \
             AND ($2 IS NULL OR email = $2) AND ($3 IS NULL OR external_id = $3)",
        )
        .bind(&tenant)
        .bind(&filter.email)
        .bind(&filter.external_id)
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT * FROM memberships WHERE tenant_id = $1 \
             AND ($2 IS NULL OR email = $2) AND ($3 IS NULL OR external_id = $3) \
             ORDER BY user_id LIMIT $4 OFFSET $5",
        )
        .bind(&tenant)
        .bind(&filter.email)
        .bind(&filter.external_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((total, convert(rows)?))
    }

    async fn put_scim_token(
        &self,
        ctx: &TenantCtx,
        id: &str,
        public_id: &str,
        secret_hash: &str,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query("DELETE FROM scim_tokens WHERE tenant_id = $1")
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO scim_tokens (tenant_id, id, public_id, secret_hash, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&tenant)
        .bind(id)
        .bind(public_id)
        .bind(secret_hash)
        .bind(ctx.actor().id())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_scim_token(&self, ctx: &TenantCtx, audit: NewAuditEvent) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query("DELETE FROM scim_tokens WHERE tenant_id = $1")
            .bind(ctx.tenant_id().to_string())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_scim_token(&self, public_id: &str) -> Result<Option<ScimTokenLookup>> {
        let mut tx = self.read_platform().await?;
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT s.tenant_id, s.id, s.secret_hash, t.status FROM scim_tokens s \
             JOIN tenants t ON t.tenant_id = s.tenant_id WHERE s.public_id = $1",
        )
        .bind(public_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|(tenant, id, secret_hash, status)| {
            Ok(ScimTokenLookup {
                tenant_id: parse(&tenant, "scim_tokens.tenant_id")?,
                id,
                secret_hash,
                tenant_status: agentplane_core::tenant::TenantStatus::parse(&status)
                    .ok_or_else(|| corrupt("tenants.status"))?,
            })
        })
        .transpose()
    }

    async fn list_roles(&self, ctx: &TenantCtx) -> Result<Vec<CustomRole>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<RoleRow> = sqlx::query_as(
            "SELECT name, description, permissions, created_at, updated_at FROM tenant_roles \
             WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        convert(rows)
    }

    async fn insert_role(
        &self,
        ctx: &TenantCtx,
        role: &CustomRole,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "INSERT INTO tenant_roles (tenant_id, name, description, permissions, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(&role.name)
        .bind(&role.description)
        .bind(to_json(&role.permissions)?)
        .bind(role.created_at.millis())
        .bind(role.updated_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_role(
        &self,
        ctx: &TenantCtx,
        role: &CustomRole,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE tenant_roles SET description = $3, permissions = $4, updated_at = $5 \
             WHERE tenant_id = $1 AND name = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(&role.name)
        .bind(&role.description)
        .bind(to_json(&role.permissions)?)
        .bind(role.updated_at.millis())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_role(&self, ctx: &TenantCtx, name: &str, audit: NewAuditEvent) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query(LOCK_TENANT)
            .bind(&tenant)
            .fetch_optional(&mut *tx)
            .await?;
        // Role names are [a-z0-9_-]: no LIKE wildcard but '_', escaped here.
        let pattern = format!("%\"{}\"%", name.replace('_', "\\_"));
        let (holders,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM memberships WHERE tenant_id = $1 AND custom_roles LIKE $2 ESCAPE '\\'",
        )
        .bind(&tenant)
        .bind(&pattern)
        .fetch_one(&mut *tx)
        .await?;
        if holders > 0 {
            return Err(StoreError::Conflict(Conflict::Reference));
        }
        let res = sqlx::query("DELETE FROM tenant_roles WHERE tenant_id = $1 AND name = $2")
            .bind(&tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_invitation(
        &self,
        ctx: &TenantCtx,
        inv: &NewInvitation,
        job: Option<&Job>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let i = &inv.invitation;
        same_tenant(ctx, i.tenant_id, "invitation")?;
        if let Some(job) = job {
            same_tenant(ctx, job.tenant_id, "job")?;
        }
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        check_custom_roles(&mut tx, &tenant, &i.custom_roles).await?;
        sqlx::query(
            "INSERT INTO invitations (tenant_id, id, email, roles, custom_roles, token_hash, \
             sealed_token, key_version, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&tenant)
        .bind(i.id.to_string())
        .bind(&i.email)
        .bind(to_json(&i.roles)?)
        .bind(to_json(&i.custom_roles)?)
        .bind(&inv.token_hash)
        .bind(&inv.sealed_token)
        .bind(inv.key_version)
        .bind(&i.invited_by)
        .bind(i.created_at.millis())
        .bind(i.expires_at.millis())
        .execute(&mut *tx)
        .await?;
        if let Some(job) = job {
            insert_job(&mut tx, job).await?;
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_invitations(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<Invitation>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let sql = format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations WHERE tenant_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        let rows: Vec<InvitationRow> = sqlx::query_as(&sql)
            .bind(ctx.tenant_id().to_string())
            .bind(after_key(page))
            .bind(overfetch(page))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Page::from_overfetch(
            convert(rows)?,
            page.limit,
            |i: &Invitation| i.id.to_string(),
        ))
    }

    async fn invitation_token(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
    ) -> Result<Option<(Invitation, Option<(Vec<u8>, i64)>)>> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let Some(inv) = invitation_in(&mut tx, &tenant, &id.to_string()).await? else {
            return Ok(None);
        };
        let (sealed, version): (Option<Vec<u8>>, Option<i64>) = sqlx::query_as(
            "SELECT sealed_token, key_version FROM invitations WHERE tenant_id = $1 AND id = $2",
        )
        .bind(&tenant)
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((inv, sealed.zip(version))))
    }

    async fn revoke_invitation(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Invitation>> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        if invitation_in(&mut tx, &tenant, &id.to_string())
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let res = sqlx::query(
            "UPDATE invitations SET revoked_at = $3, sealed_token = NULL \
             WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL",
        )
        .bind(&tenant)
        .bind(id.to_string())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(Conflict::Version));
        }
        append_audit(&mut tx, audit).await?;
        let inv = invitation_in(&mut tx, &tenant, &id.to_string()).await?;
        tx.commit().await?;
        Ok(inv)
    }

    async fn find_invitation(&self, token_hash: &str) -> Result<Option<Invitation>> {
        let mut tx = self.read_platform().await?;
        let sql = format!("SELECT {INVITATION_COLUMNS} FROM invitations WHERE token_hash = $1");
        let row: Option<InvitationRow> = sqlx::query_as(&sql)
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Invitation::try_from).transpose()
    }

    async fn accept_invitation(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
        acc: &Acceptance,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Member> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let inv = invitation_in(&mut tx, &tenant, &id.to_string())
            .await?
            .ok_or(StoreError::Conflict(Conflict::Version))?;
        let user = upsert_user(&mut tx, acc.new_user_id, &inv.email, now).await?;
        let spent = sqlx::query(
            "UPDATE invitations SET accepted_at = $3, accepted_by = $4, sealed_token = NULL \
             WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL \
             AND expires_at > $3",
        )
        .bind(&tenant)
        .bind(id.to_string())
        .bind(now.millis())
        .bind(&user)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() == 0 {
            return Err(StoreError::Conflict(Conflict::Version));
        }
        // A custom role deleted since the invitation was sent is dropped, not a failure.
        let mut custom = Vec::new();
        for name in &inv.custom_roles {
            if check_custom_roles(&mut tx, &tenant, std::slice::from_ref(name))
                .await
                .is_ok()
            {
                custom.push(name.clone());
            }
        }
        // An existing membership (the first admin, a re-invited user) takes the invitation's
        // roles and becomes active; otherwise one is created.
        sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, email, name, roles, custom_roles, status, \
             password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $8) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET roles = excluded.roles, \
             custom_roles = excluded.custom_roles, status = 'active', \
             name = COALESCE(excluded.name, memberships.name), \
             password_hash = COALESCE(excluded.password_hash, memberships.password_hash), \
             updated_at = excluded.updated_at",
        )
        .bind(&tenant)
        .bind(&user)
        .bind(&inv.email)
        .bind(&acc.name)
        .bind(to_json(&inv.roles)?)
        .bind(to_json(&custom)?)
        .bind(&acc.password_hash)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        let mut session = acc.session.clone();
        session.user_id = parse(&user, "users.user_id")?;
        insert_session(&mut tx, &tenant, &session).await?;
        append_audit(&mut tx, audit.target("user", &user)).await?;
        let m = member_in(&mut tx, &tenant, &user)
            .await?
            .ok_or_else(|| corrupt("membership vanished in its own transaction"))?;
        tx.commit().await?;
        Ok(m)
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserId>> {
        let mut tx = self.read_platform().await?;
        let row: Option<(String,)> = sqlx::query_as("SELECT user_id FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(|(id,)| parse(&id, "users.user_id")).transpose()
    }

    async fn local_credential(
        &self,
        ctx: &TenantCtx,
        email: &str,
    ) -> Result<Option<LocalCredential>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT user_id, status, password_hash FROM memberships WHERE tenant_id = $1 AND email = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|(user, status, password_hash)| {
            Ok(LocalCredential {
                user_id: parse(&user, "memberships.user_id")?,
                status,
                password_hash,
            })
        })
        .transpose()
    }

    async fn set_password(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        password_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE memberships SET password_hash = $3 WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(user.to_string())
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_session(
        &self,
        ctx: &TenantCtx,
        session: &NewSession,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        insert_session(&mut tx, &ctx.tenant_id().to_string(), session).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_refresh(&self, id: &str) -> Result<Option<RefreshLookup>> {
        let mut tx = self.read_platform().await?;
        let row: Option<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT tenant_id, session_id, secret_hash, used_at FROM refresh_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|(tenant, session, secret_hash, used_at)| {
            Ok(RefreshLookup {
                tenant_id: parse::<TenantId>(&tenant, "refresh_tokens.tenant_id")?,
                session_id: parse::<SessionId>(&session, "refresh_tokens.session_id")?,
                secret_hash,
                used: used_at.is_some(),
            })
        })
        .transpose()
    }

    async fn rotate_refresh(
        &self,
        ctx: &TenantCtx,
        old: &str,
        new: &NewRefresh,
        now: Timestamp,
        reuse_audit: NewAuditEvent,
    ) -> Result<Rotation> {
        let reuse_audit = scoped(ctx, reuse_audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT session_id FROM refresh_tokens WHERE tenant_id = $1 AND id = $2",
        )
        .bind(&tenant)
        .bind(old)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session,)) = row else {
            return Ok(Rotation::Ended);
        };
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $3 WHERE tenant_id = $1 AND id = $2 AND used_at IS NULL",
        )
        .bind(&tenant)
        .bind(old)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() == 0 {
            // A spent token came back: whoever holds the family may be an attacker.
            let revoked = sqlx::query(
                "UPDATE sessions SET revoked_at = $3, revoked_reason = 'refresh_token_reused' \
                 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
            )
            .bind(&tenant)
            .bind(&session)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
            if revoked.rows_affected() > 0 {
                append_audit(&mut tx, reuse_audit).await?;
            }
            tx.commit().await?;
            return Ok(Rotation::Reused);
        }
        let live: Option<(String,)> = sqlx::query_as(
            "SELECT s.user_id FROM sessions s JOIN memberships m \
             ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id \
             WHERE s.tenant_id = $1 AND s.id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3 \
             AND m.status = 'active'",
        )
        .bind(&tenant)
        .bind(&session)
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user,)) = live else {
            tx.commit().await?;
            return Ok(Rotation::Ended);
        };
        insert_refresh(&mut tx, &tenant, &session, new, now).await?;
        tx.commit().await?;
        Ok(Rotation::Rotated {
            user_id: parse(&user, "sessions.user_id")?,
        })
    }

    async fn revoke_session(
        &self,
        ctx: &TenantCtx,
        session: SessionId,
        reason: &str,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(session.to_string())
        .bind(now.millis())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn session_grant(
        &self,
        ctx: &TenantCtx,
        session: SessionId,
        user: UserId,
        now: Timestamp,
    ) -> Result<Option<SessionGrant>> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<(String, String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT m.email, m.roles, m.custom_roles, s.agent, s.permissions FROM sessions s JOIN memberships m \
             ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id \
             WHERE s.tenant_id = $1 AND s.id = $2 AND s.user_id = $3 AND s.revoked_at IS NULL \
             AND s.expires_at > $4 AND m.status = 'active'",
        )
        .bind(&tenant)
        .bind(session.to_string())
        .bind(user.to_string())
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((email, roles, custom, agent, ceiling)) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let roles: Vec<String> = json(&roles, "memberships.roles")?;
        let custom_roles: Vec<String> = json(&custom, "memberships.custom_roles")?;
        let mut custom_permissions = Vec::new();
        if !custom_roles.is_empty() {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT name, permissions FROM tenant_roles WHERE tenant_id = $1")
                    .bind(&tenant)
                    .fetch_all(&mut *tx)
                    .await?;
            for (name, perms) in rows {
                if custom_roles.contains(&name) {
                    let perms: Vec<String> = json(&perms, "tenant_roles.permissions")?;
                    custom_permissions.extend(perms);
                }
            }
        }
        tx.commit().await?;
        Ok(Some(SessionGrant {
            email,
            roles,
            custom_roles,
            custom_permissions,
            agent,
            ceiling: ceiling
                .map(|c| json(&c, "sessions.permissions"))
                .transpose()?,
        }))
    }

    async fn list_delegations(&self, ctx: &TenantCtx) -> Result<Vec<Delegation>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<DelegationRow> = sqlx::query_as(
            "SELECT id, user_id, agent, permissions, created_by, created_at, expires_at, revoked_at \
             FROM sessions WHERE tenant_id = $1 AND agent IS NOT NULL ORDER BY id",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        convert(rows)
    }

    async fn revoke_delegation(
        &self,
        ctx: &TenantCtx,
        id: SessionId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Delegation>> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = 'delegation_revoked' \
             WHERE tenant_id = $1 AND id = $2 AND agent IS NOT NULL AND revoked_at IS NULL",
        )
        .bind(&tenant)
        .bind(id.to_string())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() > 0 {
            append_audit(&mut tx, audit).await?;
        }
        let row: Option<DelegationRow> = sqlx::query_as(
            "SELECT id, user_id, agent, permissions, created_by, created_at, expires_at, revoked_at \
             FROM sessions WHERE tenant_id = $1 AND id = $2 AND agent IS NOT NULL",
        )
        .bind(&tenant)
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(Delegation::try_from).transpose()
    }

    async fn list_sso(&self, ctx: &TenantCtx) -> Result<Vec<SsoConnectionRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let rows: Vec<SsoRow> =
            sqlx::query_as("SELECT * FROM sso_connections WHERE tenant_id = $1 ORDER BY name")
                .bind(ctx.tenant_id().to_string())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        convert(rows)
    }

    async fn get_sso(&self, ctx: &TenantCtx, id: &str) -> Result<Option<SsoConnectionRecord>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<SsoRow> =
            sqlx::query_as("SELECT * FROM sso_connections WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().to_string())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(SsoConnectionRecord::try_from).transpose()
    }

    async fn insert_sso(
        &self,
        ctx: &TenantCtx,
        rec: &SsoConnectionRecord,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let c = &rec.connection;
        same_tenant(ctx, c.tenant_id, "sso connection")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "INSERT INTO sso_connections (tenant_id, id, kind, name, config, role_mapping, jit, enabled, \
             secret, key_version, fingerprint, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(c.tenant_id.to_string())
        .bind(&c.id)
        .bind(&c.kind)
        .bind(&c.name)
        .bind(to_json(&c.config)?)
        .bind(to_json(&c.role_mapping)?)
        .bind(c.jit)
        .bind(c.enabled)
        .bind(&rec.sealed_secret)
        .bind(c.key_version)
        .bind(&c.secret_fingerprint)
        .bind(c.created_at.millis())
        .bind(c.updated_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            r => r?,
        };
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_sso(
        &self,
        ctx: &TenantCtx,
        rec: &SsoConnectionRecord,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        let c = &rec.connection;
        same_tenant(ctx, c.tenant_id, "sso connection")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let res = sqlx::query(
            "UPDATE sso_connections SET name = $3, config = $4, role_mapping = $5, jit = $6, \
             enabled = $7, secret = $8, key_version = $9, fingerprint = $10, updated_at = $11 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(c.tenant_id.to_string())
        .bind(&c.id)
        .bind(&c.name)
        .bind(to_json(&c.config)?)
        .bind(to_json(&c.role_mapping)?)
        .bind(c.jit)
        .bind(c.enabled)
        .bind(&rec.sealed_secret)
        .bind(c.key_version)
        .bind(&c.secret_fingerprint)
        .bind(c.updated_at.millis())
        .execute(&mut *tx)
        .await;
        let res = match res {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(Conflict::Name)),
            r => r?,
        };
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_sso(&self, ctx: &TenantCtx, id: &str, audit: NewAuditEvent) -> Result<bool> {
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query("DELETE FROM sso_states WHERE tenant_id = $1 AND connection_id = $2")
            .bind(&tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let res = sqlx::query("DELETE FROM sso_connections WHERE tenant_id = $1 AND id = $2")
            .bind(&tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn put_sso_state(&self, ctx: &TenantCtx, state_hash: &str, s: &SsoState) -> Result<()> {
        same_tenant(ctx, s.tenant_id, "sso state")?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        // Expired states of the tenant go as new ones come.
        sqlx::query("DELETE FROM sso_states WHERE tenant_id = $1 AND expires_at < $2")
            .bind(s.tenant_id.to_string())
            .bind(Timestamp::now().millis())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sso_states (tenant_id, state_hash, connection_id, pending, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(s.tenant_id.to_string())
        .bind(state_hash)
        .bind(&s.connection_id)
        .bind(&s.pending)
        .bind(s.expires_at.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_sso_state(&self, state_hash: &str) -> Result<Option<SsoState>> {
        let mut tx = self.write_platform().await?;
        let row: Option<(String, String, Vec<u8>, i64)> = sqlx::query_as(
            "DELETE FROM sso_states WHERE state_hash = $1 \
             RETURNING tenant_id, connection_id, pending, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|(tenant, connection_id, pending, expires_at)| {
            Ok(SsoState {
                tenant_id: parse(&tenant, "sso_states.tenant_id")?,
                connection_id,
                pending,
                expires_at: Timestamp::from_millis(expires_at),
            })
        })
        .transpose()
    }

    async fn consume_assertion(
        &self,
        ctx: &TenantCtx,
        assertion_id: &str,
        expires_at: Timestamp,
    ) -> Result<bool> {
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        sqlx::query("DELETE FROM sso_replay WHERE tenant_id = $1 AND expires_at < $2")
            .bind(&tenant)
            .bind(Timestamp::now().millis())
            .execute(&mut *tx)
            .await?;
        let res = sqlx::query(
            "INSERT INTO sso_replay (tenant_id, assertion_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, assertion_id) DO NOTHING",
        )
        .bind(&tenant)
        .bind(assertion_id)
        .bind(expires_at.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }

    async fn erase_subject(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        email: &str,
        subject: &str,
        sign: ReceiptSigner<'_>,
        audit: NewAuditEvent,
    ) -> Result<ErasureReceipt> {
        same_tenant(ctx, job.tenant_id, "job")?;
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let now = Timestamp::now();
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let mut counts = ErasureCounts::default();
        let member: Option<(String, String, String)> = sqlx::query_as(
            "SELECT user_id, roles, status FROM memberships WHERE tenant_id = $1 AND email = $2",
        )
        .bind(&tenant)
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((user, roles, status)) = &member {
            if status == "active" && roles.contains("\"tenant_admin\"") {
                keep_an_admin(&mut tx, &tenant, user).await?;
            }
            counts.refresh_tokens = sqlx::query(
                "DELETE FROM refresh_tokens WHERE tenant_id = $1 AND session_id IN \
                 (SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2)",
            )
            .bind(&tenant)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            counts.sessions =
                sqlx::query("DELETE FROM sessions WHERE tenant_id = $1 AND user_id = $2")
                    .bind(&tenant)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            // Keys the person made stop working; the keys are the tenant's, not personal data.
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND revoked_at IS NULL \
                 AND (created_by = $2 OR created_by LIKE $2 || '/agent:%')",
            )
            .bind(&tenant)
            .bind(user)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
            sqlx::query(super::ENTER_PLATFORM)
                .fetch_optional(&mut *tx)
                .await?;
            counts.people = sqlx::query(
                "DELETE FROM users WHERE user_id = $2 AND NOT EXISTS \
                 (SELECT 1 FROM memberships m WHERE m.user_id = $2 AND m.tenant_id <> $1)",
            )
            .bind(&tenant)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            counts.memberships =
                sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
                    .bind(&tenant)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        counts.invitations =
            sqlx::query("DELETE FROM invitations WHERE tenant_id = $1 AND email = $2")
                .bind(&tenant)
                .bind(email)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        // The address as it appears inside the JSON of the personal data, LIKE-escaped.
        let quoted = to_json(&email)?
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        counts.audit_personal_data =
            sqlx::query("DELETE FROM audit_pii WHERE tenant_id = $1 AND pii LIKE $2 ESCAPE '\\'")
                .bind(&tenant)
                .bind(format!("%{quoted}%"))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let (receipt, signature) = sign(&counts).map_err(StoreError::Corrupt)?;
        sqlx::query(
            "INSERT INTO erasure_receipts (tenant_id, id, subject, receipt, signature, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&tenant)
        .bind(job.id.to_string())
        .bind(subject)
        .bind(to_json(&receipt)?)
        .bind(&signature)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET payload = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(&tenant)
            .bind(job.id.to_string())
            .bind(to_json(
                &serde_json::json!({"erased": true, "receipt_id": job.id}),
            )?)
            .execute(&mut *tx)
            .await?;
        super::ops::complete_job_tx(&mut tx, job, now).await?;
        append_audit(
            &mut tx,
            audit.data(serde_json::to_value(&counts).map_err(corrupt)?),
        )
        .await?;
        crate::crash_point("erase.before_commit");
        tx.commit().await?;
        self.keys.invalidate(ctx.tenant_id());
        self.after_erasure().await?;
        Ok(ErasureReceipt {
            id: job.id.to_string(),
            subject: subject.to_owned(),
            receipt,
            signature,
            created_at: now,
        })
    }

    async fn apply_retention(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        data_before: Timestamp,
        audit_before: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<RetentionReport> {
        same_tenant(ctx, job.tenant_id, "job")?;
        let audit = scoped(ctx, audit)?;
        let tenant = ctx.tenant_id().to_string();
        let (data, old_audit) = (data_before.millis(), audit_before.millis());
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        let mut r = RetentionReport {
            usage_records: sqlx::query(
                "DELETE FROM usage_records WHERE tenant_id = $1 AND ts < $2",
            )
            .bind(&tenant)
            .bind(data)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            ..Default::default()
        };
        r.audit_personal_data = sqlx::query(
            "DELETE FROM audit_pii WHERE tenant_id = $1 AND event_id IN \
             (SELECT id FROM audit_events WHERE tenant_id = $1 AND ts < $2)",
        )
        .bind(&tenant)
        .bind(old_audit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let ended =
            "tenant_id = $1 AND ((revoked_at IS NOT NULL AND revoked_at < $2) OR expires_at < $2)";
        sqlx::query(&format!(
            "DELETE FROM refresh_tokens WHERE tenant_id = $1 AND session_id IN (SELECT id FROM sessions WHERE {ended})"
        ))
        .bind(&tenant)
        .bind(data)
        .execute(&mut *tx)
        .await?;
        r.sessions = sqlx::query(&format!("DELETE FROM sessions WHERE {ended}"))
            .bind(&tenant)
            .bind(data)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        r.invitations = sqlx::query(
            "DELETE FROM invitations WHERE tenant_id = $1 AND (accepted_at < $2 OR revoked_at < $2 OR expires_at < $2)",
        )
        .bind(&tenant)
        .bind(data)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        super::ops::complete_job_tx(&mut tx, job, Timestamp::now()).await?;
        append_audit(
            &mut tx,
            audit.data(serde_json::to_value(&r).map_err(corrupt)?),
        )
        .await?;
        tx.commit().await?;
        self.after_erasure().await?;
        Ok(r)
    }

    async fn schedule_retention(&self, _platform: &PlatformCtx, since: Timestamp) -> Result<u64> {
        let mut tx = self.write_platform().await?;
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT t.tenant_id FROM tenants t WHERE t.status = 'active' AND NOT EXISTS \
             (SELECT 1 FROM jobs j WHERE j.tenant_id = t.tenant_id AND j.kind = 'tenant.retention' \
              AND j.created_at >= $1)",
        )
        .bind(since.millis())
        .fetch_all(&mut *tx)
        .await?;
        let now = Timestamp::now();
        for (tenant,) in &due {
            let job = Job::new(
                parse(tenant, "tenants.tenant_id")?,
                agentplane_core::job::JobKind::Retention,
                serde_json::json!({}),
                now,
            );
            insert_job(&mut tx, &job).await?;
        }
        tx.commit().await?;
        Ok(due.len() as u64)
    }

    async fn enqueue(&self, ctx: &TenantCtx, job: &Job, audit: NewAuditEvent) -> Result<()> {
        same_tenant(ctx, job.tenant_id, "job")?;
        let audit = scoped(ctx, audit)?;
        let mut tx = self.write_tenant(ctx.tenant_id()).await?;
        insert_job(&mut tx, job).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn erasure_receipt(&self, ctx: &TenantCtx, id: &str) -> Result<Option<ErasureReceipt>> {
        let mut tx = self.read_tenant(ctx.tenant_id()).await?;
        let row: Option<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, subject, receipt, signature, created_at FROM erasure_receipts \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|(id, subject, receipt, signature, created_at)| {
            Ok(ErasureReceipt {
                id,
                subject,
                receipt: json(&receipt, "erasure_receipts.receipt")?,
                signature,
                created_at: Timestamp::from_millis(created_at),
            })
        })
        .transpose()
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<SigningKeyRow> =
            sqlx::query_as("SELECT * FROM signing_keys ORDER BY generation")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| SigningKeyRecord {
                kid: r.kid,
                generation: r.generation,
                public_x: r.public_x,
                wrapped_key: r.wrapped_key,
                sealed_private: r.sealed_private,
                created_at: Timestamp::from_millis(r.created_at),
                retired_at: r.retired_at.map(Timestamp::from_millis),
            })
            .collect())
    }

    async fn insert_signing_key(
        &self,
        _platform: &PlatformCtx,
        key: &SigningKeyRecord,
        audit: Option<NewAuditEvent>,
    ) -> Result<()> {
        let mut tx = self.write_platform().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(key.created_at.millis())
            .execute(&mut *tx)
            .await?;
        let res = sqlx::query(
            "INSERT INTO signing_keys (kid, generation, public_x, wrapped_key, sealed_private, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.kid)
        .bind(key.generation)
        .bind(&key.public_x)
        .bind(&key.wrapped_key)
        .bind(&key.sealed_private)
        .bind(key.created_at.millis())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(Conflict::Version))
            }
            r => r?,
        };
        if let Some(audit) = audit {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn rewrap_signing_key(
        &self,
        _platform: &PlatformCtx,
        kid: &str,
        wrapped_key: &str,
    ) -> Result<()> {
        let mut tx = self.write_platform().await?;
        sqlx::query("UPDATE signing_keys SET wrapped_key = $2 WHERE kid = $1")
            .bind(kid)
            .bind(wrapped_key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
