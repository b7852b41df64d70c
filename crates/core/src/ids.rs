//! Typed identifiers. A `TenantId` can never be passed where a `JobId` is expected.

use crate::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| DomainError::invalid(stringify!($name), "not a UUID"))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

uuid_id!(
    /// A tenant (organisation). Leads the primary key of every tenant-owned table.
    TenantId
);
uuid_id!(
    /// A job of the durable queue.
    JobId
);
uuid_id!(
    /// An invitation to join a tenant.
    InvitationId
);
uuid_id!(
    /// A sign-in session (one family of refresh tokens).
    SessionId
);
uuid_id!(
    /// One event of an audit chain.
    AuditEventId
);
uuid_id!(
    /// A user (a person's membership of a tenant).
    UserId
);
uuid_id!(
    /// One metered run.
    UsageRecordId
);
uuid_id!(
    /// A tenant's provider credential (an LLM endpoint and its secret).
    ProviderId
);
uuid_id!(
    /// A tenant's agent definition.
    AgentId
);
uuid_id!(
    /// A tenant API key (for apps calling the gateway).
    ApiKeyId
);

/// A plan id is chosen by the operator: lowercase letters, digits and `-`/`_`, 1-64 long.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlanId(String);

impl PlanId {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::invalid(
                "plan_id",
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PlanId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<PlanId> for String {
    fn from(p: PlanId) -> String {
        p.0
    }
}
impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl utoipa::PartialSchema for PlanId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9_-]{0,63}$"))
            .into()
    }
}
impl utoipa::ToSchema for PlanId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids() {
        assert!(PlanId::parse("pro-2").is_ok());
        for bad in ["", "-x", "Pro", "a b", &"x".repeat(65), "ü"] {
            assert!(PlanId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenant_id_round_trips_and_rejects_garbage() {
        let id = TenantId::new();
        assert_eq!(id.to_string().parse::<TenantId>().ok(), Some(id));
        assert!("not-a-uuid".parse::<TenantId>().is_err());
    }
}
