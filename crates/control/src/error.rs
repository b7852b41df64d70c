use agentplane_core::DomainError;
use agentplane_store::{Conflict, StoreError};
use thiserror::Error;

/// Errors of the control plane. The server maps each to one problem+json `code`.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    /// Missing, or belonging to another tenant: the two are indistinguishable.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(ConflictKind),
    #[error("the Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Crypto(#[from] agentplane_crypto::CryptoError),
    /// Sign-in, token and invitation failures.
    #[error("{0}")]
    Auth(AuthFailure),
    #[error("internal error: {0}")]
    Internal(String),
    /// A tenant's identity provider or directory could not be reached or misbehaved.
    #[error("identity provider unavailable: {0}")]
    Idp(String),
}

/// Why an identity request was refused. The messages say no more than the caller may know
/// (an unknown e-mail and a wrong password read the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    InvalidCredentials,
    /// Local (password) sign-in is turned off for the tenant.
    LocalSignInDisabled,
    InvalidRefreshToken,
    /// A refresh token was used twice: its whole session was revoked.
    RefreshTokenReused,
    InvalidInvitation,
    /// An access token that is not (or no longer) valid.
    InvalidAccessToken(&'static str),
    /// Too many failed attempts; retry after this many seconds.
    Throttled(u64),
    /// The tenant named by the host, the path and the body disagree, or none names one.
    TenantUnresolved(&'static str),
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidCredentials => f.write_str("wrong e-mail or password"),
            Self::LocalSignInDisabled => {
                f.write_str("password sign-in is turned off for this tenant; use its SSO")
            }
            Self::InvalidRefreshToken => f.write_str("the refresh token is invalid or expired"),
            Self::RefreshTokenReused => f.write_str(
                "the refresh token was already used; the session was revoked for safety",
            ),
            Self::InvalidInvitation => {
                f.write_str("the invitation is invalid, expired, revoked or already used")
            }
            Self::InvalidAccessToken(why) => write!(f, "access token rejected: {why}"),
            Self::Throttled(secs) => {
                write!(f, "too many failed sign-ins; retry in {secs} s")
            }
            Self::TenantUnresolved(why) => f.write_str(why),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    PlanExists,
    SlugTaken,
    ConcurrentUpdate,
    DomainTaken,
    NameTaken,
    InUse,
    AlreadyFinished,
    LastAdmin,
    /// The export is not ready (still running, failed, deleted or expired).
    NotReady,
    /// An import names a tenant that exists in this deployment already.
    TenantExists,
}

impl std::fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PlanExists => "a plan with this id already exists",
            Self::SlugTaken => "this slug is taken",
            Self::ConcurrentUpdate => "the resource changed concurrently; retry",
            Self::DomainTaken => "this custom domain is already in use",
            Self::NameTaken => "the tenant already has one of this name",
            Self::InUse => "still in use; remove what uses it first",
            Self::AlreadyFinished => "it already finished",
            Self::LastAdmin => "the tenant must keep at least one active tenant_admin",
            Self::NotReady => "the export is not ready: still running, failed, deleted or expired",
            Self::TenantExists => {
                "a tenant with this id exists here already; import it as a new tenant"
            }
        })
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(Conflict::PlanId) => Self::Conflict(ConflictKind::PlanExists),
            StoreError::Conflict(Conflict::Slug) => Self::Conflict(ConflictKind::SlugTaken),
            StoreError::Conflict(Conflict::Version) => {
                Self::Conflict(ConflictKind::ConcurrentUpdate)
            }
            StoreError::Conflict(Conflict::LastAdmin) => Self::Conflict(ConflictKind::LastAdmin),
            StoreError::InvalidCursor => Self::Invalid(DomainError::invalid(
                "cursor",
                "is not a cursor this server issued",
            )),
            other => Self::Store(other),
        }
    }
}
