//! The key-management seam: data keys wrapped by a key-encryption key (KEK).

use crate::{CryptoError, DataKey};
use agentplane_core::TenantId;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A data key wrapped by a key-encryption key (KEK).
///
/// `kms` names the provider (`"local"` or `"transit:<key name>"`), `kek_version` the KEK
/// version that wrapped it, `blob` the provider's ciphertext (text-safe: base64 or Vault's
/// `vault:vN:...`). Store it beside the tenant; it is useless without the KMS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub kms: String,
    pub kek_version: u32,
    pub blob: String,
}

/// A key-management service holding the KEKs. Implementations: [`crate::LocalKms`],
/// [`crate::TransitKms`]. Use it as `Arc<dyn Kms>`.
#[async_trait]
pub trait Kms: Send + Sync {
    /// The provider name written into [`WrappedKey::kms`], e.g. `"local"`, `"transit:agentplane"`.
    fn name(&self) -> String;

    /// The KEK version new wraps use.
    async fn current_version(&self) -> Result<u32, CryptoError>;

    /// Wraps `key` for `tenant`: the wrapped key only unwraps for the same tenant.
    async fn wrap(&self, tenant: TenantId, key: &DataKey) -> Result<WrappedKey, CryptoError>;

    /// Unwraps a key wrapped for `tenant`. Another tenant's wrapped key fails with
    /// [`CryptoError::Decrypt`].
    async fn unwrap(&self, tenant: TenantId, wrapped: &WrappedKey) -> Result<DataKey, CryptoError>;

    /// Re-wraps under the current KEK version without exposing the data key where the KMS
    /// can avoid it.
    async fn rewrap(
        &self,
        tenant: TenantId,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, CryptoError>;

    /// Creates a new KEK version (master-key rotation); returns it.
    async fn rotate(&self) -> Result<u32, CryptoError>;
}

/// Refuses a wrapped key that another provider produced (clear message instead of a
/// confusing decryption failure).
pub(crate) fn check_provider(expected: &str, wrapped: &WrappedKey) -> Result<(), CryptoError> {
    if wrapped.kms == expected {
        Ok(())
    } else {
        Err(CryptoError::Kms(format!(
            "wrapped key belongs to KMS {:?}, but this KMS is {expected:?}: configure the KMS that wrapped it",
            wrapped.kms
        )))
    }
}
