//! Persistence of identity: memberships, custom roles, invitations, sessions and refresh
//! tokens, and the keys that sign access tokens. The rules (who may change what, token
//! formats, hashing) are the control plane's; this stores what it is given, atomically with
//! its audit event.

use crate::{Member, Result};
use agentplane_core::audit::NewAuditEvent;
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::job::Job;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::{InvitationId, SessionId, TenantId, UserId};
use async_trait::async_trait;

/// A change to a membership; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct MemberChange {
    pub roles: Option<Vec<String>>,
    pub custom_roles: Option<Vec<String>>,
    pub status: Option<String>,
    pub name: Option<String>,
    pub external_id: Option<Option<String>>,
}

/// A tenant's SCIM token, found by its public id (the auth path: no tenant yet).
#[derive(Clone, Debug)]
pub struct ScimTokenLookup {
    pub tenant_id: TenantId,
    pub id: String,
    pub secret_hash: String,
    pub tenant_status: agentplane_core::tenant::TenantStatus,
}

/// Which members a SCIM list returns.
#[derive(Clone, Debug, Default)]
pub struct ScimFilter {
    pub email: Option<String>,
    pub external_id: Option<String>,
}

/// A tenant's custom role.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CustomRole {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Invitation {
    pub tenant_id: TenantId,
    pub id: InvitationId,
    pub email: String,
    pub roles: Vec<String>,
    pub custom_roles: Vec<String>,
    /// Who invited (the audit actor id).
    pub invited_by: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub accepted_by: Option<UserId>,
    pub revoked_at: Option<Timestamp>,
}

impl Invitation {
    /// `pending`, `accepted`, `revoked` or `expired` at `now`.
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.accepted_at.is_some() {
            "accepted"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "pending"
        }
    }
}

/// An invitation to insert, with the SHA-256 of its token and the token sealed with the
/// tenant's key (for the mail job).
#[derive(Clone, Debug)]
pub struct NewInvitation {
    pub invitation: Invitation,
    pub token_hash: String,
    pub sealed_token: Vec<u8>,
    pub key_version: i64,
}

/// A refresh token to store: its public id and the SHA-256 of its secret.
#[derive(Clone, Debug)]
pub struct NewRefresh {
    pub id: String,
    pub secret_hash: String,
}

#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    /// `password`, `invitation`, `oidc`, `delegation`, ...
    pub method: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// `None` for delegated tokens, which are not refreshed.
    pub refresh: Option<NewRefresh>,
    /// Delegated tokens: the agent, the permission ceiling and who issued it.
    pub delegation: Option<NewDelegation>,
}

#[derive(Clone, Debug)]
pub struct NewDelegation {
    pub agent: String,
    /// `None`: the person's permissions, whatever they are at each request.
    pub permissions: Option<Vec<String>>,
    pub created_by: String,
}

/// A delegated token's session, as admins list it (never the token).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Delegation {
    pub id: SessionId,
    pub user_id: UserId,
    pub agent: String,
    pub permissions: Option<Vec<String>>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Accepting an invitation: the person (found by e-mail, or created with `new_user_id`),
/// their tenant-local name and password hash, and the session it opens.
#[derive(Clone, Debug)]
pub struct Acceptance {
    pub new_user_id: UserId,
    pub name: Option<String>,
    pub password_hash: Option<String>,
    pub session: NewSession,
}

/// What a membership's local sign-in needs.
#[derive(Clone, Debug)]
pub struct LocalCredential {
    pub user_id: UserId,
    pub status: String,
    pub password_hash: Option<String>,
}

/// A refresh token found by its public id, with its session's state.
#[derive(Clone, Debug)]
pub struct RefreshLookup {
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub secret_hash: String,
    pub used: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old token is spent; the new one is stored. The session's user.
    Rotated { user_id: UserId },
    /// The token had already been used: the whole session was revoked.
    Reused,
    /// The session is over (signed out, expired, membership no longer active).
    Ended,
}

