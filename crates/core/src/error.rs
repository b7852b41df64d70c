use thiserror::Error;

/// Validation and state-machine errors of the domain. Each maps to a stable API `code`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("tenant is {from}; it cannot be {verb}")]
    InvalidTransition {
        from: &'static str,
        verb: &'static str,
    },
}

impl DomainError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
