//! Who the caller is, what they may do, and the tenant context they get.
//!
//! - [`Role`]s are granted by the caller's credentials; [`Permission`]s are what actions
//!   require; [`PERMISSION_MATRIX`] is the only place that says which role has which
//!   permission (documented in `docs/permissions.md`).
//! - [`TenantCtx`] is the capability to touch one tenant's data. It is minted only by
//!   [`Principal::authorize_tenant`] or by the named bypass [`TenantCtx::for_system_job`].
//! - [`PlatformCtx`] is the capability for cross-tenant operator actions.

use crate::{JobId, TenantId};
use serde::Serialize;
use std::collections::BTreeSet;
use thiserror::Error;
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    PlatformAdmin,
    TenantAdmin,
    Auditor,
    Member,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::PlatformAdmin,
        Role::TenantAdmin,
        Role::Auditor,
        Role::Member,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlatformAdmin => "platform_admin",
            Self::TenantAdmin => "tenant_admin",
            Self::Auditor => "auditor",
            Self::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    // Platform (cross-tenant) permissions.
    PlansRead,
    PlansWrite,
    TenantsList,
    TenantsCreate,
    TenantsManage,
    UsageExportAll,
    JobsRun,
    SigningKeysRotate,
    ProvidersShare,
    // Tenant permissions.
    TenantRead,
    UsageRead,
    AuditRead,
    UsersRead,
    UsersWrite,
    RolesRead,
    RolesWrite,
    SsoWrite,
    DataErase,
    DataExport,
    SettingsRead,
    SettingsWrite,
    BrandingWrite,
    ProvidersRead,
    ProvidersWrite,
    KeysManage,
    MasterKeyRotate,
    AgentsRead,
    AgentsWrite,
    ApiKeysRead,
    ApiKeysWrite,
    JobsRead,
    JobsCancel,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlansRead => "plans.read",
            Self::PlansWrite => "plans.write",
            Self::TenantsList => "tenants.list",
            Self::TenantsCreate => "tenants.create",
            Self::TenantsManage => "tenants.manage",
            Self::UsageExportAll => "usage.export_all",
            Self::JobsRun => "jobs.run",
            Self::SigningKeysRotate => "signing_keys.rotate",
            Self::ProvidersShare => "providers.share",
            Self::TenantRead => "tenant.read",
            Self::UsageRead => "usage.read",
            Self::AuditRead => "audit.read",
            Self::UsersRead => "users.read",
            Self::UsersWrite => "users.write",
            Self::RolesRead => "roles.read",
            Self::RolesWrite => "roles.write",
            Self::SsoWrite => "sso.write",
            Self::DataErase => "data.erase",
            Self::DataExport => "data.export",
            Self::SettingsRead => "settings.read",
            Self::SettingsWrite => "settings.write",
            Self::BrandingWrite => "branding.write",
            Self::ProvidersRead => "providers.read",
            Self::ProvidersWrite => "providers.write",
            Self::KeysManage => "keys.manage",
            Self::MasterKeyRotate => "keys.rotate_master",
            Self::AgentsRead => "agents.read",
            Self::AgentsWrite => "agents.write",
            Self::ApiKeysRead => "api_keys.read",
            Self::ApiKeysWrite => "api_keys.write",
            Self::JobsRead => "jobs.read",
            Self::JobsCancel => "jobs.cancel",
        }
    }

    /// Every permission, in declaration order.
    pub fn all() -> impl Iterator<Item = Permission> {
        PERMISSION_MATRIX.iter().map(|(p, _)| *p)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::all().find(|p| p.as_str() == s)
    }

    /// Whether a tenant's custom role may hold it: tenant permissions that `tenant_admin`
    /// holds. Platform permissions never leave the platform operators.
    pub fn tenant_grantable(self) -> bool {
        role_grants(Role::TenantAdmin, self)
    }
}

use Permission as P;
use Role as R;

