//! Identity rules: who may hold which role in a tenant, custom roles, e-mail addresses,
//! passwords, and the claims of the access tokens Agentplane issues.

use crate::authz::{Permission, Role};
use crate::DomainError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The built-in roles a tenant membership may hold. `platform_admin` is granted only by the
/// platform operators' identity provider, never through a tenant.
pub const TENANT_ROLES: [Role; 3] = [Role::TenantAdmin, Role::Auditor, Role::Member];

/// Membership states (`inactive`: removed from sign-in by the tenant, kept for history;
/// `suspended`: blocked, e.g. by SCIM deprovisioning).
pub const MEMBER_STATUSES: [&str; 3] = ["active", "inactive", "suspended"];

/// Longest accepted password, in bytes (argon2 hashes any length; this bounds the work a
/// request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Most custom roles a tenant may define.
pub const MAX_CUSTOM_ROLES: usize = 100;

/// A normalised e-mail address: trimmed, lower-cased, one `@`, no spaces or control
/// characters, at most 254 bytes.
pub fn normalize_email(field: &'static str, raw: &str) -> Result<String, DomainError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && local.len() <= 64 && domain.contains('.')
               && !domain.starts_with('.') && !domain.ends_with('.') && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(DomainError::invalid(field, "is not an e-mail address"))
    }
}

/// A display name: 1–200 characters, no control characters.
pub fn validate_display_name(raw: &str) -> Result<String, DomainError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "name",
            "must be 1 to 200 characters without control characters",
        ));
    }
    Ok(name.to_owned())
}

pub fn validate_password(raw: &str) -> Result<(), DomainError> {
    if raw.len() > MAX_PASSWORD_BYTES {
        return Err(DomainError::invalid(
            "password",
            "must be at most 1024 bytes",
        ));
    }
    if raw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(DomainError::invalid(
            "password",
            "must be at least 12 characters",
        ));
    }
    let first = raw.chars().next();
    if raw.chars().all(|c| Some(c) == first) {
        return Err(DomainError::invalid(
            "password",
            "must not repeat one character",
        ));
    }
    Ok(())
}

/// The built-in roles of a membership: known tenant roles, at least one, no duplicates.
pub fn parse_member_roles(names: &[String]) -> Result<BTreeSet<Role>, DomainError> {
    let mut roles = BTreeSet::new();
    for name in names {
        match Role::parse(name) {
            Some(r) if TENANT_ROLES.contains(&r) => {
                roles.insert(r);
            }
            _ => {
                return Err(DomainError::invalid(
                    "roles",
                    "each must be tenant_admin, auditor or member",
                ))
            }
        }
    }
    Ok(roles)
}

/// A custom role's name: `a-z`, `0-9`, `_`, `-`, 2–63 characters, starting with a letter,
/// and not a built-in role's name.
pub fn validate_role_name(raw: &str) -> Result<String, DomainError> {
    let ok = (2..=63).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(DomainError::invalid(
            "name",
            "must be 2 to 63 of a-z, 0-9, '_' and '-', starting with a letter",
        ));
    }
    if Role::parse(raw).is_some() {
        return Err(DomainError::invalid("name", "is a built-in role's name"));
    }
    Ok(raw.to_owned())
}

/// A custom role's permissions: known, tenant-grantable (see
/// [`Permission::tenant_grantable`]), at least one.
pub fn parse_role_permissions(names: &[String]) -> Result<BTreeSet<Permission>, DomainError> {
    let mut perms = BTreeSet::new();
    for name in names {
        match Permission::parse(name) {
            Some(p) if p.tenant_grantable() => {
                perms.insert(p);
            }
            Some(_) => {
                return Err(DomainError::invalid(
                    "permissions",
                    "platform permissions cannot be granted by a tenant role",
                ))
            }
            None => {
                return Err(DomainError::invalid(
                    "permissions",
                    "each must be a permission of docs/permissions.md",
                ))
            }
        }
    }
    if perms.is_empty() {
        return Err(DomainError::invalid(
            "permissions",
            "must name at least one permission",
        ));
    }
    Ok(perms)
}

/// An AI agent's label on a delegated token: 1-64 of letters, digits, ` `, `.`, `_`, `-`,
/// starting with a letter or digit (it is part of audit actor ids).
pub fn validate_agent_label(raw: &str) -> Result<String, DomainError> {
    let v = raw.trim();
    let ok = (1..=64).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(DomainError::invalid(
            "agent",
            "must be 1 to 64 letters, digits, spaces, '.', '_' or '-'",
        ))
    }
}

/// The actor of a delegated token (RFC 8693 `act`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActClaim {
    /// `agent:<label>`.
    pub sub: String,
}

/// The claims of an Agentplane access token (`typ` `at+jwt`, signed EdDSA).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The tenant the session signed in to: the token reaches this tenant only.
    pub tid: String,
    /// The session (refresh-token family).
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// Delegated tokens: the agent acting for `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActClaim>,
    /// Delegated tokens: the permissions they may use at most, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("email", "  Ada@Example.COM ")
                .ok()
                .as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a da@example.com",
            "ada@ex@ample.com",
            "ada@example.com\r\nBcc: x@y.z",
        ] {
            assert!(normalize_email("email", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_have_a_floor_and_a_ceiling() {
        assert!(validate_password("correct horse battery").is_ok());
        assert!(validate_password("short").is_err());
        assert!(validate_password(&"a".repeat(20)).is_err());
        assert!(validate_password(&"ab".repeat(600)).is_err());
    }

    #[test]
    fn memberships_hold_tenant_roles_only() {
        assert!(parse_member_roles(&["member".into(), "auditor".into()]).is_ok());
        assert!(parse_member_roles(&["platform_admin".into()]).is_err());
        assert!(parse_member_roles(&["owner".into()]).is_err());
    }

    #[test]
    fn custom_roles_cannot_hold_platform_permissions() {
        assert!(parse_role_permissions(&["agents.read".into(), "usage.read".into()]).is_ok());
        assert!(parse_role_permissions(&["tenants.create".into()]).is_err());
        assert!(parse_role_permissions(&["keys.rotate_master".into()]).is_err());
        assert!(parse_role_permissions(&["nope".into()]).is_err());
        assert!(parse_role_permissions(&[]).is_err());
        assert!(validate_role_name("tenant_admin").is_err());
        assert!(validate_role_name("billing-viewer").is_ok());
        assert!(validate_role_name("Billing").is_err());
    }
}
