//! Local passwords: argon2id (the argon2 crate's defaults, OWASP's recommended m=19 MiB,
//! t=2, p=1), hashed and checked on the blocking pool so sign-ins never stall the runtime.

use crate::{ControlError, Result};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use std::sync::OnceLock;

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ControlError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| ControlError::Internal(format!("password hashing task failed: {e}")))?
}

/// A hash of a password nobody knows, checked when the account does not exist so that an
/// unknown e-mail and a wrong password take the same time.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"decoy password nobody has", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Whether `password` matches `stored` (a PHC string); `None` checks against a decoy and
/// answers false. A malformed stored hash answers false.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let real = stored.is_some();
        let phc = stored.unwrap_or_else(|| decoy().to_owned());
        let ok = PasswordHash::new(&phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        real && ok
    })
    .await
    .map_err(|e| ControlError::Internal(format!("password check task failed: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_checks_its_password_only() {
        let h = hash("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!verify("correct horse batterY".into(), Some(h))
            .await
            .unwrap());
        assert!(!verify("anything".into(), None).await.unwrap());
        assert!(!verify("x".into(), Some("not a hash".into())).await.unwrap());
    }
}
