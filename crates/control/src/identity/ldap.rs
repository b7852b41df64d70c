//! Sign-in against an LDAP directory (OpenLDAP, Active Directory, 389 DS, ...): the classic
//! search-then-bind.
//!
//! 1. Bind as the service account and search the user under `user_base` with `user_filter`,
//!    the username escaped (RFC 4515), so `*` or `)(uid=*` can never widen the search. Exactly
//!    one entry must match.
//! 2. Bind as that entry's DN with the given password on a FRESH connection (the service
//!    session is never re-bound as the user, so it keeps its rights for step 3).
//! 3. Read e-mail and display name from the entry found in step 1 and search the user's
//!    groups under `group_base` as the service account.
//!
//! Decisions that shape it:
//! - TLS always: StartTLS on `ldap://` or `ldaps://`. Plain LDAP would put passwords on the
//!   wire, so it is not supported. The certificate is always verified, against the configured
//!   CA(s) or, without one, the system's trust roots (what ldap3 itself uses by default).
//! - An empty password is refused before any connection: a simple bind with a DN and an empty
//!   password is an unauthenticated bind, which servers answer with success (RFC 4513 5.1.2).
//!   For the same reason an empty service password is a configuration error.
//! - Errors tell a wrong password (or unknown user: the two are indistinguishable on purpose)
//!   apart from an unreachable or misconfigured directory, and never carry a password.

// Not wired yet: the SSO wiring (sign-in, "test connection") uses it.