/// The permission matrix: permission -> roles that hold it. `platform_admin` holds all.
pub const PERMISSION_MATRIX: &[(Permission, &[Role])] = &[
    (P::PlansRead, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::PlansWrite, &[R::PlatformAdmin]),
    (P::TenantsList, &[R::PlatformAdmin]),
    (P::TenantsCreate, &[R::PlatformAdmin]),
    (P::TenantsManage, &[R::PlatformAdmin]),
    (P::UsageExportAll, &[R::PlatformAdmin]),
    (P::JobsRun, &[R::PlatformAdmin]),
    (P::SigningKeysRotate, &[R::PlatformAdmin]),
    (P::ProvidersShare, &[R::PlatformAdmin]),
    (
        P::TenantRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor, R::Member],
    ),
    (
        P::UsageRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor],
    ),
    (
        P::AuditRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor],
    ),
    (P::UsersRead, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::UsersWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (
        P::RolesRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor],
    ),
    (P::RolesWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::SsoWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::DataErase, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::DataExport, &[R::PlatformAdmin, R::TenantAdmin]),
    (
        P::SettingsRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor],
    ),
    (P::SettingsWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::BrandingWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (
        P::ProvidersRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor],
    ),
    (P::ProvidersWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::KeysManage, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::MasterKeyRotate, &[R::PlatformAdmin]),
    (
        P::AgentsRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor, R::Member],
    ),
    (P::AgentsWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (
        P::ApiKeysRead,
        &[R::PlatformAdmin, R::TenantAdmin, R::Auditor],
    ),
    (P::ApiKeysWrite, &[R::PlatformAdmin, R::TenantAdmin]),
    (P::JobsRead, &[R::PlatformAdmin, R::TenantAdmin, R::Auditor]),
    (P::JobsCancel, &[R::PlatformAdmin, R::TenantAdmin]),
];

pub fn role_grants(role: Role, perm: Permission) -> bool {
    PERMISSION_MATRIX
        .iter()
        .any(|(p, roles)| *p == perm && roles.contains(&role))
}

/// Which tenants a principal's credentials reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", content = "tenant_ids", rename_all = "snake_case")]
pub enum TenantAccess {
    /// `platform_admin`, or `tenant_ids` containing `*`.
    All,
    Only(BTreeSet<TenantId>),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthzError {
    /// The caller cannot reach this tenant at all. Answered exactly like a missing tenant.
    #[error("not found")]
    NoTenantAccess,
    #[error("missing permission {0}")]
    MissingPermission(&'static str),
}

/// An authenticated caller. Built only from a verified credential (see the server's auth
/// module); carries what the credential says, nothing looked up.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Principal {
    pub subject: String,
    pub roles: BTreeSet<Role>,
    /// Role names in the credential that Agentplane does not know (kept for diagnosis).
    pub unknown_roles: Vec<String>,
    pub scopes: Vec<String>,
    pub tenant_access: TenantAccess,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Permissions granted beyond `roles` by the tenant's custom roles (Agentplane sessions).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub extra_permissions: BTreeSet<Permission>,
    /// The custom roles that granted `extra_permissions`, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_roles: Vec<String>,
    /// The Agentplane session an access token belongs to (sign-out ends it).
    #[serde(skip)]
    pub session: Option<SessionRef>,
    /// A delegated token: the AI agent acting for `subject`. Audit events name both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A delegated token's ceiling: the principal holds a permission only if this set has it
    /// too (`None`: no ceiling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<BTreeSet<Permission>>,
}

/// The Agentplane session behind an access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRef {
    pub tenant_id: TenantId,
    pub session_id: String,
}

impl Principal {
    pub fn is_platform_admin(&self) -> bool {
        self.roles.contains(&Role::PlatformAdmin)
    }

    pub fn can_access(&self, tenant: TenantId) -> bool {
        match &self.tenant_access {
            TenantAccess::All => true,
            TenantAccess::Only(ids) => ids.contains(&tenant),
        }
    }