/// What a live session grants right now: the membership's roles and the permissions of its
/// custom roles.
#[derive(Clone, Debug)]
pub struct SessionGrant {
    pub email: String,
    pub roles: Vec<String>,
    pub custom_roles: Vec<String>,
    pub custom_permissions: Vec<String>,
    /// Delegated tokens: the agent and the ceiling.
    pub agent: Option<String>,
    pub ceiling: Option<Vec<String>>,
}

/// An access-token signing key. `sealed_private` is sealed with a data key that the KMS
/// wrapped (`wrapped_key`, JSON) for the platform.
#[derive(Clone, Debug)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub generation: i64,
    pub public_x: String,
    pub wrapped_key: String,
    pub sealed_private: Vec<u8>,
    pub created_at: Timestamp,
    pub retired_at: Option<Timestamp>,
}

/// A tenant's SSO connection (never its secret).
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SsoConnection {
    pub tenant_id: TenantId,
    pub id: String,
    /// `oidc` or `ldap`.
    pub kind: String,
    pub name: String,
    /// The non-secret settings (issuer, client id, LDAP URL and filters, ...).
    pub config: serde_json::Value,
    /// IdP group -> Agentplane role names (built-in or custom).
    pub role_mapping: std::collections::BTreeMap<String, Vec<String>>,
    /// Create a membership at first sign-in (just-in-time provisioning).
    pub jit: bool,
    pub enabled: bool,
    /// SHA-256 prefix of the secret, to tell secrets apart without showing them.
    pub secret_fingerprint: String,
    #[serde(skip)]
    pub key_version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct SsoConnectionRecord {
    pub connection: SsoConnection,
    pub sealed_secret: Vec<u8>,
}

/// A started OIDC sign-in, taken back (once) at the callback.
#[derive(Clone, Debug)]
pub struct SsoState {
    pub tenant_id: TenantId,
    pub connection_id: String,
    pub pending: Vec<u8>,
    pub expires_at: Timestamp,
}

/// What a data subject's erasure removed, per store.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ErasureCounts {
    pub memberships: u64,
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub invitations: u64,
    /// Personal data beside audit events (the chained events stay, pseudonymised).
    pub audit_personal_data: u64,
    /// The person's identity (e-mail), when they belonged to no other tenant.
    pub people: u64,
}

/// What a retention run removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RetentionReport {
    /// Run records older than the data retention.
    pub usage_records: u64,
    /// Personal data of audit events older than the audit retention (the events stay,
    /// pseudonymised, so the chain verifies).
    pub audit_personal_data: u64,
    /// Sessions ended (revoked or expired) before the data retention, with their tokens.
    pub sessions: u64,
    /// Invitations that ended (accepted, revoked, expired) before the data retention.
    pub invitations: u64,
}

/// A stored, signed erasure receipt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ErasureReceipt {
    pub id: String,
    /// SHA-256 of `<tenant id>:<e-mail>`: who, without keeping who.
    pub subject: String,
    /// The receipt (JSON) as signed.
    #[schema(value_type = Object)]
    pub receipt: serde_json::Value,
    /// A compact JWS (EdDSA) of the receipt, verifiable with `/.well-known/jwks.json`.
    pub signature: String,
    pub created_at: Timestamp,
}

/// Builds and signs the receipt once the counts are known (inside the erasing transaction).
pub type ReceiptSigner<'a> =
    &'a (dyn Fn(&ErasureCounts) -> std::result::Result<(serde_json::Value, String), String> + Sync);

