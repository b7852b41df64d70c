//! Tenants and their lifecycle state machine.

use crate::time::Timestamp;
use crate::{DomainError, PlanId, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Created; the provisioning job has not finished yet.
    Provisioning,
    Active,
    /// Every tenant-level request is refused until a platform admin reactivates it.
    Suspended,
    /// Soft-deleted: refused like a suspended tenant, restorable until it is purged.
    Deleted,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => Self::Provisioning,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

/// A lifecycle transition requested by an operator or the provisioning worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    FinishProvisioning,
    Suspend,
    Reactivate,
    Delete,
}

impl Transition {
    fn verb(self) -> &'static str {
        match self {
            Self::FinishProvisioning => "activated by provisioning",
            Self::Suspend => "suspended",
            Self::Reactivate => "reactivated",
            Self::Delete => "deleted",
        }
    }
}

impl TenantStatus {
    /// The state machine. Anything not listed is refused.
    ///
    /// ```text
    /// provisioning --finish--> active <--reactivate-- suspended
    ///       |                  |   \--suspend--------->  |
    ///       \------delete------+--------delete-----------+--> deleted --reactivate--> active
    /// ```
    /// A deleted tenant can be reactivated until its purge job runs.
    pub fn apply(self, t: Transition) -> Result<TenantStatus, DomainError> {
        use TenantStatus::*;
        use Transition::*;
        match (self, t) {
            (Provisioning, FinishProvisioning) => Ok(Active),
            (Active, Suspend) => Ok(Suspended),
            (Suspended | Deleted, Reactivate) => Ok(Active),
            (Provisioning | Active | Suspended, Delete) => Ok(Deleted),
            (from, t) => Err(DomainError::InvalidTransition {
                from: from.as_str(),
                verb: t.verb(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub plan_id: PlanId,
    pub status: TenantStatus,
    /// Data-residency region the tenant is pinned to.
    pub region: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Optimistic-concurrency version; bumped by every change.
    pub version: i64,
}

/// A tenant slug: used in subdomains (`acme.example.com`), so DNS-label rules apply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

const RESERVED_SLUGS: &[&str] = &[
    "admin", "api", "app", "auth", "console", "docs", "internal", "login", "mail", "platform",
    "root", "static", "status", "system", "www",
];

impl Slug {
    pub const MAX_LEN: usize = 40;

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let b = s.as_bytes();
        let shape = (3..=Self::MAX_LEN).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && !s.contains("--");
        if !shape {
            return Err(DomainError::invalid(
                "slug",
                "must be 3-40 characters of a-z, 0-9 and single '-', starting and ending with a letter or digit",
            ));
        }
        if RESERVED_SLUGS.contains(&s) {
            return Err(DomainError::invalid("slug", format!("'{s}' is reserved")));
        }
        Ok(Self(s.to_owned()))
    }

    /// Derives a slug from a display name ("Acme Corp, Ltd." -> "acme-corp-ltd").
    pub fn from_name(name: &str) -> Result<Self, DomainError> {
        let mut out = String::new();
        for c in name.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            if out.len() >= Self::MAX_LEN - 5 {
                break;
            }
        }
        let mut out = out.trim_end_matches('-').to_owned();
        while out.len() < 3 {
            out.push_str(if out.is_empty() { "tenant" } else { "-t" });
        }
        if RESERVED_SLUGS.contains(&out.as_str()) {
            out.push_str("-org");
        }
        Self::parse(&out)
    }

    /// The slug with a numeric suffix, used when the plain one is taken.
    pub fn with_suffix(&self, n: u32) -> Result<Self, DomainError> {
        let suffix = format!("-{n}");
        let keep = self.0.len().min(Self::MAX_LEN - suffix.len());
        Self::parse(&format!("{}{suffix}", self.0[..keep].trim_end_matches('-')))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Slug {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<Slug> for String {
    fn from(s: Slug) -> String {
        s.0
    }
}
impl utoipa::PartialSchema for Slug {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z0-9](?:-?[a-z0-9])+$"))
            .min_length(Some(3))
            .max_length(Some(Slug::MAX_LEN))
            .into()
    }
}
impl utoipa::ToSchema for Slug {}

/// A tenant's display name: 1-100 characters after trimming, no control characters.
pub fn validate_tenant_name(name: &str) -> Result<String, DomainError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(DomainError::invalid("name", "must be 1-100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

/// A region name: `default`, `eu`, `us-east`, ... (a-z, 0-9, '-', 1-32).
pub fn validate_region(region: &str) -> Result<String, DomainError> {
    let ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(region.to_owned())
    } else {
        Err(DomainError::invalid(
            "region",
            "must be 1-32 characters of a-z, 0-9 and '-'",
        ))
    }
}

/// An e-mail address, validated for shape (one '@', a dotted domain, no spaces, <= 254).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let s = s.trim();
        let bad = || DomainError::invalid("email", "is not a valid e-mail address");
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(bad());
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Email {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}
impl utoipa::PartialSchema for Email {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Email,
            )))
            .into()
    }
}
impl utoipa::ToSchema for Email {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            Slug::from_name("Acme Corp, Ltd.").map(|s| s.0),
            Ok("acme-corp-ltd".into())
        );
        assert_eq!(Slug::from_name("ÄÖ").map(|s| s.0), Ok("tenant".into()));
        assert_eq!(Slug::from_name("www").map(|s| s.0), Ok("www-org".into()));
        assert_eq!(Slug::from_name(&"x".repeat(300)).map(|s| s.0.len()), Ok(35));
        let s = Slug::parse("acme").and_then(|s| s.with_suffix(12));
        assert_eq!(s.map(|s| s.0), Ok("acme-12".into()));
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "a--b",
            "ABC",
            "admin",
            "a_b",
            &"a".repeat(41),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_machine() {
        use TenantStatus::*;
        use Transition::*;
        assert_eq!(Provisioning.apply(FinishProvisioning), Ok(Active));
        assert_eq!(Active.apply(Suspend), Ok(Suspended));
        assert_eq!(Suspended.apply(Reactivate), Ok(Active));
        assert_eq!(Deleted.apply(Reactivate), Ok(Active));
        assert!(Active.apply(Reactivate).is_err());
        assert!(Suspended.apply(Suspend).is_err());
        assert!(Deleted.apply(Delete).is_err());
        assert!(Deleted.apply(Suspend).is_err());
        assert!(Active.apply(FinishProvisioning).is_err());
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").map(|e| e.0),
            Ok("Ann@example.com".into())
        );
        for bad in [
            "", "a", "a@b", "@b.c", "a@.b.c", "a b@c.d", "a@b..c", "a@b@c.d",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_regions() {
        assert_eq!(validate_tenant_name("  Acme "), Ok("Acme".into()));
        assert!(validate_tenant_name("   ").is_err());
        assert!(validate_tenant_name("a\u{0}b").is_err());
        assert!(validate_tenant_name(&"n".repeat(101)).is_err());
        assert!(validate_region("eu-west").is_ok());
        assert!(validate_region("EU").is_err());
    }
}