use ldap3::{
    ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Scope, SearchEntry,
    SearchOptions, SearchResult,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How the connection is secured. Plain LDAP without TLS is not supported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LdapTls {
    /// `ldap://` upgraded with the StartTLS extended operation before anything else.
    StartTls,
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
}

/// A directory's connection and mapping settings.
#[derive(Clone)]
pub(crate) struct LdapSettings {
    /// `ldap://host:port` (with [`LdapTls::StartTls`]) or `ldaps://host:port`.
    pub url: String,
    pub tls: LdapTls,
    /// Extra trusted CA certificate(s), PEM; `None`: the system's trust roots.
    pub ca_pem: Option<String>,
    /// The service account that searches users and groups.
    pub bind_dn: String,
    /// Its password, plaintext in memory only (redacted by `Debug`).
    pub bind_password: String,
    /// Where users are searched (subtree), e.g. `ou=people,dc=example,dc=test`.
    pub user_base: String,
    /// E.g. `(uid={username})` or `(mail={username})`: `{username}` is replaced by the
    /// escaped username (RFC 4515).
    pub user_filter: String,
    /// Where groups are searched (subtree); `None`: no group lookup.
    pub group_base: Option<String>,
    /// E.g. `(member={dn})`: `{dn}` is replaced by the escaped user DN (`{username}`, for
    /// `memberUid`-style groups, by the escaped username).
    pub group_filter: String,
    /// The user's e-mail attribute, e.g. `mail`.
    pub email_attr: String,
    /// The user's display name attribute, e.g. `cn`.
    pub name_attr: String,
    /// The group's name attribute, e.g. `cn`.
    pub group_name_attr: String,
    /// Timeout of the connection (TCP, StartTLS, TLS handshake) and of each operation.
    pub timeout_secs: u64,
}

impl std::fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &"<redacted>")
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .field("group_base", &self.group_base)
            .field("group_filter", &self.group_filter)
            .field("email_attr", &self.email_attr)
            .field("name_attr", &self.name_attr)
            .field("group_name_attr", &self.group_name_attr)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// Who signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LdapIdentity {
    pub dn: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Group names (`group_name_attr`), sorted, without duplicates.
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LdapError {
    /// Unknown user, wrong password, empty password, several matching entries.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Connection, TLS, timeout, the service account's bind or a search failed.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result codes of a user's bind that mean "these credentials do not sign in":
/// invalidCredentials (49), inappropriateAuthentication (48), unwillingToPerform (53, e.g. a
/// disabled account). Anything else is the directory's problem, not the user's.
const REFUSED_BIND: [u32; 3] = [49, 48, 53];
/// sizeLimitExceeded: more entries matched than asked for.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// Binds as the service account, searches the user (exactly one match, else
/// [`LdapError::InvalidCredentials`]), binds as the user's DN with `password` on a fresh
/// connection, reads e-mail and name and searches the groups.
///
/// An empty username or password is [`LdapError::InvalidCredentials`] without contacting the
/// server (an empty simple bind is an unauthenticated bind that succeeds: RFC 4513 5.1.2).
pub(crate) async fn authenticate(
    settings: &LdapSettings,
    username: &str,
    password: &str,
) -> Result<LdapIdentity, LdapError> {
    let directory = Directory::new(settings)?;
    if username.is_empty() || password.is_empty() {
        return Err(LdapError::InvalidCredentials);
    }
    let mut service = directory.service_session().await?;
    let result = directory
        .authenticate(&mut service, username, password)
        .await;
    let _ = service.unbind().await;
    result
}

/// Checks the settings by binding as the service account (for a "test connection" action).
pub(crate) async fn check(settings: &LdapSettings) -> Result<(), LdapError> {
    let directory = Directory::new(settings)?;
    let mut service = directory.service_session().await?;
    let _ = service.unbind().await;
    Ok(())
}

/// Validated settings with their TLS configuration.
struct Directory<'a> {
    settings: &'a LdapSettings,
    tls_config: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl<'a> Directory<'a> {
    fn new(settings: &'a LdapSettings) -> Result<Self, LdapError> {
        let config = |why: &str| Err(LdapError::Config(why.to_string()));
        let scheme = settings
            .url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match (&settings.tls, scheme.as_deref()) {
            (LdapTls::StartTls, Some("ldap")) | (LdapTls::Ldaps, Some("ldaps")) => {}
            (LdapTls::StartTls, _) => return config("StartTLS needs an ldap:// URL"),
            (LdapTls::Ldaps, _) => return config("LDAPS needs an ldaps:// URL"),
        }
        if settings.bind_dn.trim().is_empty() {
            return config("the service account's DN is empty");
        }
        // An empty password would be an unauthenticated bind, which "succeeds".
        if settings.bind_password.is_empty() {
            return config("the service account's password is empty");
        }
        if settings.timeout_secs == 0 {
            return config("the timeout must be at least one second");
        }
        for (name, attr) in [
            ("email_attr", &settings.email_attr),
            ("name_attr", &settings.name_attr),
            ("group_name_attr", &settings.group_name_attr),
        ] {
            if attr.trim().is_empty() {
                return Err(LdapError::Config(format!("{name} is empty")));
            }
        }
        if !settings.user_filter.contains("{username}") {
            return config("user_filter must contain {username}");
        }
        if ldap3::parse_filter(fill(&settings.user_filter, "x", "x")).is_err() {
            return config("user_filter is not a valid LDAP filter");
        }
        if settings.group_base.is_some() {
            if !settings.group_filter.contains("{dn}")
                && !settings.group_filter.contains("{username}")
            {
                return config("group_filter must contain {dn} or {username}");
            }
            if ldap3::parse_filter(fill(&settings.group_filter, "x", "x")).is_err() {
                return config("group_filter is not a valid LDAP filter");
            }
        }
        Ok(Directory {
            settings,
            tls_config: tls_config(settings.ca_pem.as_deref())?,
            timeout: Duration::from_secs(settings.timeout_secs),
        })
    }

    /// A TLS-protected connection (StartTLS already done), not bound yet.
    async fn connect(&self) -> Result<Ldap, LdapError> {
        let conn_settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.settings.tls == LdapTls::StartTls)
            .set_config(self.tls_config.clone());
        let (conn, ldap) = LdapConnAsync::with_settings(conn_settings, &self.settings.url)
            .await
            .map_err(|e| LdapError::Unavailable(format!("cannot connect: {e}")))?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    /// A connection bound as the service account.
    async fn service_session(&self) -> Result<Ldap, LdapError> {
        let mut ldap = self.connect().await?;
        let bound = ldap
            .with_timeout(self.timeout)
            .simple_bind(&self.settings.bind_dn, &self.settings.bind_password)
            .await;
        match bound {
            Ok(result) if result.rc == 0 => Ok(ldap),
            Ok(result) => {
                let _ = ldap.unbind().await;
                Err(LdapError::Unavailable(format!(
                    "the service account's bind was refused: {}",
                    describe(&result)
                )))
            }
            Err(e) => Err(LdapError::Unavailable(format!(
                "the service account's bind failed: {e}"
            ))),
        }
    }

    async fn authenticate(
        &self,
        service: &mut Ldap,
        username: &str,
        password: &str,
    ) -> Result<LdapIdentity, LdapError> {
        let settings = self.settings;
        let escaped = ldap_escape(username);
        let filter = fill(&settings.user_filter, "", &escaped);
        // Two are enough to tell "exactly one" from "several".
        let found = service
            .with_timeout(self.timeout)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(
                &settings.user_base,
                Scope::Subtree,
                &filter,
                vec![settings.email_attr.as_str(), settings.name_attr.as_str()],
            )
            .await;
        let SearchResult(entries, result) =
            found.map_err(|e| LdapError::Unavailable(format!("the user search failed: {e}")))?;
        if result.rc == SIZE_LIMIT_EXCEEDED {
            return Err(LdapError::InvalidCredentials);
        }
        if result.rc != 0 {
            return Err(LdapError::Unavailable(format!(
                "the user search failed: {}",
                describe(&result)
            )));
        }
        let mut entries = entries
            .into_iter()
            .filter(|entry| !entry.is_ref() && !entry.is_intermediate());
        let (Some(entry), None) = (entries.next(), entries.next()) else {
            return Err(LdapError::InvalidCredentials);
        };
        let user = SearchEntry::construct(entry);
        if user.dn.is_empty() {
            return Err(LdapError::InvalidCredentials);
        }

        self.verify_password(&user.dn, password).await?;

        let groups = match &settings.group_base {
            Some(base) => self.groups(service, base, &user.dn, &escaped).await?,
            None => Vec::new(),
        };
        Ok(LdapIdentity {
            email: first_value(&user, &settings.email_attr),
            name: first_value(&user, &settings.name_attr),
            dn: user.dn,
            groups,
        })
    }

    /// Binds as `dn` with `password` on a connection of its own.
    async fn verify_password(&self, dn: &str, password: &str) -> Result<(), LdapError> {
        // Never an unauthenticated bind (callers check it too).
        if dn.is_empty() || password.is_empty() {
            return Err(LdapError::InvalidCredentials);
        }
        let mut ldap = self.connect().await?;
        let bound = ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password)
            .await;
        let _ = ldap.unbind().await;
        match bound {
            Ok(result) if result.rc == 0 => Ok(()),
            Ok(result) if REFUSED_BIND.contains(&result.rc) => Err(LdapError::InvalidCredentials),
            Ok(result) => Err(LdapError::Unavailable(format!(
                "the user's bind failed: {}",
                describe(&result)
            ))),
            Err(e) => Err(LdapError::Unavailable(format!(
                "the user's bind failed: {e}"
            ))),
        }
    }

    /// The names of the groups `group_filter` finds for the user, sorted and deduplicated.
    async fn groups(
        &self,
        service: &mut Ldap,
        base: &str,
        dn: &str,
        escaped_username: &str,
    ) -> Result<Vec<String>, LdapError> {
        let settings = self.settings;
        let filter = fill(&settings.group_filter, &ldap_escape(dn), escaped_username);
        let found = service
            .with_timeout(self.timeout)
            .search(
                base,
                Scope::Subtree,
                &filter,
                vec![settings.group_name_attr.as_str()],
            )
            .await;
        let SearchResult(entries, result) =
            found.map_err(|e| LdapError::Unavailable(format!("the group search failed: {e}")))?;
        // Partial results (a size limit, say) are an error, not fewer groups.
        if result.rc != 0 {
            return Err(LdapError::Unavailable(format!(
                "the group search failed: {}",
                describe(&result)
            )));
        }
        let mut groups: Vec<String> = entries
            .into_iter()
            .filter(|entry| !entry.is_ref() && !entry.is_intermediate())
            .filter_map(|entry| {
                first_value(&SearchEntry::construct(entry), &settings.group_name_attr)
            })
            .collect();
        groups.sort();
        groups.dedup();
        Ok(groups)
    }
}