    pub fn has(&self, perm: Permission) -> bool {
        let held = self.roles.iter().any(|r| role_grants(*r, perm))
            || self.extra_permissions.contains(&perm);
        held && self.ceiling.as_ref().is_none_or(|c| c.contains(&perm))
    }

    /// Every permission the principal holds, from its roles and custom roles.
    pub fn permissions(&self) -> BTreeSet<Permission> {
        Permission::all().filter(|p| self.has(*p)).collect()
    }

    /// The one gate to a tenant's data: tenant access first (a miss looks like a missing
    /// tenant), then the permission.
    pub fn authorize_tenant(
        &self,
        tenant: TenantId,
        perm: Option<Permission>,
    ) -> Result<TenantCtx, AuthzError> {
        if !self.can_access(tenant) {
            return Err(AuthzError::NoTenantAccess);
        }
        if let Some(perm) = perm {
            if !self.has(perm) {
                return Err(AuthzError::MissingPermission(perm.as_str()));
            }
        }
        Ok(TenantCtx {
            tenant_id: tenant,
            actor: self.actor(),
        })
    }

    /// The gate to cross-tenant operator actions.
    pub fn authorize_platform(&self, perm: Option<Permission>) -> Result<PlatformCtx, AuthzError> {
        if let Some(perm) = perm {
            if !self.has(perm) {
                return Err(AuthzError::MissingPermission(perm.as_str()));
            }
        }
        Ok(PlatformCtx {
            actor: self.actor(),
        })
    }

    pub fn actor(&self) -> Actor {
        let roles = self.roles.iter().map(|r| r.as_str()).collect();
        match &self.agent {
            Some(agent) => Actor::Delegated {
                person: self.subject.clone(),
                agent: agent.clone(),
                roles,
                id: format!("{}/agent:{agent}", self.subject),
            },
            None => Actor::User {
                subject: self.subject.clone(),
                roles,
            },
        }
    }
}

/// Who did something, as recorded in audit events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    User {
        subject: String,
        roles: Vec<&'static str>,
    },
    System {
        component: String,
    },
    ApiKey {
        key_id: String,
    },
    /// An AI agent acting for a person with a delegated token: `id` is
    /// `<person>/agent:<agent>`, so every event names both.
    Delegated {
        person: String,
        agent: String,
        roles: Vec<&'static str>,
        id: String,
    },
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User { .. } => "user",
            Self::System { .. } => "system",
            Self::ApiKey { .. } => "api_key",
            Self::Delegated { .. } => "delegated",
        }
    }
    pub fn id(&self) -> &str {
        match self {
            Self::User { subject, .. } => subject,
            Self::System { component } => component,
            Self::ApiKey { key_id } => key_id,
            Self::Delegated { id, .. } => id,
        }
    }
}

/// The capability to read and write one tenant's data.
#[derive(Clone, Debug)]
pub struct TenantCtx {
    tenant_id: TenantId,
    actor: Actor,
}

impl TenantCtx {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The auth layer checking an Agentplane access token: its signature, issuer, audience
    /// and expiry were verified, and it names this tenant. Used only to read whether the
    /// token's session is still live and what the membership grants now.
    pub fn for_verified_token(tenant_id: TenantId, user: &str) -> Self {
        Self {
            tenant_id,
            actor: Actor::User {
                subject: user.to_owned(),
                roles: Vec::new(),
            },
        }
    }

    /// The sign-in path of one tenant (password check, invitation acceptance, refresh): the
    /// tenant was resolved from the request; what is read or written is that of the person
    /// signing in, and the audit names them.
    pub fn for_sign_in(tenant_id: TenantId, subject: &str) -> Self {
        Self {
            tenant_id,
            actor: Actor::User {
                subject: subject.to_owned(),
                roles: Vec::new(),
            },
        }
    }

    /// The tenant's identity provider provisioning over SCIM: the tenant's SCIM token was
    /// found by its public id and its secret matched (checked by the auth layer).
    pub fn for_scim(tenant_id: TenantId, token_id: &str) -> Self {
        Self {
            tenant_id,
            actor: Actor::System {
                component: format!("scim/{token_id}"),
            },
        }
    }