#[async_trait]
pub trait IdentityStore: Send + Sync {
    // --- Members (tenant admin) ---
    async fn get_member(&self, ctx: &TenantCtx, user: UserId) -> Result<Option<Member>>;
    /// Applies `change`; refuses (`Conflict::LastAdmin`) to leave the tenant without an
    /// active `tenant_admin`, and (`Conflict::Reference`) unknown custom roles. A membership
    /// no longer active loses its sessions in the same transaction.
    async fn update_member(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        change: &MemberChange,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Member>>;
    /// Removes the membership and revokes its sessions (same last-admin rule).
    async fn remove_member(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool>;

    /// Adds a member directly (SCIM provisioning), linking the person by e-mail.
    /// `Conflict::Name` if the e-mail is a member already.
    async fn insert_member(
        &self,
        ctx: &TenantCtx,
        member: &Member,
        audit: NewAuditEvent,
    ) -> Result<Member>;
    /// One page of members by offset (SCIM's `startIndex`), with the total.
    async fn scim_members(
        &self,
        ctx: &TenantCtx,
        filter: &ScimFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<Member>)>;

    // --- SCIM tokens ---
    /// Replaces the tenant's SCIM token (there is at most one).
    async fn put_scim_token(
        &self,
        ctx: &TenantCtx,
        id: &str,
        public_id: &str,
        secret_hash: &str,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn delete_scim_token(&self, ctx: &TenantCtx, audit: NewAuditEvent) -> Result<bool>;
    async fn find_scim_token(&self, public_id: &str) -> Result<Option<ScimTokenLookup>>;

    // --- Custom roles ---
    async fn list_roles(&self, ctx: &TenantCtx) -> Result<Vec<CustomRole>>;
    async fn insert_role(
        &self,
        ctx: &TenantCtx,
        role: &CustomRole,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn update_role(
        &self,
        ctx: &TenantCtx,
        role: &CustomRole,
        audit: NewAuditEvent,
    ) -> Result<bool>;
    /// Refused (`Conflict::Reference`) while a membership holds the role.
    async fn delete_role(&self, ctx: &TenantCtx, name: &str, audit: NewAuditEvent) -> Result<bool>;

    // --- Invitations ---
    async fn insert_invitation(
        &self,
        ctx: &TenantCtx,
        inv: &NewInvitation,
        job: Option<&Job>,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn list_invitations(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<Invitation>>;
    /// The invitation and, while it is pending, its sealed token and key version.
    async fn invitation_token(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
    ) -> Result<Option<(Invitation, Option<(Vec<u8>, i64)>)>>;
    /// Marks a pending invitation revoked (`Conflict::Version` if it is no longer pending).
    async fn revoke_invitation(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Invitation>>;
    /// The invitation whose token has this SHA-256 (the auth path: no tenant yet).
    async fn find_invitation(&self, token_hash: &str) -> Result<Option<Invitation>>;
    /// Spends a pending, unexpired invitation (`Conflict::Version` if it was spent, revoked
    /// or expired meanwhile), links or creates the person and the membership, and opens a
    /// session, all in one transaction.
    async fn accept_invitation(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
        acc: &Acceptance,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Member>;
    /// The user id of this (normalised) e-mail, if the person is known.
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserId>>;

    // --- Sessions ---
    async fn local_credential(
        &self,
        ctx: &TenantCtx,
        email: &str,
    ) -> Result<Option<LocalCredential>>;
    async fn set_password(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        password_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<bool>;
    async fn create_session(
        &self,
        ctx: &TenantCtx,
        session: &NewSession,
        audit: NewAuditEvent,
    ) -> Result<()>;
    /// A refresh token by its public id (the auth path: no tenant yet).
    async fn find_refresh(&self, id: &str) -> Result<Option<RefreshLookup>>;
    /// Spends refresh token `old` and stores `new` in its session; a token used twice
    /// revokes the session (with `reuse_audit`).
    async fn rotate_refresh(
        &self,
        ctx: &TenantCtx,
        old: &str,
        new: &NewRefresh,
        now: Timestamp,
        reuse_audit: NewAuditEvent,
    ) -> Result<Rotation>;
    async fn revoke_session(
        &self,
        ctx: &TenantCtx,
        session: SessionId,
        reason: &str,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool>;
    /// What a live session of `user` grants now; `None` once it is revoked or expired or
    /// the membership is no longer active.
    async fn session_grant(
        &self,
        ctx: &TenantCtx,
        session: SessionId,
        user: UserId,
        now: Timestamp,
    ) -> Result<Option<SessionGrant>>;

    async fn list_delegations(&self, ctx: &TenantCtx) -> Result<Vec<Delegation>>;
    /// Revokes a delegated token's session (not a sign-in session): false if none.
    async fn revoke_delegation(
        &self,
        ctx: &TenantCtx,
        id: SessionId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Delegation>>;

    // --- SSO connections ---
    async fn list_sso(&self, ctx: &TenantCtx) -> Result<Vec<SsoConnectionRecord>>;
    async fn get_sso(&self, ctx: &TenantCtx, id: &str) -> Result<Option<SsoConnectionRecord>>;
    /// `Conflict::Name` when the tenant has a connection of that name.
    async fn insert_sso(
        &self,
        ctx: &TenantCtx,
        rec: &SsoConnectionRecord,
        audit: NewAuditEvent,
    ) -> Result<()>;
    async fn update_sso(
        &self,
        ctx: &TenantCtx,
        rec: &SsoConnectionRecord,
        audit: NewAuditEvent,
    ) -> Result<bool>;
    async fn delete_sso(&self, ctx: &TenantCtx, id: &str, audit: NewAuditEvent) -> Result<bool>;
    async fn put_sso_state(&self, ctx: &TenantCtx, state_hash: &str, s: &SsoState) -> Result<()>;
    /// Removes and answers the state (the callback path: no tenant yet). Used once.
    async fn take_sso_state(&self, state_hash: &str) -> Result<Option<SsoState>>;
    /// Records a consumed SAML assertion id; false if it was consumed before (a replay).
    async fn consume_assertion(
        &self,
        ctx: &TenantCtx,
        assertion_id: &str,
        expires_at: Timestamp,
    ) -> Result<bool>;

    // --- Erasure ---
    /// Erases a data subject from every store of the tenant, in one transaction with the
    /// job's completion and the signed receipt (id = the job's id): the membership (unless
    /// it is the last active admin: `Conflict::LastAdmin`), sessions and refresh tokens,
    /// invitations to the address, the personal data beside audit events, and the person when
    /// they belong to no other tenant. The job's payload is emptied of the sealed address.
    async fn erase_subject(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        email: &str,
        subject: &str,
        sign: ReceiptSigner<'_>,
        audit: NewAuditEvent,
    ) -> Result<ErasureReceipt>;
    async fn erasure_receipt(&self, ctx: &TenantCtx, id: &str) -> Result<Option<ErasureReceipt>>;
    /// Applies retention in one transaction with the job's completion: rows older than
    /// `data_before` and audit personal data older than `audit_before` go.
    async fn apply_retention(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        data_before: Timestamp,
        audit_before: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<RetentionReport>;
    /// Enqueues a `tenant.retention` job for every active tenant that had none created
    /// since `since`; answers how many.
    async fn schedule_retention(&self, platform: &PlatformCtx, since: Timestamp) -> Result<u64>;
    /// Enqueues a job of the tenant with its audit event.
    async fn enqueue(&self, ctx: &TenantCtx, job: &Job, audit: NewAuditEvent) -> Result<()>;

    // --- Signing keys (platform) ---
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Inserts `key` and retires every other key at `key.created_at`; `Conflict::Version`
    /// when another process inserted that generation first.
    async fn insert_signing_key(
        &self,
        platform: &PlatformCtx,
        key: &SigningKeyRecord,
        audit: Option<NewAuditEvent>,
    ) -> Result<()>;
    async fn rewrap_signing_key(
        &self,
        platform: &PlatformCtx,
        kid: &str,
        wrapped_key: &str,
    ) -> Result<()>;
}
