//! Identity and access: a tenant's people (memberships with built-in and custom roles),
//! invitations by e-mail, local password sign-in, sessions with rotating refresh tokens,
//! and the access tokens Agentplane signs.
//!
//! Decisions that shape it:
//! - A person (`users`) is only an e-mail and an id. Roles, status, display name and the
//!   local password belong to the membership, so one tenant can never change how a person
//!   signs in to another, and a tenant admin's invitation link can only ever open the door
//!   of their own tenant.
//! - An access token reaches exactly one tenant (`tid`) and names its session (`sid`).
//!   Every request re-reads what the session's membership grants (one indexed read), so a
//!   demotion, a removal or a sign-out applies to the very next request.
//! - Nobody grants more than they hold: the roles given by an invitation, a role change or
//!   a custom role must be within the caller's own permissions.

mod delegations;
pub(crate) mod erasure;
pub(crate) mod ldap;
mod members;
pub(crate) mod oidc;
pub(crate) mod password;
pub(crate) mod saml;
mod scim;
mod sessions;
pub(crate) mod signer;
mod sso;

pub use delegations::{CreateDelegation, DelegationCreated};
pub use members::{CreateRole, InvitationCreated, InviteUser, RoleView, UpdateRole, UpdateUser};
pub use sessions::{AcceptInvitation, PasswordGrant, TenantHints, TokenPair, WhoAmI};
pub use sso::{CreateSso, UpdateSso};

use agentplane_core::TenantId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `aud` of every access token Agentplane issues.
pub const AUDIENCE: &str = "agentplane";

/// Identity settings of the deployment.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The `iss` of access tokens and the base of links in e-mails (the deployment's public
    /// URL, e.g. `https://agentplane.example.com`).
    pub issuer: String,
    /// `acme.<base_domain>` names tenant `acme` at sign-in; `None`: no subdomain discovery.
    pub base_domain: Option<String>,
    /// Access-token lifetime. Default 600 s.
    pub access_ttl_secs: u64,
    /// Session (refresh-token family) lifetime from sign-in. Default 30 days.
    pub session_ttl_secs: u64,
    /// Invitation lifetime. Default 7 days.
    pub invitation_ttl_secs: u64,
    /// A signing key older than this is replaced before the next token is signed. Default 30 days.
    pub signing_key_rotate_secs: u64,
    /// Clock leeway when verifying access tokens. Default 30 s.
    pub leeway_secs: u64,
    /// Outbound mail; `None`: invitations are handed to the inviting admin to deliver.
    pub mailer: Option<crate::mail::Mailer>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".into(),
            base_domain: None,
            access_ttl_secs: 600,
            session_ttl_secs: 30 * 86_400,
            invitation_ttl_secs: 7 * 86_400,
            signing_key_rotate_secs: 30 * 86_400,
            leeway_secs: 30,
            mailer: None,
        }
    }
}

/// Failed password sign-ins allowed per (tenant, e-mail) and window, per process.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Bound on remembered (tenant, e-mail) pairs; the oldest windows are dropped first.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub(crate) struct Throttle {
    failures: Mutex<HashMap<(TenantId, String), (u32, Instant)>>,
}

impl Throttle {
    /// `Some(seconds)` while this (tenant, e-mail) must wait.
    fn blocked(&self, tenant: TenantId, email: &str) -> Option<u64> {
        let map = self.failures.lock().ok()?;
        let (count, since) = map.get(&(tenant, email.to_owned()))?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn failed(&self, tenant: TenantId, email: &str) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let entry = map
            .entry((tenant, email.to_owned()))
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn succeeded(&self, tenant: TenantId, email: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&(tenant, email.to_owned()));
        }
    }
}

/// The identity service's state inside the control plane.
pub(crate) struct IdentityState {
    pub(crate) cfg: IdentityConfig,
    pub(crate) signer: signer::Signer,
    pub(crate) throttle: Throttle,
}

impl IdentityState {
    pub(crate) fn new(cfg: IdentityConfig) -> Self {
        Self {
            cfg,
            signer: Default::default(),
            throttle: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_block_the_pair_only() {
        let t = Throttle::default();
        let a = TenantId::new();
        let b = TenantId::new();
        for _ in 0..MAX_FAILURES {
            assert!(t.blocked(a, "x@y.z").is_none());
            t.failed(a, "x@y.z");
        }
        assert!(t.blocked(a, "x@y.z").is_some());
        assert!(t.blocked(b, "x@y.z").is_none());
        assert!(t.blocked(a, "w@y.z").is_none());
        t.succeeded(a, "x@y.z");
        assert!(t.blocked(a, "x@y.z").is_none());
    }
}