    /// An app calling the gateway with a tenant API key: the key was found by its public id,
    /// its secret matched, and it is neither revoked nor expired (checked by the auth layer).
    pub fn for_api_key(key: &crate::api_key::VerifiedApiKey) -> Self {
        Self {
            tenant_id: key.tenant_id,
            actor: Actor::ApiKey {
                key_id: key.key_id.to_string(),
            },
        }
    }

    /// BYPASS: the durable-job worker acts inside the tenant that enqueued the job. The job
    /// payload carries the tenant; the job was enqueued by an authorized, audited action.
    /// The download route after it verified a signed link this deployment issued for one
    /// object of the tenant (`what` names it, for the audit trail).
    pub fn for_signed_link(tenant_id: TenantId, what: &str) -> Self {
        Self {
            tenant_id,
            actor: Actor::System {
                component: format!("signed-link/{what}"),
            },
        }
    }

    /// A public page of the tenant (its console's sign-in page) reading what the tenant
    /// shows to everyone: its branding.
    pub fn for_public_page(tenant_id: TenantId, page: &str) -> Self {
        Self {
            tenant_id,
            actor: Actor::System {
                component: format!("public/{page}"),
            },
        }
    }

    /// An import loading an export as the tenant `tenant_id` (an operator's platform action).
    pub fn for_import(tenant_id: TenantId) -> Self {
        Self {
            tenant_id,
            actor: Actor::System {
                component: "import".into(),
            },
        }
    }

    pub fn for_system_job(tenant_id: TenantId, job: JobId) -> Self {
        Self {
            tenant_id,
            actor: Actor::System {
                component: format!("worker/job/{job}"),
            },
        }
    }
}

/// The capability for cross-tenant operator actions.
#[derive(Clone, Debug)]
pub struct PlatformCtx {
    actor: Actor,
}

impl PlatformCtx {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// BYPASS: an operator command run on the server itself (`agentplane audit verify`,
    /// the embedded worker), which has the database credentials anyway.
    pub fn for_system(component: &str) -> Self {
        Self {
            actor: Actor::System {
                component: component.to_owned(),
            },
        }
    }

    /// A platform operator acting on one tenant (suspend, purge, ...).
    pub fn tenant(&self, tenant_id: TenantId) -> TenantCtx {
        TenantCtx {
            tenant_id,
            actor: self.actor.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[Role], access: TenantAccess) -> Principal {
        Principal {
            subject: "u1".into(),
            roles: roles.iter().copied().collect(),
            unknown_roles: vec![],
            scopes: vec![],
            tenant_access: access,
            issuer: None,
            extra_permissions: BTreeSet::new(),
            custom_roles: vec![],
            session: None,
            agent: None,
            ceiling: None,
        }
    }

    #[test]
    fn platform_admin_holds_every_permission() {
        for (p, roles) in PERMISSION_MATRIX {
            assert!(roles.contains(&Role::PlatformAdmin), "{p:?}");
        }
    }

    #[test]
    fn tenant_access_comes_before_permission() {
        let a = TenantId::new();
        let b = TenantId::new();
        let admin_of_a = principal(&[Role::TenantAdmin], TenantAccess::Only([a].into()));
        assert!(admin_of_a
            .authorize_tenant(a, Some(Permission::UsersRead))
            .is_ok());
        assert_eq!(
            admin_of_a
                .authorize_tenant(b, Some(Permission::TenantRead))
                .err(),
            Some(AuthzError::NoTenantAccess)
        );
        assert!(matches!(
            admin_of_a.authorize_tenant(a, Some(Permission::TenantsManage)),
            Err(AuthzError::MissingPermission(_))
        ));
        let member = principal(&[Role::Member], TenantAccess::Only([a].into()));
        assert!(member
            .authorize_tenant(a, Some(Permission::AuditRead))
            .is_err());
        assert!(member
            .authorize_platform(Some(Permission::PlansRead))
            .is_err());
    }
}