/// The filter template with `{dn}` and `{username}` replaced (in one pass: a replaced value is
/// never scanned again). The values must already be escaped.
fn fill(template: &str, dn: &str, username: &str) -> String {
    let mut out = String::with_capacity(template.len() + dn.len() + username.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("{dn}") {
            out.push_str(dn);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{username}") {
            out.push_str(username);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The first value of an attribute, its name matched case-insensitively (servers answer with
/// the schema's spelling).
fn first_value(entry: &SearchEntry, attr: &str) -> Option<String> {
    entry
        .attrs
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(attr))
        .and_then(|(_, values)| values.iter().find(|value| !value.is_empty()).cloned())
}

/// A result code and the server's message (never anything the client sent).
fn describe(result: &LdapResult) -> String {
    if result.text.is_empty() {
        format!("result code {}", result.rc)
    } else {
        format!("result code {} ({})", result.rc, result.text)
    }
}

/// The system's trust roots, loaded once (what ldap3 trusts by default too).
static SYSTEM_ROOTS: LazyLock<rustls::RootCertStore> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable or unparsable certificates are skipped: the others still count.
    let loaded = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(loaded.certs);
    roots
});

/// A rustls client configuration (ring) trusting the PEM's certificates or, without one, the
/// system's roots. Verification is never disabled.
fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, LdapError> {
    let roots = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    LdapError::Config(format!("the CA certificate is not valid PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    LdapError::Config(format!("the CA certificate is not usable: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(LdapError::Config(
                    "the CA PEM holds no certificate".to_string(),
                ));
            }
            roots
        }
        None => {
            if SYSTEM_ROOTS.is_empty() {
                return Err(LdapError::Config(
                    "no CA certificate configured and the system has no trust roots".to_string(),
                ));
            }
            SYSTEM_ROOTS.clone()
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The real slapd of the API tests (StartTLS and LDAPS, a generated CA).
#[cfg(test)]
#[allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "../../../../tests/api/ldap_peer.rs"]
mod ldap_peer;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::ldap_peer::{LdapPeer, LdapUser};
    use super::*;

    const ALICE_PW: &str = "alice-pw";

    async fn peer() -> LdapPeer {
        LdapPeer::start(&[
            LdapUser {
                uid: "alice",
                password: ALICE_PW,
                mail: "alice@example.test",
                cn: "Alice Liddell",
                groups: &["engineers"],
            },
            LdapUser {
                uid: "bob",
                password: "bob-pw",
                mail: "bob@example.test",
                cn: "Bob Builder",
                groups: &[],
            },
        ])
        .await
    }

    fn settings(peer: &LdapPeer, tls: LdapTls) -> LdapSettings {
        LdapSettings {
            url: match tls {
                LdapTls::StartTls => peer.url.clone(),
                LdapTls::Ldaps => peer.ldaps_url.clone(),
            },
            tls,
            ca_pem: Some(peer.ca_pem.clone()),
            bind_dn: peer.bind_dn.clone(),
            bind_password: peer.bind_password.clone(),
            user_base: format!("ou=people,{}", peer.base_dn),
            user_filter: "(uid={username})".to_string(),
            group_base: Some(format!("ou=groups,{}", peer.base_dn)),
            group_filter: "(member={dn})".to_string(),
            email_attr: "mail".to_string(),
            name_attr: "cn".to_string(),
            group_name_attr: "cn".to_string(),
            timeout_secs: 5,
        }
    }

    fn alice(peer: &LdapPeer) -> LdapIdentity {
        LdapIdentity {
            dn: peer.user_dn("alice"),
            email: Some("alice@example.test".to_string()),
            name: Some("Alice Liddell".to_string()),
            groups: vec!["engineers".to_string()],
        }
    }

    fn invalid(result: Result<LdapIdentity, LdapError>, what: &str) {
        assert!(
            matches!(result, Err(LdapError::InvalidCredentials)),
            "{what}: {result:?}"
        );
    }

    #[tokio::test]
    async fn ldap_sign_in_over_starttls_and_ldaps() {
        let peer = peer().await;
        for tls in [LdapTls::StartTls, LdapTls::Ldaps] {
            let settings = settings(&peer, tls.clone());
            let identity = authenticate(&settings, "alice", ALICE_PW)
                .await
                .unwrap_or_else(|e| panic!("{tls:?}: {e}\n{}", peer.log()));
            assert_eq!(identity, alice(&peer), "{tls:?}");
            check(&settings).await.unwrap();

            let bob = authenticate(&settings, "bob", "bob-pw").await.unwrap();
            assert_eq!(bob.email.as_deref(), Some("bob@example.test"));
            assert!(bob.groups.is_empty(), "{bob:?}");
        }

        // By e-mail, without group lookup.
        let mut settings = settings(&peer, LdapTls::StartTls);
        settings.user_filter = "(mail={username})".to_string();
        settings.group_base = None;
        let identity = authenticate(&settings, "alice@example.test", ALICE_PW)
            .await
            .unwrap();
        assert_eq!(
            identity,
            LdapIdentity {
                groups: vec![],
                ..alice(&peer)
            }
        );
    }

    #[tokio::test]
    async fn ldap_refuses_bad_credentials_and_injection() {
        let peer = peer().await;
        let settings = settings(&peer, LdapTls::StartTls);
        invalid(
            authenticate(&settings, "alice", "wrong").await,
            "wrong password",
        );
        invalid(authenticate(&settings, "alice", "").await, "empty password");
        invalid(
            authenticate(&settings, "", ALICE_PW).await,
            "empty username",
        );
        invalid(
            authenticate(&settings, "mallory", ALICE_PW).await,
            "unknown user",
        );
        for username in ["*", "alice)(uid=*", "*)(uid=*", "al*", "alice)(|(uid=*"] {
            invalid(
                authenticate(&settings, username, ALICE_PW).await,
                &format!("injection {username:?}"),
            );
        }
        // A filter matching several entries signs nobody in, even with a right password.
        let mut wide = settings.clone();
        wide.user_filter = "(|(uid={username})(objectClass=inetOrgPerson))".to_string();
        invalid(authenticate(&wide, "alice", ALICE_PW).await, "two matches");
        // The right password still works after all that.
        assert_eq!(
            authenticate(&settings, "alice", ALICE_PW).await.unwrap(),
            alice(&peer)
        );
    }

    #[tokio::test]
    async fn ldap_directory_problems_are_unavailable() {
        let peer = peer().await;
        let good = settings(&peer, LdapTls::StartTls);

        let mut wrong_service = good.clone();
        wrong_service.bind_password = "not-the-service-password".to_string();
        let err = authenticate(&wrong_service, "alice", ALICE_PW)
            .await
            .unwrap_err();
        assert!(matches!(err, LdapError::Unavailable(_)), "{err:?}");
        assert!(
            !err.to_string().contains("not-the-service-password"),
            "{err}"
        );
        let err = check(&wrong_service).await.unwrap_err();
        assert!(matches!(err, LdapError::Unavailable(_)), "{err:?}");

        // Another CA, or the system roots: the server's certificate is not trusted.
        let other = peer_ca_of_another_directory().await;
        for tls in [LdapTls::StartTls, LdapTls::Ldaps] {
            for ca_pem in [Some(other.clone()), None] {
                let mut untrusted = settings(&peer, tls.clone());
                untrusted.ca_pem = ca_pem;
                let err = authenticate(&untrusted, "alice", ALICE_PW)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(&err, LdapError::Unavailable(why) if why.contains("UnknownIssuer")),
                    "{tls:?}: {err:?}"
                );
                let err = check(&untrusted).await.unwrap_err();
                assert!(matches!(err, LdapError::Unavailable(_)), "{err:?}");
            }
        }

        // Nothing listens.
        let mut closed = good.clone();
        closed.url = format!("ldap://127.0.0.1:{}", closed_port());
        let err = check(&closed).await.unwrap_err();
        assert!(matches!(err, LdapError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn ldap_settings_are_validated_before_connecting() {
        // Nothing listens here: a configuration error comes first.
        let base = LdapSettings {
            url: format!("ldap://127.0.0.1:{}", closed_port()),
            tls: LdapTls::StartTls,
            ca_pem: None,
            bind_dn: "cn=search,dc=example,dc=test".to_string(),
            bind_password: "secret".to_string(),
            user_base: "ou=people,dc=example,dc=test".to_string(),
            user_filter: "(uid={username})".to_string(),
            group_base: Some("ou=groups,dc=example,dc=test".to_string()),
            group_filter: "(member={dn})".to_string(),
            email_attr: "mail".to_string(),
            name_attr: "cn".to_string(),
            group_name_attr: "cn".to_string(),
            timeout_secs: 5,
        };
        type Change = fn(&mut LdapSettings);
        let cases: Vec<(&str, Change)> = vec![
            ("ldaps url with StartTLS", |s| s.url = "ldaps://h".into()),
            ("ldap url with LDAPS", |s| {
                s.tls = LdapTls::Ldaps;
            }),
            ("ldapi", |s| s.url = "ldapi://%2Fsock".into()),
            ("empty service password", |s| s.bind_password.clear()),
            ("empty service dn", |s| s.bind_dn.clear()),
            ("no placeholder", |s| s.user_filter = "(uid=alice)".into()),
            ("bad filter", |s| s.user_filter = "(uid={username}".into()),
            ("bad group filter", |s| {
                s.group_filter = "member={dn})(".into()
            }),
            ("no group placeholder", |s| s.group_filter = "(cn=x)".into()),
            ("zero timeout", |s| s.timeout_secs = 0),
            ("empty attr", |s| s.email_attr.clear()),
            ("not PEM", |s| s.ca_pem = Some("hello".into())),
        ];
        for (what, change) in cases {
            let mut settings = base.clone();
            change(&mut settings);
            let err = check(&settings).await.unwrap_err();
            assert!(matches!(err, LdapError::Config(_)), "{what}: {err:?}");
            let err = authenticate(&settings, "alice", "pw").await.unwrap_err();
            assert!(matches!(err, LdapError::Config(_)), "{what}: {err:?}");
        }
        // Valid settings, empty password: refused without a connection (none would succeed).
        invalid(authenticate(&base, "alice", "").await, "empty password");
        // The service password never shows in Debug.
        assert!(!format!("{base:?}").contains("secret"));
    }

    #[test]
    fn ldap_filter_templates_are_filled_once() {
        assert_eq!(fill("(uid={username})", "d", "u"), "(uid=u)");
        assert_eq!(
            fill("(&(member={dn})(x={))", "cn=a", "{dn}"),
            "(&(member=cn=a)(x={))"
        );
        assert_eq!(fill("(uid={username})", "", "{dn}"), "(uid={dn})");
        assert_eq!(
            fill("(uid={username})", "", &ldap_escape("alice)(uid=*")),
            "(uid=alice\\29\\28uid=\\2a)"
        );
    }

    /// A port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// The CA of another directory: a valid CA that did not sign this server's certificate.
    async fn peer_ca_of_another_directory() -> String {
        let dir = tempfile::tempdir().unwrap();
        let (key, pem) = (dir.path().join("ca.key"), dir.path().join("ca.pem"));
        let out = tokio::process::Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-days", "1", "-newkey", "ec",
            ])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-subj",
                "/CN=Other CA",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&pem)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(pem).unwrap()
    }
}
