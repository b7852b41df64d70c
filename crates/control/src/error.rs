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
            StoreError::InvalidCursor => Self::Invalid(DomainError::invalid(
                "cursor",
                "is not a cursor this server issued",
            )),
            other => Self::Store(other),
        }
    }
}
